"""The runs of a sampler comparison: which sampler, on which steps, within which budget of
denoiser calls (NFE), and how each is executed on a Gaussian mixture.

A jaxdiff run is a sampler spec `name[:opt=value,...]` on a schedule spec; a diffusers run is a
scheduler spec `SchedulerClass[:opt=value,...]` with SD's beta schedule. For an NFE budget the
number of steps is the largest whose real denoiser calls fit in it, counted by running the
sampler once with a free denoiser (so Heun's single call into sigma = 0, PLMS's extra first call
and PNDM's Runge-Kutta warm-up are all counted as they happen). `dpm_adaptive` chooses its own
steps: it runs once per tolerance (`rtol = atol`) from the process's `sigma_max` to `sigma_min`
(then 0).
Specs are checked when the runs are planned, before any expensive work.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import samplers
from jaxdiff.benchmarks import diffusers_reference
from jaxdiff.benchmarks.mixtures import GaussianMixture, as_dtype, exact_denoise
from jaxdiff.diffusion.processes import Process
from jaxdiff.diffusion.schedules import make_sigmas
from jaxdiff.errors import UserError

ADAPTIVE = "dpm_adaptive"
# (x [B, d] float64 at the run's first sigma, seed) -> (x at its last sigma, counted NFE)
Execute = Callable[[GaussianMixture, np.ndarray, int], tuple[np.ndarray, int]]


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`"name:a=1,b=bh2"` -> `("name", {"a": 1, "b": "bh2"})`; values are Python literals or
    else strings."""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"spec {spec!r}: option {item!r} is not key=value")
        try:
            options[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = text.strip()
    if not name:
        raise UserError(f"spec {spec!r} has no name")
    return name, options


@dataclasses.dataclass(frozen=True)
class Run:
    """One method at one budget: `steps` steps from `sigma_start` to `sigma_end`."""

    backend: str  # "jaxdiff" | "diffusers"
    method: str  # the spec as given
    schedule: str
    nfe_target: int  # 0 for an adaptive run, which has a `tolerance` instead
    steps: int
    sigma_start: float
    sigma_end: float
    stochastic: bool
    execute: Execute
    tolerance: float | None = None
    twin_of: str = ""  # the diffusers spec this jaxdiff run reproduces, if any


class _CallCounter:
    """Counts real denoiser calls inside jit-compiled code with a host callback."""

    def __init__(self) -> None:
        self.count = 0

    def increment(self) -> None:
        self.count += 1

    def wrap(self, denoise: samplers.Denoise) -> samplers.Denoise:
        def counted(x: jax.Array, sigma: jax.Array) -> jax.Array:
            jax.debug.callback(self.increment)
            return denoise(x, sigma)

        return counted

    def read(self) -> int:
        """The count since the last read (after every pending callback has run)."""
        jax.effects_barrier()
        count, self.count = self.count, 0
        return count


_COUNTER = _CallCounter()


@functools.partial(jax.jit, static_argnames=("name", "options"))
def _sample(
    name: str,
    options: tuple[tuple[str, Any], ...],
    mixture: GaussianMixture,
    x: jax.Array,
    sigmas: jax.Array,
    key: jax.Array,
) -> jax.Array:
    """The sampler `name` on the mixture's exact denoiser, counting its calls."""
    denoise = _COUNTER.wrap(mixture.denoise)
    return samplers.get(name)(denoise, x, sigmas, key, **dict(options))


@functools.partial(jax.jit, static_argnames=("name", "options"))
def _free_run(name: str, options: tuple, sigmas: jax.Array) -> jax.Array:
    """The sampler `name` with a free denoiser `D(x, sigma) = x` on one 1-D point."""
    denoise = _COUNTER.wrap(lambda x, _: x)
    return samplers.get(name)(
        denoise, jnp.zeros((1, 1)), sigmas, jax.random.key(0), **dict(options)
    )


def calls(name: str, options: dict[str, Any], sigmas: np.ndarray) -> int:
    """Denoiser calls the sampler makes along `sigmas` (also checks its options and start)."""
    samplers.check_start(name, sigmas, options)
    _COUNTER.read()
    jax.block_until_ready(_free_run(name, tuple(sorted(options.items())), jnp.asarray(sigmas)))
    return _COUNTER.read()


def _jaxdiff_executor(name: str, options: dict[str, Any], sigmas: np.ndarray) -> Execute:
    frozen = tuple(sorted(options.items()))

    def execute(mixture: GaussianMixture, x: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        _COUNTER.read()
        with jax.enable_x64(True):
            key = jax.random.key(seed + 1_000_003)
            mix64 = as_dtype(mixture, jnp.float64)
            out = np.asarray(_sample(name, frozen, mix64, jnp.asarray(x), sigmas, key))
        return out, _COUNTER.read()

    return execute


def schedule_sigmas(spec: str, n: int, process: Process) -> np.ndarray:
    """`[n + 1]` float64 sigmas of the schedule spec `name[:opt=value,...]` for `process`."""
    name, options = parse_spec(spec)
    return np.asarray(make_sigmas(name, n, process, **options), np.float64)


def _fit_budget(nfe: int, evals: int, count: Callable[[int], int], what: str) -> int:
    """The largest number of steps whose counted calls (`count(n)`, increasing in n) fit in
    `nfe`, searched from the guess of `evals` calls per step."""
    if nfe < 1:
        raise UserError(f"NFE={nfe} must be >= 1")
    count = functools.cache(count)
    n = (nfe - 1) // evals + 1  # the guess: a last step into sigma = 0 makes one call
    while count(n) <= nfe and count(n + 1) <= nfe:
        n += 1
    while n > 1 and count(n) > nfe:
        n -= 1
    if count(n) > nfe:
        raise UserError(
            f"NFE={nfe} is too small for {what}: one step makes {count(n)} denoiser calls"
        )
    return n


def steps_within(
    name: str, options: dict[str, Any], schedule_spec: str, nfe: int, process: Process
) -> int:
    """The most steps of the sampler on the schedule whose denoiser calls fit in `nfe`."""

    def count(n: int) -> int:
        return calls(name, options, schedule_sigmas(schedule_spec, n, process))

    return _fit_budget(nfe, samplers.evals_per_step(name), count, f"sampler {name!r}")


def jaxdiff_runs(
    spec: str,
    schedule_spec: str,
    process: Process,
    nfes: Sequence[int],
    tolerances: Sequence[float],
) -> list[Run]:
    """The runs of one jaxdiff sampler: one per NFE budget on `schedule_spec`, or, for
    `dpm_adaptive`, one per tolerance (its `rtol` and `atol`) between the process's noise
    limits."""
    name, options = parse_spec(spec)
    stochastic = samplers.is_stochastic(name, options)
    if name == ADAPTIVE:
        sigmas = np.array([process.sigma_max, process.sigma_min, 0.0])
        runs = []
        for rtol in tolerances:
            opts = {"rtol": rtol, "atol": rtol} | options
            calls(name, opts, sigmas)  # checks the options now
            runs.append(
                Run(
                    "jaxdiff",
                    spec,
                    "adaptive",
                    0,
                    0,
                    sigmas[0],
                    0.0,
                    stochastic,
                    _jaxdiff_executor(name, opts, sigmas),
                    tolerance=rtol,
                )
            )
        return runs

    runs = []
    for nfe in nfes:
        n = steps_within(name, options, schedule_spec, nfe, process)
        sigmas = schedule_sigmas(schedule_spec, n, process)
        runs.append(
            Run(
                "jaxdiff",
                spec,
                schedule_spec,
                nfe,
                n,
                sigmas[0],
                sigmas[-1],
                stochastic,
                _jaxdiff_executor(name, options, sigmas),
            )
        )
    return runs


def _diffusers_executor(spec: str, steps: int) -> tuple[Execute, np.ndarray]:
    """The executor of a diffusers scheduler spec at `steps` steps, and its sigmas (the sigma of
    each model call's timestep, then the final sigma)."""
    name, options = parse_spec(spec)
    scheduler = diffusers_reference.make_scheduler(name, **options)
    scheduler.set_timesteps(steps)
    flow = diffusers_reference.is_flow(scheduler)
    if flow:
        sigmas = diffusers_reference.flow_call_sigmas(scheduler)
    else:
        final = diffusers_reference.final_sigma(scheduler)
        sigmas = diffusers_reference.scheduler_sigmas(scheduler, final_sigma=final)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters

    def execute(mixture: GaussianMixture, x: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
        torch = diffusers_reference.reference_library("torch")
        scheduler.set_timesteps(steps)  # resets the scheduler's step counter and history
        step_kwargs = {"generator": torch.Generator().manual_seed(seed)} if takes_generator else {}
        with jax.enable_x64(True):
            mix64 = as_dtype(mixture, jnp.float64)

            def numpy_denoise(z: np.ndarray, sigma: float) -> np.ndarray:
                return np.asarray(exact_denoise(mix64, jnp.asarray(z), jnp.asarray(sigma)))

            if flow:  # x_t = x / (1 + sigma); at sigma = inf x is already the unit noise
                x_t = x if np.isinf(sigmas[0]) else x / (1.0 + sigmas[0])
                out, calls = diffusers_reference.run_flow_scheduler(
                    scheduler, numpy_denoise, x_t, step_kwargs
                )
                return out * (1.0 + sigmas[-1]), len(calls)
            out, calls = diffusers_reference.run_scheduler(
                scheduler, numpy_denoise, x, sigmas[0], sigmas[-1], step_kwargs
            )
        return out, len(calls)

    return execute, sigmas


def diffusers_runs(spec: str, nfes: Sequence[int], stochastic: bool) -> list[Run]:
    """The runs of one diffusers scheduler spec, one per NFE budget (the model calls of a
    scheduler's loop are its timesteps)."""

    def count(n: int) -> int:
        return len(_diffusers_executor(spec, n)[1]) - 1

    name, _ = parse_spec(spec)
    evals = diffusers_reference.evals_per_step(name)
    runs = []
    for nfe in nfes:
        n = _fit_budget(nfe, evals, count, f"diffusers {name}")
        execute, sigmas = _diffusers_executor(spec, n)
        runs.append(
            Run("diffusers", spec, "diffusers", nfe, n, sigmas[0], sigmas[-1], stochastic, execute)
        )
    return runs


def _check_twin(ref: Run, twin: Run) -> None:
    same = ref.steps == twin.steps and np.allclose(
        [ref.sigma_start, ref.sigma_end], [twin.sigma_start, twin.sigma_end], rtol=1e-5, atol=1e-7
    )
    if not same:
        raise UserError(
            f"jaxdiff twin {twin.method!r} on {twin.schedule!r} does not take the steps of "
            f"{ref.method!r} at NFE {ref.nfe_target}: {twin.steps} steps from sigma "
            f"{twin.sigma_start:.6g} to {twin.sigma_end:.6g} against {ref.steps} from "
            f"{ref.sigma_start:.6g} to {ref.sigma_end:.6g}"
        )


def plan_runs(config: Any, process: Process) -> list[Run]:
    """Every run of a comparison config: each jaxdiff sampler spec on each schedule spec (an
    adaptive sampler once), and each diffusers scheduler beside its jaxdiff twin, the same
    algorithm on the same steps (checked)."""
    nfes, tolerances = tuple(config.nfe), tuple(config.adaptive_rtols)
    runs = []
    for spec in config.samplers:
        schedules = config.schedules[:1] if parse_spec(spec)[0] == ADAPTIVE else config.schedules
        for schedule in schedules:
            runs += jaxdiff_runs(spec, schedule, process, nfes, tolerances)
    for scheduler_spec, sampler_spec, schedule_spec in config.diffusers:
        twins = jaxdiff_runs(sampler_spec, schedule_spec, process, nfes, tolerances)
        refs = diffusers_runs(scheduler_spec, nfes, twins[0].stochastic)
        for ref, twin in zip(refs, twins, strict=True):
            _check_twin(ref, twin)
        runs += refs + [dataclasses.replace(t, twin_of=scheduler_spec) for t in twins]
    return runs
