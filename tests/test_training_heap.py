"""training/heap.py: freed tensors' memory is reused (no fresh pages per step), glibc's own settings win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.heap import keep_freed_memory, user_tuned

ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB tensor 12 times (the heap grows for the first few rounds, until freed
# blocks coalesce into one that fits), then 5 more, and reports those 5 rounds' minor page faults: with
# glibc's defaults each round maps fresh pages (16,384 of 4 KiB); reusing the heap maps none.
_PROBE = """
import json, resource, sys, torch
from training.heap import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "reuse" else False
for _ in range(12):
    torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(16 * 2**20).sum()
print(json.dumps({"took": took, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
        check=True, timeout=120,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_instead_of_mapped_again() -> None:
    default, reuse = _probe("default"), _probe("reuse")
    assert reuse["took"] is True
    pages = 5 * 16 * 2**20 * 4 // os.sysconf("SC_PAGE_SIZE")
    assert default["faults"] >= pages // 2, default  # glibc maps (and the kernel zero-fills) every round
    assert reuse["faults"] < pages // 20, reuse


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_glibc_variables_in_the_environment_win() -> None:
    kept = _probe("reuse", MALLOC_MMAP_MAX_="65536")
    assert kept["took"] is False
    assert kept["faults"] >= 5 * 16 * 2**20 * 4 // os.sysconf("SC_PAGE_SIZE") // 2


def test_user_tuned_reads_glibc_variables_and_tunables() -> None:
    assert not user_tuned({})
    assert not user_tuned({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"})
    assert user_tuned({"MALLOC_MMAP_MAX_": "0"})
    assert user_tuned({"MALLOC_TRIM_THRESHOLD_": "1"})
    assert user_tuned({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"})
    assert keep_freed_memory({"MALLOC_MMAP_MAX_": "65536"}) is False  # changes nothing
