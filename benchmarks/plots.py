"""Plots of the saved benchmark figures (docs/bench/*.json -> docs/plots/bench_*.png); no timing here.

Run: python -m benchmarks.plots   (run_all calls it after merging)
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.harness import BENCH_DIR, ROOT  # noqa: E402

PLOTS = ROOT / "docs" / "plots"


def _rows(name: str, table: int = 0) -> list[dict] | None:
    path = BENCH_DIR / f"{name}.json"
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
    _save(fig, "bench_worker.png")


def prompt_length() -> None:
    rows = _rows("prompt_length")
    if rows is None:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    n = [r["history N"] for r in rows]
    ax.plot(n, [r["text ms"] for r in rows], "s--", label="text-prompt history")
    ax.plot(n, [r["USER-LLM ms"] for r in rows], "o-", label="USER-LLM (cached user tokens)")
    ax.plot(n, [r["USER-LLM cache-miss ms"] for r in rows], "^:", label="USER-LLM, tower re-run")
    ax.set(xlabel="history length N (events)", ylabel="median prefill ms", title="Prefill vs history")
    ax.legend(fontsize=8)
    _save(fig, "bench_prompt_length.png")


def _save(fig, name: str) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(PLOTS / name, dpi=120)
    plt.close(fig)
    print(f"wrote docs/plots/{name}")


def main() -> None:
    worker()
    prompt_length()


if __name__ == "__main__":
    main()
