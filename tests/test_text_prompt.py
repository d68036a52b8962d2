"""Text-prompt baseline (training/text_prompt.py): rendering, shared-prefix features, feature cache, CLI.

The end-to-end tests run a tiny random Llama that uses the real SmolLM2 tokenizer (chat template) and a
tiny pretrained encoder on the vendored ml-latest-small; skips without the converted backbone folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_fixtures import real_backbone_dir  # noqa: F401
from training_fixtures import pretrain_tiny_encoder, write_tiny_backbone
from transformers import AutoTokenizer

import training.text_prompt as tp
from models.backbone import load_backbone, tiny_llama
from models.prompts import instruction, prompt_ids
from training.cli import main as cli
from training.config import ConfigError, TextPromptConfig, apply_overrides
from training.corpus import Corpus, build_catalogue
from training.data import Dataset, Event, Item, build_vocabs, leave_last_out

pytestmark = pytest.mark.backbone


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """One torch thread for the module (fixture in conftest.py)."""


def toy_corpus(n_events: int = 30) -> Corpus:
    """One user with `n_events` rated events over items 1..n (item "99" has no title), plus a short user."""
    items = {str(i): Item(str(i), f"Film {i} ({1990 + i})", ("Drama",)) for i in range(1, n_events + 1)}

    def ev(item: str, t: int, rating: float | None = 4.0) -> Event:
        return Event(item=item, timestamp=t, rating=rating, categories=("Drama", "Comedy"))

    timelines = {
        "u1": [ev(str(i), i, 3.5 if i == 2 else 4.0) for i in range(1, n_events + 1)],
        "u2": [ev("99", 1, None), ev("1", 2), ev("2", 3), ev("3", 4)],
    }
    dataset = Dataset("movielens-toy", timelines, items)
    splits = leave_last_out(dataset)
    vocabs = build_vocabs(splits.train)
    return Corpus(
        dataset, splits, vocabs, build_catalogue(dataset, splits.train, vocabs["item"]), "0" * 64, []
    )


@pytest.fixture(scope="module")
def tokenizer(real_backbone_dir: Path):  # noqa: F811
    return AutoTokenizer.from_pretrained(real_backbone_dir, local_files_only=True)


@pytest.fixture(scope="module")
def tiny_backbone(real_backbone_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A tiny random Llama saved with the real tokenizer (max 512 positions)."""
    return write_tiny_backbone(tmp_path_factory.mktemp("tp-backbone"), real_backbone_dir, max_positions=512)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_tiny_encoder(tmp_path_factory.mktemp("tp-encoder"))


def tp_config(encoder_dir: Path, backbone: Path, root: Path, **overrides) -> TextPromptConfig:
    paths = dict(encoder_dir=str(encoder_dir), backbone_dir=str(backbone), out_dir=str(root / "out"),
                 run_dir=str(root / "run"), ks="1,10")  # fmt: skip
    return TextPromptConfig.tiny(**(paths | overrides))


def counting_loader(calls: list[int]):
    """`load_backbone` whose decoder counts its forward calls in `calls`."""

    def load(*args, **kwargs):
        model, tok = load_backbone(*args, **kwargs)
        model.model.register_forward_hook(lambda *_: calls.append(1))
        return model, tok

    return load


# --- rendering ---


def test_history_text_format() -> None:
    corpus = toy_corpus(5)
    events = corpus.splits.train["u1"][:2] + corpus.splits.train["u2"][:1]
    assert tp.history_text(corpus, events) == (
        "Movies this user rated, oldest first:\n"
        "1. Film 1 (1991) (Drama, Comedy): 4/5\n"
        "2. Film 2 (1992) (Drama, Comedy): 3.5/5\n"
        "3. 99 (Drama, Comedy)"  # no title: the id; no rating: no rating part
    )
    assert tp.history_text(corpus, []) == "This user has no movie history yet."


def test_render_drops_the_oldest_events_first_to_fit_the_budget(tokenizer) -> None:
    corpus = toy_corpus(30)
    history = corpus.splits.train["u1"]  # 28 events
    (full, _), shown = tp.render_prompts(tokenizer, corpus, history, max_events=50, max_prompt_tokens=4096)
    assert shown == len(history)
    budget = len(full) - 60  # room for fewer events
    prompts, shown = tp.render_prompts(tokenizer, corpus, history, max_events=50, max_prompt_tokens=budget)
    assert 0 < shown < len(history) and all(len(p) <= budget for p in prompts)
    kept = tp.history_text(corpus, history[-shown:])  # the newest `shown` events, whole lines
    assert kept.splitlines()[-1] == f"{shown}. Film 28 (2018) (Drama, Comedy): 4/5"
    noun_kw = dict(noun="movie", category="genre", history=kept)
    assert prompts == [prompt_ids(tokenizer, instruction(k, **noun_kw)) for k in ("next_item", "genre")]
    one_more = tp.history_text(corpus, history[-shown - 1 :])
    assert len(prompt_ids(tokenizer, instruction("next_item", **{**noun_kw, "history": one_more}))) > budget
    _, capped = tp.render_prompts(tokenizer, corpus, history, max_events=5, max_prompt_tokens=4096)
    assert capped == 5


def test_prompt_cuts_are_evenly_spaced_and_include_the_last() -> None:
    corpus = toy_corpus(30)
    cuts = [ex for ex in tp.prompt_cuts(corpus, 4) if ex.user == "u1"]  # 28 train events
    assert [len(ex.history) for ex in cuts] == [8, 14, 20, 27]
    assert cuts[-1].target == corpus.splits.train["u1"][-1]
    assert all(ex.target == corpus.splits.train["u1"][len(ex.history)] for ex in cuts)
    short = [len(ex.history) for ex in tp.prompt_cuts(corpus, 4) if ex.user == "u2"]  # 2 train events
    assert short == [1]


# --- features ---


def test_shared_prefix_features_equal_a_full_forward_per_prompt() -> None:
    torch.manual_seed(0)
    model = tiny_llama()
    g = torch.Generator().manual_seed(1)
    prompts = []
    for n in (5, 12, 9, 3):
        prefix = torch.randint(3, 99, (n,), generator=g).tolist()
        prompts.append([prefix + [7, 8, 9], prefix + [10, 11]])  # K = 2, different tails
    prompts.append([[4, 5, 6], [4, 5, 6, 7]])  # one prompt is a prefix of the other
    got = tp.last_hidden_states(model.model, prompts, pad=0, batch_size=3)
    assert got.shape == (5, 2, 32)
    with torch.no_grad():
        for n, pair in enumerate(prompts):
            for k, ids in enumerate(pair):
                want = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
                torch.testing.assert_close(got[n, k], want, rtol=1e-4, atol=1e-5)


# --- end to end ---


def test_text_prompt_writes_results_and_reuses_the_feature_cache(
    encoder_dir: Path, tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(tp, "load_backbone", counting_loader(calls))
    cfg = tp_config(encoder_dir, tiny_backbone, tmp_path)
    result = tp.main(cfg)
    first = len(calls)
    assert first > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved[0]["model"] == tp.LABEL and saved[0]["dataset"] == "movielens-latest"
    ni = saved[0]["next_item"]
    assert set(ni) == {"users", "unknown_targets", "all_items", "exclude_history", "ranks"}
    assert ni["users"] == 12
    assert set(ni["all_items"]) == set(ni["exclude_history"]) == {"recall@1", "recall@10", "ndcg@10"}
    assert 0.0 <= saved[0]["favourite_category"]["accuracy"] <= 1.0
    assert 30 < saved[0]["prompt_tokens"] <= 200 and saved[0]["max_events"] == 50
    assert 0 < saved[0]["events_in_prompt"] <= 50
    assert "| prompt tokens |" in (tmp_path / "out" / "results.md").read_text()  # training/results.py
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in log] == [1, 2, 3]  # one line per epoch
    assert len(list((tmp_path / "run").glob("features-*.pt"))) == 3  # train, valid, test: one chunk each
    # a rerun (e.g. other head settings) reads every feature from the cache: no backbone call at all
    again = tp.main(cfg)
    assert len(calls) == first
    assert again["next_item"] == result["next_item"] and again["prompt_tokens"] == result["prompt_tokens"]
    distilled = tp.main(tp_config(encoder_dir, tiny_backbone, tmp_path, distill=0.5))  # cached features too
    assert len(calls) == first and distilled["text_prompt_config"]["distill"] == 0.5
    # a different rendering setting is a different key: recomputed
    tp.main(tp_config(encoder_dir, tiny_backbone, tmp_path, max_events=5))
    assert len(calls) > first


def test_an_interrupted_feature_pass_resumes_at_the_missing_chunks(
    encoder_dir: Path, tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tp, "CHUNK", 8)
    calls: list[int] = []
    monkeypatch.setattr(tp, "load_backbone", counting_loader(calls))
    tp.main(tp_config(encoder_dir, tiny_backbone, tmp_path / "clean", epochs=1))
    total, calls[:] = len(calls), []

    def crash_after(limit: int):
        def load(*args, **kwargs):
            model, tok = counting_loader(calls)(*args, **kwargs)

            def hook(*_):
                if len(calls) >= limit:
                    raise KeyboardInterrupt

            model.model.register_forward_hook(hook)
            return model, tok

        return load

    # chunks of 8 examples in batches of 4: 2 x (1 prefix + 2 instruction) = 6 forward calls a chunk
    monkeypatch.setattr(tp, "load_backbone", crash_after(6 * 3 + 2))
    cfg = tp_config(encoder_dir, tiny_backbone, tmp_path / "crash", epochs=1)
    with pytest.raises(KeyboardInterrupt):
        tp.main(cfg)
    assert len(list((tmp_path / "crash" / "run").glob("features-train-*.pt"))) == 3
    calls[:] = []
    monkeypatch.setattr(tp, "load_backbone", counting_loader(calls))
    resumed = tp.main(cfg)
    assert len(calls) == total - 6 * 3
    clean = json.loads((tmp_path / "clean" / "out" / "results.json").read_text())[0]
    assert resumed["next_item"]["all_items"] == pytest.approx(clean["next_item"]["all_items"])


# --- options ---


def test_bad_options_are_clear_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="max_events must be >= 1"):
        apply_overrides(TextPromptConfig(), ["--max_events=0"])
    with pytest.raises(ConfigError, match="did you mean --max_events"):
        apply_overrides(TextPromptConfig(), ["--max_event=10"])
    with pytest.raises(ConfigError, match="ks must be"):
        apply_overrides(TextPromptConfig(), ["--ks=ten"])
    with pytest.raises(ConfigError, match="max_prompt_tokens must be >= 32"):
        TextPromptConfig(max_prompt_tokens=16)
    assert cli(["text-prompt", "--cuts_per_user=four"]) == 2
    assert "--cuts_per_user expects an integer" in capsys.readouterr().err
    assert TextPromptConfig(out_dir="results/ml-100k/text-prompt").resolved_run_dir == "runs/text-prompt"
