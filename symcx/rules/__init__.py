"""The cost-rule registry: one rule per aten op family, keyed by op name.

A rule is a pure function ``rule(call: OpCall) -> Cost`` over symbolic shapes. The
``@rule`` decorator is the only registry; ops that allocate nothing and compute nothing
(views, metadata, copies) are in :data:`ZERO_COST`. An op in neither is *unsupported*: it is
counted nowhere and reported by name, never silently zero.

>>> from symcx.rules import lookup
>>> lookup("aten.mm.default").__name__
'mm_flops'
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import networkx as nx

from ..cost import Cost, OpCall
from ..errors import RuleError, UnsupportedOpError
from ..trace import OpOverload, OpOverloadPacket

__all__ = ["rule", "register", "lookup", "is_free", "annotate_costs", "ZERO_COST", "Rule"]

log = logging.getLogger("symcx")

Rule = Callable[[OpCall], Cost]
_REGISTRY: dict[str, Rule] = {}

#: Families that compute nothing: views, metadata, size arithmetic, creation and data movement
#: (their bytes still count in memory).
ZERO_COST = frozenset(
    {
        "aten.view", "aten._unsafe_view", "aten.reshape", "aten.t", "aten.transpose", "aten.permute",
        "aten.expand", "aten.squeeze", "aten.unsqueeze", "aten.detach", "aten.alias", "aten.slice",
        "aten.select", "aten.as_strided", "aten.unflatten", "aten.flatten", "aten.split",
        "aten.split_with_sizes", "aten.unbind", "aten.chunk", "aten.narrow", "aten.diagonal",
        "aten.view_as", "aten.expand_as", "aten.lift_fresh", "aten.numpy_T", "aten.mT",
        "aten.sym_size", "aten.sym_numel", "aten.sym_stride", "aten.sym_storage_offset",
        "aten._assert_async", "aten._assert_scalar", "aten._assert_tensor_metadata",
        "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
        "aten.zeros", "aten.zeros_like", "aten.ones", "aten.ones_like", "aten.full", "aten.full_like",
        "aten.new_zeros", "aten.new_ones", "aten.new_full", "aten.scalar_tensor", "aten.arange",
        "aten.clone", "aten.contiguous", "aten._to_copy", "aten.copy", "aten.copy_", "aten.lift_fresh_copy",
        "aten.detach_copy", "aten.view_copy", "aten.cat", "aten.stack", "aten.index_select",
        "aten.constant_pad_nd", "aten.repeat", "aten.slice_backward", "aten.select_backward",
        "aten.zero", "aten.zero_", "aten.fill", "aten.fill_", "aten.embedding", "aten.gather",
        "aten.index", "aten.tril", "aten.triu", "aten.masked_fill", "aten.masked_fill_",
        "aten.bernoulli", "aten.bernoulli_", "aten.rand", "aten.rand_like", "aten.randn", "aten.randn_like",
        "aten.split_with_sizes_copy", "aten.unsafe_split", "aten.roll", "aten.flip",
        "aten.pad", "aten.eye", "aten._linalg_check_errors",
        "aten._unsafe_index", "aten.pixel_shuffle", "aten.pixel_unshuffle", "aten.im2col",
        "aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d",
        "aten.replication_pad1d", "aten.replication_pad2d", "aten.replication_pad3d",
        "aten.channel_shuffle", "aten.native_channel_shuffle", "getitem",
        "aten.as_strided_", "aten.squeeze_", "aten.unsqueeze_", "aten.t_", "aten.transpose_", "aten.swapdims_",
        "aten.swapaxes_", "aten.detach_",
    }
)


def _key(op: Any) -> str:
    """Registry key of an aten op given as OpOverload, OpOverloadPacket or string."""
    if isinstance(op, str):
        return op
    if isinstance(op, OpOverload):
        return op.name().replace("::", ".")
    if isinstance(op, OpOverloadPacket):
        return op._qualified_op_name.replace("::", ".")
    raise RuleError(f"cannot register a rule for {op!r}: expected an aten op or its name")


def register(op: Any, fn: Rule, *, replace: bool = False) -> Rule:
    """Register ``fn`` as the cost rule of ``op`` (a family like ``aten.mm`` or one overload).

    Raises
    ------
    RuleError
        If ``op`` already has a rule and ``replace`` is False.
    """
    key = _key(op)
    if key in _REGISTRY and not replace:
        raise RuleError(
            f"{key} already has rule {_REGISTRY[key].__name__}; cannot add {fn.__name__} "
            f"(pass replace=True to override)"
        )
    _REGISTRY[key] = fn
    return fn


def rule(*ops: Any, replace: bool = False) -> Callable[[Rule], Rule]:
    """Decorator: register the function as the rule for every op in ``ops``."""

    def deco(fn: Rule) -> Rule:
        for op in ops:
            register(op, fn, replace=replace)
        return fn

    return deco


def lookup(op: str, packet: str | None = None) -> Rule | None:
    """The rule for overload ``op`` (``aten.mm.default``), falling back to its family."""
    if op in _REGISTRY:
        return _REGISTRY[op]
    packet = packet or op.rsplit(".", 1)[0]
    return _REGISTRY.get(packet)


def is_free(packet: str) -> bool:
    """True for ops that compute nothing (views, metadata, size arithmetic, copies)."""
    return packet in ZERO_COST


def annotate_costs(G: nx.DiGraph, *, strict: bool = False, options: Mapping[str, Any] | None = None) -> Counter:
    """Attach ``cost`` to every call node of ``G``; return the unsupported ops by (op, layer).

    ``options`` (e.g. ``{"causal_attention": True}``) reach every rule as ``call.options``.

    A node with no rule that is not free gets ``cost=None`` and ``unsupported=True``.

    Raises
    ------
    UnsupportedOpError
        With ``strict=True``, on the first unsupported op, naming it and where it ran.
    """
    from ..cost import ZERO

    missing: Counter = Counter()
    for name, data in G.nodes(data=True):
        if data["kind"] != "call_function":
            continue
        fn = lookup(data["op"], data["packet"])
        if fn is not None:
            call = data["call"]
            if options:
                call = dataclasses.replace(call, options=dict(options))
                data["call"] = call
            data["cost"] = fn(call)
        elif is_free(data["packet"]):
            data["cost"] = ZERO
        else:
            data["cost"] = None
            data["unsupported"] = True
            where = data["layer"] or "<root>"
            line = f" ({data['source']})" if data.get("source") else ""
            if strict:
                raise UnsupportedOpError(
                    f"{data['op']} at {where}{line} has no cost rule; register one with "
                    f"symcx.rules.register, or call analyze(strict=False) to list it as unsupported"
                )
            if not missing[(data["packet"], where)]:
                log.warning("symcx: no cost rule for %s at %s%s: counted nowhere", data["packet"], where, line)
            missing[(data["packet"], where)] += 1
    return missing


# Rule modules register themselves on import; keep this list in one place.
from . import attention, conv, indexing, matmul, misc, norm, pointwise, pool, rnn  # noqa: E402,F401
