"""Calibrating the step-time model on a device, saving it, and predicting another model from it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import symcx
from symcx import t
from symcx.cli import main
from symcx.errors import DeviceError, SymcxError
from symcx.validation import Calibration, calibrate_device, load_calibration, predict_time
from symcx.validation.timing import CLASSES, KEYS, ClassFit
from symcx.validation.workload import CalibrationNet
from symcx.zoo import MLP

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def calibration():
    return calibrate_device(batch_sizes=[1, 4, 16], repeats=1, warmup=0)


@pytest.mark.slow
def test_the_default_workload_covers_every_op_class(calibration):
    from symcx.validation.timing import op_class

    a = symcx.analyze(CalibrationNet(), CalibrationNet.example_input())
    assert {op_class(n) for n in a.step.calls()} == set(CLASSES)
    # every class, and the backward GEMM, convolution and attention nodes apart
    split = {f"{c}_backward" for c in ("gemm", "conv", "attention")}
    assert set(KEYS) == set(CLASSES) | split and set(KEYS) <= set(calibration.classes)
    # beyond those, op families of elementwise/norm work and data movement with enough nodes of their own
    extra = set(calibration.classes) - set(KEYS)
    assert extra and all(k.split(":")[0] in ("compute", "movement") and k.split(":")[1].startswith("aten.")
                         for k in extra)
    assert calibration.device.endswith("(CalibrationNet)") and calibration.r2 <= 1
    assert all(v >= 0 for f in calibration.classes.values() for v in (f.launch, f.s_per_flop, f.s_per_byte))


def test_a_calibration_saves_and_loads(calibration, tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(calibration.to_json())
    assert load_calibration(path) == calibration
    path.write_text("{not json")
    with pytest.raises(SymcxError, match="is not a symcx calibration"):
        load_calibration(path)
    path.write_text(json.dumps({"schema": "symcx.validation/1"}))
    with pytest.raises(SymcxError, match="not a symcx calibration"):
        load_calibration(path)


def test_predict_time_sums_the_calibration_over_nodes():
    # By hand, MLP 8-4-2 training step: 2 forward addmm, 2 weight-gradient mm and 1 grad-input mm
    # (the second layer's; x needs no gradient) = 5 GEMM nodes; 1 ms each, nothing else costs.
    a = symcx.analyze(MLP((8, 4, 2)), torch.randn(2, 8))
    cal = Calibration("by hand", {c: ClassFit(1e-3 if c == "gemm" else 0.0) for c in CLASSES}, 1.0)
    assert float(predict_time(a, cal)) == pytest.approx(5e-3)
    per_flop = Calibration("by hand", {c: ClassFit(0.0, 1e-9 if c == "gemm" else 0.0) for c in CLASSES}, 1.0)
    # GEMM FLOPs: forward 2·t·(8·4 + 4·2) = 80·t, backward weight grads 80·t + grad-input 2·t·4·2 = 16·t
    seconds = predict_time(a, per_flop)
    assert seconds.free_symbols == {t} and float(seconds.subs(t, 1000)) == pytest.approx(176 * 1000 * 1e-9)
    roof = predict_time(a, "l4")  # 30.3 TFLOP/s fp32, 300 GB/s, 5 µs per costed node
    assert float(roof.subs(t, 1)) >= 5 * 5e-6


def test_a_calibration_predicts_another_model():
    cal = calibrate_device(MLP((32, 16, 4)), torch.randn(2, 32), batch_sizes=[1, 8], repeats=1, warmup=0)
    seconds = predict_time(symcx.analyze(torch.nn.Linear(16, 4), torch.randn(2, 16)), cal)
    assert seconds.free_symbols <= {t} and float(seconds.subs(t, 8)) > 0


@pytest.mark.parametrize("kw, message", [
    ({"batch_sizes": [4]}, "at least two distinct batch sizes"),
    ({"batch_sizes": [0, 2]}, "positive integers"),
    ({"model": torch.nn.Linear(2, 2)}, "give the example input"),
])
def test_bad_calibration_requests_are_errors(kw, message):
    with pytest.raises(SymcxError, match=message):
        calibrate_device(**kw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_calibrating_on_cuda_without_cuda_is_a_device_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        calibrate_device(device="cuda")


@pytest.mark.slow  # a calibration and a sweep
def test_cli_calibrate_then_validate_with_it(tmp_path, capsys):
    cal, report = tmp_path / "cal.json", tmp_path / "v.json"
    assert main(["calibrate", "--model", "mlp", "--batch-sizes", "1,4", "--repeats", "1", "--output", str(cal)]) == 0
    assert load_calibration(cal).device.endswith("(MLP)")
    assert main(["validate", "mnist-cnn", "--backward", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0",
                 "--calibration", str(cal), "--output", str(report)]) == 0
    doc = json.loads(report.read_text())
    assert doc["run_mode"] == "graph" and doc["time_model"]["source"] == "calibration"
    assert all(s["graph_matches_eager"] and s["predicted_time_s"] > 0 for s in doc["sizes"])
    capsys.readouterr()
    assert main(["validate", "mlp", "--batch-sizes", "1", "--device-profile", "a200"]) == 2
    assert "unknown device profile 'a200'" in capsys.readouterr().err
    assert main(["validate", "mlp", "--batch-sizes", "1", "--calibration", str(tmp_path / "none.json")]) == 2


@pytest.mark.slow
def test_cli_calibrate_as_a_process_writes_json(tmp_path):
    out = tmp_path / "cal.json"
    done = subprocess.run([sys.executable, "-m", "symcx", "calibrate", "--device", "cpu", "--batch-sizes", "1,2",
                           "--repeats", "1", "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "per-node fit R²" in done.stderr and load_calibration(out).device.endswith("(CalibrationNet)")
    bad = subprocess.run([sys.executable, "-m", "symcx", "calibrate", "--device", "tpu"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2


@cuda
def test_calibrate_and_validate_on_cuda():
    cal = calibrate_device(device="cuda", batch_sizes=[1, 8], repeats=2)
    assert "cuda" in cal.device.lower() or "nvidia" in cal.device.lower() or cal.device
    v = symcx.validate(MLP((32, 16, 4)), torch.randn(1, 32), device="cuda", batch_sizes=[1, 8], backward=True,
                       repeats=2, warmup=1, calibration=cal)
    assert all(r.graph_matches_eager for r in v.sizes) and all(r.predicted_time_s > 0 for r in v.sizes)
