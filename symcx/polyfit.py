"""Exact polynomial fits of sizes sampled at concrete points, verified at check points.

The interpolation route (:mod:`symcx.interpolate`) samples each cost and shape at a grid of
sizes; a :class:`Fitter` returns the polynomial of degree ≤ :data:`DEGREE` per symbol through
the grid that every check point agrees with. A symbol's fit variables are the symbol itself and,
after strided ops, its floors ⌊(x + r)/S⌋ (an :data:`Atom` ``(S, r)``): the first choice of
variables that meets every check wins, else :class:`~symcx.errors.TraceError` names the figure.
Arithmetic is in exact fractions.

>>> f = Fitter([{"L": 10}, {"L": 15}, {"L": 20}], [{"L": 12}], ["L"], {"L": [(5, 0)]})
>>> f.one([1, 2, 3, 1], "frames")
floor(L/5) - 1
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any

import sympy

from .errors import TraceError
from .symbols import symbol

__all__ = ["Fitter", "Atom", "DEGREE", "atom_value"]

#: Highest power of each symbol the fit allows (attention is quadratic in L).
DEGREE = 2


#: A fit variable of one symbol: ``(S, r)`` stands for ⌊(x + r)/S⌋; ``(1, 0)`` is the symbol itself.
Atom = tuple[int, int]


def atom_value(x: int, atom: Atom) -> int:
    """The atom's value at size ``x``."""
    return (x + atom[1]) // atom[0]


def _atom_expr(name: str, atom: Atom) -> sympy.Expr:
    """The atom as sympy: the symbol, ⌊(x + r)/S⌋, or ⌈x/S⌉ for r = S − 1 (the same, read more easily)."""
    s, (stride, r) = symbol(name), atom
    if atom == (1, 0):
        return s
    return sympy.ceiling(s / stride) if r == stride - 1 else sympy.floor((s + r) / stride)


def _fraction(value: Any) -> Fraction | None:
    """``value`` as an exact fraction, None when it is not a rational number."""
    value = sympy.sympify(value)
    if value.is_Float:
        value = sympy.Rational(value)
    return Fraction(int(value.p), int(value.q)) if value.is_Rational else None


def _inverse(rows: list[list[int]]) -> tuple[tuple[Fraction, ...], ...] | None:
    """The inverse of a square integer matrix in exact fractions (Gauss-Jordan), None if singular."""
    n = len(rows)
    a = [[Fraction(v) for v in r] + [Fraction(int(i == j)) for j in range(n)] for i, r in enumerate(rows)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col] != 0), None)
        if pivot is None:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        a[col] = [v / a[col][col] for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                f = a[r][col]
                a[r] = [x - f * y for x, y in zip(a[r], a[col])]
    return tuple(tuple(r[n:]) for r in a)


@dataclasses.dataclass(frozen=True)
class _Basis:
    """Monomials of degree ≤ DEGREE in one fit variable per symbol, with the grid's inverse matrix
    and the monomials' values at the check points (exact fractions: a fit is a few products)."""

    monomials: tuple[sympy.Expr, ...]
    inverse: tuple[tuple[Fraction, ...], ...]
    at_checks: tuple[tuple[int, ...], ...]

    @classmethod
    def make(cls, names: Sequence[str], atoms: Sequence[Atom], grid: list[dict], checks: list[dict]) -> _Basis | None:
        """The basis of one choice of variables, None when the grid cannot tell its monomials apart."""
        exps = list(itertools.product(range(DEGREE + 1), repeat=len(names)))

        def row(p: Mapping[str, int]) -> list[int]:
            vals = [atom_value(p[nm], a) for nm, a in zip(names, atoms)]
            return [math.prod(v**e for v, e in zip(vals, ex)) for ex in exps]

        inverse = _inverse([row(p) for p in grid])
        if inverse is None:
            return None
        monomials = tuple(sympy.Mul(*[_atom_expr(nm, a) ** e for nm, a, e in zip(names, atoms, ex)]) for ex in exps)
        return cls(monomials, inverse, tuple(tuple(row(c)) for c in checks))

    def fit(self, values: Sequence[Fraction]) -> tuple[list[Fraction], int | None]:
        """The coefficients through the grid's values, and the first check they miss (None: all agree)."""
        n = len(self.inverse)
        coeffs = [sum(c * v for c, v in zip(r, values[:n])) for r in self.inverse]
        for k, (mono, value) in enumerate(zip(self.at_checks, values[n:])):
            if sum(c * m for c, m in zip(coeffs, mono)) != value:
                return coeffs, k
        return coeffs, None

    def expr(self, coeffs: Sequence[Fraction]) -> sympy.Expr:
        return sympy.Add(*[sympy.Rational(c.numerator, c.denominator) * m for c, m in zip(coeffs, self.monomials)])


class Fitter:
    """Fits values sampled on the grid with polynomials, each verified at the check points.

    Samples come in the order of ``grid + checks``: the grid's determine the polynomial, each
    check point's must agree with it. The variables of a symbol are the symbol itself and, after
    strided ops, the plateaus ``atoms[name]`` (⌊(x + r)/S⌋); the first choice that fits every
    check wins.
    """

    def __init__(self, grid: list[dict[str, int]], checks: list[dict[str, int]], names: list[str],
                 atoms: Mapping[str, Sequence[Atom]] | None = None) -> None:
        choices = [[(1, 0), *(atoms or {}).get(nm, ())] for nm in names]
        self._combos = list(itertools.product(*choices))
        self._bases: dict[tuple[Atom, ...], _Basis | None] = {}
        self.grid, self.checks, self.names = grid, checks, names
        self.size = len(grid)
        self.strided = len(self._combos) > 1

    def bases(self) -> Iterator[_Basis]:
        """The invertible bases, the plain polynomial first; each built when first asked for."""
        for combo in self._combos:
            if combo not in self._bases:
                self._bases[combo] = _Basis.make(self.names, combo, self.grid, self.checks)
            if self._bases[combo] is not None:
                yield self._bases[combo]

    def one(self, samples: Sequence[Any], what: str) -> sympy.Expr:
        """The polynomial through the grid's samples; it must give each check point's sample."""
        values = [_fraction(s) for s in samples]
        if any(v is None for v in values):  # a data-dependent size (u_0) in the samples
            return self._symbolic(samples, what)
        for basis in self.bases():
            coeffs, missed = basis.fit(values)
            if missed is None:
                return basis.expr(coeffs)
        plain = next(self.bases())
        coeffs, missed = plain.fit(values)
        where = ", ".join(f"{k}={v}" for k, v in self.checks[missed].items())
        strided = " nor in the floors of the model's strides" if self.strided else ""
        raise TraceError(
            f"{what} is not a polynomial of degree ≤ {DEGREE} in {self.names}{strided}: "
            f"the grid gives {plain.expr(coeffs)}, the trace at {where} gives {samples[self.size + missed]} "
            f"(neither a cost of higher degree nor a size that steps with the floor of a stride it cannot "
            f"find, has such a formula)"
        )

    def _symbolic(self, samples: Sequence[Any], what: str) -> sympy.Expr:
        """The plain polynomial through samples that hold symbols of their own (a ``u_k`` size)."""
        plain = next(self.bases())
        values = [sympy.sympify(v) for v in samples]
        poly = sympy.Add(*[sympy.Rational(c.numerator, c.denominator) * v * m
                           for r, m in zip(plain.inverse, plain.monomials) for c, v in zip(r, values)])
        for at, sample in zip(self.checks, values[self.size:]):
            if sympy.expand(poly.subs({symbol(k): x for k, x in at.items()}) - sample) != 0:
                where = ", ".join(f"{k}={x}" for k, x in at.items())
                raise TraceError(f"{what} is not a polynomial of degree ≤ {DEGREE} in {self.names}: "
                                 f"the grid gives {poly}, the trace at {where} gives {sample}")
        return sympy.expand(poly)

    def many(self, rows: Sequence[Sequence[sympy.Expr]], what: str) -> list[sympy.Expr]:
        """Fit column by column: ``rows[i]`` are the values at grid point ``i``."""
        if len({len(r) for r in rows}) != 1:
            raise TraceError(f"{what} changes shape with the sizes")
        return [self.one(col, what) for col in zip(*rows)]
