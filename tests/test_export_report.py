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
    assert (r.big_o.step, r.big_o.training) == (symcx.O(T), symcx.O(sympy.Integer(1)))  # n and N are numbers


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
