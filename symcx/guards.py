"""Guards the tracer records, read as conditions on the size symbols (``t ≤ 15``, ``H ≥ 5``,
``Eq(Mod(L, 8), 0)``).

Pure sympy: :mod:`symcx.capture.naming` collects the guards from torch's ShapeEnv and asks these
helpers which condition a user can meet, how to print it, and where to re-trace to test it.
Guards are probed numerically (compiled with :func:`sympy.lambdify`): a probe whose evaluation
fails (a division by ``floor(H/4) = 0``, ``nan``, ``zoo``) counts as "does not hold there".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from fractions import Fraction

import sympy
from sympy.printing.pycode import PythonCodePrinter

__all__ = [
    "as_bound", "tightest", "given_divisibility", "holds_everywhere", "violating_hints", "readable", "Pattern", "pattern_of",
    "probe_values",
]

#: How far past its lower bound a symbol is scanned to find an equality's pattern.
SCAN = 192


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


def _divisor(rel: sympy.Basic) -> tuple[sympy.Symbol, int] | None:
    """``(s, k)`` for ``Eq(Mod(s, k), 0)`` (s a multiple of k), else None."""
    if isinstance(rel, sympy.Equality) and rel.rhs == 0 and isinstance(rel.lhs, sympy.Mod):
        s, k = rel.lhs.args
        if s.is_Symbol and k.is_Integer:
            return s, int(k)
    return None


def given_divisibility(bounds: list[sympy.Basic]) -> list[sympy.Basic]:
    """Each condition rewritten knowing the divisibilities among ``bounds``: with ``Eq(Mod(L, 8), 0)``,
    ``8 < L + Mod(7*L, 8)`` reads ``L >= 16`` (L = 8q, q ≥ 2); one that then always holds is dropped.

    >>> import sympy
    >>> L = sympy.Symbol("L", positive=True, integer=True)
    >>> given_divisibility([sympy.Eq(sympy.Mod(L, 8), 0), 8 < L + sympy.Mod(7 * L, 8)])
    [Eq(Mod(L, 8), 0), L >= 16]
    """
    divs = dict(d for d in map(_divisor, bounds) if d is not None)
    out = []
    for rel in bounds:
        syms = rel.free_symbols & divs.keys()
        if _divisor(rel) is not None or len(syms) != 1 or len(rel.free_symbols) != 1:
            out.append(rel)
            continue
        (s,) = syms
        q = sympy.Symbol(f"{s}_q", positive=True, integer=True)
        rewritten = rel.subs(s, divs[s] * q)
        if rewritten is sympy.true:
            continue
        bound = as_bound(rewritten) if isinstance(rewritten, sympy.core.relational.Relational) else rewritten
        if isinstance(bound, (sympy.GreaterThan, sympy.LessThan)) and bound.lhs == q and bound.rhs.is_Integer:
            out.append(type(bound)(s, divs[s] * bound.rhs))
        else:
            out.append(rel)
    return out


def tightest(bounds: list[sympy.Basic]) -> list[sympy.Basic]:
    """Keep the largest lower bound and the smallest upper bound of each symbol, with the
    divisibilities applied (:func:`given_divisibility`); drop repeats."""
    best: dict[tuple[sympy.Symbol, bool], sympy.Basic] = {}
    rest: list[sympy.Basic] = []
    for b in given_divisibility(bounds):
        if isinstance(b, (sympy.GreaterThan, sympy.LessThan)) and b.lhs.is_Symbol and b.rhs.is_Number:
            key = (b.lhs, isinstance(b, sympy.GreaterThan))
            old = best.get(key)
            if old is None or (b.rhs > old.rhs if key[1] else b.rhs < old.rhs):
                best[key] = b
        elif b not in rest:
            rest.append(b)
    return list(best.values()) + rest


class _ExactPrinter(PythonCodePrinter):
    """Python code in exact rationals: ``H/4`` must floor to 1 at H = 4, never to 0.99… → 0."""

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return f"Fraction({expr.p}, {expr.q})"

    _print_Half = _print_Rational

    def _print_Mod(self, expr: sympy.Mod) -> str:
        # sympy prints -8*Mod(x, 7) as "-8*(x) % 7", which Python reads as (-8*x) % 7
        a, b = expr.args
        return f"(({self._print(a)}) % ({self._print(b)}))"


def _compiled(rel: sympy.Basic, syms: list[sympy.Symbol]) -> Callable[..., bool | None]:
    """:func:`_compile`, memoized: a guard is probed by several helpers."""
    return _compile(rel, tuple(syms))


@functools.lru_cache(maxsize=4096)
def _compile(rel: sympy.Basic, syms: tuple[sympy.Symbol, ...]) -> Callable[..., bool | None]:
    """``rel`` as a Python function of ``syms`` in exact arithmetic (integer sizes in, fractions
    within): True/False, or None where it cannot be evaluated (a division by zero, …)."""
    modules = [{"math": math, "floor": math.floor, "ceiling": math.ceil, "Fraction": Fraction}, "math"]
    try:
        fn = sympy.lambdify(syms, rel, modules=modules, printer=_ExactPrinter)
    except Exception:  # noqa: BLE001 - sympy cannot print it as Python: fall back to subs
        fn = None

    def call(*values: int) -> bool | None:
        try:
            if fn is not None:
                out = fn(*(Fraction(v) for v in values))
            else:
                out = rel.subs(dict(zip(syms, values)))
                if out not in (sympy.true, sympy.false):
                    return None
            return bool(out)
        except (ArithmeticError, TypeError, ValueError, OverflowError):  # 1/0, nan, zoo: no answer there
            return None

    return call


def probe_values(lower: int = 2, period: int = 1) -> list[int]:
    """Sizes at which a condition is probed: at and past ``lower``, multiples of ``period``.

    >>> probe_values(5)
    [5, 6, 7, 9, 64, 1000, 100003]
    >>> probe_values(2, 8)
    [8, 16, 24, 40, 64, 1000, 100000]
    """
    start = max(lower, 1)
    first = -(-start // period) * period
    near = [first, first + period, first + 2 * period, first + 4 * period]
    far = [v - v % period for v in (64, 1000, 100003)]
    return sorted({v for v in near + far if v >= start})


def holds_everywhere(
    rel: sympy.Basic, lower: Mapping[sympy.Symbol, int] | None = None,
    periods: Mapping[sympy.Symbol, int] | None = None,
) -> bool:
    """True when a guard holds at every probe point (so it bounds nothing a user will hit).

    Each symbol runs over :func:`probe_values` of its lower bound (default 2) and period (a
    divisibility the trace imposes, default 1); a point where the guard cannot be evaluated
    counts as a point where it does not hold.

    >>> import sympy
    >>> H = sympy.Symbol("H", positive=True, integer=True)
    >>> holds_everywhere(sympy.Mod(7, sympy.floor(H / 4)) >= 0)
    False
    >>> holds_everywhere(sympy.Mod(7, sympy.floor(H / 4)) >= 0, lower={H: 4})
    True
    """
    syms = sorted(rel.free_symbols, key=str)
    if not syms:
        return bool(rel)
    lower, periods = lower or {}, periods or {}
    columns = [probe_values(lower.get(s, 2), periods.get(s, 1)) for s in syms]
    fn = _compiled(rel, syms)
    count = max(len(c) for c in columns)
    points = [[c[min(k, len(c) - 1)] for c in columns] for k in range(count)]
    if len(syms) > 1:  # each symbol small while the others are large, too
        points += [[c[0] if j == i else c[-1] for j, c in enumerate(columns)] for i in range(len(syms))]
    return all(fn(*p) is True for p in points)


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Where a guard holds as one symbol runs over its sizes, the others at their example values.

    ``kind`` is ``"always"``, ``"periodic"`` (holds iff ``s % period == residue``), ``"finite"``
    (holds at the few sizes in ``points`` only) or ``"other"``.
    """

    kind: str
    period: int = 1
    residue: int = 0
    points: tuple[int, ...] = ()


def pattern_of(rel: sympy.Basic, s: sympy.Symbol, at: Mapping[sympy.Symbol, int], lower: int = 2) -> Pattern:
    """The :class:`Pattern` of ``rel`` in ``s`` over ``lower … lower + SCAN``, other symbols at ``at``.

    >>> import sympy
    >>> L = sympy.Symbol("L", positive=True, integer=True)
    >>> pattern_of(sympy.Eq(4 * L, 32 * sympy.floor(L / 8)), L, {})
    Pattern(kind='periodic', period=8, residue=0, points=())
    """
    others = sorted(rel.free_symbols - {s}, key=str)
    fn = _compiled(rel, [s, *others])
    rest = [at.get(o, 2) for o in others]
    sizes = range(max(lower, 1), max(lower, 1) + SCAN)
    truth = [fn(v, *rest) is True for v in sizes]
    if all(truth):
        return Pattern("always")
    held = tuple(v for v, ok in zip(sizes, truth) if ok)
    for period in range(2, SCAN // 3):
        for residue in range(period):
            if all(ok == (v % period == residue) for v, ok in zip(sizes, truth)):
                return Pattern("periodic", period, residue)
    if len(held) <= 8 and (not held or held[-1] < sizes[-1] - SCAN // 4):
        return Pattern("finite", points=held)
    return Pattern("other")


def readable(rel: sympy.Basic) -> sympy.Basic:
    """A condition as a user reads it: ``Mod(e, k) <= 0`` → ``Eq(Mod(e, k), 0)``, ``Mod(7*L, 8)`` →
    ``Mod(L, 8)``, ``Mod(e, k) > 0`` → ``Ne(Mod(e, k), 0)``; others unchanged.

    >>> import sympy
    >>> L = sympy.Symbol("L", positive=True, integer=True)
    >>> readable(sympy.Mod(7 * L, 8) <= 0)
    Eq(Mod(L, 8), 0)
    """
    if not rel.has(sympy.Mod) or not isinstance(rel, sympy.core.relational.Relational):
        return rel
    lhs, rhs = rel.lhs, rel.rhs
    if rhs.is_Number and not lhs.is_Number:
        mod, value, op = lhs, rhs, type(rel)
    elif lhs.is_Number:
        mod, value, op = rhs, lhs, type(rel.reversed)
    else:
        return rel
    coeff, mod = mod.as_coeff_Mul()  # sympy writes Mod(6*L, 8) as 2*Mod(3*L, 4)
    if coeff <= 0 or not isinstance(mod, sympy.Mod) or not mod.args[1].is_Integer:
        return rel
    value = value / coeff
    zero_test = {
        sympy.LessThan: value < 1, sympy.StrictLessThan: value <= 1,
        sympy.Equality: value == 0,
    }
    nonzero_test = {
        sympy.GreaterThan: 0 < value <= 1, sympy.StrictGreaterThan: 0 <= value < 1,
        sympy.Unequality: value == 0,
    }
    if zero_test.get(op) and value >= 0:
        return sympy.Eq(_reduced(mod), 0)
    if nonzero_test.get(op):
        return sympy.Ne(_reduced(mod), 0)
    return op(mod, value)


def _reduced(mod: sympy.Mod) -> sympy.Mod:
    """``Mod(a*s, k)`` as ``Mod(s, k/gcd(a, k))``: the two are zero for the same ``s`` (only
    their zero is compared, never their value)."""
    expr, k = mod.args
    coeff, rest = expr.as_coeff_Mul()
    if coeff.is_Integer and coeff != 0 and rest.free_symbols:
        g = math.gcd(int(coeff), int(k))
        return sympy.Mod(rest, int(k) // g)
    return mod


def violating_hints(guard: sympy.Basic, hints: Mapping[sympy.Symbol, int]) -> dict[str, int] | None:
    """Example sizes (by name) just past ``guard``'s bound, or None when none is found."""
    syms = sorted(guard.free_symbols, key=str)
    if len(syms) != 1 or syms[0] not in hints:
        return None
    s = syms[0]
    fn = _compiled(guard, [s])
    for value in (hints[s] * k for k in (2, 3, 4, 8, 16, 64)):
        if fn(value) is False:
            return {str(s): value}
    return None
