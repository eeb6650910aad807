"""jaxdiff: text-to-image diffusion research in JAX / Flax NNX."""

import pathlib

from setuptools import find_packages, setup

README = pathlib.Path(__file__).parent / "README.md"

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "ml_collections>=1.0",
    "numpy>=1.26",
    "transformers>=5.0",
    "tokenizers>=0.21",
    "tensorflow-datasets>=4.9.8",
    "grain>=0.2.10",  # the record pipeline over tfds.data_source / folders
    "array_record>=0.5",  # tfds.data_source reads ArrayRecord files
    "pillow>=10.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "scipy>=1.11",
    "tensorboardX>=2.6",
]

EXTRAS = {
    # The PyTorch references the parity tests compare against, pinned exactly: their numerics
    # change between releases. On a CPU-only machine install torch's CPU build first (from its
    # CPU wheel index) so that pip does not fetch the CUDA build and its gigabytes of CUDA
    # packages. transformers >= 5.24 needs peft >= 0.22; 5.23.0 works with peft 0.21.2.
    # torchsde and torchdiffeq are what k-diffusion's sampling.py imports; k-diffusion itself
    # requires its whole training stack and an unpinned torch, so the Makefile installs it with
    # --no-deps. It also puts pytorch-fid and torchvision, the FID reference network, in a
    # folder of their own (see tests/reference_models.py).
    "test": [
        "pytest>=8.0",
        "pytest-xdist>=3.6",
        "ruff>=0.6",
        "import-linter==2.17",
        "torch==2.13.0",
        "diffusers==0.42.1",
        "transformers==5.23.0",
        "peft==0.21.2",
        "safetensors==0.8.0",
        "torchsde==0.2.6",
        "torchdiffeq==0.2.5",
    ],
    # Preparing a tfds data set (`jaxdiff prepare-data NAME`): tfds's builders read and encode
    # through TensorFlow, whose CPU build is enough (`tensorflow` is the CPU build where
    # tensorflow-cpu has no wheel); tfds imports importlib_resources there without requiring it.
    "data": [
        "tensorflow-cpu>=2.20; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "tensorflow>=2.20; platform_system != 'Linux' or platform_machine != 'x86_64'",
        "importlib_resources>=6.0",
    ],
    "tpu": ["jax[tpu]>=0.10"],
    "cuda": ["jax[cuda12]>=0.10"],
}

setup(
    name="jaxdiff",
    version="0.1.0",
    description=(
        "Text-to-image diffusion research in JAX / Flax NNX: models, samplers, sharded training."
    ),
    long_description=README.read_text(encoding="utf-8") if README.exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    url="https://github.com/jaxdiff/jaxdiff",
    # The configs ship inside the package as jaxdiff.configs, so that an installed jaxdiff loads
    # them by name (`jaxdiff train --config shapes_t2i:tiny`); a checkout keeps them in configs/.
    packages=[*find_packages(include=["jaxdiff", "jaxdiff.*"]), "jaxdiff.configs"],
    package_dir={"jaxdiff.configs": "configs"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["jaxdiff = jaxdiff.cli:main"]},
    license="Apache-2.0",
)
