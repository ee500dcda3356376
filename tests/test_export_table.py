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


def _lines(renderables) -> list[str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=150, color_system=None, force_terminal=False)
    for r in renderables:
        console.print(r)
    return [line.rstrip() for line in buffer.getvalue().splitlines()]


def _cells(lines: list[str], first: str) -> list[str]:
    row = next(x for x in lines if x.startswith(f"│ {first} "))
    return [c.strip() for c in row.strip("│").split("│")]


def test_layer_rows(seed):
    lines = _lines(to_renderables(build_report(seed)))
    # 2*26*26*3*3*1*32 = 389,376 per sample; 1*3*3*32 + 32 = 320 parameters
    assert _cells(lines, "conv1") == ["conv1", "Conv2d", "t×32×26×26", "389,376*t", "389,376*t", "0", "320", "0"]
    # a functional op's type is its name; relu keeps its output, 4 * 32*26*26 = 86,528 bytes per sample
    assert _cells(lines, "relu")[1:3] == ["", "t×32×26×26"] and _cells(lines, "relu")[-1] == "86,528*t"


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
