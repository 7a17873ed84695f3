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

.PHONY: install assets demo test test-core test-models lint wheel-check clean

# The viewer's deep-zoom client (OpenSeadragon) from npm, pinned by viewer/package-lock.json,
# copied into the package with its licence; never fetched at run time.
OSD_SRC := viewer/node_modules/openseadragon
OSD_DEST := src/fivewsi/view/static/vendor/openseadragon
ASSETS := $(OSD_DEST)/openseadragon.min.js

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

$(ASSETS): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --ignore-scripts --no-audit --no-fund
	rm -rf $(OSD_DEST) && mkdir -p $(OSD_DEST)
	cp $(OSD_SRC)/build/openseadragon/openseadragon.min.js $(OSD_DEST)/
	cp -r $(OSD_SRC)/build/openseadragon/images $(OSD_DEST)/images
	cp $(OSD_SRC)/LICENSE.txt $(OSD_DEST)/LICENSE.txt
	cp viewer/package-lock.json $(OSD_DEST)/package-lock.json

assets: $(ASSETS)

install: $(BIN)/.fivewsi-installed assets

demo: install
	$(BIN)/fivewsi demo

lint: install
	$(BIN)/ruff check .

test-core: install assets
	$(BIN)/python -m pytest -m "not models"

test-models: $(MODELS_VENV)/bin/.fivewsi-installed
	$(MODELS_VENV)/bin/python -m pytest -m models

test: assets lint test-core test-models

# Build the wheel, check it holds every file of src/fivewsi, install it in a fresh venv and run
# the demo from outside the source tree (2-3 minutes on 2 cores).
wheel-check:
	PYTHON=$(PYTHON) .ci/check_wheel.sh

clean:
	rm -rf $(VENV) $(MODELS_VENV) .pytest_cache .ruff_cache viewer/node_modules
