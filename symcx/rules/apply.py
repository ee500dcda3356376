"""Costing a step: every call node gets the ``Cost`` of its rule, ``ZERO`` if free, else None."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ..cost import ZERO, Cost
from ..errors import UnsupportedCall, UnsupportedOpError
from ..step import Node
from .registry import is_free, lookup

__all__ = ["annotate_costs"]

log = logging.getLogger("symcx")


def annotate_costs(nodes: Iterable[Node], *, strict: bool = False, options: Mapping[str, Any] | None = None) -> Counter:
    """Set ``cost`` on every call node of ``nodes``; return the unsupported ops by (op, layer).

    ``options`` (e.g. ``{"causal_attention": True}``) reach every rule as ``call.options``.
    A node with no rule that is not free, or whose rule raises :class:`UnsupportedCall`, gets
    ``cost=None`` and ``unsupported=True``, and is logged once per (op, layer).

    Raises
    ------
    UnsupportedOpError
        With ``strict=True``, on the first unsupported op, naming it, where it ran and why.
    """
    missing: Counter = Counter()
    for node in nodes:
        if node.kind != "call_function":
            continue
        node.cost, reason = _cost(node, options)
        if node.cost is not None:
            continue
        node.unsupported = True
        where = node.layer or "<root>"
        line = f" ({node.source})" if node.source else ""
        if strict:
            raise UnsupportedOpError(
                f"{node.op} at {where}{line} {reason}; register a rule with "
                f"symcx.rules.register, or call analyze(strict=False) to list it as unsupported"
            )
        if not missing[(node.packet, where)]:
            log.warning("symcx: %s at %s%s %s: counted nowhere", node.packet, where, line, reason)
        missing[(node.packet, where)] += 1
    return missing


def _cost(node: Node, options: Mapping[str, Any] | None) -> tuple[Cost | None, str]:
    """(cost, "") of one call node, or (None, why it has none); ``options`` are set on its call."""
    fn = lookup(node.op, node.packet)
    if fn is None:
        return (ZERO, "") if is_free(node.packet) else (None, "has no cost rule")
    if options:
        node.call = dataclasses.replace(node.call, options=dict(options))
    try:
        return fn(node.call), ""
    except UnsupportedCall as err:
        return None, f"is not supported: {err}"
