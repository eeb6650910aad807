"""The sampler registry: names, lookup errors, option checking, sigma validation."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import samplers
from jaxdiff.errors import UserError
from jaxdiff.samplers import base, check_sigmas, ode


def test_names_and_get():
    assert {"euler", "heun"} <= set(samplers.names())
    assert samplers.names() == sorted(samplers.names())
    assert samplers.get("euler") is ode.euler
    assert samplers.get("euler").__name__ == "euler"


def test_the_listed_families_register_every_sampler():
    families = {module.__name__ for module in samplers.FAMILIES}
    assert {samplers.get(name).__module__ for name in samplers.names()} == families


def test_unknown_sampler_lists_names():
    with pytest.raises(UserError, match=r"unknown sampler 'dpmpp_9m'; accepted: .*euler, .*heun"):
        samplers.get("dpmpp_9m")


def test_register_rejects_options_the_sampler_does_not_take(monkeypatch):
    # A private copy of the registry, so the test sampler is gone after the test.
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @samplers.register("test_only_identity")
    def identity(denoise, x, sigmas, key=None):
        """Returns x unchanged."""
        return x

    assert "test_only_identity" in samplers.names()
    x = jnp.ones((2, 3), jnp.bfloat16)
    out = samplers.get("test_only_identity")(None, x, jnp.array([1.0, 0.0]))
    assert out.dtype == jnp.float32, "the state is at least float32"
    with pytest.raises(UserError, match="'test_only_identity' does not take option 's_churn'; it"):
        identity(None, x, jnp.array([1.0, 0.0]), s_churn=1.0)
    with pytest.raises(ValueError, match="registered twice"):
        samplers.register("test_only_identity")(identity)


def test_test_sampler_is_not_left_registered():
    assert "test_only_identity" not in samplers.names()


@pytest.mark.parametrize(
    ("sigmas", "message"),
    [
        (np.array([[2.0, 1.0]]), "1-D with at least 2 entries; got shape \\(1, 2\\)"),
        (np.array([2.0]), "at least 2 entries"),
        (np.array([2.0, np.nan, 0.0]), "finite and non-negative"),
        (np.array([2.0, -1.0]), "finite and non-negative"),
        (np.array([1.0, 2.0, 0.0]), "strictly descending; got sigmas\\[1\\]=2.0 after sigmas"),
        (np.array([2.0, 0.5, 0.5, 0.0]), "got sigmas\\[2\\]=0.5 after sigmas\\[1\\]=0.5"),
        (np.array([2.0, 0.0, 0.0]), "got sigmas\\[2\\]=0.0 after"),
    ],
)
def test_check_sigmas_errors(sigmas, message):
    with pytest.raises(UserError, match=message):
        check_sigmas(sigmas)


def test_check_sigmas_accepts_schedules_ending_above_zero():
    check_sigmas(jnp.array([10.0, 1.0, 0.1]))
    check_sigmas([3.0, 0.0])


def test_stochastic_samplers_are_told_apart_by_their_noise_and_eta():
    assert not samplers.is_stochastic("euler", {})
    assert not samplers.is_stochastic("ddim", {})
    assert samplers.is_stochastic("ddim", {"eta": 0.5})
    assert samplers.is_stochastic("euler_ancestral", {})
    assert not samplers.is_stochastic("dpmpp_2m_sde", {"eta": 0.0})
    assert samplers.is_stochastic("ddpm", {})
    assert samplers.option_defaults("unipc") == {
        "order": 2,
        "variant": "bh2",
        "corrector": True,
        "lower_order_final": True,
    }


def test_every_sampler_registers_its_calls_per_step():
    two_stage = {"heun", "flow_heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde"}
    assert {n for n in samplers.names() if samplers.evals_per_step(n) == 2} == two_stage
    assert (samplers.evals_per_step("dpm_adaptive"), samplers.evals_per_step("pndm")) == (3, 4)
