"""Compare samplers on a trained jaxdiff text-to-image model (a workdir of the shapes demo).

Every sampler starts from the same noise per image (from the pipeline's key of image i), so its
coupled error is measured against a high-NFE reference run from that noise: the RMSE between final
latents. Each run's images are also scored for shapes prompt adherence (the attributes read back
from the pixels). The steps of a run are the most whose denoiser calls fit in its NFE budget,
counted as in `runs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxdiff import images, samplers
from jaxdiff.benchmarks.runs import (
    ADAPTIVE,
    calls,
    parse_spec,
    schedule_sigmas,
    steps_within,
)
from jaxdiff.data.shapes import COLOURS, POSITIONS, SHAPES, combinations, prompt
from jaxdiff.errors import UserError
from jaxdiff.evaluation.prompt_adherence import scores
from jaxdiff.evaluation.shape_attributes import read_attributes
from jaxdiff.train.tasks import load_image_task, load_model

ADHERENCE = {"adherence": "adherence (all)", "adherence_shape": "shape"}


def _targets(count: int) -> tuple[list[str], np.ndarray]:
    """`count` (shape, colour, position) combinations spread evenly over all of them, with their
    canonical prompts and attribute indices [count, 3]."""
    every = combinations()
    if not 1 <= count <= len(every):
        raise UserError(f"prompts={count} must be in [1, {len(every)}]")
    combos = [every[i] for i in np.linspace(0, len(every) - 1, count).round().astype(int)]
    targets = np.array(
        [(SHAPES.index(s), COLOURS.index(c), POSITIONS.index(p)) for s, c, p in combos], np.int32
    )
    return [prompt(*c) for c in combos], targets


def compare_on_model(config: Any, workdir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Rows (as `on_mixtures.evaluate`) for each sampler spec x schedule spec x NFE on the
    model in `workdir`; `rmse` is the coupled latent error to `config.reference` run for
    `config.reference_steps` steps on the same schedule from the same noise."""
    from tqdm import tqdm

    task = load_image_task(workdir)
    process = task.diffusion.process
    prompts, targets = _targets(config.prompts)
    plan = []  # (spec, schedule spec, NFE, steps), checked before any sampling
    for spec in config.samplers:
        name, options = parse_spec(spec)
        if name == ADAPTIVE:
            raise UserError(f"{ADAPTIVE!r} picks its own steps; compare it on mixtures")
        for schedule in config.schedules:
            for nfe in config.nfe:
                plan.append(
                    (spec, schedule, nfe, steps_within(name, options, schedule, nfe, process))
                )
    pipeline = task.pipeline(load_model(task, workdir))

    def latents(spec: str, schedule: str, steps: int) -> np.ndarray:
        """Final latents `[P, h, w, c]` of the sampler spec on the schedule spec."""
        name, options = parse_spec(spec)
        schedule_name, schedule_options = parse_spec(schedule)
        return np.asarray(
            pipeline(
                prompts,
                num_inference_steps=steps,
                guidance_scale=config.guidance,
                sampler=name,
                sampler_options=options,
                sigma_schedule=schedule_name,
                sigma_schedule_options=schedule_options,
                seed=config.seed,
                output_type="latent",
            )
        )

    references = {s: latents(config.reference, s, config.reference_steps) for s in config.schedules}
    rows = []
    for spec, schedule, nfe, steps in tqdm(plan, disable=not progress, unit="run"):
        name, options = parse_spec(spec)
        out = latents(spec, schedule, steps)
        pictures = images.to_uint8(pipeline.decode(out), (0.0, 1.0))  # [P, S, S, 3]
        adherence = scores(read_attributes(pictures) == targets)
        rows.append(
            {
                "problem": f"model {workdir.name}",
                "backend": "jaxdiff",
                "method": spec,
                "schedule": schedule,
                "twin_of": "",
                "stochastic": samplers.is_stochastic(name, options),
                "tolerance": "",
                "nfe_target": nfe,
                "nfe": calls(name, options, schedule_sigmas(schedule, steps, process)),
                "steps": steps,
                "rmse": float(np.sqrt(np.mean((out - references[schedule]) ** 2))),
                "adherence": adherence["all"],
                "adherence_shape": adherence["shape"],
            }
        )
    return rows
