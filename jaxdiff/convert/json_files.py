"""Reading the JSON files of model folders with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxdiff.errors import UserError


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; a UserError if it is not valid JSON or not an object."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds a {type(value).__name__}; accepted: a JSON object")
    return value
