# Quick start: `make demo` trains and evaluates the shapes text-to-image model; `make test` runs the
# tests. Each creates .venv/ and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python setup.py
	$(BIN)/pip install --quiet -e .
	touch $@

# pytorch-fid's Inception, the FID reference network, needs torchvision, whose PyPI build is made
# for CUDA torch: it goes in a folder of its own that only the reference tests put on sys.path.
# k-diffusion, the reference of the samplers with its names, requires its training stack and an
# unpinned torch: it goes in with --no-deps (the test extra has what its sampling.py imports).
FID_REFERENCE := $(VENV)/pytorch-fid-reference
# tfds's builders prepare data through TensorFlow, which jaxdiff reads without: TensorFlow's CPU
# build and what its import and tfds's builders need (the `data` extra, less tensorboard and
# keras) go in a folder of their own that only the process preparing data in tests/data puts on
# its path, so that every other test runs without TensorFlow, as jaxdiff does.
TENSORFLOW_PREPARE := $(VENV)/tensorflow-prepare
# tensorflow-cpu has wheels for Linux x86_64 only; elsewhere `tensorflow` is the CPU build.
TENSORFLOW := $(if $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m)),tensorflow-cpu,tensorflow)

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps --target $(FID_REFERENCE) torchvision==0.28.0 pytorch-fid==0.3.0
	$(BIN)/pip install --quiet --no-deps --target $(TENSORFLOW_PREPARE) $(TENSORFLOW)==2.20.0 \
		gast==0.7.0 astunparse==1.6.3 google-pasta==0.2.0 flatbuffers==25.12.19 \
		importlib_resources==7.1.0
	$(BIN)/pip install --quiet --no-deps k-diffusion==0.1.1
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# Host devices the trainer splits each batch over (data parallel): 2, the cores of the machine the
# demo's times in README.md were measured on; `make demo DEMO_DEVICES=N` changes it.
DEMO_DEVICES ?= 2

demo: install
	XLA_FLAGS=--xla_force_host_platform_device_count=$(DEMO_DEVICES) \
		$(BIN)/python experiments/shapes_demo.py --workdir runs/demo

# Each test file runs whole on one of two workers (--dist loadfile), so the runs and reference
# models its module fixtures build are built once; the files are handed out in the order
# tests/conftest.py gives them, slowest first (--no-loadscope-reorder: not by their number of
# tests); --durations=20 names the slowest tests.
test: install-test
	$(BIN)/ruff check jaxdiff tests configs experiments
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=20 tests

lint: install-test
	$(BIN)/ruff check jaxdiff tests configs experiments
	$(BIN)/ruff format --check jaxdiff tests configs experiments

clean:
	rm -rf $(VENV) runs .pytest_cache
