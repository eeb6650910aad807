"""UNet + EDM, UNet + flow matching and MMDiT + flow matching on the shapes task, each trained for
the same wall time on the demo's autoencoder: prompt adherence (every attribute right) and FID
in the autoencoder's latent space against the data, with each run's steps and seconds.

    python experiments/denoiser_comparison.py --demo runs/demo --minutes 5 --out runs/denoisers

The configs differ only in the objective and the denoiser (``configs/shapes_flow.py`` sets the
rectified-flow process and velocity network, ``configs/shapes_dit.py`` also the MMDiT in place of
the UNet). A probe of ``--probe-steps`` steps measures each run's training speed once compiled;
the run then takes the steps that fill ``--minutes`` (kept in ``OUT/RUN_timing.json``, so a
rerun resumes the same plan). FID uses the autoencoder's posterior means (8 x 8 x 4 = 256
features) of the generated images and of data images; the report also gives the same distance
between two sets of data images (the floor). Writes ``OUT/report.md`` and ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo_runs import train_or_exit  # noqa: E402

from jaxdiff.configuration import load_config  # noqa: E402
from jaxdiff.data.shapes import combinations  # noqa: E402
from jaxdiff.evaluation import prompt_adherence  # noqa: E402
from jaxdiff.evaluation.fid import feature_statistics, frechet_distance  # noqa: E402
from jaxdiff.train.tasks import generator, load_trained  # noqa: E402

RUNS = (
    ("UNet + EDM", "shapes_t2i"),
    ("UNet + flow", "shapes_flow"),
    ("MMDiT + flow", "shapes_dit"),
)
DATA_IMAGES = 2000  # data images for each FID reference set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="holds vae/")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per run")
    parser.add_argument("--probe-steps", type=int, default=30)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/denoisers"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vae = args.demo / "vae"
    train_or_exit(load_config(str(ROOT / "configs/shapes_vae.py")), vae)
    _, autoencoder = load_trained(vae)

    def latent_features(images: np.ndarray) -> np.ndarray:  # uint8 [N, S, S, 3] -> [N, 256]
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        return np.asarray(autoencoder.encode(x)[0]).reshape(len(images), -1)

    rows = {}
    for name, config_name in RUNS:
        overrides = [f"vae_workdir={vae}", "train.preview_every=0"]
        run = args.out / config_name
        timing_file = args.out / f"{config_name}_timing.json"
        if timing_file.is_file():  # planned before: resume it with its steps
            timing = json.loads(timing_file.read_text())
        else:
            speed = _steps_per_second(config_name, overrides, args.probe_steps, args.out)
            steps = max(1, round(args.minutes * 60 * speed))
            timing = {"steps": steps, "probe_steps_per_second": speed, "train_seconds": 0.0}
            timing_file.write_text(json.dumps(timing))
        config = load_config(
            str(ROOT / f"configs/{config_name}.py"), [*overrides, f"train.steps={timing['steps']}"]
        )
        started = time.perf_counter()
        train_or_exit(config, run)
        timing["train_seconds"] += time.perf_counter() - started
        timing_file.write_text(json.dumps(timing))
        task, model = load_trained(run)
        generate = generator(task, model)
        result = prompt_adherence.evaluate(
            generate, combinations(), args.samples_per_prompt, seed=1
        )
        data = task.data.batch(np.arange(2 * DATA_IMAGES))["image"]  # [-1, 1]
        data = ((np.asarray(data) + 1.0) * 127.5).round().astype(np.uint8)
        reference = feature_statistics(latent_features(data[:DATA_IMAGES]))
        rows[name] = {
            "config": f"configs/{config_name}.py",
            "steps": timing["steps"],
            "train_seconds": round(timing["train_seconds"], 1),
            "probe_steps_per_second": round(timing["probe_steps_per_second"], 3),
            "adherence": {k: result[k] for k in ("all", "shape", "colour", "position")},
            "latent_fid": frechet_distance(
                feature_statistics(latent_features(result["images"])), reference
            ),
            "latent_fid_floor": frechet_distance(
                feature_statistics(latent_features(data[DATA_IMAGES:][: len(result["images"])])),
                reference,
            ),
            "samples": result["count"],
            "sampling": dict(task.config.sample),
        }
        print(name, json.dumps(rows[name]), flush=True)
    (args.out / "metrics.json").write_text(json.dumps(rows, indent=2, default=list))
    (args.out / "report.md").write_text(_report(rows, args))


def _steps_per_second(config_name: str, overrides: list[str], steps: int, out: Path) -> float:
    """Training steps per second of a config once compiled: the trainer's rate over the second
    half of a probe run (logged once there, so no extra host syncs)."""
    probe = out / f"probe_{config_name}"
    shutil.rmtree(probe, ignore_errors=True)
    half = max(1, steps // 2)
    config = load_config(
        str(ROOT / f"configs/{config_name}.py"),
        [
            *overrides,
            f"train.steps={2 * half}",
            f"train.log_every={half}",
            f"train.checkpoint_every={2 * half}",
        ],
    )
    train_or_exit(config, probe)
    logged = [json.loads(line) for line in (probe / "metrics.jsonl").open()]
    shutil.rmtree(probe)
    return float(logged[-1]["steps_per_second"])


def _report(rows: dict, args: argparse.Namespace) -> str:
    lines = [
        f"# Denoisers on shapes at equal wall time ({args.minutes:g} minutes of training each)",
        "",
        "| run | steps | train s | adherence (all) | shape | colour | position | latent FID "
        "| FID floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        a = r["adherence"]
        lines.append(
            f"| {name} | {r['steps']} | {r['train_seconds']:.0f} | {a['all']:.3f} | "
            f"{a['shape']:.3f} | {a['colour']:.3f} | {a['position']:.3f} | "
            f"{r['latent_fid']:.3f} | {r['latent_fid_floor']:.3f} |"
        )
    first = next(iter(rows.values()))
    lines += [
        "",
        f"{first['samples']} samples each ({args.samples_per_prompt} per prompt, every "
        f"combination, the held-out ones included), sampler {first['sampling']['sampler']}, "
        f"{first['sampling']['steps']} steps, guidance {first['sampling']['guidance']}. Each run "
        "takes the steps that fill the budget at its compiled speed; train s is its whole "
        "training call, compilation included. The FID floor compares two sets of training "
        "images (the held-out combinations are in neither).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
