"""The cost-rule registry: one rule per aten op family or overload, keyed by op name.

A rule is a pure function ``rule(call: OpCall) -> Cost`` over symbolic shapes. The ``@rule``
decorator is the only registry; ops that allocate nothing and compute nothing (views, metadata,
copies) are in :data:`ZERO_COST`. An op in neither is *unsupported*: it is counted nowhere and
reported by name, never silently zero.

An overload is keyed by its full name (``aten.mm.default``), a family (op packet) by its
family name (``aten.mm``), a string as given; :func:`lookup` prefers an overload's own rule.

>>> lookup("aten.mm.default").__name__
'mm_flops'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._torch import OpOverload, OpOverloadPacket, op_names, packet_name
from ..cost import Cost, OpCall
from ..errors import RuleError
from ..opsets import ALIAS_OPS

__all__ = ["rule", "register", "lookup", "is_free", "ZERO_COST", "Rule"]

Rule = Callable[[OpCall], Cost]
_REGISTRY: dict[str, Rule] = {}

#: Families that compute nothing: the views of :data:`~symcx.opsets.ALIAS_OPS`, metadata, size
#: arithmetic, creation and data movement (their bytes still count in memory).
ZERO_COST = ALIAS_OPS | frozenset(
    {
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
        "aten.pad", "aten.eye", "aten._linalg_check_errors", "aten._local_scalar_dense",
        "profiler._record_function_enter_new", "profiler._record_function_exit",
        "aten._unsafe_index", "aten.pixel_shuffle", "aten.pixel_unshuffle", "aten.im2col",
        "aten.reflection_pad1d", "aten.reflection_pad2d", "aten.reflection_pad3d",
        "aten.replication_pad1d", "aten.replication_pad2d", "aten.replication_pad3d",
        "aten.channel_shuffle", "aten.native_channel_shuffle",
        "aten.as_strided_", "aten.squeeze_", "aten.unsqueeze_", "aten.t_", "aten.transpose_", "aten.swapdims_",
        "aten.swapaxes_", "aten.detach_",
        "aten.unfold", "aten.unfold_copy", "aten.index_copy", "aten.index_copy_", "aten.index_fill",
        "aten.index_fill_", "aten.take", "aten.take_along_dim",
        "aten.masked_select", "aten.masked_scatter_backward", "aten._unsafe_masked_index", "aten.select_scatter",
        "aten.slice_scatter", "aten.diagonal_scatter", "aten.as_strided_scatter", "aten.linspace", "aten.logspace",
    }
)


def _key(op: Any) -> str:
    """Registry key of an op: an overload's full name, a packet's family name, a string as given."""
    if isinstance(op, str):
        return op
    if isinstance(op, OpOverload):
        return op_names(op)[0]
    if isinstance(op, OpOverloadPacket):
        return packet_name(op)
    raise RuleError(f"cannot register a rule for {op!r}: expected an aten op or its name")


def register(op: Any, fn: Rule, *, replace: bool = False) -> Rule:
    """Register ``fn`` as the cost rule of ``op``: a family (``aten.mm``) or one overload
    (``torch.ops.aten.mm.default``, ``"aten.mm.default"``), which then takes precedence.

    Raises
    ------
    RuleError
        If ``op`` already has a rule and ``replace`` is False, or ``op`` is not an op or a name.
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
    """The rule for overload ``op`` (``aten.mm.default``): its own, else its family's (``packet``,
    by default ``op`` less its overload name)."""
    if op in _REGISTRY:
        return _REGISTRY[op]
    return _REGISTRY.get(packet or op.rsplit(".", 1)[0])


def is_free(packet: str) -> bool:
    """True for op families that compute nothing (views, metadata, size arithmetic, copies)."""
    return packet in ZERO_COST
