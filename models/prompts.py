"""Task instructions of USER-LLM, shared by training and serving so both see the same text.

USER-LLM (arXiv 2402.13598) Sec. 4: next-item prediction, favourite genre/category and review
generation (Amazon: the target item's name and rating are given in the instruction). With
cross-attention the prompt stays this short whatever the history length; the text-prompt baseline
renders the history into `history` instead.

"suggest" grounds a suggestion in the recommender: the question is followed by the catalogue entry of the
item the next-item head ranks first (title and categories), so the LLM copies the facts and writes the
reason from the user tokens (training/text_tasks.py trains it on the user's real next item).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

TASKS = ("next_item", "genre", "review", "chat", "suggest")
SUGGEST_QUESTION = "Suggest a {noun} for me tonight and say why."  # the question of a "suggest" request

_INSTRUCTIONS = {
    "next_item": "Which {noun} will this user choose next?",
    "genre": "What is this user's favourite {category}?",
    "review": "Write this user's review of {title}, which they rated {rating} out of 5.",
    "chat": "{prompt}",
    "suggest": "{prompt}\nRecommended {noun}: {title}. {Category}: {categories}.",
}


_TRAILING_ARTICLE = re.compile(r"^(.*), (the|a|an|les|la|le|il|das|der|die|el)( \(\d{4}\))?$", re.IGNORECASE)


def display_title(title: str) -> str:
    """MovieLens' "Matrix, The (1999)" as people write it: "The Matrix (1999)"; other titles unchanged."""
    match = _TRAILING_ARTICLE.match(title.strip())
    if not match:
        return title.strip()
    return f"{match.group(2)} {match.group(1)}{match.group(3) or ''}"


def nouns(dataset: str) -> tuple[str, str]:
    """(item noun, category noun) of a data set's instructions (training writes them into the checkpoint's
    task.json, from which the service reads them)."""
    if dataset.startswith("movielens"):
        return "movie", "genre"
    return ("place", "category") if dataset.startswith("google") else ("product", "category")


def instruction(
    task: str,
    *,
    noun: str = "movie",
    category: str = "genre",
    title: str = "",
    rating: float | str | None = "",
    prompt: str = "",
    categories: Sequence[str] = (),
    history: str | None = None,
) -> str:
    """The user message of a task; `history` (text-prompt baseline) is prepended when given.
    "suggest": `prompt` is the question (default SUGGEST_QUESTION), `title` and `categories` the
    recommended item's catalogue entry (the title shown as `display_title`; an item without categories
    gets no category clause)."""
    if task not in _INSTRUCTIONS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    template = _INSTRUCTIONS[task]
    if task == "review" and rating in ("", None):
        template = "Write this user's review of {title}."
    if task == "suggest":
        prompt, title = prompt or SUGGEST_QUESTION.format(noun=noun), display_title(title)
        if not categories:
            template = "{prompt}\nRecommended {noun}: {title}."
    text = template.format(
        noun=noun, category=category, title=title, rating=rating, prompt=prompt,
        Category=(_plural(category) if len(categories) > 1 else category).capitalize(),
        categories=", ".join(categories),
    )  # fmt: skip
    return text if history is None else f"{history}\n\n{text}"


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a one-turn chat prompt with the generation prompt appended (no padding)."""
    messages = [{"role": "user", "content": text}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text)["input_ids"]]
