"""A flow-matching text-to-image model sampled from t = 1 (sigma = inf, diffusers' flow-match grid)
through jaxdiff's pipeline: text-to-image is the flow's Euler steps on the guided velocity, from
the unit noise; img2img starts part-way down from the noised image, and from t = 1 keeps nothing
of it."""

import functools
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from random_weights import random_model

from jaxdiff.configuration import load_config
from jaxdiff.errors import UserError
from jaxdiff.train.tasks import make_task

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "shapes_flow.py"
PROMPTS = ["a red circle in the center", "a blue square in the top left corner"]
STEPS, GUIDANCE = 4, 2.5
TOLERANCE = 1e-4  # of the latents' scale


@functools.cache
def task_and_model():
    task = make_task(load_config(f"{CONFIG}:tiny", ["data.image_size=16"]))
    model = random_model(lambda: task.build_model(nnx.Rngs(0)), seed=3)
    model.latent_scale.set_value(jnp.float32(1.0))  # not a parameter: pixels need no scale
    return task, model


def flow_euler(times: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The flow's Euler steps `x_s = x_t + (s - t) v` from `x` at `times[0]` to 0, on the
    velocity guided from the empty prompt's."""
    task, model = task_and_model()
    context = model.encode_text(jnp.asarray(task.text_ids(PROMPTS)))
    empty = model.encode_text(jnp.asarray(task.text_ids([""] * len(PROMPTS))))
    for t, s in zip(times, [*times[1:], 0.0], strict=True):
        time = jnp.full((len(PROMPTS),), 1000.0 * t)  # the process's time scale
        conditional = model.network(jnp.asarray(x), time, context)
        unconditional = model.network(jnp.asarray(x), time, empty)
        velocity = unconditional + GUIDANCE * (conditional - unconditional)
        x = x + (s - t) * np.asarray(velocity)
    return x


def flow_times() -> np.ndarray:
    """The flow-match grid's times `[STEPS]`, from 1."""
    task, _ = task_and_model()
    sigmas = np.asarray(task.diffusion.sampling_sigmas(STEPS, "flow_match"), np.float64)[:-1]
    finite = np.isfinite(sigmas)
    return np.where(finite, sigmas / (1.0 + np.where(finite, sigmas, 0.0)), 1.0)


def run(**arguments) -> np.ndarray:
    task, model = task_and_model()
    settings = dict(
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        sampler="euler",
        sigma_schedule="flow_match",
        output_type="latent",
    )
    method = arguments.pop("method", "__call__")
    return getattr(task.pipeline(model), method)(PROMPTS, **{**settings, **arguments})


def noise() -> np.ndarray:
    return np.random.RandomState(0).randn(len(PROMPTS), 16, 16, 3).astype(np.float32)


def image() -> np.ndarray:
    return np.random.RandomState(1).uniform(0, 1, (len(PROMPTS), 16, 16, 3)).astype(np.float32)


def assert_close(got: np.ndarray, want: np.ndarray, wrong: np.ndarray) -> None:
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < TOLERANCE * scale
    assert np.abs(wrong - want).max() > 10 * TOLERANCE * scale  # the comparison can fail


def test_text_to_image_from_t_1_is_the_flow_euler_steps():
    times = flow_times()
    assert times[0] == 1.0 and np.all(np.diff(times) < 0)
    want = flow_euler(times, noise())
    assert_close(run(latents=noise()), want, run(latents=1.05 * noise()))


def test_img2img_starts_down_the_grid_from_the_noised_image_and_from_t_1_keeps_nothing():
    times = flow_times()[STEPS // 2 :]  # strength 0.5: the last half of the steps
    known = 2.0 * image() - 1.0  # a pixel-space model's latents
    start = (1.0 - times[0]) * known + times[0] * noise()
    want = flow_euler(times, start)
    arguments = dict(method="img2img", image=image(), strength=0.5)
    assert_close(run(**arguments, latents=noise()), want, run(**arguments, latents=1.05 * noise()))
    from_noise = run(latents=noise())
    whole = run(method="img2img", image=image(), strength=1.0, latents=noise())
    np.testing.assert_allclose(whole, from_noise, rtol=0, atol=1e-6)


def test_inpainting_from_t_1_keeps_the_known_region():
    mask = np.zeros((len(PROMPTS), 16, 16), np.float32)
    mask[:, 4:12, 4:12] = 1.0
    painted = run(method="inpaint", image=image(), mask=mask, latents=noise())
    known = 2.0 * image() - 1.0
    keep = mask[..., None] < 0.5
    np.testing.assert_array_equal(np.where(keep, painted, 0), np.where(keep, known, 0))
    assert np.all(np.isfinite(painted)) and np.abs(painted - known)[~keep[..., 0]].max() > 0.1


def test_a_sampler_without_a_limit_at_t_1_is_refused():
    with pytest.raises(UserError, match=r"sampler 'heun' has no finite step from sigma = inf"):
        run(sampler="heun", latents=noise())
