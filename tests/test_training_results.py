"""The results report: tables per data set and group, commands (evaluate, pretrain, finetune), plots."""

from __future__ import annotations

import json
from pathlib import Path

from training.results import ResultsConfig, main, plot_results, series_colors
from training.results_text import text_tables


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


def test_review_rows_get_a_review_table_with_samples_beside_the_reference(tmp_path: Path) -> None:
    def review(model: str, generated: str, **extra) -> dict:
        rep = {"distinct_2": 0.9, "repeated_4gram_share": 0.0, "looping": 0.0, "empty": 0.0, "samples": 2}
        samples = [{"user": "u1", "item": "i1", "generated": generated, "reference": "Bought as a gift."}]
        return _row(model, review={"rouge1": 0.2, "rougeL": 0.15, "examples": 2, "repetition": rep,
                                   "samples": samples}, **extra)  # fmt: skip

    rows = [
        review("USER-LLM", "Great gift.", text=None, fluency={"ppl_ratio": 1.05}),
        review("no user input", "I love this magazine | a lot.", baseline="no-user"),
    ]
    rows[0]["review"]["rougeL_by_example"] = {"u1 i1": 0.3, "u2 i2": 0.1}
    rows[1]["review"]["rougeL_by_example"] = {"u1 i1": 0.2, "u2 i2": 0.1, "u3 i3": 0.5}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(rows))
    out = tmp_path / "report.md"
    main(ResultsConfig(inputs=str(tmp_path / "a"), out=str(out), json_out=str(tmp_path / "all.json"),
                       plots_dir=str(tmp_path / "plots")))  # fmt: skip
    text = out.read_text().split("### Generated reviews")[1]
    # paired over the two shared examples: 0.4 / 0.3 - 1; every resample lies between +0% and +50%
    assert "| USER-LLM | 0.200 | 0.150 | 0.900 | 0.000 | 0% | 1.050 | +33.3% (+0.0% to +50.0%) |" in text
    assert "| no user input | 0.200 | 0.150 | 0.900 | 0.000 | 0% | - | - |" in text
    assert "| u1, i1 | Great gift. | I love this magazine \\| a lot. | Bought as a gift. |" in text


def test_every_model_of_a_chart_gets_its_own_colour() -> None:
    """matplotlib's default cycle repeats after 10 series: a 12-model chart showed two pairs of models in
    one colour each."""
    for n in (1, 10, 11, 12, 20, 21, 35):
        colors = series_colors(n)
        assert len(colors) == n and len(set(colors)) == n


def test_a_chart_of_many_long_model_names_cuts_none_of_them(tmp_path: Path) -> None:
    """The legend sits below the panels in two columns; names longer than half the figure's width ran
    off both sides of the image (the docs' ml-latest-small chart lost the start of every left-hand
    name). Nothing drawn may touch the image's edges: every border pixel is background."""
    import matplotlib.pyplot as plt

    names = [f"sequence-only: a long descriptive model name, row {i}, " + "options " * 8 for i in range(24)]
    path = plot_results([_row(name) for name in names], tmp_path)
    image = plt.imread(path)[..., :3]  # (H, W, 3) in [0, 1]
    for border in (image[0], image[-1], image[:, 0], image[:, -1]):
        assert border.min() > 0.95  # white: no label, bar or swatch cut at the edge


def test_json_text_keeps_lists_of_scalars_on_one_line_and_round_trips() -> None:
    from training.results import json_text

    obj = {"ranks": {"user": ["u1", "u 2", 'q"r'], "all_items": [0, 5, 1677]}, "lr": [1e-05, -0.5],
           "nested": [[1, 2], [3]], "empty": [], "text": ["a, b"],
           "sample": "scores [1,2] and [ 3 ]"}  # fmt: skip
    text = json_text(obj)
    assert json.loads(text) == obj and text.endswith("}\n")
    assert '"all_items": [0, 5, 1677]' in text and '"lr": [1e-05, -0.5]' in text
    assert '"text": ["a, b"]' in text  # a comma inside a string is not a separator
    assert '"user": [\n' in text  # a list with an escaped string keeps json.dumps's layout
    assert '"sample": "scores [1,2] and [ 3 ]"' in text  # text inside a string is never rewritten


def _text(kinds: tuple[str, ...], personalization: dict) -> dict:
    rep = {"distinct_2": 0.9, "looping": 0.0}
    side = {
        "repetition": {k: rep for k in kinds},
        "personalization": personalization,
        "samples": {k: [f"{k} answer"] for k in kinds},
    }
    return {"users": 1, "fluency": {"ppl_ratio": 1.01}, "user": side, "cold_start": side,
            "requests": {k: [f"{k} request"] for k in kinds}}  # fmt: skip


def test_text_tables_show_suggest_columns_and_a_dash_for_rows_measured_without_them() -> None:
    """A row with the grounded "suggest" request gets its figures; a row measured before it gets "-"."""
    old = _text(("chat", "review", "taste"), {"chat_names_title": 0.5})
    new = _text(("chat", "suggest", "review", "taste"), {"chat_names_title": 0.5, "suggest_names_item": 0.75,
                                                         "suggest_year_right": 1.0})  # fmt: skip
    lines = text_tables([_row("old", text=old), _row("new", text=new)])
    fluency = [line for line in lines if line.startswith("| model | side | ppl ratio")][0]
    assert "distinct-2 suggest" in fluency and "looping suggest" in fluency
    head = next(line for line in lines if "suggest names its item" in line).split(" | ")
    rows = {
        line.split(" | ")[0]: line.split(" | ")
        for line in lines
        if line.startswith(("| old | user", "| new | user"))
    }
    col = head.index("suggest names its item")
    assert rows["| old"][col] == "-" and rows["| new"][col] == "0.750"
    assert rows["| new"][head.index("suggest year right")] == "1.000"
    assert "| suggest request | suggest answer | suggest answer |" in lines
