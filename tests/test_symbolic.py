"""Symbolic input dims and symbolic widths."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx import symbol, t
from symcx.zoo import MLP

from .conftest import fcm_forward_backward


class SeedConvsPooled(nn.Module):
    """The seed's two convs, then AdaptiveAvgPool2d and a Linear: valid for any H, W ≥ 5."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture(scope="module")
def pooled():
    return symcx.analyze(SeedConvsPooled(), torch.randn(2, 1, 28, 30), dims={"H": 2, "W": 3})


def test_conv1_output_is_h_minus_2(pooled):
    H, W = symbol("H"), symbol("W")
    conv1 = next(r for r in pooled.layers if r.name == "conv1")
    assert conv1.out_shape == (t, 32, H - 2, W - 2)
    assert conv1.forward_flops == 2 * 3 * 3 * 1 * 32 * t * (H - 2) * (W - 2)


@pytest.mark.parametrize("hw", [(28, 28), (40, 33)])
def test_symbolic_image_size_matches_flop_counter_mode(pooled, hw):
    h, w = hw
    fwd, bwd = fcm_forward_backward(SeedConvsPooled(), torch.randn(3, 1, h, w))
    a = pooled.subs(t=3, H=h, W=w)
    assert (a.forward_flops, a.backward_flops) == (fwd, bwd)


def test_symbolic_dims_give_bounds_not_noise(pooled):
    H, W = symbol("H"), symbol("W")
    # two unpadded 3x3 convs need at least 5 pixels: 5 - 2 - 2 = 1
    assert set(pooled.assumptions) == {sympy.Ge(H, 5), sympy.Ge(W, 5)}


def test_mlp_widths_give_the_textbook_sum():
    a = symcx.analyze(MLP(), torch.randn(2, 784), widths="letters")
    i, j, k, l = (symbol(s) for s in "ijkl")
    assert a.forward_flops == sympy.expand(2 * t * (i * j + j * k + k * l))
    assert sympy.expand(a.params) == sympy.expand(i * j + j + j * k + k + k * l + l)
    assert str(a.big_o("step")) == "O(i*j*t + j*k*t + k*l*t)"
    # the first layer's input needs no gradient: 1x forward for it, 2x for the rest
    assert sympy.expand(a.backward_flops) == sympy.expand(2 * t * (i * j + 2 * j * k + 2 * k * l))
    # evaluated at the real widths it is the real count
    fwd, _ = fcm_forward_backward(MLP(), torch.randn(5, 784))
    assert a.subs(t=5, i=784, j=512, k=256, l=10).forward_flops == fwd


def test_default_width_names_are_indexed():
    a = symcx.analyze(MLP((6, 5, 4)), torch.randn(2, 6), widths=True)
    d0, d1, d2 = (symbol(f"d_{k}") for k in range(3))
    assert a.forward_flops == sympy.expand(2 * t * (d0 * d1 + d1 * d2))


def test_sequence_length_symbol():
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    a = symcx.analyze(model, torch.randn(2, 12, 16), dims={"L": 1})
    L = symbol("L")
    assert a.forward_flops == 2 * (16 * 32 + 32 * 16) * t * L
