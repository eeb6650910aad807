"""The one prompt-to-image loop every pipeline runs, and the `Pipeline` base class around it.

A pipeline family (Stable Diffusion, jaxdiff's own text-to-image models, ...) is a small
subclass of `Pipeline` that says how to tokenize prompts and which sigmas to sample along (host
side), and, as static methods that run inside the compiled loop on its merged networks, how to
encode prompts, how its denoiser network is called, and how images go in and out of its latent
space. The loop itself, the argument names (diffusers'), the checks, the per-image keys, the
split of the batch over the devices and the compile cache are shared.

The whole loop (prompt encoding, sampler, decoding) is one `jax.jit` function per
`LoopSettings` and input shapes; prompts, seeds, noise, guidance scales and sigmas are traced,
so changing them does not recompile. Image i of a call uses the key `fold_in(key(seed),
first_index + i)` for its noise, its image posterior samples and a stochastic sampler's noise:
it is sampled under `jax.vmap` from that key alone, so it does not depend on the batch size, on
how many calls a set is made in, or on the number of devices.

Modes (how a run starts and what the network sees): "text" (pure noise), "img2img" (the noised
image, SDEdit), "inpaint" (the known region re-imposed at every noise level, any network),
"inpaint_channels" (a network with the mask and the masked image's latents as extra input
channels, e.g. a 9-channel inpainting UNet).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import parallel, samplers
from jaxdiff.diffusion import Diffusion
from jaxdiff.errors import UserError, require
from jaxdiff.item_keys import check_first_index, item_keys
from jaxdiff.models import lora
from jaxdiff.pipelines import image_io
from jaxdiff.pipelines.prompts import per_prompt_texts, prompt_list
from jaxdiff.samplers.inpainting import blend_known, reimpose_known
from jaxdiff.samplers.x0_limits import clip_denoised, threshold_denoised

Network = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x_in, t, context) -> output


@dataclasses.dataclass
class Sampling:
    """The settings of a pipeline call, as diffusers names them, checked on construction.

    num_inference_steps: sampler steps; guidance_scale: the weight of classifier-free guidance
    (Ho & Salimans 2022; when it runs: `Pipeline.guided`); guidance_rescale: phi of Lin et al.
    2024 in [0, 1]; sampler: any of `samplers.names()` with its `sampler_options`;
    sigma_schedule (None: the pipeline's own) with `sigma_schedule_options`; seed (or a PRNG
    `key`) and first_index: image i uses `fold_in(key(seed), first_index + i)`; latents: the
    unit noise `[B, h, w, c]` to start from; num_images_per_prompt; output_type: "np"
    (float32 `[B, H, W, 3]` in [0, 1]), "pil", or "latent" (float32 `[B, h, w, c]`, undecoded);
    lora_scale: the factor on every unfused LoRA adapter's output (diffusers'
    `cross_attention_kwargs={"scale": ...}`); clip_skip: how many more of the text encoders'
    last layers the prompts skip (the negative prompts skip none, as in diffusers; up to
    `Pipeline.max_clip_skip`); denoising_end / denoising_start: diffusers' hand-off between
    two pipelines (SDXL's base and refiner), a fraction in (0, 1) of the training timesteps at
    which the run stops, returning its noisy state, or (img2img) at which it starts from the
    state it is given (see `Pipeline.img2img`).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.0
    sampler: str = "ddim"
    sampler_options: dict[str, Any] | None = None
    sigma_schedule: str | None = None
    sigma_schedule_options: dict[str, Any] | None = None
    seed: int = 0
    key: jax.Array | None = None
    first_index: int = 0
    latents: Any = None
    num_images_per_prompt: int = 1
    output_type: str = "np"
    lora_scale: float = 1.0
    clip_skip: int = 0
    denoising_end: float | None = None
    denoising_start: float | None = None

    def __post_init__(self) -> None:
        steps = self.num_inference_steps
        require(
            isinstance(steps, int | np.integer) and not isinstance(steps, bool) and steps > 0,
            f"num_inference_steps={steps!r} must be a positive integer",
        )
        require(self.guidance_scale >= 0, f"guidance_scale={self.guidance_scale} must be >= 0")
        require(
            0.0 <= self.guidance_rescale <= 1.0,
            f"guidance_rescale={self.guidance_rescale} must be in [0, 1]",
        )
        count = self.num_images_per_prompt
        require(
            isinstance(count, int) and not isinstance(count, bool) and count > 0,
            f"num_images_per_prompt={count!r} must be a positive integer",
        )
        require(
            self.key is not None
            or (
                (isinstance(self.seed, int) and not isinstance(self.seed, bool))
                and 0 <= self.seed < 2**32
            ),
            f"seed={self.seed!r} must be an integer in [0, 2**32) (or pass key=)",
        )
        image_io.check_output_type(self.output_type)
        skip = self.clip_skip
        require(
            isinstance(skip, int | np.integer) and not isinstance(skip, bool) and skip >= 0,
            f"clip_skip={skip!r} must be an integer >= 0",
        )
        for name in ("denoising_end", "denoising_start"):
            value = getattr(self, name)
            number = isinstance(value, float | int) and not isinstance(value, bool)
            require(
                value is None or (number and 0.0 < value < 1.0),
                f"{name}={value!r} must be a number in (0, 1), or None",
            )
        require(
            self.denoising_start is None
            or self.denoising_end is None
            or self.denoising_start < self.denoising_end,
            f"denoising_start={self.denoising_start} must be below "
            f"denoising_end={self.denoising_end}",
        )
        require(
            isinstance(self.lora_scale, int | float | np.number)
            and not isinstance(self.lora_scale, bool)
            and np.isfinite(self.lora_scale),
            f"lora_scale={self.lora_scale!r} must be a finite number",
        )
        options = dict(self.sampler_options or {})
        accepted = samplers.option_defaults(self.sampler)  # also checks the name
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise UserError(
                f"sampler {self.sampler!r} does not take option {unknown[0]!r}; accepted: "
                f"{', '.join(accepted) or 'none'}"
            )
        for name, value in options.items():
            require(
                isinstance(value, bool | int | float | str),
                f"sampler option {name}={value!r}: the pipelines take numbers and strings "
                "(they are compiled into the loop)",
            )

    @property
    def root_key(self) -> jax.Array:
        return self.key if self.key is not None else jax.random.key(self.seed)


@dataclasses.dataclass(frozen=True)
class Grid:
    """What a run samples along: sigmas `[n + 1]` (descending), whether the network sees integer
    timesteps (the sigma's timestep rounded), the std of the pure noise a run from noise starts
    with, the scale of the state where the grid ends (diffusers decodes the VP state
    `x / sqrt(1 + sigma^2)` of a grid ending above 0), and the x0 clipping range or dynamic
    thresholding `(ratio, max value)` the sampler applies, if any. A grid from diffusers'
    training timesteps also gives the timestep each step starts at `[n]` and whether its
    scheduler holds that VP state (`vp_state`) or `x` itself (the Euler family), which
    `denoising_end` / `denoising_start` cut and hand over by."""

    sigmas: np.ndarray
    start_std: float
    integer_timesteps: bool = False
    end_scale: float = 1.0
    clip_sample_range: float | None = None
    threshold: tuple[float, float] | None = None
    timesteps: np.ndarray | None = None
    vp_state: bool = True


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """Everything the compiled loop is specialised on."""

    family: type[Pipeline]  # whose static methods encode, predict, and map images and latents
    graphdef: Any  # nnx.GraphDef of the family's networks
    sampler: str
    options: tuple[tuple[str, Any], ...]
    diffusion: Diffusion
    integer_timesteps: bool
    guided: bool  # classifier-free guidance on (`Pipeline.guided`)
    mode: str
    # start from pure noise: text, inpainting with strength 1, img2img from sigma = inf
    from_noise: bool
    clip_sample_range: float | None
    threshold: tuple[float, float] | None
    decode: bool  # False for output_type="latent"
    clip_skip: int  # the text encoders' last layers the prompts skip
    handed_state: bool  # img2img from a given state (`denoising_start`): no noise added
    latent_images: bool  # the images given are latents, not pixels


class Pipeline(abc.ABC):
    """Text-to-image (`__call__`), `img2img` and `inpaint` for one family of networks.

    A subclass sets `defaults` (its `Sampling` defaults), the sizes below, and implements
    `tokenize` and `grid` on the host and the static methods `encode_prompts`, `predict`,
    `encode_images` and `decode_latents`, which run inside the compiled loop on the networks
    given to `__init__` (merged back from their graph and state).
    """

    defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    mode_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
        {"img2img": {"strength": 0.8}, "inpaint": {"strength": 1.0}}
    )
    """What `img2img` and `inpaint` default to over `defaults`: their `strength`, and any
    `Sampling` field a family sets otherwise for that mode."""
    vae_scale_factor: int  # image pixels per latent pixel
    latent_channels: int
    network_in_channels: int  # latent_channels, or more for an inpainting network
    default_size: int  # image height and width when a call gives none

    def __init__(
        self, networks: Any, diffusion: Diffusion, devices: Sequence[jax.Device] | None = None
    ):
        self.diffusion = diffusion
        self.mesh = parallel.local_mesh(devices)
        self._set_networks(networks)

    def _networks(self) -> Any:
        """The networks merged from the pipeline's graph and state, as new module objects:
        changing them leaves the pipeline as it is until `_set_networks`."""
        return nnx.merge(self._graphdef, jax.tree.map(lambda leaf: leaf, self._state))

    sharded_parameters: bool = False  # `shard_parameters`: weights split over the devices

    def _set_networks(self, networks: Any) -> None:
        """Makes `networks` the pipeline's, their state whole on every local device or, after
        `shard_parameters`, split over them."""
        self._graphdef, state = nnx.split(networks)
        if self.sharded_parameters:
            rules = {name: "data" if axis else None for name, axis in parallel.FSDP_RULES.items()}
            self._state = jax.device_put(
                state, parallel.state_shardings(state, self.mesh, parallel.check_rules(rules))
            )
        else:
            self._state = parallel.local_replica(state, self.mesh)

    def shard_parameters(self, sharded: bool = True) -> Pipeline:
        """Splits every weight over the pipeline's devices by the FSDP rules (along its
        output-side axis, where the device count divides it) instead of keeping a whole copy on
        each, for a model larger than one device's memory; the compiled loop gathers each
        weight where it is used. The images are the same. `sharded=False` undoes it. Returns
        the pipeline."""
        self.sharded_parameters = sharded
        self._set_networks(self._networks())
        return self

    # -- what a family supplies --------------------------------------------------------------

    @abc.abstractmethod
    def tokenize(self, prompts: list[str]) -> np.ndarray:
        """Token ids `[N, T]` int32 of prompts."""

    def prompt_ids(
        self, prompt: Any, negative_prompt: Any, extra: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ids `[N, T]` of a call's N prompts and of their negative prompts (one each; None:
        the empty prompt): what `encode_prompts` takes. A family whose prompts are not text
        (class labels), or that takes more of them among its `conditioning_arguments` (`extra`),
        says here what they are. Checked first, before the call's images and conditioning."""
        del extra
        prompts = prompt_list(prompt)
        negatives = per_prompt_texts(negative_prompt, len(prompts))
        ids = self.tokenize(prompts + negatives)  # unknown words fail before sampling
        return ids[: len(prompts)], ids[len(prompts) :]

    @abc.abstractmethod
    def grid(self, sampling: Sampling) -> Grid:
        """The sigmas and settings the call's sampler runs along."""

    max_clip_skip: int = 0
    """How many more of its text encoders' last layers a call's prompts may skip (`clip_skip`):
    0 for a family without CLIP text encoders."""

    @staticmethod
    @abc.abstractmethod
    def encode_prompts(networks: Any, ids: jax.Array, clip_skip: int = 0) -> Any:
        """Token ids `[B, T]` -> the network's context: `[B, T, D]`, or a pytree of arrays with
        a leading batch axis (e.g. with pooled embeddings); read `clip_skip` (at most
        `max_clip_skip`) layers further from the end."""

    @staticmethod
    @abc.abstractmethod
    def predict(networks: Any, x_in: jax.Array, t: jax.Array, context: Any) -> jax.Array:
        """The denoiser network's output (eps, v, ... as the `Diffusion` says) for its scaled
        input `[B, h, w, c_in]`, its time input `[]` or `[B]` and the context
        (`encode_prompts`'s)."""

    @staticmethod
    @abc.abstractmethod
    def encode_images(networks: Any, images: jax.Array, keys: jax.Array) -> jax.Array:
        """Images `[B, H, W, 3]` in [-1, 1] -> latents `[B, h, w, c]` float32 sampled from the
        posterior with one key per image, scaled as the denoiser sees them."""

    @staticmethod
    @abc.abstractmethod
    def decode_latents(networks: Any, latents: jax.Array) -> jax.Array:
        """Latents `[B, h, w, c]` -> images `[B, H, W, 3]` float32 in [-1, 1]."""

    conditioning_arguments: ClassVar[tuple[str, ...]] = ()
    """Call arguments beyond `Sampling`'s that a family takes (e.g. a ControlNet's image);
    `conditioning` turns them into per-image arrays."""

    def conditioning_size(self, arguments: dict[str, Any]) -> tuple[int, int] | None:
        """The image size `(H, W)` the conditioning arguments fix (a text-to-image call's
        default), or None."""
        del arguments
        return None

    def conditioning(
        self,
        arguments: dict[str, Any],
        mode: str,
        prompts: int,
        repeat: int,
        size: tuple[int, int],
        keys: jax.Array,
    ) -> Any:
        """The conditioning arguments of a call in `mode` with `prompts` prompts, `repeat`
        images each, of image size `size` -> a pytree of host arrays with one row per image
        (`[B, ...]` leaves), or None; checked here, before sampling. `keys` `[B]` are the
        images' keys, for a family that draws noise into its conditioning (fold in a stream
        of its own, `CONDITIONING_STREAM`)."""
        del arguments, mode, prompts, repeat, size, keys
        return None

    @staticmethod
    def step_context(
        context: Any, uncontext: Any, conditioning: Any, step: jax.Array, steps: int
    ) -> tuple[Any, Any]:
        """The contexts (conditional, unconditional) the network sees at the sampler's step
        `step` of `steps` (traced), given the image's conditioning (`conditioning`'s row, batch
        axis 1, or None): by default the prompts' contexts as they are."""
        del conditioning, step, steps
        return context, uncontext

    def guided(self, guidance_scale: float) -> bool:
        """Whether a call runs classifier-free guidance: when ``guidance_scale > 1``, as
        diffusers' pipelines decide (at 1 and below they run the conditional model alone)."""
        return guidance_scale > 1.0

    # -- the calls ---------------------------------------------------------------------------

    def sampling(self, mode: str = "text", **settings: Any) -> Sampling:
        """The checked settings of a call in `mode`: `settings` over this pipeline's defaults
        (and the mode's, `mode_defaults`)."""
        accepted = [field.name for field in dataclasses.fields(Sampling)]
        unknown = sorted(set(settings) - set(accepted))
        require(
            not unknown,
            f"{type(self).__name__} does not take {unknown[0] if unknown else ''!r}; accepted: "
            f"{', '.join(accepted + list(self.conditioning_arguments))}",
        )
        for_mode = {k: v for k, v in self.mode_defaults.get(mode, {}).items() if k != "strength"}
        return Sampling(**{**self.defaults, **for_mode, **settings})

    def _strength(self, mode: str, strength: float | None) -> float:
        """A call's `strength`, or the mode's default."""
        return self.mode_defaults[mode]["strength"] if strength is None else strength

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """Images for `prompt`: float32 `[B, H, W, 3]` in [0, 1] (`output_type="np"`), PIL
        images ("pil") or latents ("latent"), B = prompts x `num_images_per_prompt`.
        `sampling`: the fields of `Sampling` (defaults: `self.defaults`)."""
        extra = self._conditioning_arguments(sampling)
        fixed = self.conditioning_size(extra)
        default = fixed or (self.default_size, self.default_size)
        height = default[0] if height is None else height
        width = default[1] if width is None else width
        image_io.check_size(height, width, self.vae_scale_factor)
        self._require_channels("text-to-image", self.latent_channels)
        shape = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        return self._generate(
            prompt, negative_prompt, self.sampling(**sampling), extra, "text", shape
        )

    def img2img(
        self,
        prompt: str | Sequence[str],
        image: Any,
        strength: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """Images for `prompt` starting from `image` (one, or one per prompt) noised to the
        level `strength` (default: `mode_defaults`, 0.8) of the way up the schedule (SDEdit,
        Meng et al. 2022): the last `int(num_inference_steps * strength)` steps are run.
        `image` may be latents (float `[N, h, w, c]` with the latent channels, N one, one per
        prompt or one per image made), as diffusers takes 4-channel images. With
        `denoising_start` the run starts at that cut of the schedule from the image's latents
        as they are (no noise, `strength` unused): the noisy state another pipeline's
        `denoising_end` returned (see `_run`). Other arguments as `__call__`."""
        self._require_channels("img2img", self.latent_channels)
        extra = self._conditioning_arguments(sampling)
        return self._generate(
            prompt,
            negative_prompt,
            self.sampling("img2img", **sampling),
            extra,
            "img2img",
            None,
            image,
            None,
            self._strength("img2img", strength),
        )

    def inpaint(
        self,
        prompt: str | Sequence[str],
        image: Any,
        mask: Any,
        strength: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        **sampling: Any,
    ) -> np.ndarray | list:
        """`image` repainted where `mask` is white (>= 0.5). An inpainting network (latent
        channels x 2 + 1 inputs) gets the mask and the masked image's latents as input
        channels; any other keeps the known region, re-imposed at every noise level.
        `strength` (default: `mode_defaults`, 1) < 1 starts from the noised image instead of
        pure noise. Other arguments as `__call__`."""
        if self.network_in_channels == 2 * self.latent_channels + 1:
            mode = "inpaint_channels"
        else:
            self._require_channels("inpaint", self.latent_channels)
            mode = "inpaint"
        extra = self._conditioning_arguments(sampling)
        return self._generate(
            prompt,
            negative_prompt,
            self.sampling("inpaint", **sampling),
            extra,
            mode,
            None,
            image,
            mask,
            self._strength("inpaint", strength),
        )

    def decode(self, latents: Any, output_type: str = "np") -> np.ndarray | list:
        """Latents `[B, h, w, c]` (`output_type="latent"` of a call) -> images as `__call__`
        gives them, decoded over the devices."""
        require(output_type != "latent", "decode gives images; output_type 'latent' is not one")
        image_io.check_output_type(output_type)
        latents = np.asarray(latents, np.float32)
        rows = parallel.split_rows({"latents": latents}, self.mesh)["latents"]
        decoded = _decode(type(self), self._graphdef, self._state, rows)
        return image_io.to_output(np.asarray(decoded)[: latents.shape[0]], output_type)

    def _conditioning_arguments(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """The family's conditioning arguments, taken out of a call's other arguments."""
        return {k: sampling.pop(k) for k in self.conditioning_arguments if k in sampling}

    def _require_channels(self, what: str, expected: int) -> None:
        if self.network_in_channels != expected:
            raise UserError(
                f"{what} needs a network with {expected} input channels; this one has "
                f"{self.network_in_channels} (use inpaint with an inpainting network)"
            )

    def _generate(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None,
        sampling: Sampling,
        extra: dict[str, Any],
        mode: str,
        latent_size: tuple[int, int] | None,
        image: Any = None,
        mask: Any = None,
        strength: float = 1.0,
    ) -> np.ndarray | list:
        require(
            sampling.clip_skip <= self.max_clip_skip,
            f"clip_skip={sampling.clip_skip}; accepted: 0 to {self.max_clip_skip} "
            f"({type(self).__name__} with these text encoders)",
        )
        ids, negative_ids = self.prompt_ids(prompt, negative_prompt, extra)  # [N, T] each
        prompts = len(ids)
        repeat = sampling.num_images_per_prompt
        count = prompts * repeat
        check_first_index(sampling.first_index, count)
        require(
            sampling.denoising_start is None or mode == "img2img",
            "denoising_start is img2img's: the run starts from the state it is given",
        )
        require(
            sampling.denoising_end is None or mode != "inpaint",
            "denoising_end: inpainting keeps the known region of a finished image; use "
            "__call__ or img2img",
        )
        latent_images = mode == "img2img" and self._are_latents(image)
        images = masks = None
        if mode != "text":
            require(0.0 < strength <= 1.0, f"strength={strength} must be in (0, 1]")
            factor = 1 if latent_images else self.vae_scale_factor
            if latent_images:  # [N, h, w, c], or already one per image made
                images = image_io.latent_batch(image, prompts, self.latent_channels, repeat)
            else:
                images = image_io.image_batch(image, prompts, self.vae_scale_factor)
            if mask is not None:
                masks = np.repeat(image_io.mask_batch(mask, images), repeat, axis=0)  # [B, H, W, 1]
            if images.shape[0] != count:
                images = np.repeat(images, repeat, axis=0)  # [B, H, W, 3] (or latents)
            latent_size = (images.shape[1] // factor, images.shape[2] // factor)
        size = (latent_size[0] * self.vae_scale_factor, latent_size[1] * self.vae_scale_factor)
        keys = item_keys(sampling.root_key, count, sampling.first_index)  # [B]
        conditioning = self.conditioning(extra, mode, prompts, repeat, size, keys)
        grid = self.grid(sampling)
        sigmas, start_std, end_scale = self._run(grid, sampling, strength, mode)
        samplers.check_start(sampling.sampler, sigmas, sampling.sampler_options or {})
        infinite = bool(np.isinf(sigmas[0]))  # from t = 1 of a flow: nothing of an image is kept
        noise = _noise(sampling.latents, keys, (*latent_size, self.latent_channels))
        settings = LoopSettings(
            family=type(self),
            graphdef=self._graphdef,
            sampler=sampling.sampler,
            options=tuple(sorted((sampling.sampler_options or {}).items())),
            diffusion=self.diffusion,
            integer_timesteps=grid.integer_timesteps,
            guided=self.guided(sampling.guidance_scale),
            mode=mode,
            from_noise=mode == "text" or (mode != "img2img" and strength == 1.0) or infinite,
            clip_sample_range=grid.clip_sample_range,
            threshold=grid.threshold,
            decode=sampling.output_type != "latent",
            clip_skip=sampling.clip_skip,
            handed_state=sampling.denoising_start is not None,
            latent_images=latent_images,
        )
        batch = parallel.split_rows(
            dict(
                ids=np.repeat(ids, repeat, axis=0),  # [B, T]
                negative_ids=np.repeat(negative_ids, repeat, axis=0),  # [B, T]
                keys=keys,
                noise=noise,
                images=images,
                masks=masks,
                conditioning=conditioning,
            ),
            self.mesh,
        )
        out = compiled_loop(settings)(
            self._state,
            guidance=jnp.float32(sampling.guidance_scale),
            rescale=jnp.float32(sampling.guidance_rescale),
            sigmas=jnp.asarray(sigmas, jnp.float32),
            start_std=jnp.float32(start_std),
            end_scale=jnp.float32(end_scale),
            lora_scale=jnp.float32(sampling.lora_scale),
            **batch,
        )
        out = np.asarray(out)[:count]
        if sampling.output_type == "latent":
            return out
        return image_io.to_output(out, sampling.output_type)

    def _are_latents(self, image: Any) -> bool:
        """Whether img2img's `image` is latents: a float array `[N, h, w, c]` (or `[h, w, c]`)
        with the pipeline's latent channels (diffusers' rule for 4-channel images), not
        pixels."""
        channels = self.latent_channels
        return (
            channels != 3
            and isinstance(image, np.ndarray | jax.Array)
            and jnp.issubdtype(image.dtype, jnp.floating)  # not an RGBA picture's bytes
            and image.ndim in (3, 4)
            and image.shape[-1] == channels
        )

    def _run(
        self, grid: Grid, sampling: Sampling, strength: float, mode: str
    ) -> tuple[np.ndarray, float, float]:
        """The run's sigmas, the factor of its start (the std of the noise a run from noise
        starts with, or, from a handed state, the factor from its form to `x`), and the scale of
        its end state (the form it hands on where `denoising_end` stops it early).

        diffusers' hand-off: a fraction f cuts the training timesteps at
        `c = round(T - f T)`; `denoising_end` keeps the steps starting at timesteps >= c, and
        `denoising_start` runs the rest, from the state it is given (the same cut on both
        sides, for first-order samplers as diffusers does). The state handed over is the
        scheduler's: `x / sqrt(1 + sigma^2)` (`grid.vp_state`) or `x` (the Euler family)."""
        end, begin = sampling.denoising_end, sampling.denoising_start
        if end is None and begin is None:
            return _run_sigmas(grid.sigmas, strength, mode), grid.start_std, grid.end_scale
        require(
            grid.timesteps is not None,
            f"denoising_end / denoising_start cut diffusers' training timesteps; "
            f"{type(self).__name__}'s grid has none",
        )
        _check_cut_sampler(sampling, end is not None)
        n = grid.sigmas.shape[0] - 1
        train_steps = self.diffusion.process.num_train_timesteps

        def steps_above(fraction: float) -> int:
            """How many steps start at a timestep >= the cut of `fraction`."""
            cutoff = round(train_steps - fraction * train_steps)
            return int(np.sum(grid.timesteps >= cutoff))

        def state_scale(sigma: float) -> float:
            """The factor from `x` to the state a diffusers scheduler holds at `sigma`."""
            return float(self.diffusion.process.c_in(jnp.float32(sigma))) if grid.vp_state else 1.0

        start_std = grid.start_std
        if begin is None:
            first = n + 1 - _run_sigmas(grid.sigmas, strength, mode).shape[0]
        else:
            first = steps_above(begin)
            require(
                first < n,
                f"denoising_start={begin} with num_inference_steps={n} leaves no step to run",
            )
            start_std = 1.0 / state_scale(grid.sigmas[first])
        last, end_scale = n, grid.end_scale
        if end is not None:
            last = steps_above(end)
            require(
                last > first,
                f"denoising_end={end} with num_inference_steps={n} leaves no step to run",
            )
            end_scale = grid.end_scale if last == n else state_scale(grid.sigmas[last])
        return grid.sigmas[first : last + 1], start_std, end_scale


# Samplers whose run on a cut grid takes the steps diffusers takes on it: `denoising_end` needs
# steps that do not look at where the run ends (no lower order before the end but into 0), and
# `denoising_start` needs steps of one model evaluation (diffusers cuts a second-order
# scheduler's duplicated timesteps differently) that start afresh (PNDM does not honour the
# start).
CUT_END_SAMPLERS = ("ddim", "ddpm", "euler", "euler_ancestral", "lms", "ipndm", "dpmpp_2m")
CUT_END_SAMPLERS += ("dpmpp_2m_sde",)
CUT_START_REFUSED = ("plms", "pndm")


def _check_cut_sampler(sampling: Sampling, cut_end: bool) -> None:
    """A one-line error for a sampler whose cut run would not be diffusers' (see above)."""
    name = sampling.sampler
    if cut_end:
        require(
            name in CUT_END_SAMPLERS,
            f"denoising_end with sampler {name!r}, whose last steps depend on where the run "
            f"ends; accepted: {', '.join(CUT_END_SAMPLERS)}",
        )
        require(
            not (sampling.sampler_options or {}).get("lower_order_final"),
            "denoising_end with lower_order_final=True: the cut run's last step is not the "
            "schedule's; leave lower_order_final off",
        )
    else:
        require(
            samplers.evals_per_step(name) == 1 and name not in CUT_START_REFUSED,
            f"denoising_start with sampler {name!r}; accepted: samplers of one model "
            "evaluation per step but plms and pndm",
        )


def _run_sigmas(sigmas: np.ndarray, strength: float, mode: str) -> np.ndarray:
    """The run's sigmas: the whole grid `[n + 1]`, or its last `int(n * strength)` steps
    (diffusers' `get_timesteps`) when starting from an image."""
    sigmas = np.asarray(sigmas)
    n = sigmas.shape[0] - 1
    if mode == "text":
        return sigmas
    steps = min(int(n * strength), n)
    if steps < 1:
        raise UserError(
            f"strength={strength} with num_inference_steps={n} leaves no step to run; "
            "raise one of them so that num_inference_steps * strength >= 1"
        )
    return sigmas[n - steps :]


def _noise(latents: Any, keys: jax.Array, shape: tuple[int, int, int]) -> np.ndarray:
    """The given unit noise `[B, h, w, c]`, checked, or each image's own draw."""
    if latents is None:
        return np.asarray(draw_noise(keys, shape))
    latents = np.asarray(latents, np.float32)
    want = (keys.shape[0], *shape)
    require(
        latents.shape == want,
        f"latents of shape {latents.shape}; accepted: {want} (images, h, w, channels)",
    )
    return latents


@functools.partial(jax.jit, static_argnums=1)
def draw_noise(keys: jax.Array, shape: tuple[int, int, int]) -> jax.Array:
    """The initial unit noise of each image from its key. keys [B] -> [B, h, w, c]"""
    return jax.vmap(lambda k: jax.random.normal(_split(k)[0], shape))(keys)


def _split(key: jax.Array) -> jax.Array:
    """An image's key -> keys for its noise, image posterior, masked-image posterior, sampler."""
    return jax.random.split(key, 4)


CONDITIONING_STREAM = 4
"""What a family folds into an image's key for noise of its conditioning (the x4 upscaler's
augmentation of the low-resolution image): a stream apart from `_split`'s."""


def _limited(denoise: samplers.Denoise, settings: LoopSettings) -> samplers.Denoise:
    if settings.threshold is not None:
        return threshold_denoised(denoise, *settings.threshold)
    if settings.clip_sample_range is not None:
        return clip_denoised(denoise, settings.clip_sample_range)
    return denoise


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(family: type[Pipeline], graphdef: Any, state: Any, latents: jax.Array) -> jax.Array:
    """Latents [B, h, w, c] -> images [B, H, W, 3] float32 in [0, 1]."""
    return _unit_range(family.decode_latents(nnx.merge(graphdef, state), latents))


def _unit_range(images: jax.Array) -> jax.Array:
    """Images in [-1, 1] -> [0, 1], clipped."""
    return jnp.clip(images / 2.0 + 0.5, 0.0, 1.0)


@functools.cache
def compiled_loop(settings: LoopSettings) -> Callable:
    """`run(state, ids, negative_ids, keys, noise, guidance, rescale, sigmas, start_std,
    end_scale, lora_scale, images, masks, conditioning)` -> images `[B, H, W, 3]` float32 in
    [0, 1], or latents `[B, h, w, c]` when `settings.decode` is False; jit-compiled.

    ids, negative_ids: [B, T]; keys: [B]; noise: [B, h, w, c] unit noise; sigmas: [n + 1];
    start_std: [] the std of the pure noise a run from noise starts with; end_scale: [] the
    factor the final state is scaled by (`Grid`); lora_scale: [] the factor on every LoRA
    adapter's weight; images: [B, H, W, 3] in [-1, 1] and masks
    [B, H, W, 1] (1: paint), or None for "text"; conditioning: the family's per-image
    conditioning (`Pipeline.conditioning`), or None.
    """
    family = settings.family
    sample = samplers.get(settings.sampler)
    options = dict(settings.options)
    inpainting = settings.mode in ("inpaint", "inpaint_channels")

    def run(
        state,
        ids,
        negative_ids,
        keys,
        noise,
        guidance,
        rescale,
        sigmas,
        start_std,
        end_scale,
        lora_scale,
        images,
        masks,
        conditioning,
    ):
        networks = nnx.merge(settings.graphdef, state)
        lora.scale_weights(networks, lora_scale)
        count = ids.shape[0]
        skip = settings.clip_skip
        if settings.guided and skip:  # the negative prompts skip no layers
            context = family.encode_prompts(networks, ids, skip)
            uncontext = family.encode_prompts(networks, negative_ids)
        elif settings.guided:  # one pass over both prompts; the context may be a pytree
            both = family.encode_prompts(networks, jnp.concatenate([ids, negative_ids]))
            context = jax.tree.map(lambda a: a[:count], both)  # [B, T, D] leaves
            uncontext = jax.tree.map(lambda a: a[count:], both)
        elif skip:
            context = uncontext = family.encode_prompts(networks, ids, skip)
        else:
            context = uncontext = family.encode_prompts(networks, ids)
        split = jax.vmap(_split)(keys)  # [B, 4]
        per_image: dict[str, Any] = {
            "noise": noise,
            "context": context,
            "uncontext": uncontext,
            "key": split[:, 3],
            "conditioning": conditioning,
        }
        if settings.latent_images:
            per_image["known"] = images
        elif settings.mode in ("img2img", "inpaint") or not settings.from_noise:
            per_image["known"] = family.encode_images(networks, images, split[:, 1])
        if inpainting:
            f = images.shape[1] // noise.shape[1]
            per_image["mask"] = masks[:, ::f, ::f, :]  # [B, h, w, 1], nearest as diffusers
        if settings.mode == "inpaint_channels":
            masked = images * (masks < 0.5)
            per_image["masked"] = family.encode_images(networks, masked, split[:, 2])

        def one(inputs: dict[str, jax.Array]) -> jax.Array:
            """One image: every array with a batch axis of 1."""
            one_ = jax.tree.map(lambda v: v[None], {k: v for k, v in inputs.items() if k != "key"})

            def net(x_in: jax.Array, t: jax.Array, ctx: jax.Array) -> jax.Array:
                t = jnp.round(t) if settings.integer_timesteps else t
                if settings.mode == "inpaint_channels":
                    extra = jnp.concatenate([one_["mask"], one_["masked"]], axis=-1)
                    x_in = jnp.concatenate(
                        [x_in, jnp.broadcast_to(extra, x_in.shape[:1] + extra.shape[1:])], -1
                    )
                return family.predict(networks, x_in, t, ctx)

            scale = guidance if settings.guided else 1
            steps = sigmas.shape[0] - 1

            def denoise_at(x: jax.Array, sigma: jax.Array) -> jax.Array:
                # The step i with sigmas[i + 1] < sigma <= sigmas[i] (above sigmas[0]: 0).
                step = jnp.sum(sigmas[1:-1] >= jnp.ravel(sigma)[0])
                context, uncontext = family.step_context(
                    one_["context"], one_["uncontext"], one_["conditioning"], step, steps
                )
                guided = samplers.cfg(net, context, uncontext, scale, rescale)
                return settings.diffusion.denoiser(guided)(x, sigma)

            denoise = _limited(denoise_at, settings)
            if settings.mode == "inpaint":
                denoise = reimpose_known(
                    denoise, one_["known"], one_["mask"], one_["noise"], sigmas[0]
                )
            if settings.from_noise:
                start = one_["noise"] * start_std
            elif settings.handed_state:  # the state a run handed over, in its scheduler's form
                start = one_["known"] * start_std
            else:
                start = one_["known"] + one_["noise"] * sigmas[0]
            x = sample(denoise, start, sigmas, key=inputs["key"], **options)
            x = x * end_scale
            if settings.mode == "inpaint":
                x = blend_known(x, one_["known"], one_["mask"])
            return x[0]

        latents = jax.vmap(one)(per_image)  # [B, h, w, c]
        if not settings.decode:
            return latents
        return _unit_range(family.decode_latents(networks, latents))

    return jax.jit(run)
