"""Generation tables of the results report: fluency, personalization and samples of each USER-LLM row
that carries a text report (`evaluate` / `text-check`, training/text_eval.py), and the review table of
the rows that generated reviews (ROUGE, repetition, generic-text perplexity ratio, samples side by side
with the reference).

Fluency: generic-text perplexity with the user's tokens / the bare backbone's; distinct-2 and the share
of looping samples of the chat, suggest, review and taste answers. Personalization: taste answers that
name the favourite category first, chat suggestions that name a catalogue title, the held-out next item,
a title of the favourite category; of the suggestions that state them, the share with the title's year,
the item's genres and the user's favourite genres right; the same for the grounded "suggest" answers
(given the item the next-item head ranks first), and the share that name that item ("-": none states
them, or a row measured before these checks). Both with the user and at cold start (the same
checkpoint, no user).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["review_tables", "text_tables"]

KINDS = ("chat", "suggest", "review", "taste")
PERSONALIZATION = {
    "taste_names_favourite": "taste names fav. genre",
    "chat_names_title": "chat names a title",
    "chat_title_is_next_item": "title = next item",
    "chat_distinct_titles": "distinct titles / users",
    "chat_title_in_favourite": "title in fav. genre",
    "chat_year_right": "year right",
    "chat_genres_right": "genres right",
    "chat_reason_right": "reason right",
    "suggest_names_item": "suggest names its item",
    "suggest_year_right": "suggest year right",
    "suggest_genres_right": "suggest genres right",
    "suggest_reason_right": "suggest reason right",
}


def _f(value: float) -> str:
    return f"{value:.3f}"


def _quote(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "(empty)"


def text_tables(rows: Sequence[dict[str, Any]], samples: int = 5) -> list[str]:
    """Markdown lines: the fluency and personalization tables and the samples ([] without text rows)."""
    rows = [r for r in rows if r.get("text")]
    if not rows:
        return []
    head = (
        ["model", "side", "ppl ratio"] + [f"distinct-2 {k}" for k in KINDS] + [f"looping {k}" for k in KINDS]
    )
    lines = ["### Generated text: fluency", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        text = row["text"]
        for side in ("user", "cold_start"):
            rep = text[side]["repetition"]
            ratio = _f(text["fluency"]["ppl_ratio"]) if side == "user" else "1 (bare)"
            cells = [row["model"], side.replace("_", " "), ratio]
            cells += [_f(rep[k]["distinct_2"]) if k in rep else "-" for k in KINDS]
            cells += [f"{rep[k]['looping']:.0%}" if k in rep else "-" for k in KINDS]
            lines.append("| " + " | ".join(cells) + " |")
    users = rows[0]["text"]["users"]
    lines += [
        "",
        f"Greedy answers of {users} test users; targets: ratio <= 1.2, distinct-2 >= 0.6, no loop.",
        "",
    ]
    head = ["model", "side", *PERSONALIZATION.values()]
    lines += [
        "### Generated text: personalization",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        for side in ("user", "cold_start"):
            pers = row["text"][side]["personalization"]
            values = [_f(pers[k]) if pers.get(k) is not None else "-" for k in PERSONALIZATION]
            cells = [row["model"], side.replace("_", " "), *values]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Year, genres and reason right: of the suggestions stating them, the share stated right against the "
        "catalogue and the user's three most frequent genres; \"-\": no suggestion states them, or the row "
        "was measured before the check. \"suggest\": the service's grounded request, given the item the "
        "next-item head ranks first (history excluded); its facts are checked against that item.",
        "",
        "### Generated text: samples",
        "",
    ]
    for row in rows:
        text = row["text"]
        lines += [f"**{row['model']}**", "", "| request | with the user | cold start |", "|---|---|---|"]
        for kind in KINDS:
            for i, request in enumerate(text["requests"].get(kind, [])[:samples]):
                user, cold = text["user"]["samples"][kind][i], text["cold_start"]["samples"][kind][i]
                lines.append(f"| {_quote(request, 80)} | {_quote(user)} | {_quote(cold)} |")
        lines.append("")
    return lines


def review_tables(rows: Sequence[dict[str, Any]], samples: int = 5) -> list[str]:
    """Markdown lines: one row per model that generated reviews (with its ROUGE-L gain over the row
    marked `"baseline": "no-user"`, paired over the same examples, when there is one), then the first
    `samples` reviews of every model beside the user's real one ([] without review rows)."""
    rows = [r for r in rows if r.get("review")]
    if not rows:
        return []
    base = next((r for r in rows if r.get("baseline") == "no-user"), None)  # the paired comparison's base
    head = ["model", "ROUGE-1", "ROUGE-L", "distinct-2", "repeated 4-gram share", "looping", "ppl ratio"]
    head += ["ROUGE-L vs no user input (95% CI)"] if base else []
    lines = ["### Generated reviews", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        review = row["review"]
        rep = review.get("repetition") or {}
        fluency = (row.get("text") or {}).get("fluency") or row.get("fluency") or {}
        cells = [row["model"], _f(review["rouge1"]), _f(review["rougeL"])]
        cells += [_f(rep[k]) if k in rep else "-" for k in ("distinct_2", "repeated_4gram_share")]
        cells += [f"{rep['looping']:.0%}" if "looping" in rep else "-"]
        cells += [_f(fluency["ppl_ratio"]) if "ppl_ratio" in fluency else "-"]
        cells += [_gain(row, base)] if base else []
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Greedy reviews of {rows[0]['review']['examples']} test users (48 new tokens at most, the service's "
        "repetition penalty); ppl ratio: held-out generic text, the fine-tuned model (with the user's tokens "
        "where it has them) against the bare backbone (LoRA off). Targets: ratio <= 1.2, distinct-2 >= 0.6.",
        "",
        "| user, item | " + " | ".join(r["model"] for r in rows) + " | the user's review |",
        "|" + "---|" * (len(rows) + 2),
    ]
    by_key = [{(s["user"], s["item"]): s for s in r["review"].get("samples", [])} for r in rows]
    for first in rows[0]["review"].get("samples", [])[:samples]:
        key = (first["user"], first["item"])
        cells = [f"{key[0]}, {key[1]}"] + [_quote(m[key]["generated"]) if key in m else "-" for m in by_key]
        lines.append("| " + " | ".join([*cells, _quote(first["reference"])]) + " |")
    return [*lines, ""]


def _gain(row: dict[str, Any], base: dict[str, Any]) -> str:
    """Relative ROUGE-L gain of `row` over `base` on the examples both generated, with a paired
    bootstrap interval ("-" for the base itself or without per-example scores)."""
    from training.metrics import paired_bootstrap

    mine, theirs = (r["review"].get("rougeL_by_example") or {} for r in (row, base))
    shared = sorted(set(mine) & set(theirs))
    if row is base or not shared:
        return "-"
    gain = paired_bootstrap([mine[k] for k in shared], [theirs[k] for k in shared])
    return f"{gain['gain']:+.1%} ({gain['low']:+.1%} to {gain['high']:+.1%})"
