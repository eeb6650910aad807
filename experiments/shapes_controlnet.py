"""A ControlNet for the demo's shapes model: train it on the shapes' masks, then measure how often
the images follow the prompt with the prompt's own mask, and the mask when it shows another shape.

    make demo                                                     # runs/demo/t2i, the base
    python experiments/shapes_controlnet.py --workdir runs/demo   # runs/demo/controlnet

Every image is made for a held-back example of the shapes stream (all 90 combinations, the demo's
held-out ones included): the canonical prompt of its (shape, colour, position) and its filled
mask. Measured, with the demo's sampler settings:

- the base model with no control, and the ControlNet at conditioning scale 1 (attributes read
  back from the images by `jaxdiff.evaluation.shape_attributes`);
- disagreement: the mask of the next shape (circle -> square -> triangle -> circle) in the same
  place, the prompt unchanged; how often the image shows the mask's shape and how often the
  prompt's, per conditioning scale.

Writes ``WORKDIR/controlnet/report.md`` and ``WORKDIR/controlnet/adherence.json``; re-running
resumes the training from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_runs import train_on_demo  # noqa: E402

from jaxdiff import images  # noqa: E402
from jaxdiff.data.pipeline import make_source  # noqa: E402
from jaxdiff.data.shapes import COLOURS, POSITIONS, SHAPES, prompt  # noqa: E402
from jaxdiff.evaluation import prompt_adherence  # noqa: E402
from jaxdiff.evaluation.shape_attributes import read_attributes  # noqa: E402
from jaxdiff.train.tasks import load_trained  # noqa: E402

FIRST_EXAMPLE = 1 << 40  # far past any index a training run reads
SCALES = (0.25, 0.5, 1.0)
BATCH = 150


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--examples", type=int, default=450, help="images per measurement")
    parser.add_argument("--config", default=str(ROOT / "configs/shapes_controlnet.py"))
    parser.add_argument("overrides", nargs="*", help="ControlNet config overrides key=value")
    args = parser.parse_args()
    base_dir, run_dir = args.workdir / "t2i", args.workdir / "controlnet"
    config, training = train_on_demo(args.config, args.workdir, "controlnet", args.overrides)

    data = make_source(config.data)  # the shapes with their masks, no combination held out
    indices = FIRST_EXAMPLE + np.arange(args.examples)
    targets = data.attributes(indices)  # [N, 3]
    prompts = [prompt(SHAPES[s], COLOURS[c], POSITIONS[p]) for s, c, p in targets]
    other = targets.copy()
    other[:, 0] = (targets[:, 0] + 1) % len(SHAPES)
    own_masks = data.conditioning_images(indices) / 255.0  # [N, S, S, 3] in [0, 1]
    other_masks = data.conditioning_images(indices, other) / 255.0
    sampling = {
        "num_inference_steps": config.sample.steps,
        "guidance_scale": config.sample.guidance,
        "sampler": config.sample.sampler,
        "seed": 1,
    }

    started = time.perf_counter()
    base_task, base = load_trained(base_dir)
    read_base = read_attributes(_generate(base_task.pipeline(base), prompts, None, 0.0, sampling))
    task, model = load_trained(run_dir)
    pipeline = task.pipeline(model)
    controlled = _generate(pipeline, prompts, own_masks, 1.0, sampling)
    read_controlled = read_attributes(controlled)
    results = {
        "base (no control)": prompt_adherence.scores(read_base == targets),
        "ControlNet, own mask, scale 1": prompt_adherence.scores(read_controlled == targets),
    }
    disagreement = {}
    for scale in SCALES:
        shapes = read_attributes(_generate(pipeline, prompts, other_masks, scale, sampling))[:, 0]
        disagreement[scale] = {
            "mask": float((shapes == other[:, 0]).mean()),
            "prompt": float((shapes == targets[:, 0]).mean()),
        }
    sample_seconds = time.perf_counter() - started

    metrics = {
        "adherence": results,
        "disagreement": {f"{s:g}": v for s, v in disagreement.items()},
        "examples": args.examples,
        "sampling": sampling,
        "training": {
            **training,
            "batch_size": config.train.batch_size,
            "learning_rate": config.train.learning_rate,
        },
        "sampling_seconds": round(sample_seconds, 1),
    }
    (run_dir / "adherence.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "report.md").write_text(_report(metrics))
    grid = np.concatenate([images.to_uint8(own_masks[:10], (0.0, 1.0)), controlled[:10]])
    images.save_png(run_dir / "controlled.png", images.grid(grid, columns=10), scale=3)
    print(json.dumps(metrics, indent=2))


def _generate(pipeline, prompts, masks, scale: float, sampling: dict) -> np.ndarray:
    """uint8 images `[N, S, S, 3]`, image i the i-th of the seed whatever the batch."""
    out = []
    for start in range(0, len(prompts), BATCH):
        chunk = slice(start, start + BATCH)
        control = {}
        if masks is not None:
            control = {"control_image": masks[chunk], "controlnet_conditioning_scale": scale}
        pictures = pipeline(prompts[chunk], first_index=start, **control, **sampling)
        out.append(images.to_uint8(pictures, (0.0, 1.0)))
    return np.concatenate(out)


def _report(metrics: dict) -> str:
    rows = "\n".join(
        f"| {name} | {r['shape']:.3f} | {r['colour']:.3f} | {r['position']:.3f} | "
        f"**{r['all']:.3f}** |"
        for name, r in metrics["adherence"].items()
    )
    against = "\n".join(
        f"| {scale} | {r['mask']:.3f} | {r['prompt']:.3f} |"
        for scale, r in metrics["disagreement"].items()
    )
    t, s = metrics["training"], metrics["sampling"]
    return f"""# A ControlNet for the shapes model

Trained {t["steps"]} steps, batch {t["batch_size"]}, learning rate {t["learning_rate"]}; this
call trained {t["trained"]} of them in {t["seconds"]:.0f} s. {metrics["examples"]} images per
row, sampler `{s["sampler"]}`, {s["num_inference_steps"]} steps, guidance {s["guidance_scale"]}.

| model | shape | colour | position | all correct |
|---|---|---|---|---|
{rows}

The mask of another shape in the same place, the prompt unchanged: the shape the images show.

| conditioning scale | the mask's shape | the prompt's shape |
|---|---|---|
{against}
"""


if __name__ == "__main__":
    main()
