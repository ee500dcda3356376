"""Gathers, scatters, padding and patch extraction (``other_flops``).

Moving data costs no FLOPs: a gather (``_unsafe_index``, the nearest/bilinear upsampling
lookups), a pad, ``pixel_shuffle`` and ``im2col`` are in :data:`symcx.rules.ZERO_COST` (their
bytes still count in memory). Their backward *accumulates* (several outputs read the same input), one add per
accumulated element: ``_unsafe_index_put``/``index_put`` with ``accumulate=True``, a reflection
or replication pad's backward, ``col2im``. An embedding bag adds each looked-up row into its
bag (``mean`` then divides once per output element) and its backward scatters them back.
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall
from .registry import rule

__all__ = ["accumulate_flops", "pad_backward_flops", "col2im_flops", "embedding_bag_flops", "embedding_bag_backward_flops"]

@rule("aten._unsafe_index_put", "aten.index_put", "aten.index_put_")
def accumulate_flops(call: OpCall) -> Cost:
    """One add per value written when ``accumulate`` is set (a gather's backward), else none."""
    return Cost(other_flops=call["values"].numel if call["accumulate"] else sympy.Integer(0))


@rule(
    "aten.reflection_pad1d_backward", "aten.reflection_pad2d_backward", "aten.reflection_pad3d_backward",
    "aten.replication_pad1d_backward", "aten.replication_pad2d_backward", "aten.replication_pad3d_backward",
)
def pad_backward_flops(call: OpCall) -> Cost:
    """One add per grad-output element folded back into the grad-input."""
    return Cost(other_flops=call["grad_output"].numel)


@rule("aten.col2im")
def col2im_flops(call: OpCall) -> Cost:
    """One add per column element summed into the image (``Fold``, ``Unfold``'s backward)."""
    return Cost(other_flops=call["self"].numel)


@rule("aten._embedding_bag", "aten._embedding_bag_forward_only")
def embedding_bag_flops(call: OpCall) -> Cost:
    """indices·D adds (or compares, for ``max``) into the bags, + one divide per output for ``mean``."""
    flops = call["indices"].numel * call["weight"].shape[1]
    if call["mode"] == 1:
        flops += call.outputs[0].numel
    return Cost(other_flops=flops)


@rule("aten._embedding_bag_backward", "aten._embedding_bag_dense_backward", "aten._embedding_bag_per_sample_weights_backward")
def embedding_bag_backward_flops(call: OpCall) -> Cost:
    """indices·D adds: every looked-up row's gradient scattered back into the weight gradient."""
    return Cost(other_flops=call["indices"].numel * call["grad"].shape[-1])
