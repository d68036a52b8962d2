"""Generic instruction/response text: what keeps the personalized LLM's language intact, and measures it.

The instructions are `data/generic/prompts.txt` (written for this project). The responses are the bare
backbone's own (sampled, temperature 0.7, top-p 0.9, one seed per prompt), written once per backbone and
cached as JSONL under `$USERLLM_CACHE_DIR/generic/` (or `$USERLLM_GENERIC_DIR`; nothing is downloaded);
the default backbone's file ships in `data/generic/` (`<backbone id>-<prompts key>.jsonl`).
Fine-tuning's "generic" task is a KL term that keeps the model's next-token distributions on this
text, read *with* a user's tokens, equal to the bare backbone's; evaluation reports the perplexity of
the held-out part with a user's tokens divided by the bare backbone's (1.0 = untouched language).

The split is fixed: the last `HELD_OUT` instructions of the file are never trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from models.backbone import backbone_id
from models.generation import SamplingParams, generate, left_pad
from models.prompts import prompt_ids
from models.userllm import UserLLM

__all__ = ["HELD_OUT", "PROMPTS_FILE", "GenericText", "generic_texts", "load_prompts"]

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "generic"
PROMPTS_FILE = SHIPPED_DIR / "prompts.txt"
HELD_OUT = 32  # last instructions of the file: evaluation only
RESPONSE_TOKENS = 40  # response length cap (tokens)
SAMPLING = dict(temperature=0.7, top_p=0.9)


@dataclass(frozen=True)
class GenericText:
    """One instruction with the bare backbone's response, as token ids."""

    prompt: str
    response: str
    prompt_ids: tuple[int, ...]  # chat-formatted instruction with the generation prompt
    response_ids: tuple[int, ...]  # response tokens, EOS appended when the backbone ended there


def load_prompts(path: str | Path = PROMPTS_FILE) -> list[str]:
    """Instructions of a prompts file: one a line, '#' comments and blank lines skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(prompts) <= HELD_OUT:
        raise ValueError(f"{path}: {len(prompts)} instructions, need more than the {HELD_OUT} held out")
    return prompts


def _cache_file(backbone_dir: str | Path, prompts: Sequence[str]) -> Path:
    """$USERLLM_GENERIC_DIR, else $USERLLM_CACHE_DIR/generic, else ~/.cache/userllm/generic."""
    cache = Path(os.environ.get("USERLLM_CACHE_DIR", str(Path.home() / ".cache" / "userllm"))) / "generic"
    folder = Path(os.environ.get("USERLLM_GENERIC_DIR", str(cache)))
    key = hashlib.sha256(json.dumps([list(prompts), RESPONSE_TOKENS, SAMPLING]).encode()).hexdigest()[:12]
    return folder / f"{backbone_id(backbone_dir)}-{key}.jsonl"


@torch.no_grad()
def _respond(llm: UserLLM, tokenizer: Any, prompts: Sequence[str], progress: bool) -> list[list[int]]:
    """The bare backbone's sampled responses (token ids, EOS kept when it stopped there)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = next(llm.parameters()).device
    out: list[list[int]] = []
    bar = tqdm(total=len(prompts), desc="generic responses (bare backbone, once)", disable=not progress)
    for start in range(0, len(prompts), 16):
        chunk = prompts[start : start + 16]
        ids, mask = left_pad([prompt_ids(tokenizer, p) for p in chunk], pad_token_id=pad)
        params = [
            SamplingParams(max_new_tokens=RESPONSE_TOKENS, seed=start + i, **SAMPLING)
            for i in range(len(chunk))
        ]
        rows = generate(
            llm, ids.to(device), mask.to(device), params=params, eos_token_id=eos, pad_token_id=pad
        )
        out.extend(row + ([eos] if len(row) < RESPONSE_TOKENS else []) for row in rows)
        bar.update(len(chunk))
    bar.close()
    return out


def generic_texts(
    llm: UserLLM, tokenizer: Any, backbone_dir: str | Path, *, path: str | Path = PROMPTS_FILE,
    progress: bool = True,
) -> tuple[list[GenericText], list[GenericText]]:  # fmt: skip
    """(train, held_out) generic texts for this backbone, generated on first use and cached."""
    prompts = load_prompts(path)
    cache = _cache_file(backbone_dir, prompts)
    shipped = SHIPPED_DIR / cache.name  # the default backbone's responses come with the repository
    if shipped.is_file() and path == PROMPTS_FILE:
        cache = shipped
    if cache.is_file():
        records = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    else:
        responses = _respond(llm, tokenizer, prompts, progress)
        records = [{"prompt": p, "response_ids": r} for p, r in zip(prompts, responses, strict=True)]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        tmp.replace(cache)
    texts = [
        GenericText(
            prompt=r["prompt"],
            response=tokenizer.decode(r["response_ids"], skip_special_tokens=True).strip(),
            prompt_ids=tuple(prompt_ids(tokenizer, r["prompt"])),
            response_ids=tuple(r["response_ids"]),
        )
        for r in records
    ]
    return texts[:-HELD_OUT], texts[-HELD_OUT:]
