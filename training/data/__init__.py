"""Real-data pipeline: loaders for MovieLens, Amazon 2018/2023 and Google Local 2021 into one
timeline format, vocabularies and encoding, leave-last-out splits, windows, k-core, labels, stats.

    from training.data import load_dataset, leave_last_out, build_vocabs, encode_events
    ds = load_dataset("movielens-latest")               # vendored data/ml-latest-small
    splits = leave_last_out(ds)
    vocabs = build_vocabs(splits.train)
    batch = encode_events(splits.test[0].history, vocabs)  # {"item", "category", "rating"}
"""

from __future__ import annotations

from models.vocab import format_rating, item_sort_key
from training.data.amazon import load_amazon_2018, load_amazon_2023
from training.data.download import download, download_file
from training.data.errors import (
    DataError,
    DataFormatError,
    DatasetNotFoundError,
    DownloadError,
    ErrorPolicy,
    OnError,
)
from training.data.google_local import load_google_local, load_google_local_meta
from training.data.labels import favourite_categories, favourite_category
from training.data.movielens import load_movielens
from training.data.registry import DATASETS, ML_LATEST_SMALL, canonical_name, load_dataset
from training.data.splits import Example, Splits, Window, k_core, leave_last_out, sliding_windows
from training.data.stats import DatasetStats, compute_stats, format_stats
from training.data.timeline import Dataset, Event, Item, TieBreak, build_timelines
from training.data.vocab import PAD_ID, UNK_ID, Vocab, build_vocabs, encode_events

__all__ = [
    "DATASETS", "ML_LATEST_SMALL", "PAD_ID", "UNK_ID",
    "DataError", "DataFormatError", "Dataset", "DatasetNotFoundError", "DatasetStats", "DownloadError",
    "ErrorPolicy", "Event", "Example", "Item", "OnError", "Splits", "TieBreak", "Vocab", "Window",
    "build_timelines", "build_vocabs", "canonical_name", "compute_stats", "download", "download_file",
    "encode_events", "favourite_categories", "favourite_category", "format_rating", "format_stats",
    "item_sort_key", "k_core", "leave_last_out", "load_amazon_2018", "load_amazon_2023", "load_dataset",
    "load_google_local", "load_google_local_meta", "load_movielens", "sliding_windows",
]  # fmt: skip
