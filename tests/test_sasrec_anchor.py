"""scripts/sasrec_anchor.py: the id mapping between our vocabulary and SASRec+'s, and the scoring path
through our evaluation harness, with stand-in models (no SASRec+ checkout needed). The end-to-end run
needs a checkout of antklen/sasrec-bert4rec-recsys23: set USERLLM_SASREC_SRC to its `src` folder."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from training.data import ML_LATEST_SMALL

REPO = Path(__file__).resolve().parents[1]


def _load_driver():
    spec = importlib.util.spec_from_file_location("sasrec_anchor", REPO / "scripts" / "sasrec_anchor.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sasrec_anchor"] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


anchor = _load_driver()


@pytest.fixture(scope="module")
def corpus():
    return anchor.load_corpus("movielens-latest", str(ML_LATEST_SMALL), max_users=60)


class LookupModel(nn.Module):
    """A stand-in for their SASRec, `forward(input_ids, attention_mask) -> (B, T, N + 1)`: at each row's
    newest event, id `place(target)` scores 1 and every other id 0, the target looked up by the input ids."""

    def __init__(self, targets: dict[tuple[int, ...], int], num_items: int, place: Callable[[int], int]):
        super().__init__()
        self.targets, self.num_items, self.place = targets, num_items, place

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = torch.zeros(*input_ids.shape, self.num_items + 1)  # (B, T, N + 1)
        for b, row in enumerate(input_ids.tolist()):
            ids = tuple(i for i in row if i != 0)
            if ids in self.targets:  # a user whose target is unseen in training: all zeros
                out[b, len(ids) - 1, self.place(self.targets[ids])] = 1.0
        return out


def _lookup(corpus, cfg, place: Callable[[int], int] = lambda i: i) -> tuple[LookupModel, list]:
    """The model knowing every known test target, and the examples whose target is known."""
    vocab = corpus.vocabs["item"]
    known = [ex for ex in corpus.splits.test if vocab.encode(ex.target.item) >= anchor.FIRST_ITEM_ID]
    targets = {
        tuple(anchor.sasrec_ids(ex.history, vocab)[-cfg.max_length :]): anchor.to_sasrec(
            vocab.encode(ex.target.item)
        )
        for ex in known
    }
    assert len(targets) == len(known)  # no two users share a truncated history
    return LookupModel(targets, anchor.item_count(vocab), place), known


def test_ids_round_trip_and_are_contiguous(corpus) -> None:
    vocab = corpus.vocabs["item"]
    ours = list(range(anchor.FIRST_ITEM_ID, len(vocab)))
    theirs = [anchor.to_sasrec(i) for i in ours]
    assert theirs == list(range(1, anchor.item_count(vocab) + 1))
    assert [anchor.from_sasrec(i) for i in theirs] == ours
    for not_an_item in (0, 1):
        with pytest.raises(ValueError):
            anchor.to_sasrec(not_an_item)
    sequences = anchor.training_sequences(corpus)
    assert set(sequences) == set(corpus.splits.train)  # every user has >= 2 training events here
    for user, ids in sequences.items():
        decoded = [vocab.decode(anchor.from_sasrec(i)) for i in ids]
        assert decoded == [e.item for e in corpus.splits.train[user]]


def test_vocab_scores_put_their_column_at_our_id() -> None:
    logits = torch.arange(6.0)[None, :]  # their ids 0 (pad) .. 5
    scores = anchor.vocab_scores(logits)
    assert scores.shape == (1, 7)
    for ours in range(anchor.FIRST_ITEM_ID, 7):
        assert scores[0, ours] == logits[0, anchor.to_sasrec(ours)]


def test_a_model_ranking_the_target_first_scores_one(corpus) -> None:
    cfg = anchor.AnchorConfig(max_length=7, eval_batch_size=16)  # truncated histories, several batches
    model, known = _lookup(corpus, cfg)
    assert 0 < len(known) < len(corpus.splits.test)  # some targets are unseen in training
    result = anchor.evaluate(model, corpus, known, cfg)
    for protocol in ("all_items", "exclude_history"):
        assert result[protocol]["recall@1"] == 1.0
        assert result[protocol]["ndcg@10"] == pytest.approx(1.0)
    everyone = anchor.evaluate(model, corpus, corpus.splits.test, cfg)  # unseen targets are misses
    assert everyone["unknown_targets"] == len(corpus.splits.test) - len(known)
    assert everyone["all_items"]["recall@10"] == pytest.approx(len(known) / len(corpus.splits.test))


def test_an_id_off_by_one_scores_nothing(corpus) -> None:
    cfg = anchor.AnchorConfig(max_length=7)
    model, known = _lookup(
        corpus, cfg, place=lambda i: i + 1 if i < anchor.item_count(corpus.vocabs["item"]) else 1
    )
    result = anchor.evaluate(model, corpus, known, cfg)
    assert result["all_items"]["recall@1"] == 0.0


@pytest.mark.skipif(not os.environ.get("USERLLM_SASREC_SRC"), reason="USERLLM_SASREC_SRC not set")
def test_driver_trains_their_model_and_writes_results(tmp_path: Path, one_torch_thread) -> None:
    from training.results import ResultsConfig
    from training.results import main as report

    cfg = anchor.AnchorConfig(
        sasrec_src=os.environ["USERLLM_SASREC_SRC"],
        max_users=40,
        max_epochs=2,
        minutes=0,
        out_dir=str(tmp_path / "anchor"),
        label="anchor under test",
    )
    row = anchor.main(cfg, ["--max_users=40"])
    assert row["anchor"]["epochs"] == 2 and row["anchor"]["stopped"] == "max_epochs"
    assert set(row["next_item"]) == {"users", "unknown_targets", "all_items", "exclude_history", "ranks"}
    out = tmp_path / "report.md"
    report(
        ResultsConfig(
            inputs=str(tmp_path / "anchor"),
            out=str(out),
            json_out=str(tmp_path / "r.json"),
            plots_dir=str(tmp_path / "plots"),
        )
    )
    assert "| anchor under test |" in out.read_text()
    assert json.loads((tmp_path / "r.json").read_text())["movielens-latest"][0]["command"].endswith("40")


def test_help_lists_the_options_and_a_bad_option_is_one_line(capsys) -> None:
    """`--help` prints every option with its default and exits 0; an unknown option or a bad value is a
    line on stderr naming it and exit code 2, before any data is loaded (no traceback)."""
    assert anchor.cli(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--sasrec_src=''" in out and "--minutes=10.0" in out and "--seed=1337" in out
    assert anchor.cli(["--minuts=5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown option --minuts") and "Traceback" not in err
    assert anchor.cli(["--batch_size=0"]) == 2
    assert "batch sizes, max_epochs, patience and threads must be >= 1" in capsys.readouterr().err
