"""Guards the tracer records, read as bounds on one size symbol (``t ≤ 15``, ``H ≥ 5``).

Pure sympy: :mod:`symcx.trace` collects the guards from torch's ShapeEnv and asks these
helpers which bound a user can meet, how to print it, and where to re-trace to test it.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy

__all__ = ["as_bound", "tightest", "holds_everywhere", "violating_hints"]


def as_bound(rel: sympy.Basic) -> sympy.Basic:
    """A guard linear in one symbol as ``s >= c`` or ``s <= c`` (integers); others unchanged."""
    syms = list(rel.free_symbols)
    diff = sympy.expand(rel.lhs - rel.rhs)
    if len(syms) != 1 or not diff.is_polynomial(syms[0]) or sympy.degree(diff, syms[0]) != 1:
        return rel
    s = syms[0]
    a, b = diff.coeff(s, 1), diff.coeff(s, 0)
    c = -b / a
    # diff > 0, diff >= 0, diff < 0, diff <= 0, with a's sign deciding the direction
    strict = isinstance(rel, (sympy.StrictGreaterThan, sympy.StrictLessThan))
    greater = isinstance(rel, (sympy.StrictGreaterThan, sympy.GreaterThan)) == bool(a > 0)
    if greater:
        return sympy.Ge(s, sympy.floor(c) + 1 if strict else sympy.ceiling(c))
    return sympy.Le(s, sympy.ceiling(c) - 1 if strict else sympy.floor(c))


def tightest(bounds: list[sympy.Basic]) -> list[sympy.Basic]:
    """Keep the largest lower bound and the smallest upper bound of each symbol."""
    best: dict[tuple[sympy.Symbol, bool], sympy.Basic] = {}
    rest: list[sympy.Basic] = []
    for b in bounds:
        if isinstance(b, (sympy.GreaterThan, sympy.LessThan)) and b.lhs.is_Symbol and b.rhs.is_Number:
            key = (b.lhs, isinstance(b, sympy.GreaterThan))
            old = best.get(key)
            if old is None or (b.rhs > old.rhs if key[1] else b.rhs < old.rhs):
                best[key] = b
        elif b not in rest:
            rest.append(b)
    return list(best.values()) + rest


def holds_everywhere(rel: sympy.Basic) -> bool:
    """True when a guard holds at every probe point ≥ 2 (so it bounds nothing a user will hit)."""
    syms = sorted(rel.free_symbols, key=str)
    for value in (2, 3, 7, 64, 1000, 100003):
        try:
            if not bool(rel.subs({s: value for s in syms})):
                return False
        except TypeError:
            return False
    return True


def violating_hints(guard: sympy.Basic, hints: Mapping[sympy.Symbol, int]) -> dict[str, int] | None:
    """Example sizes (by name) just past ``guard``'s bound, or None when none is found."""
    syms = sorted(guard.free_symbols, key=str)
    if len(syms) != 1 or syms[0] not in hints:
        return None
    s = syms[0]
    for value in (hints[s] * k for k in (2, 3, 4, 8, 16, 64)):
        if not bool(guard.subs(s, value)):
            return {str(s): value}
    return None
