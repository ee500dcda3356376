"""Turn a traced joint fx graph into a ``networkx.DiGraph`` with one node per fx node.

Node attributes (all sizes are sympy in user symbols):

``op``      aten overload name (``"aten.convolution.default"``); ``packet`` its family
            (``"aten.convolution"``); placeholders and the output use ``kind``
``kind``    fx node kind: ``placeholder``, ``call_function`` or ``output``
``phase``   ``input``, ``param``, ``buffer``, ``forward``, ``loss``, ``backward`` or ``output``
``module``  dotted module path of the forward op (backward ops inherit it through seq_nr)
``layer``   per-layer row key: a leaf module's path, or ``<module>.<node>`` for functional ops
``call``    :class:`~symcx.cost.OpCall` (args with tensors as ``TensorInfo``)
``out``     output ``TensorInfo`` or tuple of them; ``bytes`` new storage written
``param``   parameter name, on parameter placeholders
``order``   position in the traced program
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import sympy
import torch

from ._torch import op_names as op_name, op_schema
from .cost import OpCall, TensorInfo, bind_arguments
from .trace import TensorMeta, Trace

__all__ = ["build_graph", "op_name", "ALIAS_OPS", "GRAD_SEEDS"]

#: Ops whose output aliases an input's storage: they allocate nothing.
ALIAS_OPS = frozenset(
    {
        "aten.view", "aten._unsafe_view", "aten.reshape", "aten.t", "aten.transpose", "aten.permute",
        "aten.expand", "aten.squeeze", "aten.unsqueeze", "aten.detach", "aten.alias", "aten.slice",
        "aten.select", "aten.as_strided", "aten.unflatten", "aten.flatten", "aten.split",
        "aten.split_with_sizes", "aten.unbind", "aten.chunk", "aten.narrow", "aten.diagonal",
        "aten.view_as", "aten.expand_as", "aten.lift_fresh", "aten.numpy_T", "aten.mT",
        "getitem",
    }
)


#: Ops that create the backward's initial gradient from the loss: not activations.
GRAD_SEEDS = frozenset({"aten.ones_like", "aten.full_like", "aten.ones", "aten.full", "aten.scalar_tensor"})


def _info(trace: Trace, value: Any, tracked: frozenset[str] | set[str] = frozenset(), grad: bool = False) -> Any:
    """Tensor snapshots become ``TensorInfo``; sizes (SymInts, ShapeEnv sympy) become sympy in
    user symbols; containers recurse.

    ``tracked`` names the fx nodes autograd tracks; ``grad`` marks the value being converted.
    """
    if isinstance(value, TensorMeta):
        dtype = str(value.dtype).replace("torch.", "")
        return TensorInfo(trace.shape(value), dtype, value.element_size(), grad and value.is_floating_point())
    if isinstance(value, (torch.SymInt, torch.SymFloat, sympy.Expr)):
        return trace.expr(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_info(trace, v, tracked, grad) for v in value)
    if isinstance(value, torch.fx.Node):
        return _info(trace, value.meta.get("val"), tracked, value.name in tracked)
    return value


def _nbytes(out: Any) -> sympy.Expr:
    if isinstance(out, TensorInfo):
        return out.nbytes
    if isinstance(out, (tuple, list)):
        return sympy.Add(*[_nbytes(o) for o in out])
    return sympy.Integer(0)


def _new_bytes(target: Any, packet: str, out: Any) -> sympy.Expr:
    """Bytes of the outputs that are new storage: a view's, an in-place or ``out=`` op's output
    aliases an input (the schema's alias annotation) and allocates nothing."""
    if packet in ALIAS_OPS:
        return sympy.Integer(0)
    schema = op_schema(target)
    if schema is None:
        return _nbytes(out)
    outs = out if isinstance(out, (tuple, list)) and len(schema.returns) != 1 else (out,)
    return sympy.Add(*[_nbytes(o) for r, o in zip(schema.returns, outs) if r.alias_info is None])


def build_graph(trace: Trace) -> nx.DiGraph:
    """One node per fx node of ``trace.graph``, edges along data flow, costs not yet attached."""
    G = nx.DiGraph()
    fwd_layer_by_seq: dict[int, str] = {}
    fwd_module_by_seq: dict[int, str] = {}
    first_user_layer: dict[str, str] = {}
    tracked: set[str] = set()  # forward values that depend on a trainable parameter
    nodes = list(trace.graph.nodes)
    for order, node in enumerate(nodes):
        tag = node.meta.get("custom") or {}
        attrs: dict[str, Any] = {"kind": node.op, "order": order, "module": "", "layer": ""}
        if node.op == "placeholder":
            if node.name in trace.param_nodes:
                attrs.update(phase="param", param=trace.param_nodes[node.name])
                if trace.param_nodes[node.name] in trace.trainable:
                    tracked.add(node.name)
            elif node.name in trace.buffer_nodes:
                attrs.update(phase="buffer", param=trace.buffer_nodes[node.name])
            else:
                attrs.update(phase="input")
            attrs.update(op="placeholder", packet="placeholder")
        elif node.op == "output":
            attrs.update(phase="output", op="output", packet="output")
        else:
            name, packet = op_name(node.target)
            attrs.update(op=name, packet=packet, phase=tag.get("phase", "forward"))
            seq = tag.get("seq_nr") if attrs["phase"] == "backward" else node.meta.get("seq_nr")
            if attrs["phase"] == "forward":
                module = tag.get("module", "")
                leaf = module in trace.leaf_modules and module != ""
                layer = module if leaf else (f"{module}.{node.name}" if module else node.name)
                attrs.update(module=module, layer=layer)
                if seq is not None and packet not in ALIAS_OPS:
                    fwd_layer_by_seq.setdefault(seq, layer)
                    fwd_module_by_seq.setdefault(seq, module)
            elif attrs["phase"] == "backward" and seq in fwd_layer_by_seq:
                attrs.update(module=fwd_module_by_seq[seq], layer=fwd_layer_by_seq[seq])
            else:
                attrs.update(module="", layer="loss")
            attrs["seq_nr"] = seq
            if attrs["phase"] in ("forward", "loss") and any(src.name in tracked for src in node.all_input_nodes):
                tracked.add(node.name)
            args = tuple(_info(trace, a, tracked) for a in node.args)
            kwargs = {k: _info(trace, v, tracked) for k, v in node.kwargs.items()}
            out = _info(trace, node.meta.get("val"), tracked, node.name in tracked)
            attrs["call"] = OpCall(name, bind_arguments(op_schema(node.target), args, kwargs), out)
            attrs["out"] = out
            attrs["bytes"] = _new_bytes(node.target, packet, out)
            if node.meta.get("source"):
                attrs["source"] = node.meta["source"]
            if attrs["phase"] == "forward":
                for src in node.all_input_nodes:
                    if src.op == "placeholder":
                        first_user_layer.setdefault(src.name, attrs["layer"])
        if node.op == "placeholder":
            out = _info(trace, node.meta.get("val"))
            attrs.update(out=out, bytes=_nbytes(out))
        G.add_node(node.name, **attrs)
        for src in node.all_input_nodes:
            G.add_edge(src.name, node.name)
    for name, layer in first_user_layer.items():
        if G.nodes[name]["phase"] in ("param", "buffer"):
            G.nodes[name]["layer"] = layer
    G.graph["trace"] = trace
    return G
