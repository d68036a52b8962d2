"""Data-parallel training: `torchrun --nproc_per_node=2` (gloo on CPU, one thread each) ends with the
weights of one process trained on the same global batches, for pretraining and fine-tuning.

Each test launches the real command line under torchrun (rendezvous on 127.0.0.1, a free port), runs the
same config in this process, and compares the `last/` checkpoints and the logs. The global batch sizes
are odd, so the two ranks' parts differ in size, and pretraining meets a one-window batch (an epoch's
last), where one rank holds no part: the loss weighting must still give the one-process gradients.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_fixtures import pretrain_tiny_encoder, tiny_backbone_or_skip

from models.checkpoint import load_checkpoint
from training.config import FinetuneConfig, TrainConfig
from training.data import sliding_windows
from training.finetune import main as finetune
from training.generic_text import _cache_file, load_prompts
from training.pretrain import main as pretrain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Training tests run on one thread (fixture in conftest.py)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(command: str, cfg: TrainConfig) -> None:
    """`torchrun --nproc_per_node=2 -m training <command>` with every field of `cfg` as --key=value."""
    args = [f"--{k}={v}" for k, v in cfg.__dict__.items() if v is not None]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "training", command, *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summaries = done.stdout.count('"run_dir"')
    assert summaries == 1, f"{summaries} summaries printed: only rank 0 prints"


def log_records(run_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def assert_same_run(one: TrainConfig, two: TrainConfig, *, noise_only: tuple[str, ...] = ()) -> None:
    """Same final weights (keys without a `module.` prefix), same checkpoint files, same log lines.

    The ranks' smaller matmuls round differently, and Adam divides each gradient by its own size: an
    entry whose gradient is near zero (a unit the batch barely uses) moves by its rounding noise. The
    weights then agree to 1e-5, 1% of one step at lr 1e-3; `noise_only` names weights whose gradient
    is zero analytically (all rounding noise)."""
    a = load_checkpoint(Path(one.resolved_run_dir) / "last")
    b = load_checkpoint(Path(two.resolved_run_dir) / "last")
    assert sorted(a.state_dict) == sorted(b.state_dict)
    assert {p.name for p in Path(one.out_dir).iterdir()} == {p.name for p in Path(two.out_dir).iterdir()}
    for name, weight in a.state_dict.items():
        if any(part in name for part in noise_only):
            assert (weight - b.state_dict[name]).abs().max() <= one.lr * one.steps, name
        else:
            torch.testing.assert_close(b.state_dict[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    logs_a, logs_b = log_records(one.resolved_run_dir), log_records(two.resolved_run_dir)
    assert [r["iter"] for r in logs_a] == [r["iter"] for r in logs_b]  # rank 0 alone wrote the log
    for ra, rb in zip(logs_a, logs_b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6)  # the global batch's loss
        assert (rb["val"] is None) == (ra["val"] is None)
        if ra["val"] is not None:
            assert rb["val"] == pytest.approx(ra["val"], rel=1e-5)


def test_pretraining_on_two_processes_equals_one(tmp_path: Path) -> None:
    common = dict(steps=6, batch_size=29, eval_interval=3, save_interval=6, warmup=1)
    one = TrainConfig.tiny(out_dir=str(tmp_path / "one"), run_dir=str(tmp_path / "run-one"), **common)
    two = TrainConfig.tiny(out_dir=str(tmp_path / "two"), run_dir=str(tmp_path / "run-two"), **common)
    pretrain(one)
    torchrun("pretrain-encoder", two)
    assert_same_run(one, two, noise_only=("attn.k_proj.bias",))  # a key bias shifts all scores alike


def test_pretraining_meets_a_batch_smaller_than_the_world() -> None:
    """The run above reaches the epoch's one-window batch (windows = 3 x 29 + 1) by step 4 of 6."""
    from training.corpus import load_corpus

    cfg = TrainConfig.tiny()
    corpus = load_corpus(cfg.dataset, cfg.path, max_users=cfg.max_users)
    windows = list(sliding_windows(corpus.splits.train, window=cfg.window, stride=cfg.stride))
    assert len(windows) % 29 == 1 and len(windows) // 29 < 6


@pytest.mark.backbone
def test_finetuning_on_two_processes_equals_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = tiny_backbone_or_skip(tmp_path / "backbone")
    encoder = pretrain_tiny_encoder(tmp_path)
    # stand-in generic responses (the tiny backbone would sample them for a minute), one cache for both runs
    monkeypatch.setenv("USERLLM_GENERIC_DIR", str(tmp_path / "generic"))
    prompts = load_prompts()
    cache = _cache_file(backbone, prompts)
    cache.parent.mkdir(parents=True)
    cache.write_text("".join(json.dumps({"prompt": p, "response_ids": [400 + i % 50, 401, 2]}) + "\n"
                             for i, p in enumerate(prompts)))  # fmt: skip
    common = dict(
        encoder_dir=str(encoder), backbone_dir=str(backbone), max_users=12, steps=4, batch_size=3,
        text_batch_size=3, warmup=1, eval_interval=4, save_interval=4, log_interval=1, eval_users=4,
        cross_attn_every_n_layers=1, dropout=0.0, distill=0.5, gate_init=0.5, progress=False,
        tasks="next_item,generic,favourite_category,taste",
    )  # fmt: skip
    one = FinetuneConfig(out_dir=str(tmp_path / "one"), run_dir=str(tmp_path / "run-one"), **common)
    two = FinetuneConfig(out_dir=str(tmp_path / "two"), run_dir=str(tmp_path / "run-two"), **common)
    finetune(one)
    torchrun("finetune", two)
    assert_same_run(one, two)
