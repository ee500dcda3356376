"""The interpolation route for models that pin a size during a symbolic trace."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symcx
from symcx import t

from .conftest import fcm_forward_backward


class PinsBatch(nn.Module):
    """``int(x.shape[0])`` turns the symbolic batch into a constant: the symbolic route fails."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 6)

    def forward(self, x):
        b = int(x.shape[0])
        return torch.relu(self.fc(x.reshape(b, -1))) + torch.ones(b, 6)


@pytest.fixture(scope="module")
def pinned():
    return symcx.analyze(PinsBatch(), torch.randn(3, 3, 4))


def test_route_and_reason_are_reported(pinned):
    assert pinned.route == "interpolated"
    assert "pins 't'" in pinned.fallback_reason
    for report in (pinned.to_markdown(), pinned.to_latex()):  # the reports say which route, and why
        assert "Interpolated: the symbolic trace failed" in report and "pins" in report
    assert "Traced once with symbolic sizes" in symcx.analyze(nn.Linear(3, 2), torch.randn(2, 3)).to_markdown()


def test_interpolated_formulas_are_exact(pinned):
    # by hand: forward 2·t·12·6; backward grad-weight only (input needs no grad) 2·6·t·12
    assert pinned.forward_flops == 2 * 12 * 6 * t
    assert pinned.backward_flops == 2 * 12 * 6 * t


@pytest.mark.parametrize("batch", [1, 7, 33])
def test_interpolated_matches_flop_counter_mode_off_the_grid(pinned, batch):
    fwd, bwd = fcm_forward_backward(PinsBatch(), torch.randn(batch, 3, 4))
    a = pinned.subs(t=batch)
    assert (a.forward_flops, a.backward_flops) == (fwd, bwd)


def test_symbolic_route_is_the_default():
    assert symcx.analyze(nn.Linear(3, 2), torch.randn(2, 3)).route == "symbolic"


class GRUAfterLinear(nn.Module):
    """A 2-layer bidirectional GRU: one cell per step, so the graph grows with L."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 16)
        self.rnn = nn.GRU(16, 32, batch_first=True, num_layers=2, bidirectional=True)

    def forward(self, x):
        return self.rnn(self.lin(x))[0]


@pytest.mark.slow
def test_graph_that_grows_with_length_is_fitted_per_layer_and_op():
    a = symcx.analyze(GRUAfterLinear(), torch.randn(3, 10, 8), dims={"L": 1})
    assert a.route == "interpolated" and a.unsupported == {}
    for batch, length in ((2, 5), (3, 17)):
        fwd, bwd = fcm_forward_backward(GRUAfterLinear(), torch.randn(batch, length, 8))
        at = a.subs(t=batch, L=length)
        assert (at.forward_flops, at.backward_flops) == (fwd, bwd)
    # its training peak moves between program points across the grid: no single formula
    with pytest.raises(symcx.SymcxError, match="no memory formula"):
        a.memory()
    assert a.activation_bytes != 0  # saved bytes per layer still fit
