"""Fine-tuning of USER-LLM: pretrained user encoder + Perceiver + LLM on next-item / genre / review and
the language tasks (taste, suggest, generic; training/text_tasks.py).

USER-LLM (Ning, Liu et al., 2024, arXiv 2402.13598) Sec. 3-4: the pretrained encoder's outputs are
compressed to 16 `user_tokens` and contextualize the LLM through gated cross-attention (default) or
a soft prompt; strategies full / enc / lora / proj choose what trains (models/strategies.py). One task a
step, in the order of `--tasks` (a task may appear twice in the cycle); the language tasks may use their
own batch size. Validation on the held-out validation events: next-item Recall@10 / NDCG@10 over the full
catalogue and excluding the history, genre accuracy, and the language tasks' losses on the first
validation users; the checkpoint with the best mean validation loss is saved, or with
`select_by="ndcg"` the one with the best next-item NDCG@10 excluding history, the untrained model
(validated before the first step) included.

Checkpoint (`out_dir`, kind "userllm", the format `models/personalized.py` documents): trainable
weights + the whole user tower + heads, `config.json` = asdict(UserLLMConfig), manifest with the
backbone id (content hash) and folder, the encoder's model_version, data hash, git SHA, seed, config.

Under `torchrun` each rank trains on its shard of every global batch (training/distributed.py); rank 0
validates, while the others wait, and writes.

    python -m training finetune --recipe=demo --encoder_dir=checkpoints/encoder --out_dir=checkpoints/userllm
    torchrun --nproc_per_node=2 -m training finetune --recipe=demo --threads=1 --encoder_dir=... --out_dir=...
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models.backbone import backbone_id
from models.checkpoint import load_checkpoint, save_checkpoint
from models.personalized import PersonalizedLM
from training.config import FinetuneConfig, seed_everything
from training.corpus import Corpus, git_sha, load_corpus_for
from training.data import Example, favourite_category
from training.distill import EncoderTeacher
from training.distributed import barrier, main_first, parallel_step, setup, shard, teardown, world
from training.evaluate import encoder_from_checkpoint
from training.generic_text import generic_texts
from training.metrics import ranking_metrics, seen_mask, target_ranks
from training.run import LAST, Resumed, RunLog, configure_optimizer, fit_loop, load_trainer_state
from training.tasks import TaskRunner, nouns, training_examples
from training.text_tasks import TEXT_TASKS, TOP_K, TextTasks
from training.userllm_setup import (
    build_model,
    frozen_below_split,
    init_bias_prior,
    init_head_centers,
    split_new_parameters,
)
from training.window_sampler import batch_order

__all__ = ["build_pools", "main"]


# --- validation ---


TEXT_VALID_USERS = 64  # validation users of the language tasks (a forward pass over text each)


@torch.no_grad()
def validate(
    runner: TaskRunner, examples: Sequence[Example], tasks: Sequence[str], batch_size: int,
    text: TextTasks | None = None, select_by: str = "loss",
) -> dict:  # fmt: skip
    """Task losses, next-item Recall@10 / NDCG@10 over all items and excluding the history
    (`val_x_*`), genre accuracy, and the model-selection value "val": the mean task loss, or minus the
    NDCG@10 excluding history with `select_by="ndcg"`. Language tasks are validated on the first
    TEXT_VALID_USERS examples that they can use, reviews on the examples with a review text."""
    runner.model.eval()
    losses: dict[str, list[float]] = {t: [] for t in tasks}
    counts = {t: 0 for t in tasks}
    for task in tasks:
        if task in TEXT_TASKS and text is not None:
            pool = text.pool(examples, task)[:TEXT_VALID_USERS]
            for i in range(0, len(pool), batch_size):
                chunk = pool[i : i + batch_size]
                losses[task].append(float(text.loss(chunk, task, i)) * len(chunk))
                counts[task] += len(chunk)
    ranks, unseen_ranks, genre_hits = [], [], []
    item_vocab = runner.corpus.vocabs["item"]
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        for task in tasks:
            if task in TEXT_TASKS:
                continue
            used = [ex for ex in chunk if ex.target.text] if task == "review" else chunk  # reviews need text
            if used:
                losses[task].append(float(runner.loss(used, task, distill=False)) * len(used))
                counts[task] += len(used)
        if "next_item" in tasks:
            scores, labels = runner.scores(chunk, "next_item"), runner.labels(chunk, "next_item")
            histories = [[item_vocab.encode(e.item) for e in ex.history] for ex in chunk]
            ranks.append(target_ranks(scores, labels))
            unseen_ranks.append(target_ranks(scores, labels, seen_mask(histories, scores.shape[1])))
        if "favourite_category" in tasks:
            pred = runner.scores(chunk, "favourite_category").argmax(dim=-1)
            genre_hits.append((pred == runner.labels(chunk, "favourite_category")).float())
    runner.model.train()
    out = {f"val_{t}": sum(v) / max(1, counts[t]) for t, v in losses.items()}
    if ranks:
        out.update({f"val_{k}": v for k, v in ranking_metrics(torch.cat(ranks), ks=(10,)).items()})
        out.update({f"val_x_{k}": v for k, v in ranking_metrics(torch.cat(unseen_ranks), ks=(10,)).items()})
    if genre_hits:
        out["val_genre_acc"] = float(torch.cat(genre_hits).mean())
    out["val_loss"] = sum(out[f"val_{t}"] for t in tasks) / len(tasks)
    out["val"] = -out["val_x_ndcg@10"] if select_by == "ndcg" else out["val_loss"]
    return out


def save_userllm(directory: str | Path, model: PersonalizedLM, corpus: Corpus, cfg: FinetuneConfig,
                 extra: dict[str, Any]) -> str:  # fmt: skip
    manifest = {
        "dataset": corpus.dataset.name, "data_sha256": corpus.data_sha256, "git_sha": git_sha(),
        "seed": cfg.seed, "train_config": asdict(cfg), "tasks": list(cfg.task_list), **extra,
    }  # fmt: skip
    return save_checkpoint(
        directory, model.checkpoint_state(), config=asdict(model.config), kind="userllm", trainable_only=True,
        manifest=manifest, extras={**corpus.extras(), "task": task_nouns(corpus)},
    )  # fmt: skip


def task_nouns(corpus: Corpus) -> dict[str, str]:
    """`task.json` of the checkpoint: the nouns the instructions used, so serving prompts match."""
    noun, category = nouns(corpus.dataset.name)
    return {"noun": noun, "category": category}


# --- training ---


def build_pools(
    corpus: Corpus, tasks: Sequence[str], window: int, text: TextTasks | None = None
) -> dict[str, list[Example]]:
    """Training examples per task: every cut of the train timelines (genre: with a labelled history;
    review: with a target review text; the language tasks: as `TextTasks.pool` keeps them)."""
    cuts = training_examples(corpus, window)
    keep = {
        "next_item": lambda ex: True,
        "favourite_category": lambda ex: favourite_category(ex.history) is not None,
        "review": lambda ex: bool(ex.target.text),
    }
    pools = {
        task: text.pool(cuts, task) if task in TEXT_TASKS and text is not None else
        [ex for ex in cuts if keep[task](ex)]
        for task in tasks
    }  # fmt: skip
    empty = [t for t, p in pools.items() if not p]
    if empty:
        raise ValueError(f"no training examples for task(s) {empty} in {corpus.dataset.name}")
    return pools


def main(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune as `cfg` says; under torchrun as one rank of the data-parallel run."""
    setup(cfg.device)
    try:
        summary = fit(cfg)
        barrier()  # every rank returns once rank 0 has written the last checkpoint
    finally:
        teardown()
    return summary


def fit(cfg: FinetuneConfig) -> dict[str, Any]:
    start_time = time.perf_counter()
    here = world()
    encoder_ck = load_checkpoint(cfg.encoder_dir)
    corpus = load_corpus_for(
        encoder_ck, cfg.dataset, cfg.path, category=cfg.category, max_users=cfg.max_users
    )
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model, tokenizer, backbone_dir = build_model(cfg, encoder_ck, corpus)
    model.to(here.device)
    # the distillation teacher is the pretrained encoder as loaded (the tower's copy trains, or is random)
    teacher = None
    if cfg.distill > 0:
        teacher = EncoderTeacher(encoder_from_checkpoint(encoder_ck, cfg.encoder_dir), corpus)
    runner = TaskRunner(
        model, tokenizer, corpus, cfg.max_prompt_tokens, cfg.max_review_tokens,
        reuse_lower=frozen_below_split(model), user_input=cfg.user_input, text_events=cfg.text_events,
        text_tokens=cfg.text_tokens, distill=cfg.distill, distill_temperature=cfg.distill_temperature,
        teacher=teacher,
    )  # fmt: skip
    text = None
    if set(cfg.task_list) & set(TEXT_TASKS):  # language tasks: the bare backbone's generic text, once
        with main_first():  # rank 0 writes the cache file the others read
            generic_train, _ = generic_texts(model.llm, tokenizer, backbone_dir, progress=cfg.progress)
        text = TextTasks(runner, generic_train)
        if "generic" in cfg.task_list:  # the KL teacher: the untrained LLM, before any resume
            text.prepare_teacher()
    window = model.config.tower.encoder.window
    pools = build_pools(corpus, cfg.task_list, window, text)
    if not cfg.resume:
        init_head_centers(runner)
        if cfg.head_bias_prior:
            init_bias_prior(runner, pools)
    # validate on each task once (the cycle may repeat one), language tasks and reviews included
    val_tasks = list(dict.fromkeys(cfg.task_list))
    valid = [ex for ex in corpus.splits.valid if val_tasks != ["review"] or ex.target.text]
    valid = valid[: cfg.eval_users or None]
    total = cfg.steps
    run_dir = Path(cfg.resolved_run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = configure_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, beta2=cfg.beta2)
    split_new_parameters(optimizer, model, cfg)
    start = Resumed()
    if cfg.resume:
        model.load_checkpoint_state(load_checkpoint(run_dir / LAST))
        state = load_trainer_state(run_dir, optimizer)
        start = Resumed.from_state(state)
    if here.parallel and not (cfg.resume and here.is_main):  # rank 0 resumes its saved RNG states; the
        seed_everything(cfg.seed + here.rank + start.step)  # other ranks' dropout differs (seed + rank)
    extra_manifest = {
        "backbone_id": backbone_id(backbone_dir), "backbone_dir": str(backbone_dir),
        "encoder_model_version": encoder_ck.model_version,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }  # fmt: skip
    log = RunLog(
        run_dir, start=start.step, total=total, progress=cfg.progress, resume=cfg.resume, enabled=here.is_main
    )
    log.note(f"fine-tuning {extra_manifest['trainable_parameters']:,} trainable parameters "
             f"({cfg.mode}, {cfg.strategy}) on {', '.join(f'{t} {len(p):,}' for t, p in pools.items())} "
             f"examples, steps {start.step} -> {total}")  # fmt: skip
    if text is not None and text.teacher_mass:
        log.note(f"generic KL: the bare backbone's top {TOP_K} tokens hold {text.teacher_mass:.1%} of its "
                 f"next-token mass on {len(text.generic)} generic texts")  # fmt: skip
    model.train()
    task_names = list(cfg.task_list)  # the cycle of tasks, one per step (a task may appear twice)
    batch_sizes = {t: cfg.text_batch_size if t in TEXT_TASKS and cfg.text_batch_size else cfg.batch_size
                   for t in task_names}  # fmt: skip

    def loss_at(step: int) -> tuple[Tensor, dict[str, Any]]:
        task = task_names[step % len(task_names)]
        pool = pools[task]
        cycle, pos = divmod(step, len(task_names))
        turn = cycle * task_names.count(task) + task_names[:pos].count(task)  # this task's batch number
        batch = [pool[i] for i in batch_order(turn, len(pool), batch_sizes[task], cfg.seed)]
        part, first = shard(batch)  # this rank's part of the global batch
        if text is not None and task in TEXT_TASKS:
            return text.loss(part, task, step, first=first, batch=len(batch)), {"task": task}
        return runner.loss(part, task), {"task": task}

    def validate_on_main() -> dict[str, Any]:
        """Rank 0 validates; the others wait for it in the next step's gradient all-reduce."""
        if not here.is_main:
            return {"val": float("nan")}
        return validate(runner, valid, val_tasks, cfg.batch_size, text, select_by=cfg.select_by)

    summary = fit_loop(
        cfg, total=total, start=start, optimizer=optimizer,
        params=[p for p in model.parameters() if p.requires_grad], log=log,
        loss_at=parallel_step(model, loss_at, find_unused_parameters=True),  # a task uses one head
        validate=validate_on_main,
        save_best=lambda step, val: save_userllm(
            cfg.out_dir, model, corpus, cfg, {**extra_manifest, "step": step, "best_val": val}
        ),
        save_last=lambda step: save_userllm(
            run_dir / LAST, model, corpus, cfg, {**extra_manifest, "step": step}
        ),
        validate_first=cfg.select_by == "ndcg",
    )  # fmt: skip
    return {**summary, "out_dir": cfg.out_dir, "run_dir": str(run_dir),
            "seconds": round(time.perf_counter() - start_time, 1)}  # fmt: skip
