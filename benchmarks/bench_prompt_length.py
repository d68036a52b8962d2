"""Prompt length: every contextualization mode against a text-prompt history, 10 to 1,000 events.

USER-LLM (arXiv 2402.13598) reports up to 78.1x fewer FLOPs than text-prompt contextualization,
because its prompt stays short whatever the history length. This benchmark measures the prefill
of the next-item prompt on the REAL SmolLM2-135M-Instruct backbone for one real ml-latest-small user
with >= 1,000 ratings, in four modes (untrained adapters: costs do not depend on the weights):
  - cross-attention (USER-LLM): the bare instruction; the K/V of the 16 cached user tokens are
    computed (`prepare_user_context`) inside the timed call, then one prefill; "cache miss" adds
    re-encoding the newest window of events with the user tower (`TorchEngine.encode_histories`);
  - soft prompt: the 16 cached user tokens projected and prepended to the instruction;
  - PPlug (Liu et al. ACL 2025): the instruction embedded by all-MiniLM-L6-v2, input-aware
    aggregation of the N cached history embeddings (the titles, embedded once outside the timing, as
    the worker caches them), the [instruction, personal] prefix prepended to the instruction;
  - text prompt (baseline): the instruction with the user's last N ratings rendered as text
    ("Toy Story (1995), rated 4.0; ..."), on the bare backbone.
Latency is measured at `--lengths`; analytic FLOPs (decoder matmuls 2 * params * tokens, causal
attention, LM head at the last position, the mode's adapters) for every length of FLOP_LENGTHS, with
torch's FlopCounterMode count of the matmuls as a cross-check where measured. Text prompts longer than
the backbone's context (8,192 tokens) are FLOPs only.

Run: USERLLM_BACKBONE_DIR=... python -m benchmarks.bench_prompt_length [--repeats N] [--lengths 10,50,200]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.bench_batching import build_engine
from benchmarks.harness import (
    Report,
    Table,
    add_thread_arg,
    apply_threads,
    backbone_dir,
    interleaved,
    median_ms,
    paired_ratio,
)
from benchmarks.movielens import load, render_history
from models.backbone import load_backbone
from models.generation import left_pad
from models.pplug import SentenceEncoder
from models.prompts import instruction, prompt_ids
from models.userllm import LLMAdapterConfig, UserContext, UserLLM

FLOP_LENGTHS = (10, 25, 50, 100, 200, 500, 1000)  # analytic FLOPs for every mode
MODES = ("cross-attention", "soft prompt", "PPlug", "text prompt")


# --- analytic FLOPs ---


def decoder_flops(llm: UserLLM, tokens: int) -> int:
    """Prefill of `tokens` text tokens on the bare decoder, logits at the last position only."""
    cfg = llm.backbone.config
    params = sum(p.numel() for n, p in llm.backbone.model.layers.named_parameters() if "cross_attn." not in n)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_width = cfg.num_attention_heads * head_dim
    causal = 2 * attn_width * tokens * (tokens + 1) * cfg.num_hidden_layers  # QK^T + AV over i <= j keys
    return 2 * params * tokens + causal + 2 * cfg.hidden_size * cfg.vocab_size


def cross_attention_flops(llm: UserLLM, tokens: int, num_user_tokens: int) -> int:
    """The gated cross-attention blocks: per text token q/o/FFN + attention to L user tokens; K/V once."""
    total = 0
    for block in llm.cross_attn_blocks():
        inner = block.heads * block.dim_head
        per_token = (
            2 * sum(m.weight.numel() for m in (block.q_proj, block.o_proj, block.mlp[1], block.mlp[3]))
            + 4 * inner * num_user_tokens
        )
        context_kv = 2 * num_user_tokens * (block.k_proj.weight.numel() + block.v_proj.weight.numel())
        total += per_token * tokens + context_kv
    return total


def encoder_flops(model: torch.nn.Module, tokens: int) -> int:
    """A BERT-like sentence encoder over `tokens` tokens: 2 * layer params * tokens + attention."""
    cfg = model.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 2 * params * tokens + 4 * cfg.hidden_size * tokens * tokens * cfg.num_hidden_layers


def mode_flops(llm: UserLLM, mode: str, prompt: int, *, users: int, history: int, input_tokens: int,
               minilm: torch.nn.Module, dim_text: int) -> int:  # fmt: skip
    """Prefill FLOPs of one request in `mode`; `prompt` = text tokens (the instruction, or the text
    prompt in mode "text prompt"), `users` = user tokens, `history` = events PPlug aggregates."""
    dim = llm.dim_model
    if mode == "cross-attention":
        return decoder_flops(llm, prompt) + cross_attention_flops(llm, prompt, users)
    if mode == "soft prompt":
        return decoder_flops(llm, prompt + users) + 2 * users * llm.config.dim_user * dim
    if mode == "PPlug":
        aggregate = 4 * history * dim_text + 2 * (dim_text * dim + dim * dim)
        return decoder_flops(llm, prompt + 2) + encoder_flops(minilm, input_tokens) + aggregate
    return decoder_flops(llm, prompt)


def counted_matmul_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per history length")
    parser.add_argument("--lengths", default="10,25,50,100,200", help="history lengths timed")
    add_thread_arg(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    lengths = [int(n) for n in args.lengths.split(",") if n]
    report = Report(
        name="prompt_length",
        title="Prompt length: cross-attention, soft prompt and PPlug vs a text-prompt history (prefill)",
        summary=(
            "Prefill of the next-item prompt for one real user (the first ml-latest-small user by id with "
            ">= 1,000 ratings) on the real SmolLM2-135M-Instruct, per contextualization mode: "
            "cross-attention to the 16 cached user tokens (USER-LLM), the same tokens as a soft prompt, "
            "PPlug's input-aware [instruction, personal] prefix over N cached history embeddings, and the "
            "text-prompt baseline (the last N ratings rendered as text, bare backbone). Interleaved rounds "
            "in one process; medians and the median of the per-round ratios; analytic FLOPs to 1,000 events."
        ),
    )
    data = load()
    engine, config = build_engine()
    llm, tokenizer = engine.model.llm, engine.tokenizer
    models: dict[str, UserLLM] = {"cross-attention": llm}
    for name, mode in (("soft prompt", "soft_prompt"), ("PPlug", "pplug")):
        backbone, _ = load_backbone(backbone_dir())
        torch.manual_seed(0)
        models[name] = UserLLM(LLMAdapterConfig(mode=mode, dim_user=config.llm.dim_user), backbone).eval()
    minilm = SentenceEncoder()
    user = data.users_with(max(FLOP_LENGTHS))[0]
    history = data.histories[user]
    num_user_tokens = config.tower.num_user_tokens
    context_limit = int(llm.backbone.config.max_position_embeddings)
    question = instruction("next_item")
    short_ids = prompt_ids(tokenizer, question)
    short_x, short_mask = left_pad([short_ids], pad_token_id=engine.pad_id)
    input_tokens = len(minilm.tokenizer(question)["input_ids"])
    with torch.inference_mode():  # PPlug's history embeddings, cached per event as the worker would
        titles = minilm.encode([data.catalogue[e.item_id]["title"] for e in history[-max(FLOP_LENGTHS) :]])

    def text_ids(n: int) -> list[int]:
        rendered = f"This user's last {n} movie ratings, oldest first: {render_history(data, history[-n:])}"
        return prompt_ids(tokenizer, instruction("next_item", history=rendered))

    def cached_tokens(n: int) -> torch.Tensor:  # (1, L, Du) fp16 -> fp32, as the worker caches them
        return torch.from_numpy(engine.encode_histories([history[-n:]])[0].astype("float32"))[None]

    def context(mode: str, n: int, tokens: torch.Tensor) -> UserContext:
        model = models[mode]
        if mode == "PPlug":
            return model.prepare_pplug_context(minilm.encode([question]), titles[-n:][None])
        return model.prepare_user_context(tokens, torch.ones(1, tokens.shape[1], dtype=torch.bool))

    def call(mode: str, n: int, tokens: torch.Tensor, *, miss: bool = False) -> None:
        with torch.inference_mode():
            if mode == "text prompt":
                x, mask = left_pad([text_ids(n)], pad_token_id=engine.pad_id)
                llm(x, mask, user_context=None, use_cache=True, logits_to_keep=1)
                return
            ctx = context(mode, n, cached_tokens(n) if miss else tokens)
            models[mode](short_x, short_mask, user_context=ctx, use_cache=True, logits_to_keep=1)

    def flops(mode: str, n: int) -> int:
        prompt = len(text_ids(n)) if mode == "text prompt" else len(short_ids)
        model = models[mode] if mode != "text prompt" else llm
        return mode_flops(model, mode, prompt, users=num_user_tokens, history=n, input_tokens=input_tokens,
                          minilm=minilm.model, dim_text=titles.shape[1])  # fmt: skip

    latency = Table(
        "Prefill per request, median ms (measured); ratios = text prompt / mode",
        ["history N", "text tokens", "cross-attention ms", "cross-attention cache-miss ms", "soft prompt ms",
         "PPlug ms", "text prompt ms", "text / cross-attention", "text / soft prompt", "text / PPlug"],
    )  # fmt: skip
    counted: dict[int, float] = {}
    for n in lengths:
        tokens = cached_tokens(n)
        fits = len(text_ids(n)) <= context_limit
        cases = {m: (lambda m=m, n=n, t=tokens: call(m, n, t)) for m in MODES if m != "text prompt" or fits}
        cases["miss"] = lambda n=n, t=tokens: call("cross-attention", n, t, miss=True)
        times = interleaved(cases, repeats=args.repeats)
        if fits:
            text_mm = counted_matmul_flops(cases["text prompt"])
            counted[n] = text_mm / counted_matmul_flops(cases["cross-attention"])
        row: dict[str, object] = {"history N": n, "text tokens": len(text_ids(n)),
                                  "cross-attention cache-miss ms": median_ms(times["miss"])}  # fmt: skip
        for m in MODES:
            row[f"{m} ms"] = median_ms(times[m]) if m in times else "over the context"
            if m != "text prompt" and fits:
                row[f"text / {m}"] = paired_ratio(times["text prompt"], times[m])
        latency.rows.append(row)
        print(row, flush=True)

    flop_table = Table(
        "Analytic prefill GFLOPs per request, 10 to 1,000 events; ratios = text prompt / mode",
        ["history N", "text tokens", *[f"{m} GFLOPs" for m in MODES], "text / cross-attention FLOPs",
         "text / soft prompt FLOPs", "text / PPlug FLOPs", "counted matmul ratio (text / cross-attention)"],
    )  # fmt: skip
    for n in FLOP_LENGTHS:
        per = {m: flops(m, n) for m in MODES}
        row = {"history N": n, "text tokens": len(text_ids(n))}
        row.update({f"{m} GFLOPs": per[m] / 1e9 for m in MODES})
        row.update({f"text / {m} FLOPs": per["text prompt"] / per[m] for m in MODES if m != "text prompt"})
        row["counted matmul ratio (text / cross-attention)"] = counted.get(n, "-")
        flop_table.rows.append(row)

    cfg = llm.backbone.config
    blocks = llm.cross_attn_layers
    layers = llm.backbone.model.layers.named_parameters()
    layer_params = sum(p.numel() for n, p in layers if "cross_attn." not in n)
    report.tables = [latency, flop_table]
    report.params = {
        "repeats": args.repeats, "warmup_rounds": 1, "user": user, "history_lengths": lengths,
        "flop_lengths": list(FLOP_LENGTHS), "dtype": "float32", "device": "cpu",
        "cross_attn_layers": list(blocks),
        "num_user_tokens": num_user_tokens, "encoder_window": config.tower.encoder.window,
        "context_limit": context_limit, "userllm_prompt": tokenizer.decode(short_ids),
        "text_prompt_10": tokenizer.decode(text_ids(10)),
    }  # fmt: skip
    report.notes = [
        f"ml-latest-small user {user} ({len(history)} ratings); text prompt = chat template + "
        f'"This user\'s last N movie ratings, oldest first: <title>, rated <r>; ..." + the next-item '
        "question (`models.prompts.instruction(..., history=...)`), about 17 tokens per rating; past "
        f"{context_limit:,} tokens (the backbone's context) it cannot run and has FLOPs only.",
        f"Cross-attention: the 16 cached user tokens -> K/V of {len(blocks)} gated blocks + prefill of the "
        f"{len(short_ids)}-token instruction; cache miss adds the paper-sized user tower (6 layers, d=128, "
        "Perceiver to 16 tokens) over the newest 50 events, which the worker normally does ahead of time. "
        "Soft prompt: the same tokens through a linear projection, prefill of 16 + the instruction. PPlug: "
        f"MiniLM-L6 over the {input_tokens}-token question, softmax over its dot products with the N history "
        "embeddings, an MLP, prefill of 2 + the instruction (the LLM stays frozen in PPlug).",
        f"Analytic FLOPs: decoder 2 x {layer_params / 1e6:.1f}M layer params x tokens + causal attention "
        f"2 x {cfg.num_hidden_layers} layers x width x S(S+1) + LM head ({cfg.vocab_size:,} x "
        f"{cfg.hidden_size}) at the last position; plus the mode's adapters (cross-attention q/o and FFN per "
        "text token, attention to 16 user tokens, K/V once; the soft-prompt projection; PPlug's MiniLM "
        "and aggregation). User-tower and history-embedding FLOPs are excluded (precomputed by the worker).",
        "counted matmul ratio: torch.utils.flop_counter.FlopCounterMode over the same calls; on CPU it "
        "counts the matmuls (aten.mm) only, not the SDPA attention, so it sits under the analytic ratio.",
        "The USER-LLM modes read a fixed-size summary (16 tokens, or PPlug's one vector), so their cost is "
        "flat in N; the text prompt grows linearly in tokens and quadratically in attention.",
    ]
    report.save()


if __name__ == "__main__":
    main()
