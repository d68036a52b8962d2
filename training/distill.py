"""Knowledge distillation of the next-item head from the pretrained sequence model (optional).

The USER-LLM path (user tokens -> gated cross-attention -> LLM -> head) starts from freshly
initialised adapters and learns from one next-item label per prompt, while the pretrained user
encoder already ranks the catalogue from the same history (the sequence-only baseline). With
`FinetuneConfig.distill` = a > 0 the next-item loss becomes

    (1 - a) * CE(label, student) + a * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"), the teacher being a
frozen copy of the pretrained encoder's next-item head at the newest history event: a full
distribution over the catalogue per example instead of one label, so the LLM path learns what the
encoder knows from far fewer prompts, and the label term lets it go beyond. Training only: the
served model and its checkpoint are unchanged.

Shapes: B examples, T events, I items.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.features import collate_events
from models.user_encoder import UserEncoder
from training.corpus import Corpus, encoded, history_items
from training.data import Example

__all__ = ["EncoderTeacher", "distillation_loss"]


class EncoderTeacher:
    """A frozen copy of a user encoder; `logits(examples)` = its next-item logits at the newest event."""

    def __init__(self, encoder: UserEncoder, corpus: Corpus) -> None:
        self.encoder = copy.deepcopy(encoder).eval().requires_grad_(False)
        self.corpus = corpus
        self.window = encoder.config.window

    @torch.no_grad()
    def logits(self, examples: Sequence[Example], device: torch.device) -> Tensor:
        """(B, I) float32 next-item logits; pad / unknown at -inf."""
        seqs = [encoded(ex.history, self.corpus.vocabs, self.window) for ex in examples]
        features, mask = collate_events(seqs, max_len=self.window)
        seen = history_items([ex.history for ex in examples], self.corpus.vocabs["item"])
        logits = self.encoder.last_item_logits(features, mask, seen).float()  # (B, I)
        logits[:, :2] = -torch.inf
        return logits.to(device)


def distillation_loss(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch.

    Args:
        student: (B, I) logits (pad / unknown may be -inf or very negative).
        teacher: (B, I) logits, -inf where the student must put no mass.
    """
    t = temperature
    log_q = F.log_softmax(student.float().clamp(min=-1e4) / t, dim=-1)  # (B, I)
    p = F.softmax(teacher / t, dim=-1)  # (B, I); exactly 0 at -inf
    kl = (p * (p.clamp(min=1e-30).log() - log_q)).sum(dim=-1)  # (B,)
    return kl.mean() * t * t
