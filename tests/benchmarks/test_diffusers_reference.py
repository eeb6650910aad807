"""The benchmark without its PyTorch references: it imports, and comparing with diffusers says
which extra to install."""

import subprocess
import sys

import numpy as np
import pytest

from jaxdiff.benchmarks import diffusers_reference, runs
from jaxdiff.errors import UserError

EXTRA = r"install it with pip install 'jaxdiff\[test\]'$"


def test_the_benchmark_imports_without_torch_or_diffusers():
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['diffusers'] = None\n"
        "import jaxdiff.benchmarks.report\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_planning_a_diffusers_run_without_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(UserError, match=f"diffusers schedulers needs diffusers.*{EXTRA}"):
        runs.diffusers_runs("EulerDiscreteScheduler", (5,), False)


def test_running_a_scheduler_without_torch_names_the_extra(monkeypatch):
    scheduler = diffusers_reference.make_scheduler("EulerDiscreteScheduler")
    scheduler.set_timesteps(3)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match=f"diffusers schedulers needs torch.*{EXTRA}"):
        diffusers_reference.run_scheduler(scheduler, lambda x, _: x, np.zeros((1, 2)), 14.6, 0.0)
