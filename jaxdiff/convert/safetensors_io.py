"""The safetensors format, read and written with numpy alone (no torch, no safetensors package).

A file is an 8-byte little-endian header length N, N bytes of UTF-8 JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
offsets relative to the end of the header), then the raw little-endian tensor bytes.
https://github.com/huggingface/safetensors#format

The reader accepts the files the reference implementation accepts (``read_metadata`` and
``Metadata::validate`` in its ``tensor.rs``) and memory-maps them: opening a file reads only its
header, and a tensor's bytes are read when it is used. BENCHMARKS.md ("Reading safetensors files")
measures it against the reference's ``safe_open(framework="np")``.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import ml_dtypes
import numpy as np

from jaxdiff.atomic_write import atomic_path
from jaxdiff.errors import UserError

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "C64": np.dtype("<c8"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
"""The format's dtypes that numpy holds, in the order of the reference's ``Dtype`` enum (its
writer puts tensors in the reverse order, then by name)."""
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_WRITE_ORDER = {name: rank for rank, name in enumerate(reversed(DTYPES))}
_FLOATS = ("F16", "BF16", "F32", "F64")
_MAX_HEADER = 100_000_000  # the reference's MAX_HEADER_SIZE

Entry = tuple[str, np.dtype, tuple[int, ...], int, int]  # name, dtype, shape, begin, end


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file, as read-only arrays over a memory map of the file.

    The header is checked as the reference checks it: its length at most 100 MB and inside the
    file, UTF-8 JSON object, string metadata, known dtypes, each byte range as long as its shape
    and dtype need, the ranges tiling the data section from its first byte to its last with no
    gap or overlap. A file that fails is a one-line UserError naming it.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len, header, _ = _read_header(path, f, size)
        entries = _entries(path, header)
        _check_layout(path, entries, size - 8 - header_len)
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # stays open with the arrays
    data = memoryview(mapped)[8 + header_len :]
    return {
        name: np.frombuffer(
            data, dtype, count=(end - begin) // dtype.itemsize, offset=begin
        ).reshape(shape)
        for name, dtype, shape, begin, end in entries
    }


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file's header, checked like the tensors'
    header; ``{}`` when it has none."""
    path = Path(path)
    with open(path, "rb") as f:
        _, _, metadata = _read_header(path, f, path.stat().st_size)
    return metadata


def _read_header(path: Path, f: BinaryIO, size: int) -> tuple[int, dict, dict[str, str]]:
    """(header length, the header's tensor entries, its ``__metadata__``) of the open file ``f``
    of ``size`` bytes."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise UserError(f"{path} is not a safetensors file: {size} bytes, shorter than a header")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > min(_MAX_HEADER, size - 8):
        raise UserError(
            f"{path} is truncated or not a safetensors file: header of {header_len} bytes "
            f"in a {size}-byte file; accepted: at most {min(_MAX_HEADER, size - 8)}"
        )
    try:
        header = json.loads(f.read(header_len).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} has an unreadable safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise UserError(
            f"{path} has a safetensors header of {type(header).__name__}; accepted: a JSON object"
        )
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise UserError(
            f"{path} has safetensors metadata {metadata!r:.200}; accepted: an object of strings"
        )
    return header_len, header, metadata or {}


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0  # not bool, which JSON's true would give


def _entries(path: Path, header: dict) -> list[Entry]:
    """The header's tensors in the order of their byte ranges, each checked alone."""
    entries = []
    for name, info in header.items():
        valid = (
            isinstance(info, dict)
            and info.get("dtype") in DTYPES
            and isinstance(info.get("shape"), list)
            and all(_is_count(d) for d in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(_is_count(o) for o in info["data_offsets"])
            and info["data_offsets"][0] <= info["data_offsets"][1]
        )
        if not valid:
            raise UserError(
                f"{path}: header entry {name!r} is {info!r:.200}; accepted: {{dtype: one of "
                f"{', '.join(DTYPES)}, shape: [n, ...], data_offsets: [begin, end]}}"
            )
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise UserError(
                f"{path}: tensor {name!r} of shape {shape} and dtype {info['dtype']} takes "
                f"{end - begin} bytes; it needs {expected}"
            )
        entries.append((name, dtype, shape, begin, end))
    return sorted(entries, key=lambda entry: entry[3:])


def _check_layout(path: Path, entries: list[Entry], data_size: int) -> None:
    """The byte ranges of ``entries`` (sorted) tile ``[0, data_size)`` exactly."""
    covered = 0
    for name, _, _, begin, end in entries:
        if begin != covered:
            fault = "a gap" if begin > covered else "an overlap"
            raise UserError(
                f"{path} has {fault} in its data: tensor {name!r} starts at byte {begin}, the "
                f"tensors before it end at byte {covered}; accepted: byte ranges that follow "
                "each other"
            )
        if end > data_size:
            raise UserError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} of the data, "
                f"the file has {data_size} bytes of data"
            )
        covered = end
    if covered != data_size:
        raise UserError(
            f"{path} has {data_size - covered} bytes after its last tensor, which ends at byte "
            f"{covered} of {data_size}; accepted: tensors that cover the data exactly"
        )


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    dtype: np.dtype | None = None,
) -> None:
    """Writes ``tensors`` (floating ones cast to ``dtype`` if given) as one safetensors file,
    byte-identical to the reference writer's (its tensor order: by dtype, then name; its 8-byte
    header padding); little-endian hosts.

    Tensors are made contiguous and cast one at a time while writing, so a model is never copied
    whole. The file is written under a temporary name, synced and renamed: a failure never
    leaves a partial file at ``path``.
    """
    arrays = {name: np.asarray(value) for name, value in tensors.items()}  # views, no copies
    dtypes = {
        name: np.dtype(dtype) if dtype and _NAMES.get(value.dtype) in _FLOATS else value.dtype
        for name, value in arrays.items()
    }
    for name, value_dtype in dtypes.items():
        if value_dtype not in _NAMES:
            raise UserError(
                f"tensor {name!r} has dtype {value_dtype}; accepted: "
                f"{', '.join(str(d) for d in _NAMES)}"
            )
    if "__metadata__" in arrays:
        raise UserError("a tensor is named '__metadata__'; accepted: any other name")
    if metadata and not all(isinstance(v, str) for v in metadata.values()):
        raise UserError(f"safetensors metadata {dict(metadata)!r:.200}; accepted: strings only")
    order = sorted(arrays, key=lambda n: (_WRITE_ORDER[_NAMES[dtypes[n]]], n))
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in order:
        nbytes = arrays[name].size * dtypes[name].itemsize
        header[name] = {
            "dtype": _NAMES[dtypes[name]],
            "shape": list(arrays[name].shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_path(path) as partial, open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name in order:
            value = np.ascontiguousarray(arrays[name], dtypes[name])
            f.write(value.reshape(-1).view(np.uint8).data)
        f.flush()
        os.fsync(f.fileno())
