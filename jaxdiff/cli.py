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


# Images per prompt by default: a grid of a small trained run's samples, one Stable Diffusion image.
NUM_IMAGES = {"--workdir": 4, "--pretrained": 1}


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
    from jaxdiff.evaluation.evaluate import Evaluator
    from jaxdiff.train.trainer import train

    config = load_config(args.config, overrides)
    metrics = train(config, args.workdir, progress=not args.no_progress, make_evaluator=Evaluator)
    if metrics["preempted"]:
        print(
            f"stopped by SIGTERM after step {metrics['steps']}, checkpoint saved in "
            f"{args.workdir}; run the same command to resume"
        )
        return 0
    print(f"trained {metrics['steps']} steps in {args.workdir}: loss {metrics.get('loss', 'n/a')}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    """`jaxdiff sample`: text-to-image, img2img (--image) or inpainting (--image --mask) with a
    trained run (--workdir) or Stable Diffusion weights (--pretrained); one grid PNG, a row per
    prompt. Every argument is checked before the weights are loaded."""
    from jaxdiff import images, samplers

    mode = "--pretrained" if args.pretrained is not None else "--workdir"
    args.num_images = NUM_IMAGES[mode] if args.num_images is None else args.num_images
    for flag, value, ok in (
        ("--steps", args.steps, args.steps is None or args.steps > 0),
        ("--guidance", args.guidance, args.guidance is None or args.guidance >= 0),
        ("--num-images", args.num_images, args.num_images > 0),
        ("--seed", args.seed, 0 <= args.seed < 2**32),
    ):
        if not ok:
            raise UserError(f"{flag} must be {_ACCEPTED[flag]}, got {value}")
    if args.sampler is not None:
        samplers.get(args.sampler)
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {str(args.out)!r} is a directory; give a .png file path")
    if args.image is None and (args.mask is not None or args.strength is not None):
        raise UserError("--mask and --strength need --image (the image to start from)")
    if args.image is not None and (args.height is not None or args.width is not None):
        raise UserError("--height and --width go with text-to-image; --image sets the size")
    if args.strength is not None and not 0.0 < args.strength <= 1.0:
        raise UserError(f"--strength {args.strength} must be in (0, 1]")
    image = None if args.image is None else _read_image(args.image, "RGB", "--image")
    mask = None if args.mask is None else _read_image(args.mask, "L", "--mask")
    pipe = _pipeline(args)
    given = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    given["sampler"] = args.sampler
    settings = dict(
        negative_prompt=args.negative_prompt or None,
        seed=args.seed,
        num_images_per_prompt=args.num_images,
        **{k: v for k, v in given.items() if v is not None},
    )
    used = pipe.sampling(**{k: v for k, v in settings.items() if k != "negative_prompt"})
    text = {
        "model": args.pretrained or str(args.workdir),
        "prompt": " | ".join(args.prompt),
        "negative_prompt": args.negative_prompt,
        "seed": args.seed,
        "sampler": used.sampler,
        "steps": used.num_inference_steps,
        "guidance": used.guidance_scale,
    }
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
    folder = args.workdir / "samples" if args.workdir is not None else Path("samples")
    out = args.out or folder / f"{_slug(args.prompt[0])}_seed{args.seed}.png"
    grid = images.grid(images.to_uint8(pictures, (0.0, 1.0)), columns=args.num_images)
    # A trained run's small images (32 px on shapes) are written 4x larger to be seen.
    images.save_png(out, grid, text, scale=4 if args.workdir is not None else 1)
    print(f"wrote {out}")
    return 0


_ACCEPTED = {
    "--steps": "> 0",
    "--guidance": ">= 0",
    "--num-images": "> 0",
    "--seed": "in [0, 2**32)",
}


def _pipeline(args: argparse.Namespace):
    """The pipeline of --pretrained weights or of the --workdir run (its prompts' words checked
    against the run's vocabulary before its weights are loaded)."""
    if args.pretrained is not None:
        from jaxdiff.pipelines import StableDiffusion

        return StableDiffusion.from_pretrained(args.pretrained)
    from jaxdiff.train.tasks import load_image_task, load_model

    task = load_image_task(args.workdir)
    task.text_ids([*args.prompt, args.negative_prompt])
    return task.pipeline(load_model(task, args.workdir))


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
