"""Analysis objects: guards that change the step are kept, and nothing outlives an analysis."""

from __future__ import annotations

import gc
import weakref

import sympy
import torch
from torch import nn

import symcx
from symcx import t


class BranchOnBatch(nn.Module):
    """Runs one more op past a batch of 16: the formula below 16 is wrong past it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x)
        if x.shape[0] > 16:
            y = y * 2
        return y


def test_guard_that_changes_the_step_is_kept():
    a = symcx.analyze(BranchOnBatch(), torch.randn(3, 4))
    assert a.assumptions == [sympy.Le(t, 16)]
    assert a.dropped_guards == []
    # by hand: the Linear's 2·t·4·3 forward FLOPs, and the formula is right at t = 16
    assert a.subs(t=16).forward_flops == 2 * 16 * 4 * 3


def test_analysis_and_its_substitutions_are_collected():
    a = symcx.analyze(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(2, 4))
    refs = [weakref.ref(a)]
    for batch in range(1, 51):
        b = a.subs(t=batch)
        assert b.forward_flops == 2 * 4 * 3 * batch  # fills the per-analysis memos
        b.memory()
        refs.append(weakref.ref(b))
    a.forward_flops, a.memory(), a.layers
    del a, b
    gc.collect()
    assert [r for r in refs if r() is not None] == []
