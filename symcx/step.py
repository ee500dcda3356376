"""Typed records of a traced step: one :class:`Node` per fx node, its storages, and the step's symbols.

Every layer above reads these fields, never string-keyed graph attributes. Built once from a
:class:`~symcx.capture.Trace` by :func:`build_step`: sizes become sympy in user symbols, op
arguments are bound to their schema names (:class:`~symcx.cost.OpCall`), backward nodes get
the module and layer of the forward op that caused them, and aliasing is resolved: each
output is a storage key, shared by views, in-place and ``out=`` ops (the schema's alias
annotations). The ``networkx.DiGraph`` (``Step.graph``) has one node per record (attribute
``"node"``) and an edge along each data flow.

Phases: ``input``, ``param``, ``buffer``, ``state`` (optimizer state the step reads),
``forward``, ``loss`` (the scalar reduction and the grad seed), ``backward``, ``optimizer``
(``optimizer.step()`` and ``zero_grad``, when the iteration was traced with one), ``output``.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator
from typing import Any

import networkx as nx
import sympy
import torch

from ._torch import op_names, op_schema
from .capture import TensorMeta, Trace
from .cost import Cost, OpCall, TensorInfo, bind_arguments
from .opsets import ALIAS_OPS

__all__ = ["Node", "Storage", "Step", "build_step", "storage_keys", "traffic", "FORWARD_PHASES"]

ZERO = sympy.Integer(0)
#: Phases whose FLOPs count as the forward of a step.
FORWARD_PHASES = ("forward", "loss")


@dataclasses.dataclass(eq=False)
class Node:
    """One fx node of the step.

    ``op`` is the overload (``"aten.convolution.default"``), ``packet`` its family
    (``"aten.convolution"``); placeholders and the output use ``kind`` for both. ``layer`` is
    the per-layer row key: a leaf module's path, or ``<module>.<node>`` for a functional op.
    ``out`` is a ``TensorInfo`` (or a tuple of them, or a size); ``bytes`` the new storage it
    writes; ``value`` its outputs as storage keys, shaped like ``out`` (None where no tensor).
    ``cost`` is set by :func:`symcx.rules.apply.annotate_costs` (None: not costed, or
    ``unsupported``); ``grouped`` counts the ops an interpolated group node stands for;
    ``recompute`` marks a checkpointed forward op run again in the backward.
    """

    name: str
    kind: str
    op: str
    packet: str
    phase: str
    order: int
    module: str = ""
    layer: str = ""
    seq_nr: int | None = None
    call: OpCall | None = None
    out: Any = None
    bytes: sympy.Expr = ZERO
    param: str | None = None
    source: str | None = None
    inputs: tuple[str, ...] = ()
    value: Any = None
    cost: Cost | None = None
    unsupported: bool = False
    grouped: int = 1
    recompute: bool = False


@dataclasses.dataclass(frozen=True)
class Storage:
    """One tensor storage: the node that allocates it and the tensor it holds."""

    key: str
    node: str
    info: TensorInfo


@dataclasses.dataclass
class Step:
    """A traced training step as typed records, and what the formulas are in.

    ``route`` says how it was obtained (``"symbolic"`` or ``"interpolated"``, with
    ``fallback_reason``); nothing above the route layer branches on it.
    """

    nodes: tuple[Node, ...]
    storages: dict[str, Storage]
    user_symbols: dict[str, sympy.Symbol]
    hints: dict[sympy.Symbol, int]
    trainable: frozenset[str]
    assumptions: list[sympy.Basic]
    dropped_guards: list[sympy.Basic]
    module_types: dict[str, str]
    leaf_modules: frozenset[str]
    route: str = "symbolic"
    fallback_reason: str | None = None
    notes: tuple[str, ...] = ()
    optimizer: str | None = None
    precision: str = "as given"
    accumulate: int = 1  # micro-batches per optimizer step (the memory of more than one is traced apart)
    deaths: dict[str, int] = dataclasses.field(default_factory=dict)  # node -> order when its storage died

    def __post_init__(self) -> None:
        self._by_name = {v.name: v for v in self.nodes}

    def node(self, name: str) -> Node:
        """The record named ``name``."""
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def calls(self) -> Iterator[Node]:
        """The op calls (``kind == "call_function"``), in program order."""
        return (v for v in self.nodes if v.kind == "call_function")

    @property
    def graph(self) -> nx.DiGraph:
        """The step as a ``networkx.DiGraph``: node attribute ``"node"`` is the record; edges are data flow."""
        G = nx.DiGraph()
        for v in self.nodes:
            G.add_node(v.name, node=v)
            G.add_edges_from((u, v.name) for u in v.inputs)
        return G


def storage_keys(value: Any) -> Iterator[str]:
    """Every storage key in a node's ``value`` (nested tuples; None where no tensor)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from storage_keys(v)


def traffic(node: Node) -> sympy.Expr:
    """Bytes a call node moves: its tensor arguments read, and the new storage it writes."""
    read = sympy.Add(*[x.nbytes for x in (node.call.tensors if node.call else ())])
    return read + sympy.sympify(node.bytes)


#: Argument types ``_info`` returns as they are.
_PLAIN = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format})


def _info(trace: Trace, value: Any, tracked: frozenset[str] | set[str] = frozenset(), grad: bool = False,
          memo: dict | None = None) -> Any:
    """Tensor snapshots become ``TensorInfo``; sizes become sympy in user symbols; containers recurse.

    ``tracked`` names the fx nodes autograd tracks; ``grad`` marks the value being converted.
    ``memo`` keeps one ``TensorInfo`` per snapshot (a replayed block's copies share their template's).
    """
    cls = type(value)
    if cls is torch.fx.Node:
        return _info(trace, value.meta.get("val"), tracked, value.name in tracked, memo)
    if cls in _PLAIN:
        return value
    if cls is TensorMeta:
        grad = grad and value.dtype.is_floating_point
        hit = memo.get((id(value), grad)) if memo is not None else None
        if hit is not None:
            return hit[1]
        info = TensorInfo(trace.shape(value), str(value.dtype).replace("torch.", ""), value.dtype.itemsize, grad)
        if memo is not None:
            memo[(id(value), grad)] = (value, info)  # the snapshot kept, so its id stays its own
        return info
    if isinstance(value, (torch.SymInt, torch.SymFloat, sympy.Expr)):
        return trace.expr(value)
    if isinstance(value, (list, tuple)):
        return type(value)([_info(trace, v, tracked, grad, memo) for v in value])
    return value


def _nbytes(out: Any) -> sympy.Expr:
    if isinstance(out, TensorInfo):
        return out.nbytes
    if isinstance(out, (tuple, list)):
        return sympy.Add(*[_nbytes(o) for o in out])
    return ZERO


def _returns(schema: torch.FunctionSchema, out: Any) -> tuple:
    """The outputs paired one to one with the schema's returns."""
    return out if isinstance(out, (tuple, list)) and len(schema.returns) != 1 else (out,)


def _new_bytes(target: Any, packet: str, out: Any) -> sympy.Expr:
    """Bytes of the outputs that are new storage: a view's, an in-place or ``out=`` op's output
    aliases an input (the schema's alias annotation) and allocates nothing."""
    if packet in ALIAS_OPS:
        return ZERO
    schema = op_schema(target)
    if schema is None:
        return _nbytes(out)
    return sympy.Add(*[_nbytes(o) for r, o in zip(schema.returns, _returns(schema, out)) if r.alias_info is None])


def _aliased_arg(schema: torch.FunctionSchema, ret: Any) -> str | None:
    """Name of the argument a schema return aliases (views, in-place and out= ops), else None."""
    info = ret.alias_info
    if info is None:
        return None
    for arg in schema.arguments:
        if arg.alias_info is not None and arg.alias_info.before_set & info.before_set:
            return arg.name
    return None


class _Storages:
    """Resolves each fx value to storage keys as the step is built (aliasing read once, here)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.storages: dict[str, Storage] = {}
        self.infos: dict[tuple[int, bool], tuple[TensorMeta, TensorInfo]] = {}  # _info's memo

    def fresh(self, node: str, key: str, info: Any) -> str | None:
        if not isinstance(info, TensorInfo):
            return None
        self.storages[key] = Storage(key, node, info)
        return key

    def placeholder(self, name: str, out: Any) -> Any:
        self.values[name] = self.fresh(name, name, out)
        return self.values[name]

    def call(self, node: torch.fx.Node, packet: str, out: Any) -> Any:
        """Storage keys of a call's outputs: an aliased return shares its argument's storage."""
        name = node.name
        if node.target is operator.getitem:
            src, index = self.values.get(node.args[0].name), node.args[1]
            value = src[index] if isinstance(src, (tuple, list)) and index < len(src) else None
        elif (schema := op_schema(node.target)) is None:
            value = None  # a get_attr constant or size arithmetic
        else:
            fx_args = bind_arguments(schema, node.args, node.kwargs)
            outs = _returns(schema, out)
            mapped = []
            for k, (ret, info) in enumerate(zip(schema.returns, outs)):
                arg = _aliased_arg(schema, ret)
                if arg is None and packet in ALIAS_OPS:  # e.g. _unsafe_view: unannotated
                    arg = schema.arguments[0].name
                if arg is not None:
                    src = fx_args.get(arg)
                    base = self.values.get(src.name) if isinstance(src, torch.fx.Node) else None
                    mapped.append(tuple(base for _ in info) if isinstance(info, (tuple, list)) else base)
                elif isinstance(info, (tuple, list)):
                    mapped.append(tuple(self.fresh(name, f"{name}[{k}][{j}]", x) for j, x in enumerate(info)))
                else:
                    mapped.append(self.fresh(name, name if len(outs) == 1 else f"{name}[{k}]", info))
            value = mapped[0] if len(schema.returns) == 1 else tuple(mapped)
        self.values[name] = value
        return value


class _Attribution:
    """Module and layer of each op: forward ops from their module tag, backward ops from the
    forward op with their seq_nr; parameters join the layer of their first forward reader."""

    def __init__(self, trace: Trace) -> None:
        self.leaves = trace.leaf_modules
        self.layer_by_seq: dict[int, str] = {}
        self.module_by_seq: dict[int, str] = {}
        self.first_reader: dict[str, str] = {}

    def place(self, node: torch.fx.Node, phase: str, packet: str, seq: int | None) -> tuple[str, str]:
        """(module, layer) of a call node."""
        if phase == "forward":
            module = (node.meta.get("custom") or {}).get("module", "")
            leaf = module in self.leaves and module != ""
            layer = module if leaf else (f"{module}.{node.name}" if module else node.name)
            if seq is not None and packet not in ALIAS_OPS:
                self.layer_by_seq.setdefault(seq, layer)
                self.module_by_seq.setdefault(seq, module)
            for src in node.all_input_nodes:
                if src.op == "placeholder":
                    self.first_reader.setdefault(src.name, layer)
            return module, layer
        if phase == "backward" and seq in self.layer_by_seq:
            return self.module_by_seq[seq], self.layer_by_seq[seq]
        if phase == "optimizer":
            return "", "optimizer"
        return "", "loss"


def _placeholder(trace: Trace, node: torch.fx.Node, order: int, tracked: set[str], st: _Storages) -> Node:
    if node.name in trace.param_nodes:
        phase, param = "param", trace.param_nodes[node.name]
        if param in trace.trainable:
            tracked.add(node.name)
    elif node.name in trace.buffer_nodes:
        phase, param = "buffer", trace.buffer_nodes[node.name]
    elif node.name in trace.state_nodes:
        phase, param = "state", trace.state_nodes[node.name]
    elif node.name in trace.grad_nodes:  # a gradient zero_grad(set_to_none=False) kept
        phase, param = "grad", trace.grad_nodes[node.name]
    else:
        phase, param = "input", None
    out = _info(trace, node.meta.get("val"), memo=st.infos)
    return Node(node.name, "placeholder", "placeholder", "placeholder", phase, order, param=param, out=out,
                bytes=_nbytes(out), value=st.placeholder(node.name, out))


def _call(trace: Trace, node: torch.fx.Node, order: int, tracked: set[str], st: _Storages, at: _Attribution) -> Node:
    tag = node.meta.get("custom") or {}
    op, packet = op_names(node.target)
    phase = tag.get("phase", "forward")
    seq = tag.get("seq_nr") if phase == "backward" else node.meta.get("seq_nr")
    module, layer = at.place(node, phase, packet, seq)
    if phase in FORWARD_PHASES and any(src.name in tracked for src in node.all_input_nodes):
        tracked.add(node.name)
    args = tuple(_info(trace, a, tracked, memo=st.infos) for a in node.args)
    kwargs = {k: _info(trace, v, tracked, memo=st.infos) for k, v in node.kwargs.items()}
    out = _info(trace, node.meta.get("val"), tracked, node.name in tracked, st.infos)
    return Node(
        node.name, node.op, op, packet, phase, order, module=module, layer=layer, seq_nr=seq,
        call=OpCall(op, bind_arguments(op_schema(node.target), args, kwargs), out), out=out,
        bytes=_new_bytes(node.target, packet, out), source=node.meta.get("source"), recompute=bool(tag.get("recompute")),
        inputs=tuple(src.name for src in node.all_input_nodes), value=st.call(node, packet, out),
    )


def build_step(trace: Trace, *, route: str = "symbolic", fallback_reason: str | None = None) -> Step:
    """Typed records of every node of ``trace.graph``, in program order; costs not yet attached."""
    st, at = _Storages(), _Attribution(trace)
    tracked: set[str] = set()  # forward values that depend on a trainable parameter
    nodes: list[Node] = []
    for order, node in enumerate(trace.graph.nodes):
        if node.op == "placeholder":
            nodes.append(_placeholder(trace, node, order, tracked, st))
        elif node.op == "output":
            nodes.append(Node(node.name, "output", "output", "output", "output", order,
                              inputs=tuple(src.name for src in node.all_input_nodes)))
        else:
            nodes.append(_call(trace, node, order, tracked, st, at))
    for v in nodes:
        if v.phase in ("param", "buffer"):
            v.layer = at.first_reader.get(v.name, "")
    orders = {v.name: v.order for v in nodes}
    return Step(
        nodes=tuple(nodes), storages=st.storages, user_symbols=dict(trace.user_symbols), hints=dict(trace.hints),
        trainable=trace.trainable, assumptions=list(trace.assumptions), dropped_guards=list(trace.dropped_guards),
        module_types=dict(trace.module_types), leaf_modules=trace.leaf_modules, route=route,
        fallback_reason=fallback_reason, notes=tuple(trace.notes), optimizer=trace.optimizer,
        precision=trace.precision, accumulate=trace.micro_steps,
        deaths={v: orders[d] for v, d in trace.deaths.items() if d in orders and v in orders},
    )
