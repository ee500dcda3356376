"""Cumulative ops (scans) and the reductions the reduction table leaves out (``other_flops``).

A scan along ``dim`` does one operation per input element (``cumsum`` is in the reduction
table of :mod:`.pointwise`): ``cumprod`` a multiply, ``cummax``/``cummin`` a compare (their
backward is a ``scatter_add``, counted in :mod:`.indexing`), ``logcumsumexp`` a log-add-exp
(exp, add, log: 3, as ``logsumexp``). ``aminmax`` compares each element twice, ``nansum`` and
``count_nonzero`` test and add each element, ``renorm`` takes each slice's norm and scales it,
``trace`` adds the diagonal. FlopCounterMode counts
none of them.

>>> from symcx.rules import lookup
>>> lookup("aten.cummax.default").__name__
'reduction_1'
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall
from .pointwise import reduction
from .registry import register, rule

__all__ = ["PER_SCANNED_ELEMENT", "trace_flops"]

#: Operations per input element of a scan or reduction, each with its formula.
PER_SCANNED_ELEMENT: dict[str, int] = {
    "aten.cumsum_": 1,  # in place: the running sum
    "aten.cumprod": 1,  # the running product
    "aten.cumprod_": 1,
    "aten.cummax": 1,  # compare with the running max (the index kept beside it)
    "aten.cummin": 1,
    "aten._cummax_helper": 1,  # the CPU kernels cummax and cummin call
    "aten._cummin_helper": 1,
    "aten.logcumsumexp": 3,  # log(exp(y) + exp(x)): exp, add, log
    "aten._logcumsumexp": 3,
    "aten.aminmax": 2,  # a compare with the min and one with the max
    "aten._aminmax": 2,
    "aten.nansum": 2,  # isnan select, add
    "aten.count_nonzero": 2,  # compare with 0, add
    "aten.std_mean": 4,  # as var_mean: subtract mean, square, add, and the mean's add
    "aten.native_norm": 2,  # as norm: power, add
    "aten.renorm": 3,  # each slice's norm (square, add), then a scale
    "aten.renorm_": 3,
}

for _op, _k in PER_SCANNED_ELEMENT.items():
    register(_op, reduction(_k))


@rule("aten.trace")
def trace_flops(call: OpCall) -> Cost:
    """min(rows, columns) adds: the diagonal summed."""
    rows, cols = call["self"].shape
    return Cost(other_flops=sympy.Min(rows, cols))
