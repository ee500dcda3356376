"""Which guards bound a formula: each is tested by a concrete re-trace just past its bound.

A guard whose re-trace runs the same costed ops with the shapes the symbolic formulas give there
is dropped (kept in ``Trace.dropped_guards``); one that changes the graph stays in ``assumptions``.
Bounds no guard states are added: a lookup of ``arange(L)`` into a table of ``P`` rows (a
position embedding) needs ``L <= P``, which fake tensors never check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import sympy
import torch

from .._torch import is_op, op_names
from ..errors import ShapeError, TraceError
from ..guards import as_bound, tightest, violating_hints
from ..opsets import ALIAS_OPS
from ..symbols import symbol
from .records import Trace
from .recorder import TensorMeta

__all__ = ["drop_guards", "index_bounds"]


def drop_guards(trace: Trace, retrace: Callable[[Mapping[str, int]], Trace]) -> None:
    """Move the guards of ``trace`` that do not change the step into ``trace.dropped_guards``.

    ``retrace(values)`` traces the step again with concrete sizes (by symbol name).
    """
    kept, dropped = [], []
    for guard in trace.assumptions:
        beyond = violating_hints(guard, trace.hints)
        if beyond is None:
            kept.append(guard)
            continue
        values = {**{str(s): v for s, v in trace.hints.items()}, **beyond}
        try:
            other = retrace(values)
        except (TraceError, ShapeError):  # the model does not run past the bound: the bound is real
            kept.append(guard)
            continue
        (dropped if _same_graph_at(trace, other, values) else kept).append(guard)
    # not re-traced: a fake lookup past the table's end runs the same ops
    trace.assumptions, trace.dropped_guards = tightest(kept + index_bounds(trace)), dropped
    return trace


#: Ops that pass index values through unchanged (views, copies, casts).
_SAME_VALUES = ALIAS_OPS | {"aten._to_copy", "aten.clone", "aten.contiguous", "aten.lift_fresh_copy"}


def index_bounds(trace: Trace) -> list[sympy.Basic]:
    """``max index + 1 <= rows`` for each ``embedding``/``index_select`` whose indices are positions.

    GPT-2's ``wpe(arange(L))`` into ``n_positions`` rows implies ``L <= n_positions``; OPT's
    ``cumsum(mask) - 1 + 2`` into ``max_positions + 2`` rows the same; BERT gets the bound from a
    guard, these from nothing else (a fake lookup past the table's end runs).
    """
    out: list[sympy.Basic] = []
    for node in trace.graph.nodes:
        if node.op != "call_function" or not is_op(node.target):
            continue
        family = op_names(node.target)[1]
        if family == "aten.embedding" and len(node.args) >= 2:
            table, dim, index = node.args[0], 0, node.args[1]
        elif family == "aten.index_select" and len(node.args) >= 3:
            table, dim, index = node.args
        else:
            continue
        top = _max_index(index, trace)
        rows = getattr(getattr(table, "meta", {}).get("val"), "shape", None)
        if top is None or rows is None or not isinstance(dim, int):
            continue
        bound = sympy.Le(top + 1, trace.expr(rows[dim]))
        if bound not in (sympy.true, sympy.false) and bound.free_symbols <= set(trace.user_symbols.values()):
            out.append(as_bound(bound))
    return out


#: Tensors whose every value is 1 (a default attention mask).
_ONES = {"aten.ones", "aten.ones_like", "aten.new_ones"}


def _int(value: object) -> int | None:
    """``value`` as a Python int, None when it is not a constant integer."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _max_index(index: object, trace: Trace) -> sympy.Expr | None:
    """The largest value of a positions tensor, when it is reached: ``arange(start, end)`` (step 1,
    start ≥ 0) gives end − 1; a cumulative sum of ones along ``dim`` its size there; an added or
    subtracted constant, a product with ones, views and casts carry it. None for anything else."""
    if not (isinstance(index, torch.fx.Node) and index.op == "call_function" and is_op(index.target)):
        return None
    overload, family = op_names(index.target)
    args = index.args
    if family == "aten.arange":
        if overload == "aten.arange.default":
            return trace.expr(args[0]) - 1
        start, step = _int(args[0]), _int(args[2]) if len(args) > 2 else 1
        return trace.expr(args[1]) - 1 if step == 1 and start is not None and start >= 0 else None
    if family == "aten.cumsum" and _family(args[0]) in _ONES:
        shape = trace.shape(args[0].meta["val"])
        return shape[args[1]]
    if family in ("aten.add", "aten.sub") and len(args) == 2 and _int(args[1]) is not None and not index.kwargs:
        top = _max_index(args[0], trace)
        return None if top is None else top + (_int(args[1]) if family == "aten.add" else -_int(args[1]))
    if family == "aten.mul" and len(args) == 2 and _family(args[1]) in _ONES:
        return _max_index(args[0], trace)
    if family in _SAME_VALUES and args:
        return _max_index(args[0], trace)
    return None


def _family(node: object) -> str | None:
    """The op family of an fx call node, None for anything else."""
    if isinstance(node, torch.fx.Node) and node.op == "call_function" and is_op(node.target):
        return op_names(node.target)[1]
    return None


#: Views and their backwards (``aten.slice_backward`` copies a gradient into place): no FLOPs.
_FREE = ALIAS_OPS | {f"{family}_backward" for family in ALIAS_OPS}


def _tensor_ops(trace: Trace) -> list[torch.fx.Node]:
    """The aten calls of a trace that compute or allocate: no size arithmetic (which only a symbolic
    trace has) and no views (``ts[:, None]`` records an ``aten.slice`` over the symbolic batch that
    a concrete trace skips); a view's shape reaches the ops that read it."""
    out = []
    for n in trace.graph.nodes:
        if n.op != "call_function" or not is_op(n.target):
            continue
        family = op_names(n.target)[1]
        if not family.startswith("aten.sym_") and family not in _FREE:
            out.append(n)
    return out


def _same_graph_at(symbolic: Trace, concrete: Trace, values: Mapping[str, int]) -> bool:
    """The concrete trace runs the same ops, with the shapes the symbolic one gives at ``values``."""
    at = {symbol(k): v for k, v in values.items()}
    na, nb = _tensor_ops(symbolic), _tensor_ops(concrete)
    if len(na) != len(nb):
        return False
    for x, y in zip(na, nb):
        if x.target != y.target:
            return False
        vx, vy = x.meta.get("val"), y.meta.get("val")
        if isinstance(vx, TensorMeta) and isinstance(vy, TensorMeta):
            if [e.subs(at) for e in symbolic.shape(vx)] != list(vy.shape):
                return False
    return True
