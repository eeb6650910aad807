"""The safetensors format, read and written with numpy alone (no torch).

A file is an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, offsets
relative to the end of the header), then the raw little-endian tensor bytes.
https://github.com/huggingface/safetensors#format
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxdiff.errors import UserError

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_WRITE_ORDER = ("I64", "F64", "F32", "I32", "BF16", "F16", "I16", "I8", "U8", "BOOL")
"""The reference writer's tensor order: its dtype enum, descending."""
_MAX_HEADER = 100_000_000


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file, as read-only arrays over a memory map of the file.

    Raises a one-line UserError for a file that is truncated or whose header is not valid.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(
                f"{path} is not a safetensors file: {size} bytes, shorter than a header"
            )
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(_MAX_HEADER, size - 8):
            raise UserError(
                f"{path} is truncated or not a safetensors file: header of {header_len} bytes "
                f"in a {size}-byte file"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{path} has an unreadable safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise UserError(
            f"{path} has a safetensors header of {type(header).__name__}; accepted: a JSON object"
        )
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        dtype, shape, (begin, end) = _entry(path, name, info)
        if data_start + end > size:
            raise UserError(
                f"{path} is truncated: tensor {name!r} ends at byte {data_start + end}, "
                f"the file has {size}"
            )
        tensors[name] = data[data_start + begin : data_start + end].view(dtype).reshape(shape)
    return tensors


def _is_float(dtype: np.dtype) -> bool:
    return _NAMES.get(dtype, "") in ("F64", "F32", "F16", "BF16")


def _entry(path: Path, name: str, info: object) -> tuple[np.dtype, tuple[int, ...], list[int]]:
    """(dtype, shape, [begin, end]) of one header entry, checked."""
    valid = (
        isinstance(info, dict)
        and info.get("dtype") in DTYPES
        and isinstance(info.get("shape"), list)
        and all(isinstance(d, int) and d >= 0 for d in info["shape"])
        and isinstance(info.get("data_offsets"), list)
        and len(info["data_offsets"]) == 2
        and all(isinstance(o, int) for o in info["data_offsets"])
        and 0 <= info["data_offsets"][0] <= info["data_offsets"][1]
    )
    if not valid:
        raise UserError(
            f"{path}: header entry {name!r} is {info!r:.200}; accepted: {{dtype: one of "
            f"{', '.join(DTYPES)}, shape: [n, ...], data_offsets: [begin, end]}}"
        )
    dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
    begin, end = info["data_offsets"]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected:
        raise UserError(
            f"{path}: tensor {name!r} of shape {shape} and dtype {info['dtype']} takes "
            f"{end - begin} bytes; it needs {expected}"
        )
    return dtype, shape, [begin, end]


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    dtype: np.dtype | None = None,
) -> None:
    """Writes ``tensors`` (floating ones cast to ``dtype`` if given) as one safetensors file, in
    the reference writer's order (by dtype, then name) with its 8-byte header padding;
    little-endian hosts.

    Tensors are made contiguous and cast one at a time while writing, so a model is never copied
    whole. The file is written under a temporary name, synced and renamed: a crash never leaves a
    partial file at ``path``.
    """
    path = Path(path)
    arrays = {name: np.asarray(value) for name, value in tensors.items()}  # views, no copies
    dtypes = {
        name: np.dtype(dtype) if dtype and _is_float(value.dtype) else value.dtype
        for name, value in arrays.items()
    }
    for name, value_dtype in dtypes.items():
        if value_dtype not in _NAMES:
            raise UserError(
                f"tensor {name!r} has dtype {value_dtype}; accepted: "
                f"{', '.join(str(d) for d in _NAMES)}"
            )
    order = sorted(arrays, key=lambda n: (_WRITE_ORDER.index(_NAMES[dtypes[n]]), n))
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
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)))
            f.write(encoded)
            for name in order:
                value = np.ascontiguousarray(arrays[name], dtypes[name])
                f.write(value.reshape(-1).view(np.uint8).data)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
