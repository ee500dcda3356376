"""Sorting, selection, searching and uniques (``other_flops``, comparisons; FlopCounterMode counts none).

A slice of n keys along ``dim`` is sorted with n·⌈log₂ n⌉ comparisons, merge sort's bound (any
comparison sort needs log₂ n! ≈ n·log₂ n). A selection (``topk``, ``kthvalue``, ``median``)
compares each input element once, as ``max`` does (k = 1); a sorted ``topk`` then sorts its k
results, k·⌈log₂ k⌉ per slice. Their backward is a plain ``scatter`` (data movement, 0).
``mode`` sorts each slice and counts its runs; ``unique`` sorts and compares neighbours (its
output length is data-dependent: a ``u_k`` symbol); ``searchsorted``/``bucketize`` binary-search
each value among n sorted keys, ⌈log₂(n + 1)⌉ compares.

>>> from symcx.rules import lookup
>>> lookup("aten.topk.default").__name__
'topk_flops'
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall, TensorInfo
from .registry import rule

__all__ = [
    "sort_compares", "sort_flops", "topk_flops", "selection_flops", "mode_flops", "unique_flops", "unique_dim_flops",
    "unique_consecutive_flops", "search_compares", "searchsorted_flops", "bucketize_flops",
]


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


@rule("aten.mode")
def mode_flops(call: OpCall) -> Cost:
    """slices·(n·⌈log₂ n⌉ + n): each slice of n keys sorted, then one compare per key to count its runs."""
    slices, n = _slice(call, call.get("dim", -1))
    return Cost(other_flops=slices * (sort_compares(n) + n))


def _unique_extras(call: OpCall, n: sympy.Expr) -> sympy.Expr:
    """n more adds for each of ``return_inverse`` (a prefix sum of the new-value flags) and
    ``return_counts`` (one count per element)."""
    return n * (int(bool(call.get("return_inverse"))) + int(bool(call.get("return_counts"))))


@rule("aten._unique", "aten._unique2")
def unique_flops(call: OpCall) -> Cost:
    """N·⌈log₂ N⌉ + N for the N elements of ``self``: sorted, then each compared with its neighbour;
    + N per inverse or counts asked for. The output's length is data-dependent (a ``u_k`` symbol)."""
    n = call["self"].numel
    return Cost(other_flops=sort_compares(n) + n + _unique_extras(call, n))


@rule("aten.unique_dim")
def unique_dim_flops(call: OpCall) -> Cost:
    """numel·⌈log₂ n⌉ + numel: the n slices along ``dim`` sorted (each compare reads a whole slice),
    then each compared with its neighbour; + n per inverse or counts asked for."""
    x = call["self"]
    n = x.shape[call["dim"]]
    return Cost(other_flops=x.numel * sympy.ceiling(sympy.log(n, 2)) + x.numel + _unique_extras(call, n))


@rule("aten.unique_consecutive", "aten.unique_dim_consecutive")
def unique_consecutive_flops(call: OpCall) -> Cost:
    """numel: each element (or slice along ``dim``) compared with its neighbour; + n per inverse or
    counts asked for, n the elements (or slices)."""
    x, dim = call["self"], call.get("dim")
    n = x.numel if dim is None else x.shape[dim]
    return Cost(other_flops=x.numel + _unique_extras(call, n))


def search_compares(values: sympy.Expr, n: sympy.Expr) -> sympy.Expr:
    """A binary search of each of ``values`` among n sorted keys: ⌈log₂(n + 1)⌉ compares (n + 1 slots)."""
    return values * sympy.ceiling(sympy.log(sympy.sympify(n) + 1, 2))


@rule("aten.searchsorted")
def searchsorted_flops(call: OpCall) -> Cost:
    """values·⌈log₂(n + 1)⌉, n the last dim of ``sorted_sequence`` (a scalar ``self`` is one value)."""
    seq, values = call["sorted_sequence"], call["self"]
    count = values.numel if isinstance(values, TensorInfo) else sympy.Integer(1)
    return Cost(other_flops=search_compares(count, seq.shape[-1] if seq.shape else 1))


@rule("aten.bucketize")
def bucketize_flops(call: OpCall) -> Cost:
    """values·⌈log₂(n + 1)⌉ for the n ``boundaries`` (a scalar ``self`` is one value)."""
    values = call["self"]
    count = values.numel if isinstance(values, TensorInfo) else sympy.Integer(1)
    return Cost(other_flops=search_compares(count, call["boundaries"].numel))
