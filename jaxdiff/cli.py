"""The ``jaxdiff`` command: ``train``, ``sample``, ``upscale``, ``compare-samplers``, ``convert``,
``eval`` and ``prepare-data``.

    jaxdiff train --config configs/shapes_t2i.py[:tiny] --workdir W [--config.train.steps=100 ...]
    jaxdiff train --config shapes_t2i:tiny --workdir W   # a config jaxdiff ships, by name
    jaxdiff train --config configs/shapes_t2i.py --config-help   # every config field, its default
    jaxdiff sample --workdir W --prompt "a red circle in the center" --seed 0 --steps 20
    jaxdiff sample --pretrained stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a fox" \
        [--negative-prompt ...] [--image in.png [--strength 0.6] [--mask mask.png]] \
        [--controlnet sd15-canny --control-image edges.png [--control-scale 0.8]] \
        [--upscale stabilityai/stable-diffusion-x4-upscaler]
    jaxdiff upscale --pretrained stabilityai/stable-diffusion-x4-upscaler --image small.png \
        --prompt "a fox" [--noise-level 20] [--steps 75] --out large.png
    jaxdiff compare-samplers --config configs/compare_samplers_gmm.py --out DIR
    jaxdiff compare-samplers --config configs/compare_samplers_shapes.py --workdir W --out DIR
    jaxdiff convert stable-diffusion-v1-5/stable-diffusion-v1-5 sd15-jaxdiff --to jaxdiff
    jaxdiff convert sd15-jaxdiff sd15-diffusers --to diffusers [--dtype float16]
    jaxdiff eval --workdir W --config.eval.metrics=fid,kid \
        --config.eval.inception_weights=pt_inception-2015-12-05-6726825d.pth
    jaxdiff prepare-data cifar10 [--data-dir DIR]   # needs pip install 'jaxdiff[data]'

Bad input ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxdiff.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UserError (one line, exit code 2)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")

    def format_help(self) -> str:
        if callable(self.epilog):  # help that needs a slow import is made only when shown
            self.epilog = self.epilog()
        return super().format_help()


OVERRIDES_HELP = """\
config overrides:
  --config.KEY=VALUE sets one field of the config, parsed to the type of its default
  (strings as they are, tuples as (1, 2)); --config.KEY VALUE works too. For example
    --config.train.steps=100 --config.sample.sampler=euler --config.data.image_size=64
  --config-help prints every KEY with its value and exits."""


CONFIG_HELP = "path/to/config.py[:arg], or the name of a config jaxdiff ships: shapes_t2i[:arg]"

# Images per prompt by default: a grid of a small trained run's samples, one Stable Diffusion image.
NUM_IMAGES = {"--workdir": 4, "--pretrained": 1}


def build_parser(config_help: bool = False) -> argparse.ArgumentParser:
    """The command line; with ``config_help`` only the arguments that find a config are
    required (``--config-help`` prints the config and does nothing else)."""
    parser = _Parser(prog="jaxdiff", description="Text-to-image diffusion research in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = _config_command(
        commands,
        "train",
        "train the model of a config file (resumes from the workdir's checkpoint)",
    )
    train.add_argument(
        "--workdir", required=not config_help, type=Path, help="checkpoints, logs and samples"
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sample = commands.add_parser(
        "sample",
        help="sample images for prompts from a trained run or Stable Diffusion weights",
        epilog="sample takes no --config.KEY overrides: the flags above change the sampling. "
        "A trained run's defaults are the `sample` group of its config; "
        "`jaxdiff sample --workdir W --config-help` prints that config.",
    )
    model = sample.add_mutually_exclusive_group(required=not config_help)
    model.add_argument("--workdir", type=Path, help="a trained text-to-image run")
    model.add_argument("--pretrained", help="a diffusers Stable Diffusion folder or hub id")
    sample.add_argument(
        "--prompt", required=not config_help, action="append", help="repeat for several"
    )
    sample.add_argument(
        "--negative-prompt",
        action="append",
        help="steers away from this prompt: one for every --prompt, or one per --prompt in order",
    )
    sample.add_argument("--seed", type=int, default=0)
    for flag, kind, text in (
        ("--steps", int, "sampler steps (> 0)"),
        ("--guidance", float, "classifier-free guidance >= 0 (on when > 1)"),
        ("--sampler", str, "a name from jaxdiff.samplers.names()"),
    ):
        sample.add_argument(flag, type=kind, help=f"{text} (default: the pipeline's)")
    sample.add_argument(
        "--num-images",
        type=int,
        help="images per prompt (default "
        + ", ".join(f"{k}: {v}" for k, v in NUM_IMAGES.items())
        + ")",
    )
    sample.add_argument("--height", type=int, help="image height (the model's)")
    sample.add_argument("--width", type=int, help="image width (the model's)")
    sample.add_argument("--image", type=Path, help="start image (img2img, inpaint)")
    sample.add_argument("--mask", type=Path, help="inpaint where the mask is white")
    sample.add_argument("--strength", type=float, help="with --image: 0 < s <= 1 (0.8; inpaint 1)")
    sample.add_argument(
        "--lora",
        action="append",
        type=_lora_spec,
        metavar="FILE[:SCALE]",
        help="with --pretrained: a LoRA file or folder (diffusers, peft or kohya format) and its "
        "weight (default 1); repeat for several",
    )
    sample.add_argument(
        "--controlnet",
        action="append",
        type=Path,
        metavar="DIR",
        help="with --pretrained: a diffusers ControlNetModel folder or hub id; repeat for several",
    )
    sample.add_argument(
        "--control-image",
        action="append",
        type=Path,
        metavar="PATH",
        help="the control image of each --controlnet in order, or of a ControlNet run's "
        "--workdir (its size is the images' size)",
    )
    sample.add_argument(
        "--control-scale",
        action="append",
        type=float,
        metavar="S",
        help="the ControlNets' conditioning scale >= 0: one for all or one per --control-image "
        "(default diffusers': 1; img2img 0.8; inpaint 0.5)",
    )
    sample.add_argument(
        "--upscale",
        metavar="DIR",
        help="then upscale each image 4x with this diffusers x4 upscaler folder or hub id (its "
        "default steps and guidance, the same prompts and seed)",
    )
    _add_noise_level(sample)
    sample.add_argument(
        "--out",
        help="a .png file, or a folder (one that exists or a path ending in /) for the grid "
        "(default: the folder WORKDIR/samples/, or samples/ with --pretrained)",
    )
    _add_config_help(sample, "the --workdir run's saved config")

    upscale = commands.add_parser(
        "upscale", help="upscale an image 4x, guided by a prompt (Stable Diffusion's x4 upscaler)"
    )
    upscale.add_argument("--pretrained", required=True, help="a diffusers x4 upscaler folder")
    upscale.add_argument("--image", required=True, type=Path, help="the image to upscale")
    upscale.add_argument("--prompt", required=True, help="what the image shows")
    upscale.add_argument("--negative-prompt", help="steers away from this prompt")
    upscale.add_argument("--seed", type=int, default=0)
    for flag, kind, text in (
        ("--steps", int, "sampler steps (> 0)"),
        ("--guidance", float, "classifier-free guidance >= 0 (on when > 1)"),
        ("--sampler", str, "a name from jaxdiff.samplers.names()"),
    ):
        upscale.add_argument(flag, type=kind, help=f"{text} (default: the pipeline's)")
    _add_noise_level(upscale)
    upscale.add_argument(
        "--tile-size",
        type=int,
        help="upscale in overlapping tiles of this many pixels of the image, blended where they "
        "overlap (default: whole, or tiles of the upscaler's max_untiled_size above it)",
    )
    upscale.add_argument("--tile-overlap", type=int, help="pixels tiles share (tile size / 4)")
    upscale.add_argument(
        "--out", help="a .png file or a folder (default: samples/IMAGE_x4_seedS.png)"
    )

    compare = _config_command(
        commands,
        "compare-samplers",
        "measure sampler error exactly (Gaussian mixtures) or on a trained model",
    )
    compare.add_argument(
        "--out", required=not config_help, type=Path, help="folder for the CSV, report, plot"
    )
    compare.add_argument("--workdir", type=Path, help="a trained text-to-image run (model configs)")
    compare.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    convert = commands.add_parser(
        "convert", help="convert a network or model folder (or hub id) between formats"
    )
    convert.add_argument("source", help="network folder, model folder (model_index.json) or hub id")
    convert.add_argument("out", type=Path, help="the new folder to write")
    convert.add_argument("--to", required=True, help="jaxdiff or diffusers")
    convert.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype (the source's)"
    )
    convert.add_argument("--variant", help="source weights variant, e.g. fp16")

    evaluate = commands.add_parser(
        "eval",
        help="FID, KID, precision/recall, CLIP score, adherence or bits/dim of a trained run "
        "(--config.eval.* settings)",
        epilog=_eval_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_argument("--workdir", required=True, type=Path, help="a trained run")
    evaluate.add_argument(
        "--out",
        type=Path,
        help="a .json file for the result, or a folder for a new file named by step and time "
        "(default: the folder WORKDIR/eval/)",
    )
    _add_config_help(evaluate, "the run's saved config (with the overrides)")

    prepare = commands.add_parser(
        "prepare-data",
        help="download a tfds data set and write it as ArrayRecord files, the format training "
        "reads (needs pip install 'jaxdiff[data]')",
    )
    prepare.add_argument("name", help="a tfds data set, e.g. cifar10 or oxford_flowers102")
    prepare.add_argument(
        "--data-dir",
        help="the tfds data folder (default $TFDS_DATA_DIR or ~/tensorflow_datasets); train with "
        "the same --config.data.data_dir",
    )
    return parser


def _lora_spec(spec: str) -> tuple[str, float]:
    """``FILE[:SCALE]`` -> (file, scale), scale 1 when none is given."""
    path, sep, scale = spec.rpartition(":")
    try:
        return (path, float(scale)) if sep else (spec, 1.0)
    except ValueError:
        return spec, 1.0  # a ':' in the path itself


def _config_command(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command that runs a config file (``--config``, its overrides and ``--config-help``)."""
    parser = commands.add_parser(
        name,
        help=help_text,
        epilog=OVERRIDES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help=CONFIG_HELP)
    _add_config_help(parser, "the config (with its overrides)")
    return parser


def _add_noise_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--noise-level",
        type=int,
        help="the upscaler's noise on the image, 0 to its max_noise_level (default 20)",
    )


def _add_config_help(parser: argparse.ArgumentParser, source: str) -> None:
    parser.add_argument(
        "--config-help",
        action="store_true",
        help=f"print every field of {source} with its value and exit",
    )


def _eval_help() -> str:
    from jaxdiff.config_groups import METRICS
    from jaxdiff.evaluation.evaluate import OVERRIDABLE

    return f"""\
The run's saved config says what to compute and how: its `eval` and `sample` groups, changed
with --config.KEY=VALUE (keys under {", ".join(p + "*" for p in OVERRIDABLE)}), e.g.
  jaxdiff eval --workdir W --config.eval.metrics=adherence,fid \\
      --config.sample.sampler=euler --config.sample.steps=20 --config.sample.guidance=3
--config-help prints every field of the run's config with its value.

metrics (--config.eval.metrics=NAME[,NAME...]): {", ".join(METRICS)}
  fid, kid, precision_recall, clip_score: eval.num_samples images generated for the captions
    of as many data examples (and those data images)
  adherence: eval.samples_per_prompt images for each held-out shapes prompt
  bits_per_dim: eval.bpd_images data images, eval.bpd_steps ODE steps

Each evaluation is written to a new file with its settings and image counts."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        overrides, rest = _split_overrides(argv)
        config_help = "--config-help" in rest
        args = build_parser(config_help).parse_args(rest)
        if overrides and args.command in ("sample", "upscale", "convert", "prepare-data"):
            raise UserError(f"{args.command!r} takes no config overrides, got {overrides[0]!r}")
        _quiet_read_only_checkpoints()
        if config_help:
            return _config_help(args, overrides)
        if args.command == "train":
            return _train(args, overrides)
        if args.command == "compare-samplers":
            return _compare_samplers(args, overrides)
        if args.command == "convert":
            return _convert(args)
        if args.command == "eval":
            return _eval(args, overrides)
        if args.command == "prepare-data":
            return _prepare_data(args)
        if args.command == "upscale":
            return _upscale(args)
        return _sample(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # the reader went away (`jaxdiff ... --config-help | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + signal.SIGPIPE


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """The config overrides of ``argv`` as "KEY=VALUE" (given as ``--config.KEY=VALUE`` or
    ``--config.KEY VALUE``) and the other arguments."""
    overrides, rest, i = [], [], 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith("--config."):
            rest.append(arg)
        elif "=" in arg:
            overrides.append(arg.removeprefix("--config."))
        elif i < len(argv) and not argv[i].startswith("--"):
            overrides.append(f"{arg.removeprefix('--config.')}={argv[i]}")
            i += 1
        else:
            raise UserError(f"{arg} has no value; give it as {arg}=VALUE")
    return overrides, rest


def _config_help(args: argparse.Namespace, overrides: list[str]) -> int:
    """Prints the config a command would run with, a ``KEY = VALUE`` line per field."""
    if getattr(args, "config", None) is not None:
        from jaxdiff.configuration import load_config

        config, source = load_config(args.config, overrides), args.config
    elif getattr(args, "workdir", None) is not None:
        from jaxdiff.workdir import saved_config

        config, source = saved_config(args.workdir, overrides), f"the run {args.workdir}"
    else:
        raise UserError("--config-help prints a trained run's config; give --workdir")
    print(f"# the config of {source}; change a field with --config.KEY=VALUE")
    for key, value in _fields(config.to_dict()):
        print(f"{key} = {value!r}")
    return 0


def _fields(tree: Mapping[str, object], prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a nested dict, in its order."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _fields(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


class _ReadOnlyCheckpointNotice(logging.Filter):
    """Drops orbax's warnings that a checkpoint folder opened for reading is read only (and so
    saves nothing), which sampling and evaluation do on purpose."""

    NOTICES = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTICES)


_READ_ONLY_NOTICE = _ReadOnlyCheckpointNotice()


def _quiet_read_only_checkpoints() -> None:
    from absl import logging as absl_logging

    absl_logging.get_absl_logger().addFilter(_READ_ONLY_NOTICE)  # a second add does nothing


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.evaluation.evaluate import evaluate_workdir

    record, path = evaluate_workdir(args.workdir, overrides, args.out)
    results = ", ".join(f"{name} {value:.6g}" for name, value in record["results"].items())
    print(f"step {record['step']}: {results}\nwrote {path}")
    return 0


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.configuration import load_config
    from jaxdiff.evaluation.evaluate import Evaluator
    from jaxdiff.train.stopping import exit_code, stop_report
    from jaxdiff.train.trainer import train
    from jaxdiff.workdir import checkpoint_folder

    config = load_config(args.config, overrides)
    result = train(config, args.workdir, progress=not args.no_progress, make_evaluator=Evaluator)
    reached = f"step {result['steps']} of {config.train.steps}"
    if result["signal"]:
        checkpoint = checkpoint_folder(args.workdir, result["steps"])
        print(stop_report(result["signal"], result["steps"], config.train.steps, checkpoint))
        return exit_code(result["signal"])
    if not result["trained"]:
        print(f"{args.workdir} is already trained to {reached}; nothing to do")
        return 0
    print(f"trained {args.workdir} to {reached}: loss {result['loss']:.4g}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    """`jaxdiff sample`: text-to-image, img2img (--image) or inpainting (--image --mask) with a
    trained run (--workdir) or Stable Diffusion weights (--pretrained); one grid PNG, a row per
    prompt. Every argument is checked before the weights are loaded."""
    from jaxdiff import images, samplers
    from jaxdiff.pipelines.sample_png import display_scale, sample_text

    mode = "--pretrained" if args.pretrained is not None else "--workdir"
    args.num_images = NUM_IMAGES[mode] if args.num_images is None else args.num_images
    for flag, value, ok in (
        ("--steps", args.steps, args.steps is None or args.steps > 0),
        ("--guidance", args.guidance, args.guidance is None or args.guidance >= 0),
        ("--num-images", args.num_images, args.num_images > 0),
        ("--seed", args.seed, 0 <= args.seed < 2**32),
        ("--noise-level", args.noise_level, args.noise_level is None or args.noise_level >= 0),
    ):
        if not ok:
            raise UserError(f"{flag} must be {_ACCEPTED[flag]}, got {value}")
    if args.sampler is not None:
        samplers.get(args.sampler)
    negatives = args.negative_prompt or [""]
    if len(negatives) not in (1, len(args.prompt)):
        raise UserError(
            f"{len(negatives)} --negative-prompt for {len(args.prompt)} --prompt; give one "
            "for all prompts or one per prompt"
        )
    folder = args.workdir / "samples" if args.workdir is not None else Path("samples")
    out = _out_path(args.out, folder / f"{_slug(args.prompt[0])}_seed{args.seed}.png")
    if args.image is None and (args.mask is not None or args.strength is not None):
        raise UserError("--mask and --strength need --image (the image to start from)")
    if args.image is not None and (args.height is not None or args.width is not None):
        raise UserError("--height and --width go with text-to-image; --image sets the size")
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        raise UserError(f"--strength {args.strength} must be in (0, 1]")
    if args.lora and args.pretrained is None:
        raise UserError("--lora goes with --pretrained (Stable Diffusion weights)")
    if args.noise_level is not None and args.upscale is None:
        raise UserError("--noise-level goes with --upscale (the upscaler's noise on the image)")
    control = _control_settings(args)
    image = None if args.image is None else _read_image(args.image, "RGB", "--image")
    mask = None if args.mask is None else _read_image(args.mask, "L", "--mask")
    pipe = _pipeline(args)
    if args.lora:
        names = [f"lora_{i}" for i in range(len(args.lora))]
        for name, (path, _) in zip(names, args.lora, strict=True):
            pipe.load_lora_weights(path, adapter_name=name)
        pipe.set_adapters(names, [scale for _, scale in args.lora])
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    given["sampler"] = args.sampler
    settings = dict(
        negative_prompt=negatives if len(negatives) > 1 else negatives[0] or None,
        seed=args.seed,
        num_images_per_prompt=args.num_images,
        **{k: v for k, v in given.items() if v is not None},
    )
    used = pipe.sampling(**{k: v for k, v in settings.items() if k != "negative_prompt"})
    settings |= control
    text = {
        "model": args.pretrained or str(args.workdir),
        **sample_text(
            args.prompt,
            args.seed,
            used.sampler,
            used.num_inference_steps,
            used.guidance_scale,
            negatives,
        ),
    }
    if args.lora:
        text["lora"] = ", ".join(f"{path}:{scale:g}" for path, scale in args.lora)
    if args.control_image:
        if args.controlnet:
            text["controlnet"] = " | ".join(map(str, args.controlnet))
        text["control_image"] = " | ".join(map(str, args.control_image))
        if args.control_scale:
            text["control_scale"] = " | ".join(f"{s:g}" for s in args.control_scale)
    if image is None:
        pictures = pipe(args.prompt, height=args.height, width=args.width, **settings)
    elif mask is None:
        strength = 0.8 if args.strength is None else args.strength
        pictures = pipe.img2img(args.prompt, image, strength=strength, **settings)
        text |= {"image": args.image, "strength": strength}
    else:
        strength = 1.0 if args.strength is None else args.strength
        pictures = pipe.inpaint(args.prompt, image, mask, strength=strength, **settings)
        text |= {"image": args.image, "mask": args.mask, "strength": strength}
    if args.upscale is not None:
        pictures = _upscaled(args, pictures, negatives)
        from jaxdiff.pipelines.stable_diffusion_upscale import DEFAULT_NOISE_LEVEL

        level = DEFAULT_NOISE_LEVEL if args.noise_level is None else args.noise_level
        text |= {"upscaler": args.upscale, "noise_level": level}
    grid = images.grid(images.to_uint8(pictures, (0.0, 1.0)), columns=args.num_images)
    images.save_png(out, grid, text, scale=display_scale(pictures.shape[1]))
    print(f"wrote {out}")
    return 0


def _upscaled(args: argparse.Namespace, pictures: Any, negatives: list[str]) -> Any:
    """`jaxdiff sample --upscale`: each image 4x larger, with its prompt and negative prompt,
    the same seed; in tiles of the upscaler's `max_untiled_size` when the images are larger."""
    from jaxdiff.pipelines import StableDiffusionUpscale

    def per_image(texts: list[str]) -> list[str]:
        texts = texts * len(args.prompt) if len(texts) == 1 else texts
        return [text for text in texts for _ in range(args.num_images)]

    pipe = StableDiffusionUpscale.from_pretrained(args.upscale)
    options = {} if args.noise_level is None else {"noise_level": args.noise_level}
    options |= _tiles_for(pipe, pictures.shape[1:3])
    negative = per_image(negatives) if any(negatives) else None
    return pipe(per_image(args.prompt), negative, image=pictures, seed=args.seed, **options)


def _tiles_for(pipe: Any, size: tuple[int, int]) -> dict[str, int]:
    """The upscaler's tiles for images of `size` (H, W): none when it takes them whole."""
    return {} if max(size) <= pipe.max_untiled_size else {"tile_size": pipe.max_untiled_size}


def _upscale(args: argparse.Namespace) -> int:
    """`jaxdiff upscale`: one image 4x larger, written as a PNG that says how it was made; every
    argument is checked before the weights are loaded."""
    from jaxdiff import images, samplers
    from jaxdiff.pipelines import StableDiffusionUpscale
    from jaxdiff.pipelines.sample_png import sample_text
    from jaxdiff.pipelines.stable_diffusion_upscale import DEFAULT_NOISE_LEVEL

    for flag, value, ok in (
        ("--steps", args.steps, args.steps is None or args.steps > 0),
        ("--guidance", args.guidance, args.guidance is None or args.guidance >= 0),
        ("--seed", args.seed, 0 <= args.seed < 2**32),
        ("--noise-level", args.noise_level, args.noise_level is None or args.noise_level >= 0),
    ):
        if not ok:
            raise UserError(f"{flag} must be {_ACCEPTED[flag]}, got {value}")
    if args.sampler is not None:
        samplers.get(args.sampler)
    out = _out_path(args.out, Path("samples") / f"{_slug(args.image.stem)}_x4_seed{args.seed}.png")
    image = _read_image(args.image, "RGB", "--image")
    pipe = StableDiffusionUpscale.from_pretrained(args.pretrained)
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    given |= {"sampler": args.sampler, "noise_level": args.noise_level}
    settings = {k: v for k, v in given.items() if v is not None}
    tiling = {"tile_size": args.tile_size, "tile_overlap": args.tile_overlap}
    tiling = {k: v for k, v in tiling.items() if v is not None}
    if args.tile_size is None:  # in tiles when the upscaler takes the image whole no more
        tiling |= _tiles_for(pipe, (image.height, image.width))
    picture = pipe(
        args.prompt, args.negative_prompt, image=image, seed=args.seed, **settings, **tiling
    )
    used = pipe.sampling(**{k: v for k, v in settings.items() if k != "noise_level"})
    text = {
        "model": args.pretrained,
        "image": args.image,
        "noise_level": settings.get("noise_level", DEFAULT_NOISE_LEVEL),
        **tiling,
        **sample_text(
            [args.prompt],
            args.seed,
            used.sampler,
            used.num_inference_steps,
            used.guidance_scale,
            [args.negative_prompt or ""],
        ),
    }
    images.save_png(out, images.to_uint8(picture[0], (0.0, 1.0)), text)
    print(f"wrote {out}")
    return 0


_ACCEPTED = {
    "--steps": "> 0",
    "--guidance": ">= 0",
    "--num-images": "> 0",
    "--seed": "in [0, 2**32)",
    "--noise-level": ">= 0",
}


def _control_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline arguments of --controlnet, --control-image and --control-scale, checked and
    the images read (before any weights are)."""
    given = args.control_image or []
    if args.controlnet and args.pretrained is None:
        raise UserError("--controlnet goes with --pretrained (Stable Diffusion weights)")
    if not (args.controlnet or given):
        if args.control_scale:
            raise UserError("--control-scale goes with --control-image")
        return {}
    if not args.controlnet and args.workdir is None:
        raise UserError("--control-image goes with --controlnet (or a ControlNet run's --workdir)")
    nets = args.controlnet or [args.workdir]
    what = f"{len(nets)} --controlnet" if args.controlnet else "the run's ControlNet"
    if len(given) != len(nets):
        raise UserError(f"{len(given)} --control-image for {what}; give one per ControlNet")
    scales = args.control_scale or []
    if len(scales) not in (0, 1, len(nets)):
        raise UserError(
            f"{len(scales)} --control-scale for {what}; give one for all or one per ControlNet"
        )
    for scale in scales:
        if not scale >= 0:
            raise UserError(f"--control-scale {scale} must be >= 0")
    pictures = [_read_image(path, "RGB", "--control-image") for path in given]
    settings: dict[str, Any] = {"control_image": pictures[0] if len(nets) == 1 else pictures}
    if scales:
        settings["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
    return settings


def _out_path(out: str | None, default: Path) -> Path:
    """Where ``--out`` puts a file whose default path is ``default``: the file ``out`` (with
    ``default``'s suffix), or ``default``'s name in the folder ``out`` (an existing folder or a
    path ending in "/")."""
    if out is None:
        return default
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return path / default.name
    if path.suffix.lower() != default.suffix:
        raise UserError(
            f"--out {out!r} is neither a {default.suffix} file nor a folder; give a "
            f"{default.suffix} path, or a folder ending in '/'"
        )
    return path


def _pipeline(args: argparse.Namespace):
    """The pipeline of --pretrained weights or of the --workdir run (its prompts' words checked
    against the run's vocabulary before its weights are loaded)."""
    if args.pretrained is not None:
        from jaxdiff.pipelines import StableDiffusion

        return StableDiffusion.from_pretrained(args.pretrained, controlnet=args.controlnet)
    from jaxdiff.train.tasks import load_image_task, load_model

    task = load_image_task(args.workdir)
    task.text_ids([*args.prompt, *(args.negative_prompt or [])])
    controlled = task.config.task == "controlnet"
    if controlled != bool(args.control_image):
        raise UserError(
            f"--workdir {str(args.workdir)!r} holds a ControlNet run: give its --control-image"
            if controlled
            else f"--control-image needs a ControlNet; --workdir {str(args.workdir)!r} holds a "
            f"{task.config.task!r} run"
        )
    return task.pipeline(load_model(task, args.workdir))


def _prepare_data(args: argparse.Namespace) -> int:
    from jaxdiff.data.prepare import prepare_data

    prepared = prepare_data(args.name, data_dir=args.data_dir)
    where = f" with --config.data.data_dir={args.data_dir}" if args.data_dir else ""
    print(f"{args.name} is prepared in {prepared}; train on it{where}")
    return 0


def _compare_samplers(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.benchmarks import report
    from jaxdiff.configuration import load_config

    config = load_config(args.config, overrides)
    if config.get("problem") not in ("mixtures", "model"):
        raise UserError(
            f"config {args.config!r} has problem={config.get('problem')!r}; "
            "a sampler comparison config sets problem to 'mixtures' or 'model'"
        )
    if config.problem == "model":
        from jaxdiff.benchmarks.on_model import ADHERENCE, compare_on_model

        if args.workdir is None:
            raise UserError(f"config {args.config!r} compares samplers on a model; give --workdir")
        rows = compare_on_model(config, args.workdir, progress=not args.no_progress)
        notes = {
            rows[0]["problem"]: [f"Reference: {config.reference}, {config.reference_steps} steps."]
        }
        metrics, title = ADHERENCE, f"Samplers on the trained model {args.workdir}"
    else:
        from jaxdiff.benchmarks.on_mixtures import compare_on_mixtures
        from jaxdiff.diffusion.processes import make_process

        if args.workdir is not None:
            raise UserError(f"config {args.config!r} compares samplers on mixtures; drop --workdir")
        process = make_process(**config.process)
        rows, floors = compare_on_mixtures(config, process, progress=not args.no_progress)
        notes, metrics = report.gmm_notes(floors), report.GMM_METRICS
        title = "Samplers on Gaussian mixtures"
    paths = report.write_report(rows, notes, config.nfe, metrics, args.out, title)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxdiff.convert.conversion import convert

    dtype = getattr(jnp, args.dtype) if args.dtype else None
    written = convert(args.source, args.out, args.to, dtype=dtype, variant=args.variant)
    print(f"wrote {args.out}: {', '.join(written)}")
    return 0


def _read_image(path: Path, mode: str, flag: str):
    """The image file `path` as a PIL image in `mode` ("RGB" or "L")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            return picture.convert(mode)
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"{flag} {str(path)!r} is not a readable image ({error})") from error


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "sample"


if __name__ == "__main__":
    sys.exit(main())
