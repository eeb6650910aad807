"""Writing a folder all at once: it appears complete or not at all."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from jaxdiff.atomic_write import atomic_path
from jaxdiff.errors import UserError, require


def _require_new_or_empty(directory: Path) -> None:
    require(
        not directory.exists() or (directory.is_dir() and not any(directory.iterdir())),
        f"{directory} exists and is not empty; accepted: a new or empty folder",
    )


@contextlib.contextmanager
def atomic_folder(directory: Path) -> Iterator[Path]:
    """Yields a new temporary folder beside `directory`, renamed onto it when the block completes
    and removed if the block fails (`atomic_path`). Refuses a `directory` that exists and is not
    empty (before and after the block), so nothing is overwritten; a folder that cannot be made
    or renamed into place is a one-line `UserError`."""
    directory = directory.resolve()
    _require_new_or_empty(directory)
    in_block = False
    try:
        with atomic_path(directory, directory=True) as partial:
            in_block = True
            yield partial
            in_block = False
            # atomic_path replaces a folder: not one that was filled meanwhile
            _require_new_or_empty(directory)
    except OSError as error:
        if in_block:
            raise
        raise UserError(f"{directory} cannot be created: {error.strerror}") from None
