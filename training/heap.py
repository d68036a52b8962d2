"""Keep freed memory in the process heap for the next step's tensors (glibc `mallopt`).

PyTorch's CPU allocator takes every tensor from `malloc`. glibc serves a block above its mmap threshold
(at most 32 MiB) with a fresh `mmap` and gives it back with `munmap` when the tensor is freed, so a
training step whose next-item logits are (predicted events x items) floats (6,272 x 9,742 = 244 MB on
ml-latest-small; the seen bias, the log-softmax and the gradients add more of that size) makes the
kernel map and zero-fill fresh pages for each of them, every step. Side by side on this 2-core machine
(`python -m benchmarks.bench_train_throughput`, docs/benchmarks.md, 2026-12-06): a pretraining step of
`ml-latest-d64-orth-fusion` took 1,128 ms with glibc's defaults and 532 ms with the settings below
(2.12x; a 20-step run 47.5 CPU-seconds, 19.6 of them system time, against 24.9), one of the d-128
encoder 1,396 ms against 857 (1.67x). How much it saves depends on what fresh pages cost on the host.
The heap grows over the first steps and stays: peak resident memory is higher (1.5 -> 2.3 GB on the
`ml-latest-d64-orth-fusion` recipe).

`keep_freed_memory` sets M_MMAP_MAX = 0 (every block from the heap, none mapped on its own) and
M_TRIM_THRESHOLD = 2 GiB - 1 (freed memory at the heap's top stays up to that size instead of going
back to the kernel), the same as starting the process with `MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2147483647`. Freed blocks are then reused step after step. It leaves the
allocator alone where the user set glibc's own variables (`MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_`
or `GLIBC_TUNABLES` naming either), so `MALLOC_MMAP_MAX_=65536` in the environment runs with glibc's
defaults, and where there is no glibc (macOS, musl, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping

__all__ = ["M_MMAP_MAX", "M_TRIM_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory", "user_tuned"]

M_TRIM_THRESHOLD = -1  # <malloc.h> parameter numbers
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt's int takes

_GLIBC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
_GLIBC_TUNABLES = ("glibc.malloc.mmap_max", "glibc.malloc.trim_threshold")


def user_tuned(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment sets glibc's mmap or trim settings itself (then they win)."""
    env = os.environ if environ is None else environ
    tunables = env.get("GLIBC_TUNABLES", "")
    return any(v in env for v in _GLIBC_VARIABLES) or any(t in tunables for t in _GLIBC_TUNABLES)


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Serve every allocation from the heap and keep freed memory there; True when both settings took.

    False, changing nothing, when the environment sets glibc's own variables or the C library has no
    `mallopt` (not glibc). Call it before the large tensors: blocks already mapped stay mapped.
    """
    if user_tuned(environ):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
