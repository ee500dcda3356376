"""JSON export: the documented schema, a sympify round trip, and evaluated values against hand numbers."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import sympy
import torch

import symcx
from symcx.analysis import Analysis
from symcx.export import to_json
from symcx.export.json import SCHEMA
from symcx.zoo import MLP, MnistCNN

T = sympy.Symbol("t", positive=True, integer=True)


@pytest.fixture(scope="module")
def seed():
    return symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28))


def _symbols(doc):
    return {name: sympy.Symbol(name, positive=True, integer=True) for name in doc["symbols"]}


def _expressions(doc):
    """Every (path, expression string) in the document outside ``values``."""
    out = [(f"totals.{k}", v) for k, v in doc["totals"].items()]
    out += [(f"training.{k}", v) for k, v in doc["training"].items()]
    out += [(f"memory.{k}", v) for k, v in doc["memory"].items() if isinstance(v, str) and k not in
            ("optimizer_name", "peak_node", "peak_layer")]
    for row in doc["layers"]:
        out += [(f"{row['name']}.{k}", v) for k, v in row.items() if k.endswith(("flops", "params", "bytes"))
                or k in ("params", "bytes_out")]
        out += [(f"{row['name']}.out_shape", s) for s in row["out_shape"]]
        out += [(f"{row['name']}.derivation", f) for fs in row["derivation"] + row["backward_derivation"] for f in fs]
    return out


def _originals(a: Analysis):
    """The same expressions from the Analysis itself, keyed like :func:`_expressions`."""
    mem = a.memory()
    tr = a.training()
    out = {f"totals.{k}": getattr(a, k) for k in
           ("forward_flops", "backward_flops", "step_flops", "forward_other_flops", "backward_other_flops",
            "params", "trainable_params", "param_bytes", "activation_bytes")}
    out.update({f"training.{k}": getattr(tr, k) for k in
                ("steps_per_epoch", "flops_per_step", "flops_per_epoch", "total_flops", "other_flops_total")})
    out.update({"training.epochs": symcx.n, "training.samples": symcx.N})
    out.update({f"memory.{k}": getattr(mem, k) for k in
                ("params", "buffers", "inputs", "grads", "optimizer", "activations", "peak", "inference_peak")})
    for row in a.layers:
        out.update({f"{row.name}.{k}": getattr(row, k) for k in
                    ("forward_flops", "backward_flops", "forward_other_flops", "backward_other_flops", "params",
                     "bytes_out", "saved_bytes")})
    return out


def test_schema_sections(seed):
    doc = json.loads(to_json(seed))
    assert doc["schema"] == SCHEMA == "symcx.analysis/1"
    assert set(doc) >= {"symbols", "hints", "substituted", "route", "convention", "assumptions", "totals",
                        "training", "big_o", "memory", "layers", "unsupported", "deviations", "values"}
    assert doc["symbols"] == ["N", "n", "t"] and doc["route"] == "symbolic"
    assert doc["big_o"] == {"step": "t", "training": "N*n", "where": {}}
    conv1 = doc["layers"][0]
    assert conv1["name"] == "conv1" and conv1["type"] == "Conv2d" and conv1["ops"] == ["aten.convolution"]
    assert conv1["out_shape"] == ["t", "32", "26", "26"]
    assert sorted(conv1["derivation"][0]) == sorted(["2", "t", "32", "1", "3", "3", "26", "26"])
    # no grad input for the first layer; grad weight: 2 * in 1 * out 32 * t * 26*26 positions * 3*3 kernel
    assert conv1["backward_derivation"] == [["2", "1", "32", "t", "26", "26", "3", "3"]]
    # fc2's grad input t×10 @ 10×128 and grad weight 10×t @ t×128
    fc2 = next(row for row in doc["layers"] if row["name"] == "fc2")
    assert fc2["backward_derivation"] == [["2", "t", "10", "128"], ["2", "10", "t", "128"]]
    assert fc2["backward_terms"] == [{"label": "grad input", "factors": ["2", "t", "10", "128"]},
                                     {"label": "grad weight", "factors": ["2", "10", "t", "128"]}]


def test_weights_biases_shapes_and_details(seed):
    doc = json.loads(to_json(seed, at={"t": 2}))
    conv1 = doc["layers"][0]
    # 32 filters of 1×3×3: 288 weights, 32 biases; a 28×28 input, a 3×3 kernel, stride 1, no padding
    assert (conv1["weights"], conv1["biases"]) == ("288", "32")
    assert conv1["weight_shapes"] == [["32", "1", "3", "3"], ["32"]]
    assert conv1["in_shape"] == ["t", "1", "28", "28"] and conv1["trainable"] is True
    assert conv1["details"] == "k=3×3, s=1, p=0, d=1, g=1"
    assert conv1["backward_terms"] == [{"label": "grad weight", "factors": ["2", "1", "32", "t", "26", "26", "3", "3"]}]
    relu = doc["layers"][1]
    assert relu["trainable"] is None and relu["weight_shapes"] == [] and relu["weights"] == "0"
    fc1 = next(r for r in doc["values"]["layers"] if r["name"] == "fc1")
    assert (fc1["weights"], fc1["biases"]) == (128 * 9216, 128)


def test_big_o_states_the_numbers_given_for_n_and_N(seed):
    doc = json.loads(to_json(seed, epochs=1, samples=60000))
    # the total 71,565,312·t·ceiling(60000/t) does not grow with t: the big-O stays in n, N
    assert doc["big_o"] == {"step": "t", "training": "N*n", "where": {"n": "1", "N": "60000"}}


@pytest.mark.parametrize("batch", [1, 64])
def test_round_trip_through_sympify(seed, batch):
    doc = json.loads(to_json(seed))
    syms = _symbols(doc)
    originals = _originals(seed)
    at = {syms["t"]: batch, syms["n"]: 3, syms["N"]: 60000}
    checked = 0
    for path, text in _expressions(doc):
        back = sympy.sympify(text, locals=syms)
        assert back.free_symbols <= set(syms.values()), path
        if path in originals:
            want = sympy.sympify(originals[path]).subs({T: batch, symcx.n: 3, symcx.N: 60000})
            assert back.subs(at) == want, path
            checked += 1
    assert checked >= 90  # 9 totals, 7 training, 8 memory, 12 layers x 7


def test_hand_numbers_at_64(seed):
    doc = json.loads(to_json(seed, at={"t": 64}, epochs=1, samples=60000))
    values = doc["values"]
    assert values["at"] == {"t": 64}
    # per sample: forward 23,984,896 (seed's convs + fcs), backward 47,580,416 = FlopCounterMode
    assert values["totals"]["forward_flops"] == 23984896 * 64
    assert values["totals"]["backward_flops"] == 47580416 * 64
    assert values["totals"]["params"] == 1199882
    # ceil(60000/64) = 938 steps of (23,984,896 + 47,580,416) * 64 FLOPs
    assert values["training"]["steps_per_epoch"] == math.ceil(60000 / 64) == 938
    assert values["training"]["total_flops"] == 938 * (23984896 + 47580416) * 64
    conv1 = next(r for r in values["layers"] if r["name"] == "conv1")
    assert conv1["forward_flops"] == 2 * 26 * 26 * 3 * 3 * 1 * 32 * 64
    assert conv1["params"] == 1 * 3 * 3 * 32 + 32
    # saved for backward, per sample (checked with torch's saved_tensors_hooks): relu outputs
    # 4*(32*26*26 + 64*24*24 + 128), pool indices 8*64*12*12, dropout masks 4*(64*12*12 + 128)
    # (float32: eager CPU dropout's mask, Dropout.cpp), fc1/fc2 inputs 4*(9216 + 128), log_softmax
    # output 4*10 = 383,016 bytes
    per_sample = 4 * (32 * 26 * 26 + 64 * 24 * 24 + 128) + 8 * 9216 + 4 * (9216 + 128) + 4 * (9216 + 128) + 40
    assert values["memory"]["activations"] == per_sample * 64 == 383016 * 64
    # the formulas stay symbolic beside the values
    assert doc["totals"]["forward_flops"] == "23984896*t"


def test_values_are_null_where_symbolic(seed):
    values = json.loads(to_json(seed))["values"]
    assert values["at"] == {}
    assert values["totals"]["forward_flops"] is None
    assert values["totals"]["params"] == 1199882


def test_symbolic_widths_evaluate_at_the_seed_sizes():
    a = symcx.analyze(MLP(), torch.randn(1, 784), widths="letters")
    doc = json.loads(to_json(a, at={"t": 1, "i": 784, "j": 512, "k": 256, "l": 10}))
    syms = _symbols(doc)
    i, j, k, l, t = (syms[s] for s in "ijklt")
    assert sympy.expand(sympy.sympify(doc["totals"]["forward_flops"], locals=syms) - 2 * t * (i * j + j * k + k * l)) == 0
    # 2*(784*512 + 512*256 + 256*10) = 1,070,080
    assert doc["values"]["totals"]["forward_flops"] == 1070080
    assert doc["values"]["totals"]["params"] == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10


def test_memory_is_null_without_a_memory_formula(seed, monkeypatch):
    a = seed.subs()

    def no_memory(**kwargs):
        raise symcx.SymcxError("no memory formula")

    monkeypatch.setattr(a, "memory", no_memory)
    doc = json.loads(to_json(a, at={"t": 2}))
    assert doc["memory"] is None and doc["values"]["memory"] is None
    assert doc["values"]["totals"]["forward_flops"] == 23984896 * 2


def test_memory_section_and_per_layer_bytes(seed):
    doc = json.loads(to_json(seed, at={"t": 64}, optimizer="sgd-momentum"))
    mem = doc["memory"]
    # float32: 4 bytes per parameter, one momentum buffer per parameter
    assert mem["params"] == mem["grads"] == mem["optimizer"] == str(4 * 1199882)
    assert (mem["optimizer_name"], mem["inputs"]) == ("sgd-momentum", "3136*t")  # 4 * 28 * 28 bytes per sample
    fc1 = next(m for m in mem["by_layer"] if m["name"] == "fc1")
    assert fc1["param_bytes"] == str(4 * (9216 * 128 + 128))
    values = doc["values"]["memory"]
    assert values["inputs"] == 3136 * 64 and "peak_node" not in values
    assert next(m for m in values["by_layer"] if m["name"] == "fc1")["param_bytes"] == 4 * (9216 * 128 + 128)


def test_unsupported_ops_and_bad_at(seed, monkeypatch):
    a = seed.subs()
    monkeypatch.setattr(a, "unsupported", Counter({("aten.fft_r2c", "fc1"): 2}))
    doc = json.loads(to_json(a))
    assert doc["unsupported"] == [{"op": "aten.fft_r2c", "layer": "fc1", "count": 2}]
    with pytest.raises(symcx.SymcxError, match="unknown symbol 'H'"):
        to_json(seed, at={"H": 3})


def test_substituted_analysis_and_options(seed):
    doc = json.loads(to_json(seed.subs(t=8)))
    assert doc["substituted"] == {"t": "8"} and "t" not in doc["symbols"]
    assert doc["totals"]["forward_flops"] == str(23984896 * 8)
    assert doc["values"]["totals"]["forward_flops"] == 23984896 * 8  # a substituted number is a value too
    with pytest.raises(TypeError):
        to_json(seed, colour="red")
