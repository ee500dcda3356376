"""Per-layer rows of a step: a leaf module, or a functional op called directly in a module.

Nodes are grouped by their ``layer``; rows come in the order of their first forward op. A
row's parameters are those whose first forward reader is in it; its saved bytes come from
the memory model (what autograd keeps of its forward for the backward). A row also says
what a write-up asks of a layer: its input and output shapes, weights and biases, whether
it trains, its hyper-parameters, and which backward product is which gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sympy

from .cost import OpCall, TensorInfo
from .opsets import ALIAS_OPS
from .rules import is_free
from .step import FORWARD_PHASES, Node, Step

__all__ = ["LayerRow", "layer_rows", "op_details"]

ZERO = sympy.Integer(0)
#: Labels of the terms of a backward product (``LayerRow.backward_terms``).
GRAD_INPUT, GRAD_WEIGHT = "grad input", "grad weight"
_MATMULS = frozenset({"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"})


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One per-layer row: a leaf module, or a functional op called directly in a module.

    ``derivation`` and ``backward_derivation`` keep the factors of every counted forward and
    backward op unevaluated (``(2, t, 26, 26, 3, 3, 1, 32)``), for write-ups;
    ``backward_terms`` pairs each backward product with what it computes (``"grad input"``,
    ``"grad weight"``, or the op's family where neither applies).

    ``weights`` and ``biases`` split ``params`` (a parameter named ``bias`` or ``*.bias`` is a
    bias); ``weight_shapes`` are the shapes of every parameter of the row, in order.
    ``in_shape`` is the shape of the first tensor the row reads from outside itself (not a
    parameter or buffer), ``out_shape`` the shape of the first value it hands on to the rest
    of the forward (a norm's output, not its saved mean). ``trainable`` is True when every
    parameter of the row trains, False when one is frozen, None without parameters.
    ``details`` are the hyper-parameters of its main op (``k=3×3, s=1, p=0, d=1, g=1``).
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
    in_shape: tuple[sympy.Expr, ...] = ()
    weights: sympy.Expr = ZERO
    biases: sympy.Expr = ZERO
    weight_shapes: tuple[tuple[sympy.Expr, ...], ...] = ()
    trainable: bool | None = None
    details: str = ""
    backward_terms: tuple[tuple[str, tuple[sympy.Expr, ...]], ...] = ()

    def subs(self, values: Mapping[sympy.Symbol, Any]) -> "LayerRow":
        """This row with ``values`` substituted in every expression."""
        def s(e):
            return sympy.sympify(e).subs(values)

        def shape(xs):
            return tuple(s(x) for x in xs)

        exprs = ("forward_flops", "backward_flops", "forward_other_flops", "backward_other_flops",
                 "params", "bytes_out", "saved_bytes", "weights", "biases")
        return dataclasses.replace(
            self, out_shape=shape(self.out_shape), in_shape=shape(self.in_shape),
            weight_shapes=tuple(shape(w) for w in self.weight_shapes), **{k: s(getattr(self, k)) for k in exprs},
            derivation=tuple(map(shape, self.derivation)),
            backward_derivation=tuple(map(shape, self.backward_derivation)),
            backward_terms=tuple((label, shape(f)) for label, f in self.backward_terms),
        )


def _total(nodes: Sequence[Node], key: str) -> sympy.Expr:
    return sympy.Add(*[getattr(v.cost, key) for v in nodes if v.cost is not None])


def _main(out: Any) -> tuple[sympy.Expr, ...] | None:
    """Shape of an op's main output: the tensor, or the first tensor of a tuple (a norm's, not its stats)."""
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, TensorInfo)), None)
    return out.shape if isinstance(out, TensorInfo) else None


def _out_shape(layer: str, fwd: Sequence[Node], readers: Mapping[str, list[Node]]) -> tuple[sympy.Expr, ...]:
    """The row's output: the first value a forward op of another layer reads (autograd's
    ``detach`` copies aside); else the first computing op's main output.

    A norm's saved mean/rstd and its running-stat updates are read by no other layer, so a
    BatchNorm2d row shows ``t×64×h×w``, not ``64``.
    """
    for v in fwd:
        if any(r.layer != layer and r.packet != "aten.detach" for r in readers.get(v.name, ())):
            shape = _main(v.out)
            if shape is not None:
                return shape
    first = next((s for v in fwd if v.packet not in ALIAS_OPS and (s := _main(v.out)) is not None), None)
    if first is None:  # only views: the last one
        first = next((s for v in reversed(fwd) if (s := _main(v.out)) is not None), ())
    return first


def _in_shape(step: Step, layer: str, fwd: Sequence[Node]) -> tuple[sympy.Expr, ...]:
    """Shape of the first tensor the row reads from outside itself, parameters and buffers aside."""
    for v in fwd:
        for name in v.inputs:
            src = step.node(name) if name in step else None
            if src is None or src.layer == layer or src.phase in ("param", "buffer"):
                continue
            shape = _main(src.out)
            if shape is not None:
                return shape
    return ()


def _is_bias(param: str) -> bool:
    return param == "bias" or param.endswith(".bias")


def _param_fields(step: Step, prm: Sequence[Node]) -> dict[str, Any]:
    """weights, biases, weight_shapes, trainable of the row's parameter nodes."""
    names = [v.param or "" for v in prm]
    return dict(
        weights=sympy.Add(*[v.out.numel for v, p in zip(prm, names) if not _is_bias(p)]),
        biases=sympy.Add(*[v.out.numel for v, p in zip(prm, names) if _is_bias(p)]),
        weight_shapes=tuple(v.out.shape for v in prm),
        trainable=all(p in step.trainable for p in names) if prm else None,
    )


def _reaches_param(step: Step, name: str) -> bool:
    """Whether value ``name`` is a parameter, seen through views (``t(t(fc.weight))``)."""
    while name in step:
        v = step.node(name)
        if v.phase == "param":
            return True
        if v.packet not in ALIAS_OPS or not v.inputs:
            return False
        name = v.inputs[0]
    return False


def _term_labels(step: Step, v: Node, has_params: bool) -> list[str]:
    """What each product of backward node ``v`` computes, one label per factor tuple."""
    n = len(v.cost.factors)
    if v.packet == "aten.convolution_backward":
        mask = v.call.get("output_mask", (True, True, False))
        labels = [label for on, label in zip(mask, (GRAD_INPUT, GRAD_WEIGHT)) if on]
        if len(labels) == n:
            return labels
    if v.packet in _MATMULS and n == 1 and has_params:
        return [GRAD_INPUT if any(_reaches_param(step, u) for u in v.inputs) else GRAD_WEIGHT]
    return [v.packet.split(".", 1)[-1]] * n


def _fmt(value: Any) -> str:
    """A size or hyper-parameter as plain text: ints as digits, floats short, sympy as printed."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _dims(values: Any, collapse: bool = True) -> str:
    """``[3, 3] -> "3×3"``; with ``collapse``, equal entries as one (``[1, 1] -> "1"``)."""
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if collapse and items and all(x == items[0] for x in items):
        items = items[:1]
    return "×".join(_fmt(x) for x in items)


def _conv_details(call: OpCall) -> str:
    kernel = call["weight"].shape[2:]
    return (f"k={_dims(kernel, False)}, s={_dims(call['stride'])}, p={_dims(call['padding'])}, "
            f"d={_dims(call['dilation'])}, g={_fmt(call['groups'])}")


def _pool_details(call: OpCall) -> str:
    kernel = call["kernel_size"]
    stride = call.get("stride") or kernel  # an empty stride means the kernel's
    return f"k={_dims(kernel, False)}, s={_dims(stride)}, p={_dims(call.get('padding', 0))}"


def _linear_details(call: OpCall) -> str:
    k, n = call["mat2"].shape
    return f"{_fmt(k)}→{_fmt(n)}"


def _batch_norm_details(call: OpCall) -> str:
    return f"eps={_fmt(call['eps'])}, momentum={_fmt(call.get('momentum'))}"


#: Hyper-parameters of an op family, read from its call by schema name.
_DETAILS: dict[str, Callable[[OpCall], str]] = {
    "aten.convolution": _conv_details,
    "aten._convolution": _conv_details,
    **{f"aten.{p}": _pool_details for p in ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
                                            "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d")},
    **{f"aten.adaptive_{p}": (lambda c: f"out={_dims(c['output_size'], False)}")
       for p in ("avg_pool1d", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d", "max_pool2d")},
    "aten._adaptive_avg_pool2d": lambda c: f"out={_dims(c['output_size'], False)}",
    "aten.addmm": _linear_details,
    "aten.mm": _linear_details,
    "aten.native_dropout": lambda c: f"p={_fmt(c['p'])}",
    # eager CPU dropout draws its keep mask with bernoulli_(1 - p) (Dropout.cpp)
    "aten.bernoulli_": lambda c: f"p={_fmt(round(1 - c['p'], 12))}" if isinstance(c.get("p"), float) else "",
    "aten.native_batch_norm": _batch_norm_details,
    "aten._native_batch_norm_legit": _batch_norm_details,
    "aten._native_batch_norm_legit_no_training": _batch_norm_details,
    "aten.native_layer_norm": lambda c: f"shape={_dims(c['normalized_shape'], False)}, eps={_fmt(c['eps'])}",
    "aten.native_group_norm": lambda c: f"groups={_fmt(c['group'])}, eps={_fmt(c['eps'])}",
    "aten.embedding": lambda c: f"{_fmt(c['weight'].shape[0])}→{_fmt(c['weight'].shape[1])}",
    "aten._log_softmax": lambda c: f"dim={_fmt(c['dim'])}",
    "aten._softmax": lambda c: f"dim={_fmt(c['dim'])}",
}


def op_details(call: OpCall, packet: str) -> str:
    """The hyper-parameters of one op call in a few characters, "" where symcx has no wording.

    Examples
    --------
    >>> from symcx.cost import TensorInfo
    >>> w = TensorInfo((32, 1, 3, 3), "float32", 4)
    >>> op_details(OpCall("aten.convolution.default", {"weight": w, "stride": [1, 1], "padding": [0, 0],
    ...            "dilation": [1, 1], "groups": 1}, None), "aten.convolution")
    'k=3×3, s=1, p=0, d=1, g=1'
    """
    fn = _DETAILS.get(packet)
    if fn is None:
        return ""
    try:
        return fn(call)
    except (KeyError, ValueError, TypeError, AttributeError):  # an overload without these arguments
        return ""


def _details(fwd: Sequence[Node]) -> str:
    """The hyper-parameters of the row's first forward op that has a wording."""
    return next((d for v in fwd if v.call is not None and (d := op_details(v.call, v.packet))), "")


def _row(step: Step, layer: str, nodes: Sequence[Node], saved: Mapping[str, sympy.Expr],
         readers: Mapping[str, list[Node]]) -> LayerRow | None:
    fwd = [v for v in nodes if v.phase in FORWARD_PHASES]
    bwd = [v for v in nodes if v.phase in ("backward", "optimizer")]  # the optimizer row's work comes after
    prm = [v for v in nodes if v.phase == "param"]
    ops = tuple(dict.fromkeys(v.packet for v in fwd or [v for v in bwd if not is_free(v.packet)]
                              if v.packet not in ALIAS_OPS))
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
    if layer == "optimizer":
        kind = "optimizer step"
    terms = tuple((label, f) for v in bwd if v.cost and v.cost.factors
                  for label, f in zip(_term_labels(step, v, bool(prm)), v.cost.factors))
    return LayerRow(
        name=layer, type=kind, ops=ops, out_shape=_out_shape(layer, fwd, readers),
        bytes_out=sympy.Add(*[v.bytes for v in fwd]), saved_bytes=saved.get(layer, ZERO),
        derivation=tuple(f for v in fwd if v.cost for f in v.cost.factors),
        backward_derivation=tuple(f for _, f in terms),
        notes=tuple(dict.fromkeys(v.cost.note for v in fwd + bwd if v.cost and v.cost.note)),
        in_shape=_in_shape(step, layer, fwd), details=_details(fwd), backward_terms=terms,
        **_param_fields(step, prm), **totals,
    )


def layer_rows(step: Step, saved: Mapping[str, sympy.Expr]) -> list[LayerRow]:
    """Per-layer rows in forward order; layers with no cost, parameters or counted ops are left out.

    ``saved`` gives each layer's bytes saved for backward (from the memory model).
    """
    groups: dict[str, list[Node]] = {}
    readers: dict[str, list[Node]] = {}
    for v in step.nodes:  # rows in the order of their first forward op
        if v.phase in FORWARD_PHASES:
            groups.setdefault(v.layer, [])
            for u in v.inputs:
                readers.setdefault(u, []).append(v)
    for v in step.nodes:
        if v.kind != "output" and v.phase != "input":
            groups.setdefault(v.layer, []).append(v)
    rows = (_row(step, layer, nodes, saved, readers) for layer, nodes in groups.items())
    return [row for row in rows if row is not None]
