"""Lower-layer reuse: cross-attention in the last 4 layers, the 26 layers below run once per prompt.

With gated cross-attention (USER-LLM, arXiv 2402.13598, Sec. 3.2) the user tokens enter the LLM only
at the inserted blocks, so every decoder layer below the first block sees the same fixed instruction
for every user: `models/lower_layers.py` computes those states once (`lower_states`) and runs only
the layers from the first block up for each request (`forward_from_lower`). This benchmark times, on
the REAL SmolLM2-135M-Instruct backbone (float32, CPU) with untrained seeded adapters (gates 0.5):
  - scoring 16 users on the next-item prompt (inference): (a) blocks before every 6th layer
    (5, 11, 17, 23, 29; the previous default), whole LLM; (b) blocks in the last 4 layers
    (26-29; the new recipe), whole LLM; (c) last 4 layers, lower states reused;
  - one training step (forward + backward of the next-item cross-entropy, batch 8, LLM frozen,
    adapters + heads trainable): (a) vs (c), with (b) to separate placement from reuse.
The reused path is checked against the whole-LLM path of the same model before timing.

Run: USERLLM_BACKBONE_DIR=... python -m benchmarks.bench_lower_layers [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.bench_prompt_length import counted_matmul_flops
from benchmarks.harness import (
    Report,
    Table,
    add_thread_arg,
    apply_threads,
    backbone_dir,
    interleaved,
    iqr_ms,
    median_ms,
    paired_ratio,
)
from benchmarks.movielens import load
from models.backbone import backbone_id, load_backbone
from models.lower_layers import lower_states, split_layer
from models.personalized import PersonalizedLM, UserLLMConfig
from models.prompts import instruction, prompt_ids
from models.user_encoder import UserEncoderConfig
from models.user_tower import UserTowerConfig
from models.userllm import LLMAdapterConfig

N_SCORE = 16  # users per scoring batch
N_TRAIN = 8  # examples per training step
MAX_PROMPT_TOKENS = 16  # the next-item prompt cut to its last 16 tokens, as training does
GATE = 0.5  # both tanh gates of every block: the blocks change the scores
EVERY_N = 6  # (a) the previous default placement
TOP_LAYERS = 4  # (b, c) the new recipe: the last 4 decoder layers
TOL = 1e-5  # reused vs whole LLM, max abs difference of the scores


def build_model(adapters: LLMAdapterConfig) -> tuple[PersonalizedLM, Any]:
    """Real backbone (float32, CPU) + seeded untrained tower, adapters and heads; LLM frozen."""
    data = load()
    backbone, tokenizer = load_backbone(backbone_dir())
    config = UserLLMConfig(
        tower=UserTowerConfig(encoder=UserEncoderConfig(features=data.features()), append_last_event=True),
        llm=adapters,
        num_items=data.vocab_size("item"),
        num_categories=data.vocab_size("category"),
    )
    torch.manual_seed(0)
    model = PersonalizedLM(config, backbone)
    with torch.no_grad():
        for block in model.llm.cross_attn_blocks():
            block.attn_gate.fill_(GATE)
            block.ff_gate.fill_(GATE)
    model.requires_grad_(False)  # backbone (and the unused tower) frozen
    for name, p in model.llm.named_parameters():
        p.requires_grad_(model.llm.is_adapter_parameter(name))
    for head in (model.item_head, model.category_head):
        head.requires_grad_(True)
    return model, tokenizer


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds (scoring and training)")
    add_thread_arg(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    report = Report(
        name="lower_layers",
        title="Lower-layer reuse: cross-attention in the last 4 layers, the layers below once per prompt",
        summary=(
            f"Next-item scoring of {N_SCORE} users and one training step (batch {N_TRAIN}, forward + "
            "backward of the next-item cross-entropy over the catalogue, LLM frozen) on the real "
            "SmolLM2-135M-Instruct backbone (30 decoder layers) with gated cross-attention to 17 user "
            f"tokens: blocks before every {EVERY_N}th layer, whole LLM (the previous default) vs blocks "
            f"in the last {TOP_LAYERS} layers with the fixed prompt's states below them computed once "
            "(`models/lower_layers.py`, as `TorchEngine._score` and `TaskRunner(reuse_lower=True)` do), "
            "plus the last-4 model through the whole LLM to separate placement from reuse. Interleaved "
            "rounds in one process; medians and the median of the per-round ratios."
        ),
    )
    every6, tokenizer = build_model(LLMAdapterConfig(cross_attn_every_n_layers=EVERY_N))
    num_layers = len(every6.llm.backbone.model.layers)
    top4, _ = build_model(
        LLMAdapterConfig(cross_attn_layers=tuple(range(num_layers - TOP_LAYERS, num_layers)))
    )
    config = top4.config
    num_user_tokens = config.tower.num_user_tokens  # 16 Perceiver latents + the last event's state
    dim_user = config.tower.dim_user

    prompt = prompt_ids(tokenizer, instruction("next_item"))[-MAX_PROMPT_TOKENS:]
    ids = torch.tensor([prompt])  # (1, S)
    score_ids = ids.expand(N_SCORE, -1)  # (B, S)
    score_mask = torch.ones_like(score_ids, dtype=torch.bool)
    train_ids, train_mask = score_ids[:N_TRAIN], score_mask[:N_TRAIN]
    torch.manual_seed(1)
    user_tokens = torch.randn(N_SCORE, num_user_tokens, dim_user)  # (B, L, Du), as the tower produces
    user_mask = torch.ones(N_SCORE, num_user_tokens, dtype=torch.bool)
    labels = torch.randint(2, config.num_items, (N_TRAIN,))  # catalogue ids (0, 1 = pad, unk)

    with torch.no_grad():  # not inference_mode: the training step's graph reads these states
        lower = {
            m: lower_states(model.llm, ids) for m, model in (("every6", every6), ("top4", top4))
        }  # (1, S, Dl)

    # --- equivalence: reused lower states == the whole LLM, same model ---
    checks = {}
    with torch.inference_mode():
        for name, model in (("every6", every6), ("top4", top4)):
            ctx = model.context_from_tokens(user_tokens, user_mask)
            whole = model.score(score_ids, score_mask, ctx)
            reused = model.score(score_ids, score_mask, ctx, lower[name].expand(N_SCORE, -1, -1))
            checks[name] = max(max_diff(w, r) for w, r in zip(whole, reused, strict=True))
            if checks[name] > TOL:
                raise RuntimeError(f"{name}: reused lower states differ from the whole LLM by {checks[name]}")
        # the blocks matter: the users' scores move away from the bare backbone's (no user context)
        bare = top4.score(score_ids, score_mask, None, lower["top4"].expand(N_SCORE, -1, -1))[0]
        ctx = top4.context_from_tokens(user_tokens, user_mask)
        user_effect = max_diff(
            top4.score(score_ids, score_mask, ctx, lower["top4"].expand(N_SCORE, -1, -1))[0], bare
        )

    def train_step(model: PersonalizedLM, lower_state: torch.Tensor | None) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        ctx = model.context_from_tokens(user_tokens[:N_TRAIN], user_mask[:N_TRAIN])
        if lower_state is not None:
            lower_state = lower_state.expand(N_TRAIN, -1, -1)
        items, _ = model.score(train_ids, train_mask, ctx, lower_state)  # (B, I)
        loss = F.cross_entropy(items.float(), labels)
        loss.backward()
        return loss

    def grads(model: PersonalizedLM) -> dict[str, torch.Tensor]:
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_whole = train_step(top4, None)
    grad_whole = grads(top4)
    loss_reused = train_step(top4, lower["top4"])
    grad_reused = grads(top4)
    if grad_whole.keys() != grad_reused.keys():
        raise RuntimeError("reused lower states change which parameters get a gradient")
    checks["top4 training loss"] = abs(loss_whole.item() - loss_reused.item())
    checks["top4 training grads"] = max(max_diff(grad_whole[n], grad_reused[n]) for n in grad_whole)
    trainable = {m: sum(p.numel() for p in model.parameters() if p.requires_grad) for m, model in
                 (("every6", every6), ("top4", top4))}  # fmt: skip
    print({"max abs diff": checks}, flush=True)

    # --- timing ---

    def scorer(model: PersonalizedLM, lower_state: torch.Tensor | None):
        def run():
            with torch.inference_mode():
                ctx = model.context_from_tokens(user_tokens, user_mask)
                state = None if lower_state is None else lower_state.expand(N_SCORE, -1, -1)
                return model.score(score_ids, score_mask, ctx, state)

        return run

    score_cases = {"a": scorer(every6, None), "b": scorer(top4, None), "c": scorer(top4, lower["top4"])}
    train_cases = {
        "a": lambda: train_step(every6, None),
        "b": lambda: train_step(top4, None),
        "c": lambda: train_step(top4, lower["top4"]),
    }
    flops = {
        workload: {case: counted_matmul_flops(fn) for case, fn in fns.items()}
        for workload, fns in (("score", score_cases), ("train", train_cases))
    }
    score = interleaved(score_cases, repeats=args.repeats)
    train = interleaved(train_cases, repeats=args.repeats)

    blocks = {"every6": every6.llm.cross_attn_layers, "top4": top4.llm.cross_attn_layers}
    cases = {
        "a": ("every6", f"every {EVERY_N}th layer", "whole LLM"),
        "b": ("top4", f"last {TOP_LAYERS} layers", "whole LLM"),
        "c": ("top4", f"last {TOP_LAYERS} layers", "lower states reused"),
    }
    table = Table(
        "Median ms per call; speed-up = median over rounds of (this case's time / (c)'s time)",
        ["workload", "case", "cross-attention blocks", "path", "decoder layers run", "median ms", "IQR ms",
         "speed-up of (c)", "matmul GFLOPs", "GFLOPs ratio to (c)"],
    )  # fmt: skip
    for key, workload, times in (
        ("score", f"score {N_SCORE} users", score),
        ("train", f"train step, batch {N_TRAIN}", train),
    ):
        for case, (model_name, placement, path) in cases.items():
            run = num_layers - (split_layer(top4.llm) if case == "c" else 0)
            table.rows.append(
                {
                    "workload": workload,
                    "case": case,
                    "cross-attention blocks": f"{placement} ({', '.join(map(str, blocks[model_name]))})",
                    "path": path,
                    "decoder layers run": f"{run}/{num_layers}",
                    "median ms": median_ms(times[case]),
                    "IQR ms": "{:.0f}-{:.0f}".format(*iqr_ms(times[case])),
                    "speed-up of (c)": paired_ratio(times[case], times["c"]),
                    "matmul GFLOPs": flops[key][case] / 1e9,
                    "GFLOPs ratio to (c)": flops[key][case] / flops[key]["c"],
                }
            )
            print(table.rows[-1], flush=True)

    report.tables = [table]
    report.params = {
        "repeats": args.repeats,
        "warmup_rounds": 1,
        "backbone": str(backbone_dir()),
        "backbone_id": backbone_id(backbone_dir()),
        "dtype": "float32",
        "device": "cpu",
        "decoder_layers": num_layers,
        "cross_attn_layers_every6": list(blocks["every6"]),
        "cross_attn_layers_top4": list(blocks["top4"]),
        "split_layer_top4": split_layer(top4.llm),
        "gate": GATE,
        "prompt": tokenizer.decode(prompt),
        "prompt_tokens": len(prompt),
        "num_user_tokens": num_user_tokens,
        "dim_user": dim_user,
        "score_batch": N_SCORE,
        "train_batch": N_TRAIN,
        "catalogue_items": config.num_items,
        "trainable_params_every6": trainable["every6"],
        "trainable_params_top4": trainable["top4"],
        "max_abs_diff": checks,
        "user_effect_max_abs": user_effect,
        "tolerance": TOL,
    }
    report.notes = [
        f"Equivalence, checked before timing (max abs difference, tolerance {TOL:g}): scores (next-item "
        f"and genre logits, {N_SCORE} users) with reused lower states vs the whole LLM, same model: "
        f"{checks['top4']:.2g} for the last-{TOP_LAYERS} model (split at layer {split_layer(top4.llm)}), "
        f"{checks['every6']:.2g} for the every-{EVERY_N}th model (split at layer "
        f"{split_layer(every6.llm)}); training step of the last-{TOP_LAYERS} model: loss "
        f"{checks['top4 training loss']:.2g}, gradients of every trainable parameter "
        f"{checks['top4 training grads']:.2g}. The blocks matter: the users' next-item scores differ from "
        f"the bare backbone's (no user context) by up to {user_effect:.2g}.",
        f'Prompt: `models.prompts.instruction("next_item")` in the chat template, its last '
        f"{len(prompt)} tokens (training's `max_prompt_tokens={MAX_PROMPT_TOKENS}`), the same for every "
        f"row. User tokens: random ({num_user_tokens}, {dim_user}) per user (16 Perceiver tokens + the "
        "last event's state); their cross-attention K/V (`context_from_tokens`) are computed inside "
        "every timed call. Lower states: (1, S, Dl), computed once before timing and expanded to the "
        "batch, as the engine and `TaskRunner.lower` do.",
        f"Untrained seeded adapters with both tanh gates at {GATE} (the recipe's `--gate_init=0.5`), "
        f"plain Linear(Dl, {config.num_items:,}) next-item and genre heads (the recipe's factorised "
        "`--encoder_heads` would be cheaper still, the same in every case). Trainable: the "
        f"cross-attention blocks and both heads ({trainable['every6'] / 1e6:.1f}M parameters with "
        f"{len(blocks['every6'])} blocks, {trainable['top4'] / 1e6:.1f}M with {len(blocks['top4'])}); "
        "backbone and user tower frozen.",
        "Training step = zero_grad + K/V of the user tokens + forward + next-item cross-entropy "
        "(random catalogue labels) + backward; no optimizer step. With the LLM frozen, autograd "
        "records nothing below the first block, so (b) already backpropagates only through the top "
        f"{TOP_LAYERS} layers: (a)/(b) is the placement's share, (b)/(c) the reuse's.",
        "matmul GFLOPs: torch.utils.flop_counter.FlopCounterMode over one call of each case (training: "
        "forward + backward); on CPU it counts the matmuls, not the SDPA attention.",
        "Scoring runs under `torch.inference_mode`; the model stays in eval mode (the timed modules "
        "have no dropout).",
    ]
    report.save()


if __name__ == "__main__":
    main()
