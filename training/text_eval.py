"""Measures of the text a USER-LLM checkpoint writes: fluency and personalization, with and without
the user.

- fluency: perplexity of the held-out generic responses (training/generic_text.py) read with a test
  user's tokens, divided by the bare backbone's (1.0 = language untouched); repetition of greedy samples
  (distinct-2, repeated 4-gram share, looping samples; training/text_metrics.py) for three requests a
  user of the service sends: a chat request ("Suggest a movie for tonight and say why."), a review of
  the held-out item at its rating, and "Describe my taste";
- personalization: the taste answer names the user's favourite category (first); the suggestion names
  a catalogue title, the user's held-out next item, and a title of the user's favourite category, and
  how many different titles the chat answers name per user (1.0 = a different title for every user);
- facts: of the suggestions that state them, the share whose title year, "It is a ... movie" genres
  and "you often watch ... movies" (or "something new to try") reason agree with the catalogue and the
  user's three most frequent categories (a reason names categories the item and those three share;
  training/text_metrics.py `suggestion_facts`; None where no answer states them);
- grounded suggestions: the "suggest" request of the service (models/prompts.py), its question followed
  by the catalogue entry of the item the checkpoint's next-item head ranks first for the user (history
  excluded): the share of answers that name that item, and the same three facts checked against it;
- samples: the first five answers of each request, side by side with the cold-start answer.

"cold start" runs the same checkpoint with no user tokens (the bare backbone: the cross-attention blocks
are the identity without a user). Greedy decoding, as the demo, with the service's default repetition
penalty (models/generation.py SERVED_REPETITION_PENALTY). Both sides get the same requests: a cold-start
"suggest" request carries the personalized item, so its reason shows what the user tokens add.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from models.generation import SERVED_REPETITION_PENALTY, SamplingParams, generate, left_pad
from models.prompts import instruction, prompt_ids
from models.strategies import has_lora, lora_disabled
from training.data import Example, favourite_category, format_rating
from training.generic_text import GenericText
from training.text_metrics import (
    loops,
    mentioned_titles,
    repetition_summary,
    share,
    suggestion_facts,
    title_index,
    words,
)
from training.text_tasks import TextTasks, top_categories

__all__ = [
    "CHAT_PROMPT", "TEXT_TARGETS", "degenerate", "missed_targets", "perplexity_ratio", "recommended",
    "text_report",
]  # fmt: skip

CHAT_PROMPT = "Suggest a {noun} for tonight and say why."  # the chat request of the samples
TASTE_PROMPT = "Describe my taste in {noun}s."
TEXT_TARGETS = {"ppl_ratio": 1.2, "distinct_2": 0.6}  # issue targets; looping samples must be 0


@contextmanager
def _bare(text: TextTasks) -> Iterator[None]:
    """The bare backbone: LoRA adapters off, and no reuse of lower-layer states cached with them on."""
    runner = text.runner
    reuse = runner.reuse_lower
    runner.reuse_lower = reuse and not has_lora(runner.model.llm.backbone)
    try:
        with lora_disabled(runner.model.llm.backbone):
            yield
    finally:
        runner.reuse_lower = reuse


@torch.no_grad()
def perplexity_ratio(text: TextTasks, held_out: Sequence[GenericText], examples: Sequence[Example]) -> dict:
    """exp(mean NLL with a user's tokens) / exp(mean NLL of the bare backbone) on held-out generic
    responses; text i is read with the user of example i (cycling). The bare side runs without user
    tokens and with any LoRA adapters off, so a LoRA-trained checkpoint is compared with the backbone
    it started from."""
    head = text.runner.model.llm.backbone.get_output_embeddings()
    nll = {"user": 0.0, "bare": 0.0}
    tokens = 0
    for start in range(0, len(held_out), 8):
        chunk = held_out[start : start + 8]
        users = [examples[(start + i) % len(examples)] for i in range(len(chunk))]
        targets = torch.cat([torch.tensor(t.response_ids) for t in chunk]).to(text.runner.device)
        for key, context in (("user", text.runner.context(users)), ("bare", None)):
            with _bare(text) if key == "bare" else nullcontext():
                logits = head(text.response_hidden(chunk, context)).float()  # (N, V)
            nll[key] += float(F.cross_entropy(logits, targets, reduction="sum"))
        tokens += len(targets)
    ppl = {k: math.exp(v / max(1, tokens)) for k, v in nll.items()}
    return {"ppl_user": ppl["user"], "ppl_bare": ppl["bare"], "ppl_ratio": ppl["user"] / ppl["bare"],
            "tokens": tokens}  # fmt: skip


@torch.no_grad()
def _answers(text: TextTasks, examples: Sequence[Example], prompts: Sequence[str], user: bool,
             max_new_tokens: int) -> list[str]:  # fmt: skip
    runner = text.runner
    tok = runner.tokenizer
    out: list[str] = []
    params = SamplingParams(max_new_tokens, repetition_penalty=SERVED_REPETITION_PENALTY)
    for start in range(0, len(examples), 8):
        chunk = examples[start : start + 8]
        ids, mask = left_pad(
            [prompt_ids(tok, p) for p in prompts[start : start + 8]], pad_token_id=tok.pad_token_id
        )
        rows = generate(
            runner.model.llm, ids.to(runner.device), mask.to(runner.device),
            user_context=runner.context(chunk) if user else None,
            params=params, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        out.extend(tok.decode(r, skip_special_tokens=True).strip() for r in rows)
    return out


@torch.no_grad()
def recommended(text: TextTasks, examples: Sequence[Example]) -> list[str]:
    """Each example's item ranked first by the checkpoint's next-item head, its history excluded: the
    item the service grounds a "suggest" request in."""
    runner = text.runner
    vocab = runner.corpus.vocabs["item"]
    out = []
    for start in range(0, len(examples), 16):
        chunk = examples[start : start + 16]
        logits = runner.scores(chunk, "next_item")  # (B, I)
        for row, ex in zip(logits, chunk, strict=True):
            row[[vocab.encode(e.item) for e in ex.history]] = -torch.inf
            out.append(vocab.decode(int(row.argmax())))
    return out


def _requests(text: TextTasks, examples: Sequence[Example], suggested: Sequence[str]) -> dict[str, list[str]]:
    """The instructions of the four sampled requests, per example (`suggested`: the "suggest" items)."""
    runner = text.runner
    noun = runner.noun
    catalogue = runner.corpus.catalogue
    reviews = []
    for ex in examples:
        title = (catalogue.get(ex.target.item) or {}).get("title") or ex.target.item
        reviews.append(instruction("review", title=title, rating=format_rating(ex.target.rating) or ""))
    entries = [catalogue.get(i) or {} for i in suggested]
    suggest = [
        instruction("suggest", noun=noun, category=runner.category_noun, title=e.get("title") or i,
                    categories=e.get("categories") or [])
        for i, e in zip(suggested, entries, strict=True)
    ]  # fmt: skip
    return {
        "chat": [CHAT_PROMPT.format(noun=noun)] * len(examples),
        "suggest": suggest,
        "review": reviews,
        "taste": [TASTE_PROMPT.format(noun=noun)] * len(examples),
    }


def _personalization(
    text: TextTasks, examples: Sequence[Example], answers: dict[str, list[str]], suggested: Sequence[str]
) -> dict:
    catalogue = text.runner.corpus.catalogue
    index = title_index({i: e["title"] for i, e in catalogue.items() if e.get("title")})
    favourites = [favourite_category(ex.history) for ex in examples]
    named = [mentioned_titles(a, index) for a in answers["chat"]]
    first_named = [n[0] if n else None for n in named]

    def first_category(answer: str) -> str | None:
        found = [
            (answer.lower().find(c.lower()), c) for c in text.runner.corpus.vocabs["category"].tokens[2:]
        ]
        hits = sorted((pos, c) for pos, c in found if pos >= 0)
        return hits[0][1] if hits else None

    nexts = [ex.target.item for ex in examples]
    categories = text.runner.corpus.vocabs["category"].tokens[2:]
    facts = [
        suggestion_facts(
            answer, (catalogue.get(n) or {}).get("title", "") if n else "",
            (catalogue.get(n) or {}).get("categories", []) if n else [], top_categories(ex.history),
            categories, text.runner.noun,
        )
        for answer, n, ex in zip(answers["chat"], first_named, examples, strict=True)
    ]  # fmt: skip

    grounded = [
        suggestion_facts(
            answer, (catalogue.get(i) or {}).get("title", ""), (catalogue.get(i) or {}).get("categories", []),
            top_categories(ex.history), categories, text.runner.noun,
        )
        for answer, i, ex in zip(answers["suggest"], suggested, examples, strict=True)
    ]  # fmt: skip
    named_first = [n[0] if (n := mentioned_titles(a, index)) else None for a in answers["suggest"]]

    def right(kind: str, checked: Sequence[dict[str, bool | None]] = facts) -> float | None:
        """Share of the answers stating `kind` that state it right (None: no answer states it)."""
        judged = [f[kind] for f in checked if f[kind] is not None]
        return share(judged) if judged else None

    return {
        "taste_names_favourite": share(f is not None and first_category(a) == f
                                       for a, f in zip(answers["taste"], favourites, strict=True)),
        "chat_names_title": share(n is not None for n in first_named),
        "chat_title_is_next_item": share(n == t for n, t in zip(first_named, nexts, strict=True)),
        "chat_distinct_titles": len({n for n in first_named if n is not None}) / max(1, len(examples)),
        "chat_title_in_favourite": share(
            n is not None and f in (catalogue.get(n) or {}).get("categories", [])
            for n, f in zip(first_named, favourites, strict=True)
        ),
        "chat_year_right": right("year"),
        "chat_genres_right": right("genres"),
        "chat_reason_right": right("reason"),
        "suggest_names_item": share(n == i for n, i in zip(named_first, suggested, strict=True)),
        "suggest_year_right": right("year", grounded),
        "suggest_genres_right": right("genres", grounded),
        "suggest_reason_right": right("reason", grounded),
    }  # fmt: skip


def text_report(text: TextTasks, held_out: Sequence[GenericText], examples: Sequence[Example], *,
                max_new_tokens: int = 48, samples: int = 5) -> dict[str, Any]:  # fmt: skip
    """Fluency, repetition and personalization of the checkpoint's text, with the user and cold start."""
    suggested = recommended(text, examples)
    requests = _requests(text, examples, suggested)
    report: dict[str, Any] = {"users": len(examples), "fluency": perplexity_ratio(text, held_out, examples)}
    for side, user in (("user", True), ("cold_start", False)):
        answers = {k: _answers(text, examples, v, user, max_new_tokens) for k, v in requests.items()}
        report[side] = {
            "repetition": {k: repetition_summary(v) for k, v in answers.items()},
            "personalization": _personalization(text, examples, answers, suggested),
            "samples": {k: v[:samples] for k, v in answers.items()},
            "looping_samples": {k: [a for a in v if loops(a)][:3] for k, v in answers.items()},
            "words": sum(len(words(a)) for v in answers.values() for a in v),
        }
    report["requests"] = {k: v[:samples] for k, v in requests.items()}
    report["targets_missed"] = missed_targets(report)
    report["degenerate"] = degenerate(report)
    return report


def missed_targets(report: dict[str, Any]) -> list[str]:
    """The issue's targets a report misses (reported; empty = all met): perplexity ratio <= 1.2,
    distinct-2 >= 0.6, no looping or empty sample with the user."""
    missed = []
    ratio = report["fluency"]["ppl_ratio"]
    if ratio > TEXT_TARGETS["ppl_ratio"]:
        missed.append(f"generic-text perplexity ratio {ratio:.3f} > {TEXT_TARGETS['ppl_ratio']}")
    for kind, rep in report["user"]["repetition"].items():
        if rep["distinct_2"] < TEXT_TARGETS["distinct_2"]:
            missed.append(f"{kind}: distinct-2 {rep['distinct_2']:.3f} < {TEXT_TARGETS['distinct_2']}")
        if rep["looping"] > 0:
            missed.append(f"{kind}: {rep['looping']:.0%} of the samples loop")
        if rep["empty"] > 0:
            missed.append(f"{kind}: {rep['empty']:.0%} of the samples are empty")
    return missed


# Looping samples with the user may exceed the bare backbone's share by this much before the text counts
# as degenerate: greedy decoding makes the small backbone repeat itself now and then too, and one sample
# of `text-check --text_users=24` is 4 points; the degenerate scoring-only checkpoint loops on 54-79%.
LOOP_MARGIN = 0.10


def degenerate(report: dict[str, Any]) -> list[str]:
    """Why the personalized text counts as degenerate (empty = it does not): perplexity ratio or distinct-2
    past the targets, empty samples, or more looping samples with the user than the bare backbone writes
    for the same requests, by more than LOOP_MARGIN."""
    failures = [m for m in missed_targets(report) if "loop" not in m]
    for kind, rep in report["user"]["repetition"].items():
        bare = report["cold_start"]["repetition"][kind]["looping"]
        if rep["looping"] > bare + LOOP_MARGIN:
            failures.append(f"{kind}: {rep['looping']:.0%} of the samples loop ({bare:.0%} without the user)")
    return failures
