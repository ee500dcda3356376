"""Convolution rules against FlopCounterMode: on the real layer when ``groups == 1``, and on
the same convolution run as one convolution per group (channel slices, ``torch.cat``) when
``groups > 1``, where FlopCounterMode's grad-weight count of the grouped kernel is ``groups``
times too large (torch 2.13; symcx records that figure in ``fcm_flops``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import symcx
from symcx import symbol
from symcx.rules.conv import GROUPED_NOTE

from .conftest import evaluate, fcm_counts, needs_grad, run_step

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def per_group(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` as ``groups`` ungrouped convolutions on channel slices, concatenated."""
    g, dims = layer.groups, len(layer.kernel_size)
    c_in, w = x.shape[1] // g, layer.weight
    rows = w.shape[0] // g  # weight rows per group: C_out/g (conv) or C_in/g (transposed)
    outs = []
    for k in range(g):
        xs, ws = x[:, k * c_in:(k + 1) * c_in], w[k * rows:(k + 1) * rows]
        if layer.transposed:
            bias = None if layer.bias is None else layer.bias[k * ws.shape[1]:(k + 1) * ws.shape[1]]
            args = (layer.stride, layer.padding, layer.output_padding, 1, layer.dilation)
            outs.append(CONV_T[dims](xs, ws, bias, *args))
        else:
            bias = None if layer.bias is None else layer.bias[k * rows:(k + 1) * rows]
            outs.append(CONV[dims](xs, ws, bias, layer.stride, layer.padding, layer.dilation, 1))
    return torch.cat(outs, 1)


@st.composite
def conv_configs(draw):
    dims = draw(st.integers(1, 3))
    transposed = draw(st.booleans())
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    c_out = c_in if depthwise else groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    kw = dict(kernel_size=kernel, dilation=dilation, groups=groups, bias=draw(st.booleans()))
    if not transposed and draw(st.booleans()):
        kw["padding"] = draw(st.sampled_from(["same", "valid"]))
        stride = (1,) * dims
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        kw["padding"] = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    kw["stride"] = stride
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if transposed:
        kw["output_padding"] = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
        spatial = tuple(draw(st.integers(1, 4)) for _ in range(dims))
        cls = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][dims - 1]
    else:
        pad = kw["padding"] if isinstance(kw["padding"], tuple) else (0,) * dims
        spatial = tuple(draw(st.integers(max(1, r - 2 * p), max(1, r - 2 * p) + 3)) for r, p in zip(reach, pad))
        cls = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1]
    batch = draw(st.integers(1, 3))
    return cls, c_in, c_out, kw, (batch, c_in, *spatial), draw(st.booleans())


def _valid(layer, shape) -> bool:
    try:
        with torch.no_grad():
            return layer(torch.zeros(shape)).numel() > 0
    except RuntimeError:  # the drawn sizes give an empty output
        return False


@pytest.mark.slow
@settings(max_examples=250, deadline=None)
@given(conv_configs())
def test_conv_rules_match_oracle(case):
    cls, c_in, c_out, kw, shape, input_grad = case
    layer = cls(c_in, c_out, **kw)
    assume(_valid(layer, shape))
    x = needs_grad(torch.randn(shape), input_grad)
    step = run_step(layer, x)
    oracle = fcm_counts(lambda x: per_group(layer, x), x)
    assert (step.flops("forward"), step.flops("backward")) == oracle
    # symcx's account of FlopCounterMode is FlopCounterMode's own count on the grouped layer
    assert (step.fcm_view("forward"), step.fcm_view("backward")) == (step.fcm_forward, step.fcm_backward)
    if layer.groups > 1:
        assert step.fcm_backward > oracle[1]  # FlopCounterMode overcounts the grouped grad-weight
        assert any(c.note == GROUPED_NOTE for _, c in step.costs("backward"))
    else:
        assert (step.fcm_forward, step.fcm_backward) == oracle


def test_depthwise_grad_weight_by_hand():
    # depthwise Conv2d(24, 24, 3, groups=24) on (2, 24, 10, 10), input needing no gradient:
    # forward 2·2·24·1·3·3·8·8 = 55,296; backward grad-weight only, the same product: 55,296;
    # FlopCounterMode counts it 24 times: 1,327,104
    layer = nn.Conv2d(24, 24, 3, groups=24)
    step = run_step(layer, torch.randn(2, 24, 10, 10))
    assert (step.flops("forward"), step.flops("backward")) == (55_296, 55_296)
    assert (step.fcm_forward, step.fcm_backward) == (55_296, 1_327_104)


# --- end to end: symcx.analyze ------------------------------------------------------------------


E2E = [
    (nn.Conv2d, dict(in_channels=3, out_channels=8, kernel_size=3), (3, 10, 10), {}),
    (nn.Conv2d, dict(in_channels=4, out_channels=8, kernel_size=3, stride=2, padding=1, groups=2), (4, 9, 9), {}),
    (nn.Conv2d, dict(in_channels=6, out_channels=6, kernel_size=5, padding="same", groups=6), (6, 8, 8), {}),
    (nn.Conv2d, dict(in_channels=3, out_channels=4, kernel_size=3, dilation=2, bias=False), (3, 11, 11), {}),
    (nn.Conv1d, dict(in_channels=2, out_channels=6, kernel_size=4, stride=3), (2, 20), {}),
    (nn.Conv3d, dict(in_channels=2, out_channels=4, kernel_size=2, padding=1, groups=2), (2, 4, 4, 4), {}),
    (nn.ConvTranspose2d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, output_padding=1,
                              groups=2), (4, 5, 5), {}),
    (nn.ConvTranspose1d, dict(in_channels=3, out_channels=2, kernel_size=4, stride=2, padding=1), (3, 7), {}),
    (nn.Conv2d, dict(in_channels=3, out_channels=8, kernel_size=3, stride=2), (3, 12, 14), {"H": 2, "W": 3}),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4), (4, 9, 9), {"H": 2}),
    (nn.ConvTranspose2d, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2), (2, 6, 6), {"H": 2, "W": 3}),
]


class Stem(nn.Module):
    """A 1×1 conv in front (so the layer's input needs a gradient), then the layer."""

    def __init__(self, cls, kw):
        super().__init__()
        conv = {nn.Conv1d: nn.Conv1d, nn.ConvTranspose1d: nn.Conv1d, nn.Conv3d: nn.Conv3d}.get(cls, nn.Conv2d)
        c = kw["in_channels"]
        self.front = conv(c, c, 1)
        self.layer = cls(**kw)

    def forward(self, x):
        return self.layer(self.front(x))


@pytest.mark.parametrize("cls,kw,shape,dims", E2E)
def test_analyze_matches_oracle(cls, kw, shape, dims):
    model = Stem(cls, kw)
    a = symcx.analyze(model, torch.randn(2, *shape), dims=dims)
    assert not a.unsupported
    assert set(a.symbols) == {"t", *dims}
    for batch, grow in ((3, 0), (5, 2)):
        size = list(shape)
        values = {"t": batch}
        for name, d in dims.items():
            size[d - 1] += grow
            values[name] = size[d - 1]
        x = torch.randn(batch, *size)
        front = fcm_counts(model.front, x)
        layer = fcm_counts(lambda y: per_group(model.layer, y), needs_grad(model.front(x), True))
        got = (evaluate(a.forward_flops, **values), evaluate(a.backward_flops, **values))
        assert got == (front[0] + layer[0], front[1] + layer[1])
        assert evaluate(a.flop_counter_flops("step"), **values) == sum(fcm_counts(model, x))


def test_seed_conv_formula_by_hand():
    # the seed's conv1: 2·26·26·3·3·1·32·t; with H, W symbolic: 2·(H−2)·(W−2)·3·3·1·32·t
    a = symcx.analyze(nn.Conv2d(1, 32, 3), torch.randn(2, 1, 28, 28), dims={"H": 2, "W": 3})
    t, H, W = symbol("t"), symbol("H"), symbol("W")
    assert (a.forward_flops - 2 * (H - 2) * (W - 2) * 9 * 32 * t).expand() == 0
    assert a.subs(t=1, H=28, W=28).forward_flops == 389_376
