"""Issue 17, item 16 on models: ops whose output size is data-dependent (``unique``, ``bincount``)
get user-facing size names (``u_0``), never the tracer's ``u0``, and their rules count on models
exactly as by hand, with the headline equal to FlopCounterMode's at two sizes per symbol.
"""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx import symbol, t

from .conftest import fcm_forward_backward

U = symbol("u_0")


class UniqueRows(nn.Module):
    """A Linear over the distinct rows of a rounded input (``torch.unique(dim=0)``): u_0 rows."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.unique(x.round(), dim=0))


class BinnedExperts(nn.Module):
    """An MoE router's bookkeeping: tokens per expert with ``bincount`` (u_0 bins), then a Linear
    over the counts; and a cumulative max along the tokens (``cummax``)."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(6, 4)
        self.fc = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        counts = torch.bincount(logits.argmax(-1).flatten())
        return self.fc(counts.float()[:, None]).sum() + logits.cummax(dim=1).values.sum()


def _rows(n_distinct: int, batch: int) -> torch.Tensor:
    """``batch`` rows of 4 integers with exactly ``n_distinct`` distinct rows."""
    base = torch.arange(n_distinct * 4, dtype=torch.float32).reshape(n_distinct, 4)
    return base[torch.arange(batch) % n_distinct]


@pytest.fixture(scope="module")
def unique_rows():
    return symcx.analyze(UniqueRows(), _rows(3, 6))


def test_unique_size_has_a_user_name(unique_rows):
    assert unique_rows.unsupported == {}
    text = " ".join(str(e) for e in (unique_rows.forward_flops, unique_rows.forward_other_flops))
    assert "u_0" in text and "u0" not in text.replace("u_0", "")
    # by hand: fc over u_0 rows, 2·u_0·4·5; unique_dim over t rows of 4: 4t·⌈log₂ t⌉ + 4t
    assert unique_rows.forward_flops == 40 * U
    expected_unique = 4 * t * sympy.ceiling(sympy.log(t, 2)) + 4 * t
    row = next(r for r in unique_rows.layers if "aten.unique_dim" in r.ops)
    assert sympy.simplify(row.forward_other_flops - expected_unique) == 0


@pytest.mark.parametrize(("batch", "distinct"), [(6, 3), (9, 5)])
def test_unique_rows_match_flop_counter_mode(unique_rows, batch, distinct):
    at = unique_rows.subs(t=batch, u_0=distinct)
    assert (int(at.forward_flops), int(at.backward_flops)) == fcm_forward_backward(UniqueRows(), _rows(distinct, batch))
    row = next(r for r in at.layers if "aten.unique_dim" in r.ops)
    assert int(row.forward_other_flops) == 4 * batch * (batch - 1).bit_length() + 4 * batch  # ⌈log₂ t⌉ = bit_length(t-1)


@pytest.fixture(scope="module")
def binned():
    return symcx.analyze(BinnedExperts(), torch.randn(2, 5, 6), dims={"L": 1})


def test_bincount_size_has_a_user_name(binned):
    assert binned.unsupported == {}
    assert U in binned.forward_flops.free_symbols
    assert not any(s.name.startswith("u") and not s.name.startswith("u_") for s in binned.forward_other_flops.free_symbols)
    L = symbol("L")
    rows = {r.name: r for r in binned.layers}
    bincount = next(r for r in binned.layers if "aten.bincount" in r.ops)
    cummax = next(r for r in binned.layers if "aten.cummax" in r.ops)
    # by hand: one add per routed token, t·L; one compare per logit, t·L·4; fc over u_0 bins 2·u_0·1·3
    assert bincount.forward_other_flops == t * L
    assert cummax.forward_other_flops == 4 * t * L
    assert rows["fc"].forward_flops == 6 * U


@pytest.mark.parametrize(("batch", "length"), [(2, 5), (3, 8)])
def test_bincount_model_matches_flop_counter_mode(binned, batch, length):
    model = BinnedExperts()
    x = torch.randn(batch, length, 6)
    bins = int(model.router(x).argmax(-1).max()) + 1  # what bincount's length is on this input
    at = binned.subs(t=batch, L=length, u_0=bins)
    assert (int(at.forward_flops), int(at.backward_flops)) == fcm_forward_backward(model, x)
