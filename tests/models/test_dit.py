"""DiT against diffusers' DiTTransformer2DModel: conversion both ways, outputs within 1e-4 of
their scale at the trained grid and at a larger one (positions rescaled), a nudged weight missing
by more than 10x that; the released sizes' parameter counts equal diffusers' on torch's meta
device; adaLN-Zero starts every block as the identity; bad sizes are one-line errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import (
    DIT_CONFIG,
    DIT_CONFIGS,
    assert_far_from_flat,
    build_dit,
    dit_inputs,
    nudged,
)

from jaxdiff.convert import from_diffusers, to_diffusers
from jaxdiff.errors import UserError
from jaxdiff.models import DIT_PRESETS, DiT
from jaxdiff.models.abstract import eval_shape

TOLERANCE = 1e-4  # max abs error over the output's scale
MISS = 10


@pytest.fixture(scope="module", params=sorted(DIT_CONFIGS))
def reference(request, tmp_path_factory):
    """(diffusers' tiny DiT of each `DIT_CONFIGS` entry, the folder it saved itself to)."""
    model = build_dit(DIT_CONFIGS[request.param])
    folder = tmp_path_factory.mktemp("dit")
    model.save_pretrained(folder)
    return model, folder


def relative_error(out, expected) -> float:
    return float(np.abs(np.asarray(out) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("size", [8, 16], ids=["trained-grid", "larger-grid"])
def test_dit_matches_diffusers(reference, size):
    model, folder = reference
    dit = from_diffusers(folder)
    assert isinstance(dit, DiT)
    x, t, labels = dit_inputs(size)
    with torch.no_grad():
        expected = model(
            torch.tensor(x.transpose(0, 3, 1, 2)), torch.tensor(t), torch.tensor(labels)
        )
    expected = expected.sample.numpy().transpose(0, 2, 3, 1)  # [B, H, W, 8]
    assert_far_from_flat(expected)
    graphdef, state = nnx.split(dit)
    run = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    assert relative_error(run(state, x, t, labels), expected) <= TOLERANCE
    wrong = run(nudged(state), x, t, labels)
    assert relative_error(wrong, expected) > MISS * TOLERANCE


def test_written_back_diffusers_loads_the_same_weights(reference, tmp_path):
    from diffusers import DiTTransformer2DModel

    model, folder = reference
    to_diffusers(from_diffusers(folder), tmp_path / "back")
    back = DiTTransformer2DModel.from_pretrained(tmp_path / "back")
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    assert {k: written[k] for k in model.config if not k.startswith("_")} == {
        k: v for k, v in model.config.items() if not k.startswith("_")
    }
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("preset", "expected"),
    # diffusers' count; the paper's (675 M for XL/2) has the per-block time and class embedders
    # once: 674,834,720 here.
    [("DiT-XL/2", 749_826_464), ("DiT-S/8", None)],
)
def test_parameter_counts_equal_diffusers(preset, expected, count_params, check_logical_axes):
    from diffusers import DiTTransformer2DModel

    arguments = dict(DIT_PRESETS[preset], out_channels=8)
    dit = eval_shape(lambda: DiT(**arguments, rngs=nnx.Rngs(0)))
    with torch.device("meta"):
        reference = DiTTransformer2DModel(**arguments)
    reference_count = sum(p.numel() for p in reference.parameters())
    assert count_params(dit) == reference_count
    assert expected is None or reference_count == expected
    embedders = sum(
        int(np.prod(x.shape))
        for block in dit.transformer_blocks[1:]
        for x in jax.tree.leaves(nnx.state(block.norm1.emb, nnx.Param))
    )
    if preset == "DiT-XL/2":
        assert reference_count - embedders == 674_834_720
    check_logical_axes(dit)


def test_adaln_zero_starts_every_block_as_the_identity_and_predicts_zero():
    arguments = {**DIT_CONFIG, "num_layers": 1}
    dit = DiT(**arguments, rngs=nnx.Rngs(0))
    x, t, labels = dit_inputs(8)
    block = dit.transformer_blocks[0]
    tokens = jnp.asarray(np.random.RandomState(1).randn(3, 16, 16), jnp.float32)
    np.testing.assert_array_equal(block(tokens, t, labels), tokens)
    np.testing.assert_array_equal(dit(x, t, labels), np.zeros((3, 8, 8, 8), np.float32))


def test_first_dit_checkpoints_transformer2d_config_loads_as_a_dit(reference, tmp_path):
    """The config facebook/DiT-XL-2-256 was saved with: diffusers' `Transformer2DModel` with
    adaLN-Zero and that class's other options."""
    import shutil

    _, folder = reference
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    config = json.loads((legacy / "config.json").read_text())
    config.update(
        _class_name="Transformer2DModel",
        cross_attention_dim=None,
        num_vector_embeds=None,
        use_linear_projection=False,
        only_cross_attention=False,
        double_self_attention=False,
    )
    (legacy / "config.json").write_text(json.dumps(config))
    dit, expected = from_diffusers(legacy), from_diffusers(folder)
    assert dit.architecture == expected.architecture
    leaves = jax.tree.leaves(nnx.state(dit)), jax.tree.leaves(nnx.state(expected))
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    config["cross_attention_dim"] = 32
    (legacy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"Transformer2DModel option cross_attention_dim=32 is not"):
        from_diffusers(legacy)


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(UserError, match=r"patch_size=3 does not divide sample_size=8"):
        eval_shape(lambda: DiT(**{**DIT_CONFIG, "patch_size": 3}, rngs=nnx.Rngs(0)))
    with pytest.raises(UserError, match=r"a DiT 6 wide .*; accepted: a multiple of 4"):
        eval_shape(lambda: DiT(**{**DIT_CONFIG, "attention_head_dim": 3}, rngs=nnx.Rngs(0)))
    for option in ("num_layers", "num_embeds_ada_norm"):
        with pytest.raises(UserError, match=rf"{option}=0; accepted: a positive integer"):
            eval_shape(lambda o=option: DiT(**{**DIT_CONFIG, o: 0}, rngs=nnx.Rngs(0)))
    with pytest.raises(UserError, match=r"activation_fn='swish'; accepted: geglu, gelu"):
        eval_shape(lambda: DiT(**{**DIT_CONFIG, "activation_fn": "swish"}, rngs=nnx.Rngs(0)))
    dit = DiT(**{**DIT_CONFIG, "num_layers": 1}, rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match=r"a 8x7 input to a DiT of patch size 2.*multiples of 2"):
        dit(jnp.zeros((1, 8, 7, 4)), jnp.zeros(1), jnp.zeros(1, jnp.int32))
