"""Mesh, sharding rules, batch split and the FSDP memory footprint (abstract: nothing allocated)."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiff import parallel
from jaxdiff.errors import UserError
from jaxdiff.models.abstract import eval_shape
from jaxdiff.models.unet import UNET_PRESETS, UNet
from jaxdiff.train.state import per_device_bytes, total_bytes


def fsdp_rules():
    return parallel.check_rules(parallel.FSDP_RULES)


@pytest.mark.parametrize(
    "shape, sizes",
    [
        ({"data": -1}, (8, 1, 1)),
        ({"data": 2, "fsdp": -1}, (2, 4, 1)),
        ({"data": 1, "fsdp": 4, "tensor": 2}, (1, 4, 2)),
        ({"fsdp": 8}, (1, 8, 1)),
    ],
)
def test_mesh_sizes(shape, sizes):
    mesh = parallel.make_mesh(shape)
    assert tuple(mesh.shape[a] for a in parallel.MESH_AXES) == sizes
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "shape, message",
    [
        ({"data": 3, "fsdp": -1}, "mesh data=3 x fsdp=-1 x tensor=1 does not divide the 8 devices"),
        ({"data": 2, "fsdp": 2}, "has 4 devices, but the run has 8"),
        ({"data": -1, "fsdp": -1}, "at most one -1"),
        ({"data": 0}, "positive sizes"),
        ({"pipeline": 2}, "unknown mesh axis 'pipeline'; accepted: data, fsdp, tensor"),
    ],
)
def test_bad_mesh(shape, message):
    with pytest.raises(UserError, match=message):
        parallel.make_mesh(shape)


def test_bad_rules():
    with pytest.raises(UserError, match="unknown logical axis 'channels' in the sharding rules"):
        parallel.check_rules({"channels": "fsdp"})
    with pytest.raises(UserError, match="rule heads -> 'model' names no mesh axis"):
        parallel.check_rules({"heads": "model"})


def test_batch_must_split_over_the_data_parallel_devices():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    parallel.check_batch(16, mesh, micro_batches=2)
    with pytest.raises(
        UserError,
        match=r"batch_size 12 is not divisible .* 1 x the data-parallel"
        r" size 8 \(data=2 x fsdp=4\); use a multiple of 8",
    ):
        parallel.check_batch(12, mesh)
    with pytest.raises(UserError, match="micro_batches 4 x the data-parallel size 8"):
        parallel.check_batch(16, mesh, micro_batches=4)


def test_one_process_reads_every_row():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    rows = parallel.process_rows(parallel.batch_sharding(mesh), 16)
    np.testing.assert_array_equal(rows, np.arange(16))


def test_fsdp_specs_split_what_divides_and_replicate_the_rest():
    mesh = parallel.make_mesh({"fsdp": 8})
    unet = eval_shape(lambda: UNet(**UNET_PRESETS["tiny"], rngs=nnx.Rngs(0)))
    shardings = parallel.state_shardings(nnx.state(unet), mesh, fsdp_rules())
    spec = {
        "/".join(map(str, path)): tuple(v.get_value().spec)
        for path, v in nnx.to_flat_state(shardings)
    }
    assert spec["conv_in/kernel"] == (None, None, None, "fsdp")  # 32 output channels
    assert spec["conv_out/kernel"] == (None, None, None, None)  # 4 output channels
    assert set(spec["conv_norm_out/scale"]) <= {None}
    # data parallelism alone replicates everything
    dp = parallel.state_shardings(nnx.state(unet), parallel.make_mesh({"data": 8}), fsdp_rules())
    assert all(s.is_fully_replicated for s in jax.tree.leaves(dp))


def test_sd15_train_state_per_device_bytes_under_fsdp():
    """SD-1.5's UNet: parameters + Adam moments + EMA over fsdp=8, within 5% of an even split."""
    mesh = parallel.make_mesh({"fsdp": 8})

    def create():
        unet = UNet(**UNET_PRESETS["sd15"], rngs=nnx.Rngs(0))
        return unet, nnx.Optimizer(unet, optax.adamw(1e-4), wrt=nnx.Param)

    unet, optimizer = eval_shape(create)
    abstract = (nnx.state((unet, optimizer)), nnx.state(unet, nnx.Param))  # EMA: the parameters
    shardings = tuple(parallel.state_shardings(s, mesh, fsdp_rules()) for s in abstract)
    total = total_bytes(abstract)
    assert total > 4 * 859_520_964 * 4  # parameters, two moments, EMA: float32
    assert per_device_bytes(abstract, shardings) <= 1.05 * total / 8
