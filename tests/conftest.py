"""Test set-up: 8 simulated CPU devices, float32 by default, deterministic XLA."""

import os
import sys
import tempfile
import types

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# The tests compile far more than they run: XLA's CPU backend without its LLVM optimizations
# compiles in about 15% less time and computes the same values to rounding.
for _flag in ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"):
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
