"""The EMA of trained weights (training/weight_average.py): its arithmetic, the swap in and out, and
its state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.weight_average import WeightAverage


def _model() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_each_update_moves_the_average_a_fraction_toward_the_weights() -> None:
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    ema = WeightAverage(list(model.parameters()), decay=0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(4.0)
    ema.update()
    for average, first in zip(ema.averages, start, strict=True):
        torch.testing.assert_close(average, first + 0.25 * 4.0)
    ema.update()  # the weights unchanged: a quarter of the remaining gap again
    for average, first in zip(ema.averages, start, strict=True):
        torch.testing.assert_close(average, first + (0.25 + 0.75 * 0.25) * 4.0)


def test_swapped_puts_the_averages_in_and_the_raw_weights_back() -> None:
    model = _model()
    ema = WeightAverage(list(model.parameters()), decay=0.5)
    with torch.no_grad():
        model.weight.mul_(3.0)
    ema.update()
    raw = model.weight.detach().clone()
    x = torch.randn(4, 3)
    with ema.swapped():
        torch.testing.assert_close(model.weight, ema.averages[0])
        averaged_out = model(x)
    torch.testing.assert_close(model.weight, raw, rtol=0, atol=0)
    assert not torch.allclose(averaged_out, model(x))


def test_the_raw_weights_come_back_when_the_block_raises() -> None:
    model = _model()
    ema = WeightAverage(list(model.parameters()), decay=0.5)
    with torch.no_grad():
        model.bias.add_(1.0)
    raw = model.bias.detach().clone()
    ema.update()
    with pytest.raises(RuntimeError), ema.swapped():
        raise RuntimeError("validation failed")
    torch.testing.assert_close(model.bias, raw, rtol=0, atol=0)


def test_state_round_trip_and_a_mismatched_state_is_refused() -> None:
    model = _model()
    ema = WeightAverage(list(model.parameters()), decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    other = WeightAverage(list(_model().parameters()), decay=0.9)
    other.load_state_dict(ema.state_dict())
    for a, b in zip(other.averages, ema.averages, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    wider = WeightAverage(list(nn.Linear(4, 2).parameters()), decay=0.9)
    with pytest.raises(ValueError, match="do not match"):
        wider.load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(list(model.parameters()), decay=1.0)
