"""Markdown export: exact table rows and derivations for the seed net, options, Jupyter hook."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import symcx
from symcx.analysis import Analysis
from symcx.export import to_markdown
from symcx.zoo import MLP, MnistCNN


@pytest.fixture(scope="module")
def seed():
    return symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28))


def test_derivations_and_layer_rows(seed):
    md = to_markdown(seed)
    # 2*26*26*3*3*1*32 = 389,376 and 2*24*24*3*3*32*64 = 21,233,664 per sample
    assert "- `conv1` forward: `2 × t × 32 × 1 × 3 × 3 × 26 × 26` = `389,376*t`" in md
    assert "- `conv2` forward: `2 × t × 64 × 32 × 3 × 3 × 24 × 24` = `21,233,664*t`" in md
    # fc1: 2*9216*128 = 2,359,296; params 9216*128 + 128 = 1,179,776
    row = next(x for x in md.splitlines() if x.startswith("| `fc1` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["`fc1`", "Linear", "`t×128`", "`2,359,296*t`"]
    assert cells[6] == "`1,179,776`"


def test_totals_with_values_and_number_styles(seed):
    md = to_markdown(seed, at={"t": 64})
    assert "| Quantity | Formula | at t = 64 |" in md
    # 23,984,896 * 64 = 1,535,033,344
    assert "| Forward FLOPs | `23,984,896*t` | `1,535,033,344` |" in md
    assert "| Forward FLOPs | `2.40e7*t` |" in to_markdown(seed, numbers="scientific")
    assert "| Parameters | `1199882` |" in to_markdown(seed, numbers="plain")
    assert "Big-O: one step `O(t)`, training `O(N*n)`." in md


def test_memory_notes_and_title(seed):
    gaps = Analysis(seed.graph, seed.trace, Counter({("aten.fft_r2c", "fc1"): 2}))
    md = to_markdown(gaps, title="Homework 3")
    assert md.startswith("## Homework 3\n")
    assert "- Not counted (no cost rule): `aten.fft_r2c` in `fc1` (×2)." in md
    assert "| Peak (training step) |" in md


def test_compound_factors_are_parenthesized():
    conv = torch.nn.Conv2d(3, 8, 3)
    md = to_markdown(symcx.analyze(conv, torch.randn(1, 3, 16, 16), dims={"H": 2, "W": 3}))
    # 2 * t * 8 out channels * 3 in * 3 * 3 kernel * (H-2) * (W-2) output positions
    assert "`2 × t × 8 × 3 × 3 × 3 × (H - 2) × (W - 2)`" in md
    assert "`t×8×(H - 2)×(W - 2)`" in md


def test_symbolic_widths_and_jupyter_hook():
    a = symcx.analyze(MLP(), torch.randn(1, 784), widths="letters")
    md = to_markdown(a)
    assert "| Forward FLOPs | `2*i*j*t + 2*j*k*t + 2*k*l*t` |" in md
    assert a._repr_markdown_() == md == a.to_markdown()


def test_unknown_option(seed):
    with pytest.raises(TypeError, match="Unknown setting 'colour'"):
        to_markdown(seed, colour="red")
    with pytest.raises(ValueError, match="numbers must be one of"):
        to_markdown(seed, numbers="roman")
