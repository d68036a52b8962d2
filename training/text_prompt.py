"""Text-prompt (TP) baseline: the same backbone reads the user's history as text instead of user embeddings.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598) compares its embedding contextualization with "text
prompt" contextualization: the history goes into the prompt as text ("1. Toy Story (1995) (Animation,
Children's, Comedy): 4/5", oldest first; the oldest events are dropped until the chat prompt fits
`max_prompt_tokens`). The LLM is frozen (the cheapest budget): its final-norm hidden state at the last
prompt token is computed once per prompt (a history's task prompts share their prefix: one pass, KV
cache) and cached; USER-LLM's factorised heads (output embeddings = the pretrained encoder's next-event
heads, `center` = the mean training feature) train on it. Same split, vocabulary and harness as USER-LLM.

    python -m training text-prompt --dataset=movielens-100k --path=../shared/data/movielens-100k \
        --encoder_dir=checkpoints/ml-100k/encoder-2l --out_dir=results/ml-100k/text-prompt --threads=1

Shapes: N examples, K task prompts per example (2), B batch, S tokens, Dl LLM width, De encoder width.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models.backbone import backbone_id, load_backbone
from models.generation import left_pad
from models.heads import CategoryHead, NextItemHead
from models.prompts import instruction
from training.config import TextPromptConfig, seed_everything
from training.corpus import Corpus, load_corpus_for
from training.data import Event, Example, favourite_category
from training.distill import EncoderTeacher, distillation_loss
from training.evaluate import command_line, evaluate_genre, evaluate_next_item, load_encoder, write_results
from training.history_text import fit_history, history_text
from training.metrics import ranking_metrics, target_ranks
from training.run import RunLog, configure_optimizer
from training.tasks import default_backbone_dir, nouns

__all__ = ["history_text", "last_hidden_states", "main", "prompt_cuts", "render_prompts", "split_features"]

TASKS = {"next_item": "next_item", "favourite_category": "genre"}  # head task -> models/prompts.py key
LABEL = "text-prompt (frozen backbone, history as text)"
IGNORE, HEAD_BATCH = -100, 256  # label of examples without a known target; rows per head-training step
CHUNK = 256  # examples per feature-cache file (a rerun recomputes only the missing chunks)


# --- rendering ---


def render_prompts(
    tokenizer: Any, corpus: Corpus, history: Sequence[Event], *, max_events: int, max_prompt_tokens: int
) -> tuple[list[list[int]], int]:
    """Chat-prompt ids of every task in TASKS for one history, and how many events they show
    (training/history_text.py `fit_history`)."""
    noun, category = nouns(corpus.dataset.name)
    tasks = [(key, {"noun": noun, "category": category}) for key in TASKS.values()]
    return fit_history(
        tokenizer, corpus, history, tasks, max_events=max_events, max_prompt_tokens=max_prompt_tokens
    )


def prompt_cuts(corpus: Corpus, cuts_per_user: int) -> list[Example]:
    """Training examples: per user `cuts_per_user` cuts of the TRAIN timeline, evenly spaced, the last
    always included (history = the events before the cut, target = the event at it)."""
    out = []
    for user, events in corpus.splits.train.items():
        n = len(events)
        cuts = sorted({round(1 + (n - 2) * (j + 1) / cuts_per_user) for j in range(cuts_per_user)})
        out += [Example(user, tuple(events[:t]), events[t]) for t in cuts if n >= 2]
    return out


# --- features ---


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix that leaves at least one token of each sequence."""
    first, end = seqs[0], min(len(s) for s in seqs) - 1
    return next((j for j in range(end) if any(s[j] != first[j] for s in seqs[1:])), end)


@torch.no_grad()
def last_hidden_states(
    decoder: nn.Module, prompts: Sequence[Sequence[Sequence[int]]], *, pad: int, batch_size: int,
    on_batch: Callable[[int], Any] = lambda rows: None,
) -> Tensor:  # fmt: skip
    """Final-norm hidden state at the last token of every prompt: (N, K, Dl). `prompts[n]` are the K prompts
    of example n: their common prefix runs once, each prompt's rest continues from its KV cache. Batches
    of similar length, left-padded, positions from the mask."""
    n, k, out = len(prompts), len(prompts[0]), None
    order = sorted(range(n), key=lambda i: len(prompts[i][0]))
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        shared = [common_prefix(prompts[i]) for i in rows]
        ids, mask = left_pad([prompts[i][0][:p] for i, p in zip(rows, shared, strict=True)], pad_token_id=pad)
        mask = mask.long()  # (B, S)
        cache = decoder(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True).past_key_values  # fmt: skip
        for task in range(k):
            rest, rest_mask = left_pad([prompts[i][task][p:] for i, p in zip(rows, shared, strict=True)],
                                       pad_token_id=pad)  # (B, S') after the prefix  # fmt: skip
            full = torch.cat([mask, rest_mask.long()], dim=1)  # (B, S + S')
            positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -rest.shape[1] :]
            hidden = decoder(input_ids=rest, attention_mask=full, position_ids=positions,
                             past_key_values=cache, use_cache=True).last_hidden_state  # fmt: skip
            out = torch.zeros(n, k, hidden.shape[-1]) if out is None else out
            out[rows, task] = hidden[:, -1].float()
            cache.crop(-rest.shape[1])  # drop the tail: back to the shared prefix for the next task
        on_batch(len(rows))
    return out


def split_features(
    name: str, examples: Sequence[Example], *, corpus: Corpus, cfg: TextPromptConfig, backbone_dir: str,
    get_backbone: Callable[[], tuple[Any, Any]],
) -> dict[str, Tensor]:  # fmt: skip
    """{"features": (N, K, Dl), "prompt_tokens": (N, K), "events": (N,)} of one split, cached per CHUNK
    examples as run_dir/features-<name>-<chunk>-<key>.pt, the key a hash of the backbone (weights id,
    tokenizer files), data, settings and rendered histories; only a miss calls `get_backbone`."""
    noun, category = nouns(corpus.dataset.name)
    files = [f for f in sorted(Path(backbone_dir).iterdir()) if f.is_file() and f.suffix != ".safetensors"]
    texts = [instruction(k, noun=noun, category=category, history="{history}") for k in TASKS.values()]
    texts += [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]  # tokenizer, chat template, config
    settings = [backbone_id(backbone_dir), corpus.data_sha256, name, cfg.max_events, cfg.max_prompt_tokens]
    settings += [cfg.backbone_dtype] if cfg.backbone_dtype != "float32" else []  # float32 keys unchanged
    head = json.dumps(settings + texts)
    run_dir, parts = Path(cfg.resolved_run_dir), []
    bar = tqdm(total=len(examples), disable=not cfg.progress, unit="example", desc=f"features ({name})")
    for start in range(0, len(examples), CHUNK):
        chunk, digest = examples[start : start + CHUNK], hashlib.sha256(head.encode())
        for ex in chunk:
            digest.update(json.dumps([ex.user, history_text(corpus, ex.history[-cfg.max_events :])]).encode())
        key = digest.hexdigest()
        path = run_dir / f"features-{name}-{start // CHUNK:04d}-{key[:16]}.pt"
        part = torch.load(path, weights_only=True) if path.is_file() else {}
        if part.get("key") != key:
            backbone, tokenizer = get_backbone()
            rendered = [render_prompts(tokenizer, corpus, ex.history, max_events=cfg.max_events,
                                       max_prompt_tokens=cfg.max_prompt_tokens) for ex in chunk]  # fmt: skip
            prompts = [p for p, _ in rendered]
            features = last_hidden_states(backbone.model, prompts, pad=tokenizer.pad_token_id,
                                          batch_size=cfg.batch_size, on_batch=bar.update)  # fmt: skip
            part = {"key": key, "features": features, "events": torch.tensor([e for _, e in rendered]),
                    "prompt_tokens": torch.tensor([list(map(len, p)) for p in prompts])}  # fmt: skip
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(part, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
        parts.append(part)
        bar.update(start + len(chunk) - bar.n)  # a cached chunk counts as done
    bar.close()
    return {k: torch.cat([part[k] for part in parts]) for k in ("features", "prompt_tokens", "events")}


# --- heads ---


def build_heads(encoder: nn.Module, corpus: Corpus, train_features: Tensor) -> nn.ModuleDict:
    """USER-LLM's factorised heads: in_proj (Dl -> De) zero, output embeddings + biases = the encoder's
    next-event heads, `center` = the task's mean training feature (train_features: (N, K, Dl))."""
    d, dl, c = encoder.config.d_model, train_features.shape[-1], len(corpus.vocabs["category"])
    heads = nn.ModuleDict({
        "next_item": NextItemHead(dim_model=dl, num_items=corpus.num_items, dim_embed=d, center=True),
        "favourite_category": CategoryHead(dim_model=dl, num_categories=c, dim_embed=d, center=True),
    })  # fmt: skip
    with torch.no_grad():
        for k, (task, feature) in enumerate((("next_item", "item"), ("favourite_category", "category"))):
            head, source = heads[task], encoder.heads[feature]  # same vocabulary: the encoder's
            head.proj.weight.copy_(source.weight)
            head.proj.bias.copy_(source.bias)
            nn.init.zeros_(head.in_proj.weight)
            head.center.copy_(train_features[:, k].mean(0))
    return heads


def labels(corpus: Corpus, examples: Sequence[Example]) -> dict[str, Tensor]:
    """Target item ids and favourite-category ids (0 = no label, 1 = unknown)."""
    items, categories = corpus.vocabs["item"], corpus.vocabs["category"]
    favourites = [favourite_category(ex.history) for ex in examples]
    return {"next_item": torch.tensor([items.encode(ex.target.item) for ex in examples]),
            "favourite_category": torch.tensor([categories.encode(f) if f else 0
                                                for f in favourites])}  # fmt: skip


def scores(head: nn.Module, features: Tensor) -> Tensor:
    """(B, Dl) features -> (B, N) logits, pad / unknown outputs at -inf."""
    logits = head(features[:, None], torch.ones(len(features), 1, dtype=torch.bool))
    return logits.index_fill(1, torch.tensor([0, 1]), -torch.inf)


def task_loss(head: nn.Module, features: Tensor, label: Tensor) -> Tensor:
    label = label.masked_fill(label < 2, IGNORE)
    if bool((label == IGNORE).all()):
        return head.proj.bias.sum() * 0.0  # nothing to learn from this batch
    return F.cross_entropy(scores(head, features), label, ignore_index=IGNORE)


def fit_heads(heads: nn.ModuleDict, train: tuple[Tensor, dict], valid: tuple[Tensor, dict],
              cfg: TextPromptConfig, teacher: Tensor | None = None) -> dict[str, int]:  # fmt: skip
    """AdamW on the cached features; each head keeps the epoch of its best validation loss (returned).
    `teacher` (N, I): the encoder's next-item logits of the training examples, distilled with weight
    `cfg.distill` as in USER-LLM fine-tuning (training/distill.py); validation is plain cross-entropy."""
    (x, y), (xv, yv) = train, valid

    def train_loss(task: str, k: int, rows: Tensor) -> Tensor:
        loss = task_loss(heads[task], x[rows, k], y[task][rows])
        if task == "next_item" and teacher is not None and cfg.distill > 0:
            soft = distillation_loss(scores(heads[task], x[rows, k]), teacher[rows])
            loss = (1 - cfg.distill) * loss + cfg.distill * soft
        return loss

    optimizer = configure_optimizer(heads, lr=cfg.lr, weight_decay=cfg.weight_decay, beta2=0.99)
    log = RunLog(cfg.resolved_run_dir, start=0, total=cfg.epochs, progress=cfg.progress, resume=False)
    log.note(f"text-prompt heads: {len(x):,} training / {len(xv):,} validation examples, {cfg.epochs} epochs")
    best = {task: (float("inf"), 0, copy.deepcopy(heads[task].state_dict())) for task in TASKS}
    for epoch in range(1, cfg.epochs + 1):
        order, total = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed + epoch)), 0.0
        for rows in order.split(HEAD_BATCH):
            loss = sum(train_loss(t, k, rows) for k, t in enumerate(TASKS))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows) / len(x)
        with torch.no_grad():
            val = {t: float(task_loss(heads[t], xv[:, k], yv[t])) for k, t in enumerate(TASKS)}
            ranks = target_ranks(scores(heads["next_item"], xv[:, 0]), yv["next_item"])
        for task, value in val.items():
            if value < best[task][0]:
                best[task] = (value, epoch, copy.deepcopy(heads[task].state_dict()))
        extra = {f"val_{t}": v for t, v in val.items()} | ranking_metrics(ranks, ks=(10,), ndcg_ks=())
        log.step()
        log.log(epoch, loss=total, val=sum(val.values()), lr=cfg.lr, **extra)
    log.close()
    for task, (_, _, state) in best.items():
        heads[task].load_state_dict(state)
    return {task: epoch for task, (_, epoch, _) in best.items()}


# --- command ---


def main(cfg: TextPromptConfig) -> dict[str, Any]:
    """Features (cached), heads, test metrics; writes out_dir/results.* and run_dir/heads.pt."""
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    encoder, _, ck = load_encoder(cfg.encoder_dir)
    corpus = load_corpus_for(ck, cfg.dataset, cfg.path, category=cfg.category, max_users=cfg.max_users)
    seed_everything(cfg.seed)
    backbone_dir = cfg.backbone_dir or default_backbone_dir()
    dtype = getattr(torch, cfg.backbone_dtype)
    get_backbone = functools.cache(lambda: load_backbone(backbone_dir, dtype=dtype))  # on a cache miss only
    examples = {"train": prompt_cuts(corpus, cfg.cuts_per_user), "valid": corpus.examples("valid"),
                "test": corpus.examples("test")}  # fmt: skip
    data = {name: split_features(name, exs, corpus=corpus, cfg=cfg, backbone_dir=backbone_dir,
                                 get_backbone=get_backbone) for name, exs in examples.items()}  # fmt: skip
    heads = build_heads(encoder, corpus, data["train"]["features"])
    train, valid = ((data[s]["features"], labels(corpus, examples[s])) for s in ("train", "valid"))
    teacher = None
    if cfg.distill > 0:  # the same teacher as USER-LLM's --distill: the pretrained encoder
        teach, cpu = EncoderTeacher(encoder, corpus), torch.device("cpu")
        train_examples = examples["train"]
        teacher = torch.cat(
            [teach.logits(train_examples[i : i + 256], cpu) for i in range(0, len(train_examples), 256)]
        )
    best_epochs = fit_heads(heads, train, valid, cfg, teacher)
    torch.save(heads.state_dict(), Path(cfg.resolved_run_dir) / "heads.pt")
    test, features = examples["test"], data["test"]["features"]
    row = {id(ex): i for i, ex in enumerate(test)}

    @torch.no_grad()
    def score(task: str, chunk: Sequence[Example]) -> Tensor:  # (B, N) from the cached test features
        return scores(heads[task], features[[row[id(ex)] for ex in chunk], list(TASKS).index(task)])

    categories, test_data = corpus.vocabs["category"], data["test"]
    result = {
        "model": cfg.label or LABEL,
        "next_item": evaluate_next_item(lambda c: score("next_item", c), corpus, test, ks=cfg.k_list),
        "favourite_category": evaluate_genre(
            lambda c: [categories.decode(int(i)) for i in score("favourite_category", c).argmax(-1)], test),
        "prompt_tokens": round(float(test_data["prompt_tokens"].float().mean()), 1),
        "max_events": cfg.max_events, "events_in_prompt": round(float(test_data["events"].float().mean()), 1),
        "best_epochs": best_epochs, "dataset": corpus.dataset.name, "split": "test",
        "checkpoint": cfg.encoder_dir, "model_version": ck.model_version, "data_sha256": corpus.data_sha256,
        "backbone_id": backbone_id(backbone_dir), "text_prompt_config": asdict(cfg),
        "command": command_line(), "train_config": ck.manifest.get("train_config"),
    }  # fmt: skip
    write_results([result], cfg.out_dir)
    return result
