"""Markdown export: exact table rows and derivations for the seed net, options, Jupyter hook."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import symcx
from symcx.export import build_report, to_markdown
from symcx.export.markdown import MarkdownPrinter
from symcx.export.report import UncountedNote
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
    assert cells[:4] == ["`fc1`", "Linear", "`t×9,216`", "`t×128`"]
    assert cells[5:9] == ["`1,179,776`", "98.3%", "yes", "`2,359,296*t`"]  # 1,179,776 / 1,199,882 = 98.3%


def test_totals_with_values_and_number_styles(seed):
    md = to_markdown(seed, at={"t": 64})
    assert "| Quantity | Formula | at t = 64 |" in md
    # 23,984,896 * 64 = 1,535,033,344
    assert "| Forward FLOPs | `23,984,896*t` | `1,535,033,344` |" in md
    assert "| Forward FLOPs | `2.40e7*t` |" in to_markdown(seed, numbers="scientific")
    assert "| Parameters | `1199882` |" in to_markdown(seed, numbers="plain")
    assert "Big-O: one step `O(t)`, training `O(N*n)`." in md


def test_backward_derivations(seed):
    md = to_markdown(seed)
    # grad input t×10 @ 10×128 and grad weight 10×t @ t×128: 2*128*10 each = 5,120 per sample
    assert "- `fc2` backward: grad input `2 × t × 10 × 128` + grad weight `2 × 10 × t × 128` = `5,120*t`" in md
    # grad weight only: the image needs no gradient
    assert "- `conv1` backward: grad weight `2 × 1 × 32 × t × 26 × 26 × 3 × 3` = `389,376*t`" in md


def test_memory_notes_and_title(seed):
    md = to_markdown(seed, title="Homework 3", epochs=1, samples=60000)
    assert md.startswith("## Homework 3\n")
    # float32: 4 bytes per parameter, 4 * 28 * 28 per input sample
    assert "| Parameters | `4,799,528` |" in md and "| Input batch | `3,136*t` |" in md
    assert "Memory of one training step, bytes (optimizer: sgd):" in md
    notes = md[md.index("Notes:"):].splitlines()[2:]
    assert notes[0].startswith("- Traced once with symbolic sizes")
    assert notes[1] == ("- FLOPs follow FlopCounterMode (one multiply-add is 2 FLOPs; matmul, convolution, attention); "
                        "other FLOPs are elementwise ops, norms, pooling, softmax and reductions.")
    assert notes[2] == ("- Training: epochs `1`, samples `60,000`, `ceiling(60,000/t)` steps per epoch "
                        "(the last, partial batch counted as a full one).")


def test_uncounted_ops_and_missing_memory_are_shown(seed):
    report = build_report(seed)
    gaps = dataclasses.replace(report, memory=None, notes=report.notes + (UncountedNote("aten.fft_r2c", "fc1", 2),))
    md = MarkdownPrinter().doprint(gaps)
    assert md.endswith("- Not counted (no cost rule): `aten.fft_r2c` in `fc1` (×2).\n")
    assert "Peak" not in md and "| Forward FLOPs | `23,984,896*t` |" in md


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
    # i*j + j + j*k + k + k*l + l parameters: weights and biases
    assert "| Parameters | `i*j + j*k + j + k*l + k + l` |" in md
    assert a._repr_markdown_() == md == a.to_markdown()


def test_unknown_option(seed):
    with pytest.raises(TypeError, match="Unknown setting 'colour'"):
        to_markdown(seed, colour="red")
    with pytest.raises(ValueError, match="numbers must be one of"):
        to_markdown(seed, numbers="roman")


def test_layer_table_columns_shares_and_human_units(seed):
    md = to_markdown(seed, units="human", timeline="memory.png")
    assert ("| Layer | Type | Input | Output | Kernel | Params | % params | Trainable | Forward FLOPs | "
            "Backward FLOPs | % FLOPs | Other FLOPs | Saved bytes | Weights + biases |") in md
    row = next(x for x in md.splitlines() if x.startswith("| `conv2` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # weights 64×32×3×3 and 64 biases: 18,496 parameters -> 18.5K, 1.5% of 1,199,882;
    # 21,233,664 -> 21.2M forward, twice that backward; 3 * 21,233,664 of the step's 71,565,312: 89.0%
    assert cells[4].startswith("64×32×3×3, 64")
    assert cells[5:11] == ["`18.5K`", "1.5%", "yes", "`21.2M*t`", "`42.5M*t`", "89.0%"]
    assert cells[13] == "`18.4K + 64`"  # 64·32·3·3 = 18,432 weights and 64 biases
    # 532,072 B per sample = 519.6 KiB; 9,523,800 B = 9.08 MiB
    assert "| Peak (training step) | `520KiB*t + 9.08MiB` |" in md
    assert "- `conv2` forward: `2 × t × 64 × 32 × 3 × 3 × 24 × 24` = `21,233,664*t`" in md  # derivations exact
    assert "![Memory timeline of one training step](memory.png)" in md
    with pytest.raises(ValueError, match="units"):
        to_markdown(seed, units="roman")


def test_module_tree_blocks_and_depth():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()))
    a = symcx.analyze(net, torch.randn(2, 4))
    md = to_markdown(a)
    # block "1": the Linear(8, 8), 8*8 + 8 = 72 parameters of 4*8 + 8 + 72 = 112 (64.3%), 2*8*8 = 128 FLOPs
    block = next(x for x in md.splitlines() if x.startswith("| **`1`** |"))
    assert [c.strip() for c in block.strip("|").split("|")][1:9] == [
        "block of 2", "", "", "", "`72`", "64.3%", "yes", "`128*t`"]
    assert "| `1.0` |" in md
    folded = to_markdown(a, depth=1)
    assert "| **`1`** |" in folded and "| `1.0` |" not in folded
    net[1][0].bias.requires_grad_(False)  # one frozen tensor: the layer and its block are not trainable
    frozen = to_markdown(symcx.analyze(net, torch.randn(2, 4)))
    for name in ("**`1`**", "`1.0`"):
        row = next(x for x in frozen.splitlines() if x.startswith(f"| {name} |"))
        assert [c.strip() for c in row.strip("|").split("|")][7] == "no"


def test_layers_prints_as_a_table(seed):
    layers = seed.layers
    assert isinstance(layers, list) and len(layers) == 12 and layers[0].name == "conv1"
    text = repr(layers)
    assert "LayerRow(" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "Type", "Output", "Params", "Forward", "FLOPs", "Backward", "FLOPs",
                                "Other", "FLOPs", "Saved", "bytes"]
    # conv2: 64*32*3*3 + 64 = 18,496 parameters; 2*24*24*3*3*32*64 = 21,233,664 FLOPs per sample
    assert lines[3].split()[:5] == ["conv2", "Conv2d", "t×64×24×24", "18496", "21233664*t"]
    assert "<td" in layers._repr_html_() and layers._repr_markdown_().startswith("| Layer |")
