"""Paired comparison of two next-item runs on the same test users: is a difference more than noise?

With a few hundred test users one Recall@10 near 0.1 has a standard error of about 0.01, so two runs'
means alone cannot tell a 0.01 difference from chance. Both runs' results.json keep each user's target
rank (`evaluate_next_item`'s `ranks`: `evaluate`, `baselines` and `scripts/sasrec_anchor.py` write
them); this pairs the users, turns each rank into its Recall@K hit and NDCG@K gain, and gives the mean
difference A - B with a 95% paired-bootstrap interval (`training.metrics.paired_bootstrap`, resampling
users). An interval that holds 0 says the two runs are not told apart on these users.

A side may be several runs (seeds of one recipe): `--a=FILE[,FILE...]` and `--model_a=NAME[;NAME...]`
(one file for several names, or one name or none for several files). Each user's hit and gain are
then averaged over that side's runs before the users are paired and resampled, so the interval is of
the difference of the seed means on these users: the seeds' own spread is in it, the users' too.

    python -m training compare --a=results/ours --b=results/anchor --model_b="anchor: SASRec+ ..." \\
        --out_dir=results/compare
    python -m training compare --a=docs/results.json --model_a=NAME --b=docs/results.json --model_b=NAME
    python -m training compare --a=docs/results.json --model_a="SEED 1;SEED 2" --b=s1,s2

Prints a markdown table and, with `--out_dir`, writes it (compare.md) and compare.json with the command.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.config import ConfigError
from training.evaluate import PROTOCOLS, command_line
from training.metrics import paired_bootstrap

__all__ = ["CompareConfig", "main", "paired_rows", "per_user_gains"]


@dataclass(frozen=True)
class CompareConfig:
    """Two runs, or two groups of runs (a results.json file or its folder, and a model name when the
    file holds several rows; several of either for a group)."""

    a: str = ""  # results.json (or its folder) of run A; several separated by ","
    b: str = ""  # results.json (or its folder) of run B, likewise
    model_a: str = ""  # the row of A by its "model" name ("" = the file's only next-item row with ranks);
    # several separated by ";"
    model_b: str = ""  # the row of B, likewise
    k: int = 10  # cut-off of Recall@K and NDCG@K
    samples: int = 2000  # bootstrap resamples of the users
    seed: int = 0  # seeds the resampling
    out_dir: str = ""  # "" = print only; else compare.json + compare.md here

    def __post_init__(self) -> None:
        if self.k < 1 or self.samples < 100:
            raise ConfigError(f"need k >= 1 and samples >= 100, got k={self.k}, samples={self.samples}")


def _row(where: str, model: str) -> dict[str, Any]:
    """The next-item row named `model` (or the only one with per-user ranks) of a results.json, or of
    the report's JSON (`results --json_out`: data set -> rows)."""
    path = Path(where)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"{where}: no results.json there")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    if isinstance(rows, dict):  # the report's JSON: its sections' rows
        rows = [row for section in rows.values() if isinstance(section, list) for row in section]
    ranked = [r for r in rows if isinstance(r, dict) and "ranks" in (r.get("next_item") or {})]
    if model:
        named = [r for r in ranked if r.get("model") == model]
        if len(named) != 1:
            names = ", ".join(repr(r.get("model")) for r in ranked) or "none"
            raise ConfigError(
                f"{path}: {len(named)} next-item rows {model!r} with per-user ranks, need one "
                f"(rows with ranks: {names})"
            )
        return named[0]
    if len(ranked) != 1:
        names = ", ".join(repr(r.get("model")) for r in ranked) or "none"
        raise ConfigError(f"{path}: {len(ranked)} next-item rows with per-user ranks ({names}); name one")
    return ranked[0]


def _rows(where: str, models: str) -> list[dict[str, Any]]:
    """The runs of one side: `where` holds files separated by ",", `models` names separated by ";" (an
    empty name: that file's only ranked row); one file serves every name, and one name (or none) every
    file."""
    paths = [part.strip() for part in where.split(",") if part.strip()]
    names = [part.strip() for part in models.split(";")] if models.strip() else [""]
    if not paths:
        raise ConfigError(f"{where!r}: no results file named")
    if len(paths) > 1 and len(names) > 1 and len(paths) != len(names):
        raise ConfigError(f"{len(paths)} results files and {len(names)} model names: give one of either, "
                          "or as many of each")  # fmt: skip
    count = max(len(paths), len(names))
    return [_row(paths[min(i, len(paths) - 1)], names[min(i, len(names) - 1)]) for i in range(count)]


def per_user_gains(ranks: list[int], k: int) -> dict[str, list[float]]:
    """Each user's Recall@k hit and NDCG@k gain from its 0-based target rank (`ranking_metrics` per user)."""
    return {
        f"recall@{k}": [1.0 if r < k else 0.0 for r in ranks],
        f"ndcg@{k}": [1.0 / math.log2(r + 2) if r < k else 0.0 for r in ranks],
    }


def _same_users(users_a: list[str], users_b: list[str]) -> None:
    if sorted(users_a) != sorted(users_b):
        only_a, only_b = set(users_a) - set(users_b), set(users_b) - set(users_a)
        raise ConfigError(
            f"the runs scored different users ({len(users_a)} and {len(users_b)}; {len(only_a)} only in A, "
            f"{len(only_b)} only in B): compare runs on the same split of the same data"
        )


def _mean_gains(
    runs: Sequence[dict[str, Any]], users: list[str], protocol: str, k: int
) -> dict[str, list[float]]:
    """Each user's (in `users` order) Recall@k hit and NDCG@k gain averaged over `runs`."""
    total: dict[str, list[float]] = {}
    for run in runs:
        ranks = run["next_item"]["ranks"]
        order = {user: i for i, user in enumerate(ranks["user"])}
        for metric, values in per_user_gains([ranks[protocol][order[u]] for u in users], k).items():
            sums = total.get(metric, [0.0] * len(users))
            total[metric] = [t + v for t, v in zip(sums, values, strict=True)]
    return {metric: [v / len(runs) for v in values] for metric, values in total.items()}


def paired_rows(
    a: dict[str, Any] | Sequence[dict[str, Any]], b: dict[str, Any] | Sequence[dict[str, Any]], *, k: int,
    samples: int, seed: int,
) -> list[dict]:  # fmt: skip
    """Per protocol and metric: mean of A, mean of B, A - B and its 95% interval over the shared users.
    A side may be several runs (its users' gains averaged over them). Every run must have scored the
    same users (the same split of the same data)."""
    runs_a = [a] if isinstance(a, dict) else list(a)
    runs_b = [b] if isinstance(b, dict) else list(b)
    users = runs_a[0]["next_item"]["ranks"]["user"]
    for run in [*runs_a[1:], *runs_b]:
        _same_users(users, run["next_item"]["ranks"]["user"])
    rows = []
    for protocol in PROTOCOLS:
        gains_a = _mean_gains(runs_a, users, protocol, k)
        gains_b = _mean_gains(runs_b, users, protocol, k)
        for metric, values_a in gains_a.items():
            values_b = gains_b[metric]
            diff = paired_bootstrap(values_a, values_b, samples=samples, seed=seed, relative=False)
            rows.append({
                "protocol": protocol, "metric": metric, "a": sum(values_a) / len(values_a),
                "b": sum(values_b) / len(values_b), "a_minus_b": diff["gain"], "low": diff["low"],
                "high": diff["high"], "users": diff["examples"],
            })  # fmt: skip
    return rows


def markdown(rows: list[dict], name_a: str, name_b: str) -> str:
    """The table, headed by the two sides' names (a group's names joined by "; ", averaged per user)."""
    lines = [
        f"A: {name_a}  \nB: {name_b}", "",
        "| protocol | metric | A | B | A - B | 95% interval (paired bootstrap) | users |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['protocol']} | {r['metric']} | {r['a']:.4f} | {r['b']:.4f} | {r['a_minus_b']:+.4f} | "
            f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['users']} |"
        )
    return "\n".join(lines)


def _side_name(runs: list[dict[str, Any]], where: str) -> str:
    names = [str(run.get("model", where)) for run in runs]
    return names[0] if len(names) == 1 else f"mean of {len(names)} runs: " + "; ".join(names)


def main(cfg: CompareConfig) -> dict[str, Any]:
    if not cfg.a or not cfg.b:
        raise ConfigError("give both runs: --a=RESULTS --b=RESULTS (results.json files or their folders)")
    runs_a, runs_b = _rows(cfg.a, cfg.model_a), _rows(cfg.b, cfg.model_b)
    rows = paired_rows(runs_a, runs_b, k=cfg.k, samples=cfg.samples, seed=cfg.seed)
    name_a, name_b = (_side_name(runs, where) for runs, where in ((runs_a, cfg.a), (runs_b, cfg.b)))
    table = markdown(rows, name_a, name_b)
    print(table)  # noqa: T201 - a CLI report
    summary: dict[str, Any] = {
        "a": name_a, "b": name_b, "rows": rows, "config": asdict(cfg), "command": command_line(),
        "runs_a": len(runs_a), "runs_b": len(runs_b),
    }  # fmt: skip
    if cfg.out_dir:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (out / "compare.md").write_text(f"{table}\n\n`{summary['command']}`\n", encoding="utf-8")
    return {"a": summary["a"], "b": summary["b"], "out_dir": cfg.out_dir}
