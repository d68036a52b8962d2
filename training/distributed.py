"""Data-parallel training over the processes `torchrun` starts: the process group, the batch shards and
the loss weighting that make N processes compute the gradients of one process on the same global batch.

    torchrun --nproc_per_node=2 -m training pretrain-encoder --threads=1 ...

`setup` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins
the process group: gloo on CPU, NCCL on CUDA (device cuda:LOCAL_RANK). Without that environment, or with
one process, nothing is initialised and every helper below is the identity (one-process training).
On CUDA a step runs in bf16 autocast, with or without torchrun; on CPU in float32.

The configured batch size is the GLOBAL batch. Each rank takes a contiguous 1/N slice of it (`shard`);
the trainer's loss runs inside `parallel_step`, a DistributedDataParallel forward that averages the
gradients over the ranks. A loss that is a mean over a varying number of units (valid labels, predicted
events, target tokens) is passed through `shard_mean`, which all-reduces the count and rescales this
rank's mean to `local sum * N / global count`: the average over ranks is then the global mean, the
one-process loss up to rounding. Validation and checkpoints are the trainer's business (rank 0 writes).

References: PyTorch "Getting Started with Distributed Data Parallel" and the DistributedDataParallel
docs (forward must go through the wrapper; `find_unused_parameters`); nanoGPT `train.py` (RANK from
the environment, `master_process`, `seed_offset`, the gloo/nccl choice); HF accelerate
`main_process_first`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "World", "all_ranks", "barrier", "env_rank", "gather", "main_first", "mean_over_ranks",
    "parallel_step", "setup", "shard", "shard_mean", "teardown", "world",
]  # fmt: skip

T = TypeVar("T")
StepFn = Callable[[int], tuple[Tensor, dict[str, Any]]]
TIMEOUT = timedelta(hours=2)  # collectives wait this long (rank 0 validates while the others wait)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0  # global rank (RANK)
    size: int = 1  # number of processes (WORLD_SIZE)
    local_rank: int = 0  # rank on this machine (LOCAL_RANK): the CUDA device index
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where training runs

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


@dataclass
class _Step:
    """The training step running inside `parallel_step`: its rank holds no part of the batch when `empty`."""

    empty: bool = False


_WORLD = World()
_STEP: _Step | None = None


# --- process group ---


def env_rank() -> int:
    """RANK as torchrun sets it (0 without torchrun); readable before `setup` and after `teardown`."""
    return int(os.environ.get("RANK", "0"))


def setup(device: str = "cpu") -> World:
    """Join torchrun's process group (gloo for "cpu", NCCL for "cuda") or stay one process."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device(device)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=TIMEOUT)
    _WORLD = World(rank=rank, size=size, local_rank=local_rank, device=where)
    return _WORLD


def world() -> World:
    return _WORLD


def teardown() -> None:
    """Leave the process group (no collective: a rank that failed leaves at once, and torchrun stops the
    others) and become one process again."""
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache file), then the other ranks (which read it)."""
    if not _WORLD.is_main:
        barrier()
    yield
    if _WORLD.is_main:
        barrier()


# --- collectives on small values ---


def _all_reduce(values: Tensor, op: Any = None) -> Tensor:
    out = values.detach().to(_WORLD.device, torch.float64, copy=True)
    dist.all_reduce(out, op=op or dist.ReduceOp.SUM)
    return out.cpu()


def mean_over_ranks(value: float) -> float:
    """Mean of a number over the ranks (the logged global loss: each rank's loss is weighted so that the
    mean over ranks is the loss of the global batch)."""
    if not _WORLD.parallel:
        return value
    return float(_all_reduce(torch.tensor(value))) / _WORLD.size


def all_ranks(flag: bool) -> bool:
    """True when `flag` holds on every rank (one process: `flag`); a rank holding no part of the batch
    agrees. Inside a training step, to take a branch for the global batch on every rank alike."""
    if _STEP is None or not _WORLD.parallel:
        return flag
    return bool(_all_reduce(torch.tensor(float(flag or _STEP.empty)), dist.ReduceOp.MIN) > 0)


def gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (one process: `[obj]`)."""
    if not _WORLD.parallel:
        return [obj]
    out: list[Any] = [None] * _WORLD.size
    dist.all_gather_object(out, obj)
    return out


# --- the data-parallel step ---


def shard(batch: Sequence[T]) -> tuple[list[T], int]:
    """This rank's contiguous part of a global batch and its offset in it: rank r of N takes
    batch[r * n // N : (r + 1) * n // N]. Outside a parallel step: (the whole batch, 0).

    A rank whose part is empty (a global batch smaller than N, e.g. an epoch's last) gets the batch's
    first item with weight zero: it runs the same forward, backward and collectives and adds nothing.
    """
    if _STEP is None or not _WORLD.parallel:
        return list(batch), 0
    n = len(batch)
    start, stop = _WORLD.rank * n // _WORLD.size, (_WORLD.rank + 1) * n // _WORLD.size
    if start == stop:
        _STEP.empty = True
        return list(batch[:1]), 0
    return list(batch[start:stop]), start


def shard_mean(mean: Tensor, count: Tensor | int) -> Tensor:
    """`mean` over `count` units of this rank's part, weighted so that DDP's average over the ranks is the
    mean over the global batch's units: mean * count * N / (count summed over ranks). Outside a parallel
    step (one process, validation): `mean` unchanged. `mean` may be a vector with one count per entry;
    it must be finite where its count is 0 (that entry then adds nothing)."""
    if _STEP is None or not _WORLD.parallel:
        return mean
    local = torch.as_tensor(count, dtype=torch.float64).detach().cpu()
    if _STEP.empty:
        local = torch.zeros_like(local)
    total = _all_reduce(local)
    scale = torch.where(local > 0, local * _WORLD.size / total.clamp(min=1), torch.zeros_like(local))
    return mean * scale.to(mean.device, mean.dtype)


class _StepModule(nn.Module):
    """The trained model under DDP: its forward runs one step's loss, so DDP prepares the gradient
    all-reduce for everything the loss touched (the loss calls model methods, not only `forward`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, loss_at: StepFn, step: int) -> tuple[Tensor, dict[str, Any]]:
        global _STEP
        _STEP = _Step()
        try:
            return loss_at(step)
        finally:
            _STEP = None


def parallel_step(model: nn.Module, loss_at: StepFn, *, find_unused_parameters: bool = False) -> StepFn:
    """`loss_at` run as one data-parallel step of `model` (already on `world().device`): under DDP when
    there are several ranks, in bf16 autocast on CUDA. One process on CPU: `loss_at` itself.

    `find_unused_parameters`: True when a step may leave trainable parameters out (fine-tuning's tasks use
    one head each); their gradients then stay None, as in one process. Buffers are synchronised once, at
    construction (none of ours changes in training)."""
    cuda = _WORLD.device.type == "cuda"
    if not _WORLD.parallel and not cuda:
        return loss_at
    runner: nn.Module = _StepModule(model)
    if _WORLD.parallel:
        runner = nn.parallel.DistributedDataParallel(
            runner, device_ids=[_WORLD.local_rank] if cuda else None, forward_sync_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )  # fmt: skip

    def step_fn(step: int) -> tuple[Tensor, dict[str, Any]]:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
            return runner(loss_at, step)

    return step_fn
