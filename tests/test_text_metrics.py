"""Text metrics and language-task targets: the loop detector flags the degenerate samples the demo
served and passes ordinary answers; titles are found in generated text; targets read as sentences."""

from __future__ import annotations

import pytest

from training.data import Event
from training.text_metrics import (
    display_title,
    distinct_n,
    loops,
    mentioned_titles,
    repeated_ngram_share,
    repetition_summary,
    title_index,
)
from training.text_tasks import bucket_kl, suggest_target, taste_target, top_categories

DEGENERATE = [  # what the scoring-only demo checkpoint wrote for users with events
    '" this 200, this 2, this, this, this, this, this, this, this, this, this, this, this,',
    '" L body, the first in a 1, the first in a 1, the first in a 1, the first in a 1, the first in a 1,',
    "here, here, here, here, here, here, here, here, here, here, here, here, here, here,",
    'Here\'s your first\n C L " M  T  T K " "\n\n C L " M  T  T K " "\n\n C L " M  T  T K " "',
    ".... .... .... .... .... .... .... .... .... ....",
]
FLUENT = [
    "I'd suggest The Matrix (1999). It is a smart science fiction film with great action, and its story "
    "about what is real keeps you thinking long after the credits.",
    "A warm, funny film with a big heart. The cast is wonderful and the ending made me smile; I would "
    "happily watch it again with my family.",
    "You mostly watch Drama, Comedy and Romance movies.",
]


@pytest.mark.parametrize("text", DEGENERATE)
def test_loops_flags_degenerate_samples(text: str) -> None:
    assert loops(text)


@pytest.mark.parametrize("text", FLUENT)
def test_loops_passes_fluent_samples(text: str) -> None:
    assert not loops(text)
    assert distinct_n(text, 2) >= 0.9 and repeated_ngram_share(text) == 0.0


def test_repetition_summary_counts_looping_and_empty_samples() -> None:
    summary = repetition_summary([FLUENT[0], DEGENERATE[2], "...", ""])
    assert summary["samples"] == 4
    assert summary["looping"] == pytest.approx(0.25)
    assert summary["empty"] == pytest.approx(0.5)
    assert distinct_n("a b a b a b", 2) == pytest.approx(2 / 5)


def test_titles_are_found_in_generated_text() -> None:
    index = title_index(
        {"1": "Heat (1995)", "2": "Matrix, The (1999)", "3": "Up (2009)", "4": "Revenge (1990)"}
    )
    assert display_title("Matrix, The (1999)") == "The Matrix (1999)"
    assert display_title("Heat (1995)") == "Heat (1995)"
    assert mentioned_titles("Watch The Matrix (1999) tonight, then Heat (1995).", index) == ["2", "1"]
    assert mentioned_titles("the matrix is great", index) == ["2"]  # without the year
    assert mentioned_titles("Look up: revenge is late.", index) == []  # one-word titles need their year
    assert mentioned_titles("Up (2009) and Revenge (1990)", index) == ["3", "4"]


def test_targets_read_as_sentences() -> None:
    history = [
        Event("1", 1, 4.0, ("Drama", "Romance")),
        Event("2", 2, 3.0, ("Comedy",)),
        Event("3", 3, 5.0, ("Drama", "Comedy")),
    ]
    assert top_categories(history) == ["Drama", "Comedy", "Romance"]
    assert taste_target(history, "movie", you=True) == "You mostly watch Drama, Comedy and Romance movies."
    assert taste_target(history, "product", you=False) == (
        "This user mostly chooses Drama, Comedy and Romance products."
    )
    assert taste_target([Event("1", 1)], "movie", you=True) is None
    assert suggest_target(history, "Heat (1995)", ["Action", "Drama"], "movie", you=True) == (
        "Heat (1995). It is an Action and Drama movie, and you often watch Drama movies."
    )
    assert suggest_target(history, "Alien (1979)", ["Horror"], "movie", you=False) == (
        "Alien (1979). It is a Horror movie, something new to try."
    )


def test_bucket_kl_is_zero_for_equal_distributions_and_positive_otherwise() -> None:
    import torch

    logits = torch.randn(5, 50)
    logp = logits.log_softmax(-1).topk(8, dim=-1)
    same = bucket_kl(logp.values, logp.values)
    other = logits.roll(1, dims=-1).log_softmax(-1).gather(1, logp.indices)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(bucket_kl(logp.values, other)) > 0.01


def test_garbled_catches_non_prose_that_does_not_repeat_word_for_word() -> None:
    from training.text_metrics import garbled

    column = "cueuvent\ncueuvertools\ncueuvorertools\ncueuvaertools\ncueuveertools\ncueuvarertools"
    symbols = "youuar_3gateventuo...\n```\n**\n(**\n'''\n*\n(*\n•\n#\n###"
    blanks = "youuaritevorlus(3).1gurlevent_erugL())\n\n\n\n\nmore"
    assert not loops(column) and not loops(symbols)  # what the loop check alone let through
    assert garbled(column) == "4 one-word lines in a row starting 'cueu'"
    assert garbled(symbols) == "mostly symbols"
    assert garbled(blanks) == "4 blank lines in a row"
    prose = (
        "Gladiator is a sweeping epic. Russell Crowe carries it, and the arena scenes still thrill.\n\n"
        "I'd watch it again: 4.5 out of 5!"
    )
    listed = "Three picks for tonight:\n1. Heat (1995)\n2. Fargo (1996)\n3. Alien (1979)\nEnjoy!"
    bullets = "- The Matrix: mind-bending\n- The Thing: tense\n- The Fly: gross\n- The Birds: eerie"
    assert garbled(prose) is None and garbled(listed) is None and garbled(bullets) is None


def test_suggestion_facts_check_year_genres_and_reason_against_the_catalogue() -> None:
    """The demo's chat said "The Lion King (1986). It is an Animation, Children, Comedy and Romance movie,
    and you often watch Drama movies." for a Comedy-first user: year and genres wrong, the reason right
    only if Drama is among the user's favourites (and the movie's genres: a reason names what the two
    share). Each fact is judged on its own; unstated ones are None."""
    from training.text_metrics import suggestion_facts

    cats = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Drama", "Musical", "Romance"]
    cats += ["Sci-Fi", "Fi"]
    lion = ("Lion King, The (1994)", ["Adventure", "Animation", "Children", "Drama", "Musical"])

    def facts(answer: str, favourites: list[str], item: tuple = lion) -> dict:
        return suggestion_facts(answer, *item, favourites, cats, "movie")

    said = "The Lion King (1986). It is an Animation, Children, Comedy and Romance movie, and you often "
    said += "watch Drama movies."
    assert facts(said, ["Comedy", "Drama"]) == {"year": False, "genres": False, "reason": True}
    assert facts(said, ["Comedy"])["reason"] is False
    right = "The Lion King (1994). It is an Animation and Musical movie, and you often watch Drama movies."
    assert facts(right, ["Drama"]) == {"year": True, "genres": True, "reason": True}
    free = "How about The Lion King? A classic for the whole family."  # states none of the three
    assert facts(free, ["Drama"]) == {"year": None, "genres": None, "reason": None}
    alien = ("Alien (1979)", ["Horror", "Sci-Fi"])  # "Sci-Fi" names Sci-Fi, not the category "Fi"
    assert facts("Alien (1979). It is a Sci-Fi movie.", [], alien)["genres"] is True
    new = "The Lion King (1994). It is an Animation movie, something new to try."  # right: nothing shared
    assert facts(new, ["Comedy", "Romance"])["reason"] is True
    assert facts(new, ["Comedy", "Drama"])["reason"] is False  # the user often watches Drama
    gone = ("Gone in 60 Seconds (2000)", ["Action", "Crime"])  # the demo's answer for a Comedy-first user
    unrelated = "Gone in 60 Seconds (2000). It is an Action, Crime movie, and you often watch Comedy movies."
    favourites = ["Comedy", "Drama", "Action"]
    assert facts(unrelated, favourites, gone) == {"year": True, "genres": True, "reason": False}
    shared = "Gone in 60 Seconds (2000). It is an Action, Crime movie, and you often watch Action movies."
    assert facts(shared, favourites, gone)["reason"] is True
