"""Cost rules: the registry (:mod:`.registry`), the graph walk that applies it (:mod:`.apply`),
and one module per op family, each registering its rules on import.

>>> from symcx.rules import lookup
>>> lookup("aten.mm.default").__name__
'mm_flops'
"""

from __future__ import annotations

from . import amp, attention, conv, foreach, indexing, inplace, matmul, norm, pointwise, pool, rnn, scan, sort
from .apply import annotate_costs
from .registry import ZERO_COST, Rule, is_free, lookup, register, rule

__all__ = ["rule", "register", "lookup", "is_free", "annotate_costs", "ZERO_COST", "Rule"]
