"""Converted models equal their PyTorch references (diffusers / transformers) on the same inputs.

Each reference is saved by its own library; `from_diffusers` reads the folder. Tolerance: fp32
max absolute error <= 1e-4 of the output's scale (max |reference|). The references' weights are
far from their initial values and their outputs far from flat (`reference_models`); for each
model, the converted weights with one array nudged by 1% of its RMS miss by more than 10x the
tolerance (measured 18-49x for the UNets, 150x for the VAE decoders, 90x for CLIP).
"""

import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from reference_models import (
    CLIP_BASE,
    CONTROLNET_CONFIGS,
    UNET_CONFIGS,
    VAE_CONFIGS,
    added_conditioning,
    assert_far_from_flat,
    controlnet_inputs,
    nudged,
    unet_inputs,
)

from jaxdiff.convert import from_diffusers
from jaxdiff.convert.diffusers import unet_table
from jaxdiff.convert.name_tables import state_dict
from jaxdiff.models import AutoencoderKL, CLIPTextTransformer, ControlNet, UNet

TOLERANCE = 1e-4  # max abs error over the output's scale
MISS = 10  # a deliberately wrong run misses by more than MISS x the tolerance


def _jit_call(model, method=None):
    """A compiled call of `model` (or of `model.method`) on numpy inputs; `weights=` calls it
    with other weights of the same shapes (`nudged` ones) without compiling again."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def call(state, *args, **kwargs):
        module = nnx.merge(graphdef, state)
        return (getattr(module, method) if method else module)(*args, **kwargs)

    return lambda *args, weights=state, **kwargs: call(weights, *args, **kwargs)


def _relative_error(out, expected) -> float:
    out, expected = np.asarray(out), np.asarray(expected)
    assert out.shape == expected.shape
    return float(np.abs(out - expected).max() / np.abs(expected).max())


def _assert_close(out, expected):
    assert_far_from_flat(expected)
    assert _relative_error(out, expected) <= TOLERANCE, _relative_error(out, expected)


def _assert_misses(wrong, expected):
    """The output of a deliberately wrong run misses by more than MISS x the tolerance."""
    assert _relative_error(wrong, expected) > MISS * TOLERANCE, _relative_error(wrong, expected)


def _nchw(x):
    return torch.tensor(np.asarray(x).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
def test_unet_matches_diffusers(name, saved_unets):
    ref, folder = saved_unets[name]
    unet = from_diffusers(folder)
    assert isinstance(unet, UNet)
    x, t, ctx = unet_inputs(UNET_CONFIGS[name])
    added = added_conditioning(UNET_CONFIGS[name])  # SDXL's pooled text and micro-conditioning
    with torch.no_grad():
        torch_added = {k: torch.tensor(v) for k, v in added.items()}
        labels = torch_added.pop("class_labels", None)
        inputs = (_nchw(x), torch.tensor(t), torch.tensor(ctx))
        expected = ref(*inputs, class_labels=labels, added_cond_kwargs=torch_added or None)
    expected = expected.sample.numpy().transpose(0, 2, 3, 1)
    run = _jit_call(unet)
    _assert_close(run(x, t, ctx, **added), expected)
    _assert_misses(run(x, t, ctx, weights=nudged(nnx.state(unet)), **added), expected)
    if "time_ids" in added:  # the micro-conditioning counts: other sizes miss
        _assert_misses(run(x, t, ctx, **{**added, "time_ids": added["time_ids"] + 64}), expected)
    if labels is not None:  # so do the class labels
        _assert_misses(run(x, t, ctx, class_labels=added["class_labels"][::-1]), expected)


def _residuals(down, mid) -> np.ndarray:
    """A ControlNet's residuals (NHWC arrays, or diffusers' NCHW tensors) flattened into one
    vector, each residual divided by its own scale so that every one counts."""
    arrays = [np.asarray(r) for r in [*down, mid]]
    if isinstance(mid, torch.Tensor):
        arrays = [a.transpose(0, 2, 3, 1) for a in arrays]
    return np.concatenate([(a / np.abs(a).max()).ravel() for a in arrays])[None]


@pytest.mark.parametrize("guess_mode", [False, True])
@pytest.mark.parametrize("name", sorted(CONTROLNET_CONFIGS))
def test_controlnet_matches_diffusers(name, guess_mode, saved_controlnets):
    ref, folder = saved_controlnets[name]
    controlnet = from_diffusers(folder)
    assert isinstance(controlnet, ControlNet)
    x, t, ctx, cond = controlnet_inputs(CONTROLNET_CONFIGS[name])
    with torch.no_grad():
        down, mid = ref(
            _nchw(x), torch.tensor(t), torch.tensor(ctx), _nchw(cond), 0.7, guess_mode=guess_mode
        ).to_tuple()
    expected = _residuals(down, mid)
    for reference in [*down, mid]:  # every residual varies, each relative to its own scale
        assert_far_from_flat(reference.reshape(1, -1).numpy(), 0.1 * reference.abs().max())
    run = _jit_call(controlnet)
    _assert_close(_residuals(*run(x, t, ctx, cond, 0.7, guess_mode)), expected)
    wrong = run(x, t, ctx, cond, 0.7, guess_mode, weights=nudged(nnx.state(controlnet)))
    _assert_misses(_residuals(*wrong), expected)


def test_unet_adds_controlnet_residuals_as_diffusers(saved_unets, saved_controlnets):
    ref_unet, unet_folder = saved_unets["sd1"]
    ref_controlnet, controlnet_folder = saved_controlnets["sd1"]
    x, t, ctx, cond = controlnet_inputs(CONTROLNET_CONFIGS["sd1"])
    with torch.no_grad():
        down, mid = ref_controlnet(
            _nchw(x), torch.tensor(t), torch.tensor(ctx), _nchw(cond), return_dict=False
        )
        expected = ref_unet(
            _nchw(x),
            torch.tensor(t),
            torch.tensor(ctx),
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample.numpy()
        plain = ref_unet(_nchw(x), torch.tensor(t), torch.tensor(ctx)).sample.numpy()
    expected, plain = expected.transpose(0, 2, 3, 1), plain.transpose(0, 2, 3, 1)
    controlnet, unet = from_diffusers(controlnet_folder), from_diffusers(unet_folder)
    graphdef, state = nnx.split((controlnet, unet))

    @jax.jit
    def steered(state, x, t, ctx, cond):
        controlnet, unet = nnx.merge(graphdef, state)
        return unet(x, t, ctx, *controlnet(x, t, ctx, cond))

    _assert_close(steered(state, x, t, ctx, cond), expected)
    _assert_misses(plain, expected)  # the residuals matter
    _assert_misses(steered(nudged(state, where="[0]"), x, t, ctx, cond), expected)


def test_from_unet_copies_the_encoder_as_diffusers(saved_unets):
    from diffusers import ControlNetModel

    ref_unet, folder = saved_unets["sd1"]
    unet = from_diffusers(folder)
    controlnet = ControlNet.from_unet(unet, rngs=nnx.Rngs(0))
    reference = ControlNetModel.from_unet(ref_unet).state_dict()
    copied = [k for k in reference if k.split(".")[0] in ("conv_in", "time_embedding")]
    copied += [k for k in reference if k.split(".")[0] in ("down_blocks", "mid_block")]
    state = state_dict(unet_table(dict(controlnet.architecture)), controlnet)
    assert sorted(state) == sorted(reference)
    for key in copied:
        np.testing.assert_array_equal(state[key], reference[key].numpy(), err_msg=key)
    zero = r"controlnet_(cond_embedding\.conv_out|down_blocks\.\d+|mid_block)\.(weight|bias)"
    zeros = [k for k in reference if re.fullmatch(zero, k)]
    assert len(zeros) == 2 * (len(controlnet.controlnet_down_blocks) + 2)
    for key in zeros:  # the zero convolutions, as diffusers'
        assert not np.any(reference[key].numpy()) and not np.any(state[key]), key


@pytest.mark.parametrize("name", sorted(VAE_CONFIGS))
def test_vae_encode_and_decode_match_diffusers(name, saved_vaes):
    ref, folder = saved_vaes[name]
    vae = from_diffusers(folder)
    assert isinstance(vae, AutoencoderKL)
    assert vae.scaling_factor == ref.config.scaling_factor
    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    mean, logvar = _jit_call(vae, "encode")(x)
    with torch.no_grad():
        posterior = ref.encode(_nchw(x)).latent_dist
        expected_mean = posterior.mean.numpy().transpose(0, 2, 3, 1)
        expected_logvar = posterior.logvar.numpy().transpose(0, 2, 3, 1)
        z = rng.randn(*expected_mean.shape).astype(np.float32)
        expected_image = ref.decode(_nchw(z)).sample.numpy().transpose(0, 2, 3, 1)
    _assert_close(mean, expected_mean)
    _assert_close(logvar, expected_logvar)
    decode = _jit_call(vae, "decode")
    _assert_close(decode(z), expected_image)
    _assert_misses(decode(z, weights=nudged(nnx.state(vae))), expected_image)  # in the decoder


def _token_ids(eos: int, batch: int = 3, length: int = 12) -> np.ndarray:
    """Random ids with an end-of-text token at a different place per row.

    With a real eos id the rows continue with a larger pad id, so pooling at the largest id would
    be wrong; with the legacy id 2 the end token is the largest id and pads are 0.
    """
    rng = np.random.RandomState(0)
    ids = rng.randint(3, 50, (batch, length))
    end_token, pad = (CLIP_BASE["vocab_size"] - 1, 0) if eos == 2 else (eos, 55)
    for row, end in enumerate((4, length - 1, 7)[:batch]):
        ids[row, end] = end_token
        ids[row, end + 1 :] = pad
    return ids


@pytest.mark.parametrize("name", ["quick_gelu", "gelu", "projection"])
def test_clip_text_matches_transformers(name, saved_clips):
    ref, folder = saved_clips[name]
    encoder = from_diffusers(folder)
    assert isinstance(encoder, CLIPTextTransformer)
    ids = _token_ids(ref.config.eos_token_id)
    run = _jit_call(encoder)
    out, skipped = run(ids), jax.jit(lambda i: encoder(i, skip_last_layers=1))(ids)
    raw = jax.jit(lambda i: encoder(i, skip_last_layers=1, final_norm=False))(ids)  # SDXL's
    with torch.no_grad():
        expected = ref(torch.tensor(ids), output_hidden_states=True)
        final_norm = getattr(ref, "text_model", ref).final_layer_norm
        penultimate = final_norm(expected.hidden_states[-2])
    _assert_close(out.last_hidden_state, expected.last_hidden_state.numpy())
    _assert_close(skipped.last_hidden_state, penultimate.numpy())
    _assert_close(raw.last_hidden_state, expected.hidden_states[-2].numpy())
    _assert_misses(raw.last_hidden_state, penultimate.numpy())  # the norm counts
    wrong = run(ids, weights=nudged(nnx.state(encoder))).last_hidden_state
    _assert_misses(wrong, expected.last_hidden_state.numpy())
    if name == "projection":
        assert out.text_embeds.shape == (3, 20)
        _assert_close(out.text_embeds, expected.text_embeds.numpy())
    else:
        assert out.text_embeds is None
        _assert_close(out.pooled_output, expected.pooler_output.numpy())


def test_bf16_compute_with_fp32_parameters_stays_close(saved_unets):
    ref, folder = saved_unets["sd1"]
    unet = from_diffusers(folder, dtype=jax.numpy.bfloat16)
    params = jax.tree.leaves(nnx.state(unet, nnx.Param))
    assert all(p.dtype == np.float32 for p in params)
    x, t, ctx = unet_inputs(UNET_CONFIGS["sd1"])
    out = _jit_call(unet)(x, t, ctx)
    assert out.dtype == jax.numpy.bfloat16
    with torch.no_grad():
        expected = ref(_nchw(x), torch.tensor(t), torch.tensor(ctx)).sample.numpy()
    err = np.abs(np.asarray(out, np.float32) - expected.transpose(0, 2, 3, 1)).max()
    assert err < 0.05 * np.abs(expected).max()
