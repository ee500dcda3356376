"""Memory budgets: ``"16GiB"``-style strings as bytes, and the largest size whose peak fits one.

Pure sympy and the standard library (layer 0): :mod:`symcx.memory` and :mod:`symcx.serving` use
both functions for batch, context and block searches.
"""

from __future__ import annotations

import numbers
import re
from fractions import Fraction

import sympy

from .errors import SymcxError
from .symbols import t

__all__ = ["parse_bytes", "max_batch_size"]

ZERO = sympy.Integer(0)


#: Bytes per unit of a budget string: decimal (powers of 1000) and binary (powers of 1024).
_BYTE_UNITS = {"b": 1, **{f"{p}b": 1000 ** (i + 1) for i, p in enumerate("kmgtp")},
               **{f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgtp")}}
_BUDGET = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)
_BUDGET_FORMS = ("bytes as an int, or a string such as '16GB', '16GiB', '512 MiB', '1.5GB' "
                 "(B, KB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024)")


def parse_bytes(budget: int | str) -> int:
    """A memory budget in bytes: an int is bytes, a string a number and a unit (rounded down).

    >>> parse_bytes(1024), parse_bytes("1KiB"), parse_bytes("1.5GB"), parse_bytes("512 MiB")
    (1024, 1024, 1500000000, 536870912)
    """
    if isinstance(budget, str):
        match = _BUDGET.fullmatch(budget)
        unit = match[2].lower() if match else ""
        if match is None or unit not in _BYTE_UNITS and unit:
            raise SymcxError(f"cannot read the budget {budget!r}: give {_BUDGET_FORMS}")
        return int(Fraction(match[1]) * _BYTE_UNITS[unit or "b"])
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise SymcxError(f"the budget must be {_BUDGET_FORMS}; not {budget!r}")
    if budget < 0:
        raise SymcxError(f"the budget must be a number of bytes >= 0, not {budget!r}")
    return int(budget)


def max_batch_size(peak: sympy.Expr, budget_bytes: int | str, symbol: sympy.Symbol = t) -> int:
    """Largest integer ``symbol`` (≥ 1) with ``peak <= budget_bytes``, or 0 if none.

    ``budget_bytes`` is bytes, or a string such as ``"16GiB"`` (see :func:`parse_bytes`).

    The peak must depend on no other symbol and never decrease as ``symbol`` grows: checked
    as a sum of polynomials and ``Max`` of polynomials whose coefficients of ``symbol`` are
    non-negative. Exponential search for a batch that does not fit, then bisection.

    >>> from symcx.symbols import t
    >>> max_batch_size(1000*t + 24, 16 * 2**30)
    17179869
    """
    peak = sympy.sympify(peak)
    budget_bytes = parse_bytes(budget_bytes)
    others = peak.free_symbols - {symbol}
    if others:
        names = ", ".join(sorted(map(str, others)))
        raise SymcxError(f"the peak also depends on {names}; substitute them first (Analysis.subs({names.split(', ')[0]}=...))")
    if symbol not in peak.free_symbols:
        raise SymcxError(f"the peak does not depend on {symbol} (was it substituted already?)")
    maxes = peak.atoms(sympy.Max)
    for term in [peak.xreplace({m: ZERO for m in maxes}), *(arg for m in maxes for arg in m.args)]:
        try:
            rising = all(c >= 0 for c in sympy.Poly(sympy.expand(term), symbol).all_coeffs()[:-1])
        except sympy.PolynomialError:
            rising = False
        if not rising:
            raise SymcxError(f"the peak {peak} may decrease as {symbol} grows; no batch search is exact for it")

    def fits(value: int) -> bool:
        return bool(peak.subs(symbol, value) <= budget_bytes)

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
