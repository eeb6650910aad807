"""Every image has its own key: the same seed gives the same image on 1 or 8 devices, in a batch
of 1 or 4 and in two calls; the compiled loop is reused for new prompts, seeds and guidance
scales."""

import functools

import jax
import numpy as np
import pytest
from compile_events import compile_events

from jaxdiff.pipelines.stable_diffusion import StableDiffusion

# Float differences of batched vs unbatched convolutions on CPU.
TOLERANCE = 1e-5


@functools.cache
def _pipe(folder, devices: int) -> StableDiffusion:
    return StableDiffusion.from_pretrained(folder, devices=jax.local_devices()[:devices])


@pytest.mark.parametrize(
    ("mode", "sampler"), [("text", "euler_ancestral"), ("img2img", "dpmpp_2m_sde")]
)
def test_same_images_on_one_and_eight_devices_and_any_batch(sd_folders, mode, sampler):
    """A stochastic sampler, so the sampler's noise is per image too; img2img also samples the
    VAE posterior per image."""
    folder = sd_folders["epsilon"]
    image = np.random.RandomState(0).rand(16, 16, 3).astype(np.float32)
    settings = dict(num_inference_steps=3, sampler=sampler, guidance_scale=4.0)

    def run(pipe, prompts, **extra):
        if mode == "text":
            return pipe(prompts, **settings, **extra)
        return pipe.img2img(prompts, image, strength=0.7, **settings, **extra)

    prompts = ["a cat", "b", "c", "d"]
    one_device = _pipe(folder, 1)
    eight_devices = _pipe(folder, 8)
    single = run(one_device, prompts[:1], seed=7)  # [1, H, W, 3]
    batch_one_device = run(one_device, prompts, seed=7)  # [4, H, W, 3]
    batch_eight = run(eight_devices, prompts, seed=7)
    repeated = run(eight_devices, prompts[:1], seed=7, num_images_per_prompt=4)
    later = run(eight_devices, prompts[2:], seed=7, first_index=2)  # a set made in two calls
    other_seed = run(eight_devices, prompts[:1], seed=8)
    assert batch_eight.shape == (4, 16, 16, 3) and repeated.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(batch_one_device, batch_eight, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(single[0], batch_eight[0], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(repeated[0], batch_eight[0], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(later, batch_eight[2:], rtol=0, atol=TOLERANCE)
    # The other images of a prompt differ: each has its own noise.
    assert np.abs(repeated[1] - repeated[0]).max() > 0.05
    assert np.abs(other_seed[0] - single[0]).max() > 0.05


def test_new_prompt_seed_and_guidance_do_not_recompile(sd_folders):
    pipe = _pipe(sd_folders["v_prediction"], 8)
    settings = dict(num_inference_steps=2, sampler="dpmpp_2m")
    first = pipe(["a red cat", "sky"], seed=0, guidance_scale=5.0, **settings)
    with compile_events() as compiles:
        second = pipe(
            ["a blue dog", "red"], seed=1, guidance_scale=3.0, guidance_rescale=0.5, **settings
        )
        assert compiles == []
        assert np.abs(first - second).max() > 0.05
        pipe(["a"], seed=1, guidance_scale=3.0, num_inference_steps=3)  # more steps compile
        assert compiles


def test_parameters_split_over_eight_devices_give_the_same_images(sd_folders):
    """`shard_parameters`: the weights split over the devices by the FSDP rules (the state
    really is split), the same images as a whole copy on each device, and back."""
    pipe = StableDiffusion.from_pretrained(sd_folders["epsilon"], devices=jax.local_devices()[:8])
    settings = dict(num_inference_steps=2, sampler="dpmpp_2m", guidance_scale=4.0, seed=3)
    whole = pipe(["a cat", "b"], **settings)
    leaves = jax.tree.leaves(pipe.shard_parameters()._state)
    split = [a for a in leaves if not a.sharding.is_fully_replicated]
    assert len(split) > len(leaves) // 2, (len(split), len(leaves))
    biggest = max(leaves, key=lambda a: a.size)
    assert biggest.addressable_shards[0].data.size == biggest.size // 8
    np.testing.assert_allclose(pipe(["a cat", "b"], **settings), whole, rtol=0, atol=TOLERANCE)
    leaves = jax.tree.leaves(pipe.shard_parameters(False)._state)
    assert all(a.sharding.is_fully_replicated for a in leaves)
