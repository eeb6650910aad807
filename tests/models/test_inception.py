"""`InceptionV3` converted from PyTorch equals pytorch-fid's / torchvision's network.

The references are built by pytorch-fid's own code (`pytorch_fid.inception.InceptionV3([3],
resize_input=True, normalize_input=True)`) with its weight download replaced by random weights
and random BatchNorm statistics (no network here). Inputs of 64x64 and 320x320 cover up- and
down-sampling in the resize to 299x299. Tolerance: fp32 max absolute error <= 1e-4 of the
output's scale (max |reference|); the reference outputs are far from flat, and the converted
weights with their largest convolution kernel nudged by 1% of its RMS miss by more than 10x the
tolerance (measured 40-45x).
"""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import assert_far_from_flat, import_pytorch_fid, nudged

from jaxdiff.convert.inception import inception_from_torch
from jaxdiff.convert.safetensors_io import write_safetensors
from jaxdiff.errors import UserError
from jaxdiff.models.inception import InceptionV3


def _randomize(net: torch.nn.Module, seed: int) -> None:
    """He-scaled conv / fc weights, BatchNorm affine and running statistics away from identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            shape = tensor.shape
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                value = 0.5 + torch.rand(shape, generator=gen)
            elif name.endswith("running_mean") or name.endswith("bias"):
                value = 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith("bn.weight"):
                value = 1 + 0.1 * torch.randn(shape, generator=gen)
            else:  # conv [O, I, kh, kw] or linear [O, I]
                fan_in = int(np.prod(shape[1:]))
                value = torch.randn(shape, generator=gen) * np.sqrt(2.0 / fan_in)
            tensor.copy_(value)


def _reference(variant: str, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(pytorch-fid's InceptionV3 wrapper, the Inception3 inside it), randomly initialized."""
    pti = import_pytorch_fid().inception
    import torchvision

    built = {}

    def fid_net():
        built["net"] = build_fid()
        return built["net"]

    def torchvision_net(**kwargs):
        # What `_inception_v3(weights="DEFAULT")` builds, without the download; the auxiliary
        # classifier stays in so that the converter is seen to skip its keys.
        built["net"] = torchvision.models.inception_v3(weights=None, init_weights=False)
        return built["net"]

    build_fid = pti.fid_inception_v3
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pti, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(torchvision.models.Inception3, "load_state_dict", lambda *a, **k: None)
        if variant == "fid":
            patch.setattr(pti, "fid_inception_v3", fid_net)
        else:  # (`fid_inception_v3` builds its network with `_inception_v3` too)
            patch.setattr(pti, "_inception_v3", torchvision_net)
        wrapper = pti.InceptionV3(
            [3], resize_input=True, normalize_input=True, use_fid_inception=variant == "fid"
        )
    net = built["net"]
    _randomize(net, seed)
    return wrapper.eval(), net.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """Per variant: the references, the .pth and .safetensors weight files, the converted model."""
    out = {}
    for seed, variant in enumerate(("fid", "torchvision")):
        wrapper, net = _reference(variant, seed)
        folder = tmp_path_factory.mktemp(variant)
        state = net.state_dict()
        torch.save(state, folder / "weights.pth")
        write_safetensors(folder / "weights.safetensors", {k: v.numpy() for k, v in state.items()})
        model = inception_from_torch(folder / "weights.pth", variant)
        out[variant] = dict(wrapper=wrapper, net=net, folder=folder, model=model, state=state)
    return out


TOLERANCE = 1e-4  # max abs error over the output's scale


def _jit(model: nnx.Module, method: str | None = None):
    """A compiled call of `model` (or `model.method`); `weights=` calls it with other weights of
    the same shapes without compiling again."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def call(state, x):
        module = nnx.merge(graphdef, state)
        return (getattr(module, method) if method else module)(x)

    return lambda x, weights=state: np.asarray(call(weights, x))


def _max_error(out: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    assert out.shape == expected.shape
    return float(np.abs(out - expected).max()), float(np.abs(expected).max())


@pytest.mark.parametrize("variant", ["fid", "torchvision"])
def test_features_and_logits_match_pytorch(variant, saved):
    ref = saved[variant]
    model = ref["model"]
    assert isinstance(model, InceptionV3)
    features, logits = _jit(model), _jit(model, "logits")
    rng = np.random.RandomState(0)
    for size in (64, 320):
        images = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
        with torch.no_grad():
            (pool3,) = ref["wrapper"](torch.tensor(images.transpose(0, 3, 1, 2)))
            pool3 = pool3.flatten(1)
            expected_logits = ref["net"].fc(pool3).numpy()
        assert_far_from_flat(pool3.numpy())
        assert_far_from_flat(expected_logits)
        out = features(images)
        err, scale = _max_error(out, pool3.numpy())
        print(f"{variant} {size}x{size} pool3: max abs err {err:.2e}, scale {scale:.3g}")
        assert err <= TOLERANCE * scale, (err, scale)
        err, scale = _max_error(logits(out), expected_logits)
        print(f"{variant} {size}x{size} logits: max abs err {err:.2e}, scale {scale:.3g}")
        assert err <= TOLERANCE * scale, (err, scale)
    # The check can fail: the largest convolution kernel nudged (on the last images, 320x320).
    wrong = features(images, weights=nudged(nnx.state(model), where="Mixed"))
    err, scale = _max_error(wrong, pool3.numpy())
    print(f"{variant} nudged pool3: max abs err {err:.2e}, scale {scale:.3g}")
    assert err > 10 * TOLERANCE * scale, (err, scale)


@pytest.mark.parametrize("variant", ["fid", "torchvision"])
def test_safetensors_and_state_dict_give_the_same_weights(variant, saved):
    ref = saved[variant]
    expected = nnx.state(ref["model"])
    for source in (ref["folder"] / "weights.safetensors", ref["state"]):
        got = nnx.state(inception_from_torch(source, variant))
        jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_parameters_and_statistics_match_the_reference(saved):
    """Every torch tensor but AuxLogits and num_batches_tracked has one NNX counterpart."""
    for variant in ("fid", "torchvision"):
        state = saved[variant]["state"]
        used = sum(
            v.numel()
            for k, v in state.items()
            if not k.startswith("AuxLogits.") and not k.endswith("num_batches_tracked")
        )
        model = saved[variant]["model"]
        ours = sum(x.size for x in jax.tree.leaves(nnx.state(model, (nnx.Param, nnx.BatchStat))))
        assert ours == used


def _one_line_error(match: str, call) -> str:
    with pytest.raises(UserError, match=match) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_image_shape_is_a_one_line_error(saved):
    model = saved["fid"]["model"]
    _one_line_error(r"\[B, H, W, 3\].*\(2, 3, 64, 64\)", lambda: model(np.zeros((2, 3, 64, 64))))
    _one_line_error(r"\(64, 64, 3\)", lambda: model(np.zeros((64, 64, 3))))


def test_missing_and_misshapen_keys_are_one_line_errors(saved):
    state = dict(saved["fid"]["state"])
    for key in ("Mixed_6b.branch7x7_2.conv.weight", "Mixed_5b.branch_pool.bn.running_var"):
        broken = {k: v for k, v in state.items() if k != key}
        message = _one_line_error("missing 1 keys", lambda b=broken: inception_from_torch(b))
        assert key in message
    broken = dict(state, **{"fc.weight": torch.zeros(10, 2048)})
    _one_line_error(r"fc\.weight has shape \(10, 2048\)", lambda: inception_from_torch(broken))
    broken = dict(state, **{"Conv2d_1a_3x3.bn.running_mean": torch.zeros(31)})
    _one_line_error(
        r"Conv2d_1a_3x3\.bn\.running_mean has shape", lambda: inception_from_torch(broken)
    )
    broken = dict(state, **{"Mixed_5b.extra.conv.weight": torch.zeros(1)})
    _one_line_error(
        r"unexpected 1 keys: Mixed_5b\.extra\.conv\.weight", lambda: inception_from_torch(broken)
    )
    # The FID network's 1008-class head does not fit the torchvision variant.
    _one_line_error(
        r"fc\.bias has shape \(1008,\)", lambda: inception_from_torch(state, "torchvision")
    )
    _one_line_error("unknown InceptionV3 variant 'tf'", lambda: inception_from_torch(state, "tf"))


def test_unreadable_files_are_one_line_errors(tmp_path):
    _one_line_error("is not a file", lambda: inception_from_torch(tmp_path / "absent.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    _one_line_error("cannot be read safely", lambda: inception_from_torch(bad))


def test_parameters_carry_logical_axes(saved, check_logical_axes):
    check_logical_axes(saved["torchvision"]["model"])
