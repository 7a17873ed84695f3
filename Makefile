# Set-up and checks for fivewsi. `make demo` and `make test` work on a fresh machine.
#
# The venv gets the CPU build of torch 2.13.0 unless it already has a torch: GPU users create
# .venv and install their CUDA torch first (see README), and the other steps keep it.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The [models] extra (timm, open_clip) needs torchvision, which needs the torch it was built with.
MODELS_VENV ?= .venv-models
MODELS_TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-core test-models lint wheel-check clean

$(BIN)/.fivewsi-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

$(MODELS_VENV)/bin/.fivewsi-installed: pyproject.toml
	test -x $(MODELS_VENV)/bin/python || $(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/python -c "import torchvision" 2>/dev/null || \
		$(MODELS_VENV)/bin/pip install -q $(MODELS_TORCH)
	$(MODELS_VENV)/bin/pip install -q -e ".[models,dev]"
	touch $@

install: $(BIN)/.fivewsi-installed

demo: install
	$(BIN)/fivewsi demo

lint: install
	$(BIN)/ruff check .

test-core: install
	$(BIN)/python -m pytest -m "not models"

test-models: $(MODELS_VENV)/bin/.fivewsi-installed
	$(MODELS_VENV)/bin/python -m pytest -m models

test: lint test-core test-models

# Build the wheel, check it holds every file of src/fivewsi, install it in a fresh venv and run
# the demo from outside the source tree (2-3 minutes on 2 cores).
wheel-check:
	PYTHON=$(PYTHON) .ci/check_wheel.sh

clean:
	rm -rf $(VENV) $(MODELS_VENV) .pytest_cache .ruff_cache
