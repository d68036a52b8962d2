"""Write the vLLM model folder of a cross-attention USER-LLM checkpoint (experimental): the backbone
folder's files, its config.json with `architectures = ["UserLLMCrossAttentionForCausalLM"]`,
`is_encoder_decoder = true` and the adapter sizes under `userllm`, and the gated cross-attention
blocks as `xattn.{layer}.*` in `userllm_adapters.safetensors`. Imports no vLLM.

Run: python -m vllm_userllm.export CHECKPOINT_DIR BACKBONE_DIR OUT_DIR
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

from safetensors.torch import save_file

from models.checkpoint import load_checkpoint
from models.personalized import UserLLMConfig
from vllm_userllm import ARCHITECTURE

_BLOCK = re.compile(r"^llm\.backbone\.model\.layers\.(\d+)\.cross_attn\.(.+)$")


def export(checkpoint_dir: Path, backbone_dir: Path, out: Path) -> Path:
    ck = load_checkpoint(checkpoint_dir)
    config = UserLLMConfig(**ck.config)
    if config.llm.mode != "cross_attention" or config.strategy not in ("enc", "proj"):
        raise ValueError("export needs a cross-attention checkpoint with a frozen LLM (strategy enc / proj)")
    shutil.copytree(backbone_dir, out, dirs_exist_ok=True)
    hf = json.loads((backbone_dir / "config.json").read_text())
    layers = sorted({int(m.group(1)) for k in ck.state_dict if (m := _BLOCK.match(k))})
    hf.update(
        architectures=[ARCHITECTURE],
        is_encoder_decoder=True,
        userllm=dict(
            cross_attn_layers=layers, dim_user=config.llm.dim_user, heads=config.llm.heads,
            dim_head=config.llm.dim_head, ff_mult=config.llm.ff_mult,
            num_user_tokens=config.tower.num_user_tokens, model_version=ck.model_version,
        ),
    )  # fmt: skip
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    adapters = {
        f"xattn.{m.group(1)}.{m.group(2)}": v.contiguous()
        for k, v in ck.state_dict.items()
        if (m := _BLOCK.match(k))
    }
    save_file(adapters, str(out / "userllm_adapters.safetensors"))
    return out


if __name__ == "__main__":
    export(*(Path(a) for a in sys.argv[1:4]))
