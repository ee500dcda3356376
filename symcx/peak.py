"""The peak of a live-bytes curve whose points are sympy expressions in the size symbols.

A point is dropped when another is at least as large for every positive integer value of the
symbols; what remains is the peak, ``Max`` of the kept points. Polynomial points (the usual
case) are compared on their coefficients in plain Python; others go through sympy.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any
from fractions import Fraction

import sympy
from sympy.solvers.simplex import InfeasibleLPError, linprog

__all__ = ["peak_points", "max_of", "dominates", "Sum"]


def _dominates(a: sympy.Expr, b: sympy.Expr, symbols: list[sympy.Symbol]) -> bool:
    """True when ``a >= b`` for every positive integer value of the symbols.

    Sufficient test: with every symbol ``s`` written as ``s + 1`` (so it ranges over ``s >= 0``),
    ``a - b`` expands to a polynomial with no negative coefficient. Floors and ceilings of
    sizes are generators too; they are sizes, hence non-negative.
    """
    diff = sympy.expand((a - b).xreplace({s: s + 1 for s in symbols}))
    if diff.is_Number:
        return bool(diff >= 0)
    try:
        return all(c >= 0 for c in sympy.Poly(diff).coeffs())
    except sympy.PolynomialError:
        return False


def dominates(a: sympy.Expr, b: sympy.Expr) -> bool:
    """True when ``a >= b`` is proved for every positive integer value of their symbols (a
    sufficient test: see :func:`_dominates`)."""
    symbols = sorted((sympy.sympify(a) - sympy.sympify(b)).free_symbols, key=str)
    return _dominates(sympy.sympify(a), sympy.sympify(b), symbols)


def _probes(symbols: list[sympy.Symbol], hints: Mapping[sympy.Symbol, int]) -> list[dict]:
    """Symbol values to compare points at: the hints first, then corners of [1, 10**6]."""
    big, one = sympy.Integer(10**6), sympy.Integer(1)
    probes = [{s: sympy.Integer(hints.get(s, 8)) for s in symbols}, {s: one for s in symbols}, {s: big for s in symbols}]
    for s in symbols:
        probes.append({r: (big if r == s else one) for r in symbols})
        probes.append({r: (one if r == s else big) for r in symbols})
    return probes


Monomials = dict[tuple[int, ...], int | Fraction]  # ints where whole: much faster than Fraction


def _monomials(expr: sympy.Expr, symbols: list[sympy.Symbol]) -> Monomials | None:
    """``expr`` as {exponents: coefficient} over ``symbols``, or None when it is no polynomial
    with rational coefficients (floors, ceilings)."""
    index = {s: k for k, s in enumerate(symbols)}
    for expand in (False, True):
        candidate = sympy.expand(expr) if expand else expr
        out: Monomials = {}
        for term, coeff in candidate.as_coefficients_dict().items():
            if not coeff.is_Rational:
                return None
            exps = [0] * len(symbols)
            if term != 1:
                for base, e in term.as_powers_dict().items():
                    if base not in index or not (e.is_Integer and e >= 0):
                        break
                    exps[index[base]] += int(e)
                else:
                    term = 1
            if term != 1:
                break  # a factor that is not a plain symbol: try the expanded form
            key = tuple(exps)
            out[key] = out.get(key, 0) + (int(coeff.p) if coeff.q == 1 else Fraction(int(coeff.p), int(coeff.q)))
        else:
            return out
    return None


def _evaluate(mono: Monomials, point: tuple[int, ...]) -> int | Fraction:
    return sum(c * math.prod(v**e for v, e in zip(point, exps)) for exps, c in mono.items())


@functools.lru_cache(maxsize=4096)
def _shifted_monomial(exps: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], int], ...]:
    """The monomial with exponents ``exps`` at every symbol ``s + 1``: (exponents, coefficient) pairs."""
    return tuple((ks, math.prod(math.comb(e, k) for e, k in zip(exps, ks)))
                 for ks in itertools.product(*(range(e + 1) for e in exps)))


def _shift(mono: Monomials) -> Monomials:
    """The polynomial with every symbol ``s`` replaced by ``s + 1`` (binomial expansion)."""
    out: Monomials = {}
    for exps, c in mono.items():
        for ks, binomial in _shifted_monomial(exps):
            out[ks] = out.get(ks, 0) + c * binomial
    return out


class Sum:
    """A sum kept as {term: coefficient} (sympy's own split, ``as_coefficients_dict``), its
    expression made only when asked: building sympy expressions is what a long walk spends on."""

    __slots__ = ("terms", "_expr")

    def __init__(self, terms: Mapping[sympy.Expr, sympy.Expr]) -> None:
        self.terms = {k: c for k, c in terms.items() if c != 0}
        self._expr: sympy.Expr | None = None

    def expr(self) -> sympy.Expr:
        if self._expr is None:
            self._expr = sympy.Add(*[c * k for k, c in self.terms.items()])
        return self._expr


def _term_monomial(term: sympy.Expr, index: Mapping[sympy.Symbol, int]) -> tuple[int, ...] | None:
    """The exponents of a product of symbols (``t*L**2`` → (2, 1) over (L, t)), else None."""
    exps = [0] * len(index)
    if term != 1:
        for base, e in term.as_powers_dict().items():
            if base not in index or not (e.is_Integer and e >= 0):
                return None
            exps[index[base]] += int(e)
    return tuple(exps)


def _sum_monomials(point: Sum, symbols: list[sympy.Symbol]) -> Monomials | None:
    """A :class:`Sum` as monomials without making its expression, else None (then the expression's route)."""
    index = {s: k for k, s in enumerate(symbols)}
    out: Monomials = {}
    for term, coeff in point.terms.items():
        key = _term_monomial(term, index)
        if key is None or not coeff.is_Rational:
            return None
        out[key] = out.get(key, 0) + (int(coeff.p) if coeff.q == 1 else Fraction(int(coeff.p), int(coeff.q)))
    return out


def _as_points(points: list[tuple[str, "sympy.Expr | Sum"]]) -> tuple[list, list[str]]:
    """The distinct points (the first node of each kept) as :class:`Sum` or expressions."""
    unique: dict[Any, tuple[str, Any]] = {}
    for node, p in points:
        p = p if isinstance(p, Sum) else sympy.sympify(p)
        unique.setdefault(frozenset(p.terms.items()) if isinstance(p, Sum) else p, (node, p))
    return [p for _, p in unique.values()], [n for n, _ in unique.values()]


def peak_points(
    points: list[tuple[str, "sympy.Expr | Sum"]], hints: Mapping[sympy.Symbol, int]
) -> tuple[list[tuple[str, sympy.Expr]], str]:
    """Points no other point dominates (largest at ``hints`` first), and the node largest at ``hints``.

    A point is dropped when another is at least as large at every probe and :func:`_dominates`
    proves it for all sizes; the probes only spare the proof where it would fail anyway.
    Polynomial points (the usual case) are compared on their coefficients, in plain Python;
    a :class:`Sum` is made an expression only if it is kept or is no polynomial.
    """
    if not points:
        return [("", sympy.S.Zero)], ""
    raw, nodes = _as_points(points)
    free = [set().union(*(k.free_symbols for k in p.terms)) if isinstance(p, Sum) else p.free_symbols for p in raw]
    symbols = sorted(set().union(*free), key=str)
    probes = _probes(symbols, hints)
    monos: list[Monomials | None] = []
    exprs: list[Any] = []  # a polynomial Sum stays one; any other point is its expression
    for p in raw:
        m = _sum_monomials(p, symbols) if isinstance(p, Sum) else None
        exprs.append(p if m is not None else p.expr() if isinstance(p, Sum) else p)
        monos.append(m if m is not None else _monomials(exprs[-1], symbols))
    values = [
        tuple(_evaluate(m, tuple(int(p[s]) for s in symbols)) for p in probes) if m is not None
        else tuple(e.xreplace(p) for p in probes)
        for e, m in zip(exprs, monos)
    ]
    ranked = sorted(range(len(exprs)), key=lambda i: -values[i][0])

    def expr(i: int) -> sympy.Expr:
        return exprs[i].expr() if isinstance(exprs[i], Sum) else exprs[i]

    shifted = {i: _shift(m) for i, m in enumerate(monos) if m is not None}

    def dominates(j: int, i: int) -> bool:
        if i in shifted and j in shifted:
            a, b = shifted[j], shifted[i]
            return all(a.get(k, 0) - b.get(k, 0) >= 0 for k in a.keys() | b.keys())
        return _dominates(expr(j), expr(i), symbols)

    kept: list[int] = []
    for i in ranked:
        if any(all(map(operator.ge, values[j], values[i])) and dominates(j, i) for j in kept):
            continue
        kept.append(i)
    if len(kept) > 2 and all(i in shifted for i in kept):
        kept = _envelope(_inner_points_dropped(kept, shifted), shifted, values)
    return [(nodes[i], expr(i)) for i in kept], nodes[ranked[0]]


def _direction(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The direction from ``a`` to ``b``, divided by the gcd of its entries (the sign kept)."""
    d = tuple(y - x for x, y in zip(a, b))
    g = math.gcd(*d)
    return tuple(v // g for v in d) if g else d


def _inner_points_dropped(kept: list[int], shifted: Mapping[int, Monomials]) -> list[int]:
    """Drop each point that lies on the segment between two others still kept (exactly collinear:
    ``b - c = μ·(c - a)``, μ > 0). Identical blocks make such lines, one point per block and op:
    the inner ones are never above both ends. Each drop is checked against the points still kept,
    so the ``Max`` of what remains is the ``Max`` of all."""
    keys = sorted(set().union(*(shifted[i].keys() for i in kept)))
    scale = math.lcm(*(int(c.denominator) for i in kept for c in shifted[i].values())) or 1
    vec = {i: tuple(int(shifted[i].get(k, 0) * scale) for k in keys) for i in kept}
    out = list(kept)
    for c in reversed(kept):  # the smallest at the hints first
        # c is inside a segment a-b when the directions from c to a and to b are opposite
        away = {_direction(vec[c], vec[a]) for a in out if a != c}
        if any(tuple(-v for v in d) in away for d in away):
            out.remove(c)
    return out


def _between(a: Monomials, b: Monomials, c: Monomials) -> bool:
    """Whether some λ in [0, 1] makes ``(1-λ)·a + λ·b`` at least ``c`` coefficient by coefficient
    (shifted polynomials: then ``c <= max(a, b)`` at every size, since ``c`` is below a point of
    the segment from ``a`` to ``b``). Each coefficient bounds λ on one side; the bounds must meet."""
    lo, hi = Fraction(0), Fraction(1)
    for k in a.keys() | b.keys() | c.keys():
        ak, bk, ck = a.get(k, 0), b.get(k, 0), c.get(k, 0)
        slope, need = bk - ak, ck - ak  # λ·slope >= need
        if slope == 0:
            if need > 0:
                return False
        elif slope > 0:
            lo = max(lo, Fraction(need) / slope)
        else:
            hi = min(hi, Fraction(need) / slope)
        if lo > hi:
            return False
    return True


def _envelope(kept: list[int], shifted: Mapping[int, Monomials], values: list[tuple]) -> list[int]:
    """Drop each point below a segment between two others still kept (see :func:`_between`).

    The segments tried end at any two kept points when they are few (:data:`_ALL_SEGMENTS`),
    else at the points largest at some probe (the envelope's corners), which are never dropped.
    """
    corners = set(max(kept, key=lambda i: values[i][p]) for p in range(len(values[kept[0]])))
    out = list(kept)
    for c in reversed(kept):
        if c in corners:
            continue
        ends = [i for i in out if i != c and i in corners]
        if any(_between(shifted[a], shifted[b], shifted[c]) for a, b in itertools.combinations(ends, 2)):
            out.remove(c)
    if len(out) <= _HULL_POINTS and len(set().union(*(shifted[i] for i in out))) <= _HULL_MONOMIALS:
        for c in reversed(list(out)):
            if _below_hull(shifted[c], [shifted[i] for i in out if i != c]):
                out.remove(c)
    return out


def _below_hull(c: Monomials, others: list[Monomials]) -> bool:
    """Whether a convex combination of ``others`` is at least ``c`` coefficient by coefficient (an
    exact linear program, sympy's simplex): then ``c`` is never above all of them at once."""
    if len(others) < 2:
        return False
    keys = sorted(set(c).union(*others))
    A = sympy.Matrix([[-o.get(k, 0) for o in others] for k in keys])
    b = sympy.Matrix([-c.get(k, 0) for k in keys])
    try:
        linprog(sympy.Matrix([0] * len(others)), A, b, sympy.ones(1, len(others)), sympy.Matrix([1]))
    except InfeasibleLPError:
        return False
    return True


#: Up to this many points, each is tested against the convex hull of the others, when the points
#: have at most this many monomials between them (t and L: 6 for a Llama): with every layer width a
#: symbol, sympy's exact simplex pivots for seconds per program, and the test only shortens the Max.
_HULL_POINTS = 24
_HULL_MONOMIALS = 10


def max_of(exprs: Iterable[sympy.Expr]) -> sympy.Expr:
    """``Max`` of points already known not to dominate each other (sympy's own pairwise
    comparison of them is slow and finds nothing more)."""
    args = list(exprs)
    return args[0] if len(args) == 1 else sympy.Max(*args, evaluate=False)
