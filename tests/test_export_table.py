"""Terminal tables: the rows, totals and notes of the seed net as rich prints them."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from rich.console import Console

import symcx
from symcx.export import build_report
from symcx.export.report import UncountedNote
from symcx.export.table import to_renderables
from symcx.zoo import MnistCNN


@pytest.fixture(scope="module")
def seed():
    return symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28))


def _lines(renderables, width: int = 220) -> list[str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    for r in renderables:
        console.print(r)
    return [line.rstrip() for line in buffer.getvalue().splitlines()]


def _cells(lines: list[str], first: str) -> list[str]:
    row = next(x for x in lines if x.startswith((f"│ {first} ", f"┃ {first} ")))
    return [c.strip() for c in row.replace("┃", "│").strip("│").split("│")]


HEAD = ["Layer", "Type", "Input", "Output", "Kernel", "Params", "% params", "Trainable", "Forward FLOPs",
        "Backward FLOPs", "% FLOPs", "Other FLOPs", "Saved bytes"]


def test_layer_rows(seed):
    lines = _lines(to_renderables(build_report(seed)))
    assert _cells(lines, "Layer") == HEAD
    # 2*26*26*3*3*1*32 = 389,376 per sample; 1*3*3*32 + 32 = 320 parameters, 320/1,199,882 = 0.027%;
    # the step is 71,565,312*t FLOPs, conv1's 2*389,376 of them 1.09%
    assert _cells(lines, "conv1") == ["conv1", "Conv2d", "t×1×28×28", "t×32×26×26",
                                      "32×1×3×3, 32; k=3×3, s=1, p=0, d=1, g=1", "320", "<0.1%", "yes",
                                      "389,376*t", "389,376*t", "1.1%", "0", "0"]
    # from 250 columns on (a file or pipe), the weights and biases apart: 1·3·3·32 = 288 and 32
    wide = _lines(to_renderables(build_report(seed)), width=250)
    assert _cells(wide, "Layer")[-1] == "Weights + biases" and _cells(wide, "conv1")[-1] == "288 + 32"
    # a functional op's type is its name; relu keeps its output, 4 * 32*26*26 = 86,528 bytes per sample
    relu = _cells(lines, "relu")
    assert relu[1] == "" and relu[3] == "t×32×26×26" and relu[-1] == "86,528*t"
    # fc1: 9,216*128 + 128 = 1,179,776 of 1,199,882 parameters = 98.3%
    assert _cells(lines, "fc1")[5:8] == ["1,179,776", "98.3%", "yes"]


def test_human_units(seed):
    lines = _lines(to_renderables(build_report(seed), units="human"))
    conv2 = _cells(lines, "conv2")
    # 21,233,664 -> 21.2M; 2 * 21,233,664 -> 42.5M; 64*32*9 + 64 = 18,496 -> 18.5K
    assert conv2[5] == "18.5K" and conv2[8:10] == ["21.2M*t", "42.5M*t"]
    # relu_1 keeps 4 * 64*24*24 = 147,456 bytes per sample = 144 KiB
    assert _cells(lines, "relu_1")[-1] == "144KiB*t"
    # the peak 532,072*t + 9,523,800 bytes: 519.6 KiB and 9.08 MiB
    assert _cells(lines, "Peak (training step)")[1] == "520KiB*t + 9.08MiB"


def _number_cells(width: int, units: str, report) -> tuple[list[str], str]:
    """Every number the layer table shows at ``width`` (from the wide layout), and the narrow render."""
    from symcx.export.table import LAYOUTS

    wide = _lines(to_renderables(report, units=units))
    narrow = "\n".join(_lines(to_renderables(report, units=units), width=width))
    columns = next(cols for least, cols in LAYOUTS if width >= least)
    numbers = []
    for line in wide:
        parts = line.strip("│").split("│")
        if line.startswith("│ ") and len(parts) == len(HEAD):  # a row of the layer table
            cells = dict(zip(HEAD, (c.strip() for c in parts)))
            numbers += [cells[c] for c in columns if c != "Layer" and cells[c]]
    return numbers, narrow


@pytest.mark.parametrize("units", ["exact", "human"])
def test_no_number_is_split_at_80_columns(seed, units):
    report = build_report(seed, at={"t": 64})
    numbers, narrow = _number_cells(80, units, report)
    assert numbers and all(len(line) <= 80 for line in narrow.splitlines())
    tokens = set(narrow.split())
    assert [n for n in numbers if n not in tokens] == []  # each number whole on one line: none split
    # the totals too: 23,984,896*64 = 1,535,033,344 and the peak formula at 80 columns
    assert ("1,535,033,344" if units == "exact" else "1.54G") in tokens


def test_module_tree_and_depth():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)  # 8*8 + 8 = 72 parameters, 2*8*8 = 128 FLOPs per sample

        def forward(self, x):
            return self.fc(x)

    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sequential(Block(), Block()))
    report = build_report(symcx.analyze(net, torch.randn(2, 4)))
    lines = _lines(to_renderables(report))
    # the block "1" holds both Blocks: 2 * 72 = 144 parameters, 2 * 128 = 256 forward FLOPs per sample
    assert _cells(lines, "1")[:2] == ["1", "block of 2"] and _cells(lines, "1")[5] == "144"
    assert _cells(lines, "1")[8] == "256*t"
    assert any(x.startswith("│     fc ") for x in lines)  # "1.0.fc", indented two levels
    folded = _lines(to_renderables(report, depth=1))
    assert not any(x.startswith(("│   0 ", "│     fc ")) for x in folded)
    assert _cells(folded, "1")[5] == "144"


def test_totals_at_a_batch_size_and_number_styles(seed):
    lines = _lines(to_renderables(build_report(seed, at={"t": 64}, epochs=1, samples=60000)))
    assert "Totals of one step, and of training (epochs 1, samples 60,000)" in lines
    assert "at t = 64" in next(x for x in lines if "Quantity" in x)
    # 23,984,896 * 64 = 1,535,033,344
    assert _cells(lines, "Forward FLOPs") == ["Forward FLOPs", "23,984,896*t", "1,535,033,344"]
    # ceil(60000/64) = 938 steps
    assert _cells(lines, "Steps per epoch") == ["Steps per epoch", "ceiling(60,000/t)", "938"]
    scientific = _lines(to_renderables(build_report(seed), numbers="scientific"))
    assert _cells(scientific, "Parameters")[1] == "1.20e6"


def test_big_o_memory_and_notes(seed):
    report = build_report(seed)
    gaps = dataclasses.replace(report, notes=report.notes + (UncountedNote("aten.fft_r2c", "fc1", 2),))
    renderables = to_renderables(gaps)
    lines = _lines(renderables)
    assert "Big-O: one step O(t), training O(N*n)" in lines
    assert "Memory of one training step, bytes (optimizer: sgd)" in lines
    assert _cells(lines, "Input batch")[1] == "3,136*t"  # 4 * 28 * 28 bytes per sample
    # the FLOP convention and the training count are said elsewhere (--help, the totals title)
    assert not any(x.startswith(("FLOPs follow", "Training:")) for x in lines)
    assert lines[-2].startswith("Traced once with symbolic sizes")
    assert lines[-1] == "Not counted (no cost rule): aten.fft_r2c in fc1 (x2)"
    assert renderables[-1].style == "yellow" and renderables[-2].style == "dim"
