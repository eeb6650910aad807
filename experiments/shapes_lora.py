"""A LoRA for the demo's shapes model, trained only on the combinations the model never saw: how
much it raises their prompt adherence, and what the seen combinations lose.

    make demo                                               # runs/demo/t2i, the base
    python experiments/shapes_lora.py --workdir runs/demo   # runs/demo/lora

Samples ``--samples-per-prompt`` images for the canonical prompt of each of the 90 (shape, colour,
position) combinations with the base model and with the LoRA (the demo's sampler settings, image
i the i-th of seed 1 in both), and reads the attributes back. Writes ``WORKDIR/lora/report.md``
and ``WORKDIR/lora/adherence.json``; re-running resumes the training from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_runs import train_on_demo  # noqa: E402

from jaxdiff.convert.lora_files import WEIGHT_NAME  # noqa: E402
from jaxdiff.data.shapes import combinations, parse_holdout  # noqa: E402
from jaxdiff.evaluation import prompt_adherence  # noqa: E402
from jaxdiff.train.tasks import generator, load_trained  # noqa: E402
from jaxdiff.workdir import saved_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--config", default=str(ROOT / "configs/shapes_lora.py"))
    parser.add_argument("overrides", nargs="*", help="LoRA config overrides key=value")
    args = parser.parse_args()
    base_dir, run_dir = args.workdir / "t2i", args.workdir / "lora"
    config, training = train_on_demo(args.config, args.workdir, "lora", args.overrides)

    unseen = set(parse_holdout(saved_config(base_dir).data.holdout))
    trained_on = set(combinations()) - set(parse_holdout(config.data.holdout))
    if trained_on != unseen:
        sys.exit(
            f"the LoRA trains on {sorted(trained_on)}, but the base run held out "
            f"{sorted(unseen)}; give the LoRA config data.holdout=... to match"
        )
    every = combinations()
    is_unseen = np.repeat([c in unseen for c in every], args.samples_per_prompt)
    results = {}
    for name, workdir in (("base", base_dir), ("LoRA", run_dir)):
        task, model = load_trained(workdir)
        generate = generator(task, model)
        result = prompt_adherence.evaluate(generate, every, args.samples_per_prompt, seed=1)
        correct = result["read"] == result["targets"]  # [N, 3]
        results[name] = {
            "seen": prompt_adherence.scores(correct[~is_unseen]),
            "held out": prompt_adherence.scores(correct[is_unseen]),
        }
    metrics = {
        "adherence": results,
        "held_out": sorted(" ".join(c) for c in unseen),
        "samples_per_prompt": args.samples_per_prompt,
        "sampling": {k: config.sample[k] for k in ("sampler", "steps", "guidance")},
        "lora": {
            "rank": config.lora.rank,
            "alpha": config.lora.alpha,
            "unet_targets": list(config.lora.unet_targets),
            "file_bytes": (run_dir / WEIGHT_NAME).stat().st_size,
        },
        "training": {
            **training,
            "batch_size": config.train.batch_size,
            "learning_rate": config.train.learning_rate,
        },
    }
    (run_dir / "adherence.json").write_text(json.dumps(metrics, indent=2))
    (run_dir / "report.md").write_text(_report(metrics))
    print(json.dumps(metrics, indent=2))


def _report(metrics: dict) -> str:
    rows = "\n".join(
        f"| {model} | {split} | {r['count']} | {r['shape']:.3f} | {r['colour']:.3f} | "
        f"{r['position']:.3f} | **{r['all']:.3f}** |"
        for model, splits in metrics["adherence"].items()
        for split, r in splits.items()
    )
    t, lora, s = metrics["training"], metrics["lora"], metrics["sampling"]
    return f"""# A LoRA on the shapes model's held-out combinations

Rank {lora["rank"]} (alpha {lora["alpha"]}) on {", ".join(lora["unet_targets"])}; trained
{t["steps"]} steps (this call: {t["trained"]} in {t["seconds"]:.0f} s), batch {t["batch_size"]},
learning rate {t["learning_rate"]}, on {"; ".join(metrics["held_out"])} alone; file
{lora["file_bytes"]:,} bytes. {metrics["samples_per_prompt"]} images per prompt, sampler
`{s["sampler"]}`, {s["steps"]} steps, guidance {s["guidance"]}.

| model | combinations | images | shape | colour | position | all correct |
|---|---|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    main()
