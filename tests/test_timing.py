"""The step-time model: op classes, a fit that recovers known costs, and datasheet rooflines."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx import t
from symcx.validation.timing import (
    DEVICE_PROFILES,
    Calibration,
    ClassFit,
    calibrate,
    fit_key,
    node_features,
    op_class,
    predict_step_seconds,
    roofline_seconds,
)


def _synthetic(step, cost, sizes=(1, 2, 4, 8, 16, 32, 64, 128)):
    """Calibration samples whose node times are made from known costs: ``cost(node)`` a ClassFit."""
    samples = []
    for batch in sizes:
        at = {t: batch}
        seconds = {}
        for v in step.calls():
            f, b = (float(sympy.sympify(e).xreplace(at)) for e in node_features(v))
            seconds[v.name] = cost(v).seconds(f, b)
        samples.append((step, at, seconds))
    return samples


@pytest.fixture(scope="module")
def mlp():
    return symcx.analyze(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)), torch.randn(2, 64))


def test_classes_and_features_by_hand(mlp):
    nodes = {v.name: v for v in mlp.step.calls()}
    assert op_class(nodes["addmm"]) == "gemm" and op_class(nodes["relu"]) == "compute"
    assert op_class(nodes["t"]) == "free"
    flops, nbytes = node_features(nodes["addmm"])
    # addmm(bias 32, x t×64, w^T 64×32): 2·t·64·32 FLOPs (+0 other); reads 4·(32 + 64t + 2048), writes 4·32t
    assert flops == 2 * 64 * 32 * t
    assert nbytes == 4 * (32 + 64 * t + 64 * 32) + 4 * 32 * t


def test_calibration_recovers_known_costs(mlp):
    """Node times made from known per-class costs are fitted back (pooled where a class has too few nodes)."""
    truth = {"gemm": ClassFit(2e-6, 1e-11, 0.0), "compute": ClassFit(1e-6, 0.0, 5e-11)}
    samples = []
    for batch in (1, 2, 4, 8, 16, 32, 64):
        at = {t: batch}
        seconds = {}
        for v in mlp.step.calls():
            c = op_class(v)
            f, b = (float(sympy.sympify(e).xreplace(at)) for e in node_features(v))
            seconds[v.name] = truth[c].seconds(f, b) if c in truth else 1e-6
        samples.append((mlp.step, at, seconds))
    cal = calibrate(samples, "synthetic")
    gemm = cal.classes["gemm"]
    assert gemm.launch == pytest.approx(2e-6, rel=1e-6) and gemm.s_per_flop == pytest.approx(1e-11, rel=1e-6)
    assert cal.classes["compute"].s_per_byte == pytest.approx(5e-11, rel=1e-6)
    # classes with no node here (conv, attention, movement) take the fit pooled over every class
    assert cal.classes["conv"] == cal.classes["attention"] == cal.classes["movement"]
    assert 0.95 < cal.r2 < 1
    predicted = predict_step_seconds(mlp.step, cal)
    assert predicted.free_symbols == {t}
    expected = sum(s for v, s in samples[3][2].items())  # t = 8
    assert float(predicted.subs(t, 8)) == pytest.approx(expected, rel=0.05)
    assert Calibration.from_json(cal.to_json()) == cal


def test_roofline_on_a_named_gpu(mlp):
    h100 = DEVICE_PROFILES["h100-sxm"]
    assert (h100.flops["bf16"], h100.bandwidth) == (989.4e12, 3.35e12)  # dense, from the datasheet
    seconds = roofline_seconds(mlp.step, "h100-sxm", dtype="bf16")
    # at t = 1e6 the big matmul is compute-bound: 2·1e6·64·32 FLOPs / 989.4 TFLOP/s ≥ its share
    assert float(seconds.subs(t, 10**6)) > 2 * 10**6 * 64 * 32 / 989.4e12
    with pytest.raises(symcx.SymcxError, match="unknown device profile"):
        roofline_seconds(mlp.step, "a200")
    with pytest.raises(symcx.SymcxError, match="no 'fp8' peak"):
        roofline_seconds(mlp.step, "l4", dtype="fp8")


def test_views_are_a_floor_in_place_fills_move_data_and_backward_gemms_are_apart():
    a = symcx.analyze(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)), torch.randn(2, 8))
    calls = list(a.step.calls())
    views = [v for v in calls if v.packet in ("aten.t", "aten.view")]
    assert views and all(op_class(v) == "free" and node_features(v) == (0, 0) for v in views)
    draws = [v for v in calls if v.packet in ("aten.bernoulli_", "aten.native_dropout")]
    assert draws and all(op_class(v) != "free" for v in draws)  # dropout's mask is work, not a view
    mms = [v for v in calls if op_class(v) == "gemm"]
    assert {fit_key(v) for v in mms} == {"gemm", "gemm_backward"}
    assert all(fit_key(v) == ("gemm_backward" if v.phase == "backward" else "gemm") for v in mms)


def test_forward_and_backward_gemms_are_fitted_apart(mlp):
    """Known costs: forward GEMMs 1e-11 s/FLOP, backward ones 3e-11, views 2 µs; fitted back per key."""
    truth = {"gemm": ClassFit(0.0, 1e-11), "gemm_backward": ClassFit(0.0, 3e-11), "free": ClassFit(2e-6)}
    cal = calibrate(_synthetic(mlp.step, lambda v: truth.get(fit_key(v), ClassFit(1e-6))), "synthetic")
    assert cal.classes["gemm"].s_per_flop == pytest.approx(1e-11, rel=1e-6)
    assert cal.classes["gemm_backward"].s_per_flop == pytest.approx(3e-11, rel=1e-6)
    assert cal.classes["free"] == ClassFit(2e-6)  # the median view time, nothing per FLOP or byte


def test_elementwise_op_families_are_fitted_apart():
    """Known costs: ReLU's gradient 1e-10 s/byte, every other compute node 1e-11 s/byte; with 2 ReLU
    gradient nodes × 8 sizes (≥ 12 samples) the family gets a fit of its own, recovered exactly."""
    a = symcx.analyze(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)),
                      torch.randn(2, 16))
    relu_grad = ClassFit(1e-6, 0.0, 1e-10)
    cost = lambda v: relu_grad if v.packet == "aten.threshold_backward" else ClassFit(1e-6, 0.0, 1e-11)  # noqa: E731
    cal = calibrate(_synthetic(a.step, cost), "synthetic")
    grad = next(v for v in a.step.calls() if v.packet == "aten.threshold_backward")
    assert fit_key(grad) == "compute:aten.threshold_backward"
    # its FLOPs (16·t) and bytes (192·t) are proportional, so only the node's time is determined:
    # 1 µs + 192·t·1e-10 s, at t = 1000
    fitted = cal.classes["compute:aten.threshold_backward"].seconds(*(16 * 1000, 192 * 1000))
    assert fitted == pytest.approx(1e-6 + 192 * 1000 * 1e-10, rel=1e-6)
    # a family with too few nodes (the backward's seed, one aten.ones_like × 8 sizes < 12) has no key
    # of its own and is predicted with its class's fit
    seed = next(v for v in a.step.calls() if v.packet == "aten.ones_like")
    assert fit_key(seed) not in cal.classes and "movement" in cal.classes
