"""Test set-up: 8 simulated CPU devices, float32 by default, deterministic XLA."""

import gc
import os
import sys
import tempfile
import types

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The tests compile far more than they run. XLA's CPU backend without its LLVM optimizations
# compiles in about 15% less time; with its classic fusion emitters, in one code-generation thread,
# a training step takes about a third less processor time to compile and a sampling loop a fifth.
# The values are the same to rounding.
COMPILE_FAST = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_parallel_codegen_split_count=1",
)
for _flag in COMPILE_FAST:
    if _flag.split("=")[0] not in os.environ["XLA_FLAGS"]:
        os.environ["XLA_FLAGS"] += f" {_flag}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Programs compiled by one test (the tiny training steps, the pipelines' loops, and the many small
# programs that draw weights op by op) are reused by the others and by the processes they start.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxdiff-tests-jax-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

# torchvision (for pytorch-fid's reference Inception, see reference_models.py) is a CUDA build: its
# `_meta_registrations` registers fake kernels for `torchvision::nms`, which the CPU build of torch
# does not define, so `import torchvision` fails, and with it every transformers / diffusers import
# that probes for torchvision. Nothing tested needs those registrations: an empty module stands in.
sys.modules.setdefault(
    "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
)

# `make test` runs each file whole on one of two workers (--dist loadfile), handing out files in
# collection order: the files that take minutes go first, so that the short ones fill in behind
# them and neither worker is left alone with a long file at the end.
SLOW_FILES_FIRST = (
    "tests/pipelines/test_pipeline_parity.py",
    "tests/evaluation/test_evaluate.py",
    "tests/train/test_fault_tolerance.py",
    "tests/train/test_trainer.py",
    "tests/train/test_real_configs.py",
    "tests/train/test_lora_training.py",
    "tests/pipelines/test_controlnet_parity.py",
    "tests/train/test_controlnet_training.py",
    "tests/train/test_trained_base.py",
    "tests/colab/test_notebooks.py",
    "tests/train/test_multiprocess.py",
    "tests/train/test_sharded_step.py",
    "tests/test_cli.py",
    "tests/pipelines/test_sdxl_parity.py",
    "tests/pipelines/test_flow_pipeline.py",
    "tests/train/test_class_conditional.py",
    "tests/pipelines/test_pipeline_batches.py",
    "tests/train/test_lr_ema_remat.py",
    "tests/pipelines/test_sample_cli.py",
    "tests/pipelines/test_controlnet_pipeline.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return SLOW_FILES_FIRST.index(path) if path in SLOW_FILES_FIRST else len(SLOW_FILES_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the rest is kept


def memory_mappings() -> tuple[int, int]:
    """This process's memory mappings and the kernel's limit on them; (0, 1) where /proc has
    neither."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            count = sum(1 for _ in maps)
        with open("/proc/sys/vm/max_map_count") as limit:
            return count, int(limit.read())
    except OSError:
        return 0, 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Between files, a worker close to the kernel's limit on memory mappings releases its
    compiled programs.

    XLA keeps a program's machine code in three memory mappings for as long as the program is
    cached; a worker that kept every program of the suite would pass Linux's limit
    (`vm.max_map_count`, 65530 by default), where XLA's loader crashes the worker. Releasing them
    costs the files after it their in-memory caches (programs come back from the persistent
    compilation cache, traced again), so it is done only past half the limit.
    """
    yield
    if nextitem is not None and nextitem.path == item.path:
        return
    count, limit = memory_mappings()
    if count > limit // 2:
        import jax

        jax.clear_caches()
        gc.collect()
