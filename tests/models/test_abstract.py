"""Modules built abstractly: the same result as `nnx.eval_shape`, without the walk over the traced
operations that made a module's build quadratic in its size."""

import jax
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.unet import UNET_PRESETS, UNet


def build() -> UNet:
    return UNet(**UNET_PRESETS["tiny"], rngs=nnx.Rngs(0))


def test_the_same_module_as_nnx_eval_shape():
    ours, theirs = eval_shape(build), nnx.eval_shape(build)
    assert nnx.graphdef(ours) == nnx.graphdef(theirs)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), nnx.state(ours)) == jax.tree.map(
        lambda x: (x.shape, x.dtype), nnx.state(theirs)
    )


def test_no_walk_over_the_traced_operations_while_building(monkeypatch):
    walks = []
    find = partial_eval.JaxprStackFrame.find_progenitors
    monkeypatch.setattr(
        partial_eval.JaxprStackFrame,
        "find_progenitors",
        lambda self, tracer: walks.append(1) or find(self, tracer),
    )
    nnx.eval_shape(build)
    assert walks, "nnx.eval_shape walks the traced operations (else this test proves nothing)"
    walks.clear()
    eval_shape(build)
    assert not walks


def test_tracer_errors_keep_their_origin_outside_a_build_and_after_a_failed_one():
    def origin() -> str:
        """The origin a tracer error names, outside any build."""
        try:
            jax.jit(lambda x: bool(x > 0))(1.0)
        except jax.errors.TracerBoolConversionError as error:
            return str(error)
        raise AssertionError("no tracer error")

    def fails() -> UNet:
        raise ValueError("no module")

    assert "The error occurred while tracing the function" in origin()
    eval_shape(build)
    with pytest.raises(ValueError, match="no module"):
        eval_shape(fails)
    assert "The error occurred while tracing the function" in origin()
