"""Data set names -> loaders: `load_dataset("movielens-100k", path)` and the CLI's `--dataset`.

Names: movielens-100k, movielens-1m, movielens-10m, movielens-20m, movielens-25m, movielens-latest
(alias ml-latest-small; defaults to the vendored `data/ml-latest-small`), amazon-2018 and
amazon-2023 (with a category, e.g. All_Beauty), google-local-2021 (with a state, e.g. Vermont).
"""

from __future__ import annotations

from pathlib import Path

from training.data.amazon import load_amazon_2018, load_amazon_2023
from training.data.errors import DatasetNotFoundError, OnError
from training.data.google_local import load_google_local
from training.data.movielens import load_movielens
from training.data.timeline import Dataset, TieBreak

REPO = Path(__file__).resolve().parents[2]
ML_LATEST_SMALL = REPO / "data" / "ml-latest-small"  # vendored; redistributable under its README
DATASETS: tuple[str, ...] = (
    "movielens-100k", "movielens-1m", "movielens-10m", "movielens-20m", "movielens-25m",
    "movielens-latest", "amazon-2018", "amazon-2023", "google-local-2021",
)  # fmt: skip
ALIASES = {"ml-latest-small": "movielens-latest", "ml-100k": "movielens-100k", "ml-1m": "movielens-1m"}


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return name


def load_dataset(
    name: str,
    path: str | Path | None = None,
    *,
    category: str | None = None,
    state: str | None = None,
    tie_break: TieBreak = "item",
    on_error: OnError = "raise",
) -> Dataset:
    """Load a data set by name from `path` (a directory, or a reviews file for Amazon/Google)."""
    name = canonical_name(name)
    if path is None:
        if name != "movielens-latest":
            raise DatasetNotFoundError(f"{name}: pass the path of the data set (download it first)")
        path = ML_LATEST_SMALL
    options = {"tie_break": tie_break, "on_error": on_error}
    if name.startswith("movielens-"):
        dataset = load_movielens(path, name.removeprefix("movielens-"), **options)  # type: ignore[arg-type]
        dataset.name = name
        return dataset
    if name == "amazon-2018":
        return load_amazon_2018(path, category, **options)  # type: ignore[arg-type]
    if name == "amazon-2023":
        return load_amazon_2023(path, category, **options)  # type: ignore[arg-type]
    return load_google_local(path, state, **options)  # type: ignore[arg-type]
