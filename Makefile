# Set-up and entry points. Every target creates the virtual environment if it is missing, installs the
# pinned torch first (so nothing later can swap it), installs the package editable without build
# isolation (the extension must compile against this torch), then rebuilds the extension incrementally.
#   make demo    the main job on the embedded default data set (digits)
#   make test    lint + static GPU proof (pinned configs) + gpu-check dry run + the test suite (what CI runs)
#   make bench   the benchmarks (GPU ones say so and exit when no GPU is present), with the library
#                baselines of the `bench` extra
#   make gpu-proof   every Triton kernel compiled for sm_90a and sm_80 without a GPU -> bench/results/ tables
#   make mutation    mutation testing (mutmut, installed on first use) of the modules that decide results,
#                    each against its own tests (tests/mutation.toml); not part of CI. MUTATION_ARGS="--only imp"
#   make gpu-check   on a lent GPU machine, with its own python3 (no venv, no pip): build, live ops, gpu tests,
#                    quick benchmarks in a 480 s budget; DRY_RUN=1 prints the plan and runs the GPU-free parts

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1 (CUDA 13 builds, run on CPU too) are the newest pair that import
# together here; the CPU wheel of torch breaks PyPI's torchvision, which timm needs.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# torch's own CUDA_HOME detection follows an `nvcc` wrapper on PATH to the wrong place; setup.py looks
# for the toolkit's headers itself, so only an explicit CUDA_HOME is passed through. TORCH_CUDA_ARCH_LIST
# is passed only when given (environment or `make TORCH_CUDA_ARCH_LIST=...`): unset, setup.py builds for
# the visible GPUs (else 8.0;9.0a).
ifdef TORCH_CUDA_ARCH_LIST
export TORCH_CUDA_ARCH_LIST
endif
export MAX_JOBS ?= 2
PYTEST_ARGS ?=
# gpu-check runs on the GPU machine's own Python (torch, Triton and a toolkit come with it; nothing is installed)
GPU_PY ?= python3
DRY_RUN ?=
GPU_PROOF_ARGS ?=
MUTATION_ARGS ?=

.PHONY: venv build demo test lint bench clean gpu-proof gpu-check mutation

$(VENV)/.deps-stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "setuptools>=77" wheel ninja
	$(PY) -m pip install -q $(TORCH_PINS)
	LTH_KERNELS_SKIP_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e ".[dev]" $(TORCH_PINS)
	touch $@

venv: $(VENV)/.deps-stamp

build: venv
	$(PY) setup.py -q build_ext --inplace

lint: venv
	$(PY) -m ruff check .

demo: build
	$(VENV)/bin/lth info
	$(VENV)/bin/lth imp --preset lenet_300_100-digits --levels 5 --branches random_reinit

test: build lint
	$(PY) -m bench.gpu_proof --pinned --out-dir build/gpu-proof/results
	$(MAKE) --no-print-directory gpu-check DRY_RUN=1 GPU_PY=$(PY)
	$(PY) -m pytest $(PYTEST_ARGS)

$(VENV)/.bench-stamp: $(VENV)/.deps-stamp
	LTH_KERNELS_SKIP_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e ".[dev,bench]" $(TORCH_PINS)
	touch $@

gpu-proof: build
	$(PY) -m bench.gpu_proof $(GPU_PROOF_ARGS)

gpu-check:
	$(GPU_PY) -m bench.gpu_check $(if $(filter 1,$(DRY_RUN)),--dry-run,)

bench: build $(VENV)/.bench-stamp
	$(PY) -m bench.run

mutation: build
	@# the `mutation` extra, installed into the venv only when mutmut is missing
	$(PY) -c "import mutmut" 2>/dev/null || \
		LTH_KERNELS_SKIP_BUILD=1 $(PY) -m pip install -q --no-build-isolation -e ".[dev,mutation]" $(TORCH_PINS)
	$(PY) -m tests.mutation $(MUTATION_ARGS)

clean:
	rm -rf build lth_kernels/_C*.so lth_kernels/_build_info.json
