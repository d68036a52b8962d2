"""Task instructions of USER-LLM, shared by training and serving so both see the same text.

USER-LLM (arXiv 2402.13598) Sec. 4: next-item prediction, favourite genre/category and review
generation (Amazon: the target item's name and rating are given in the instruction). With
cross-attention the prompt stays this short whatever the history length; the text-prompt baseline
renders the history into `history` instead.
"""

from __future__ import annotations

from typing import Any

TASKS = ("next_item", "genre", "review", "chat")

_INSTRUCTIONS = {
    "next_item": "Which {noun} will this user choose next?",
    "genre": "What is this user's favourite {category}?",
    "review": "Write this user's review of {title}, which they rated {rating} out of 5.",
    "chat": "{prompt}",
}


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
    history: str | None = None,
) -> str:
    """The user message of a task; `history` (text-prompt baseline) is prepended when given."""
    if task not in _INSTRUCTIONS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    template = _INSTRUCTIONS[task]
    if task == "review" and rating in ("", None):
        template = "Write this user's review of {title}."
    text = template.format(noun=noun, category=category, title=title, rating=rating, prompt=prompt)
    return text if history is None else f"{history}\n\n{text}"


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a one-turn chat prompt with the generation prompt appended (no padding)."""
    messages = [{"role": "user", "content": text}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(text)["input_ids"]]
