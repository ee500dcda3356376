"""symcx.memory.memory_timeline and symcx.export.timeline: the curve whose top is the peak."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import symcx
from symcx.errors import SymcxError
from symcx.export.timeline import plot_memory_timeline, timeline_points
from symcx.memory import memory_timeline
from symcx.symbols import t
from symcx.zoo import MnistCNN

# The seed net's training peak, derived by hand in tests/test_memory.py::test_seed_peak_by_hand:
# 532,072 bytes per sample plus 9,523,800, at conv2's ReLU backward (threshold_backward_1).
PER_SAMPLE, CONSTANT = 532_072, 9_523_800
SEED_PARAMS = 1_199_882


@pytest.fixture(scope="module")
def seed() -> symcx.Analysis:
    torch.manual_seed(0)
    return symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28))


def test_timeline_top_is_the_hand_derived_peak(seed):
    curve = memory_timeline(seed.step, values={t: 8})
    node, phase, top = max(curve, key=lambda p: p[2])
    assert top == PER_SAMPLE * 8 + CONSTANT == 13_780_376
    assert (node, phase) == ("threshold_backward_1", "backward")
    assert top == seed.subs(t=8).memory().peak


def test_timeline_phases_in_program_order(seed):
    phases = [phase for _, phase, _ in memory_timeline(seed.step, values={t: 8})]
    firsts = [phases.index(p) for p in ("forward", "backward", "optimizer")]
    assert firsts == sorted(firsts)
    assert phases[-1] == "optimizer" and phases.count("optimizer") == 1


def test_timeline_with_adam_peaks_in_the_optimizer_step(seed):
    curve = memory_timeline(seed.step, optimizer="adam", values={t: 8})
    node, phase, top = max(curve, key=lambda p: p[2])
    # Adam at t = 8: resident params 4,799,528 + input 3,136*8 + state 2*4,799,528 + 8 tensors*4 B;
    # held to the end: the gradients 4,799,528, the output 40*8, the loss and its seed 4 + 4; and
    # step()'s temporary copy of the parameters 4,799,528
    by_hand = 4_799_528 + 3_136 * 8 + (2 * 4 * SEED_PARAMS + 8 * 4) + 4_799_528 + 40 * 8 + 8 + 4_799_528
    assert (node, phase, top) == ("optimizer.step", "optimizer", by_hand) and by_hand == 24_023_088
    assert top == seed.subs(t=8).memory("adam").peak


def test_timeline_symbolic_without_values(seed):
    curve = memory_timeline(seed.step)
    assert any(b.free_symbols == {t} for *_, b in curve)
    with pytest.raises(SymcxError, match="optimizer"):
        memory_timeline(seed.step, optimizer="lion")


def test_timeline_points_name_layers(seed):
    points = timeline_points(seed, batch=8)
    node, layer, phase, top = max(points, key=lambda p: p[3])
    assert (node, layer, phase, top) == ("threshold_backward_1", "relu_1", "backward", 13_780_376)
    assert points[-1][:3] == ("optimizer.step", "optimizer", "optimizer")


def test_plot_memory_timeline_writes_png(seed, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "mem.png"
    assert plot_memory_timeline(seed, path, batch=4) == PER_SAMPLE * 4 + CONSTANT
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["mem.png"]  # no temporary left


@pytest.mark.slow
def test_cli_plot_memory(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "mem.png"
    proc = subprocess.run([sys.executable, "-m", "symcx", "analyze", "mnist-cnn", "--format", "json",
                           "--plot-memory", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {path}" in proc.stderr and "t = 8" in proc.stderr


@pytest.mark.slow
def test_cli_plot_memory_bad_extension_fails_first(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "symcx", "analyze", "mnist-cnn", "--plot-memory",
                           str(tmp_path / "mem.xyz")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and ".xyz" in proc.stderr
    assert list(tmp_path.iterdir()) == []
