"""Big-O of a cost formula: its leading terms as every symbol grows, coefficients dropped.

>>> from symcx.symbols import symbol
>>> i, j, k, t = (symbol(s) for s in "ijkt")
>>> big_o(6*t*i*j + 6*t*j*k + 4*t*j + 7)
O(i*j*t + j*k*t)
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy

__all__ = ["O", "big_o"]


class O(sympy.Function):
    """Big-O of an expression, kept unevaluated so it prints as ``O(n*N)`` and ``\\mathcal{O}``."""

    nargs = 1

    def _latex(self, printer):
        return r"\mathcal{O}\left(" + printer._print(self.args[0]) + r"\right)"


def _asymptotic(expr: sympy.Expr) -> sympy.Expr:
    """Replace ceiling/floor by their argument: they do not change the growth rate."""
    return expr.replace(lambda e: isinstance(e, (sympy.ceiling, sympy.floor)), lambda e: e.args[0])


def big_o(expr: sympy.Expr, symbols: Iterable[sympy.Symbol] | None = None) -> sympy.Expr:
    """Leading terms of ``expr`` as every symbol grows: coefficients dropped, dominated terms too.

    A monomial is dropped when another has every exponent at least as large and one larger.

    Examples
    --------
    >>> from symcx.symbols import symbol
    >>> t, L = symbol("t"), symbol("L")
    >>> big_o(4*t*L**2 + 8*t*L + 3)
    O(L**2*t)
    """
    expr = sympy.expand(_asymptotic(sympy.sympify(expr)))
    syms = sorted(symbols or expr.free_symbols, key=str)
    if not syms or expr.is_Number:
        return O(sympy.Integer(1))
    try:
        poly_terms = [sympy.Poly(term, *syms).monoms()[0] for term in sympy.Add.make_args(expr)]
    except sympy.PolynomialError:
        return O(expr)
    keep = []
    for m in set(poly_terms):
        dominated = any(o != m and all(a >= b for a, b in zip(o, m)) for o in poly_terms)
        if not dominated:
            keep.append(sympy.Mul(*[s**e for s, e in zip(syms, m)]))
    return O(sympy.Add(*keep))
