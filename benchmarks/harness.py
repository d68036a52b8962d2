"""Shared benchmark harness: interleaved timing, medians, and the JSON + markdown report files.

Every benchmark times a candidate and its baseline in ONE process, interleaved (A B A B ...) and
repeated, and reports medians and the ratio: the machine is shared, so absolute times drift, but
drift hits both sides of a pair alike. A report records the exact command, the environment (torch
version and threads, CPU count, git commit) and the figures, and is written as
`docs/bench/<name>.json` + `docs/bench/<name>.md`; `benchmarks/run_all.py` merges them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("USERLLM_BENCH_DIR") or ROOT / "docs" / "bench")  # run_all --quick: its own
DATA_DIR = ROOT / "data" / "ml-latest-small"
BACKBONE_ENV = "USERLLM_BACKBONE_DIR"
DEFAULT_BACKBONE = Path.home() / ".cache" / "userllm" / "backbones" / "smollm2-135m-instruct"


# --- timing ---


def interleaved(
    cases: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run the cases in turn (A B A B ...), `repeats` rounds after `warmup` rounds; seconds per call."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server a benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def median_ms(samples: Sequence[float]) -> float:
    return 1000.0 * statistics.median(samples)


def iqr_ms(samples: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentile in ms: how noisy the median is."""
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return 1000.0 * q[0], 1000.0 * q[2]


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median of the per-round ratios slow/fast: each round's pair ran back to back."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


# --- environment ---

_THREADS_SET = False
_DEFAULT_THREADS = torch.get_num_threads()


def add_thread_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default, not set)"
    )


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op threads only when asked; the report says so."""
    global _THREADS_SET
    if threads is not None:
        torch.set_num_threads(threads)
        _THREADS_SET = True


def backbone_dir() -> Path:
    path = Path(os.environ.get(BACKBONE_ENV, DEFAULT_BACKBONE))
    if not (path / "config.json").is_file():
        sys.exit(f"no converted backbone in {path}: set {BACKBONE_ENV} (see README, `make backbone`)")
    return path


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_threads_set_by_benchmark": _THREADS_SET,
        "torch_default_threads": _DEFAULT_THREADS,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "git": git_commit(),
    }


def command() -> str:
    """The exact command line that is running, with the backbone env var when it is set."""
    prefix = f"{BACKBONE_ENV}={os.environ[BACKBONE_ENV]} " if BACKBONE_ENV in os.environ else ""
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    try:
        argv[0] = os.path.relpath(argv[0], Path.cwd()) if argv[0].startswith(str(ROOT)) else argv[0]
    except ValueError:
        pass
    return prefix + shlex.join(argv)


# --- report ---


@dataclass
class Table:
    title: str
    columns: list[str]  # keys of each row, in display order
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    """Figures of one benchmark, written as docs/bench/<name>.json and .md."""

    name: str
    title: str
    summary: str  # what is compared, in one paragraph
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "summary": self.summary,
            "command": command(),
            "date_utc": datetime.fromtimestamp(self.started, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "wall_seconds": round(time.time() - self.started, 1),
            "environment": environment(),
            "params": self.params,
            "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows} for t in self.tables],
            "notes": self.notes,
        }

    def markdown(self) -> str:
        d = self.to_dict()
        env = d["environment"]
        lines = [
            f"## {self.title}",
            "",
            self.summary,
            "",
            f"Command: `{d['command']}`  ",
            f"Run: {d['date_utc']} UTC, {d['wall_seconds']} s wall; git {env['git']}; torch {env['torch']}, "
            f"torch threads: {env['torch_threads']} ("
            + (
                f"set with --threads; torch default here: {env['torch_default_threads']}"
                if env["torch_threads_set_by_benchmark"]
                else "torch default, not set"
            )
            + f"), "
            f"{env['cpu_count']} CPUs ({env['machine']}, shared with other jobs).",
            "",
        ]
        for t in self.tables:
            lines += [f"**{t.title}**", "", _md_table(t.columns, t.rows), ""]
        if self.notes:
            lines += ["Notes:", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines)

    def save(self) -> tuple[Path, Path]:
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        json_path, md_path = BENCH_DIR / f"{self.name}.json", BENCH_DIR / f"{self.name}.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        md_path.write_text(self.markdown())
        print(self.markdown())
        print(f"wrote {_shown(json_path)} and {_shown(md_path)}")
        return json_path, md_path


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _md_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)
