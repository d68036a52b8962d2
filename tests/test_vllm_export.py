"""vllm_userllm/export.py (no vLLM needed): a cross-attention checkpoint becomes a vLLM model folder
whose config names the plugin's architecture and the adapter sizes, and whose adapter file holds every
gated cross-attention block of the checkpoint, byte for byte, under `xattn.{layer}.*`. The folder
decoding in vLLM is tested in tests_vllm/test_vllm_cross_attention.py (`make test-vllm`)."""

from __future__ import annotations

import json

import pytest
import torch
from llm_fixtures import real_backbone_dir  # noqa: F401
from safetensors.torch import load_file
from service_fixtures import build_tiny_stack

from models.checkpoint import load_checkpoint
from vllm_userllm import ARCHITECTURE
from vllm_userllm.export import export


def test_export_writes_the_plugin_folder(tmp_path, real_backbone_dir) -> None:  # noqa: F811
    backbone, ckpt = build_tiny_stack(tmp_path / "stack", real_backbone_dir, cross_attn_layers=(1,))
    out = export(ckpt, backbone, tmp_path / "vllm")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["is_encoder_decoder"] is True
    spec = config["userllm"]
    assert spec["cross_attn_layers"] == [1] and spec["num_user_tokens"] == 16 and spec["dim_user"] == 32
    adapters = load_file(str(out / "userllm_adapters.safetensors"))
    state = load_checkpoint(ckpt).state_dict
    blocks = {k: v for k, v in state.items() if ".cross_attn." in k}
    assert len(adapters) == len(blocks) > 0
    for key, value in blocks.items():
        assert torch.equal(adapters["xattn.1." + key.split(".cross_attn.", 1)[1]], value)
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()


def test_export_refuses_what_the_plugin_cannot_serve(tmp_path, real_backbone_dir) -> None:  # noqa: F811
    backbone, ckpt = build_tiny_stack(tmp_path / "stack", real_backbone_dir)
    manifest_config = json.loads((ckpt / "config.json").read_text())
    manifest_config["strategy"] = "full"
    (ckpt / "config.json").write_text(json.dumps(manifest_config))
    with pytest.raises(ValueError, match="frozen LLM"):
        export(ckpt, backbone, tmp_path / "vllm")
