"""Writing a folder all at once: it appears complete or not at all."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from jaxdiff.errors import UserError


@contextlib.contextmanager
def atomic_folder(directory: Path) -> Iterator[Path]:
    """Yields a new temporary folder beside `directory`, renamed onto it when the block completes
    and removed if the block fails. Refuses a `directory` that exists and is not empty, so nothing
    is overwritten or left half-written."""
    directory = directory.resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise UserError(f"{directory} exists and is not empty; accepted: a new or empty folder")
    partial = directory.parent / f".{directory.name}.{secrets.token_hex(4)}.partial"
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
    except OSError as error:
        raise UserError(f"{directory} cannot be created: {error.strerror}") from None
    try:
        yield partial
        try:
            if directory.exists():
                directory.rmdir()
            partial.replace(directory)
        except OSError as error:
            raise UserError(
                f"{directory} cannot be written (it changed meanwhile?): {error.strerror}"
            ) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
