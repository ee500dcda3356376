"""Gathers, scatters, pads, patches and embedding bags: hand counts, and nothing unsupported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symcx
from symcx import t


def test_nearest_upsample_backward_accumulates_each_grad_once():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(scale_factor=2))
    a = symcx.analyze(model, torch.randn(2, 3, 8, 8))
    assert a.unsupported == {}
    up = next(r for r in a.layers if r.name == "1")
    # the gather is free (only the index vectors are computed: a constant); its backward adds each
    # of the t·4·16·16 grad values into the input grad
    assert up.forward_other_flops.free_symbols == set()
    assert up.backward_other_flops == 4 * 16 * 16 * t


def test_bilinear_upsample_is_supported_and_equals_flop_counter_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(scale_factor=2, mode="bilinear"))
    a = symcx.analyze(model, torch.randn(2, 3, 8, 8))
    assert a.unsupported == {}
    # FlopCounterMode counts the 1x1 conv only: 2·t·4·3·8·8 forward, grad-weight alike backward
    assert (a.forward_flops, a.backward_flops) == (2 * 4 * 3 * 64 * t, 2 * 4 * 3 * 64 * t)


def test_reflection_pad_is_free_and_its_backward_folds_the_border():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReflectionPad2d(1), nn.Conv2d(3, 4, 3))
    a = symcx.analyze(model, torch.randn(2, 3, 8, 8))
    assert a.unsupported == {}
    pad = next(r for r in a.layers if r.name == "1")
    assert pad.forward_other_flops == 0
    assert pad.backward_other_flops == 3 * 10 * 10 * t  # one add per padded grad element


def test_pixel_shuffle_and_unfold():
    a = symcx.analyze(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.PixelShuffle(2)), torch.randn(2, 3, 8, 8))
    assert a.unsupported == {}
    b = symcx.analyze(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Unfold(2)), torch.randn(2, 3, 8, 8))
    assert b.unsupported == {}
    unfold = next(r for r in b.layers if r.name == "1")
    # col2im in the backward sums the t·(4·2·2)·(7·7) column grads into the image grad
    assert unfold.backward_other_flops == 4 * 2 * 2 * 7 * 7 * t


@pytest.mark.parametrize("mode, divide", [("sum", 0), ("mean", 1), ("max", 0)])
def test_embedding_bag(mode, divide):
    a = symcx.analyze(nn.EmbeddingBag(50, 8, mode=mode), torch.randint(0, 50, (4, 6)))
    assert a.unsupported == {}
    # t bags of 6 rows of width 8 summed (or compared); mean divides the t·8 outputs once each;
    # and the default loss sums the t·8 outputs
    assert a.forward_other_flops == 6 * 8 * t + divide * 8 * t + 8 * t
    assert a.backward_other_flops == 6 * 8 * t
