"""Generation tables of the results report: fluency, personalization and samples of each USER-LLM row
that carries a text report (`evaluate` / `text-check`, training/text_eval.py).

Fluency: generic-text perplexity with the user's tokens / the bare backbone's; distinct-2 and the share
of looping samples of the chat, review and taste answers. Personalization: taste answers that name the
favourite category first, chat suggestions that name a catalogue title, the held-out next item, a
title of the favourite category. Both with the user and at cold start (the same checkpoint, no user).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["text_tables"]

KINDS = ("chat", "review", "taste")
PERSONALIZATION = {
    "taste_names_favourite": "taste names fav. genre",
    "chat_names_title": "chat names a title",
    "chat_title_is_next_item": "title = next item",
    "chat_distinct_titles": "distinct titles / users",
    "chat_title_in_favourite": "title in fav. genre",
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
            cells += [_f(rep[k]["distinct_2"]) for k in KINDS] + [f"{rep[k]['looping']:.0%}" for k in KINDS]
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
            values = [_f(pers[k]) if k in pers else "-" for k in PERSONALIZATION]
            cells = [row["model"], side.replace("_", " "), *values]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Generated text: samples", ""]
    for row in rows:
        text = row["text"]
        lines += [f"**{row['model']}**", "", "| request | with the user | cold start |", "|---|---|---|"]
        for kind in KINDS:
            for i, request in enumerate(text["requests"][kind][:samples]):
                user, cold = text["user"]["samples"][kind][i], text["cold_start"]["samples"][kind][i]
                lines.append(f"| {_quote(request, 80)} | {_quote(user)} | {_quote(cold)} |")
        lines.append("")
    return lines
