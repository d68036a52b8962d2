"""Pretraining throughput on this CPU: one process with all the threads, the same with glibc's default
heap, and data-parallel processes under torchrun (training/distributed.py, gloo) that split the
threads, on the same global batches.

Each run is the real command line, `python -m training pretrain-encoder` or the same under
`torchrun --nproc_per_node=2` (rendezvous on 127.0.0.1), with one config and seed: both cases train the
same steps on the same windows. The step time is read from the run's log.jsonl (`log_interval` 1: the
`ms` between consecutive log lines, i.e. the forward and backward on this rank's part, the gradient
all-reduce and the optimiser step), without the first `--skip` steps (warm-up) and the last (it
validates). The CPU time of a run (user + system, every process of it, start to exit) is the
children's rusage around it. The training CLI keeps freed memory in the heap (training/heap.py); the
case "glibc's default heap" runs the same command with `MALLOC_MMAP_MAX_=65536` (glibc's default) in
its environment, which the CLI leaves alone, so each large tensor is mapped and zero-filled afresh.
Events per step are counted exactly (the windows of the step's global batch, as `training/pretrain.py`
draws them); events/s = events / step time. The runs alternate (glibc's heap, 1 process, 2 processes,
glibc's heap, ...) `--repeats` times; medians, and the speed-up as the median of the per-round ratios
of the runs' median step times (glibc's default heap / the case).

Model: the ML-100K recipe's encoder (d=128, 2 layers, 4 heads, window 50, global batch 128) on the
vendored ml-latest-small; untrained at the start, as every pretraining run.

Run: python -m benchmarks.bench_train_throughput [--steps 20] [--repeats 3] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.harness import ROOT, Report, Table, add_thread_arg, free_port, iqr_ms, paired_ratio
from training.config import TrainConfig
from training.corpus import load_corpus
from training.data import sliding_windows
from training.recipes import resolve_config
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


@dataclass(frozen=True)
class Case:
    """One way to run the same training: ranks, torch threads per rank, extra environment."""

    processes: int
    threads: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunTimes:
    """One run: step number (1-based) -> seconds from its log; CPU seconds of all its processes."""

    steps: dict[int, float]
    user: float
    system: float


def one_run(case: Case, options: list[str]) -> RunTimes:
    """Train once and read the step times from the run's log."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        cmd = train_command(case.processes, case.threads, options, Path(tmp))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        env.update(OMP_NUM_THREADS=str(case.threads), **case.env)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            sys.exit(f"$ {' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        lines = (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()
    steps = {r["iter"]: r["ms"] / 1000.0 for r in map(json.loads, lines)}
    return RunTimes(steps, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)


def events_per_step(cfg: TrainConfig) -> list[int]:
    """Real events in each step's global batch, drawn as training/pretrain.py draws them."""
    corpus = load_corpus(cfg.dataset, cfg.path, max_users=cfg.max_users)
    windows = sliding_windows(corpus.splits.train, window=cfg.window, stride=cfg.stride)
    sizes = [len(w.events) for w in windows]
    steps = [batch_order(s, len(sizes), cfg.batch_size, cfg.seed) for s in range(cfg.steps)]
    return [sum(sizes[i] for i in batch) for batch in steps]


def measure(
    cases: dict[str, Case], options: list[str], events: list[int], timed: range, repeats: int, title: str
) -> tuple[Table, dict[str, list[RunTimes]]]:
    """Run the cases in turn `repeats` times on one configuration; their table (ratios over the first)."""
    runs: dict[str, list[RunTimes]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            runs[name].append(one_run(case, options))
            ms = 1000.0 * statistics.median(runs[name][-1].steps[s] for s in timed)
            print(f"{title[:40]}... | {name}: {ms:.1f} ms/step", flush=True)

    def step_times(name: str) -> list[float]:
        return [run.steps[s] for run in runs[name] for s in timed]

    def rates(name: str) -> list[float]:
        return [events[s - 1] / run.steps[s] for run in runs[name] for s in timed]

    per_run = {
        name: [statistics.median(run.steps[s] for s in timed) for run in rs] for name, rs in runs.items()
    }
    baseline = next(iter(cases))
    table = Table(
        title,
        ["case", "processes x torch threads", "median ms/step", "IQR ms", "events/s (median)",
         f"speed-up (over {baseline})", "CPU s per run (user + system)", "of which system"],
    )  # fmt: skip
    for name, case in cases.items():
        low, high = iqr_ms(step_times(name))
        table.rows.append({
            "case": name, "processes x torch threads": f"{case.processes} x {case.threads}",
            "median ms/step": 1000.0 * statistics.median(step_times(name)), "IQR ms": f"{low:.0f}-{high:.0f}",
            "events/s (median)": statistics.median(rates(name)),
            f"speed-up (over {baseline})": paired_ratio(per_run[baseline], per_run[name]),
            "CPU s per run (user + system)": statistics.median(r.user + r.system for r in runs[name]),
            "of which system": statistics.median(r.system for r in runs[name]),
        })  # fmt: skip
    return table, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per run")
    parser.add_argument("--skip", type=int, default=3, help="first steps of each run left out (warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per case")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (windows per step)")
    parser.add_argument("--d-model", type=int, default=128, help="encoder width")
    parser.add_argument("--layers", type=int, default=2, help="encoder blocks")
    parser.add_argument("--max-users", type=int, default=0, help="first N users of ml-latest-small (0 = all)")
    parser.add_argument(
        "--recipe", default="ml-latest-d64-orth-fusion",
        help="a pretrain-encoder recipe timed with glibc's heap and with reuse, 1 process ('' = none)",
    )  # fmt: skip
    add_thread_arg(parser)  # here: the torch threads of the one process (default: the CPUs), split by ranks
    args = parser.parse_args()
    if args.steps < args.skip + 2:
        sys.exit("--steps must leave at least one timed step after --skip and before the last")

    started = time.time()
    threads = args.threads or os.cpu_count() or 1
    run_values = dict(
        steps=args.steps, log_interval=1, eval_interval=args.steps, save_interval=args.steps, eval_users=64,
        progress=False,
    )  # fmt: skip
    values = dict(
        dataset="movielens-latest", max_users=args.max_users, window=50, stride=50,
        batch_size=args.batch_size, d_model=args.d_model, n_layers=args.layers, n_heads=4, **run_values,
    )  # fmt: skip
    options = [f"--{name}={value}" for name, value in values.items()]
    events = events_per_step(TrainConfig(**values))
    timed = range(args.skip + 1, args.steps)  # 1-based steps, the last (validation) left out
    glibc = "1 process, glibc's default heap"
    cases = {
        glibc: Case(1, threads, {"MALLOC_MMAP_MAX_": "65536"}),
        "1 process": Case(1, threads),
        "2 processes": Case(2, max(1, threads // 2)),
    }
    steps_title = f"Pretraining steps {args.skip + 1}-{args.steps - 1} of {args.steps}"
    table, runs = measure(
        cases, options, events, timed, args.repeats,
        f"{steps_title} (encoder d={args.d_model}, {args.layers} layers, global batch {args.batch_size} "
        f"windows of <= 50 events), {args.repeats} alternating runs per case",
    )  # fmt: skip
    tables = [table]
    recipe_runs: dict[str, list[RunTimes]] = {}
    recipe_options: list[str] = []
    if args.recipe:
        recipe_options = [f"--recipe={args.recipe}", "--epochs=0"]  # the recipe's epochs would set the steps
        recipe_options += [f"--{k}={v}" for k, v in run_values.items()]
        cfg = resolve_config("pretrain-encoder", TrainConfig(), recipe_options)
        recipe_cases = {glibc: cases[glibc], "1 process": cases["1 process"]}
        recipe_table, recipe_runs = measure(
            recipe_cases, recipe_options, events_per_step(cfg), timed, args.repeats,
            f"{steps_title} of the recipe `{args.recipe}` (d={cfg.d_model}, {cfg.n_layers} layers, global "
            f"batch {cfg.batch_size} windows of <= {cfg.window} events), {args.repeats} alternating runs "
            "per case",
        )  # fmt: skip
        tables.append(recipe_table)
    report = Report(
        name="train_throughput",
        title="Training throughput: glibc's heap vs reused memory, 1 process vs 2 data-parallel processes "
        "(torchrun, gloo) on this CPU",
        summary=(
            f"`python -m training pretrain-encoder` with {threads} torch threads, the same with glibc's "
            "default heap (`MALLOC_MMAP_MAX_=65536`: every large tensor mapped and zero-filled afresh; the "
            "CLI otherwise keeps freed memory for reuse, training/heap.py), and `torchrun "
            f"--nproc_per_node=2` with {max(1, threads // 2)} each (the same CPUs, the same global batch "
            "split 2 ways, the same steps and seed), on the vendored ml-latest-small; the second table times "
            "a named recipe's steps with either heap. Step time from the runs' logs (forward + backward, "
            "gradient all-reduce, optimiser step); events/s counts the real events of each step's global "
            "batch. Process start, data loading and validation are not timed; the CPU seconds are whole "
            "runs'."
        ),
        tables=tables,
        started=started,
    )
    report.params.update({
        "steps": args.steps, "skip": args.skip, "repeats": args.repeats, "batch_size": args.batch_size,
        "d_model": args.d_model, "n_layers": args.layers, "max_users": args.max_users, "threads": threads,
        "options": options, "events_per_step": events, "recipe": args.recipe,
        "recipe_options": recipe_options,
        "seconds_per_step": {name: [list(run.steps.values()) for run in rs] for name, rs in runs.items()},
        "cpu_seconds": {name: [[run.user, run.system] for run in rs] for name, rs in runs.items()},
        "recipe_seconds_per_step": {
            name: [list(run.steps.values()) for run in rs] for name, rs in recipe_runs.items()
        },
        "recipe_cpu_seconds": {
            name: [[run.user, run.system] for run in rs] for name, rs in recipe_runs.items()
        },
    })  # fmt: skip
    report.notes.extend([
        "The report's torch threads are the benchmark process's, which does not train: the runs' threads "
        "are in the table (OMP_NUM_THREADS and --threads of each run).",
        "Two processes do the same arithmetic as one (the global batch is split, DDP averages the gradients, "
        "tests/test_training_distributed.py checks the weights agree); what they change is how the work "
        "meets the cores: one intra-op thread pool of 2 threads vs 2 processes of 1 thread, plus a gloo "
        "all-reduce of the gradients every step.",
        "glibc's default heap: a block above the mmap threshold (at most 32 MiB) is mapped when allocated "
        "and unmapped when freed, so each step's next-item logits (predicted events x 9,742 items), their "
        "log-softmax and their gradients come back as fresh pages the kernel zero-fills: the system time "
        "column. Reused, the heap grows over the first steps and stays (peak resident memory higher).",
    ])  # fmt: skip
    report.save()


if __name__ == "__main__":
    main()
