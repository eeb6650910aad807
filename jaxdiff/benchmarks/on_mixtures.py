"""Compare samplers exactly on Gaussian-mixture data, with no trained model in the way.

For each mixture and seed, `num_samples` initial points are drawn exactly from the noised mixture
at the process's `sigma_max` and carried by the float64 reference solution of the PF-ODE
(`mixtures.reference_solution`, checked stable when its tolerance is halved) through every noise
level a run starts or ends at, down to 0. So every run, whatever its schedule's first and last
sigma, starts from exact samples coupled to the same noise, and its coupled RMSE to the reference
where it ends is its discretization error alone. Distribution metrics compare against fresh exact
samples noised to the run's last sigma, with the noise floor of two exact sets printed beside them.
A run may start at sigma = inf (a flow's t = 1, `jaxdiff.samplers.base`): its exact start is the
unit noise, carried by the reference solved in flow time. Beside the runs, `straightness` gives
how much the exact trajectories from that noise bend in flow and VP coordinates.

The runs (`runs`) are jaxdiff samplers on each schedule and diffusers schedulers beside
their jaxdiff twins, at each budget of function evaluations (NFE); every NFE reported is counted
from real denoiser calls. Everything runs in float64. Medians over seeds. A stochastic sampler's
coupled RMSE measures its distance from the ODE solution, not a discretization error: only its
distribution metrics compare it with the others.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.benchmarks import metrics
from jaxdiff.benchmarks.mixtures import (
    GaussianMixture,
    as_dtype,
    make_mixture,
    reference_solution,
    straightness,
)
from jaxdiff.benchmarks.runs import Run, plan_runs
from jaxdiff.diffusion.processes import Process

METRICS = ("rmse", "sw2", "mmd", "mode_tv")


@dataclasses.dataclass
class MixtureProblem:
    """A mixture, exact starting points per seed and the reference flow through them."""

    name: str
    mixture: GaussianMixture
    sigma_max: float  # where the exact noise is drawn: at or above every run's first sigma
    num_samples: int
    seeds: int
    reference_rtol: float

    def __post_init__(self) -> None:
        self.flow: dict[tuple[int, float], np.ndarray] = {}
        self.reference_drift = 0.0

    def _solve(self, x: np.ndarray, start: float, end: float, rtol: float) -> np.ndarray:
        return reference_solution(self.mixture, x, start, end, rtol, rtol)[0]

    def prepare(self, levels: set[float]) -> None:
        """Carry each seed's exact noise at sigma_max along the reference PF-ODE solution through
        every level (the first and last sigmas of the runs) down to 0, and measure how much the
        endpoint moves when the tolerance is halved."""
        below = sorted((s for s in levels if 0.0 < s < self.sigma_max), reverse=True)
        for seed in range(self.seeds):
            with jax.enable_x64(True):
                x = np.asarray(
                    self.mixture.sample_noised(
                        jax.random.key(seed), self.num_samples, self.sigma_max, jnp.float64
                    )
                )
            sigma = self.sigma_max
            self.flow[seed, sigma] = x
            for level in [*below, 0.0]:
                x = self._solve(x, sigma, level, self.reference_rtol)
                self.flow[seed, level], sigma = x, level
        top = self.flow[0, self.sigma_max]
        direct = self._solve(top, self.sigma_max, 0.0, self.reference_rtol)
        halved = self._solve(top, self.sigma_max, 0.0, self.reference_rtol / 2)
        self.reference_drift = float(
            max(np.abs(halved - direct).max(), np.abs(direct - self.flow[0, 0.0]).max())
        )

    def noise(self, seed: int = 0) -> np.ndarray:
        """The unit noise of `seed`'s samples, the noise the exact samples at sigma_max are
        drawn with (their state at sigma = inf). [num_samples, d]"""
        with jax.enable_x64(True):
            eps = self.mixture.sample_noised(
                jax.random.key(seed), self.num_samples, math.inf, jnp.float64
            )
        return np.asarray(eps)

    def at(self, seed: int, sigma: float) -> np.ndarray:
        """The reference solution of `seed` at a prepared level (or sigma_max)."""
        return self.flow[seed, float(sigma)]


def _metrics(
    problem: MixtureProblem,
    out: np.ndarray,
    seed: int,
    sigma_end: float,
    projections: int,
    bandwidth: float,
) -> dict[str, float]:
    """Metrics of a run's output at `sigma_end`: coupled RMSE to the reference there, and
    distances to fresh exact samples of the mixture noised to `sigma_end`."""
    with jax.enable_x64(True):
        mix64 = as_dtype(problem.mixture, jnp.float64)
        exact = mix64.sample_noised(
            jax.random.key(10_000 + seed), out.shape[0], sigma_end, jnp.float64
        )
        x = jnp.asarray(out)
        key = jax.random.key(20_000 + seed)
        return {
            "rmse": float(metrics.coupled_rmse(x, problem.at(seed, sigma_end))),
            "sw2": float(metrics.sliced_wasserstein(key, x, exact, projections)),
            "mmd": float(metrics.mmd(x, exact, bandwidth)),
            "mode_tv": float(metrics.mode_weight_tv(mix64, x, sigma_end)),
        }


def noise_floor(problem: MixtureProblem, projections: int, bandwidth: float) -> dict[str, float]:
    """The distribution metrics of exact samples (the reference endpoints), median over seeds."""
    rows = [
        _metrics(problem, problem.at(s, 0.0), s, 0.0, projections, bandwidth)
        for s in range(problem.seeds)
    ]
    return {m: float(np.median([r[m] for r in rows])) for m in METRICS}


def evaluate(
    problem: MixtureProblem, run: Run, projections: int, bandwidth: float
) -> dict[str, Any]:
    """Run on every seed; medians of the metrics, the counted NFE and the number of steps."""
    rows, nfes = [], []
    for seed in range(problem.seeds):
        out, nfe = run.execute(problem.mixture, problem.at(seed, run.sigma_start), seed)
        rows.append(_metrics(problem, out, seed, run.sigma_end, projections, bandwidth))
        nfes.append(nfe)
    result = {
        "problem": problem.name,
        "backend": run.backend,
        "method": run.method,
        "schedule": run.schedule,
        "twin_of": run.twin_of,
        "stochastic": run.stochastic,
        "tolerance": "" if run.tolerance is None else run.tolerance,
        "nfe_target": run.nfe_target,
        "nfe": int(np.median(nfes)),
        "steps": run.steps,
    }
    return result | {m: float(np.median([r[m] for r in rows])) for m in METRICS}


def make_problems(config: Any, sigma_max: float) -> list[MixtureProblem]:
    """One problem per entry of `config.mixtures` (name -> `make_mixture` arguments)."""
    return [
        MixtureProblem(
            name=name,
            mixture=make_mixture(**dict(options)),
            sigma_max=sigma_max,
            num_samples=config.num_samples,
            seeds=config.seeds,
            reference_rtol=config.reference_rtol,
        )
        for name, options in config.mixtures.items()
    ]


def median_bandwidth(mixture: GaussianMixture, n: int = 1000) -> float:
    """Median pairwise distance of exact samples: the MMD kernel bandwidth."""
    with jax.enable_x64(True):
        x, _ = as_dtype(mixture, jnp.float64).sample(jax.random.key(123), n, jnp.float64)
        d = jnp.sqrt(jnp.sum((x[:, None] - x[None]) ** 2, -1))
        return float(jnp.median(d[jnp.triu_indices(n, 1)]))


def fitted_order(nfes: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of -log(error) against log(NFE) (nan without 2 distinct NFEs)."""
    pts = [(n, e) for n, e in zip(nfes, errors, strict=True) if n > 0 and e > 0]
    if len({n for n, _ in pts}) < 2:
        return math.nan
    n, e = np.log(np.array(pts)).T
    return float(-np.polyfit(n, e, 1)[0])


def compare_on_mixtures(
    config: Any, process: Process, progress: bool = True
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Evaluate every planned run on every mixture. Returns the result rows and, per mixture, the
    noise floors of the distribution metrics and the reference's tolerance drift."""
    from tqdm import tqdm

    runs = plan_runs(config, process)
    top = max(process.sigma_max, *(run.sigma_start for run in runs))
    problems = make_problems(config, top)
    rows, floors = [], {}
    with tqdm(total=len(runs) * len(problems), disable=not progress, unit="run") as bar:
        for problem in problems:
            bar.set_description(f"{problem.name}: reference ODE")
            problem.prepare({level for run in runs for level in (run.sigma_start, run.sigma_end)})
            bandwidth = median_bandwidth(problem.mixture)
            floors[problem.name] = (
                noise_floor(problem, config.projections, bandwidth)
                | {"reference_drift": problem.reference_drift}
                | {
                    f"bend_{k}": v
                    for k, v in straightness(problem.mixture, problem.noise()).items()
                }
            )
            for run in runs:
                bar.set_description(f"{problem.name}: {run.method}")
                rows.append(evaluate(problem, run, config.projections, bandwidth))
                bar.update()
    return rows, floors
