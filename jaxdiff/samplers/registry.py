"""The sampler families: the one list of the modules whose samplers `get(name)` finds.

Each family is a module of sampler functions decorated with `@register("name")` (`base.py`),
which records them when the module is imported. Adding a family is one small module and one
entry in `FAMILIES`.
"""

from __future__ import annotations

from types import ModuleType

from jaxdiff.samplers import ancestral, dpm_solver, dpm_solver_sde, multistep, ode, unipc

FAMILIES: tuple[ModuleType, ...] = (ode, ancestral, dpm_solver, dpm_solver_sde, multistep, unipc)
