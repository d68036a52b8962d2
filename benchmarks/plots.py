"""Plots of the saved benchmark figures (docs/bench/*.json -> docs/plots/bench_*.png); no timing here.

Run: python -m benchmarks.plots   (run_all calls it after merging)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness import BENCH_DIR, ROOT  # noqa: E402

PLOTS = ROOT / "docs" / "plots"


SOURCE = {"dir": BENCH_DIR, "prefix": "bench_"}  # where the reports are read, how the plots are named


def _rows(name: str, table: int = 0) -> list[dict] | None:
    path = SOURCE["dir"] / f"{name}.json"
    return json.loads(path.read_text())["tables"][table]["rows"] if path.is_file() else None


def worker() -> None:
    rows = _rows("worker")
    if rows is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for users in sorted({r["users"] for r in rows}):
        mine = [r for r in rows if r["users"] == users]
        n = [r["cached events n"] for r in mine]
        ax.plot(n, [r["incremental ms/user"] for r in mine], "o-", label=f"incremental, {users} users")
        ax.plot(n, [r["full ms/user"] for r in mine], "s--", label=f"full recompute, {users} users")
    ax.set(xlabel="cached events n", ylabel="median ms per user update", title="Encoder worker")
    ax.legend(fontsize=8)
    _save(fig, "worker.png")


def prompt_length() -> None:
    rows, flops = _rows("prompt_length"), _rows("prompt_length", 1)
    if rows is None or flops is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    styles = {"text prompt": "s--", "cross-attention": "o-", "soft prompt": "v-", "PPlug": "D-"}
    for mode, style in styles.items():
        timed = [r for r in rows if isinstance(r[f"{mode} ms"], (int, float))]
        left.plot([r["history N"] for r in timed], [r[f"{mode} ms"] for r in timed], style, label=mode)
        right.plot([r["history N"] for r in flops], [r[f"{mode} GFLOPs"] for r in flops], style, label=mode)
    left.plot([r["history N"] for r in rows], [r["cross-attention cache-miss ms"] for r in rows], "^:",
              label="cross-attention, tower re-run")  # fmt: skip
    axis = "history length N (events)"
    left.set(xlabel=axis, ylabel="median prefill ms", title="Prefill latency (measured)", yscale="log")
    right.set(xlabel=axis, ylabel="GFLOPs per request", title="Prefill FLOPs (analytic)", xscale="log",
              yscale="log")  # fmt: skip
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    _save(fig, "prompt_length.png")


def _save(fig, name: str) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    name = f"{SOURCE['prefix']}{name}"
    fig.savefig(PLOTS / name, dpi=120)
    plt.close(fig)
    print(f"wrote docs/plots/{name}")


def main(source: Path = BENCH_DIR, prefix: str = "bench_") -> list[str]:
    """Draw every plot whose report exists under `source` as docs/plots/<prefix><name>.png; returns
    the file names drawn."""
    SOURCE.update(dir=source, prefix=prefix)
    drawn = []
    for name, draw in (("worker", worker), ("prompt_length", prompt_length)):
        if _rows(name) is not None:
            draw()
            drawn.append(f"{prefix}{name}.png")
    return drawn


if __name__ == "__main__":
    main()
