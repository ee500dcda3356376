"""Per-layer rows of a step: a leaf module, or a functional op called directly in a module.

Nodes are grouped by their ``layer``; rows come in the order of their first forward op. A
row's parameters are those whose first forward reader is in it; its saved bytes come from
the memory model (what autograd keeps of its forward for the backward).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import sympy

from .cost import TensorInfo
from .opsets import ALIAS_OPS
from .rules import is_free
from .step import FORWARD_PHASES, Node, Step

__all__ = ["LayerRow", "layer_rows"]

ZERO = sympy.Integer(0)


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One per-layer row: a leaf module, or a functional op called directly in a module.

    ``derivation`` and ``backward_derivation`` keep the factors of every counted forward and
    backward op unevaluated (``(2, t, 26, 26, 3, 3, 1, 32)``), for write-ups.
    """

    name: str
    type: str
    ops: tuple[str, ...]
    out_shape: tuple[sympy.Expr, ...]
    forward_flops: sympy.Expr
    backward_flops: sympy.Expr
    forward_other_flops: sympy.Expr
    backward_other_flops: sympy.Expr
    params: sympy.Expr
    bytes_out: sympy.Expr
    saved_bytes: sympy.Expr
    derivation: tuple[tuple[sympy.Expr, ...], ...]
    backward_derivation: tuple[tuple[sympy.Expr, ...], ...] = ()
    notes: tuple[str, ...] = ()

    def subs(self, values: Mapping[sympy.Symbol, Any]) -> "LayerRow":
        """This row with ``values`` substituted in every expression."""
        def s(e):
            return sympy.sympify(e).subs(values)

        def factors(fs):
            return tuple(tuple(s(f) for f in f_) for f_ in fs)

        exprs = ("forward_flops", "backward_flops", "forward_other_flops", "backward_other_flops",
                 "params", "bytes_out", "saved_bytes")
        return dataclasses.replace(
            self, out_shape=tuple(s(x) for x in self.out_shape), **{k: s(getattr(self, k)) for k in exprs},
            derivation=factors(self.derivation), backward_derivation=factors(self.backward_derivation),
        )


def _total(nodes: Sequence[Node], key: str) -> sympy.Expr:
    return sympy.Add(*[getattr(v.cost, key) for v in nodes if v.cost is not None])


def _last_shape(fwd: Sequence[Node]) -> tuple[sympy.Expr, ...]:
    last = next((v.out for v in reversed(fwd) if isinstance(v.out, (TensorInfo, tuple))), None)
    if isinstance(last, tuple):
        last = next((o for o in last if isinstance(o, TensorInfo)), None)
    return last.shape if last is not None else ()


def _row(step: Step, layer: str, nodes: Sequence[Node], saved: Mapping[str, sympy.Expr]) -> LayerRow | None:
    fwd = [v for v in nodes if v.phase in FORWARD_PHASES]
    bwd = [v for v in nodes if v.phase == "backward"]
    prm = [v for v in nodes if v.phase == "param"]
    ops = tuple(dict.fromkeys(v.packet for v in fwd if v.packet not in ALIAS_OPS))
    totals = dict(
        forward_flops=_total(fwd, "flops"),
        backward_flops=_total(bwd, "flops"),
        forward_other_flops=_total(fwd, "other_flops"),
        backward_other_flops=_total(bwd, "other_flops"),
        params=sympy.Add(*[v.out.numel for v in prm]),
    )
    module = fwd[0].module if fwd else ""
    leaf = module == layer and module != ""
    if not leaf and all(is_free(op) for op in ops) and all(v == 0 for v in totals.values()):
        return None
    kind = step.module_types.get(module, "") if leaf else (ops[0].split(".", 1)[-1] if ops else "")
    return LayerRow(
        name=layer, type=kind, ops=ops, out_shape=_last_shape(fwd),
        bytes_out=sympy.Add(*[v.bytes for v in fwd]), saved_bytes=saved.get(layer, ZERO),
        derivation=tuple(f for v in fwd if v.cost for f in v.cost.factors),
        backward_derivation=tuple(f for v in bwd if v.cost for f in v.cost.factors),
        notes=tuple(dict.fromkeys(v.cost.note for v in fwd + bwd if v.cost and v.cost.note)),
        **totals,
    )


def layer_rows(step: Step, saved: Mapping[str, sympy.Expr]) -> list[LayerRow]:
    """Per-layer rows in forward order; layers with no cost, parameters or counted ops are left out.

    ``saved`` gives each layer's bytes saved for backward (from the memory model).
    """
    groups: dict[str, list[Node]] = {}
    for v in step.nodes:  # rows in the order of their first forward op
        if v.phase in FORWARD_PHASES:
            groups.setdefault(v.layer, [])
    for v in step.nodes:
        if v.kind != "output" and v.phase != "input":
            groups.setdefault(v.layer, []).append(v)
    rows = (_row(step, layer, nodes, saved) for layer, nodes in groups.items())
    return [row for row in rows if row is not None]
