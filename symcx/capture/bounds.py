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
    """``end <= rows`` for each ``embedding``/``index_select`` whose indices are ``arange(…, end)``.

    GPT-2's ``wpe(arange(L))`` into ``n_positions`` rows implies ``L <= n_positions``; BERT gets
    the bound from a guard, GPT-2 from nothing else.
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
        end = _arange_end(index)
        rows = getattr(getattr(table, "meta", {}).get("val"), "shape", None)
        if end is None or rows is None or not isinstance(dim, int):
            continue
        bound = sympy.Le(trace.expr(end), trace.expr(rows[dim]))
        if bound not in (sympy.true, sympy.false) and bound.free_symbols <= set(trace.user_symbols.values()):
            out.append(as_bound(bound))
    return out


def _arange_end(index: object) -> object | None:
    """The ``end`` of the ``arange(start, end)`` (step 1, start ≥ 0) an index tensor is a view of."""
    while isinstance(index, torch.fx.Node) and index.op == "call_function" and is_op(index.target):
        overload, family = op_names(index.target)
        if family == "aten.arange":
            args = index.args
            if overload == "aten.arange.default":
                return args[0]
            start, end = args[0], args[1]
            step = args[2] if len(args) > 2 else 1
            return end if step == 1 and isinstance(start, int) and start >= 0 else None
        if family not in _SAME_VALUES or not index.args:
            return None
        index = index.args[0]
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
