"""Libraries installed by a pip extra rather than with jaxdiff itself: the PyTorch references
(torch, diffusers), imported only by the function that uses them."""

from __future__ import annotations

import importlib
from types import ModuleType

from jaxdiff.errors import UserError, first_line

# The extra that installs the reference libraries (torch==2.13.0, diffusers) at pinned versions.
REFERENCE_EXTRA = "test"


def import_optional(module: str, purpose: str, extra: str = REFERENCE_EXTRA) -> ModuleType:
    """``module`` imported, or a one-line ``UserError`` saying that ``purpose`` needs it and
    naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UserError(
            f"{purpose} needs {module}, which cannot be imported ({first_line(error)}); "
            f"install it with pip install 'jaxdiff[{extra}]'"
        ) from error
