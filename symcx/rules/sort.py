"""Sorting and selection (``other_flops``, comparisons; FlopCounterMode counts none).

A slice of n keys along ``dim`` is sorted with n·⌈log₂ n⌉ comparisons, merge sort's bound (any
comparison sort needs log₂ n! ≈ n·log₂ n). A selection (``topk``, ``kthvalue``, ``median``)
compares each input element once, as ``max`` does (k = 1); a sorted ``topk`` then sorts its k
results, k·⌈log₂ k⌉ per slice. Their backward is a plain ``scatter`` (data movement, 0).

>>> from symcx.rules import lookup
>>> lookup("aten.topk.default").__name__
'topk_flops'
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall
from .registry import rule

__all__ = ["sort_compares", "sort_flops", "topk_flops", "selection_flops"]


def sort_compares(n: sympy.Expr) -> sympy.Expr:
    """Comparisons to sort n keys: n·⌈log₂ n⌉ (0 for n = 1)."""
    n = sympy.sympify(n)
    return n * sympy.ceiling(sympy.log(n, 2))


def _slice(call: OpCall, dim: int) -> tuple[sympy.Expr, sympy.Expr]:
    """(slices, keys per slice) of ``self`` along ``dim`` (a 0-d tensor is one slice of one key)."""
    x = call["self"]
    n = x.shape[dim] if x.shape else sympy.Integer(1)
    return x.numel / n, n


@rule("aten.sort", "aten.argsort", "aten.msort")
def sort_flops(call: OpCall) -> Cost:
    """slices·n·⌈log₂ n⌉ = numel·⌈log₂ n⌉, n the size of ``dim`` (dim 0 for ``msort``)."""
    slices, n = _slice(call, 0 if call.op.startswith("aten.msort") else call.get("dim", -1))
    return Cost(other_flops=slices * sort_compares(n))


@rule("aten.topk")
def topk_flops(call: OpCall) -> Cost:
    """numel (one comparison per input element) + slices·k·⌈log₂ k⌉ when ``sorted``."""
    slices, _ = _slice(call, call.get("dim", -1))
    flops = call["self"].numel
    if call.get("sorted", True):
        flops += slices * sort_compares(call["k"])
    return Cost(other_flops=flops)


@rule("aten.kthvalue", "aten.median", "aten.nanmedian")
def selection_flops(call: OpCall) -> Cost:
    """numel: one comparison per input element (a selection, as ``max``)."""
    return Cost(other_flops=call["self"].numel)
