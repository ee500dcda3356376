"""The symbols symcx speaks in, and the translation of torch's sympy dialect into plain sympy.

``t`` (batch size), ``n`` (epochs) and ``N`` (training samples) are positive integers.
Every size expression that leaves the tracer passes through :func:`to_plain` so that
no torch-private sympy function (``FloorDiv``, ``PythonMod``, …) reaches a user.
"""

from __future__ import annotations

import functools

import sympy

from ._torch import torch_sympy_functions as tf

__all__ = ["t", "n", "N", "g", "symbol", "to_plain", "width_names"]


def symbol(name: str) -> sympy.Symbol:
    """Return the positive-integer symbol ``name``, the kind symcx uses for every size."""
    return sympy.Symbol(name, positive=True, integer=True)


t = symbol("t")
n = symbol("n")
N = symbol("N")
#: The number of GPUs of a data-parallel step (``Analysis.memory(gpus=g, strategy=...)``).
g = symbol("g")

SEED_LETTERS = "ijklmpqrsuvwxyz"


def width_names(count: int, style: str = "d") -> list[str]:
    """Names for ``count`` layer widths: ``d_0, d_1, …`` or the seed's ``i, j, k, l, …``.

    >>> width_names(3, "letters")
    ['i', 'j', 'k']
    """
    if style == "letters" and count <= len(SEED_LETTERS):
        return list(SEED_LETTERS[:count])
    return [f"d_{k}" for k in range(count)]


def _floor_div(a, b):
    return sympy.floor(a / b)


def _ceil_div(a, b):
    return sympy.ceiling(a / b)


def _true_div(a, b):
    return a / b


def _mod(a, b):
    return sympy.Mod(a, b)


def _identity(a):
    return a


def _translations() -> dict[type, object]:
    """Map torch's private sympy classes to plain sympy constructors (torch-version tolerant)."""
    table = {
        "FloorDiv": _floor_div,
        "CeilDiv": _ceil_div,
        "CleanDiv": _true_div,
        "IntTrueDiv": _true_div,
        "FloatTrueDiv": _true_div,
        "PythonMod": _mod,
        "Mod": _mod,
        "FloorToInt": sympy.floor,
        "CeilToInt": sympy.ceiling,
        "TruncToInt": lambda a: sympy.sign(a) * sympy.floor(abs(a)),
        "PowByNatural": sympy.Pow,
        "FloatPow": sympy.Pow,
        "Identity": _identity,
        "ToFloat": _identity,
        "Max": sympy.Max,
        "Min": sympy.Min,
    }
    return {getattr(tf, name): fn for name, fn in table.items() if hasattr(tf, name)}


@functools.lru_cache(maxsize=None)
def _table() -> tuple[tuple[type, object], ...]:
    return tuple(_translations().items())


@functools.lru_cache(maxsize=65536)
def to_plain(expr: sympy.Expr) -> sympy.Expr:
    """Rewrite torch's sympy functions into plain sympy (``FloorDiv(a, b)`` → ``floor(a/b)``).

    >>> import sympy
    >>> from symcx._torch import torch_sympy_functions
    >>> FloorDiv = torch_sympy_functions.FloorDiv
    >>> to_plain(FloorDiv(sympy.Symbol("x") + 2, 2))
    floor(x/2) + 1
    """
    expr = sympy.sympify(expr)
    if expr.is_Number or expr.is_Symbol:
        return expr
    return _rewrite(expr, dict(_table()), {})


def _rewrite(expr: sympy.Basic, table: dict[type, object], memo: dict[sympy.Basic, sympy.Basic]) -> sympy.Basic:
    """One bottom-up pass of :func:`to_plain` (guards nest deep: one walk, not one per class)."""
    if not expr.args:
        return expr
    done = memo.get(expr)
    if done is not None:
        return done
    args = [_rewrite(a, table, memo) for a in expr.args]
    fn = table.get(type(expr))
    out = fn(*args) if fn is not None else (expr.func(*args) if args != list(expr.args) else expr)
    if isinstance(out, sympy.floor):
        out = _floor_as_ceiling(out)
    memo[expr] = out
    return out


def _floor_as_ceiling(e: sympy.Expr) -> sympy.Expr:
    """``floor((A - r)/q)`` as ``ceiling((A - r + 1)/q) - 1`` for integer-valued A and r ≥ 1: a
    strided conv's ``floor((H - 1)/2) + 1`` then reads ``ceiling(H/2)``. Other floors stay."""
    num, den = sympy.fraction(sympy.together(e.args[0]))
    num = sympy.expand(num)
    constant = num.as_coeff_Add()[0]
    if den.is_Integer and den > 1 and constant < 0 and all(s.is_integer for s in num.free_symbols):
        return sympy.ceiling((num + 1) / den) - 1
    return e
