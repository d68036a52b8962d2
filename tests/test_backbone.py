"""Backbone: tiny Llama, content id, atomic conversion; the real SmolLM2-135M (converted once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llm_fixtures import real_backbone, real_backbone_dir  # noqa: F401  (pytest fixtures)
from torch.testing import assert_close
from transformers import LlamaForCausalLM

from models.backbone import backbone_id, convert_smollm2, find_smollm2_gguf, load_backbone, tiny_llama
from models.generation import SamplingParams, generate, left_pad
from models.userllm import LLMAdapterConfig, UserLLM


def test_tiny_llama_shapes() -> None:
    model = tiny_llama(num_layers=3)
    assert isinstance(model, LlamaForCausalLM) and len(model.model.layers) == 3
    assert model(torch.tensor([[1, 5, 7]])).logits.shape == (1, 3, 99)


def test_backbone_id_is_cheap_content_hash(tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path / "a")
    first = backbone_id(tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")
    assert backbone_id(tmp_path / "b") == first  # the folder's name does not matter
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    assert backbone_id(tmp_path / "b") != first
    assert first.startswith("llama@")


def test_failed_conversion_leaves_no_folder(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(Exception):  # noqa: B017  (whatever the GGUF reader raises)
        convert_smollm2(tmp_path / "out" / "model", gguf_path=bad)
    assert list((tmp_path / "out").iterdir()) == []


def test_load_backbone_reads_local_folders(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_backbone(tmp_path / "missing")


# --- the real backbone ---


@pytest.mark.backbone
def test_real_backbone_is_smollm2(real_backbone_dir: Path, real_backbone) -> None:  # noqa: F811
    model, tokenizer = real_backbone
    assert find_smollm2_gguf().is_file()
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    assert next(model.parameters()).dtype == torch.float32
    assert convert_smollm2(real_backbone_dir) == real_backbone_dir  # already converted: no-op
    assert backbone_id(real_backbone_dir) == backbone_id(real_backbone_dir)
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None


@pytest.mark.backbone
def test_real_zero_gated_userllm_equals_bare_and_generates(real_backbone_dir: Path, real_backbone) -> None:  # noqa: F811
    bare, tokenizer = real_backbone
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = bare(ids).logits
    llm = UserLLM(LLMAdapterConfig(dim_user=32, heads=9), load_backbone(real_backbone_dir)[0]).eval()
    assert len(llm.cross_attn_blocks()) == 7
    tokens = torch.randn(2, 16, 32)
    with torch.no_grad():
        out = llm(ids, user_context=llm.prepare_user_context(tokens[:1]))
    assert_close(out.logits, expected, rtol=0, atol=0)

    chats = [
        [{"role": "user", "content": "Name a fruit."}],
        [{"role": "user", "content": "Say hello, please."}],
    ]
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    seqs = [tokenizer(t).input_ids for t in texts]
    batch_ids, mask = left_pad(seqs, pad_token_id=tokenizer.pad_token_id)
    got = generate(
        llm,
        batch_ids,
        mask,
        user_tokens=tokens,
        params=SamplingParams(max_new_tokens=8),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert all(0 < len(row) <= 8 for row in got)
    assert all(tokenizer.decode(row, skip_special_tokens=True).strip() for row in got)
    with torch.no_grad():  # zero gates: the same tokens as HF's own greedy generate on the bare model
        ref = bare.generate(
            torch.tensor([seqs[0]]),
            max_new_tokens=len(got[0]),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    assert got[0] == ref[0, len(seqs[0]) :].tolist()
