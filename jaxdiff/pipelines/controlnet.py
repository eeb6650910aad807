"""ControlNet conditioning of a pipeline, with diffusers' argument names:

    pipe = StableDiffusion.from_pretrained("sd15", controlnet="sd15-canny")
    images = pipe("a house", control_image=edges, controlnet_conditioning_scale=0.8)
    images = pipe.img2img("a house", photo, control_image=edges, strength=0.6)

    pipe = StableDiffusion.from_pretrained("sd15", controlnet=["canny", "depth"])
    images = pipe("a house", control_image=[edges, depth], controlnet_conditioning_scale=[1, 0.5],
                  control_guidance_end=[1.0, 0.6])

A call's control images (one per ControlNet: one image or one per prompt, PIL or numpy in
[0, 1], of the generated images' size), scales, guess mode and guidance windows become per-image
arrays that ride along the compiled loop as traced values: changing any of them does not
recompile. At the sampler's step i of n, ControlNet k is on when `start_k <= i / n` and
`(i + 1) / n <= end_k` (diffusers' `controlnet_keep`); the residuals of several ControlNets are
summed, each with its scale. In guess mode the residuals ramp from 0.1 to 1 over the UNet's
levels and the unconditional half of classifier-free guidance gets none; a
`global_pool_conditions` net averages its residuals over their positions and turns guess mode on
(without the ramp), as diffusers decides it. The ControlNets still run on the unconditional half,
whose residuals are then scaled by 0 (guess mode is traced).

The step of a network evaluation is read from its noise level: sigma belongs to step i when
`sigmas[i + 1] < sigma <= sigmas[i]` (above `sigmas[0]`: step 0). For a sampler that evaluates
once per step at the grid's sigmas (DDIM, Euler, DPM++ 2M, UniPC, LMS, ...) that is the step's
index, as diffusers counts steps. Evaluations at other noise levels (a Heun corrector at
`sigmas[i + 1]`, churn above `sigmas[i]`) take the window of the step their noise level falls
in; diffusers' Heun, KDPM2 and PNDM schedulers count their timesteps otherwise, so windows with
those samplers differ from diffusers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import UserError, require
from jaxdiff.models.controlnet import ControlNet, check_steers
from jaxdiff.models.unet import UNet
from jaxdiff.pipelines import image_io

ARGUMENTS = (
    "control_image",
    "controlnet_conditioning_scale",
    "guess_mode",
    "control_guidance_start",
    "control_guidance_end",
)
"""The call arguments of a pipeline with ControlNets."""

DEFAULT_SCALES = {"text": 1.0, "img2img": 0.8, "inpaint": 0.5, "inpaint_channels": 0.5}
"""`controlnet_conditioning_scale`'s default per mode, as in diffusers' ControlNet text-to-image,
img2img and inpainting pipelines."""


def _per_net(value: Any, nets: int, name: str) -> list[Any]:
    """One value for every net, or a list or tuple of one per net."""
    values = list(value) if isinstance(value, list | tuple) else [value] * nets
    require(
        len(values) == nets,
        f"{name} has {len(values)} values for {nets} ControlNets; accepted: one value or one "
        "per ControlNet",
    )
    for v in values:
        require(
            isinstance(v, int | float | np.number) and not isinstance(v, bool) and np.isfinite(v),
            f"{name}={value!r}; accepted: finite numbers",
        )
    return [float(v) for v in values]


def _images_per_net(control_image: Any, nets: int) -> list[Any]:
    """A call's control images, one entry (an image or a batch) per ControlNet."""
    if nets == 1:
        return [control_image]
    require(
        isinstance(control_image, list | tuple) and len(control_image) == nets,
        f"control_image for {nets} ControlNets; accepted: a list of {nets} entries (an image "
        "or one per prompt each), got "
        + (
            f"{len(control_image)} entries"
            if isinstance(control_image, list | tuple)
            else type(control_image).__name__
        ),
    )
    return list(control_image)


Architectures = Sequence[dict[str, Any]]  # the pipeline's ControlNets' `architecture`s


def control_size(arguments: dict[str, Any], controlnets: Architectures) -> tuple[int, int] | None:
    """The size `(H, W)` of the first ControlNet's control image, if the call gives one."""
    if "control_image" not in arguments:
        return None
    first = _images_per_net(arguments["control_image"], len(controlnets))[0]
    channels = controlnets[0]["conditioning_channels"]
    images = image_io.as_batch(first, "control_image", channels)
    return images.shape[1], images.shape[2]


def control_rows(
    arguments: dict[str, Any],
    controlnets: Architectures,
    mode: str,
    prompts: int,
    repeat: int,
    size: tuple[int, int],
) -> dict[str, Any]:
    """A call's ControlNet arguments -> per-image arrays (B = prompts x repeat rows): `images`
    (one `[B, H, W, C_k]` in [0, 1] per net), `scale`, `start`, `end` (`[B, nets]`) and `guess`
    ([B], 1.0 in guess mode). The scale's default depends on the mode, as diffusers' pipelines'
    (`DEFAULT_SCALES`)."""
    nets = len(controlnets)
    require(
        "control_image" in arguments,
        f"a pipeline with {nets} ControlNet{'s' * (nets > 1)} needs control_image= (one "
        "image per ControlNet)",
    )
    name = "controlnet_conditioning_scale"
    scale = _per_net(arguments.get(name, DEFAULT_SCALES[mode]), nets, name)
    start = _per_net(arguments.get("control_guidance_start", 0.0), nets, "control_guidance_start")
    end = _per_net(arguments.get("control_guidance_end", 1.0), nets, "control_guidance_end")
    for s in scale:
        require(s >= 0.0, f"controlnet_conditioning_scale={s}; accepted: numbers >= 0")
    for s, e in zip(start, end, strict=True):
        require(
            0.0 <= s < e <= 1.0,
            f"control_guidance_start={s}, control_guidance_end={e}; accepted: 0 <= start < end "
            "<= 1 (fractions of the steps)",
        )
    guess_mode = arguments.get("guess_mode", False)
    require(isinstance(guess_mode, bool), f"guess_mode={guess_mode!r}; accepted: True or False")
    guess = guess_mode or controlnets[0]["global_pool_conditions"]

    count = prompts * repeat
    images = []
    for k, (net, entry) in enumerate(
        zip(controlnets, _images_per_net(arguments["control_image"], nets), strict=True)
    ):
        what = "control_image" if nets == 1 else f"control_image[{k}]"
        channels = net["conditioning_channels"]
        batch = image_io.as_batch(entry, what, channels)  # [N, H, W, C]
        require(
            batch.shape[0] in (1, prompts),
            f"{what} has {batch.shape[0]} images for {prompts} prompts; accepted: one image or "
            "one per prompt",
        )
        require(
            batch.shape[1:3] == size,
            f"{what} of size {batch.shape[1]}x{batch.shape[2]} for images of size "
            f"{size[0]}x{size[1]}; accepted: a control image of the images' size (it is never "
            "resized)",
        )
        batch = np.broadcast_to(batch, (prompts, *batch.shape[1:]))
        images.append(np.repeat(batch, repeat, axis=0))  # [B, H, W, C]

    def rows(values: list[float]) -> np.ndarray:
        return np.tile(np.asarray(values, np.float32), (count, 1))  # [B, nets]

    return dict(
        images=tuple(images),
        scale=rows(scale),
        start=rows(start),
        end=rows(end),
        guess=np.full((count,), float(guess), np.float32),
    )


def step_control(control: dict[str, Any], step: jax.Array, steps: int) -> tuple[dict, dict]:
    """An image's control arrays (batch axis 1) at the sampler's step `step` of `steps` ->
    (those of the conditional half, of the unconditional half): each net's scale is zeroed
    outside its window, and the unconditional half's in guess mode."""
    fraction = step.astype(jnp.float32) / steps
    after = (step + 1).astype(jnp.float32) / steps
    keep = 1.0 - ((fraction < control["start"]) | (after > control["end"]))  # [1, nets]
    scale = control["scale"] * keep
    conditional = {"images": control["images"], "scale": scale, "guess": control["guess"]}
    unconditional = {**conditional, "scale": scale * (1.0 - control["guess"][:, None])}
    return conditional, unconditional


class Steered(NamedTuple):
    """A network's context with ControlNets: the text context and the control arrays of one
    half of classifier-free guidance (`step_control`)."""

    text: Any  # [B, T, D]
    control: dict[str, Any]


class ControlNetMixin:
    """The ControlNet arguments of a `Pipeline` (it comes before `Pipeline` among the bases)
    whose networks hold its ControlNets: `_take_controlnets` checks them in `__init__`, its
    `predict` calls `steered`."""

    conditioning_arguments = ARGUMENTS
    controlnet_architectures: tuple[dict[str, Any], ...] = ()

    def _take_controlnets(
        self, controlnet: ControlNet | Sequence[ControlNet] | None, unet: UNet, factor: int
    ) -> tuple[ControlNet, ...]:
        """`controlnet` (one or several) as a tuple, each checked to fit `unet` and images at
        `factor` x the latents' size."""
        if controlnet is None:
            controlnet = ()
        controlnets = (controlnet,) if isinstance(controlnet, ControlNet) else tuple(controlnet)
        for k, net in enumerate(controlnets):
            name = "controlnet" if len(controlnets) == 1 else f"controlnet[{k}]"
            require(
                isinstance(net, ControlNet),
                f"{name} is a {type(net).__name__}; accepted: a ControlNet",
            )
            check_steers(net, unet, name)
            require(
                net.conditioning_factor == factor,
                f"{name} reads control images at {net.conditioning_factor}x the latents' size, "
                f"the VAE makes images {factor}x; accepted: a ControlNet made for this model",
            )
        self.controlnet_architectures = tuple(dict(net.architecture) for net in controlnets)
        return controlnets

    def conditioning_size(self, arguments: dict[str, Any]) -> tuple[int, int] | None:
        if not self._controlled(arguments):
            return None
        return control_size(arguments, self.controlnet_architectures)

    def conditioning(
        self,
        arguments: dict[str, Any],
        mode: str,
        prompts: int,
        repeat: int,
        size: tuple[int, int],
        keys: jax.Array,
    ) -> Any:
        del keys
        if not self._controlled(arguments):
            return None
        return control_rows(arguments, self.controlnet_architectures, mode, prompts, repeat, size)

    def _controlled(self, arguments: dict[str, Any]) -> bool:
        """Whether a call runs ControlNets; its ControlNet arguments need some."""
        if self.controlnet_architectures:
            return True
        if arguments:
            raise UserError(
                f"{sorted(arguments)[0]} needs a ControlNet; accepted: a pipeline made with "
                "controlnet= (e.g. StableDiffusion.from_pretrained(..., controlnet=DIR))"
            )
        return False

    @staticmethod
    def step_context(
        context: Any, uncontext: Any, conditioning: Any, step: jax.Array, steps: int
    ) -> tuple[Any, Any]:
        """The text contexts as they are, or `Steered` by each half's control arrays."""
        if conditioning is None:
            return context, uncontext
        on, off = step_control(conditioning, step, steps)
        return Steered(context, on), Steered(uncontext, off)


def steered(
    unet: UNet,
    controlnets: Sequence[ControlNet],
    x_in: jax.Array,
    t: jax.Array,
    context: Any,
) -> jax.Array:
    """The UNet's output for a text context `[B, T, D]`, or for a `Steered` one with the summed
    residuals of every ControlNet, each with its scale (`control["scale"]` [B, nets]). A
    ControlNet reads the first channels of `x_in` (an inpainting UNet's extra channels are not
    its)."""
    if not isinstance(context, Steered):
        return unet(x_in, t, context)
    text, control = context
    down: list[jax.Array] = []
    mid: jax.Array | None = None
    for k, net in enumerate(controlnets):
        channels = dict(net.architecture)["in_channels"]
        d, m = net(
            x_in[..., :channels],
            t,
            text,
            control["images"][k],
            control["scale"][:, k],
            control["guess"] > 0.5,
        )
        down = list(d) if mid is None else [a + b for a, b in zip(down, d, strict=True)]
        mid = m if mid is None else mid + m
    return unet(x_in, t, text, down, mid)
