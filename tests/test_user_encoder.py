"""UserEncoder: shapes, incremental == full recompute, batch == singles, state packing, pretraining."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch.testing import assert_close

from models.features import collate_events
from models.user_encoder import EncoderState, UserEncoder, UserEncoderConfig, past_from_tensor, past_to_tensor


def _history(n: int, seed: int) -> dict[str, list]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, 99, (n,), generator=g).tolist()
    cats = [
        torch.randint(2, 12, (int(k),), generator=g).tolist() for k in torch.randint(0, 4, (n,), generator=g)
    ]
    return {"item": items, "category": cats, "rating": torch.randint(2, 8, (n,), generator=g).tolist()}


def _slice(h: dict[str, list], start: int, stop: int) -> dict[str, list]:
    return {k: v[start:stop] for k, v in h.items()}


def _model(**overrides: object) -> UserEncoder:
    return UserEncoder(UserEncoderConfig.tiny(**overrides)).eval()


def _encode(model: UserEncoder, seqs: list[dict[str, list]], past: EncoderState | None = None):  # noqa: ANN202
    feats, mask = collate_events(seqs, max_len=64, max_categories=3)
    return model(feats, mask, past=past), mask


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_shapes(fusion: str) -> None:
    model = _model(fusion=fusion)
    out, mask = _encode(model, [_history(7, 1), _history(4, 2)])
    assert out.hidden.shape == (2, 7, 32)
    assert_close(out.hidden[1, 4:], torch.zeros(3, 32))  # padding outputs are zero
    assert len(out.past.keys) == 2 and out.past.keys[0].shape == (2, 4, 7, 8)
    assert out.past.n_events.tolist() == [7, 4]
    logits = model.next_event_logits(out.hidden)
    assert {k: v.shape[-1] for k, v in logits.items()} == {"item": 99, "category": 12, "rating": 8}


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_incremental_equals_full_recompute(positions: str) -> None:
    model = _model(positions=positions)
    h = _history(16, 3)  # fills the whole window (16)
    full, _ = _encode(model, [h])
    first, _ = _encode(model, [_slice(h, 0, 5)])
    second, _ = _encode(model, [_slice(h, 5, 6)], past=first.past)  # one new event
    third, _ = _encode(model, [_slice(h, 6, 16)], past=second.past)
    assert_close(
        torch.cat([first.hidden, second.hidden, third.hidden], dim=1), full.hidden, rtol=0, atol=1e-5
    )
    assert_close(third.past.hidden, full.hidden, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="window"):
        _encode(model, [_slice(h, 0, 1)], past=third.past)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_batched_incremental_with_ragged_users_equals_singles(positions: str) -> None:
    model = _model(positions=positions)
    hs = [_history(n, 10 + n) for n in (9, 3, 12)]
    splits = (4, 1, 7)
    first, _ = _encode(model, [_slice(h, 0, s) for h, s in zip(hs, splits, strict=True)])
    # Round trip each user's state through one tensor (what the service stores), then re-batch.
    states = [past_from_tensor(past_to_tensor(s), n_heads=4) for s in first.past.split()]
    rest = [_slice(h, s, len(h["item"])) for h, s in zip(hs, splits, strict=True)]
    second, _ = _encode(model, rest, past=EncoderState.stack(states))
    for b, (h, s) in enumerate(zip(hs, splits, strict=True)):
        single, _ = _encode(model, [h])
        assert_close(second.hidden[b, : len(h["item"]) - s], single.hidden[0, s:], rtol=0, atol=1e-5)
        (user,) = second.past.split()[b : b + 1]
        assert_close(user.hidden[0], single.hidden[0], rtol=0, atol=1e-5)
        assert int(user.n_events) == len(h["item"])


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_batch_equals_single_calls(positions: str) -> None:
    model = _model(positions=positions)
    hs = [_history(n, 20 + n) for n in (5, 11, 1)]
    batch, _ = _encode(model, hs)
    for b, h in enumerate(hs):
        single, _ = _encode(model, [h])
        assert_close(batch.hidden[b, : len(h["item"])], single.hidden[0], rtol=0, atol=1e-5)


def test_past_tensor_round_trip_is_exact() -> None:
    out, _ = _encode(_model(), [_history(6, 4)])
    packed = past_to_tensor(out.past)
    assert packed.shape == (2 * 2 + 1, 6, 32)
    back = past_from_tensor(packed, n_heads=4)
    for a, b in zip(out.past.keys + out.past.values, back.keys + back.values, strict=True):
        assert_close(a, b, rtol=0, atol=0)
    assert_close(back.hidden, out.past.hidden, rtol=0, atol=0)
    with pytest.raises(ValueError):
        past_to_tensor(_encode(_model(), [_history(2, 1), _history(3, 2)])[0].past)


def _synthetic_batch(b: int = 16, t: int = 12) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each user walks items with a fixed step; category and rating are functions of the item."""
    start, step = torch.randint(2, 90, (b, 1)), torch.randint(1, 3, (b, 1))
    items = 2 + (start + step * torch.arange(t)) % 97  # (B, T)
    feats = {"item": items, "category": (2 + items % 10).unsqueeze(-1), "rating": 2 + items % 6}
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[: b // 2, t - 3 :] = False  # some padding
    for v in feats.values():
        v[~mask] = 0
    return feats, mask


def test_pretraining_loss_decreases() -> None:
    model = UserEncoder(UserEncoderConfig.tiny()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    feats, mask = _synthetic_batch()
    with torch.no_grad():
        initial = float(model.pretrain_loss(feats, mask))
    for _ in range(40):
        loss = model.pretrain_loss(feats, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = loss.item()
    assert final < 0.5 * initial, (initial, final)
    assert set(model.pretrain_losses(feats, mask)) == {"item", "category", "rating"}


def test_multi_valued_soft_label_loss() -> None:
    model = _model()
    feats, mask = collate_events([_history(6, 5)], max_categories=3)
    losses = model.pretrain_losses(feats, mask)
    hidden = model(feats, mask).hidden
    logp = model.next_event_logits(hidden)["category"].log_softmax(-1)[0, :-1]  # (T - 1, V)
    expected, n = torch.zeros(()), 0
    for t in range(5):
        ids = sorted({int(c) for c in feats["category"][0, t + 1] if c != 0})
        if ids:
            expected, n = expected - logp[t, ids].mean(), n + 1
    assert_close(losses["category"], expected / max(n, 1))


def test_pretrain_losses_equal_a_per_position_reference_on_padded_batches() -> None:
    """The heads run on the predicted events only; the losses equal the mean over every (user, t) whose
    event t and t + 1 are real, computed position by position from the full hidden states."""
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig.tiny()).eval()
    feats, mask = _synthetic_batch()
    losses = model.pretrain_losses(feats, mask)
    hidden = model(feats, mask).hidden  # (B, T, D)
    for name in ("item", "rating"):
        logp = model.next_event_logits(hidden)[name].log_softmax(-1)  # (B, T, V)
        terms = [
            -logp[b, t, feats[name][b, t + 1]]
            for b in range(mask.shape[0])
            for t in range(mask.shape[1] - 1)
            if mask[b, t] and mask[b, t + 1]
        ]
        assert_close(losses[name], torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def test_config_invariants() -> None:
    with pytest.raises(ValueError):
        UserEncoderConfig.tiny(n_heads=5)
    with pytest.raises(ValueError):
        UserEncoderConfig.tiny(window=0)
    with pytest.raises(ValueError):
        UserEncoderConfig.tiny(dropout=1.0)
    with pytest.raises(ValueError):
        UserEncoderConfig.tiny(fusion="middle")
    config = UserEncoderConfig()
    assert (config.n_layers, config.d_model, config.n_heads, config.window, config.dropout) == (
        6,
        128,
        4,
        50,
        0.1,
    )
    assert UserEncoderConfig(**asdict(config)) == config


def test_rotary_attention_depends_on_relative_positions_only() -> None:
    """Shifting every position by the same offset leaves rotary attention scores unchanged."""
    from models.rotary import apply_rotary, rotary_cos_sin

    def rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return apply_rotary(x, *rotary_cos_sin(pos, x.shape[-1], x.dtype))

    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    pos = torch.arange(5).repeat(2, 1)
    scores = rotate(q, pos) @ rotate(k, pos).transpose(-1, -2)
    shifted = rotate(q, pos + 37) @ rotate(k, pos + 37).transpose(-1, -2)
    assert_close(shifted, scores, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(rotate(q, pos + 1), q)
    model = _model(positions="rotary")
    assert model.pos_emb is None and not any("pos_emb" in k for k in model.state_dict())


def test_tied_item_head_scores_through_the_input_embeddings() -> None:
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig.tiny(tie_item_head=True, init_std=0.02)).eval()
    head, table = model.heads["item"], model.embed.embeddings["item"].embed
    hidden = torch.randn(3, 5, model.config.d_model)
    expected = (hidden @ head.proj.weight.T) @ table.weight.T + head.bias  # (3, 5, V)
    assert_close(model.next_event_logits(hidden)["item"], expected)
    assert_close(torch.nn.functional.linear(hidden, head.weight, head.bias), expected, rtol=1e-5, atol=1e-6)
    # the table is saved once, under the event embedding; a strict reload restores the same scores
    assert not any(k.startswith("heads.item.table") for k in model.state_dict())
    again = UserEncoder(model.config).eval()
    again.load_state_dict(model.state_dict(), strict=True)
    assert_close(again.next_event_logits(hidden)["item"], expected)
    # training the input embedding moves the output scores
    before = model.next_event_logits(hidden)["item"].detach().clone()
    with torch.no_grad():
        table.weight.add_(0.1)
    assert not torch.allclose(model.next_event_logits(hidden)["item"], before)


def test_orthogonal_tied_head_starts_at_the_plain_dot_products_scale() -> None:
    """tied_head_init='orthogonal': the projection keeps the state's norm (semi-orthogonal rows), so the
    scores start as large as SASRec's <h, e_i>; with init_std alone the product of two N(0, 0.02)
    matrices starts them about sqrt(D) * 0.02 times smaller (the slow start it avoids)."""
    torch.manual_seed(0)
    config = UserEncoderConfig.tiny(tie_item_head=True, init_std=0.02, tied_head_init="orthogonal")
    model = UserEncoder(config)
    proj = model.heads["item"].proj.weight.detach()  # (item_dim, D), item_dim <= D
    assert_close(proj @ proj.T, torch.eye(proj.shape[0]), rtol=1e-5, atol=1e-5)
    hidden = torch.randn(64, config.d_model)
    table = model.embed.embeddings["item"].embed.weight.detach()
    plain = (hidden[:, : proj.shape[0]] @ table.T).std()  # SASRec's scale at equal widths
    assert 0.5 < float(model.next_event_logits(hidden)["item"].detach().std() / plain) < 2.0
    torch.manual_seed(0)
    small = UserEncoder(UserEncoderConfig.tiny(tie_item_head=True, init_std=0.02))
    assert float(small.next_event_logits(hidden)["item"].detach().std() / plain) < 0.3
    with pytest.raises(ValueError, match="tie_item_head"):
        UserEncoderConfig.tiny(tied_head_init="orthogonal")
    with pytest.raises(ValueError, match="tied_head_init"):
        UserEncoderConfig.tiny(tie_item_head=True, tied_head_init="xavier")  # type: ignore[arg-type]


def test_orthogonal_fusion_starts_event_vectors_at_sasrecs_scale() -> None:
    """fusion_init='orthogonal': the early-fusion projection is semi-orthogonal times sqrt(D), so an event
    vector is about sqrt(D) times its feature embeddings per dimension (SASRec's e_i * sqrt(D)); with
    init_std alone it is a product of two N(0, 0.02) matrices, far smaller."""
    torch.manual_seed(0)
    config = UserEncoderConfig.tiny(init_std=0.02, fusion_init="orthogonal")
    model = UserEncoder(config)
    proj = model.embed.proj.weight.detach()  # (D, E) with D <= E here
    assert_close(proj @ proj.T, config.d_model * torch.eye(config.d_model), rtol=1e-4, atol=1e-4)
    features, _ = _synthetic_batch(b=8, t=6)
    concat_std = float(model.embed.embeddings["item"].embed.weight[2:].detach().std())
    ratio = float(model.embed(features).detach().std()) / concat_std
    assert 0.5 * config.d_model**0.5 < ratio < 2.0 * config.d_model**0.5
    torch.manual_seed(0)
    small = UserEncoder(UserEncoderConfig.tiny(init_std=0.02))
    assert float(small.embed(features).detach().std()) / concat_std < 0.5
    with pytest.raises(ValueError, match="fusion='early'"):
        UserEncoderConfig.tiny(fusion="late", fusion_init="orthogonal")
    with pytest.raises(ValueError, match="fusion_init"):
        UserEncoderConfig.tiny(fusion_init="xavier")  # type: ignore[arg-type]


def test_init_std_draws_small_weights_and_keeps_padding_rows_zero() -> None:
    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig.tiny(init_std=0.02))
    table = model.embed.embeddings["item"].embed.weight
    assert 0.015 < float(table[1:].detach().std()) < 0.025 and float(table[0].detach().abs().max()) == 0.0
    assert float(model.blocks[0].attn.q_proj.bias.detach().abs().max()) == 0.0
    default = UserEncoder(UserEncoderConfig.tiny())  # PyTorch's init: N(0, 1) embeddings
    assert float(default.embed.embeddings["item"].embed.weight[1:].detach().std()) > 0.5
    with pytest.raises(ValueError, match="init_std"):
        UserEncoderConfig.tiny(init_std=-1.0)


def test_seen_bias_adds_a_learned_score_to_the_items_each_prediction_has_read() -> None:
    """The item loss with the seen bias equals a per-position reference whose logits get b at every item
    among events <= t (padding never), the last-event scorer adds b at the whole history, b starts at 0
    and the item loss trains it."""
    from models.seen_bias import prefix_histories

    torch.manual_seed(0)
    model = UserEncoder(UserEncoderConfig.tiny(seen_bias=True)).eval()
    feats, mask = _synthetic_batch()
    plain = UserEncoder(UserEncoderConfig.tiny()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("seen_bias")})
    assert_close(model.pretrain_losses(feats, mask)["item"], plain.pretrain_losses(feats, mask)["item"])
    with torch.no_grad():
        model.seen_bias.raw.fill_(-0.1)
    b = float(model.seen_bias.bias.detach())
    assert b == pytest.approx(-5.0)
    hidden = model(feats, mask).hidden  # (B, T, D)
    logits = model.next_event_logits(hidden)["item"]  # (B, T, V), no bias
    terms = []
    for u in range(mask.shape[0]):
        for t in range(mask.shape[1] - 1):
            if mask[u, t] and mask[u, t + 1]:
                row = logits[u, t].clone()
                row[sorted({int(i) for i in feats["item"][u, : t + 1]})] += b
                terms.append(-row.log_softmax(-1)[feats["item"][u, t + 1]])
    assert_close(model.pretrain_losses(feats, mask)["item"], torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)
    last = mask.sum(dim=1) - 1
    seen = torch.zeros(mask.shape[0], logits.shape[-1])  # (B, V): 1 at every item of the history
    for u in range(mask.shape[0]):
        seen[u, [int(i) for i in feats["item"][u][mask[u]]]] = 1.0
    expected = logits[torch.arange(mask.shape[0]), last] + b * seen
    assert_close(model.last_item_logits(feats, mask), expected)
    # a prefix row holds the items at positions <= t and zeros after
    items = torch.tensor([[5, 6, 7, 0]])
    rows = prefix_histories(items, torch.tensor([[True, True, False]]))
    assert rows.tolist() == [[5, 0, 0, 0], [5, 6, 0, 0]]
    # the item loss has a gradient on b
    model.train()
    model.pretrain_loss(feats, mask).backward()
    assert model.seen_bias.raw.grad is not None and float(model.seen_bias.raw.grad.abs()) > 0
    with pytest.raises(ValueError, match="seen_bias"):
        UserEncoderConfig.tiny(seen_bias=True, features=({"name": "rating", "vocab_size": 8, "dim": 8},))


def test_seen_bias_counts_a_repeated_item_once() -> None:
    """b lands once on an item the history holds twice, never on padding, and its gradient counts each
    distinct seen item once; the logits' own gradient passes through unchanged."""
    from models.seen_bias import STEP_SCALE, SeenItemBias

    bias = SeenItemBias()
    with torch.no_grad():
        bias.raw.fill_(-0.1)
    logits = torch.zeros(2, 6, requires_grad=True)
    out = bias(logits, torch.tensor([[3, 5, 3, 0], [0, 0, 0, 0]]))
    assert out.tolist() == [[0.0, 0.0, 0.0, -5.0, 0.0, -5.0], [0.0] * 6]
    out.sum().backward()
    assert float(bias.raw.grad) == pytest.approx(2 * STEP_SCALE)
    assert logits.grad is not None and logits.grad.tolist() == [[1.0] * 6, [1.0] * 6]
