"""Classifier-free guidance: one batched call, the hand formula, scale 1, guidance rescale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.diffusion import karras
from jaxdiff.errors import UserError

B = 3


class CountingDenoiser:
    """A conditional denoiser `0.5 * x + sigma * emb` that records the batch of every call."""

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, cond):  # x [N, 4, 2], cond {"emb": [N, 4, 2]}
        self.batches.append(x.shape[0])
        return 0.5 * x + sigma * cond["emb"]


def _inputs():
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (B, 4, 2))
    cond = {"emb": jax.random.normal(k[1], (B, 4, 2))}
    uncond = {"emb": jax.random.normal(k[2], (B, 4, 2)) * 0.1}
    return x, cond, uncond


def test_cfg_is_one_batched_call_and_the_hand_formula():
    x, cond, uncond = _inputs()
    d = CountingDenoiser()
    out = samplers.cfg(d, cond, uncond, scale=7.5)(x, jnp.float32(2.0))
    assert d.batches == [2 * B]
    d_c = 0.5 * x + 2.0 * cond["emb"]
    d_u = 0.5 * x + 2.0 * uncond["emb"]
    np.testing.assert_allclose(out, d_u + 7.5 * (d_c - d_u), rtol=1e-5, atol=1e-6)


def test_per_example_sigma_goes_with_both_halves():
    """A network `net(x, t [B], cond)` guided the same way: t is doubled with the batch."""
    x, cond, uncond = _inputs()
    sigma = jnp.asarray([0.5, 1.0, 2.0])  # [B]

    def net(x, t, cond):
        return 0.5 * x + t[:, None, None] * cond["emb"]

    out = samplers.cfg(net, cond, uncond, scale=3.0)(x, sigma)

    def row(tree, i):
        return jax.tree.map(lambda a: a[i : i + 1], tree)

    per_example = [
        samplers.cfg(net, row(cond, i), row(uncond, i), 3.0)(x[i : i + 1], sigma[i : i + 1])
        for i in range(B)
    ]
    np.testing.assert_allclose(out, jnp.concatenate(per_example), rtol=1e-6)


def test_scale_one_is_the_conditional_denoiser():
    x, cond, uncond = _inputs()
    d = CountingDenoiser()
    out = samplers.cfg(d, cond, uncond, scale=1.0, rescale=0.7)(x, jnp.float32(2.0))
    np.testing.assert_array_equal(out, 0.5 * x + 2.0 * cond["emb"])
    assert d.batches == [B], "no unconditional half at scale 1"
    # A traced scale of 1 takes the batched path and still gives the conditional prediction.
    traced = jax.jit(lambda s: samplers.cfg(d, cond, uncond, s)(x, jnp.float32(2.0)))
    np.testing.assert_allclose(traced(1.0), out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guidance_rescale_matches_lin_et_al(phi):
    x, cond, uncond = _inputs()
    out = samplers.cfg(CountingDenoiser(), cond, uncond, scale=5.0, rescale=phi)(x, 2.0)
    d_c = np.asarray(0.5 * x + 2.0 * cond["emb"])
    d_u = np.asarray(0.5 * x + 2.0 * uncond["emb"])
    d_cfg = d_u + 5.0 * (d_c - d_u)
    # diffusers' rescale_noise_cfg (torch.std, N - 1), applied to the x0 prediction.
    std_c = d_c.std(axis=(1, 2), ddof=1, keepdims=True)
    std_cfg = d_cfg.std(axis=(1, 2), ddof=1, keepdims=True)
    expected = phi * d_cfg * std_c / std_cfg + (1 - phi) * d_cfg
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    if phi == 1.0:  # full rescale restores the conditional prediction's per-example std
        np.testing.assert_allclose(
            np.asarray(out).std(axis=(1, 2)), d_c.std(axis=(1, 2)), rtol=1e-5
        )


def test_cfg_drives_a_sampler_in_float32():
    x, cond, uncond = _inputs()

    def bf16_denoiser(x, sigma, c):
        return (0.5 * x + sigma * c["emb"]).astype(jnp.bfloat16)

    guided = samplers.cfg(bf16_denoiser, cond, uncond, scale=3.0, rescale=0.5)
    out = samplers.get("heun")(guided, x * 10.0, karras(6, 0.01, 10.0))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_rescale_out_of_range():
    _, cond, uncond = _inputs()
    with pytest.raises(UserError, match=r"guidance rescale=1.5 must be in \[0, 1\]"):
        samplers.cfg(CountingDenoiser(), cond, uncond, scale=5.0, rescale=1.5)
