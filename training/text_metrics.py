"""Metrics of generated text: repetition (loops), diversity, and the personalization checks of the
MovieLens text tasks.

- `distinct_n`: distinct word n-grams / all word n-grams of one sample (Li et al., NAACL 2016,
  "A Diversity-Promoting Objective Function for Neural Conversation Models"), averaged over samples.
- `repeated_ngram_share`: share of a sample's word n-grams (n = 4) that already occurred earlier in the
  same sample: about 0 for ordinary prose, near 1 for a loop such as "this, this, this, ...".
- `loops`: the verdict the checks use (repeated 4-gram share >= 0.25, or distinct-2 < 0.5 on a sample of
  at least 8 words).
- `garbled`: text that is no prose without repeating itself word for word: mostly symbols, runs of
  blank lines, or a column of one-word lines that start alike ("cueuvent / cueuvertools / cueuvorertools").
- `mentioned_titles`: catalogue titles a generated text names (normalised substring match), for the
  "suggest" task's personalization figures.
- `suggestion_facts`: whether what a suggestion states (the title's year, "It is a ... movie", "you often
  watch ... movies", the phrasing the "suggest" task trains) agrees with the catalogue and the history.

Tokens are lower-cased runs of letters, digits and apostrophes, and runs of other non-space characters
(so a loop of "...." is caught like a loop of words).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from statistics import mean

from models.prompts import display_title  # re-exported: the metrics match titles in the form prompts show

__all__ = [
    "LOOP_DISTINCT2",
    "LOOP_REPEAT_SHARE",
    "display_title",
    "distinct_n",
    "garbled",
    "has_words",
    "loops",
    "mentioned_titles",
    "repeated_ngram_share",
    "repetition_summary",
    "share",
    "suggestion_facts",
    "title_index",
    "words",
]

LOOP_REPEAT_SHARE = 0.25  # a sample whose repeated 4-gram share reaches this loops
LOOP_DISTINCT2 = 0.5  # ... or whose distinct-2 is below this (samples of >= 8 words)
_WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']+")  # words, and runs of other non-space characters


def words(text: str) -> list[str]:
    """Lower-cased tokens of a text: words, and runs of punctuation ("...." is one token)."""
    return _WORD.findall(text.lower())


def has_words(text: str) -> bool:
    """True when the text has at least one letter or digit."""
    return any(c.isalnum() for c in text)


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(text: str, n: int = 2) -> float:
    """Distinct word n-grams / all word n-grams of one text (1.0 when it has no n-gram)."""
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of the text's word n-grams that already occurred earlier in it (0.0 when it has none)."""
    grams = _ngrams(words(text), n)
    seen: set[tuple[str, ...]] = set()
    repeated = 0
    for gram in grams:
        repeated += gram in seen
        seen.add(gram)
    return repeated / len(grams) if grams else 0.0


def loops(text: str) -> bool:
    """True when a sample degenerates into repetition (see the module docstring for the thresholds)."""
    if repeated_ngram_share(text) >= LOOP_REPEAT_SHARE:
        return True
    return len(words(text)) >= 8 and distinct_n(text, 2) < LOOP_DISTINCT2


GARBLED_SYMBOLS = 0.3  # garbled: more than this share of the non-space characters are not letters/digits
GARBLED_BLANK_RUN = 4  # ... or this many blank lines in a row
GARBLED_COLUMN = 4  # ... or this many one-word lines in a row that start alike


def garbled(text: str) -> str | None:
    """Why a text is no prose, or None: the checks `loops` misses when the words do not repeat."""
    chars = [c for c in text if not c.isspace()]
    if chars and sum(not c.isalnum() for c in chars) / len(chars) > GARBLED_SYMBOLS:
        return "mostly symbols"
    lines = text.split("\n")
    if any(all(not line.strip() for line in lines[i : i + GARBLED_BLANK_RUN])
           for i in range(len(lines) - GARBLED_BLANK_RUN + 1)):  # fmt: skip
        return f"{GARBLED_BLANK_RUN} blank lines in a row"
    short = [line.strip().lower() for line in lines if line.strip()]
    for i in range(len(short) - GARBLED_COLUMN + 1):
        run = short[i : i + GARBLED_COLUMN]
        if all(len(line) < 30 and " " not in line and line[:4] == run[0][:4] for line in run):
            return f"{GARBLED_COLUMN} one-word lines in a row starting {run[0][:4]!r}"
    return None


def repetition_summary(texts: Sequence[str]) -> dict[str, float]:
    """Mean distinct-2, mean repeated 4-gram share, share of looping samples and of empty samples."""
    if not texts:
        return {"distinct_2": 0.0, "repeated_4gram_share": 0.0, "looping": 0.0, "empty": 0.0, "samples": 0}
    return {
        "distinct_2": mean(distinct_n(t, 2) for t in texts),
        "repeated_4gram_share": mean(repeated_ngram_share(t) for t in texts),
        "looping": mean(float(loops(t)) for t in texts),
        "empty": mean(float(not has_words(t)) for t in texts),
        "samples": len(texts),
    }


def _normalise(title: str) -> str:
    return " ".join(w for w in words(title) if has_words(w))


_YEAR = re.compile(r"\s*\(\d{4}\)$")


def title_index(titles: Mapping[str, str]) -> dict[str, str]:
    """Normalised title -> item id: the catalogue's form and `display_title`'s, with the year, and
    without the year when two words or more remain (one-word titles such as "Up" or "Revenge" would
    match ordinary words)."""
    index: dict[str, str] = {}
    for item, title in titles.items():
        for variant in (display_title(title), title):
            index.setdefault(_normalise(variant), item)
        bare = _normalise(_YEAR.sub("", display_title(title)))
        if len(bare.split()) >= 2:
            index.setdefault(bare, item)
    return index


def mentioned_titles(text: str, index: Mapping[str, str], *, max_words: int = 12) -> list[str]:
    """Item ids whose normalised title occurs in the text (longest match first, no overlaps)."""
    tokens = [w for w in words(text) if has_words(w)]
    found: list[str] = []
    i = 0
    while i < len(tokens):
        for n in range(min(max_words, len(tokens) - i), 0, -1):
            item = index.get(" ".join(tokens[i : i + n]))
            if item is not None:
                found.append(item)
                i += n
                break
        else:
            i += 1
    return found


def share(flags: Iterable[bool]) -> float:
    """Mean of booleans (0.0 for none)."""
    values = [float(f) for f in flags]
    return sum(values) / len(values) if values else 0.0


_YEAR_IN_TEXT = re.compile(r"\((\d{4})\)")


def _named(clause: str, categories: Sequence[str]) -> set[str]:
    """The categories a clause names (whole names, case-insensitive; "Sci-Fi" is not "Fi")."""
    return {
        c for c in categories if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", clause, re.IGNORECASE)
    }


def suggestion_facts(
    answer: str, title: str, item_categories: Sequence[str], favourites: Sequence[str],
    categories: Sequence[str], noun: str,
) -> dict[str, bool | None]:  # fmt: skip
    """Check what a suggestion answer states about the item it names (`title`, its catalogue entry) and
    about the user, in the phrasing of the "suggest" task (`text_tasks.suggest_target`):

    - `year`: the first "(YYYY)" of the answer is the catalogue title's year;
    - `genres`: every category named in "It is a/an ... <noun>" is one of the item's;
    - `reason`: every category named in "... often <verb> ... <noun>s" is one of the user's favourites
      and one of the item's (the task's reason is the categories the two share: "It is an Action
      movie, and you often watch Comedy movies" is no reason); "something new to try" is right when
      the item shares no category with the favourites.

    None where the answer does not state it (no year, no such clause, no category named in it)."""
    facts: dict[str, bool | None] = {"year": None, "genres": None, "reason": None}
    stated, actual = _YEAR_IN_TEXT.search(answer), _YEAR_IN_TEXT.search(title)
    if stated and actual:
        facts["year"] = stated.group(1) == actual.group(1)
    clause = re.search(rf"\bit is an? (.+?) {re.escape(noun)}\b", answer, re.IGNORECASE)
    named = _named(clause.group(1), categories) if clause else set()
    if named:
        facts["genres"] = named <= set(item_categories)
    clause = re.search(rf"\boften \w+ (.+?) {re.escape(noun)}s\b", answer, re.IGNORECASE)
    named = _named(clause.group(1), categories) if clause else set()
    if named:
        facts["reason"] = named <= set(favourites) & set(item_categories)
    elif re.search(r"\bsomething new to try\b", answer, re.IGNORECASE):
        facts["reason"] = not set(item_categories) & set(favourites)
    return facts
