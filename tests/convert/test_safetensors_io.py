"""The numpy safetensors reader / writer against the reference implementation (the safetensors
package): the same bytes written, the same files accepted and refused."""

import json
import os
import re
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from jaxdiff.convert.safetensors_io import DTYPES, read_safetensors, write_safetensors
from jaxdiff.errors import UserError

TENSORS = {
    "b.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a.half": np.linspace(-1, 1, 5).astype(np.float16),
    "brain": np.linspace(-3, 3, 8).astype(ml_dtypes.bfloat16).reshape(2, 4),
    "flag": np.array(True),
    "ids": np.arange(4, dtype=np.int64),
    "empty": np.zeros((0, 3), np.float32),
}


def _assert_same(read, expected) -> None:
    assert sorted(read) == sorted(expected)
    for name, value in expected.items():
        assert (read[name].dtype, read[name].shape) == (value.dtype, value.shape), name
        np.testing.assert_array_equal(read[name], value)


def test_files_are_identical_to_the_reference_writer(tmp_path):
    write_safetensors(tmp_path / "ours.safetensors", TENSORS, {"format": "pt"})
    save_file(TENSORS, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (
        tmp_path / "reference.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("name", DTYPES)
def test_every_dtype_is_written_as_the_reference_writes_it(name, tmp_path):
    value = np.arange(-3, 3).astype(DTYPES[name]).reshape(2, 3)
    write_safetensors(tmp_path / "ours.safetensors", {"w": value, "b": value[0]})
    save_file({"w": value, "b": value[0]}, tmp_path / "reference.safetensors")
    assert (tmp_path / "ours.safetensors").read_bytes() == (
        tmp_path / "reference.safetensors"
    ).read_bytes()
    read = read_safetensors(tmp_path / "reference.safetensors")
    assert json.loads(_header(tmp_path / "ours.safetensors"))["w"]["dtype"] == name
    _assert_same(read, {"w": value, "b": value[0]})


def test_reads_what_the_reference_writes(tmp_path):
    save_file(TENSORS, tmp_path / "reference.safetensors")
    read = read_safetensors(tmp_path / "reference.safetensors")
    _assert_same(read, TENSORS)
    assert not any(value.flags.writeable for value in read.values())  # views of the file


def test_the_reference_reads_what_jaxdiff_writes(tmp_path):
    write_safetensors(tmp_path / "ours.safetensors", TENSORS, {"format": "pt", "note": "é"})
    _assert_same(load_file(tmp_path / "ours.safetensors"), TENSORS)
    with safe_open(tmp_path / "ours.safetensors", framework="np") as f:
        assert f.metadata() == {"format": "pt", "note": "é"}
        assert f.get_tensor("brain").dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_torch_tensors_round_trip_bit_exactly(dtype, tmp_path):
    import torch
    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    original = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0))}
    original["w"] = original["w"].to(getattr(torch, dtype))
    save_torch(original, tmp_path / "torch.safetensors")
    write_safetensors(
        tmp_path / "copy.safetensors", read_safetensors(tmp_path / "torch.safetensors")
    )
    assert torch.equal(load_torch(tmp_path / "copy.safetensors")["w"], original["w"])


def test_a_failed_write_leaves_no_file_and_the_old_file_intact(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="complex128"):
        write_safetensors(tmp_path / "x.safetensors", {"c": np.array([1 + 2j])})
    assert list(tmp_path.iterdir()) == []

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    write_safetensors(tmp_path / "old.safetensors", {"w": np.ones(2, np.float32)})
    old = (tmp_path / "old.safetensors").read_bytes()
    monkeypatch.setattr(os, "fsync", full_disk)
    for name in ("x.safetensors", "old.safetensors"):
        with pytest.raises(OSError, match="No space"):
            write_safetensors(tmp_path / name, TENSORS)
    assert [p.name for p in tmp_path.iterdir()] == ["old.safetensors"]
    assert (tmp_path / "old.safetensors").read_bytes() == old


@pytest.mark.parametrize(
    ("tensors", "metadata", "words"),
    [
        ({"__metadata__": np.zeros(2)}, None, "'__metadata__'; accepted: any other name"),
        ({"w": np.zeros(2)}, {"step": 3}, "{'step': 3}; accepted: strings only"),
    ],
)
def test_writes_only_what_the_format_can_hold(tensors, metadata, words, tmp_path):
    with pytest.raises(UserError, match=re.escape(words)) as caught:
        write_safetensors(tmp_path / "x.safetensors", tensors, metadata)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_casts_floating_tensors_only_and_leaves_the_input(tmp_path):
    write_safetensors(tmp_path / "half.safetensors", TENSORS, dtype=np.float16)
    read = read_safetensors(tmp_path / "half.safetensors")
    floats = ("b.weight", "a.half", "brain", "empty")
    assert {k: v.dtype for k, v in read.items()} == {
        **{k: v.dtype for k, v in TENSORS.items()},
        **dict.fromkeys(floats, np.dtype(np.float16)),
    }
    np.testing.assert_array_equal(read["b.weight"], TENSORS["b.weight"].astype(np.float16))
    assert TENSORS["b.weight"].dtype == np.float32


# -- files both readers accept or both refuse ------------------------------------------------------


def _header(path) -> bytes:
    content = path.read_bytes()
    return content[8 : 8 + struct.unpack("<Q", content[:8])[0]]


def _file(path, header, data: bytes = bytes(8)):
    """A safetensors file of `header` (a JSON value, or raw bytes) padded to 8 bytes, then
    `data`."""
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def _f32(shape, begin, end) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


@pytest.mark.parametrize(
    ("header", "data", "expected"),
    [
        pytest.param({}, b"", {}, id="no-tensors"),
        pytest.param({"__metadata__": {"format": "pt"}}, b"", {}, id="metadata-only"),
        pytest.param(
            {"__metadata__": None, "w": {**_f32([1], 0, 4), "extra": 1}},
            bytes(4),
            {"w": np.zeros(1, np.float32)},
            id="null-metadata-extra-field",
        ),
        pytest.param(
            {"b": _f32([1], 4, 8), "a": _f32([1], 0, 4)},
            np.array([1, 2], np.float32).tobytes(),
            {"a": np.array([1], np.float32), "b": np.array([2], np.float32)},
            id="ranges-out-of-header-order",
        ),
        pytest.param(
            {"e": _f32([0], 8, 8), "w": _f32([2], 0, 8), "f": _f32([0, 3], 8, 8)},
            bytes(8),
            {
                "e": np.zeros(0, np.float32),
                "w": np.zeros(2, np.float32),
                "f": np.zeros((0, 3), np.float32),
            },
            id="empty-tensors-at-the-end",
        ),
    ],
)
def test_accepts_what_the_reference_accepts(header, data, expected, tmp_path):
    path = _file(tmp_path / "x.safetensors", header, data)
    _assert_same(read_safetensors(path), expected)
    _assert_same(load_file(path), expected)


_W = _f32([2], 0, 8)


@pytest.mark.parametrize(
    ("header", "data", "words"),
    [
        pytest.param({"w": _f32([1], 4, 8)}, bytes(8), "a gap in its data", id="gap-first"),
        pytest.param(
            {"w": _f32([1], 0, 4), "v": _f32([0], 8, 8)}, bytes(8), "a gap", id="gap-between"
        ),
        pytest.param({"w": _W, "v": _f32([1], 4, 8)}, bytes(8), "an overlap", id="overlap"),
        pytest.param({"w": _W, "v": _W}, bytes(8), "an overlap", id="same-range"),
        pytest.param({"w": _W}, bytes(12), "4 bytes after its last tensor", id="trailing"),
        pytest.param({}, bytes(8), "8 bytes after its last tensor", id="data-no-tensors"),
        pytest.param({"w": _f32([4], 0, 16)}, bytes(8), "is truncated: tensor 'w'", id="cut"),
        pytest.param({"w": _f32([3], 0, 8)}, bytes(8), "it needs 12", id="size-mismatch"),
        pytest.param({"w": _f32([2**40, 2**40], 0, 8)}, bytes(8), "it needs", id="overflow"),
        pytest.param({"w": _f32([2], 8, 0)}, bytes(8), "header entry 'w'", id="end-first"),
        pytest.param({"w": _f32([2], -8, 0)}, bytes(8), "header entry 'w'", id="negative"),
        pytest.param({"w": _f32([0], False, False)}, b"", "header entry 'w'", id="bool-offset"),
        pytest.param({"w": _f32([2.0], 0, 8)}, bytes(8), "header entry 'w'", id="float-shape"),
        pytest.param({"w": {**_W, "dtype": "F8"}}, bytes(8), "dtype: one of", id="dtype"),
        pytest.param({"w": {"dtype": "F32", "shape": [2]}}, bytes(8), "header", id="no-offsets"),
        pytest.param(
            {"__metadata__": {"step": 1}, "w": _W}, bytes(8), "an object of strings", id="meta"
        ),
        pytest.param({"__metadata__": [1], "w": _W}, bytes(8), "an object of", id="meta-list"),
        pytest.param([1, 2], b"", "a JSON object", id="list"),
        pytest.param(b'{"\xff":1}', b"", "unreadable safetensors header", id="not-utf8"),
        pytest.param(b"not json", b"", "unreadable safetensors header", id="not-json"),
    ],
)
def test_refuses_what_the_reference_refuses(header, data, words, tmp_path):
    path = _file(tmp_path / "x.safetensors", header, data)
    with pytest.raises(UserError) as caught:
        read_safetensors(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message, message
    with pytest.raises(SafetensorError):
        load_file(path)


@pytest.mark.parametrize(
    ("prefix", "size", "words"),
    [
        pytest.param(b"", 0, "0 bytes, shorter than a header", id="empty"),
        pytest.param(b"\x08\x00", 2, "2 bytes, shorter than a header", id="short"),
        pytest.param(struct.pack("<Q", 64), 16, "header of 64 bytes in a 16-byte", id="past-end"),
        pytest.param(
            struct.pack("<Q", 100_000_008),
            100_000_100,
            "accepted: at most 100000000",
            id="over-100MB",
        ),
    ],
)
def test_refuses_header_lengths_the_reference_refuses(prefix, size, words, tmp_path):
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        f.write(prefix)
        f.truncate(size)  # sparse: no disk used for the large one
    with pytest.raises(UserError, match=words) as caught:
        read_safetensors(path)
    assert str(caught.value).startswith(str(path))
    with pytest.raises(SafetensorError):
        load_file(path)
