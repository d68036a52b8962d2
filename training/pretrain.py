"""Self-supervised pretraining of the USER-LLM user encoder: predict every feature of the next event.

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598) Sec. 3.1: the autoregressive encoder reads
windows of 50 events and is trained with the mean of the per-feature next-event cross-entropies
(`UserEncoder.pretrain_loss`); `side_loss_weight` weighs the side features against the item loss
(0 = item loss only, as SASRec+ trains), `window` sets the history length, and `positions`,
`tie_item_head`, `init_std`, `seen_bias` choose the encoder's variants (recipe `ml-100k-rotary-tied`,
docs/results.md "Encoders"). Windows come from the TRAIN part of the leave-last-out split, so the
validation and test targets are never seen; every position of a window predicts its next event;
`sampling` chooses the windows of an epoch (training/window_sampler.py: every stride window, or one
per user), `recent_events` limits them to each user's newest training events (SASRec+ reads the newest
200). Validation = the same loss at the held-out validation event (history -> target), plus its
full-ranking Recall@10 / NDCG@10 over all items and excluding the history; `select_by` keeps the
checkpoint of the best loss or NDCG.

Reads top to bottom like nanoGPT `train.py`; split into `main -> fit -> validate` like litgpt.
Under `torchrun` each rank trains on its shard of every global batch (training/distributed.py) and
validates every N-th validation batch; rank 0 gathers the figures and writes.

    python -m training pretrain-encoder --dataset=movielens-latest --out_dir=checkpoints/encoder
    torchrun --nproc_per_node=2 -m training pretrain-encoder --threads=1 --out_dir=checkpoints/encoder
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from models.event_embedding import FeatureConfig
from models.features import collate_events
from models.user_encoder import UserEncoder, UserEncoderConfig
from training.config import TrainConfig, seed_everything
from training.corpus import Corpus, git_sha, load_corpus
from training.data import Vocab, encode_events
from training.distributed import barrier, gather, parallel_step, setup, shard, shard_mean, teardown, world
from training.metrics import ranking_metrics, seen_mask, target_ranks
from training.run import LAST, Resumed, RunLog, configure_optimizer, fit_loop, load_trainer_state
from training.window_sampler import WindowSampler

__all__ = ["ValidationBatch", "encoder_config", "last_event_losses", "main", "save_encoder", "validate"]


# --- helpers ---


def encoder_config(cfg: TrainConfig, vocabs: dict[str, Vocab]) -> UserEncoderConfig:
    """Encoder config with the data's vocabulary sizes (at least 3: pad, unknown, one value)."""
    dims = dict(item=cfg.item_dim, category=cfg.category_dim, rating=cfg.rating_dim, length=cfg.length_dim)
    features = tuple(
        FeatureConfig(name=n, vocab_size=max(3, len(vocabs[n])), multi_valued=n == "category", dim=dims[n])
        for n in ("item", "category", "rating", "length")
        if n in vocabs
    )
    return UserEncoderConfig(
        features=features, fusion=cfg.fusion, d_model=cfg.d_model, n_layers=cfg.n_layers,
        n_heads=cfg.n_heads, window=cfg.window, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
        tie_item_head=cfg.tie_item_head, init_std=cfg.init_std, positions=cfg.positions,
        seen_bias=cfg.seen_bias, tied_head_init=cfg.tied_head_init, fusion_init=cfg.fusion_init,
    )  # fmt: skip


def last_event_losses(
    encoder: UserEncoder, features: dict[str, Tensor], mask: Tensor, *, side_weight: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Next-event loss at the LAST real event only (its history predicts it).

    Returns:
        loss: (B,) the features' cross-entropies weighted by `UserEncoder.feature_weights(side_weight)`;
        item_logits: (B, V) scores of the target.
    """
    n = mask.sum(dim=1)  # (B,) events incl. the target
    rows = torch.arange(mask.shape[0], device=mask.device)
    hidden = encoder(features, mask).hidden[rows, n - 2]  # (B, D) state after the history
    history = (features["item"] * mask).index_put((rows, n - 1), torch.zeros_like(n))  # target removed
    logits = {
        name: encoder.item_logits(hidden, history) if name == "item" else head(hidden)
        for name, head in encoder.heads.items()
    }  # name -> (B, V)
    losses = []
    for f in encoder.config.features:
        logp = logits[f.name].float().log_softmax(dim=-1)  # (B, V)
        target = features[f.name][rows, n - 1]  # (B,) or (B, K)
        if f.multi_valued:
            soft = torch.zeros_like(logp).scatter_(-1, target, 1.0)
            soft[:, 0] = 0.0
            count = soft.sum(dim=-1)
            loss = torch.where(
                count > 0, -(soft * logp).sum(-1) / count.clamp(min=1), torch.zeros_like(count)
            )
        else:
            loss = F.nll_loss(logp, target, reduction="none")
        losses.append(loss)
    weights = encoder.feature_weights(side_weight).to(mask.device)[:, None]  # (F, 1)
    return (torch.stack(losses) * weights).sum(dim=0), logits["item"]


@dataclass(frozen=True)
class ValidationBatch:
    """Validation examples as (history[-(window-1):] + target) windows, their target item ids and the
    items of each user's whole history (excluded from the second ranking, as `evaluate` does)."""

    features: dict[str, Tensor]
    mask: Tensor  # (B, window) bool
    targets: Tensor  # (B,) item ids
    histories: list[list[int]]  # item ids of each user's whole history


def validation_batches(corpus: Corpus, cfg: TrainConfig) -> list[ValidationBatch]:
    """The validation users (the first `eval_users`, 0 = all) in batches of 256."""
    examples = corpus.splits.valid[: cfg.eval_users or None]
    item_vocab = corpus.vocabs["item"]
    out = []
    for i in range(0, len(examples), 256):
        chunk = examples[i : i + 256]
        seqs = [encode_events([*ex.history[-(cfg.window - 1) :], ex.target], corpus.vocabs) for ex in chunk]
        features, mask = collate_events(seqs, max_len=cfg.window)
        targets = torch.tensor([s["item"][-1] for s in seqs])
        histories = [[item_vocab.encode(e.item) for e in ex.history] for ex in chunk]
        out.append(ValidationBatch(features, mask, targets, histories))
    return out


@torch.no_grad()
def validate(
    encoder: UserEncoder, batches: Sequence[ValidationBatch], *, side_weight: float = 1.0,
    select_by: str = "loss",
) -> dict[str, float]:  # fmt: skip
    """The next-event loss at the held-out event and its full-ranking Recall@10 / NDCG@10, over all
    items (`val_recall@10`) and excluding the user's history (`val_x_recall@10`). "val" is the loss, or
    minus the NDCG@10 excluding history with `select_by="ndcg"` (the training loop keeps the lowest).
    Several ranks: rank r scores batches r, r + N, ...; every rank gets the figures of all batches."""
    encoder.eval()
    device = next(encoder.parameters()).device
    mine = []
    for i in range(world().rank, len(batches), world().size):
        b = batches[i]
        features = {k: v.to(device) for k, v in b.features.items()}
        loss, logits = last_event_losses(encoder, features, b.mask.to(device), side_weight=side_weight)
        seen = seen_mask(b.histories, logits.shape[1])
        ranks = (target_ranks(logits, b.targets).cpu(), target_ranks(logits, b.targets, seen).cpu())
        mine.append((i, loss.cpu(), *ranks))
    encoder.train()
    scored = sorted((part for parts in gather(mine) for part in parts), key=lambda part: part[0])
    if not scored:
        return {"val": float("nan")}
    loss = float(torch.cat([part[1] for part in scored]).mean())
    every = ranking_metrics(torch.cat([part[2] for part in scored]), ks=(10,))
    unseen = ranking_metrics(torch.cat([part[3] for part in scored]), ks=(10,))
    val = -unseen["ndcg@10"] if select_by == "ndcg" else loss
    return {
        "val": val, "val_loss": loss, **{f"val_{k}": v for k, v in every.items()},
        **{f"val_x_{k}": v for k, v in unseen.items()},
    }  # fmt: skip


def save_encoder(
    directory: str | Path, encoder: UserEncoder, corpus: Corpus, cfg: TrainConfig, **manifest: Any
) -> str:
    """Write the encoder checkpoint directory (weights, config, manifest, vocab, catalogue)."""
    meta = {
        "dataset": corpus.dataset.name, "data_sha256": corpus.data_sha256, "data_files": corpus.data_files,
        "git_sha": git_sha(), "seed": cfg.seed, "train_config": asdict(cfg), **manifest,
    }  # fmt: skip
    return save_checkpoint(
        directory, encoder.state_dict(), config={"encoder": asdict(encoder.config)}, kind="encoder",
        trainable_only=False, manifest=meta, extras=corpus.extras(),
    )  # fmt: skip


# --- training ---


def fit(encoder: UserEncoder, corpus: Corpus, cfg: TrainConfig, windows: WindowSampler, total: int) -> dict:
    run_dir = Path(cfg.resolved_run_dir)
    optimizer = configure_optimizer(encoder, lr=cfg.lr, weight_decay=cfg.weight_decay, beta2=cfg.beta2)
    start = Resumed()
    if cfg.resume:
        load_state_strict(encoder, load_checkpoint(run_dir / LAST).state_dict)
        state = load_trainer_state(run_dir, optimizer)
        start = Resumed.from_state(state)
        if not world().is_main:  # the saved RNG states are rank 0's
            seed_everything(cfg.seed + world().rank + start.step)
    val_batches = validation_batches(corpus, cfg)
    log = RunLog(
        run_dir, start=start.step, total=total, progress=cfg.progress, resume=cfg.resume,
        enabled=world().is_main,
    )  # fmt: skip
    log.note(f"pretraining {sum(p.numel() for p in encoder.parameters()):,} parameters on "
             f"{len(windows):,} windows, steps {start.step} -> {total}")  # fmt: skip
    encoder.train()
    device = world().device
    weights = encoder.feature_weights(cfg.side_loss_weight).to(device)  # (F,)

    def loss_at(step: int) -> tuple[Tensor, dict[str, Any]]:
        """The mean over features of each feature's mean over the global batch's predicted events."""
        part, _ = shard(windows.batch(step))
        features, mask = collate_events(part, max_len=cfg.window)
        terms = encoder.pretrain_loss_terms({k: v.to(device) for k, v in features.items()}, mask.to(device))
        means, counts = (torch.stack(t) for t in zip(*terms.values(), strict=True))
        return (shard_mean(means, counts) * weights).sum(), {}

    return fit_loop(
        cfg, total=total, start=start, optimizer=optimizer, params=list(encoder.parameters()), log=log,
        loss_at=parallel_step(encoder, loss_at), validate=lambda: validate(
            encoder, val_batches, side_weight=cfg.side_loss_weight, select_by=cfg.select_by
        ),
        save_best=lambda step, val: save_encoder(cfg.out_dir, encoder, corpus, cfg, step=step, best_val=val),
        save_last=lambda step: save_encoder(run_dir / LAST, encoder, corpus, cfg, step=step),
    )  # fmt: skip


def main(cfg: TrainConfig) -> dict:
    """Load data, build the encoder, train, and return a summary (best val, paths)."""
    start = time.perf_counter()
    corpus = load_corpus(
        cfg.dataset, cfg.path, category=cfg.category, max_users=cfg.max_users, length=cfg.length_dim > 0
    )
    windows = WindowSampler(
        corpus.splits.train, corpus.vocabs, window=cfg.window, stride=cfg.stride, sampling=cfg.sampling,
        batch_size=cfg.batch_size, seed=cfg.seed, recent=cfg.recent_events,
    )  # fmt: skip
    if not len(windows):
        raise ValueError(f"{cfg.dataset}: no training window of >= 2 events")
    total = cfg.steps if cfg.epochs <= 0 else math.ceil(cfg.epochs * windows.steps_per_epoch)
    cfg = dataclasses.replace(cfg, steps=total)  # the resolved config goes into the manifest
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    here = setup(cfg.device)
    try:
        seed_everything(cfg.seed)  # the same initial weights on every rank
        encoder = UserEncoder(encoder_config(cfg, corpus.vocabs)).to(here.device)
        if here.parallel:  # dropout differs between ranks (STYLE: seed + rank)
            seed_everything(cfg.seed + here.rank)
        Path(cfg.resolved_run_dir).mkdir(parents=True, exist_ok=True)
        summary = fit(encoder, corpus, cfg, windows, total)
        barrier()  # every rank returns once rank 0 has written the last checkpoint
    finally:
        teardown()
    summary.update(
        out_dir=cfg.out_dir, run_dir=cfg.resolved_run_dir, seconds=round(time.perf_counter() - start, 1)
    )
    return summary
