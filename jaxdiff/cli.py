"""The ``jaxdiff`` command: ``train``, ``sample``, ``compare-samplers`` and ``convert``.

    jaxdiff train --config configs/shapes_t2i.py[:tiny] --workdir W [--config.train.steps=100 ...]
    jaxdiff sample --workdir W --prompt "a red circle in the center" --seed 0 --steps 20
    jaxdiff compare-samplers --config configs/compare_samplers_gmm.py --out DIR
    jaxdiff compare-samplers --config configs/compare_samplers_shapes.py --workdir W --out DIR
    jaxdiff convert stable-diffusion-v1-5/stable-diffusion-v1-5 sd15-jaxdiff --to jaxdiff
    jaxdiff convert sd15-jaxdiff sd15-diffusers --to diffusers [--dtype float16]

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxdiff", description="Text-to-image diffusion research in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train", help="train the model of a config file (resumes from the workdir's checkpoint)"
    )
    train.add_argument("--config", required=True, help="path/to/config.py or path/to/config.py:arg")
    train.add_argument("--workdir", required=True, type=Path, help="checkpoints, logs and samples")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sample = commands.add_parser("sample", help="sample images for prompts from a trained model")
    sample.add_argument("--workdir", required=True, type=Path, help="a trained text-to-image run")
    sample.add_argument("--prompt", required=True, action="append", help="repeat for several")
    sample.add_argument("--negative-prompt", default="", help="steers away from this prompt")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=int, default=20, help="sampler steps (> 0)")
    sample.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance >= 0")
    sample.add_argument("--sampler", default="heun", help="a name from jaxdiff.samplers.names()")
    sample.add_argument("--num-images", type=int, default=4, help="images per prompt")
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
        return _sample(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def _train(args: argparse.Namespace, overrides: list[str]) -> int:
    from jaxdiff.configuration import load_config
    from jaxdiff.train.trainer import train

    config = load_config(args.config, overrides)
    metrics = train(config, args.workdir, progress=not args.no_progress)
    print(f"trained {metrics['steps']} steps in {args.workdir}: loss {metrics.get('loss', 'n/a')}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from jaxdiff import images, samplers
    from jaxdiff.models.tokenizer import encode
    from jaxdiff.pipelines.text_to_image import check_sampling
    from jaxdiff.train.trainer import load_model, load_task

    # Every argument is checked before the weights are loaded.
    if args.num_images <= 0:
        raise UserError(f"--num-images must be > 0, got {args.num_images}")
    check_sampling(args.steps, args.guidance, args.seed, prefix="--")
    if args.out is not None and args.out.is_dir():
        raise UserError(f"--out {str(args.out)!r} is a directory; give a .png file path")
    samplers.get(args.sampler)
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
    text = {
        "prompt": " | ".join(args.prompt),
        "negative_prompt": args.negative_prompt,
        "seed": args.seed,
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance": args.guidance,
    }
    images.save_png(out, images.grid(pictures, columns=args.num_images), text, scale=4)
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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "sample"


if __name__ == "__main__":
    sys.exit(main())
