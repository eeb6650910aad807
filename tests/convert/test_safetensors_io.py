"""The numpy safetensors reader / writer against the reference implementation."""

import numpy as np
import pytest

from jaxdiff.convert.safetensors_io import read_safetensors, write_safetensors

TENSORS = {
    "b.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "a.half": np.linspace(-1, 1, 5).astype(np.float16),
    "flag": np.array(True),
    "ids": np.arange(4, dtype=np.int64),
    "empty": np.zeros((0, 3), np.float32),
}


def test_files_are_identical_to_the_reference_writer(tmp_path):
    from safetensors.numpy import save_file

    write_safetensors(tmp_path / "ours.safetensors", TENSORS, {"format": "pt"})
    save_file(TENSORS, tmp_path / "reference.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ours.safetensors").read_bytes() == (
        tmp_path / "reference.safetensors"
    ).read_bytes()


def test_reads_what_the_reference_writes(tmp_path):
    from safetensors.numpy import save_file

    save_file(TENSORS, tmp_path / "reference.safetensors")
    read = read_safetensors(tmp_path / "reference.safetensors")
    assert sorted(read) == sorted(TENSORS)
    for name, value in TENSORS.items():
        assert read[name].dtype == value.dtype and read[name].shape == value.shape
        np.testing.assert_array_equal(read[name], value)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_torch_tensors_round_trip_bit_exactly(dtype, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    original = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0))}
    original["w"] = original["w"].to(getattr(torch, dtype))
    save_file(original, tmp_path / "torch.safetensors")
    write_safetensors(
        tmp_path / "copy.safetensors", read_safetensors(tmp_path / "torch.safetensors")
    )
    assert torch.equal(load_file(tmp_path / "copy.safetensors")["w"], original["w"])


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import os

    from jaxdiff.errors import UserError

    with pytest.raises(UserError, match="complex128"):
        write_safetensors(tmp_path / "x.safetensors", {"c": np.array([1 + 2j])})

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_safetensors(tmp_path / "x.safetensors", TENSORS)
    assert list(tmp_path.iterdir()) == []


def test_casts_floating_tensors_only_and_leaves_the_input(tmp_path):
    write_safetensors(tmp_path / "half.safetensors", TENSORS, dtype=np.float16)
    read = read_safetensors(tmp_path / "half.safetensors")
    assert {k: v.dtype for k, v in read.items()} == {
        **{k: v.dtype for k, v in TENSORS.items()},
        "b.weight": np.dtype(np.float16),
        "a.half": np.dtype(np.float16),
        "empty": np.dtype(np.float16),
    }
    np.testing.assert_array_equal(read["b.weight"], TENSORS["b.weight"].astype(np.float16))
    assert TENSORS["b.weight"].dtype == np.float32
