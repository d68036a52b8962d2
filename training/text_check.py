"""`python -m training text-check`: does a USER-LLM checkpoint write fluent, personalized text?

Runs the text report of training/text_eval.py on the first `text_users` test users, prints the figures
and two samples per request (with the user, and cold start) and the targets missed, writes `text.json`
into `out_dir`, and fails (exit code 1) when the personalized text is degenerate: generic-text perplexity
ratio above 1.2, distinct-2 below 0.6, an empty sample, or more looping samples than the bare backbone
writes for the same requests (`text_eval.degenerate`). `make train-demo` ends with it.

    python -m training text-check --checkpoint=checkpoints/userllm --out_dir=results/demo-text
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.checkpoint import load_checkpoint
from training.config import CheckFailed, EvalConfig
from training.corpus import load_corpus_for
from training.evaluate import userllm_runner, userllm_text_report

__all__ = ["format_report", "main"]


def format_report(report: dict[str, Any], samples: int = 2) -> str:
    """The report as plain text: fluency, repetition and personalization per side, then samples."""
    flu = report["fluency"]
    lines = [
        f"text check on {report['users']} test users",
        f"  generic-text perplexity: with the user {flu['ppl_user']:.2f}, bare backbone {flu['ppl_bare']:.2f}"
        f" -> ratio {flu['ppl_ratio']:.3f} (target <= 1.2)",
    ]
    for side in ("user", "cold_start"):
        lines.append(f"  {side.replace('_', ' ')}:")
        for kind, rep in report[side]["repetition"].items():
            lines.append(
                f"    {kind:7s} distinct-2 {rep['distinct_2']:.3f}"
                f"  repeated 4-grams {rep['repeated_4gram_share']:.3f}"
                f"  looping {rep['looping']:.0%}  empty {rep['empty']:.0%}"
            )
        pers = report[side]["personalization"]
        lines.append("    " + "  ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in pers.items()))
    for kind, prompts in report["requests"].items():
        for i in range(min(samples, len(prompts))):
            lines.append(f"  [{kind}] {prompts[i]}")
            lines.append(f"    user:       {report['user']['samples'][kind][i][:240]!r}")
            lines.append(f"    cold start: {report['cold_start']['samples'][kind][i][:240]!r}")
    for kind, texts in report["user"].get("looping_samples", {}).items():
        lines += [f"  looping {kind} answer with the user: {t[:240]!r}" for t in texts]
    return "\n".join(lines)


def main(cfg: EvalConfig) -> dict[str, Any]:
    ck = load_checkpoint(cfg.checkpoint)
    if ck.manifest["kind"] != "userllm":
        raise ValueError(
            f"{cfg.checkpoint}: text-check needs a userllm checkpoint, not {ck.manifest['kind']!r}"
        )
    corpus = load_corpus_for(ck, cfg.dataset, cfg.path, category=cfg.category, max_users=cfg.max_users)
    runner = userllm_runner(ck, corpus)
    report = userllm_text_report(runner, corpus.examples(cfg.split), cfg.text_users)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "text.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_report(report))  # noqa: T201 - a CLI report
    if report["targets_missed"]:
        print("targets missed: " + "; ".join(report["targets_missed"]))  # noqa: T201
    if report["degenerate"]:
        raise CheckFailed("degenerate text: " + "; ".join(report["degenerate"]))
    return {"checkpoint": cfg.checkpoint, "text_json": str(out / "text.json"), "fluency": report["fluency"]}
