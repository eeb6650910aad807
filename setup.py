"""jaxdiff: text-to-image diffusion research in JAX / Flax NNX."""

from setuptools import find_packages, setup

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
    "safetensors>=0.4",
    "pillow>=10.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "scipy>=1.11",
    "tensorboardX>=2.6",
]

EXTRAS = {
    # The PyTorch references the parity tests compare against, pinned exactly. On a CPU-only
    # machine install torch's CPU build first (from its CPU wheel index) so that pip does not
    # fetch the CUDA build and its gigabytes of CUDA packages.
    # The Makefile also puts pytorch-fid and torchvision, the FID reference network, in a folder
    # of their own (see tests/reference_models.py).
    "test": ["pytest>=8.0", "pytest-xdist>=3.5", "torch==2.13.0", "diffusers>=0.40", "ruff>=0.6"],
    "tpu": ["jax[tpu]>=0.10"],
    "cuda": ["jax[cuda12]>=0.10"],
}

setup(
    name="jaxdiff",
    version="0.1.0",
    description="Text-to-image diffusion research in JAX / Flax NNX: models, samplers, sharded training.",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxdiff", "jaxdiff.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["jaxdiff = jaxdiff.cli:main"]},
    license="Apache-2.0",
)
