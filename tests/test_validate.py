"""symcx.validate(): sweeps on cpu (CUDA tests skip without a GPU).

Oracles: FLOPs by hand (seed net, MLP) and FlopCounterMode on the real run; memory by
hand-summed tensor bytes for a model small enough to list every allocation. Times are
checked for shape and consistency, never for speed.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import weakref

import pytest
import torch
from rich.console import Console
import symcx.validation.live_bytes
from symcx._torch import TorchDispatchMode, tree_leaves
from symcx.errors import DeviceError, SymcxError
from symcx.validation import SCHEMA, Validation, fit_line, validate
from symcx.validation import measure
from symcx.zoo import MLP, MnistCNN

# Seed net per sample, by hand: conv1 2·26·26·3·3·1·32 = 389,376; conv2 2·24·24·3·3·32·64 =
# 21,233,664; fc1 2·9216·128 = 2,359,296; fc2 2·128·10 = 2,560; total 23,984,896.
SEED_FORWARD = 23_984_896
# Backward: grad-weight of every layer (same products as forward) plus grad-input of conv2,
# fc1, fc2 (not conv1: the image needs no gradient) = 23,984,896 + 21,233,664 + 2,359,296
# + 2,560 = 47,580,416.
SEED_BACKWARD = 47_580_416
# Seed net parameters, by hand: conv1 32·1·3·3 + 32 = 320; conv2 64·32·3·3 + 64 = 18,496;
# fc1 128·9216 + 128 = 1,179,776; fc2 10·128 + 10 = 1,290; total 1,199,882 (float32).
SEED_PARAMS = 1_199_882
# MLP 784-512-256-10 per sample: forward 2·(784·512 + 512·256 + 256·10) = 1,070,080;
# backward: grad-weights 1,070,080 + grad-inputs of layers 2, 3: 2·(512·256 + 256·10) = 267,264.
MLP_FORWARD = 2 * (784 * 512 + 512 * 256 + 256 * 10)
MLP_BACKWARD = MLP_FORWARD + 2 * (512 * 256 + 256 * 10)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def render(v: Validation) -> str:
    console = Console(record=True, width=250)
    console.print(v.rich_table())
    return console.export_text()


@pytest.fixture(scope="module")
def seed_sweep():
    calls = []
    v = validate(MnistCNN(), torch.randn(1, 1, 28, 28), batch_sizes=[2, 4, 8], backward=True,
                 repeats=2, warmup=1, progress=lambda *a: calls.append(a))
    return v, calls


# --- FLOPs ----------------------------------------------------------------------------------
def test_seed_net_flops_equal_hand_count_at_every_size(seed_sweep):
    v, _ = seed_sweep
    for row in v.sizes:
        fwd, bwd = row.flops
        assert (fwd.phase, bwd.phase) == ("forward", "backward")
        assert fwd.measured == fwd.expected == fwd.symcx == SEED_FORWARD * row.batch_size
        assert bwd.measured == bwd.expected == bwd.symcx == SEED_BACKWARD * row.batch_size
        assert row.predicted_flops == (SEED_FORWARD + SEED_BACKWARD) * row.batch_size
        assert row.status == "ok" and row.error is None
    assert v.ok and v.failures == []


def test_mlp_sweep_with_backward():
    v = validate(MLP(), torch.randn(3, 784), batch_sizes=[2, 5, 9], backward=True, repeats=2, warmup=0)
    assert [r.batch_size for r in v.sizes] == [2, 5, 9]
    for row in v.sizes:
        assert row.flops[0].measured == MLP_FORWARD * row.batch_size
        assert row.flops[1].measured == MLP_BACKWARD * row.batch_size
    assert v.ok


def test_forward_only_is_inference_and_restores_the_model():
    model = MLP((20, 30, 5))
    model.train()
    v = validate(model, torch.randn(2, 20), batch_sizes=[3, 6], repeats=2, warmup=0)
    for row in v.sizes:
        (check,) = row.flops  # forward only: no backward check
        assert check.measured == 2 * (20 * 30 + 30 * 5) * row.batch_size
    assert not v.backward and "no_grad" in v.run
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())


# --- memory ---------------------------------------------------------------------------------
def test_memory_tracker_matches_hand_counted_bytes():
    # Linear(16, 8), batch 32, float32, one training step. Live at the peak (the end of the
    # step; nothing is freed before it): output 32·8·4 = 1024, loss 4, backward seed 4,
    # grad W 8·16·4 = 512, grad b 8·4 = 32 -> 1576 bytes above the baseline. The baseline
    # is W and b (16·8 + 8)·4 = 544 plus the batch 32·16·4 = 2048 -> 2592.
    hand_peak = 32 * 8 * 4 + 4 + 4 + 8 * 16 * 4 + 8 * 4
    hand_baseline = (16 * 8 + 8) * 4 + 32 * 16 * 4
    v = validate(torch.nn.Linear(16, 8), torch.randn(1, 16), batch_sizes=[32], backward=True, repeats=1, warmup=0)
    row = v.result(32)
    tolerance = 64  # bytes: one cache line; every allocation of this step is listed above
    assert abs(row.peak_bytes - hand_peak) <= tolerance
    assert row.baseline_bytes == row.predicted_baseline_bytes == hand_baseline
    assert row.predicted_bytes == hand_peak


def test_seed_net_memory_prediction_close_to_measurement(seed_sweep):
    v, _ = seed_sweep
    for row in v.sizes:
        assert row.peak_bytes > 0 and row.predicted_bytes > 0
        assert abs(row.memory_rel_error) < 0.01
        # the parameters + the batch t·1·28·28·4 bytes
        assert row.baseline_bytes == SEED_PARAMS * 4 + row.batch_size * 28 * 28 * 4
    assert v.memory_fit.n == 3 and v.memory_fit.r2 > 0.999
    assert v.memory_fit.slope == pytest.approx(1.0, abs=0.01)


class _Pinning(torch.nn.Module):
    """With ``pin``, ``int(x.shape[0])`` fixes the batch during a symbolic trace: analyze interpolates."""

    def __init__(self, pin: bool) -> None:
        super().__init__()
        self.pin = pin
        self.fc = torch.nn.Linear(12, 6)

    def forward(self, x):
        b = int(x.shape[0]) if self.pin else x.shape[0]
        return torch.relu(self.fc(x)) + torch.ones(b, 6)


def test_an_interpolated_analysis_predicts_what_the_symbolic_one_does():
    assert symcx.analyze(_Pinning(pin=True), torch.randn(3, 12)).route == "interpolated"
    sweeps = [validate(_Pinning(pin), torch.randn(3, 12), batch_sizes=[2, 16, 64], backward=True, repeats=1,
                       warmup=0) for pin in (True, False)]
    interpolated, symbolic = sweeps
    assert interpolated.ok and symbolic.ok
    for row, same in zip(interpolated.sizes, symbolic.sizes):
        # by hand: forward 2·t·12·6 = 144·t; backward grad-weight only (x needs no grad), 144·t
        assert [c.measured for c in row.flops] == [144 * row.batch_size] * 2
        assert row.predicted_bytes == same.predicted_bytes
        # W and b (12·6 + 6)·4 bytes, the batch t·12·4
        assert row.predicted_baseline_bytes == row.baseline_bytes == (12 * 6 + 6) * 4 + row.batch_size * 12 * 4


class _Sequence(torch.nn.Module):
    """A GRU over dim 0: the swept size is its length, and its graph grows a cell per step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = torch.nn.GRU(4, 6)

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.slow
def test_a_graph_that_grows_with_t_is_validated():
    # the interpolated route fits the graph per layer and op; its memory comes from Analysis.memory
    v = validate(_Sequence(), torch.randn(3, 2, 4), batch_sizes=[2, 16, 64], repeats=1, warmup=0)
    assert v.ok
    for row in v.sizes:  # by hand, per step: 2·2·4·18 (input) + 2·2·6·18 (hidden) = 720
        assert [c.measured for c in row.flops] == [720 * row.batch_size]
        assert row.predicted_bytes > 0


# --- time -----------------------------------------------------------------------------------
def test_times_are_recorded_and_summarized(seed_sweep):
    v, _ = seed_sweep
    for row in v.sizes:
        assert len(row.times_s) == 2 and all(s > 0 for s in row.times_s)
        lo, hi = sorted(row.times_s)  # two samples, by hand: median the mean, quartiles at 1/4 and 3/4
        assert row.time["min_s"] == lo and row.time["max_s"] == hi
        assert row.time["median_s"] == pytest.approx((lo + hi) / 2)
        assert row.time["q1_s"] == pytest.approx(lo + (hi - lo) / 4)
        assert row.time["q3_s"] == pytest.approx(lo + 3 * (hi - lo) / 4)
        assert row.time["stdev_s"] == pytest.approx((hi - lo) / 2**0.5)
        flops = (SEED_FORWARD + SEED_BACKWARD) * row.batch_size
        assert row.flops_per_s == pytest.approx(flops / ((lo + hi) / 2))


def test_time_fit_is_the_least_squares_line_of_the_medians(seed_sweep):
    v, _ = seed_sweep
    xs = [(SEED_FORWARD + SEED_BACKWARD) * r.batch_size for r in v.sizes]
    ys = [sum(r.times_s) / 2 for r in v.sizes]  # the median of two samples
    slope, intercept = statistics.linear_regression(xs, ys)  # the standard library's, as oracle
    fit = v.time_fit
    assert fit.n == 3
    assert fit.slope == pytest.approx(slope) and fit.intercept == pytest.approx(intercept, abs=1e-12)
    assert fit.r2 == pytest.approx(statistics.correlation(xs, ys) ** 2)  # R² of a line is r²


def test_fit_line_recovers_an_exact_line_and_rejects_degenerate_input():
    f = fit_line([10, 20, 40], [1.5, 2.5, 4.5])  # y = 0.1·x + 0.5
    assert f.slope == pytest.approx(0.1) and f.intercept == pytest.approx(0.5) and f.r2 == pytest.approx(1.0)
    assert fit_line([5], [1.0]) is None
    assert fit_line([5, 5], [1.0, 2.0]) is None
    assert fit_line([1, 2, 3], [3.0, 3.0, 3.0]).r2 is None
    two = fit_line([1, 2], [1.0, 3.0])  # two points: a line, but no R² to speak of
    assert (two.slope, two.intercept, two.r2) == (2.0, -1.0, None)
    with pytest.raises(ValueError):
        fit_line([1, 2], [1.0])


# --- progress, report, JSON, plot -----------------------------------------------------------
def test_progress_is_called_once_per_batch_size(seed_sweep):
    _, calls = seed_sweep
    assert calls == [(1, 3, "t=2 ok"), (2, 3, "t=4 ok"), (3, 3, "t=8 ok")]


def test_json_schema(seed_sweep):
    v, _ = seed_sweep
    doc = json.loads(v.to_json())
    assert doc["schema"] == SCHEMA == "symcx.validation/1"
    assert set(doc) == {
        "schema", "model", "device", "device_name", "torch", "symcx", "backward", "repeats", "warmup",
        "batch_dim", "input_shapes", "run", "formulas", "memory_model", "memory_tracker", "deviations",
        "partial", "sizes", "fits", "failures", "ok", "run_mode", "time_model",
    }
    assert doc["run_mode"] == "graph"  # the default: the traced graph ran beside the model
    assert set(doc["time_model"]) == {"source", "detail", "r2", "formula", "median_abs_error", "worst_abs_error"}
    assert doc["time_model"]["source"] == "fitted"  # no calibration given: in-sample, and said so
    assert doc["partial"] is False  # the sweep was not interrupted
    assert doc["model"] == "MnistCNN" and doc["device"] == "cpu" and doc["backward"] is True
    assert doc["input_shapes"] == [["t", 1, 28, 28]]
    assert doc["formulas"]["forward_flops"] == "23984896*t"
    assert doc["formulas"]["backward_flops"] == "47580416*t"
    assert set(doc["fits"]) == {"time", "memory"}
    assert set(doc["fits"]["time"]) == {"slope", "intercept", "r2", "n"}
    assert doc["ok"] is True and doc["failures"] == []
    assert len(doc["sizes"]) == 3
    for entry, row in zip(doc["sizes"], v.sizes):
        assert set(entry) == {
            "batch_size", "status", "error", "flops", "predicted_flops", "times_s", "time", "flops_per_s",
            "predicted_bytes", "peak_bytes", "baseline_bytes", "predicted_baseline_bytes", "memory_rel_error",
            "graph_matches_eager", "graph_mismatch", "graph_error", "predicted_time_s", "measured_time_s",
            "time_rel_error", "layers",
        }
        assert entry["graph_matches_eager"] is True and entry["graph_mismatch"] is None
        assert {layer["layer"] for layer in entry["layers"]} >= {"conv1", "conv2", "fc1", "fc2"}
        # the graph's step time is the sum of its layers' (every node belongs to one layer row)
        assert sum(layer["measured_s"] for layer in entry["layers"]) == pytest.approx(entry["measured_time_s"])
        assert entry["batch_size"] == row.batch_size and entry["status"] == "ok"
        assert entry["flops"][0] == {"phase": "forward", "symcx": SEED_FORWARD * row.batch_size,
                                     "expected": SEED_FORWARD * row.batch_size,
                                     "measured": SEED_FORWARD * row.batch_size, "ok": True}
        assert entry["peak_bytes"] == row.peak_bytes and entry["times_s"] == list(row.times_s)
        assert set(entry["time"]) == {"median_s", "q1_s", "q3_s", "min_s", "max_s", "stdev_s"}


def test_json_round_trips(seed_sweep):
    v, _ = seed_sweep
    text = v.to_json()
    back = Validation.from_json(text)
    assert back == v and back.to_json() == text
    with pytest.raises(ValueError, match="not a symcx.validation/1 report"):
        Validation.from_json(json.dumps({"schema": "something/2"}))


def test_table_shows_every_size_and_the_fits(seed_sweep):
    v, _ = seed_sweep
    text = render(v)
    assert "MnistCNN" in text and "forward+backward" in text
    assert text.count("= formula") == 3
    assert "time ≈" in text and "memory ≈" in text
    assert "FAIL" not in text


def test_a_flop_mismatch_is_reported_as_a_failure(seed_sweep):
    v, _ = seed_sweep
    row = v.sizes[0]
    wrong = dataclasses.replace(row.flops[0], measured=row.flops[0].expected + 2)
    bad = dataclasses.replace(v, sizes=(dataclasses.replace(row, flops=(wrong, row.flops[1])), *v.sizes[1:]))
    assert not bad.ok
    assert bad.failures == [
        f"t=2 forward: FlopCounterMode measured {2 * SEED_FORWARD + 2:,} FLOPs, "
        f"symcx's formula for it gives {2 * SEED_FORWARD:,} (difference +2)"
    ]
    assert "FAIL" in render(bad)
    assert json.loads(bad.to_json())["ok"] is False


def test_a_known_flop_counter_error_is_listed_not_failed():
    # Depthwise conv Conv2d(8, 8, 3, groups=8) on an 8x8 map -> 6x6 output. FlopCounterMode
    # counts its grad-weight as a dense conv, 2·t·8·8·9·36 = 41,472·t, 8 times the real
    # 2·t·8·1·9·36 = 5,184·t: the backward it reports exceeds symcx's by 36,288·t.
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8))
    v = validate(model, torch.randn(1, 4, 10, 10), batch_sizes=[2, 3], backward=True, repeats=1, warmup=0)
    assert v.ok and v.failures == []
    for row in v.sizes:
        bwd = row.flops[1]
        assert bwd.measured == bwd.expected
        assert bwd.expected - bwd.symcx == (41_472 - 5_184) * row.batch_size
    assert len(v.deviations) == 1 and "grouped convolution" in v.deviations[0]
    text = render(v)
    assert "FCM known error" in text and "FlopCounterMode differs from symcx" in text


def test_plot_writes_a_png(seed_sweep, tmp_path):
    v, _ = seed_sweep
    path = tmp_path / "report.png"
    v.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]  # no temporary file left


# --- faults ---------------------------------------------------------------------------------
class _TinyDevice(TorchDispatchMode):
    """A fake device: any single new tensor over ``cap`` bytes raises OutOfMemoryError."""

    def __init__(self, cap: int, allocated: list) -> None:
        super().__init__()
        self.cap = cap
        self.allocated = allocated

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = tree_leaves((args, kwargs))
        inputs = {x.untyped_storage().data_ptr() for x in leaves if isinstance(x, torch.Tensor)}
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in inputs:  # a new allocation
                nbytes = x.untyped_storage().nbytes()
                self.allocated.append(weakref.ref(x.untyped_storage()))
                if nbytes > self.cap:
                    raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes} bytes")
        return out


@pytest.mark.slow
def test_out_of_memory_at_one_size_is_recorded_and_the_sweep_goes_on(monkeypatch):
    # MLP 32-64-10: the largest tensor at batch t is the hidden activation, 64·4·t bytes
    # (256·t); the largest parameter (and its gradient) is 32·64·4 = 8192 bytes. A 12 KiB cap
    # lets t = 4 and t = 8 run (1 KiB, 2 KiB) and fails t = 64 (16 KiB).
    real = symcx.validation.live_bytes.measure_peak_bytes
    allocated: list = []

    def capped(fn):
        with _TinyDevice(12 * 1024, allocated):
            return real(fn)

    monkeypatch.setattr(measure, "measure_peak_bytes", capped)
    model = MLP((32, 64, 10))
    progress = []
    v = validate(model, torch.randn(2, 32), batch_sizes=[4, 64, 8], backward=True, repeats=2, warmup=0,
                 progress=lambda *a: progress.append(a))
    assert [r.status for r in v.sizes] == ["ok", "oom", "ok"]
    oom = v.result(64)
    assert "out of memory" in oom.error and oom.error.startswith("OutOfMemoryError")
    assert oom.peak_bytes is None and oom.time is None and oom.times_s == ()
    assert all(c.measured is None for c in oom.flops)
    assert oom.predicted_flops == 2 * (32 * 64 + 64 * 10) * 64 + 2 * (32 * 64 + 2 * 64 * 10) * 64
    assert v.result(8).flops[0].measured == 2 * (32 * 64 + 64 * 10) * 8
    assert v.time_fit.n == 2 and v.memory_fit.n == 2  # fits over the sizes that ran
    assert progress[1] == (2, 3, "t=64 oom")
    assert v.ok  # OOM is reported, not a FLOP failure
    # Memory was freed: nothing allocated during the sweep is still alive but the parameters.
    assert all(p.grad is None for p in model.parameters())
    assert allocated and all(ref() is None for ref in allocated)
    assert "t=64: oom: OutOfMemoryError" in render(v)
    assert json.loads(v.to_json())["sizes"][1]["status"] == "oom"


def test_is_oom_recognizes_allocator_messages():
    assert measure.is_oom(torch.OutOfMemoryError("x"))
    assert measure.is_oom(RuntimeError("CUDA error: out of memory"))
    assert not measure.is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


class _Picky(torch.nn.Module):
    """Fails at run time above batch 10; the trace (symbolic sizes, not ints) never tests the size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        if isinstance(x.shape[0], int) and x.shape[0] > 10:
            raise ValueError("batches over 10 are not supported")
        return self.fc(x)


def test_a_model_error_at_one_size_is_recorded_and_the_others_report():
    v = validate(_Picky(), torch.randn(1, 4), batch_sizes=[2, 16, 4], backward=True, repeats=1, warmup=0,
                 run="model")
    assert [r.status for r in v.sizes] == ["ok", "error", "ok"]
    assert v.result(16).error == "ValueError: batches over 10 are not supported"
    assert v.result(4).flops[0].measured == 2 * 4 * 2 * 4  # 2·t·in·out at t = 4
    assert v.run_mode == "model" and v.time_model is None and v.result(4).graph_matches_eager is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_one_clear_error_and_nothing_runs():
    model = torch.nn.Linear(4, 2)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(DeviceError, match="^CUDA is not available: ") as err:
        validate(model, torch.randn(1, 4), device="cuda", batch_sizes=[2])
    assert "\n" not in str(err.value)
    assert calls == []


class _TooBig(torch.nn.Linear):
    """Its first move to a device fails as a model too large for the GPU would."""

    moves = 0

    def to(self, *args, **kwargs):
        type(self).moves += 1
        if type(self).moves == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return super().to(*args, **kwargs)


def test_parameters_that_do_not_fit_are_a_device_error():
    with pytest.raises(DeviceError, match="^the model's parameters do not fit on cpu: OutOfMemoryError"):
        validate(_TooBig(4, 2), torch.randn(1, 4), batch_sizes=[2])


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x"])
def test_unknown_devices_are_errors(device):
    with pytest.raises(DeviceError):
        measure.resolve_device(device)


@pytest.mark.parametrize("kw", [
    {"batch_sizes": []}, {"batch_sizes": [0]}, {"batch_sizes": [2, 2]}, {"batch_sizes": [2.5]},
    {"repeats": 0}, {"warmup": -1},
])
def test_bad_sweep_arguments_are_errors(kw):
    with pytest.raises(SymcxError):
        validate(torch.nn.Linear(4, 2), torch.randn(1, 4), **kw)


def test_make_batch_repeats_rows_of_every_input():
    ids = torch.tensor([[1, 2], [3, 4]])
    x = {"ids": ids, "mask": torch.ones(2, 2)}
    out = measure.make_batch(x, 3, torch.device("cpu"))
    assert out["ids"].tolist() == [[1, 2], [3, 4], [1, 2]] and out["mask"].shape == (3, 2)


# --- CUDA (skipped without a GPU) -----------------------------------------------------------
@cuda
@pytest.mark.cuda
def test_seed_net_on_cuda():
    model = MnistCNN()
    v = validate(model, torch.randn(1, 1, 28, 28), device="cuda", batch_sizes=[1, 16, 64], backward=True,
                 repeats=3, warmup=2)
    assert v.device.startswith("cuda") and "max_memory_allocated" in v.memory_tracker
    for row in v.sizes:
        assert row.status == "ok"
        assert row.flops[0].measured == SEED_FORWARD * row.batch_size
        assert row.flops[1].measured == SEED_BACKWARD * row.batch_size
        assert row.peak_bytes > 0 and row.baseline_bytes >= SEED_PARAMS * 4
    assert next(model.parameters()).device.type == "cpu"  # moved back


@cuda
@pytest.mark.cuda
def test_cuda_out_of_memory_is_recorded():
    free, _ = torch.cuda.mem_get_info()
    width = 4096
    too_big = int(free // (width * 4)) * 2  # the activation alone is twice the free memory
    v = validate(torch.nn.Linear(width, width), torch.randn(1, width), device="cuda",
                 batch_sizes=[8, too_big, 16], repeats=1, warmup=0)
    assert [r.status for r in v.sizes] == ["ok", "oom", "ok"]


# --- robustness: CPU out of memory, sizes too big for the device, Ctrl-C -------------------
_CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 12884901888 bytes. Error code 12 (Cannot allocate memory)")


def _failing_at(monkeypatch, sizes: dict[int, BaseException]) -> None:
    """Make measure.count_flops raise ``sizes[t]`` for the batch sizes listed (t read from the batch)."""
    real = measure.make_batch
    current: list[int] = []

    def make_batch(example, batch, device, batch_dim=0):
        current[:] = [batch]
        return real(example, batch, device, batch_dim)

    real_count = measure.count_flops

    def count_flops(forward, backward):
        if current and current[0] in sizes:
            raise sizes[current[0]]
        return real_count(forward, backward)

    monkeypatch.setattr(measure, "make_batch", make_batch)
    monkeypatch.setattr(measure, "count_flops", count_flops)


@pytest.mark.slow
def test_cpu_out_of_memory_is_recorded_as_oom(monkeypatch):
    _failing_at(monkeypatch, {8: RuntimeError(_CPU_OOM)})
    v = validate(MLP((4, 3, 2)), torch.randn(1, 4), batch_sizes=[2, 8, 4], repeats=1, warmup=0)
    assert [r.status for r in v.sizes] == ["ok", "oom", "ok"]
    assert "DefaultCPUAllocator: can't allocate memory" in v.result(8).error
    assert "OOM" in render(v)
    assert measure.is_oom(MemoryError())


@pytest.mark.slow
def test_sizes_predicted_past_free_memory_are_skipped_unless_forced(monkeypatch):
    # MLP 4-3-2 in eval mode: far below 1 MB at t = 2; at t = 10**7 the input alone is 4·4·10**7 = 160 MB
    monkeypatch.setattr(measure, "available_bytes", lambda dev: 10**8)
    ran: list[int] = []
    real = measure.make_batch

    def make_batch(example, batch, device, batch_dim=0):
        ran.append(batch)
        return real(example, batch, device, batch_dim)

    monkeypatch.setattr(measure, "make_batch", make_batch)
    v = validate(MLP((4, 3, 2)), torch.randn(1, 4), batch_sizes=[2, 10**7], repeats=1, warmup=0)
    # the eager run and the traced graph each build the batch of 2; the skipped size is never built
    assert [r.status for r in v.sizes] == ["ok", "skipped"] and ran == [2, 2]
    skipped = v.result(10**7)
    # baseline: 23 float32 parameters (4·3 + 3 + 3·2 + 2) = 92 B and the input 4·4·10**7 B; 10**8 B = 95.37 MiB
    assert skipped.predicted_baseline_bytes == 92 + 16 * 10**7
    assert skipped.error.startswith("predicted peak ") and "exceeds the 95.37 MiB free on cpu" in skipped.error
    assert "skipped" in render(v) and json.loads(v.to_json())["sizes"][1]["status"] == "skipped"
    _failing_at(monkeypatch, {10**7: RuntimeError(_CPU_OOM)})  # forced: it runs (and here "fails")
    forced = validate(MLP((4, 3, 2)), torch.randn(1, 4), batch_sizes=[10**7], repeats=1, warmup=0, force=True)
    assert [r.status for r in forced.sizes] == ["oom"]


def test_available_bytes_on_cpu_is_the_free_physical_memory():
    import os

    free = measure.available_bytes(torch.device("cpu"))
    assert free == os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") and free > 0


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_sizes(monkeypatch):
    _failing_at(monkeypatch, {8: KeyboardInterrupt()})
    model = MLP((4, 3, 2))
    v = validate(model, torch.randn(1, 4), batch_sizes=[2, 4, 8, 16], repeats=1, warmup=0)
    assert v.partial and [r.batch_size for r in v.sizes] == [2, 4] and v.any_ok
    assert v.result(4).flops[0].measured == 2 * (4 * 3 + 3 * 2) * 4  # 2·t·(in·hidden + hidden·out)
    doc = json.loads(v.to_json())
    assert doc["partial"] is True and len(doc["sizes"]) == 2
    assert Validation.from_json(v.to_json()).partial
    assert "interrupted" in render(v)
    assert model.training  # restored (MLP starts in train mode)


# --- the traced graph itself (run="graph") ----------------------------------------------------
def test_every_size_runs_the_traced_graph_and_it_equals_eager(seed_sweep):
    v, _ = seed_sweep
    assert v.run_mode == "graph" and v.ok
    for row in v.sizes:
        assert row.graph_matches_eager is True and row.graph_error is None
        assert row.measured_time_s > 0 and row.predicted_time_s > 0
        assert row.worst_layers(2) and all(w.predicted_s is not None for w in row.worst_layers(2))
    assert v.time_model.source == "fitted" and "in-sample" in v.time_model.detail
    text = render(v)
    assert "graph = eager" in text and "layers furthest from prediction" in text


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x)


def _launch_only() -> "symcx.validation.Calibration":
    """1 ms per GEMM node, nothing else costs anything."""
    from symcx.validation import Calibration
    from symcx.validation.timing import CLASSES, ClassFit

    return Calibration("by hand", {c: ClassFit(1e-3 if c == "gemm" else 0.0) for c in CLASSES}, 1.0)


def test_step_time_from_a_calibration_file_and_from_a_device_profile(tmp_path):
    # By hand: Linear's forward is one addmm and its backward one mm (the weight gradient; x needs
    # none), so a calibration costing 1 ms per GEMM node and nothing else predicts 2 ms at every t.
    path = tmp_path / "cal.json"
    path.write_text(_launch_only().to_json())
    for calibration in (_launch_only(), str(path)):
        v = validate(_Linear(), torch.randn(1, 16), batch_sizes=[2, 8], backward=True, repeats=1, warmup=0,
                     calibration=calibration)
        assert [r.predicted_time_s for r in v.sizes] == [pytest.approx(2e-3)] * 2
        assert v.time_model.source == "calibration" and v.time_model.detail == "calibrated on by hand"
        assert sum(w.predicted_s for w in v.sizes[0].layers) == pytest.approx(2e-3)
    v = validate(_Linear(), torch.randn(1, 16), batch_sizes=[4], repeats=1, warmup=0, device_profile="h100-sxm")
    # the roofline adds 5 µs per costed node; the two GEMMs alone give 10 µs
    assert v.time_model.source == "device-profile" and v.time_model.r2 is None
    assert v.sizes[0].predicted_time_s >= 2 * 5e-6


@pytest.mark.parametrize("kw, message", [
    ({"run": "eager"}, "run must be 'graph'"),
    ({"calibration": _launch_only(), "device_profile": "l4"}, "not both"),
    ({"device_profile": "a200"}, "unknown device profile"),
    ({"calibration": "/no/such/cal.json"}, "cannot read calibration"),
])
def test_bad_time_sources_are_errors(kw, message):
    with pytest.raises(SymcxError, match=message):
        validate(_Linear(), torch.randn(1, 16), batch_sizes=[2], repeats=1, warmup=0, **kw)


def test_a_graph_that_differs_from_eager_is_a_failure_naming_the_module(monkeypatch):
    from symcx.validation import graph_run

    real = graph_run.trace_training_step

    def corrupted(*args, **kwargs):
        trace = real(*args, **kwargs)
        next(n for n in trace.graph.nodes if n.name == "relu_1").target = torch.ops.aten.sigmoid.default
        return trace

    monkeypatch.setattr(graph_run, "trace_training_step", corrupted)
    v = validate(MnistCNN(), torch.randn(1, 1, 28, 28), batch_sizes=[2], backward=True, repeats=1, warmup=0)
    row = v.sizes[0]
    assert row.graph_matches_eager is False and not v.ok
    # conv1 and conv2 agree; the first module after the broken functional ReLU is dropout1
    assert row.graph_mismatch.startswith("output 0; grad of conv1.weight")
    assert "; first differing module: dropout1 (node " in row.graph_mismatch
    assert v.failures == [f"t=2: the traced graph differs from eager: {row.graph_mismatch}"]


@torch.library.custom_op("symcx_test::fails_at_8", mutates_args=())
def _fails_at_8(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 8:
        raise RuntimeError("fails_at_8 has no kernel for a batch of 8 on this device")
    return x.clone()


@_fails_at_8.register_fake
def _(x):
    return torch.empty_like(x)


class _FailsAt8(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(_fails_at_8(x))


@pytest.mark.slow
def test_an_op_that_fails_on_the_device_is_recorded_and_the_sweep_goes_on():
    v = validate(_FailsAt8(), torch.randn(1, 4), batch_sizes=[2, 8, 4], backward=True, repeats=1, warmup=0)
    assert [r.status for r in v.sizes] == ["ok", "error", "ok"]
    bad = v.result(8)
    assert bad.graph_error == ("the traced graph raised on cpu: RuntimeError: fails_at_8 has no kernel for a "
                               "batch of 8 on this device")
    assert bad.graph_matches_eager is None and bad.measured_time_s is None and bad.predicted_time_s is None
    assert all(v.result(b).graph_matches_eager for b in (2, 4))


class _TwoBranches(torch.nn.Module):
    """A different layer above batch 15: the trace keeps the assumption t <= 15."""

    def __init__(self) -> None:
        super().__init__()
        self.small, self.large = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.small(x) if x.shape[0] <= 15 else self.large(x).relu()


@pytest.mark.parametrize("run", ["graph", "model"])
def test_a_size_the_assumptions_exclude_is_recorded_and_the_sweep_goes_on(run):
    v = validate(_TwoBranches(), torch.randn(1, 4), batch_sizes=[2, 32, 8], backward=True, repeats=1, warmup=0,
                 run=run)
    assert [r.status for r in v.sizes] == ["ok", "excluded", "ok"]
    assert v.result(32).error == ("t=32 is outside what the analysis assumes (t <= 15): its formulas and traced "
                                  "graph do not hold there; not run")
    assert v.result(32).flops[0].measured is None and v.result(32).graph_matches_eager is None
    assert v.result(8).flops[0].measured == 2 * 8 * 4 * 2  # 2·t·in·out
    assert "excluded" in render(v)


def test_an_interpolated_model_has_no_graph_to_run_and_says_so():
    v = validate(_Pinning(pin=True), torch.randn(3, 12), batch_sizes=[2, 4], backward=True, repeats=1, warmup=0)
    assert v.ok and v.time_model is None
    assert all(r.graph_error.startswith("no traced graph to run: the symbolic trace failed") for r in v.sizes)
