"""The data a training or evaluation job works on: leave-last-out splits, vocabularies, catalogue.

One place turns a config's (dataset, path, category, max_users) into the encoded material every job
shares, so pretraining, fine-tuning, evaluation and the baselines see the same split and the same ids.
The catalogue written next to the vocabularies lists every vocabulary item (the service encodes raw
events with them): title from the data set's item table, categories as the item's events carry them.

Reference: the leave-last-out protocol of SASRec (Kang & McAuley, 2018) as used by USER-LLM
(arXiv 2402.13598) for next-item prediction; training/data/splits.py.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from models.checkpoint import Checkpoint
from training.data import (
    ML_LATEST_SMALL,
    Dataset,
    Event,
    Example,
    Splits,
    Vocab,
    build_vocabs,
    canonical_name,
    encode_events,
    leave_last_out,
    load_dataset,
)
from training.data.vocab import FEATURES, OPTIONAL_FEATURES

__all__ = [
    "Corpus",
    "build_catalogue",
    "data_fingerprint",
    "encoded",
    "git_sha",
    "load_corpus",
    "vocabs_from_dict",
]


@dataclass
class Corpus:
    """A loaded data set with its leave-last-out split and the vocabularies built on its train part."""

    dataset: Dataset
    splits: Splits
    vocabs: dict[str, Vocab]  # "item", "category", "rating" (and "length" when the encoder reads it)
    catalogue: dict[str, dict[str, Any]]  # item id -> {"title", "categories"}, every vocab item
    data_sha256: str  # fingerprint of the input files
    data_files: list[str]  # the files hashed

    @property
    def num_items(self) -> int:
        """Item vocabulary size V (ids 0 = pad, 1 = unknown, >= 2 the catalogue)."""
        return len(self.vocabs["item"])

    def examples(self, split: str) -> list[Example]:
        if split not in ("test", "valid"):
            raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
        return self.splits.test if split == "test" else self.splits.valid

    def extras(self) -> dict[str, Any]:
        """Side files of an encoder/userllm checkpoint: vocab.json and catalogue.json."""
        return {"vocab": {k: v.to_dict() for k, v in self.vocabs.items()}, "catalogue": self.catalogue}


# --- helpers ---


def git_sha(repo: str | Path | None = None) -> str | None:
    """HEAD commit of the repository (None outside git or before the first commit)."""
    cwd = Path(repo) if repo is not None else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def data_fingerprint(path: str | Path) -> tuple[str, list[str]]:
    """sha256 over (relative name, sha256 of bytes) of every file under `path` (or of the file)."""
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    names = []
    for file in files:
        name = file.name if file == root else str(file.relative_to(root))
        digest.update(name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
        names.append(name)
    return digest.hexdigest(), names


def build_catalogue(dataset: Dataset, timelines: Mapping[str, Sequence[Event]], item_vocab: Vocab) -> dict:
    """Item id -> {"title", "categories"} for every real token of `item_vocab`.

    Categories are those the item's training events carry (first-seen order, union over events),
    which is what the encoder saw; the title comes from the item table (None when unknown).
    """
    categories: dict[str, dict[str, None]] = {}
    for events in timelines.values():
        for event in events:
            seen = categories.setdefault(event.item, {})
            for category in event.categories:
                seen.setdefault(category, None)
    catalogue = {}
    for item_id in item_vocab.tokens[2:]:
        item = dataset.items.get(item_id)
        catalogue[item_id] = {
            "title": item.title if item is not None else None,
            "categories": list(categories.get(item_id, {})),
        }
    return catalogue


def vocabs_from_dict(data: Mapping[str, Any]) -> dict[str, Vocab]:
    """The vocabularies stored in a checkpoint's vocab.json (the optional ones when it has them)."""
    return {name: Vocab.from_dict(data[name]) for name in (*FEATURES, *OPTIONAL_FEATURES) if name in data}


def encoded(events: Sequence[Event], vocabs: Mapping[str, Vocab], window: int) -> dict[str, list[Any]]:
    """The last `window` events encoded for `collate_events`."""
    return encode_events(list(events)[-window:], vocabs)


def history_items(histories: Sequence[Sequence[Event]], item_vocab: Vocab) -> Tensor:
    """(B, T') item ids of every event of each history, right-padded with 0: what the encoder's seen
    bias marks (`UserEncoder.last_item_logits`), older events than its window included."""
    rows = [torch.tensor([item_vocab.encode(e.item) for e in ev], dtype=torch.long) for ev in histories]
    return pad_sequence(rows, batch_first=True) if rows else torch.zeros(0, 0, dtype=torch.long)


# --- loading ---


class DataMismatch(ValueError):
    """A checkpoint pointed at data other than the data it was trained on."""


def _describe(name: Any, sha: Any, category: Any, files: Sequence[str]) -> str:
    where = f"{name}" + (f" category {category}" if category else "")
    return f"{where} (data sha256 {str(sha)[:12]}, files {', '.join(files[:3]) or '?'})"


def load_corpus_for(
    ck: Checkpoint, dataset: str, path: str | None = None, *, category: str | None = None, max_users: int = 0
) -> Corpus:
    """The data a checkpoint is evaluated or fine-tuned on, encoded with the checkpoint's vocabularies.

    Its item ids mean nothing on another data set (a MovieLens-latest encoder scores ML-100K at a
    Recall@10 of 0.017 instead of 0.107), so data other than the checkpoint's (another data set name,
    other files, another category) is a `DataMismatch` naming both, not a silent score."""
    corpus = load_corpus(
        dataset, path, category=category, max_users=max_users, vocabs=vocabs_from_dict(ck.extras["vocab"])
    )
    trained = ck.manifest.get("dataset"), ck.manifest.get("data_sha256")
    trained_category = (ck.manifest.get("train_config") or {}).get("category") or None
    if trained == (None, None):
        return corpus  # a checkpoint that does not record its data: nothing to check against
    given = corpus.dataset.name, corpus.data_sha256
    if trained != given or trained_category != (category or None):
        was = _describe(*trained, trained_category, ck.manifest.get("data_files") or [])
        now = _describe(*given, category, corpus.data_files)
        raise DataMismatch(
            f"checkpoint {ck.path} was trained on {was}, but the data given (--dataset={dataset} "
            f"--path={path}) is {now}: its vocabulary does not fit this data. Pass a checkpoint trained "
            "on this data (--checkpoint / --encoder_dir), or the checkpoint's own --dataset and --path."
        )
    return corpus


def load_corpus(
    dataset: str,
    path: str | None = None,
    *,
    category: str | None = None,
    max_users: int = 0,
    vocabs: Mapping[str, Vocab] | None = None,
    length: bool = False,
) -> Corpus:
    """Load, optionally cut to the first `max_users` users, split leave-last-out, build vocabularies
    (with the review-length one when `length`).

    Pass `vocabs` (from a checkpoint) to encode with the model's ids instead of rebuilding them.
    """
    name = canonical_name(dataset)
    options: dict[str, Any] = {}
    if name == "google-local-2021":
        options["state"] = category
    else:
        options["category"] = category
    data = load_dataset(name, path, **options)
    if max_users:
        kept = list(data.timelines)[:max_users]
        data = Dataset(
            data.name, {u: data.timelines[u] for u in kept}, data.items, data.skipped, data.counters
        )
    splits = leave_last_out(data)
    vocab_map = dict(vocabs) if vocabs is not None else build_vocabs(splits.train, length=length)
    source = Path(path) if path is not None else ML_LATEST_SMALL
    sha, files = data_fingerprint(source)
    catalogue = build_catalogue(data, splits.train, vocab_map["item"])
    return Corpus(data, splits, vocab_map, catalogue, sha, files)
