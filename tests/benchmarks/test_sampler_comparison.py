"""The sampler comparison: specs, NFE budgets, exact coupling, diffusers twins, reports and
errors."""

import csv
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.benchmarks import on_mixtures, report, runs
from jaxdiff.benchmarks.mixtures import as_dtype
from jaxdiff.diffusion.processes import VPDiscrete
from jaxdiff.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from configs.compare_samplers_gmm import DIFFUSERS

PROCESS = VPDiscrete()
EULER_SD = "EulerDiscreteScheduler:timestep_spacing=leading,steps_offset=1"
EULER_TWIN = "discrete:spacing=leading,steps_offset=1,convention=euler"


def small_config(**changes) -> ml_collections.ConfigDict:
    config = {
        "problem": "mixtures",
        "process": {"name": "vp_discrete"},
        "mixtures": {"m": {"dim": 2, "components": 3, "component_std": 0.3, "seed": 0}},
        "num_samples": 64,
        "seeds": 2,
        "reference_rtol": 1e-9,
        "projections": 16,
        "nfe": (4, 8),
        "samplers": ("euler", "heun", "euler_ancestral:noise=brownian", "dpm_adaptive"),
        "schedules": ("karras",),
        "adaptive_rtols": (1e-2, 1e-3),
        "diffusers": ((EULER_SD, "euler", EULER_TWIN),),
    }
    return ml_collections.ConfigDict(config | changes)


def test_parse_spec():
    assert runs.parse_spec("unipc:order=3, variant=bh1,corrector=False") == (
        "unipc",
        {"order": 3, "variant": "bh1", "corrector": False},
    )
    assert runs.parse_spec(" euler ") == ("euler", {})
    with pytest.raises(UserError, match="option 'order' is not key=value"):
        runs.parse_spec("lms:order")


@pytest.mark.parametrize(
    ("name", "nfe", "steps"),
    [("euler", 7, 7), ("heun", 9, 5), ("heun", 10, 5), ("plms", 10, 9), ("pndm", 20, 11)],
)
def test_steps_fit_the_counted_budget(name, nfe, steps):
    """Heun makes 2n - 1 calls into sigma = 0, PLMS n + 1, PNDM n + 9 (its Runge-Kutta start)."""
    assert runs.steps_within(name, {}, "karras", nfe, PROCESS) == steps
    used = runs.calls(name, {}, runs.schedule_sigmas("karras", steps, PROCESS))
    assert used <= nfe < runs.calls(name, {}, runs.schedule_sigmas("karras", steps + 1, PROCESS))


def test_counted_nfe_and_exact_coupling():
    """Runs start from the reference's own points, so more Heun steps land nearer its endpoint;
    counted calls match 2n - 1."""
    problem = on_mixtures.make_problems(small_config(), PROCESS.sigma_max)[0]
    planned = runs.jaxdiff_runs("heun", "karras", PROCESS, (9, 99), ())
    problem.prepare({level for r in planned for level in (r.sigma_start, r.sigma_end)})
    bandwidth = on_mixtures.median_bandwidth(problem.mixture, 200)
    coarse, fine = (on_mixtures.evaluate(problem, r, 16, bandwidth) for r in planned)
    assert (coarse["nfe"], coarse["steps"], fine["nfe"], fine["steps"]) == (9, 5, 99, 50)
    assert fine["rmse"] < coarse["rmse"] / 10
    assert problem.reference_drift < 1e-6


def test_adaptive_runs_count_their_calls_and_meet_tighter_tolerances():
    problem = on_mixtures.make_problems(small_config(seeds=1), PROCESS.sigma_max)[0]
    planned = runs.jaxdiff_runs("dpm_adaptive", "karras", PROCESS, (), (1e-2, 1e-4))
    problem.prepare({level for r in planned for level in (r.sigma_start, r.sigma_end)})
    loose, tight = (on_mixtures.evaluate(problem, r, 16, 1.0) for r in planned)
    assert 3 < loose["nfe"] < tight["nfe"]
    # Both end with the same denoising step from sigma_min = 0.029 to 0, which bounds the gain.
    assert tight["rmse"] < loose["rmse"]


def test_runs_start_and_end_on_the_reference_flow():
    """Levels below the top lie on the reference flow: fine Heun steps from the flow at 3.0
    reach the flow at 0.5 and at 0."""
    problem = on_mixtures.make_problems(small_config(seeds=1), PROCESS.sigma_max)[0]
    problem.prepare({3.0, 0.5})
    heun = samplers.get("heun")
    with jax.enable_x64(True):
        denoise = as_dtype(problem.mixture, jnp.float64).denoise
        start = jnp.asarray(problem.at(0, 3.0))
        to_half = heun(denoise, start, jnp.asarray(np.geomspace(3.0, 0.5, 100)))
        to_zero = heun(denoise, start, jnp.asarray(np.append(np.geomspace(3.0, 1e-5, 400), 0.0)))
    np.testing.assert_allclose(np.asarray(to_half), problem.at(0, 0.5), atol=5e-4)
    np.testing.assert_allclose(np.asarray(to_zero), problem.at(0, 0.0), atol=1e-3)


@pytest.mark.parametrize(("scheduler", "sampler", "schedule"), DIFFUSERS, ids=lambda v: v[:24])
def test_every_diffusers_twin_reproduces_its_scheduler(scheduler, sampler, schedule):
    """The benchmark's twins: the jaxdiff sampler on the jaxdiff schedule gives diffusers'
    result from the same start, with the same number of model calls."""
    (twin,) = runs.jaxdiff_runs(sampler, schedule, PROCESS, (6,), ())
    (ref,) = runs.diffusers_runs(scheduler, (6,), twin.stochastic)
    top = max(PROCESS.sigma_max, ref.sigma_start)
    problem = on_mixtures.make_problems(small_config(seeds=1), top)[0]
    problem.prepare({ref.sigma_start, ref.sigma_end})
    start = problem.at(0, ref.sigma_start)
    (a, calls_a), (b, calls_b) = (r.execute(problem.mixture, start, 0) for r in (ref, twin))
    assert calls_a == calls_b <= 6
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_comparison_report(tmp_path):
    config = small_config(seeds=1)
    rows, floors = on_mixtures.compare_on_mixtures(config, PROCESS, progress=False)
    methods = {(r["backend"], r["method"], r["twin_of"]) for r in rows}
    assert ("diffusers", EULER_SD, "") in methods and ("jaxdiff", "euler", EULER_SD) in methods
    assert all(np.isfinite(r[m]) for r in rows for m in on_mixtures.METRICS)
    assert {r["stochastic"] for r in rows if r["method"].startswith("euler_ancestral")} == {True}
    paths = report.write_report(
        rows, report.gmm_notes(floors), config.nfe, report.GMM_METRICS, tmp_path, "t"
    )
    with paths["csv"].open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    text = paths["markdown"].read_text()
    assert "| heun (karras) |" in text and "(rtol 0.001)" in text
    ratio_line = next(line for line in text.splitlines() if line.startswith(f"| {EULER_SD} |"))
    assert ratio_line.endswith("| 1.000 | 1.000 |"), ratio_line
    rmse_table = text.split("At NFE")[0]
    assert "euler_ancestral" not in rmse_table  # stochastic: distribution metrics only
    assert "| euler_ancestral:noise=brownian (karras) |" in text
    assert paths["plot"].stat().st_size > 10_000


def test_fitted_order():
    nfes = [5, 10, 20, 40]
    assert on_mixtures.fitted_order(nfes, [3.0 * n**-2.0 for n in nfes]) == pytest.approx(2.0)
    assert np.isnan(on_mixtures.fitted_order([5], [0.1]))


def test_bad_input_is_caught_when_planning():
    with pytest.raises(UserError, match=r"unknown sampler 'nope'; accepted: .*euler"):
        runs.jaxdiff_runs("nope", "karras", PROCESS, (5,), ())
    with pytest.raises(UserError, match=r"schedule='wavy' is not supported; accepted: karras"):
        runs.jaxdiff_runs("euler", "wavy", PROCESS, (5,), ())
    with pytest.raises(UserError, match="sampler 'euler' does not take option 'order'"):
        runs.jaxdiff_runs("euler:order=2", "karras", PROCESS, (5,), ())
    with pytest.raises(UserError, match=r"'unipc': order=2\.0 is not supported; accepted: 1, 2, 3"):
        runs.jaxdiff_runs("unipc:order=2.0", "karras", PROCESS, (5,), ())
    ends_above_zero = "discrete:steps_offset=1,final_sigma=sigma_min"
    with pytest.raises(UserError, match="NFE=1 is too small for sampler 'heun': one step makes 2"):
        runs.jaxdiff_runs("heun", ends_above_zero, PROCESS, (1,), ())
    with pytest.raises(UserError, match="unknown diffusers scheduler 'Nope'"):
        runs.diffusers_runs("Nope", (5,), False)
    mismatched = small_config(diffusers=((EULER_SD, "euler", "karras"),))
    with pytest.raises(UserError, match="jaxdiff twin 'euler' on 'karras' does not take the steps"):
        runs.plan_runs(mismatched, PROCESS)
