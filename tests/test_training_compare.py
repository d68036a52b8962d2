"""`python -m training compare`: two next-item runs paired user by user, computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from training.cli import main as cli
from training.compare import CompareConfig, main, paired_rows, per_user_gains
from training.config import ConfigError


def _row(model: str, users: list[str], all_items: list[int], excluded: list[int]) -> dict:
    return {"model": model, "next_item": {"users": len(users), "ranks": {
        "user": users, "all_items": all_items, "exclude_history": excluded}}}  # fmt: skip


def _write(path: Path, rows: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_per_user_gains_are_recall_hits_and_ndcg() -> None:
    gains = per_user_gains([0, 1, 9, 10, 500], k=10)
    assert gains["recall@10"] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert gains["ndcg@10"] == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0])


def test_paired_rows_match_the_users_and_bound_the_difference() -> None:
    users = [f"u{i}" for i in range(40)]
    a = _row("A", users, [0] * 20 + [50] * 20, [0] * 30 + [50] * 10)  # excl.: 30 hits at rank 0
    # B lists the same users in reverse order: pairing goes by user id, not by position
    b = _row("B", users[::-1], [50] * 40, [0] * 10 + [50] * 30)  # excl.: u30..u39 hit
    rows = {(r["protocol"], r["metric"]): r for r in paired_rows(a, b, k=10, samples=500, seed=1)}
    excl = rows[("exclude_history", "recall@10")]
    assert excl["a"] == pytest.approx(0.75) and excl["b"] == pytest.approx(0.25)
    assert excl["a_minus_b"] == pytest.approx(0.5) and excl["low"] <= 0.5 <= excl["high"]
    assert excl["low"] > 0 and excl["users"] == 40  # 20 users better in A, none worse: not noise
    everything = rows[("all_items", "ndcg@10")]
    assert everything["a"] == pytest.approx(0.5) and everything["b"] == 0.0
    same = paired_rows(a, a, k=10, samples=500, seed=1)
    assert all(r["a_minus_b"] == 0 and r["low"] == 0 == r["high"] for r in same)


def test_compare_writes_its_table_and_refuses_unmatched_runs(tmp_path: Path, capsys) -> None:
    users = ["a", "b", "c", "d"]
    one = _write(tmp_path / "one", [_row("ours", users, [0, 3, 20, 1], [0, 3, 20, 1])])
    two = _write(tmp_path / "two", [_row("anchor", users, [1, 30, 2, 0], [1, 30, 2, 0]), {"model": "x"}])
    main(CompareConfig(a=str(one), b=str(two / "results.json"), out_dir=str(tmp_path / "out")))
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| exclude_history | recall@10 | 0.7500 | 0.7500 | +0.0000 |" in table
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["a"] == "ours" and saved["b"] == "anchor" and len(saved["rows"]) == 4
    assert "A: ours" in capsys.readouterr().out
    other = _write(tmp_path / "other", [_row("other", ["a", "b", "c", "e"], [0] * 4, [0] * 4)])
    with pytest.raises(ConfigError, match="different users .*1 only in A, 1 only in B"):
        main(CompareConfig(a=str(one), b=str(other)))
    with pytest.raises(ConfigError, match="0 next-item rows 'nope' with per-user ranks, need one .*'anchor'"):
        main(CompareConfig(a=str(one), b=str(two), model_b="nope"))
    # the report's JSON (data set -> rows) serves as well, rows picked by name
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"toy": json.loads((one / "results.json").read_text()),
                                  "other": json.loads((two / "results.json").read_text())}))  # fmt: skip
    out = str(tmp_path / "r")
    main(CompareConfig(a=str(report), model_a="ours", b=str(report), model_b="anchor", out_dir=out))
    assert (tmp_path / "r" / "compare.md").read_text().startswith("A: ours")
    with pytest.raises(ConfigError, match="no results.json there"):
        main(CompareConfig(a=str(tmp_path / "missing"), b=str(two)))
    assert cli(["compare", f"--a={one}"]) == 2  # B missing: a clear error, exit 2
    assert "give both runs" in capsys.readouterr().err


def test_a_side_of_several_runs_is_averaged_per_user_before_pairing(tmp_path: Path, capsys) -> None:
    users = ["a", "b", "c", "d"]
    # A's two seeds hit (rank 0) users a, b and a, c; B's one run hits a, b, c
    seed_1 = _row("ours, seed 1", users, [0, 0, 50, 50], [0, 0, 50, 50])
    seed_2 = _row("ours, seed 2", users[::-1], [50, 0, 50, 0], [50, 0, 50, 0])  # d, c, b, a
    anchor = _row("anchor", users, [0, 0, 0, 50], [0, 0, 0, 50])
    rows = {(r["protocol"], r["metric"]): r for r in paired_rows([seed_1, seed_2], anchor, k=10,
                                                                  samples=500, seed=1)}  # fmt: skip
    hits = rows[("exclude_history", "recall@10")]
    assert hits["a"] == pytest.approx(0.5) and hits["b"] == pytest.approx(0.75)  # (2 + 2) / 8; 3 / 4
    assert hits["a_minus_b"] == pytest.approx(-0.25) and hits["users"] == 4
    # per user: a 1 - 1, b 0.5 - 1, c 0.5 - 1, d 0 - 0: the resampled means lie in [-0.5, 0]
    assert -0.5 <= hits["low"] <= hits["a_minus_b"] <= hits["high"] <= 0.0

    report = _write(tmp_path / "seeds", [seed_1, seed_2])
    other = _write(tmp_path / "anchor", [anchor])
    out = str(tmp_path / "out")
    main(CompareConfig(a=str(report), model_a="ours, seed 1; ours, seed 2", b=str(other), out_dir=out))
    saved = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert saved["runs_a"] == 2 and saved["a"] == "mean of 2 runs: ours, seed 1; ours, seed 2"
    assert "| exclude_history | recall@10 | 0.5000 | 0.7500 | -0.2500 |" in capsys.readouterr().out
    one = _write(tmp_path / "one", [seed_1])
    two = _write(tmp_path / "two", [seed_2])
    by_files = main(CompareConfig(a=f"{one},{two}", b=str(other)))  # one row per file, no names needed
    assert by_files["a"] == "mean of 2 runs: ours, seed 1; ours, seed 2"
    # an empty name picks that file's only row
    mixed = main(CompareConfig(a=f"{report},{two}", model_a="ours, seed 1;", b=str(other)))
    assert mixed["a"] == "mean of 2 runs: ours, seed 1; ours, seed 2"
    with pytest.raises(ConfigError, match="2 results files and 3 model names"):
        main(CompareConfig(a=f"{one},{two}", model_a="x;y;z", b=str(other)))
    with pytest.raises(ConfigError, match="no results file named"):
        main(CompareConfig(a=",", b=str(other)))
