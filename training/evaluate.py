"""Offline evaluation harness: leave-last-out TEST users, full-ranking next-item metrics, genre, reviews.

Every model is a *scorer*: a function from a chunk of held-out examples to (B, V) item scores over
the whole item vocabulary. The harness ranks ALL catalogue items under two protocols, reported side by
side and labelled everywhere:

  - "all_items":        every catalogue item is a candidate (SASRec / pmixer full ranking);
  - "exclude_history":  items already in the user's history are removed first (what the service's
                        /recommend `exclude_seen` does); a re-consumed target then counts as a miss.

Favourite genre (USER-LLM Sec. 4: the most frequent category of the history, ties to the most recent)
is scored as accuracy; review generation as ROUGE-1 / ROUGE-L F1 (`rouge-score`).

    python -m training evaluate --checkpoint=checkpoints/encoder --out_dir=results/encoder
"""

from __future__ import annotations

import random
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.checkpoint import Checkpoint, load_checkpoint, load_state_strict
from models.features import collate_events
from models.lower_layers import split_layer
from models.user_encoder import UserEncoder, UserEncoderConfig
from training.config import EvalConfig
from training.corpus import Corpus, encoded, history_items, load_corpus_for
from training.data import Example, favourite_category
from training.generic_text import GenericText, generic_texts
from training.metrics import accuracy, ranking_metrics, rouge, rouge_pairs, seen_mask, target_ranks
from training.tasks import TaskRunner
from training.text_eval import perplexity_ratio, text_report
from training.text_metrics import repetition_summary
from training.text_tasks import TextTasks
from training.userllm_setup import load_userllm

__all__ = [
    "PROTOCOLS",
    "Scorer",
    "encoder_from_checkpoint",
    "encoder_scorers",
    "evaluate_genre",
    "evaluate_next_item",
    "evaluate_userllm",
    "load_encoder",
    "main",
    "write_results",
]

PROTOCOLS = {
    "all_items": "full ranking over every catalogue item",
    "exclude_history": "full ranking without the items already in the user's history (= exclude_seen)",
}
Scorer = Callable[[Sequence[Example]], Tensor]  # examples -> (B, V) item scores


# --- harness ---


def evaluate_next_item(
    scorer: Scorer, corpus: Corpus, examples: Sequence[Example], *, ks: Sequence[int], batch_size: int = 128
) -> dict[str, Any]:
    """Recall@K and NDCG@max(K) under both protocols, how many targets were unknown items, and each
    user's 0-based target rank under both protocols (`ranks`: what `python -m training compare` pairs
    between two runs)."""
    item_vocab = corpus.vocabs["item"]
    ranks: dict[str, list[Tensor]] = {name: [] for name in PROTOCOLS}
    unknown = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        scores = scorer(chunk)  # (B, V)
        targets = torch.tensor([item_vocab.encode(ex.target.item) for ex in chunk])  # (B,)
        unknown += int((targets < 2).sum())
        histories = [[item_vocab.encode(e.item) for e in ex.history] for ex in chunk]
        ranks["all_items"].append(target_ranks(scores, targets))
        ranks["exclude_history"].append(target_ranks(scores, targets, seen_mask(histories, scores.shape[1])))
    out: dict[str, Any] = {"users": len(examples), "unknown_targets": unknown}
    per_user: dict[str, Any] = {"user": [ex.user for ex in examples]}
    for name in PROTOCOLS:
        joined = torch.cat(ranks[name]) if ranks[name] else torch.zeros(0, dtype=torch.long)
        out[name] = ranking_metrics(joined, ks=ks, ndcg_ks=(max(ks),))
        per_user[name] = joined.tolist()
    out["ranks"] = per_user
    return out


def evaluate_genre(predict: Callable[[Sequence[Example]], list[str | None]], examples: Sequence[Example],
                   *, batch_size: int = 128) -> dict[str, Any]:  # fmt: skip
    """Favourite-category accuracy over the users whose history has a category."""
    labelled = [ex for ex in examples if favourite_category(ex.history) is not None]
    predictions: list[str | None] = []
    for i in range(0, len(labelled), batch_size):
        predictions.extend(predict(labelled[i : i + batch_size]))
    labels = [favourite_category(ex.history) for ex in labelled]
    return {"accuracy": accuracy(predictions, labels), "users": len(labelled)}


# --- the pretrained encoder as a scorer (the sequence-only baseline) ---


def encoder_from_checkpoint(ck: Any, where: str | Path = "") -> UserEncoder:
    """An already loaded encoder Checkpoint -> the model in eval mode (strict weights)."""
    if ck.manifest["kind"] != "encoder":
        raise ValueError(f"{where}: expected an encoder checkpoint, got kind {ck.manifest['kind']!r}")
    encoder = UserEncoder(UserEncoderConfig(**ck.config["encoder"]))
    load_state_strict(encoder, ck.state_dict)
    return encoder.eval()


def load_encoder(directory: str | Path) -> tuple[UserEncoder, dict[str, Any], Any]:
    """Encoder checkpoint -> (model in eval mode, vocab dict, Checkpoint)."""
    ck = load_checkpoint(directory)
    return encoder_from_checkpoint(ck, directory), ck.extras["vocab"], ck


def encoder_scorers(encoder: UserEncoder, corpus: Corpus, history_events: int = 0) -> tuple[Scorer, Callable]:
    """(next-item scorer, favourite-category predictor) of a pretrained encoder, reading the newest
    `window` events (or `history_events` when smaller and > 0).

    Next item: the item head's logits at the last real history event (SASRec-style; with the encoder's
    seen bias over the whole history, `UserEncoder.last_item_logits`). Favourite category: argmax of
    the category head's mean log-probabilities over the history's events.
    """
    window = min(encoder.config.window, history_events or encoder.config.window)
    categories = corpus.vocabs["category"]

    def collated(examples: Sequence[Example]) -> tuple[dict[str, Tensor], Tensor]:
        return collate_events([encoded(ex.history, corpus.vocabs, window) for ex in examples], window)

    @torch.no_grad()
    def score_items(examples: Sequence[Example]) -> Tensor:
        seen = history_items([ex.history for ex in examples], corpus.vocabs["item"])
        return encoder.last_item_logits(*collated(examples), seen)  # (B, V)

    @torch.no_grad()
    def predict_genre(examples: Sequence[Example]) -> list[str | None]:
        features, mask = collated(examples)
        logits = encoder.next_event_logits(encoder(features, mask).hidden)  # name -> (B, T, V)
        logp = logits["category"].log_softmax(dim=-1) * mask[..., None]  # (B, T, C)
        mean = logp.sum(dim=1) / mask.sum(dim=1, keepdim=True)  # (B, C)
        mean[:, :2] = -torch.inf  # never predict pad / unknown
        return [categories.decode(int(i)) for i in mean.argmax(dim=-1)]

    return score_items, predict_genre


# --- a USER-LLM checkpoint: scores, reviews and generated text ---


def userllm_runner(ck: Checkpoint, corpus: Corpus, history_events: int = 0) -> TaskRunner:
    """The checkpoint's model with the prompts it was trained on (same prompt cut and user input); the
    user tower reads the newest `history_events` events when that is smaller than its window."""
    model, tokenizer = load_userllm(ck)
    train_cfg = ck.manifest.get("train_config") or {}  # the baselines' training-only choices
    runner = TaskRunner(
        model, tokenizer, corpus, model.config.prompt_tokens or 1_000_000,
        reuse_lower=split_layer(model.llm) > 0,  # soft prompt / PPlug condition the input: nothing to reuse
        user_input=train_cfg.get("user_input", "embeddings"), text_events=train_cfg.get("text_events", 50),
        text_tokens=train_cfg.get("text_tokens", 1024),
    )  # fmt: skip
    runner.window = min(runner.window, history_events or runner.window)
    return runner


def userllm_text_report(runner: TaskRunner, examples: Sequence[Example], users: int) -> dict[str, Any]:
    """training/text_eval.py's report on the first `users` examples (the held-out generic text)."""
    return text_report(TextTasks(runner), held_out_generic(runner), list(examples[:users]))


def held_out_generic(runner: TaskRunner) -> list[GenericText]:
    """The held-out generic texts (training/generic_text.py) of the runner's backbone."""
    backbone_dir = runner.model.llm.backbone.name_or_path  # the folder the backbone was loaded from
    return generic_texts(runner.model.llm, runner.tokenizer, backbone_dir)[1]


@torch.no_grad()
def evaluate_userllm(cfg: EvalConfig, ck: Checkpoint, corpus: Corpus, examples: Sequence[Example]) -> dict:
    """Next-item (both protocols), favourite genre, ROUGE for review-trained models, and the text report
    (fluency, repetition, personalization, samples) on `cfg.text_users` users (for the text-prompt and
    no-user baselines: the generic-text perplexity ratio only)."""
    runner = userllm_runner(ck, corpus, cfg.history_events)
    model = runner.model
    tasks = ck.manifest.get("tasks", ["next_item", "favourite_category"])
    cats = corpus.vocabs["category"]
    result: dict[str, Any] = {
        "model": cfg.label or f"USER-LLM ({model.config.llm.mode}, {model.config.strategy})"
    }
    if runner.user_input == "none":  # the report compares the other review rows with this one
        result["baseline"] = "no-user"
    if "next_item" in tasks:
        result["next_item"] = evaluate_next_item(
            lambda chunk: runner.scores(chunk, "next_item"), corpus, examples, ks=cfg.k_list,
            batch_size=min(cfg.batch_size, 32),
        )  # fmt: skip
    if "favourite_category" in tasks:

        def predict_genre(chunk: Sequence[Example]) -> list[str | None]:
            return [cats.decode(int(i)) for i in runner.scores(chunk, "favourite_category").argmax(-1)]

        result["favourite_category"] = evaluate_genre(
            predict_genre, examples, batch_size=min(cfg.batch_size, 32)
        )
    if "review" in tasks:
        with_text = [ex for ex in examples if ex.target.text]
        random.Random(cfg.seed).shuffle(with_text)
        chosen = with_text[: cfg.max_review_examples]
        preds = [p for i in range(0, len(chosen), 8) for p in runner.generate_reviews(chosen[i : i + 8], 48)]
        refs = [ex.target.text or "" for ex in chosen]
        samples = [{"user": ex.user, "item": ex.target.item, "generated": p, "reference": r}
                   for ex, p, r in zip(chosen[:5], preds, refs, strict=False)]  # fmt: skip
        pairs = rouge_pairs(preds, refs)
        result["review"] = {**rouge(preds, refs), "repetition": repetition_summary(preds),
                            "examples": len(chosen), "samples": samples,
                            "rougeL_by_example": {f"{ex.user} {ex.target.item}": p["rougeL"]
                                                  for ex, p in zip(chosen, pairs, strict=True)}}  # fmt: skip
    if cfg.text_users > 0 and runner.user_input == "embeddings":
        result["text"] = userllm_text_report(runner, examples, cfg.text_users)
    elif cfg.text_users > 0:  # the baselines: how far their fine-tuning moved generic text (no user tokens)
        result["fluency"] = perplexity_ratio(
            TextTasks(runner), held_out_generic(runner), list(examples[: cfg.text_users])
        )
    return result


# --- output ---


def write_results(results: list[dict[str, Any]], out_dir: str | Path) -> Path:
    """results.json, results.md and plots/ in `out_dir`; returns the JSON path."""
    from training.results import json_text, markdown_table, plot_results

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json_text(results), encoding="utf-8")
    (out / "results.md").write_text(markdown_table(results) + "\n", encoding="utf-8")
    plot_results(results, out / "plots")
    return path


def command_line() -> str:
    """The `python -m training ...` invocation of this process (shell-quoted), or "" when imported."""
    if not sys.argv[0].endswith(("training", "__main__.py")):
        return ""
    return "python -m training " + shlex.join(sys.argv[1:])


def main(cfg: EvalConfig) -> dict[str, Any]:
    ck = load_checkpoint(cfg.checkpoint)
    corpus = load_corpus_for(ck, cfg.dataset, cfg.path, category=cfg.category, max_users=cfg.max_users)
    examples = corpus.examples(cfg.split)
    if ck.manifest["kind"] == "encoder":
        encoder, _, _ = load_encoder(cfg.checkpoint)
        score_items, predict_genre = encoder_scorers(encoder, corpus, cfg.history_events)
        result = {
            "model": cfg.label or "sequence-only (pretrained encoder item head)",
            "next_item": evaluate_next_item(
                score_items, corpus, examples, ks=cfg.k_list, batch_size=cfg.batch_size
            ),
            "favourite_category": evaluate_genre(predict_genre, examples, batch_size=cfg.batch_size),
        }
    else:
        result = evaluate_userllm(cfg, ck, corpus, examples)
        result["finetune_config"] = ck.manifest.get("train_config")  # results.py prints its command
    result.update(
        dataset=corpus.dataset.name, split=cfg.split, checkpoint=str(cfg.checkpoint),
        model_version=ck.model_version, data_sha256=corpus.data_sha256, eval_config=asdict(cfg),
        command=command_line(), group=cfg.group,
    )  # fmt: skip
    write_results([result], cfg.out_dir)
    return result
