"""scripts/demo.py's fact check of suggestions, on the vendored ml-latest-small catalogue: an answer
the demo printed for user 414 ("The Lion King (1986) ... Comedy and Romance ...") is reported wrong where
it is wrong, with what the catalogue says, and an answer that names another title than the one it was
given is reported too."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from training.data import Event, load_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("userllm_demo", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["userllm_demo"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def items():
    return load_dataset("movielens-latest").items


def test_the_demo_reports_a_wrong_year_and_wrong_genres_with_the_catalogue_entry(demo, items) -> None:
    assert any(it.title == "Lion King, The (1994)" for it in items.values())
    drama = [Event("1", 1, 4.0, ("Comedy", "Drama")), Event("2", 2, 3.5, ("Comedy",))]  # Comedy, Drama
    said = (
        "The Lion King (1986). It is an Animation, Children, Comedy and Romance movie, and you often "
        "watch Drama movies."
    )
    lion = next(i for i, it in items.items() if it.title == "Lion King, The (1994)")
    line = demo.fact_check(said, lion, items, drama)
    assert line.startswith(
        "given Lion King, The (1994): title right; year WRONG (the catalogue has Lion King, The"
    )
    assert "genres WRONG (its genres: " in line and "reason right" in line
    right = "The Lion King (1994). It is an Animation and Musical movie, and you often watch Drama movies."
    assert demo.fact_check(right, lion, items, drama) == (
        "given Lion King, The (1994): title right; year right; genres right; reason right"
    )
    assert demo.fact_check("Echoes of Eternity (2019) is a sci-fi epic.", lion, items, drama).startswith(
        "given Lion King, The (1994): title WRONG (names no catalogue title); year WRONG"
    )
    assert demo.fact_check("A quiet evening.", None, items, drama) == "given no item (every item seen)"
    heat = next(i for i, it in items.items() if it.title == "Heat (1995)")
    assert demo.fact_check(right, heat, items, drama).startswith(
        "given Heat (1995): title WRONG (names Lion King, The (1994)); year WRONG"
    )
