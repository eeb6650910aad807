"""Loading a 1 GiB safetensors file: jaxdiff's numpy reader against the safetensors library.

Writes a file of UNet-shaped tensors (Stable Diffusion 1.5's block layout: 3x3 convolutions,
attention projections, feed-forwards, norms and biases; tensors in turn float32, float16 and
bfloat16) with `jaxdiff.convert.safetensors_io.write_safetensors`, then times, in round-robin
repeats (the order flipped every repeat, so changes in the machine's load hit every reader
alike):

- open: the header parsed and every tensor reachable by name, no tensor data read
  (`read_safetensors`: arrays over a memory map; `safe_open(framework="np")` + `keys()`);
- numpy: every tensor copied into an ordinary numpy array (`np.array` of each memory-mapped
  tensor; `safetensors.numpy.load_file`, and the same with the library's `pread` backend), with
  the file in the page cache (warm) and evicted from it first by `posix_fadvise(DONTNEED)` (cold);
  then again with numpy's transparent-huge-page advice for its new arrays turned off (the
  library's arrays are not numpy's allocations, so only `np.array` follows the advice);
- jax: every tensor made a JAX array, as `jaxdiff.convert` loads weights (`jnp.asarray` of each
  memory-mapped tensor; of each `safe_open(...).get_tensor(name)`).

Both readers must give the same names, dtypes (bfloat16 as `ml_dtypes.bfloat16`), shapes and
bytes, and the library must read back the metadata written. Prints a markdown table of medians
(wall and process CPU seconds) and the ratio to jaxdiff's reader; the file is deleted at the end.

    python experiments/safetensors_load.py [--gib 1] [--repeats 7] [--dir /tmp] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxdiff.convert.safetensors_io import read_safetensors, write_safetensors  # noqa: E402

Shape = tuple[int, ...]
CHANNELS = (320, 640, 1280, 1280)  # SD 1.5 UNet block_out_channels
TIME_DIM, CONTEXT_DIM = 1280, 768
DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
METADATA = {"format": "pt"}


def _linear(prefix: str, c_out: int, c_in: int, bias: bool = True) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (c_out, c_in)
    if bias:
        yield f"{prefix}.bias", (c_out,)


def _conv(prefix: str, c_out: int, c_in: int, k: int = 3) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (c_out, c_in, k, k)
    yield f"{prefix}.bias", (c_out,)


def _norm(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    yield f"{prefix}.weight", (c,)
    yield f"{prefix}.bias", (c,)


def _resnet(prefix: str, c_in: int, c_out: int) -> Iterator[tuple[str, Shape]]:
    """diffusers' ResnetBlock2D."""
    yield from _norm(f"{prefix}.norm1", c_in)
    yield from _conv(f"{prefix}.conv1", c_out, c_in)
    yield from _linear(f"{prefix}.time_emb_proj", c_out, TIME_DIM)
    yield from _norm(f"{prefix}.norm2", c_out)
    yield from _conv(f"{prefix}.conv2", c_out, c_out)
    if c_in != c_out:
        yield from _conv(f"{prefix}.conv_shortcut", c_out, c_in, k=1)


def _transformer(prefix: str, c: int) -> Iterator[tuple[str, Shape]]:
    """diffusers' Transformer2DModel with one BasicTransformerBlock."""
    block = f"{prefix}.transformer_blocks.0"
    yield from _norm(f"{prefix}.norm", c)
    yield from _linear(f"{prefix}.proj_in", c, c)
    for attn, context in (("attn1", c), ("attn2", CONTEXT_DIM)):
        yield from _linear(f"{block}.{attn}.to_q", c, c, bias=False)
        yield from _linear(f"{block}.{attn}.to_k", c, context, bias=False)
        yield from _linear(f"{block}.{attn}.to_v", c, context, bias=False)
        yield from _linear(f"{block}.{attn}.to_out.0", c, c)
    for i in (1, 2, 3):
        yield from _norm(f"{block}.norm{i}", c)
    yield from _linear(f"{block}.ff.net.0.proj", 8 * c, c)
    yield from _linear(f"{block}.ff.net.2", c, 4 * c)
    yield from _linear(f"{prefix}.proj_out", c, c)


def _unet_blocks() -> Iterator[list[tuple[str, Shape]]]:
    """The tensors of each block of an SD 1.5-shaped UNet: down, mid and up blocks."""
    c_in = CHANNELS[0]
    for level, c in enumerate(CHANNELS):
        attention = level < len(CHANNELS) - 1
        tensors = []
        for j in range(2):
            tensors += _resnet(f"down_blocks.{level}.resnets.{j}", c_in if j == 0 else c, c)
            if attention:
                tensors += _transformer(f"down_blocks.{level}.attentions.{j}", c)
        yield tensors
        c_in = c
    c = CHANNELS[-1]
    mid = [*_resnet("mid_block.resnets.0", c, c), *_transformer("mid_block.attentions.0", c)]
    yield [*mid, *_resnet("mid_block.resnets.1", c, c)]
    for level, c in enumerate(reversed(CHANNELS)):
        attention = level > 0
        skip = list(reversed(CHANNELS))[min(level + 1, len(CHANNELS) - 1)]
        tensors = []
        for j in range(3):
            c_skip = skip if j == 2 else c
            tensors += _resnet(f"up_blocks.{level}.resnets.{j}", c_in + c_skip, c)
            if attention:
                tensors += _transformer(f"up_blocks.{level}.attentions.{j}", c)
            c_in = c
        yield tensors


def unet_like_tensors(nbytes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal tensors of UNet shapes, cycling through float32, float16 and bfloat16 (the
    UNet repeated under new prefixes if needed), up to the first that would pass ``nbytes``."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    total, copy = 0, 0
    while True:
        for name, shape in (entry for block in _unet_blocks() for entry in block):
            dtype = DTYPES[len(tensors) % len(DTYPES)]
            total += math.prod(shape) * dtype.itemsize
            if total > nbytes:
                return tensors
            value = rng.standard_normal(shape, np.float32).astype(dtype)
            tensors[f"copy{copy}.{name}" if copy else name] = value
        copy += 1


def warm(path: Path) -> None:
    """Reads the whole file once, so that its pages are in the page cache."""
    buffer = bytearray(2**24)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass


def evict(path: Path) -> None:
    """Drops the file's pages from the page cache (clean pages, no mapping left)."""
    gc.collect()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def jaxdiff_open(path: Path) -> dict[str, np.ndarray]:
    return read_safetensors(path)


def library_open(path: Path) -> list[str]:
    with safe_open(path, framework="np") as f:
        return list(f.keys())


def jaxdiff_numpy(path: Path) -> dict[str, np.ndarray]:
    return {name: np.array(value) for name, value in read_safetensors(path).items()}


def library_numpy(path: Path) -> dict[str, np.ndarray]:
    return load_file(path)


def library_numpy_pread(path: Path) -> dict[str, np.ndarray]:
    return load_file(path, backend="pread")


def jaxdiff_jax(path: Path) -> dict[str, jax.Array]:
    arrays = {name: jnp.asarray(value) for name, value in read_safetensors(path).items()}
    return jax.block_until_ready(arrays)


def library_jax(path: Path) -> dict[str, jax.Array]:
    with safe_open(path, framework="np") as f:
        names = f.keys()  # a safe_open is not iterable
        arrays = {name: jnp.asarray(f.get_tensor(name)) for name in names}
    return jax.block_until_ready(arrays)


def small_pages(read: Callable[[Path], object]) -> Callable[[Path], object]:
    """``read`` with numpy's advice to back its large arrays by transparent huge pages off (as
    ``NUMPY_MADVISE_HUGEPAGE=0`` does at import)."""

    def wrapped(path: Path) -> object:
        previous = np._core.multiarray._set_madvise_hugepage(False)
        try:
            return read(path)
        finally:
            np._core.multiarray._set_madvise_hugepage(previous)

    return wrapped


READERS: dict[str, dict[str, Callable[[Path], object]]] = {
    "open": {"jaxdiff": jaxdiff_open, "library": library_open},
    "numpy": {
        "jaxdiff": jaxdiff_numpy,
        "library": library_numpy,
        "library, pread": library_numpy_pread,
    },
    "numpy, no THP advice": {
        "jaxdiff": small_pages(jaxdiff_numpy),
        "library": small_pages(library_numpy),
    },
    "jax": {"jaxdiff": jaxdiff_jax, "library": library_jax},
}
CACHES = {
    "open": ("warm",),
    "numpy": ("warm", "cold"),
    "numpy, no THP advice": ("warm", "cold"),
    "jax": ("warm",),
}


def check_identical(path: Path) -> None:
    """Both readers give the same names, dtypes, shapes and bytes; the metadata reads back."""
    ours, theirs = jaxdiff_numpy(path), library_numpy(path)
    assert sorted(ours) == sorted(theirs), "different tensor names"
    for name, value in ours.items():
        other = theirs[name]
        assert (value.dtype, value.shape) == (other.dtype, other.shape), name
        assert np.array_equal(value.reshape(-1).view(np.uint8), other.reshape(-1).view(np.uint8))
    with safe_open(path, framework="np") as f:
        assert f.metadata() == METADATA, f.metadata()


def measure(path: Path, repeats: int) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(step, cache, reader) -> (median wall s, median process CPU s)."""
    cases = [
        (step, cache, reader)
        for step, readers in READERS.items()
        for cache in CACHES[step]
        for reader in readers
    ]
    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {c: [] for c in cases}
    for step, _, reader in cases:  # first calls: imports, JAX's backend, allocator growth
        READERS[step][reader](path)
    for repeat in range(repeats):
        for case in cases if repeat % 2 == 0 else cases[::-1]:
            step, cache, reader = case
            (evict if cache == "cold" else warm)(path)
            wall, cpu = time.perf_counter(), time.process_time()
            result = READERS[step][reader](path)
            times[case].append((time.perf_counter() - wall, time.process_time() - cpu))
            del result
            gc.collect()
    return {
        case: tuple(statistics.median(t[i] for t in runs) for i in (0, 1))
        for case, runs in times.items()
    }


def report(medians: dict[tuple[str, str, str], tuple[float, float]], nbytes: int) -> str:
    lines = [
        "| step | page cache | reader | wall s | CPU s | GB/s (wall) | wall / jaxdiff "
        "| CPU / jaxdiff |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for (step, cache, reader), (wall, cpu) in medians.items():
        base_wall, base_cpu = medians[(step, cache, "jaxdiff")]
        rate = f"{nbytes / wall / 1e9:.2f}" if step != "open" else "-"
        lines.append(
            f"| {step} | {cache} | {reader} | {wall:.4f} | {cpu:.4f} | {rate} | "
            f"{wall / base_wall:.2f} | {cpu / base_cpu:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="file size in GiB")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the file is written")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "unet_like.safetensors"
        tensors = unet_like_tensors(int(args.gib * 2**30))
        by_dtype: dict[str, int] = {}
        for value in tensors.values():
            by_dtype[value.dtype.name] = by_dtype.get(value.dtype.name, 0) + value.nbytes
        start = time.perf_counter()
        write_safetensors(path, tensors, METADATA)
        written = time.perf_counter() - start
        del tensors
        size = path.stat().st_size
        mix = ", ".join(f"{name} {n / size:.0%}" for name, n in by_dtype.items())
        count = len(read_safetensors(path))
        print(f"{size / 2**30:.3f} GiB, {count} tensors ({mix}), written in {written:.2f} s")
        check_identical(path)
        print("both readers give identical arrays; the library reads the metadata back")
        table = report(measure(path, args.repeats), size)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
