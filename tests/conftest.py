"""Shared oracles (FlopCounterMode run on the real model) and the suite's global settings.

Hypothesis profiles: ``ci`` (loaded when the environment variable ``CI`` is set, as the CI
script does with ``CI=true``) draws the same examples on every run, so a CI failure
reproduces; ``dev`` (otherwise) draws fresh examples each run, to find new ones. Select one
by hand with ``pytest --hypothesis-profile=ci``.

Leak guards: a test that leaves process-wide torch state changed (grad mode, default dtype,
oneDNN, …) has it restored and errors at teardown, naming what it changed; after each test
module, ``make_fx`` must still trace ``detach`` as ``detach`` (a flaky run once saw
``alias`` in ``tests/test_trace.py``), else that module errors. A leak then fails its
culprit, not a later test that happens to read the state.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch.utils.flop_counter import FlopCounterMode

# Both profiles derive from hypothesis's "default" profile, not from whatever is loaded now:
# hypothesis itself loads its own "ci" profile on import when CI is in the environment.
settings.register_profile(
    "ci",
    settings.get_profile("default"),
    derandomize=True,  # examples from a fixed seed per test: the same on every run and machine
    database=None,  # nothing replayed from an earlier run's failures
    max_examples=100,
    deadline=None,  # shared CI machines are slow and uneven: no per-example time limit
    suppress_health_check=[HealthCheck.too_slow],  # a timing check would make CI flaky again
    print_blob=True,  # a failure prints @reproduce_failure(...) to replay it anywhere
)
settings.register_profile("dev", settings.get_profile("default"), derandomize=False, deadline=None, print_blob=True)
settings.load_profile("ci" if "CI" in os.environ else "dev")  # set at all, as hypothesis reads it


def fcm_forward_backward(model: torch.nn.Module, x) -> tuple[int, int]:
    """(forward, backward) FLOPs that FlopCounterMode counts on a real training step."""
    args = x if isinstance(x, tuple) else (x,)
    with FlopCounterMode(display=False) as f:
        model(*args)
    forward = f.get_total_flops()
    with FlopCounterMode(display=False) as f:
        out = model(*args)
        out.sum().backward()
    return forward, f.get_total_flops() - forward


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


#: Process-wide torch settings, each read and restored through public API.
_SETTINGS = {
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    "deterministic algorithms": (torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
    "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "autocast cache": (torch.is_autocast_cache_enabled, torch.set_autocast_cache_enabled),
    "oneDNN": (lambda: torch.backends.mkldnn.enabled, lambda v: setattr(torch.backends.mkldnn, "enabled", v)),
    "threads": (torch.get_num_threads, torch.set_num_threads),
}


def _readonly_state() -> dict[str, object]:
    """State a test can leak but a fixture cannot put back: only reported."""
    return {
        "inference mode": torch.is_inference_mode_enabled(),
        "Python kernels of aten.detach": sorted(map(str, torch.ops.aten.detach.default.py_kernels)),
        "type of a new tensor": type(torch.ones(1)).__name__,  # a leaked FakeTensorMode makes it FakeTensor
    }


@pytest.fixture(autouse=True)
def _no_leaked_torch_state():
    """Restore the settings a test changed and fail it, naming each change."""
    before = {name: get() for name, (get, _) in _SETTINGS.items()}
    fixed_before = _readonly_state()
    yield
    after = {name: get() for name, (get, _) in _SETTINGS.items()}
    leaked = [f"{name}: {before[name]!r} -> {after[name]!r}" for name in _SETTINGS if after[name] != before[name]]
    for name, (_, put) in _SETTINGS.items():
        if after[name] != before[name]:
            put(before[name])
    fixed_after = _readonly_state()
    leaked += [f"{k}: {fixed_before[k]!r} -> {fixed_after[k]!r}" for k in fixed_before if fixed_after[k] != fixed_before[k]]
    if leaked:
        pytest.fail("the test left torch state changed (restored where possible): " + "; ".join(leaked))


def _detach_ops_make_fx_records() -> set[str] | None:
    """The detach-like ops ``make_fx`` records for a Linear+ReLU training step (relu saves its
    output); None when symcx does not import (test_layout still runs then)."""
    try:
        from symcx._torch import make_fx
    except ImportError:
        return None
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    params = dict(model.named_parameters())

    def step(params: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = torch.func.functional_call(model, params, (x,))
        return torch.autograd.grad(out.sum(), list(params.values()))

    graph = make_fx(step, tracing_mode="symbolic")(params, torch.randn(2, 3)).graph
    return {str(n.target) for n in graph.nodes} & {"aten.detach.default", "aten.alias.default"}


@pytest.fixture(autouse=True, scope="module")
def _make_fx_still_records_detach():
    """After each module: make_fx traces a saved output's detach as ``detach``, as in a fresh process."""
    yield
    found = _detach_ops_make_fx_records()
    if found is not None and found != {"aten.detach.default"}:
        pytest.fail(f"after this module, make_fx records {sorted(found)} for detach: a test here leaked state")
