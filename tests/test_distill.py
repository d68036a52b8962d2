"""Next-item distillation from the pretrained encoder (training/distill.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from training.config import ConfigError, FinetuneConfig, TrainConfig
from training.corpus import load_corpus, vocabs_from_dict
from training.distill import EncoderTeacher, distillation_loss
from training.evaluate import encoder_scorers, load_encoder
from training.pretrain import main as pretrain


def test_distillation_loss_is_the_kl_divergence() -> None:
    teacher = torch.tensor([[-torch.inf, -torch.inf, 2.0, 0.0, -1.0]])
    assert float(distillation_loss(teacher.clone(), teacher)) == pytest.approx(0.0, abs=1e-6)
    student = torch.tensor([[-1e4, -1e4, 0.0, 0.0, 0.0]])  # uniform over the 3 real items
    p = torch.softmax(torch.tensor([2.0, 0.0, -1.0]), dim=0)
    expected = float((p * (p.log() + math.log(3))).sum())
    assert float(distillation_loss(student, teacher)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(student, teacher, temperature=2.0)) > 0
    with pytest.raises(ConfigError):
        FinetuneConfig(distill=1.5)


def test_teacher_is_a_frozen_copy_of_the_sequence_only_scorer(tmp_path: Path) -> None:
    cfg = TrainConfig.tiny(out_dir=str(tmp_path / "enc"), run_dir=str(tmp_path / "run"), steps=2)
    pretrain(cfg)
    encoder, vocab, _ = load_encoder(cfg.out_dir)
    corpus = load_corpus(cfg.dataset, max_users=12, vocabs=vocabs_from_dict(vocab))
    examples = corpus.examples("test")[:4]
    teacher = EncoderTeacher(encoder, corpus)
    baseline, _ = encoder_scorers(encoder, corpus)
    expected = baseline(examples).float()
    got = teacher.logits(examples, torch.device("cpu"))
    assert_close(got[:, 2:], expected[:, 2:])
    assert bool(torch.isinf(got[:, :2]).all())
    with torch.no_grad():  # training the student's encoder leaves the teacher as it was
        next(encoder.parameters()).add_(1.0)
    assert_close(teacher.logits(examples, torch.device("cpu")), got)
    assert not any(p.requires_grad for p in teacher.encoder.parameters())
