"""Pretraining throughput on this CPU: one process with all the threads against data-parallel processes
under torchrun (training/distributed.py, gloo) that split the threads, on the same global batches.

Each run is the real command line, `python -m training pretrain-encoder` or the same under
`torchrun --nproc_per_node=2` (rendezvous on 127.0.0.1), with one config and seed: both cases train the
same steps on the same windows. The step time is read from the run's log.jsonl (`log_interval` 1: the
`ms` between consecutive log lines, i.e. the forward and backward on this rank's part, the gradient
all-reduce and the optimiser step), without the first `--skip` steps (warm-up) and the last (it
validates). Events per step are counted exactly (the windows of the step's global batch, as
`training/pretrain.py` draws them); events/s = events / step time. The runs alternate (1 process,
2 processes, 1, 2, ...) `--repeats` times; medians, and the speed-up as the median of the per-round
ratios of the runs' median step times.

Model: the ML-100K recipe's encoder (d=128, 2 layers, 4 heads, window 50, global batch 128) on the
vendored ml-latest-small; untrained at the start, as every pretraining run.

Run: python -m benchmarks.bench_train_throughput [--steps 20] [--repeats 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import ROOT, Report, Table, add_thread_arg, free_port, iqr_ms, paired_ratio
from training.config import TrainConfig
from training.corpus import load_corpus
from training.data import sliding_windows
from training.window_sampler import batch_order


def train_command(processes: int, threads: int, options: list[str], out: Path) -> list[str]:
    """The pretraining command line of one run: `processes` ranks of `threads` torch threads each."""
    cli = [
        "-m", "training", "pretrain-encoder", *options, f"--threads={threads}",
        f"--out_dir={out / 'encoder'}", f"--run_dir={out / 'run'}",
    ]  # fmt: skip
    if processes == 1:
        return [sys.executable, *cli]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", *cli,
    ]  # fmt: skip


def one_run(processes: int, threads: int, options: list[str]) -> dict[int, float]:
    """Train once; step number (1-based) -> seconds, from the run's log."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cmd = train_command(processes, threads, options, Path(tmp))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"$ {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        lines = (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()
    return {r["iter"]: r["ms"] / 1000.0 for r in map(json.loads, lines)}


def events_per_step(cfg: TrainConfig) -> list[int]:
    """Real events in each step's global batch, drawn as training/pretrain.py draws them."""
    corpus = load_corpus(cfg.dataset, cfg.path, max_users=cfg.max_users)
    windows = sliding_windows(corpus.splits.train, window=cfg.window, stride=cfg.stride)
    sizes = [len(w.events) for w in windows]
    steps = [batch_order(s, len(sizes), cfg.batch_size, cfg.seed) for s in range(cfg.steps)]
    return [sum(sizes[i] for i in batch) for batch in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each run left out (warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per case")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (windows per step)")
    parser.add_argument("--d-model", type=int, default=128, help="encoder width")
    parser.add_argument("--layers", type=int, default=2, help="encoder blocks")
    parser.add_argument("--max-users", type=int, default=0, help="first N users of ml-latest-small (0 = all)")
    add_thread_arg(parser)  # here: the torch threads of the one process (default: the CPUs), split by ranks
    args = parser.parse_args()
    if args.steps < args.skip + 2:
        sys.exit("--steps must leave at least one timed step after --skip and before the last")

    started = time.time()
    threads = args.threads or os.cpu_count() or 1
    values = dict(
        dataset="movielens-latest", max_users=args.max_users, window=50, stride=50, steps=args.steps,
        batch_size=args.batch_size, d_model=args.d_model, n_layers=args.layers, n_heads=4,
        log_interval=1, eval_interval=args.steps, save_interval=args.steps, eval_users=64, progress=False,
    )  # fmt: skip
    options = [f"--{name}={value}" for name, value in values.items()]
    events = events_per_step(TrainConfig(**values))
    timed = range(args.skip + 1, args.steps)  # 1-based steps, the last (validation) left out
    cases = {"1 process": (1, threads), "2 processes": (2, max(1, threads // 2))}
    runs: dict[str, list[dict[int, float]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (processes, per_rank) in cases.items():
            runs[name].append(one_run(processes, per_rank, options))
            ms = 1000.0 * statistics.median(runs[name][-1][s] for s in timed)
            print(f"{name}: {ms:.1f} ms/step", flush=True)

    def step_times(name: str) -> list[float]:
        return [run[s] for run in runs[name] for s in timed]

    def rates(name: str) -> list[float]:
        return [events[s - 1] / run[s] for run in runs[name] for s in timed]

    per_run = {name: [statistics.median(run[s] for s in timed) for run in rs] for name, rs in runs.items()}
    speedup = paired_ratio(per_run["1 process"], per_run["2 processes"])
    table = Table(
        f"Pretraining steps {args.skip + 1}-{args.steps - 1} of {args.steps} (global batch {args.batch_size} "
        f"windows of <= 50 events), {args.repeats} alternating runs per case",
        ["case", "processes x torch threads", "median ms/step", "IQR ms", "events/s (median)",
         "speed-up (over 1 process)"],
    )  # fmt: skip
    for name, (processes, per_rank) in cases.items():
        low, high = iqr_ms(step_times(name))
        table.rows.append({
            "case": name, "processes x torch threads": f"{processes} x {per_rank}",
            "median ms/step": 1000.0 * statistics.median(step_times(name)), "IQR ms": f"{low:.0f}-{high:.0f}",
            "events/s (median)": statistics.median(rates(name)),
            "speed-up (over 1 process)": 1.0 if processes == 1 else speedup,
        })  # fmt: skip
    report = Report(
        name="train_throughput",
        title="Training throughput: 1 process vs 2 data-parallel processes (torchrun, gloo) on this CPU",
        summary=(
            f"`python -m training pretrain-encoder` with {threads} torch threads against `torchrun "
            f"--nproc_per_node=2` with {max(1, threads // 2)} each (the same CPUs, the same global batch of "
            f"{args.batch_size} windows split 2 ways, the same steps and seed), encoder d={args.d_model}, "
            f"{args.layers} layers, window 50, on the vendored ml-latest-small. Step time from the runs' "
            "logs (forward + backward, gradient all-reduce, optimiser step); events/s counts the real events "
            "of each step's global batch. Process start, data loading and validation are not timed."
        ),
        tables=[table],
        started=started,
    )
    report.params.update({
        "steps": args.steps, "skip": args.skip, "repeats": args.repeats, "batch_size": args.batch_size,
        "d_model": args.d_model, "n_layers": args.layers, "max_users": args.max_users, "threads": threads,
        "options": options, "events_per_step": events,
        "seconds_per_step": {name: [list(run.values()) for run in rs] for name, rs in runs.items()},
    })  # fmt: skip
    report.notes.extend([
        "The report's torch threads are the benchmark process's, which does not train: the runs' threads "
        "are in the table (OMP_NUM_THREADS and --threads of each run).",
        "Two processes do the same arithmetic as one (the global batch is split, DDP averages the gradients, "
        "tests/test_training_distributed.py checks the weights agree); what they change is how the work "
        "meets the cores: one intra-op thread pool of 2 threads vs 2 processes of 1 thread, plus a gloo "
        "all-reduce of the gradients every step.",
    ])  # fmt: skip
    report.save()


if __name__ == "__main__":
    main()
