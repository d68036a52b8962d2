"""Generation server dynamic batching: concurrent requests served as one batch vs one at a time.

The engine's batch functions, `TorchEngine.generate_batch` / `score_batch` (the engine loop's), on the
REAL SmolLM2-135M-Instruct backbone with an untrained USER-LLM around it (paper-sized user
tower, gated cross-attention before every 4th decoder layer, zero gates: the blocks still run, so
the cost is the trained model's):
  - generate: 8 review requests (32 new tokens, greedy) as ONE batch vs 8 single-request batches;
  - score: next-item scoring over the whole catalogue for 16 users as ONE batch vs 16 singles.
The user tokens are real users' (ml-latest-small) encoded by the tower, as the worker caches them.

Run: USERLLM_BACKBONE_DIR=... python -m benchmarks.bench_batching [--gen-repeats N] [--score-repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

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
from models.generation import SamplingParams
from models.personalized import PersonalizedLM, UserLLMConfig
from models.user_encoder import UserEncoderConfig
from models.user_tower import UserTowerConfig
from models.userllm import LLMAdapterConfig
from service.engine import GenerateJob, ScoreJob, TorchEngine, UserInput

N_GENERATE = 8  # concurrent generation requests
N_SCORE = 16  # concurrent scoring requests
MAX_NEW_TOKENS = 32


def build_engine(every_n: int = 4) -> tuple[TorchEngine, UserLLMConfig]:
    data = load()
    backbone, tokenizer = load_backbone(backbone_dir())  # float32 on CPU, as TorchEngine.load does
    config = UserLLMConfig(
        tower=UserTowerConfig(encoder=UserEncoderConfig(features=data.features())),
        llm=LLMAdapterConfig(cross_attn_every_n_layers=every_n),
        num_items=data.vocab_size("item"),
        num_categories=data.vocab_size("category"),
    )
    torch.manual_seed(0)
    model = PersonalizedLM(config, backbone)
    return TorchEngine(model, tokenizer, data.codec, "bench-untrained", "cpu"), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gen-repeats", type=int, default=3, help="interleaved rounds for generation")
    parser.add_argument("--score-repeats", type=int, default=6, help="interleaved rounds for scoring")
    add_thread_arg(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    report = Report(
        name="batching",
        title="Generation server: dynamic batching vs one request at a time",
        summary=(
            f"{N_GENERATE} concurrent generation requests ({MAX_NEW_TOKENS} new tokens, greedy) served by "
            "ONE "
            f"`TorchEngine.generate_batch` call vs {N_GENERATE} sequential single-request calls, and "
            f"{N_SCORE} next-item scoring requests in ONE `score_batch` call vs {N_SCORE} single calls, on "
            "the real SmolLM2-135M-Instruct backbone with gated cross-attention to each user's 16 "
            "user_tokens. Interleaved rounds (batched, sequential, batched, ...) in one process; medians "
            "and the median of the per-round ratios."
        ),
    )
    data = load()
    engine, config = build_engine()
    users = data.users_with(50)[: max(N_GENERATE, N_SCORE)]
    histories = [data.histories[u][-50:] for u in users]
    user_tokens = engine.encode_histories(histories)  # (16, 128) fp16 each, as cached in Redis

    # --- generate ---
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    gen_jobs = [
        GenerateJob(UserInput(user_tokens[i]), engine.review_prompt(h[-1].item_id, h[-1].rating), params)
        for i, h in enumerate(histories[:N_GENERATE])
    ]
    seq_latency: list[list[float]] = []  # per round: completion time of each request, from t=0
    outputs: dict[str, list[str]] = {}

    def gen_batched():
        outputs["batched"] = [r.text for r in engine.generate_batch(gen_jobs)]
        return outputs["batched"]

    def gen_sequential():
        start, done, texts = time.perf_counter(), [], []
        for job in gen_jobs:
            texts.append(engine.generate_batch([job])[0].text)
            done.append(time.perf_counter() - start)
        seq_latency.append(done)
        outputs["sequential"] = texts
        return texts

    results = engine.generate_batch(gen_jobs)
    completion = sum(r.completion_tokens for r in results)
    prompt_tokens = [r.prompt_tokens for r in results]
    gen = interleaved({"batched": gen_batched, "sequential": gen_sequential}, repeats=args.gen_repeats)
    seq_latency = seq_latency[1:]  # drop the warm-up round
    same = sum(a == b for a, b in zip(outputs["batched"], outputs["sequential"], strict=True))

    # --- score ---
    score_jobs = [
        ScoreJob(UserInput(user_tokens[i]), k=10, exclude={engine.codec.items.encode(e.item_id) for e in h})
        for i, h in enumerate(histories[:N_SCORE])
    ]
    score = interleaved(
        {
            "batched": lambda: engine.score_batch(score_jobs),
            "sequential": lambda: [engine.score_batch([j]) for j in score_jobs],
        },
        repeats=args.score_repeats,
    )
    batched_top = [r.items[0][0] for r in engine.score_batch(score_jobs)]
    single_top = [engine.score_batch([j])[0].items[0][0] for j in score_jobs]

    table = Table(
        "Throughput (medians); ratio = median over rounds of sequential time / batched time",
        [
            "workload",
            "mode",
            "median ms",
            "IQR ms",
            "requests/s",
            "tokens/s",
            "mean request latency ms",
            "speed-up (batched)",
        ],
    )
    for name, times, n, tokens in (
        (f"generate {N_GENERATE} x {MAX_NEW_TOKENS} tokens", gen, N_GENERATE, completion),
        (f"score {N_SCORE} users (next item)", score, N_SCORE, None),
    ):
        for mode in ("batched", "sequential"):
            ms = median_ms(times[mode])
            if mode == "batched":
                latency = ms  # every request of the batch completes at the end of the call
            elif tokens is not None:
                latency = 1000.0 * statistics.median(statistics.mean(r) for r in seq_latency)
            else:
                latency = ms * (n + 1) / (2 * n)  # equal singles: request i ends at i/n of the time
            table.rows.append(
                {
                    "workload": name,
                    "mode": f"1 batch of {n}" if mode == "batched" else f"{n} x batch of 1",
                    "median ms": ms,
                    "IQR ms": "{:.0f}-{:.0f}".format(*iqr_ms(times[mode])),
                    "requests/s": n / (ms / 1000.0),
                    "tokens/s": "" if tokens is None else tokens / (ms / 1000.0),
                    "mean request latency ms": latency,
                    "speed-up (batched)": paired_ratio(times["sequential"], times["batched"])
                    if mode == "batched"
                    else 1.0,
                }
            )
            print(table.rows[-1], flush=True)

    blocks = config.llm.layer_ids(len(engine.model.llm.backbone.model.layers))
    report.tables = [table]
    report.params = {
        "gen_repeats": args.gen_repeats,
        "score_repeats": args.score_repeats,
        "warmup_rounds": 1,
        "backbone": str(backbone_dir()),
        "backbone_id": backbone_id(backbone_dir()),
        "dtype": "float32",
        "device": "cpu",
        "cross_attn_layers": list(blocks),
        "max_new_tokens": MAX_NEW_TOKENS,
        "completion_tokens_per_batch": completion,
        "prompt_tokens": prompt_tokens,
        "users": users,
        "catalogue_items": config.num_items,
    }
    report.notes = [
        "Real backbone (SmolLM2-135M-Instruct, float32, CPU, as `TorchEngine.load` loads it); untrained "
        f"USER-LLM adapters: {len(blocks)} gated cross-attention blocks (before decoder layers "
        f"{', '.join(map(str, blocks))}), zero gates. The blocks are computed even with zero gates, so "
        "the cost equals a trained model's; only the generated text differs.",
        f"Generation prompts: the review instruction for each user's last rated movie ({min(prompt_tokens)}-"
        f"{max(prompt_tokens)} tokens, left-padded in the batch). tokens/s counts generated tokens "
        f"({completion} per round; a request can stop early at EOS).",
        f"Batched and sequential greedy outputs identical for {same}/{N_GENERATE} generation requests; "
        f"top-1 next item identical for {sum(a == b for a, b in zip(batched_top, single_top, strict=True))}"
        f"/{N_SCORE} scoring requests.",
        "Mean request latency: all requests arrive at t=0. Batched: each finishes when the batch does. "
        "Sequential generation: measured completion time of each request, averaged; sequential scoring: "
        "derived from the median call time (request i ends after i calls).",
        "Scoring: one forward pass over the next-item prompt + the next-item head over the whole "
        f"catalogue ({config.num_items:,} item ids) and the genre head, top-10 with the user's history "
        "excluded.",
    ]
    report.save()


if __name__ == "__main__":
    main()
