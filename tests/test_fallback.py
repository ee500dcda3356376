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


class TanhScan(nn.Module):
    """A Python loop over time, as Mamba or RWKV run their scan: one step's ops per position."""

    def __init__(self):
        super().__init__()
        self.W = nn.Parameter(torch.randn(8, 8))
        self.U = nn.Parameter(torch.randn(4, 8))

    def forward(self, x):
        h = torch.zeros(x.shape[0], 8)
        for i in range(x.shape[1]):
            h = torch.tanh(h @ self.W + x[:, i] @ self.U)
        return h


class ScanAfterLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 4)
        self.mixer = TanhScan()

    def forward(self, x):
        return self.mixer(self.inp(x))


@pytest.fixture(scope="module")
def scan():
    return symcx.analyze(ScanAfterLinear(), torch.randn(3, 5, 6), dims={"L": 1})


@pytest.mark.slow
def test_python_scan_fits_as_length_times_one_step(scan):
    assert scan.route == "interpolated" and scan.unsupported == {}
    for batch, length in ((2, 7), (5, 16)):
        fwd, bwd = fcm_forward_backward(ScanAfterLinear(), torch.randn(batch, length, 6))
        at = scan.subs(t=batch, L=length)
        assert (at.forward_flops, at.backward_flops) == (fwd, bwd)
    L = symcx.symbols.symbol("L")
    # by hand, per position: h@W 2·t·8·8 + x_i@U 2·t·4·8 = 192·t; inp 2·t·L·6·4 = 48·t·L
    assert scan.forward_flops == 192 * t * L + 48 * t * L


@pytest.mark.slow
def test_python_scan_rows_are_per_module(scan):
    # the scan's functional ops (mm_0 … mm_2L) are one row, the module's, not one per call
    assert [row.name for row in scan.layers] == ["inp", "mixer", "loss"]


class StridedThenPinned(nn.Module):
    """A strided convolution, then ``int()`` of its output length: wav2vec2's feature encoder in small."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 10, stride=5)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0], 8, int(y.shape[-1])).relu()


def test_size_that_steps_with_a_stride_is_refused_not_dropped():
    # ⌊(L − 10)/5⌋ + 1 is 63 for every L of the grid 320…322 and the near check 324: a fit there
    # is constant in L (36 % low at L = 480); the far check must refuse it and name the node
    with pytest.raises(symcx.TraceError, match=r"fallback failed too: convolution \(in conv\) is not a polynomial"):
        symcx.analyze(StridedThenPinned(), torch.randn(2, 1, 320), dims={"L": 2})
