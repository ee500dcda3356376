"""The Report every export renders: figures against hand numbers, notes, memory, ``at``; the printer hook."""

from __future__ import annotations

from collections import Counter

import pytest
import sympy
import torch

import symcx
from symcx import printing
from symcx.export.report import (
    AssumptionNote,
    ConventionNote,
    DeviationNote,
    RouteNote,
    TrainingNote,
    UncountedNote,
    build_report,
    plain_names,
    plain_op,
    type_label,
)
from symcx.zoo import MnistCNN

T = symcx.symbol("t")


@pytest.fixture(scope="module")
def seed():
    return symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28))


def test_totals_and_training_at_a_batch_size(seed):
    r = build_report(seed, at={"t": 64}, epochs=1, samples=60000)
    forward = r.figure("forward_flops")
    # 389,376 + 21,233,664 + 2*9216*128 + 2*128*10 = 23,984,896 per sample
    assert (forward.label, forward.formula, forward.value) == ("Forward FLOPs", 23984896 * T, 23984896 * 64)
    assert r.figure("params").value == 1199882  # 320 + 18,496 + 1,179,776 + 1,290
    # ceil(60000/64) = 938 steps of (23,984,896 + 47,580,416) * 64 FLOPs
    assert r.figure("steps_per_epoch").value == 938
    assert r.figure("total_flops").value == 938 * (23984896 + 47580416) * 64
    assert r.at == {T: 64}
    # with n and N numbers the total no longer grows (O(1)); the big-O stays in n and N, the numbers beside it
    assert (r.big_o.step, r.big_o.training) == (symcx.O(T), symcx.O(symcx.N * symcx.n))
    assert r.big_o.where == {symcx.n: 1, symcx.N: 60000}


def test_big_o_without_numbers_has_no_where(seed):
    r = build_report(seed)
    assert r.big_o.training == symcx.O(symcx.N * symcx.n) and r.big_o.where == {}


def test_plain_names_and_the_peak_op(seed):
    names = plain_names(seed.layers)
    # three F.relu calls in forward order, F.max_pool2d, F.log_softmax; modules keep their paths
    assert [names[k] for k in ("relu", "relu_1", "relu_2")] == ["ReLU 1", "ReLU 2", "ReLU 3"]
    assert (names["max_pool2d_with_indices"], names["_log_softmax"]) == ("max pool", "log-softmax")
    assert (names["conv1"], names["dropout1"], names["loss"]) == ("conv1", "dropout1", "loss")
    assert plain_op("aten.threshold_backward") == "ReLU (backward)" and plain_op("aten.foo_bar") == "foo bar"
    mem = build_report(seed).memory
    assert mem.peak_op == "aten.threshold_backward"  # the peak_node threshold_backward_1, ReLU 2's backward


def test_summary_leaves_out_what_the_note_says(seed):
    r = build_report(seed)
    keys = [f.key for f in r.summary]
    assert keys[:2] == ["forward_flops", "backward_flops"] and len(keys) == 9 + 4
    assert not {"epochs", "samples", "flops_per_step"} & set(keys)
    assert [f.key for f in r.training][:2] == ["epochs", "samples"]
    assert all(f.value == f.formula for f in r.totals + r.training)  # no ``at``: the value is the formula


def test_memory_section_by_hand(seed):
    mem = build_report(seed, optimizer="adam").memory
    figures = {f.key: f.formula for f in mem.figures}
    # float32: 4 bytes per parameter; adam keeps two moments per parameter and a float32 step
    # count per parameter tensor (8: weight and bias of conv1, conv2, fc1, fc2)
    assert figures["params"] == figures["grads"] == 4 * 1199882
    assert figures["optimizer"] == 2 * 4 * 1199882 + 8 * 4
    assert figures["inputs"] == 4 * 28 * 28 * T
    assert mem.optimizer == "adam"
    # with adam's state the step peaks in optimizer.step() (at the trace's example sizes)
    assert (mem.peak_layer, mem.peak_node) == ("optimizer", "optimizer.step")
    fc1 = next(m for m in mem.by_layer if m.name == "fc1")
    assert {f.key: f.formula for f in fc1.figures}["param_bytes"] == 4 * (9216 * 128 + 128)


def test_memory_is_none_without_a_memory_formula(seed, monkeypatch):
    a = seed.subs()

    def no_memory(**kwargs):
        raise symcx.SymcxError("no memory formula")

    monkeypatch.setattr(a, "memory", no_memory)
    r = build_report(a)
    assert r.memory is None and r.figure("forward_flops").formula == 23984896 * T


def test_notes_in_order(seed, monkeypatch):
    a = seed.subs()
    monkeypatch.setattr(a, "unsupported", Counter({("aten.fft_r2c", "fc1"): 2, ("aten.cumsum", "conv1"): 1}))
    notes = build_report(a, epochs=3).notes
    assert [type(x) for x in notes] == [RouteNote, ConventionNote, TrainingNote, UncountedNote, UncountedNote]
    assert notes[0].text.startswith("Traced once with symbolic sizes")
    assert notes[2] == TrainingNote(sympy.Integer(3), symcx.N)
    assert notes[3:] == (UncountedNote("aten.cumsum", "conv1", 1), UncountedNote("aten.fft_r2c", "fc1", 2))


def test_assumptions_and_deviations_become_notes():
    conv = torch.nn.Conv2d(3, 8, 3)
    a = symcx.analyze(conv, torch.randn(1, 3, 16, 16), dims={"H": 2, "W": 3})
    r = build_report(a)
    assert [n.condition for n in r.notes_of(AssumptionNote)] == a.assumptions != []
    assert [n.text for n in r.notes_of(DeviationNote)] == a.deviations


def test_a_substituted_analysis_says_its_numbers(seed):
    r = build_report(seed.subs(t=8, n=2))
    assert r.substituted == {T: 8, symcx.n: 2} and "t" not in r.symbols
    assert r.figure("epochs").formula == 2 and r.notes_of(TrainingNote)[0].epochs == 2
    # 2 epochs of ceil(N/8) steps of 8 * (23,984,896 + 47,580,416) FLOPs
    assert r.figure("total_flops").formula == 2 * sympy.ceiling(symcx.N / 8) * 8 * (23984896 + 47580416)


def test_unknown_at_symbol(seed):
    with pytest.raises(symcx.SymcxError, match="unknown symbol 'H' in at"):
        build_report(seed, at={"H": 3})


def test_type_label(seed):
    labels = {row.name: type_label(row) for row in seed.layers}
    assert labels["conv1"] == "Conv2d" and labels["relu_1"] == "" and labels["loss"] == "sum"


def test_export_registers_its_printers(seed):
    import symcx.export

    assert printing.render("markdown", seed, title="Q1") == symcx.export.to_markdown(seed, title="Q1")
    assert printing.render("latex", seed, environment="array").startswith("$$\n\\begin{array}")
    with pytest.raises(symcx.SymcxError, match="no printer for format 'yaml'.*import symcx.export"):
        printing.render("yaml", seed)
