"""Shared oracles (FlopCounterMode run on the real model) and the suite's global settings.

Hypothesis profiles: ``ci`` (loaded when the environment variable ``CI`` is set, as the CI
script does with ``CI=true``) draws the same examples on every run, so a CI failure
reproduces; ``dev`` (otherwise) draws fresh examples each run, to find new ones. Select one
by hand with ``pytest --hypothesis-profile=ci``.
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
