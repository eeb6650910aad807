"""The ``jaxdiff`` command: ``train``, ``sample``, ``compare-samplers``, ``convert`` and ``eval``.

    jaxdiff train --config configs/shapes_t2i.py[:tiny] --workdir W [--config.train.steps=100 ...]
    jaxdiff sample --workdir W --prompt "a red circle in the center" --seed 0 --steps 20
    jaxdiff sample --pretrained stable-diffusion-v1-5/stable-diffusion-v1-5 --prompt "a fox" \
        [--negative-prompt ...] [--image in.png [--strength 0.6] [--mask mask.png]]
    jaxdiff compare-samplers --config configs/compare_samplers_gmm.py --out DIR
    jaxdiff compare-samplers --config configs/compare_samplers_shapes.py --workdir W --out DIR
    jaxdiff convert stable-diffusion-v1-5/stable-diffusion-v1-5 sd15-jaxdiff --to jaxdiff
    jaxdiff convert sd15-jaxdiff sd15-diffusers --to diffusers [--dtype float16]
    jaxdiff eval --workdir W --config.eval.metrics=fid,kid \
        --config.eval.inception_weights=pt_inception-2015-12-05-6726825d.pth

Bad input ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxdiff.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UserError (one line, exit code 2)."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


# The sampling defaults of a trained jaxdiff run and of Stable Diffusion weights (diffusers').
SAMPLE_DEFAULTS = {
    "--workdir": {"--steps": 20, "--guidance": 3.0, "--sampler": "heun", "--num-images": 4},
    "--pretrained": {"--steps": 50, "--guidance": 7.5, "--sampler": "ddim", "--num-images": 1},
}
_PRETRAINED_ONLY = ("height", "width", "image", "mask", "strength")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxdiff", description="Text-to-image diffusion research in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train", help="train the model of a config file (resumes from the workdir's checkpoint)"
    )
    train.add_argument("--config", required=True, help="path/to/config.py or path/to/config.py:arg")
    train.add_argument("--workdir", required=True, type=Path, help="checkpoints, logs and samples")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sample = commands.add_parser(
        "sample", help="sample images for prompts from a trained run or Stable Diffusion weights"
    )
    model = sample.add_mutually_exclusive_group(required=True)
    model.add_argument("--workdir", type=Path, help="a trained text-to-image run")
    model.add_argument("--pretrained", help="a diffusers Stable Diffusion folder or hub id")
    sample.add_argument("--prompt", required=True, action="append", help="repeat for several")
    sample.add_argument("--negative-prompt", default="", help="steers away from this prompt")
    sample.add_argument("--seed", type=int, default=0)
    for flag, kind, text in (
        ("--steps", int, "sampler steps (> 0)"),
        ("--guidance", float, "classifier-free guidance >= 0"),
        ("--sampler", str, "a name from jaxdiff.samplers.names()"),
        ("--num-images", int, "images per prompt"),
    ):
        defaults = ", ".join(f"{mode}: {d[flag]}" for mode, d in SAMPLE_DEFAULTS.items())
        sample.add_argument(flag, type=kind, help=f"{text} (default {defaults})")
    sample.add_argument("--height", type=int, help="--pretrained: image height (the model's)")
    sample.add_argument("--width", type=int, help="--pretrained: image width (the model's)")
    sample.add_argument("--image", type=Path, help="--pretrained: start image (img2img, inpaint)")
    sample.add_argument("--mask", type=Path, help="--pretrained: inpaint where the mask is white")
    sample.add_argument(
        "--strength", type=float, help="--pretrained with --image: 0 < s <= 1 (0.8; inpaint 1)"
    )
    sample.add_argument("--out", type=Path, help="PNG path (default: WORKDIR/samples/...)")

    compare = commands.add_parser(
        "compare-samplers",
        help="measure sampler error exactly (Gaussian mixtures) or on a trained model",
    )
    compare.add_argument(
        "--config", required=True, help="path/to/config.py or path/to/config.py:arg"
    )
    compare.add_argument("--out", required=True, type=Path, help="folder for the CSV, report, plot")
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
    )
    evaluate.add_argument("--workdir", required=True, type=Path, help="a trained run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a.removeprefix("--config.") for a in argv if a.startswith("--config.")]
    rest = [a for a in argv if not a.startswith("--config.")]
    try:
        args = build_parser().parse_args(rest)
        if overrides and args.command in ("sample", "convert"):
            raise UserError(f"{args.command!r} takes no config overrides, got {overrides[0]!r}")
        if args.command == "train":
            return _train(args, overrides)
        if args.command == "compare-samplers":
            return _compare_samplers(args, overrides)
        if args.command == "convert":
            return _convert(args)
        if args.command == "eval":
            return _eval(args, overrides)
        return _sample(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def _eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.evaluation.evaluate import evaluate_workdir

    step, results = evaluate_workdir(args.workdir, overrides)
    print(f"step {step}: " + ", ".join(f"{name} {value:.6g}" for name, value in results.items()))
    return 0


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.configuration import load_config
    from jaxdiff.train.trainer import train

    config = load_config(args.config, overrides)
    metrics = train(config, args.workdir, progress=not args.no_progress)
    if metrics["preempted"]:
        print(
            f"stopped by SIGTERM after step {metrics['steps']}, checkpoint saved in "
            f"{args.workdir}; run the same command to resume"
        )
        return 0
    print(f"trained {metrics['steps']} steps in {args.workdir}: loss {metrics.get('loss', 'n/a')}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from jaxdiff import images, samplers
    from jaxdiff.models.tokenizer import encode
    from jaxdiff.pipelines.text_to_image import check_sampling
    from jaxdiff.train.trainer import load_model, load_task

    # Every argument is checked before the weights are loaded.
    mode = "--pretrained" if args.pretrained is not None else "--workdir"
    for flag, default in SAMPLE_DEFAULTS[mode].items():
        name = flag.removeprefix("--").replace("-", "_")
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.num_images <= 0:
        raise UserError(f"--num-images must be > 0, got {args.num_images}")
    check_sampling(args.steps, args.guidance, args.seed, prefix="--")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {str(args.out)!r} is a directory; give a .png file path")
    samplers.get(args.sampler)
    if mode == "--pretrained":
        return _sample_pretrained(args)
    for name in _PRETRAINED_ONLY:
        if getattr(args, name) is not None:
            raise UserError(f"--{name} goes with --pretrained, not --workdir")
    task = load_task(args.workdir)
    if not hasattr(task, "pipeline"):
        raise UserError(
            f"workdir {str(args.workdir)!r} holds a {task.config.task!r} model, "
            "not a text-to-image one"
        )
    encode(task.tokenizer, [*args.prompt, args.negative_prompt])
    model = load_model(task, args.workdir)
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    pictures = task.pipeline(model)(
        prompts,
        negative_prompts=[args.negative_prompt] * len(prompts),
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
    )
    out = args.out or args.workdir / "samples" / f"{_slug(args.prompt[0])}_seed{args.seed}.png"
    images.save_png(out, images.grid(pictures, columns=args.num_images), _png_text(args), scale=4)
    print(f"wrote {out}")
    return 0


def _compare_samplers(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.configuration import load_config
    from jaxdiff.evaluation import comparison_report as report

    config = load_config(args.config, overrides)
    if config.get("problem") not in ("mixtures", "model"):
        raise UserError(
            f"config {args.config!r} has problem={config.get('problem')!r}; "
            "a sampler comparison config sets problem to 'mixtures' or 'model'"
        )
    if config.problem == "model":
        from jaxdiff.evaluation.compare_on_model import ADHERENCE, compare_on_model

        if args.workdir is None:
            raise UserError(f"config {args.config!r} compares samplers on a model; give --workdir")
        rows = compare_on_model(config, args.workdir, progress=not args.no_progress)
        notes = {
            rows[0]["problem"]: [f"Reference: {config.reference}, {config.reference_steps} steps."]
        }
        metrics, title = ADHERENCE, f"Samplers on the trained model {args.workdir}"
    else:
        from jaxdiff.diffusion.processes import make_process
        from jaxdiff.evaluation.compare_samplers import compare_on_mixtures

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


def _png_text(args: argparse.Namespace) -> dict[str, object]:
    """How a sample was made, for its PNG text chunks."""
    return {
        "prompt": " | ".join(args.prompt),
        "negative_prompt": args.negative_prompt,
        "seed": args.seed,
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
    }


def _read_image(path: Path, mode: str, flag: str):
    """The image file `path` as a PIL image in `mode` ("RGB" or "L")."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            return picture.convert(mode)
    except (OSError, UnidentifiedImageError) as error:
        raise UserError(f"{flag} {str(path)!r} is not a readable image ({error})") from error


def _sample_pretrained(args: argparse.Namespace) -> int:
    """`jaxdiff sample --pretrained`: text-to-image, img2img (--image) or inpainting (--image
    --mask) with a Stable Diffusion model; one grid PNG, a row per prompt."""
    import numpy as np

    from jaxdiff import images
    from jaxdiff.pipelines import StableDiffusion

    if args.image is None and (args.mask is not None or args.strength is not None):
        raise UserError("--mask and --strength need --image (the image to start from)")
    if args.image is not None and (args.height is not None or args.width is not None):
        raise UserError("--height and --width go with text-to-image; --image sets the size")
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        raise UserError(f"--strength {args.strength} must be in (0, 1]")
    image = None if args.image is None else _read_image(args.image, "RGB", "--image")
    mask = None if args.mask is None else _read_image(args.mask, "L", "--mask")
    pipe = StableDiffusion.from_pretrained(args.pretrained)
    settings = dict(
        negative_prompt=args.negative_prompt or None,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        sampler=args.sampler,
        seed=args.seed,
        num_images_per_prompt=args.num_images,
    )
    text = {"model": args.pretrained, **_png_text(args)}
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
    out = args.out or Path("samples") / f"{_slug(args.prompt[0])}_seed{args.seed}.png"
    pixels = np.round(pictures * 255.0).astype(np.uint8)  # [B, H, W, 3]
    images.save_png(out, images.grid(pixels, columns=args.num_images), text)
    print(f"wrote {out}")
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "sample"


if __name__ == "__main__":
    sys.exit(main())
