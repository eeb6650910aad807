"""Files and folders written whole or not at all: written under a temporary name beside their
destination and renamed onto it, the temporary removed if anything fails. What is written gets
the permissions of any file or folder a user makes (0666 or 0777 masked by the umask), whatever
the writer created the temporary with (``tempfile.mkstemp`` makes files 0600)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path, directory: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` (a folder, created, when ``directory``) to write into;
    renamed onto ``path`` when the block ends, removed when it raises. The temporary keeps the
    destination's suffix (``np.savez`` and image writers pick the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    if directory:
        partial.mkdir()
    try:
        yield partial
        os.chmod(partial, (0o777 if partial.is_dir() else 0o666) & ~_umask())
        if directory and path.is_dir():
            shutil.rmtree(path)
        os.replace(partial, path)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read
    it back would race with files other threads create meanwhile)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` whole, flushed to disk, or not at all."""
    payload = data.encode() if isinstance(data, str) else data
    with atomic_path(path) as partial, open(partial, "wb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
