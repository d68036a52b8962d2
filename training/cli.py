"""Command line of the offline side: `python -m training <command> --key=value ...`.

    python -m training pretrain-encoder --dataset=movielens-latest --out_dir=checkpoints/encoder
    python -m training pretrain-encoder --out_dir=checkpoints/encoder --resume --steps=4000
    python -m training finetune --encoder_dir=checkpoints/encoder --out_dir=checkpoints/userllm
    python -m training finetune --recipe=demo --encoder_dir=checkpoints/encoder --out_dir=checkpoints/userllm
    python -m training evaluate --checkpoint=checkpoints/encoder --out_dir=results/encoder
    python -m training text-check --checkpoint=checkpoints/userllm --out_dir=results/demo-text
    python -m training baselines --checkpoint=checkpoints/encoder --out_dir=results/baselines
    python -m training text-prompt --encoder_dir=checkpoints/encoder --out_dir=results/text-prompt
    python -m training results --inputs=results/ml-100k,results/ml-latest-small --out=docs/results.md
    python -m training compare --a=results/encoder --b=results/anchor --out_dir=results/compare

Under `torchrun --nproc_per_node=N -m training pretrain-encoder|finetune ...` the N processes train
data-parallel (training/distributed.py); rank 0 alone prints the summary.

`--recipe=NAME` applies a named recipe (training/recipes.py) before the other options. Every
`--key=value` is a field of the command's config dataclass (training/config.py), type-checked;
`--help` after a command lists the fields with their defaults. Errors go to stderr; exit code 2
(1: a check such as text-check failed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from training.config import (
    CheckFailed,
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    TextPromptConfig,
    TrainConfig,
)
from training.distributed import env_rank
from training.heap import keep_freed_memory
from training.overrides import option_lines
from training.recipes import recipes_for, resolve_config

__all__ = ["main"]


def _pretrain(cfg: Any) -> Any:
    from training.pretrain import main as run

    return run(cfg)


def _finetune(cfg: Any) -> Any:
    from training.finetune import main as run

    return run(cfg)


def _evaluate(cfg: Any) -> Any:
    from training.evaluate import main as run

    return run(cfg)


def _baselines(cfg: Any) -> Any:
    from training.baselines import main as run

    return run(cfg)


def _text_prompt(cfg: Any) -> Any:
    from training.text_prompt import main as run

    return run(cfg)


def _text_check(cfg: Any) -> Any:
    from training.text_check import main as run

    return run(cfg)


def _results(cfg: Any) -> Any:
    from training.results import main as run

    return run(cfg)


def _compare(cfg: Any) -> Any:
    from training.compare import main as run

    return run(cfg)


def _compare_config() -> Any:
    from training.compare import CompareConfig

    return CompareConfig()


def _results_config() -> Any:
    from training.results import ResultsConfig

    return ResultsConfig()


COMMANDS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any], str]] = {
    "pretrain-encoder": (
        TrainConfig,
        _pretrain,
        "self-supervised next-event pretraining of the user encoder",
    ),
    "finetune": (FinetuneConfig, _finetune, "train USER-LLM (encoder + Perceiver + LLM) on the tasks"),
    "evaluate": (EvalConfig, _evaluate, "next-item / favourite-genre / review metrics of a checkpoint"),
    "text-check": (
        EvalConfig,
        _text_check,
        "fluency and personalization of a USER-LLM checkpoint's text; exit 1 when a target is missed",
    ),
    "baselines": (EvalConfig, _baselines, "most-popular and sequence-only baselines on the same split"),
    "text-prompt": (
        TextPromptConfig,
        _text_prompt,
        "text-prompt baseline: the frozen backbone reads the history as text, heads on its features",
    ),
    "results": (_results_config, _results, "collect results JSON files into docs/results.md + plots"),
    "compare": (
        _compare_config,
        _compare,
        "paired comparison of two next-item runs on the same users (difference and 95% interval)",
    ),
}


def _help(name: str, config: Any) -> str:
    lines = [f"python -m training {name} [--key=value ...]: {COMMANDS[name][2]}", ""]
    lines += option_lines(config)
    recipes = recipes_for(name)
    if recipes:
        lines += ["", "recipes (--recipe=NAME, applied before the other options; training/recipes.py):"]
        lines += [f"  {r.name}: {r.about}" for r in recipes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        if args and args[0] not in ("-h", "--help"):
            print(f"error: unknown command {args[0]!r}", file=sys.stderr)
        print(__doc__, file=sys.stderr if args and args[0] not in ("-h", "--help") else sys.stdout)
        return 0 if args and args[0] in ("-h", "--help") else 2
    name, rest = args[0], args[1:]
    make_config, run, _ = COMMANDS[name]
    if any(a in ("-h", "--help") for a in rest):
        print(_help(name, make_config()))
        return 0
    keep_freed_memory()  # no mmap + page faults per large tensor (training/heap.py)
    try:
        cfg = resolve_config(name, make_config(), rest)
        summary = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"check FAILED: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if env_rank() == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0
