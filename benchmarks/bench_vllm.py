"""The vLLM engine beside the PyTorch engine: decode tokens/s at batch 1, 8, 32 and time to first token,
on the same model and prompts, in one process.

The model: by default the REAL SmolLM2-135M-Instruct backbone (float32) with an untrained soft-prompt
USER-LLM around it (paper-sized user tower, a Linear projection of the 16 user tokens to the LLM width;
the cost does not depend on the weight values); with `--checkpoint DIR` a trained checkpoint of a
frozen-LLM strategy, e.g. the cross-attention demo checkpoint (`make train-demo`: checkpoints/userllm,
decoded in vLLM through the `vllm_userllm` plugin, exported once into `--cache-dir`) or the PPlug one
(checkpoints/pplug). User inputs of real ml-latest-small users encoded by the model's tower.
B review requests (greedy, `--max-new-tokens`, 64 by default) start together and are served by
  - the PyTorch engine: the generation server's engine loop (`EngineLoop.generate`: continuous
    batching over the KV cache, models/continuous.py);
  - the vLLM engine: `VllmEngine.generate` (prompt embeddings from the same engine loop's thread, then
    vLLM's `AsyncLLM`: paged KV cache, its own scheduler and kernels, engine core in a child process).
Rounds alternate (torch, vLLM, torch, ...) after one warm-up round each; medians over `--repeats`.
tokens/s = generated tokens of the B requests / wall time until the last one ends; time to first
token = from the start of the round to a request's first streamed text, median over the B requests.
Greedy decoding stops at EOS on both sides, so both count the tokens they actually generated.

Run with the vLLM environment's python (make bench-vllm):
  USERLLM_BACKBONE_DIR=... .venv-vllm/bin/python -m benchmarks.bench_vllm [--repeats 2] [--batches 1,8,32]
  ... -m benchmarks.bench_vllm --checkpoint checkpoints/userllm   (-> docs/bench/vllm-userllm.*)
The device is CUDA when present (the same command on a GPU host gives the GPU figures), else CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.harness import Report, Table, add_thread_arg, apply_threads, backbone_dir  # noqa: E402
from benchmarks.movielens import load  # noqa: E402
from models.backbone import backbone_id, load_backbone  # noqa: E402
from models.generation import SamplingParams  # noqa: E402
from models.personalized import PersonalizedLM, UserLLMConfig  # noqa: E402
from models.pplug import REVIEW_QUERY  # noqa: E402
from models.user_encoder import UserEncoderConfig  # noqa: E402
from models.user_tower import UserTowerConfig  # noqa: E402
from models.userllm import LLMAdapterConfig  # noqa: E402
from service.engine import GenerateJob, TorchEngine, UserInput, resolve_device  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.vllm_engine import VllmEngine  # noqa: E402


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu ({model}, {os.cpu_count()} cores)"


def build_engine(device: str) -> TorchEngine:
    data = load()
    backbone, tokenizer = load_backbone(backbone_dir(), device=device)  # float32, as TorchEngine.load
    tower = UserTowerConfig(encoder=UserEncoderConfig(features=data.features()))
    config = UserLLMConfig(
        tower=tower,
        llm=LLMAdapterConfig(mode="soft_prompt", dim_user=tower.dim_user),
        num_items=data.vocab_size("item"),
        num_categories=data.vocab_size("category"),
    )
    torch.manual_seed(0)
    model = PersonalizedLM(config, backbone).to(device)
    return TorchEngine(model, tokenizer, data.codec, "bench-soft-prompt-untrained", device)


def load_engine(checkpoint: Path | None, device: str) -> TorchEngine:
    """The trained checkpoint's engine, else the untrained soft-prompt model of `build_engine`."""
    return (
        build_engine(device) if checkpoint is None else TorchEngine.load(checkpoint, backbone_dir(), device)
    )


def describe(engine: TorchEngine) -> str:
    config = engine.model.config
    llm = config.llm
    if llm.mode == "cross_attention":
        return f"gated cross-attention before decoder layers {list(engine.model.llm.cross_attn_layers)}"
    if llm.mode == "pplug":
        return "PPlug: the [instruction, personal] prefix of 2 embeddings"
    return f"soft prompt: {config.tower.num_user_tokens} projected user tokens ahead of the prompt"


async def one_round(run, jobs: list[GenerateJob]) -> tuple[float, int, list[float]]:
    """(wall seconds, generated tokens, time to first text of each request) of B concurrent requests."""
    start = time.perf_counter()
    first: dict[int, float] = {}
    for i, job in enumerate(jobs):
        job.on_text = lambda _piece, i=i: first.setdefault(i, time.perf_counter() - start)
    results = await asyncio.gather(*(run(job) for job in jobs))
    wall = time.perf_counter() - start
    return wall, sum(r.completion_tokens for r in results), [first.get(i, wall) for i in range(len(jobs))]


def fresh(jobs: list[GenerateJob]) -> list[GenerateJob]:
    return [GenerateJob(j.user, j.prompt, j.params, query=j.query) for j in jobs]


async def measure(args: argparse.Namespace, report: Report) -> None:
    device = resolve_device(args.device)
    engine = load_engine(args.checkpoint, device)
    data = load()
    users = data.users_with(50)[: max(args.batches)]
    histories = [data.histories[u][-50:] for u in users]
    tokens = engine.encode_histories(histories)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0, repetition_penalty=1.0)
    jobs = [
        GenerateJob(
            UserInput(tokens[i]),
            engine.review_prompt(h[-1].item_id, h[-1].rating),
            params,
            query=REVIEW_QUERY,
        )
        for i, h in enumerate(histories)
    ]
    served = (
        {}
        if args.checkpoint is None
        else dict(checkpoint_dir=args.checkpoint.parent, model=args.checkpoint.name)
    )
    settings = Settings(
        backbone_dir=backbone_dir(), device=device, max_batch_size=max(args.batches), max_queue=1024,
        max_prompt_tokens=256, max_new_tokens_limit=args.max_new_tokens, vllm_kv_cache_gib=args.kv_cache_gib,
        **served, **({} if args.cache_dir is None else {"cache_dir": args.cache_dir}),
    )  # fmt: skip
    started = time.perf_counter()
    vllm = VllmEngine.start(engine, settings)
    startup = time.perf_counter() - started
    engines = {"torch": vllm.loop.generate, "vllm": vllm.generate}
    table = Table(
        "Decode throughput and time to first token (medians over rounds)",
        ["batch", "engine", "tokens/s", "ratio (vLLM / torch)", "TTFT median ms", "wall ms", "tokens"],
    )
    try:
        for batch in args.batches:
            sample = jobs[:batch]
            runs: dict[str, list[tuple[float, int, list[float]]]] = {name: [] for name in engines}
            for r in range(args.repeats + 1):
                for name, run in engines.items():
                    result = await one_round(run, fresh(sample))
                    if r > 0:  # round 0 warms up
                        runs[name].append(result)
                    print(f"batch {batch} {name} round {r}: {result[1]} tokens {result[0]:.2f} s", flush=True)
            rates = {n: [tok / wall for wall, tok, _ in rs] for n, rs in runs.items()}
            for name, rs in runs.items():
                table.rows.append(
                    {
                        "batch": batch,
                        "engine": name,
                        "tokens/s": statistics.median(rates[name]),
                        "ratio (vLLM / torch)": statistics.median(
                            v / t for v, t in zip(rates["vllm"], rates["torch"], strict=True)
                        )
                        if name == "vllm"
                        else 1.0,
                        "TTFT median ms": 1000 * statistics.median(statistics.median(f) for _, _, f in rs),
                        "wall ms": 1000 * statistics.median(w for w, _, _ in rs),
                        "tokens": int(statistics.median(t for _, t, _ in rs)),
                    }
                )
    finally:
        await vllm.stop()
    import vllm as vllm_package

    report.tables = [table]
    report.params = {
        "device": device_name(device),
        "vllm": vllm_package.__version__,
        "vllm_startup_s": round(startup, 1),
        "vllm_compile": settings.vllm_compile,
        "vllm_cpu_omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
        "backbone": str(backbone_dir()),
        "backbone_id": backbone_id(backbone_dir()),
        "dtype": "float32",
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "batches": args.batches,
        "prompt_tokens": [len(j.prompt) for j in jobs],
        "model": describe(engine),
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "model_version": engine.model_version,
        "users": users,
    }
    report.notes = [
        f"Device: {device_name(device)}. The engines take turns: rounds alternate, so one engine is idle "
        "while the other is timed.",
        "PyTorch engine: the engine loop's continuous batching (up to the batch size in rows), torch "
        f"threads as in the header. vLLM {vllm_package.__version__}: eager mode (`USERLLM_VLLM_COMPILE` off)."
        + (
            " Its CPU worker binds its OpenMP threads to cores (VLLM_CPU_OMP_THREADS_BIND="
            f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}); with 'auto' on a 2-core machine it "
            "takes core 0 and reserves core 1 for the serving process (its log: `core ids=[0]`, "
            "`reserved_cpus=[1]`), so vLLM decodes on ONE core while the PyTorch engine has two threads."
            if device == "cpu"
            else ""
        ),
        f"vLLM start-up (engine core process, model load, KV cache): {startup:.1f} s, not in the figures.",
        "Prompts: the review instruction for each user's last rated movie; the user comes in by "
        f"{describe(engine)}; greedy, repetition penalty 1.0 on both sides.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per engine and batch size")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="vLLM KV cache on CPU")
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="a trained checkpoint folder (frozen-LLM strategy) instead of the untrained soft-prompt model",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="where a cross-attention checkpoint is exported for vLLM (default: the service's cache_dir)",
    )  # fmt: skip
    add_thread_arg(parser)
    args = parser.parse_args()
    apply_threads(args.threads)
    model = (
        "soft-prompt USER-LLM (real SmolLM2-135M-Instruct, float32, untrained adapters)"
        if args.checkpoint is None
        else f"trained checkpoint `{args.checkpoint}` (real SmolLM2-135M-Instruct, float32)"
    )
    report = Report(
        name="vllm" if args.checkpoint is None else f"vllm-{args.checkpoint.name}",
        title="vLLM engine vs PyTorch engine: decode tokens/s and time to first token"
        + ("" if args.checkpoint is None else f" ({args.checkpoint.name} checkpoint)"),
        summary=(
            f"The same {model} and the "
            "same review prompts of real ml-latest-small users, B requests started together (B = "
            f"{', '.join(map(str, args.batches))}), {args.max_new_tokens} new tokens at most, greedy: the "
            "generation server's PyTorch engine loop vs the vLLM engine (`USERLLM_ENGINE=vllm`). "
            "Alternating rounds in one process; medians."
        ),
    )
    asyncio.run(measure(args, report))
    report.save()


if __name__ == "__main__":
    main()
