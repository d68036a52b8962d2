"""The training loop shared by pretraining and fine-tuning (`fit_loop`), and its plumbing: optimizer,
log lines, resume state. Each trainer brings what differs (the loss of a step, validation, how a
checkpoint is written); the loop owns the schedule, the optimiser step, logging and saving.

Run directory layout (the checkpoint directory `out_dir` holds only the best-validation weights):

    run_dir/log.jsonl          one JSON object per log line: iter, loss, val, lr, ms, ...
    run_dir/last/              checkpoint directory with the latest weights (every save_interval)
    run_dir/trainer_state.pt   optimizer, step, best val, RNG states (pickle; resume only)

Under `torchrun` (training/distributed.py) every rank runs the loop; rank 0 alone writes the log, the
progress bar, the checkpoints and the trainer state (its RNG states), and the logged loss is the mean
over the ranks (the loss of the global batch).

References: nanoGPT `train.py` (`configure_optimizers` decay groups, the log f-string); litgpt
`finetune/full.py` (`fit` / `validate`, resume from a state file); STYLE.md items 8-9.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from training.config import TrainConfig, get_lr
from training.distributed import mean_over_ranks, world
from training.weight_average import WeightAverage

__all__ = [
    "Resumed", "RunLog", "configure_optimizer", "fit_loop", "load_trainer_state", "save_trainer_state",
]  # fmt: skip

TRAINER_STATE = "trainer_state.pt"
LOG_FILE = "log.jsonl"
LAST = "last"


def configure_optimizer(
    model: nn.Module, *, lr: float, weight_decay: float, beta2: float
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, weight decay on Linear matrices only (nanoGPT's rule:
    no decay on biases, norms and embedding tables)."""
    no_decay_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding | nn.LayerNorm) for p in m.parameters()
    }
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 and id(param) not in no_decay_ids else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2))


# --- resume state ---


def save_trainer_state(
    run_dir: str | Path, *, optimizer: torch.optim.Optimizer, step: int, **extra: Any
) -> None:
    """Write run_dir/trainer_state.pt atomically: optimizer, step, RNG states and `extra` values."""
    path = Path(run_dir) / TRAINER_STATE
    state = {
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_trainer_state(run_dir: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore the optimizer and RNG states; returns the whole state (step, best_val, ...)."""
    path = Path(run_dir) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trainer state to resume from (train without --resume first)")
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file; holds RNG tuples
    optimizer.load_state_dict(state["optimizer"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return state


# --- logging ---


class RunLog:
    """Progress bar + one log line per `log_interval` + the same values in run_dir/log.jsonl.
    Disabled (`enabled=False`, the ranks other than 0 of a multi-process run): writes nothing."""

    def __init__(
        self, run_dir: str | Path, *, start: int, total: int, progress: bool, resume: bool,
        enabled: bool = True,
    ) -> None:  # fmt: skip
        self.path = Path(run_dir) / LOG_FILE
        self.enabled = enabled
        if enabled:
            self._start_file(start, resume)
        self.bar = tqdm(
            total=total, initial=start, disable=not (progress and enabled), dynamic_ncols=True, unit="step"
        )
        self.tick = time.perf_counter()
        self.steps_since = 0

    def _start_file(self, start: int, resume: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        elif self.path.exists():  # drop lines written after the resumed step by an interrupted run
            lines = self.path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["iter"] <= start]
            self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def step(self) -> None:
        self.steps_since += 1
        self.bar.update(1)

    def log(
        self, step: int, *, loss: float | None, val: float | None, lr: float, **extra: Any
    ) -> dict[str, Any]:
        """Print `iter 120 | loss 2.3141 | val 2.4012 | lr 3.0e-4 | 41.2 ms` and append it as JSON
        (loss None: a validation before any training step, printed "-", stored null)."""
        now = time.perf_counter()
        ms = 1000.0 * (now - self.tick) / max(1, self.steps_since)
        self.tick, self.steps_since = now, 0
        val_text = f"{val:.4f}" if val is not None else "-"
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        line = f"iter {step} | loss {loss_text} | val {val_text} | lr {lr:.1e} | {ms:.1f} ms"
        record = {
            "iter": step, "loss": None if loss is None else round(loss, 6), "val": val, "lr": lr,
            "ms": round(ms, 2), **extra,
        }  # fmt: skip
        if not self.enabled:
            return record
        self.note(line)
        self.bar.set_postfix(loss=loss_text, val=val_text)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def note(self, message: str) -> None:
        """A line above the progress bar, flushed at once (stdout redirected to a file or a pipe is
        block-buffered: the lines would otherwise appear only when the run ends)."""
        if not self.enabled:
            return
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


@dataclass
class Resumed:
    """Where a run starts: step 0 with no validation yet, or the values of `load_trainer_state`."""

    step: int = 0
    best_val: float = float("inf")
    val: float | None = None
    ema: dict[str, Any] | None = None  # `WeightAverage.state_dict()` of a run with ema_decay > 0

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Resumed:
        """The start written by `save_trainer_state` (run_dir/trainer_state.pt)."""
        return cls(state["step"], state["best_val"], state.get("val"), state.get("ema"))


def fit_loop(
    cfg: TrainConfig,
    *,
    total: int,
    start: Resumed,
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    log: RunLog,
    loss_at: Callable[[int], tuple[Tensor, dict[str, Any]]],
    validate: Callable[[], dict[str, float]],
    save_best: Callable[[int, float], None],
    save_last: Callable[[int], None],
    validate_first: bool = False,
) -> dict[str, Any]:
    """Train from `start.step` to `total`: learning rate by `get_lr` (times a param group's `lr_mult`),
    `loss_at(step)` -> (loss, extra log fields), clipping at `cfg.grad_clip`; every `eval_interval`
    steps (and at the end) `validate()` (its "val" selects the checkpoint `save_best` writes); a log
    line every `log_interval`; `save_last` + the trainer state every `save_interval`. With
    `validate_first`, a run starting at step 0 also validates (and saves) the untrained model, so the
    kept checkpoint is never worse on validation than the start. With `cfg.ema_decay` > 0 the loop
    keeps an exponential moving average of `params` (training/weight_average.py) and validates and
    `save_best`s the averaged weights; `save_last` writes the raw ones, the trainer state the averages.
    Returns the final step, the best validation value and the last log record.

    Several ranks: each calls `validate()` (it may shard or return {"val": nan} off rank 0), only rank 0
    saves."""
    run_dir = Path(cfg.resolved_run_dir)
    main = world().is_main
    step, best_val, val = start.step, start.best_val, start.val
    loss_sum, loss_count, record = 0.0, 0, {}
    ema = WeightAverage(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None and start.ema is not None:
        ema.load_state_dict(start.ema)

    def averaged() -> AbstractContextManager[None]:
        return ema.swapped() if ema is not None else nullcontext()

    if validate_first and step == 0:
        with averaged():
            first = validate()
            val = best_val = first.pop("val")
            if main:
                save_best(0, val)
        record = log.log(0, loss=None, val=val, lr=0.0, **first)
    while step < total:
        lr = get_lr(step, cfg, total)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        loss, tags = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update()
        step += 1
        log.step()
        loss_sum, loss_count = loss_sum + mean_over_ranks(loss.item()), loss_count + 1
        extra: dict[str, float] = {}
        if step % cfg.eval_interval == 0 or step == total:
            with averaged():
                extra = validate()
                val = extra.pop("val")
                if val < best_val:
                    best_val = val
                    if main:
                        save_best(step, val)
        if step % cfg.log_interval == 0 or step == total or extra:
            record = log.log(step, loss=loss_sum / loss_count, val=val, lr=lr, **tags, **extra)
            loss_sum, loss_count = 0.0, 0
        if main and (step % cfg.save_interval == 0 or step == total):
            save_last(step)
            save_trainer_state(
                run_dir, optimizer=optimizer, step=step, best_val=best_val, val=val,
                ema=None if ema is None else ema.state_dict(),
            )  # fmt: skip
    log.close()
    return {"step": step, "best_val": best_val, "last": record}
