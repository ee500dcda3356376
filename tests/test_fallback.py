"""The interpolation route for models that pin a size during a symbolic trace."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx import t

from .conftest import fcm_forward_backward

L, H, W = (symcx.symbols.symbol(n) for n in "LHW")


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


@pytest.fixture(scope="module")
def strided():
    return symcx.analyze(StridedThenPinned(), torch.randn(2, 1, 320), dims={"L": 2})


def test_size_that_steps_with_a_stride_is_fitted_as_its_floor(strided):
    # ⌊(L − 10)/5⌋ + 1 is 63 for every L of the grid 320…322 and the near check 324, so a plain
    # fit is constant in L (36 % low at L = 480); the floor is fitted instead. By hand, with
    # F = ⌊(L − 10)/5⌋ + 1 = ⌊L/5⌋ − 1 frames: forward 2·t·8·10·F, backward grad-weight only, the same
    frames = sympy.floor(L / 5) - 1
    assert strided.route == "interpolated"
    assert sympy.expand(strided.forward_flops - 160 * t * frames) == 0
    assert sympy.expand(strided.backward_flops - 160 * t * frames) == 0


# L on different plateaus of ⌊(L − 10)/5⌋: 320 and 324 share one, 325 starts the next, 480 and
# 1003 are far from the grid, 10 and 14 are the smallest inputs (one frame)
@pytest.mark.parametrize(("batch", "length"), [(2, 320), (3, 324), (2, 325), (5, 480), (4, 1003), (1, 10), (2, 14)])
def test_strided_floor_matches_flop_counter_mode_on_every_plateau(strided, batch, length):
    at = strided.subs(t=batch, L=length)
    expected = fcm_forward_backward(StridedThenPinned(), torch.randn(batch, 1, length))
    assert (int(at.forward_flops), int(at.backward_flops)) == expected


class StridedStackThenAttention(nn.Module):
    """wav2vec2's shape in small: two strided convolutions (5, then 2), the frame count pinned by
    ``int()``, then a projection and attention over the frames (quadratic in them)."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv1d(1, 4, 10, stride=5)
        self.c1 = nn.Conv1d(4, 6, 3, stride=2)
        self.proj = nn.Linear(6, 8)

    def forward(self, x):
        h = self.c1(torch.nn.functional.gelu(self.c0(x[:, None])))
        n = int(h.shape[-1])
        h = self.proj(h.transpose(1, 2).reshape(-1, n, 6))
        return (h @ h.transpose(1, 2)).softmax(-1) @ h


@pytest.mark.slow
def test_two_strides_and_a_quadratic_in_the_frames():
    a = symcx.analyze(StridedStackThenAttention(), torch.randn(2, 400), dims={"L": 1})
    assert a.route == "interpolated" and "pins 'L'" in a.fallback_reason
    # the frames after both convs step with 5·2 = 10 (⌊(⌊(L − 10)/5⌋ − 2)/2⌋ + 1 = ⌊L/10⌋ − 1)
    assert a.forward_flops.has(sympy.floor(L / 10)) and a.forward_flops.has(sympy.floor(L / 5))
    for batch, length in ((2, 400), (3, 409), (2, 415), (5, 480), (1, 999), (2, 37)):
        at = a.subs(t=batch, L=length)
        expected = fcm_forward_backward(StridedStackThenAttention(), torch.randn(batch, length))
        assert (int(at.forward_flops), int(at.backward_flops)) == expected


class StridedImage(nn.Module):
    """A padded stride-2 convolution, a 3×3/2 max pool, a 3×3 convolution; the batch pinned."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2)
        self.c1 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        b = int(x.shape[0])
        return self.c1(self.pool(self.c0(x))).reshape(b, -1)


@pytest.mark.slow
def test_strided_image_height_and_width():
    a = symcx.analyze(StridedImage(), torch.randn(2, 3, 32, 24), dims={"H": 2, "W": 3})
    assert a.route == "interpolated"
    # c0's output is ⌈H/2⌉ × ⌈W/2⌉ (padding 1, stride 2)
    assert a.forward_flops.has(sympy.ceiling(H / 2)) and a.forward_flops.has(sympy.ceiling(W / 2))
    for batch, height, width in ((2, 32, 24), (3, 37, 29), (1, 64, 41), (2, 33, 24)):
        at = a.subs(t=batch, H=height, W=width)
        expected = fcm_forward_backward(StridedImage(), torch.randn(batch, 3, height, width))
        assert (int(at.forward_flops), int(at.backward_flops)) == expected


class ThirdOfTheFrames(nn.Module):
    """A stride-2 convolution, then the first ⌊n/3⌋ frames: a floor of 3, which no op's stride shows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, stride=2)
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = self.conv(x)
        n = int(h.shape[-1])
        return self.fc(h[:, :, : n // 3].transpose(1, 2))


@pytest.mark.slow
def test_size_no_stride_explains_is_refused_and_named():
    with pytest.raises(symcx.TraceError, match=r"fallback failed too: slice_1 is not a polynomial "
                       r".* nor in the floors of the model's strides"):
        symcx.analyze(ThirdOfTheFrames(), torch.randn(2, 1, 101), dims={"L": 2})


class StridedWithPositions(nn.Module):
    """A stride-5 convolution, then the first n rows of a table of 70 frame positions added: the
    model runs only up to L = 359 (⌊L/5⌋ − 1 ≤ 70), so no far check point (961, 641) runs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 10, stride=5)
        self.pos = nn.Embedding(70, 4)

    def forward(self, x):
        h = self.conv(x).transpose(1, 2)
        n = int(h.shape[1])
        return h + self.pos.weight[:n]


@pytest.mark.slow
def test_without_a_far_check_the_strides_are_fitted_not_trusted():
    a = symcx.analyze(StridedWithPositions(), torch.randn(2, 1, 320), dims={"L": 2})
    assert a.route == "interpolated"
    assert a.forward_flops.has(sympy.floor(L / 5))  # five consecutive sizes alone would give a constant
    for batch, length in ((2, 320), (3, 324), (2, 325), (4, 301), (1, 359)):
        at = a.subs(t=batch, L=length)
        expected = fcm_forward_backward(StridedWithPositions(), torch.randn(batch, 1, length))
        assert (int(at.forward_flops), int(at.backward_flops)) == expected
