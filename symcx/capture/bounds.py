"""Which guards bound a formula: each is tested by a concrete re-trace just past its bound.

A guard whose re-trace runs the same ops with the shapes the symbolic formulas give there is
dropped (kept in ``Trace.dropped_guards``); one that changes the graph stays in ``assumptions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .._torch import is_op, op_names
from ..errors import ShapeError, TraceError
from ..guards import violating_hints
from ..symbols import symbol
from .records import Trace
from .recorder import TensorMeta

__all__ = ["drop_guards"]


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
    trace.assumptions, trace.dropped_guards = kept, dropped
    return trace


def _tensor_ops(trace: Trace) -> list[torch.fx.Node]:
    """The aten calls of a trace, without size arithmetic (which only a symbolic trace has)."""
    return [
        n for n in trace.graph.nodes
        if n.op == "call_function" and is_op(n.target) and not op_names(n.target)[1].startswith("aten.sym_")
    ]


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
