"""Shared oracles: FlopCounterMode run on the real model."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode


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
