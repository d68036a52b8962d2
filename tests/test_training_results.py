"""The results report: tables per data set and group, commands (evaluate, pretrain, finetune), plots."""

from __future__ import annotations

import json
from pathlib import Path

from training.results import ResultsConfig, main


def _row(model: str, group: str = "", **extra) -> dict:
    metrics = {"recall@10": 0.1, "ndcg@10": 0.05}
    return {
        "model": model, "dataset": "movielens-100k", "group": group,
        "command": f"python -m training evaluate --label={model}",
        "next_item": {"users": 3, "unknown_targets": 0, "all_items": metrics, "exclude_history": metrics},
        **extra,
    }  # fmt: skip


def test_groups_get_their_own_tables_and_commands(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    finetune = {"steps": 1200, "distill": 0.5, "resume": False, "dataset": "movielens-100k"}
    (tmp_path / "a" / "results.json").write_text(json.dumps([_row("main model", finetune_config=finetune)]))
    (tmp_path / "b" / "results.json").write_text(json.dumps([_row("an ablation", "ablations")]))
    out = tmp_path / "report.md"
    cfg = ResultsConfig(inputs=str(tmp_path), out=str(out), json_out=str(tmp_path / "all.json"),
                        plots_dir=str(tmp_path / "plots"))  # fmt: skip
    summary = main(cfg)
    assert summary["datasets"] == ["movielens-100k", "movielens-100k: ablations"]
    text = out.read_text()
    main_part, ablation_part = text.split("## movielens-100k: ablations")
    assert "| main model |" in main_part and "an ablation" not in main_part.split("Commands:")[0]
    assert "| an ablation |" in ablation_part
    assert "python -m training finetune --steps=1200 --distill=0.5 --dataset=movielens-100k" in main_part
    assert (tmp_path / "plots" / "movielens-100k-ablations-next_item.png").is_file()


def test_a_previous_report_is_an_input_and_rows_re_run_first_replace_its_rows(tmp_path: Path) -> None:
    old = tmp_path / "report.json"
    old.write_text(json.dumps({
        "movielens-100k": [_row("kept model"), _row("re-run model", extra_note="old")],
        "movielens-100k: ablations": [_row("old ablation", "ablations")],
    }))  # fmt: skip
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "results.json").write_text(json.dumps([_row("re-run model", extra_note="new")]))
    plot = tmp_path / "plots" / "earlier-run-loss.png"
    plot.parent.mkdir()
    plot.write_bytes(b"\x89PNG")
    out = tmp_path / "report.md"
    cfg = ResultsConfig(inputs=f"{tmp_path / 'new'},{old}", out=str(out), json_out=str(old),
                        plots_dir=str(tmp_path / "plots"), logs=str(plot))  # fmt: skip
    main(cfg)
    merged = json.loads(old.read_text())
    assert [r["model"] for r in merged["movielens-100k"]] == ["re-run model", "kept model"]
    assert merged["movielens-100k"][0]["extra_note"] == "new"
    assert [r["model"] for r in merged["movielens-100k: ablations"]] == ["old ablation"]
    assert "![earlier-run](plots/earlier-run-loss.png)" in out.read_text()
