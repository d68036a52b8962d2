"""Self-describing checkpoint directories (the only file I/O in `models/`).

A checkpoint is a directory:

    model.safetensors   weights (all of them, or only the trainable ones: `manifest["trainable_only"]`)
    config.json         the model config (`dataclasses.asdict` of the composed config)
    manifest.json       model_version, backbone id/hash, data hash, git SHA, seed, train config, ...
    *.json              optional side files (vocabularies, catalogue), named by the caller

Loading is strict: missing or unexpected keys and shape mismatches raise `CheckpointError`.

Based on: litgpt `step-XXXX/{lit_model.pth, model_config.yaml, hyperparameters.yaml}`, open_flamingo
`filter_state_dict_to_trainable`, safetensors as the serving format (HF/accelerate default).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_MANIFEST_KEYS = ("format_version", "model_version", "kind", "trainable_only")


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete, or does not match the model."""


# --- helpers ---


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: missing") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters with `requires_grad` (plus nothing else): what fine-tuning changed."""
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


# --- save / load ---


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint directory."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    manifest: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])


def save_checkpoint(
    directory: str | Path,
    state_dict: dict[str, torch.Tensor],
    *,
    config: dict[str, Any],
    kind: str,
    trainable_only: bool,
    manifest: dict[str, Any] | None = None,
    extras: dict[str, Any] | None = None,
) -> str:
    """Write a checkpoint directory atomically and return its `model_version`.

    `model_version` is `"{kind}-{sha256(weights)[:12]}"` unless the manifest gives one: it changes
    whenever the weights change, so a cache keyed by it never serves stale embeddings.
    `extras` maps file stems to JSON-serialisable objects (e.g. {"vocab": {...}}).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        meta = dict(manifest or {})
        meta.setdefault("model_version", f"{kind}-{file_sha256(tmp / WEIGHTS)[:12]}")
        meta.update(format_version=FORMAT_VERSION, kind=kind, trainable_only=trainable_only)
        meta["num_tensors"] = len(tensors)
        _write_json(tmp / CONFIG, config)
        _write_json(tmp / MANIFEST, meta)
        for stem, obj in (extras or {}).items():
            if stem in {Path(CONFIG).stem, Path(MANIFEST).stem}:
                raise CheckpointError(f"extra file name {stem!r} is reserved")
            _write_json(tmp / f"{stem}.json", obj)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(meta["model_version"])


def load_checkpoint(directory: str | Path, *, map_location: str = "cpu") -> Checkpoint:
    """Read a checkpoint directory; raises `CheckpointError` naming the missing or broken file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found")
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    manifest = _read_json(directory / MANIFEST)
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise CheckpointError(f"{directory / MANIFEST}: missing keys {missing}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / MANIFEST}: format_version {manifest['format_version']} != {FORMAT_VERSION}"
        )
    extras = {
        p.stem: _read_json(p) for p in sorted(directory.glob("*.json")) if p.name not in {CONFIG, MANIFEST}
    }
    return Checkpoint(
        path=directory,
        state_dict=load_file(str(weights), device=map_location),
        config=_read_json(directory / CONFIG),
        manifest=manifest,
        extras=extras,
    )


def load_state_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], *, subset: bool = False) -> None:
    """Load weights and raise on any mismatch.

    With `subset=True` (trainable-only checkpoints) the model may have keys the checkpoint lacks
    (the frozen backbone), but every checkpoint key must exist in the model with the same shape.
    """
    own = model.state_dict()
    unexpected = sorted(set(state_dict) - set(own))
    missing = [] if subset else sorted(set(own) - set(state_dict))
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} != model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:10]))
    if problems:
        raise CheckpointError("cannot load state: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=not subset)
