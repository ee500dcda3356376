"""``symcx.capture.attr_reads``: which watched attributes a block's code reads (block reuse's test for
state that differs between twins). The oracle is the code each module below runs, read by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from symcx.capture import attr_reads
from symcx.capture.attr_reads import reads_logged


class Flagged(nn.Module):
    def __init__(self, index: int, gate: bool) -> None:
        super().__init__()
        self.index, self.gate, self.lin = index, gate, nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)  # a submodule: nn.Module.__getattr__ reads __dict__ for _modules, not the scalars
        return y.relu() if self.gate else y


def test_reads_only_what_the_code_reads_and_gives_the_class_back():
    m = Flagged(3, True)
    with reads_logged(m, {"": frozenset({"index", "gate"}), "lin": frozenset({"in_features"})}) as read:
        m(torch.ones(2))
        assert type(m) is not Flagged and type(m).__name__ == "Flagged" and isinstance(m, Flagged)
    assert read == {"": {"gate"}, "lin": set()}  # F.linear reads the weight, not in_features
    assert type(m) is Flagged and type(m.lin) is nn.Linear


def test_vars_counts_as_reading_everything_watched():
    m = Flagged(3, False)
    with reads_logged(m, {"": frozenset({"index", "gate"})}) as read:
        _ = vars(m)
    assert read == {"": {"index", "gate"}}


def test_the_class_is_given_back_when_the_block_raises():
    m = Flagged(1, True)
    with pytest.raises(RuntimeError):
        with reads_logged(m, {"": frozenset({"gate"})}):
            m(torch.ones(3))  # wrong width: the linear raises
    assert type(m) is Flagged and not attr_reads._WATCH


def test_a_class_that_cannot_be_swapped_counts_as_read(monkeypatch):
    def refuse(cls: type) -> type:
        raise TypeError("__class__ assignment: layouts differ")

    monkeypatch.setattr(attr_reads, "_logging_class", refuse)
    m = Flagged(1, True)
    with reads_logged(m, {"": frozenset({"index"})}) as read:
        m(torch.ones(2))
    assert read == {"": {"index"}} and type(m) is Flagged
