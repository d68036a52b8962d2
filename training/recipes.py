"""Named training recipes: every measured configuration in one place, chosen with `--recipe=NAME`.

A recipe is a named set of config values for one command (litgpt's `config_hub/finetune/*.yaml`,
nanoGPT's `config/train_*.py`). `resolve_config` starts from the command's defaults, applies the
recipe, then the remaining `--key=value` overrides (paths, threads, a changed step count), so the
Makefile and the docs name a recipe instead of copying its flags. The recipe's name is kept in the
config (`recipe`), hence in the checkpoint's manifest.

    python -m training finetune --recipe=demo --encoder_dir=checkpoints/encoder --out_dir=checkpoints/userllm
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from training.config import ConfigError, apply_overrides

__all__ = ["RECIPES", "Recipe", "recipes_for", "resolve_config"]

C = TypeVar("C")


@dataclass(frozen=True)
class Recipe:
    """Config values of one command under one name."""

    command: str  # the `python -m training` command it is for
    name: str  # what --recipe= takes
    about: str  # one line: what it trains and where it is measured
    values: Mapping[str, Any]  # config field -> value (types as the dataclass declares them)


# The USER-LLM recipe's model part: cross-attention in the backbone's last 4 layers (the 26 below run
# once per fixed prompt), Perceiver with recency embeddings plus the newest event's state as a 17th
# user token, heads started from the encoder's, distillation from the encoder (docs/results.md).
_USERLLM = dict(
    mode="cross_attention", strategy="enc", cross_attn_layers="-4,-3,-2,-1", encoder_heads=True,
    head_center=True, perceiver_recency=True, last_event_token=True, max_prompt_tokens=16, gate_init=0.5,
    new_lr_mult=3.0, distill=0.5, lr=6e-4, min_lr=6e-5,
)  # fmt: skip
# Language tasks beside the scoring tasks (training/text_tasks.py): the generic KL twice per cycle.
_MULTITASK = "next_item,favourite_category,generic,taste,suggest,generic"
# ... with the grounded suggestion twice and the generic KL once (the demo: docs/text.md measures both)
_MULTITASK_SUGGEST = "next_item,favourite_category,suggest,taste,suggest,generic"
# ... with next item on 4 steps of 9 (the single-task ML-100K recipe gives it 1,200 steps of batch 32)
_MULTITASK_NEXT_ITEM = (
    "next_item,favourite_category,next_item,generic,next_item,taste,next_item,suggest,generic"
)
_ML100K = dict(dataset="movielens-100k", path="../shared/data/movielens-100k")
# The 2-layer encoder at SASRec+'s width (d 64): rotary positions, the item head tied to the item
# embeddings, the seen-item score, kept at the best validation NDCG@10
# (ml-100k-rotary-tied-seen-d64), the same with the tied head's projection started orthogonal, and with
# the event-fusion projection started orthogonal too (event vectors at SASRec's scale)
_D64 = dict(
    n_layers=2, epochs=60, batch_size=128, warmup=50, positions="rotary", tie_item_head=True, init_std=0.02,
    seen_bias=True, select_by="ndcg", d_model=64, n_heads=2, mlp_ratio=2,
)  # fmt: skip
_D64_ORTH = dict(_D64, tied_head_init="orthogonal")
_D64_ORTH_FUSION = dict(_D64_ORTH, fusion_init="orthogonal")
# ... and their run settings: ML-100K validates every 38 steps (2 an epoch), ml-latest-small every 50
_D64_ML100K = dict(_ML100K, eval_interval=38, log_interval=38, save_interval=190)
_D64_LATEST = dict(dataset="movielens-latest", eval_interval=50, log_interval=50, save_interval=1000)
# The best-validating ml-latest-small encoder (ml-latest-d64-orth-fusion-side025): the demo's too
_DEMO_ENCODER = dict(_D64_ORTH_FUSION, **_D64_LATEST, side_loss_weight=0.25)
# Single-task next item on ML-100K with the heads also reading the encoder's newest state (head_user_skip)
_SKIP = dict(
    _USERLLM, **_ML100K, tasks="next_item", steps=600, batch_size=32, warmup=50, eval_interval=100,
    eval_users=0, head_user_skip=True,
)  # fmt: skip
# Amazon 2018 Magazine_Subscriptions reviews (the paper's review task; docs/text.md "Amazon reviews")
_AMAZON_MAG = dict(
    dataset="amazon-2018", path="../shared/data/amazon-2018-5core", category="Magazine_Subscriptions"
)

RECIPES: dict[tuple[str, str], Recipe] = {
    (r.command, r.name): r
    for r in (
        Recipe("pretrain-encoder", "demo",
               "the encoder make train-demo trains: ml-latest-d64-orth-fusion-side025 (~22 CPU-minutes): "
               "Recall@10 0.098 excluding history on ml-latest-small (docs/results.md)",
               _DEMO_ENCODER),
        Recipe("finetune", "demo",
               "multi-task USER-LLM, ml-latest-small: next item, genre, taste + suggestion text, generic KL; "
               "the encoder frozen and read by the heads directly, so /recommend ranks as the encoder does",
               dict(_USERLLM, dataset="movielens-latest", tasks=_MULTITASK_SUGGEST, steps=600, batch_size=16,
                    text_batch_size=8, warmup=20, eval_interval=600, save_interval=300, log_interval=50,
                    eval_users=200, head_user_skip=True, strategy="proj")),
        Recipe("finetune", "demo-next-item", "the scoring-only demo recipe (next item + genre heads)",
               dict(_USERLLM, dataset="movielens-latest", steps=500, batch_size=16, warmup=20,
                    eval_interval=250, save_interval=250, log_interval=50, eval_users=200)),
        Recipe("finetune", "demo-pplug",
               "PPlug on ml-latest-small (frozen LLM, input-aware history embedding): the demo's tasks "
               "(next item, genre, taste + suggestion text, generic KL)",
               dict(dataset="movielens-latest", mode="pplug", strategy="enc", encoder_heads=True,
                    head_center=True, distill=0.5, max_prompt_tokens=16, new_lr_mult=3.0, lr=6e-4,
                    min_lr=6e-5, tasks=_MULTITASK, steps=600, batch_size=16, text_batch_size=8, warmup=20,
                    eval_interval=600, save_interval=300, log_interval=50, eval_users=200)),
        Recipe("pretrain-encoder", "amazon-mag",
               "2-layer encoder on Amazon Magazine_Subscriptions with the review-length feature",
               dict(_AMAZON_MAG, n_layers=2, epochs=30, batch_size=32, length_dim=16, eval_interval=50,
                    save_interval=100)),
        Recipe("finetune", "amazon-review",
               "USER-LLM reviews (Amazon magazines): LoRA + cross-attention, review LM + generic KL",
               dict(_AMAZON_MAG, strategy="lora", tasks="review,review,generic", steps=300, batch_size=8,
                    warmup=20, eval_interval=100, save_interval=100, log_interval=20,
                    cross_attn_layers="-4,-3,-2,-1", gate_init=0.5, perceiver_recency=True,
                    last_event_token=True, new_lr_mult=3.0, lr=6e-4, min_lr=6e-5)),
        Recipe("pretrain-encoder", "ml-100k", "2-layer encoder on ML-100K (docs/results.md)",
               dict(_ML100K, n_layers=2, epochs=60, batch_size=128)),
        Recipe("pretrain-encoder", "ml-100k-rotary-tied",
               "2-layer encoder on ML-100K: rotary positions, item head tied to the item embeddings, "
               "N(0, 0.02) init, kept at the best validation NDCG@10 excluding history (docs/results.md)",
               dict(_ML100K, n_layers=2, epochs=30, batch_size=128, warmup=50, positions="rotary",
                    tie_item_head=True, init_std=0.02, select_by="ndcg", eval_interval=38, log_interval=38,
                    save_interval=190)),
        Recipe("pretrain-encoder", "ml-100k-rotary-tied-seen",
               "ml-100k-rotary-tied with a learned score for items the user has seen (models/seen_bias.py): "
               "new items ranked as before, seen items last over all items (docs/results.md)",
               dict(_ML100K, n_layers=2, epochs=30, batch_size=128, warmup=50, positions="rotary",
                    tie_item_head=True, init_std=0.02, seen_bias=True, select_by="ndcg", eval_interval=38,
                    log_interval=38, save_interval=190)),
        Recipe("pretrain-encoder", "ml-100k-rotary-tied-seen-d64",
               "ml-100k-rotary-tied-seen at SASRec+'s width (d 64, 2 heads, MLP ratio 2) for 60 epochs: "
               "Recall@10 0.173 / 0.161 excluding history (two seeds), level with SASRec+ (docs/results.md)",
               dict(_D64, **_D64_ML100K)),
        Recipe("pretrain-encoder", "ml-100k-d64-orth",
               "ml-100k-rotary-tied-seen-d64 with the tied head's projection started orthogonal (scores at "
               "SASRec's scale from step 0): Recall@10 0.178 excluding history, SASRec+ 0.173 "
               "(docs/results.md)",
               dict(_D64_ORTH, **_D64_ML100K)),
        Recipe("pretrain-encoder", "ml-latest-d64-orth",
               "the encoder of ml-100k-d64-orth on ml-latest-small (60 epochs, ~25 CPU-minutes): Recall@10 "
               "0.082 / 0.092 excluding history (two seeds), SASRec+ 0.108 at 20 (docs/results.md)",
               dict(_D64_ORTH, **_D64_LATEST)),
        Recipe("pretrain-encoder", "ml-100k-d64-orth-fusion",
               "ml-100k-d64-orth with the event-fusion projection also started orthogonal (x sqrt(d)): "
               "Recall@10 0.193 / 0.193 excluding history (two seeds), SASRec+ 0.173 / 0.162 "
               "(docs/results.md)",
               dict(_D64_ORTH_FUSION, **_D64_ML100K)),
        Recipe("pretrain-encoder", "ml-latest-d64-orth-fusion",
               "the encoder of ml-100k-d64-orth-fusion on ml-latest-small (60 epochs, ~20 CPU-minutes): "
               "Recall@10 0.095 / 0.089 excluding history (two seeds), SASRec+ 0.110 / 0.097 at the same "
               "CPU (docs/results.md)",
               dict(_D64_ORTH_FUSION, **_D64_LATEST)),
        Recipe("pretrain-encoder", "ml-latest-d64-orth-fusion-side025",
               "ml-latest-d64-orth-fusion with the genre and rating losses weighted 0.25 against the item "
               "loss: Recall@10 / NDCG@10 excluding history 0.095 / 0.052 on the mean of five seeds "
               "(13-18 CPU-minutes each), SASRec+ 0.096 / 0.049 at 20 (docs/results.md)",
               _DEMO_ENCODER),
        Recipe("pretrain-encoder", "ml-latest-d64-orth-fusion-side025-ema",
               "ml-latest-d64-orth-fusion-side025 validated and kept as an exponential moving average of its "
               "weights (decay 0.99): validation no higher on the mean of five seeds (0.059 / 0.059), "
               "Recall@10 / NDCG@10 0.098 / 0.053 on test (docs/results.md)",
               dict(_DEMO_ENCODER, ema_decay=0.99)),
        Recipe("pretrain-encoder", "ml-latest-d64-orth-fusion-200",
               "ml-latest-d64-orth-fusion on SASRec+'s data: each user's newest 200 training events as one "
               "window, batch 64, 80 epochs (~20 CPU-minutes): Recall@10 0.089 / 0.077 excluding history "
               "(two seeds), below ml-latest-d64-orth-fusion (docs/results.md)",
               dict(_D64_ORTH_FUSION, **_D64_LATEST, window=200, stride=200, sampling="last", batch_size=64,
                    epochs=80)),
        Recipe("finetune", "ml-100k-next-item", "single-task USER-LLM on ML-100K: R@10 0.089 / 0.135",
               dict(_USERLLM, **_ML100K, tasks="next_item", steps=1200, batch_size=32, warmup=50,
                    eval_interval=200, eval_users=0)),
        Recipe("finetune", "ml-100k-next-item-skip",
               "single-task USER-LLM on ML-100K whose heads also read the encoder's newest state directly "
               "(a skip around the LLM, started as the encoder's own heads; not in the paper)",
               _SKIP),
        Recipe("finetune", "ml-100k-next-item-skip-proj",
               "ml-100k-next-item-skip with the encoder frozen (strategy proj): Recall@10 0.193 / 0.187 "
               "excluding history on two seeds of the ml-100k-d64-orth-fusion encoder (0.193 each; "
               "docs/results.md)",
               dict(_SKIP, strategy="proj")),
        Recipe("finetune", "ml-100k-next-item-skip-proj-ndcg",
               "ml-100k-next-item-skip-proj at lr 1e-4, keeping the best validation NDCG@10 excluding "
               "history, the untrained start (the encoder's own ranking) included (docs/results.md)",
               dict(_SKIP, strategy="proj", select_by="ndcg", lr=1e-4, min_lr=1e-5)),
        Recipe("finetune", "ml-latest-next-item-skip-proj-ndcg",
               "ml-100k-next-item-skip-proj-ndcg on ml-latest-small: on the encoder of "
               "ml-latest-d64-orth-fusion-side025 it keeps its start, the encoder's ranking "
               "(docs/results.md)",
               dict(_SKIP, strategy="proj", select_by="ndcg", lr=1e-4, min_lr=1e-5,
                    dataset="movielens-latest", path=None)),
        Recipe("finetune", "ml-100k", "multi-task USER-LLM on ML-100K (scoring + language tasks)",
               dict(_USERLLM, **_ML100K, tasks=_MULTITASK_NEXT_ITEM, steps=2100, batch_size=32,
                    text_batch_size=16, warmup=50, eval_interval=700, eval_users=0)),
    )
}  # fmt: skip


def recipes_for(command: str) -> list[Recipe]:
    """The recipes of one command, in definition order."""
    return [r for (c, _), r in RECIPES.items() if c == command]


def resolve_config(command: str, config: C, argv: Sequence[str]) -> C:
    """`config` with `--recipe=NAME` (if any) applied first, then the other `--key=value` overrides."""
    rest, name = [], None
    for arg in argv:
        if arg.startswith("--recipe="):
            name = arg.partition("=")[2]
        else:
            rest.append(arg)
    if name:
        recipe = RECIPES.get((command, name))
        if recipe is None:
            known = ", ".join(r.name for r in recipes_for(command)) or "none"
            raise ConfigError(f"unknown recipe {name!r} for {command} (known: {known})")
        fields = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
        try:
            config = dataclasses.replace(config, **recipe.values, recipe=name)  # type: ignore[type-var]
        except TypeError as exc:
            unknown = sorted(set(recipe.values) - fields)
            raise ConfigError(f"recipe {name!r}: fields {unknown} are not options of {command}") from exc
    return apply_overrides(config, rest)
