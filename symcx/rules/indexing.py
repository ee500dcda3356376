"""Gathers, scatters, padding and patch extraction (``other_flops``).

Moving data costs no FLOPs: a gather (``_unsafe_index``, the nearest/bilinear upsampling
lookups), a pad, ``pixel_shuffle`` and ``im2col`` are in :data:`symcx.rules.ZERO_COST` (their
bytes still count in memory). Their backward *accumulates* (several outputs read the same input), one add per
accumulated element: ``_unsafe_index_put``/``index_put`` with ``accumulate=True``, a reflection
or replication pad's backward, ``col2im``. An embedding bag adds each looked-up row into its
bag (``mean`` then divides once per output element) and its backward scatters them back.

Scatters count the combining op only: a plain ``scatter`` (``Tensor.max(dim)``'s, ``topk``'s and
``sort``'s backward write each gradient once into zeros) moves data and costs 0, as do
``index_copy``, ``index_fill``, ``take`` and the view ``unfold`` (in ``ZERO_COST``). A scatter that
reduces (``scatter_add``, ``scatter`` with ``reduce=``, ``scatter_reduce``, ``index_add``,
``index_reduce``, ``put``/``index_put`` accumulating, ``unfold_backward``, the embedding backward)
does one op per scattered element, the element count of ``index`` (``src`` beyond it is unread) or
of ``source``; ``mean`` also counts each element into its slot (one add each) and divides once
per output element.
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall, TensorInfo
from .registry import rule

__all__ = [
    "accumulate_flops", "pad_backward_flops", "col2im_flops", "embedding_bag_flops", "embedding_bag_backward_flops",
    "scatter_flops", "scatter_add_flops", "scatter_reduce_flops", "index_add_flops", "index_reduce_flops",
    "put_flops", "unfold_backward_flops", "embedding_backward_flops", "bincount_flops", "nonzero_flops",
    "masked_accumulate_flops", "segment_reduce_flops", "repeat_interleave_flops", "embedding_renorm_flops",
]

@rule("aten._unsafe_index_put", "aten.index_put", "aten.index_put_", "aten._index_put_impl", "aten._index_put_impl_")
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


def _reduced(scattered: sympy.Expr, out: TensorInfo, reduce: str | None) -> sympy.Expr:
    """Ops of a reducing scatter of ``scattered`` elements into ``out``: one each (add, multiply,
    max, min); ``mean`` sums (one add each), counts (one add each) and divides each output once."""
    if reduce is None:
        return sympy.Integer(0)
    return 2 * scattered + out.numel if reduce == "mean" else scattered


@rule("aten.scatter", "aten.scatter_")
def scatter_flops(call: OpCall) -> Cost:
    """0 without ``reduce`` (data movement); index.numel with ``reduce="add"``/``"multiply"``."""
    return Cost(other_flops=_reduced(call["index"].numel, call["self"], call.get("reduce")))


@rule("aten.scatter_add", "aten.scatter_add_")
def scatter_add_flops(call: OpCall) -> Cost:
    """index.numel: one add per scattered element of ``src``."""
    return Cost(other_flops=call["index"].numel)


@rule("aten.scatter_reduce", "aten.scatter_reduce_")
def scatter_reduce_flops(call: OpCall) -> Cost:
    """index.numel (sum, prod, amax, amin: one op per scattered element); mean: 2·index.numel + self.numel."""
    return Cost(other_flops=_reduced(call["index"].numel, call["self"], call["reduce"]))


@rule("aten.index_add", "aten.index_add_")
def index_add_flops(call: OpCall) -> Cost:
    """source.numel adds, and as many multiplies when ``alpha`` ≠ 1."""
    return Cost(other_flops=call["source"].numel * (1 if call.get("alpha", 1) == 1 else 2))


@rule("aten.index_reduce", "aten.index_reduce_")
def index_reduce_flops(call: OpCall) -> Cost:
    """source.numel (prod, amax, amin); mean: 2·source.numel + self.numel."""
    return Cost(other_flops=_reduced(call["source"].numel, call["self"], call["reduce"]))


@rule("aten.put", "aten.put_")
def put_flops(call: OpCall) -> Cost:
    """source.numel adds when ``accumulate``, else 0 (a write)."""
    return Cost(other_flops=call["source"].numel if call["accumulate"] else sympy.Integer(0))


@rule("aten.unfold_backward")
def unfold_backward_flops(call: OpCall) -> Cost:
    """grad_in.numel: every window element's gradient added back into the input gradient."""
    return Cost(other_flops=call["grad_in"].numel)


@rule("aten.embedding_dense_backward")
def embedding_backward_flops(call: OpCall) -> Cost:
    """grad_output.numel adds (each looked-up row's gradient into its weight row: t·L·D, not V·D);
    ``scale_grad_by_freq`` adds a count per index and a divide per grad_output element."""
    grad, flops = call["grad_output"], call["grad_output"].numel
    if call["scale_grad_by_freq"]:
        flops += call["indices"].numel + grad.numel
    return Cost(other_flops=flops)


@rule("aten.bincount")
def bincount_flops(call: OpCall) -> Cost:
    """One add per input element into its bin (the weight's value with ``weights``). The output's
    length, max(self) + 1 or ``minlength``, is data-dependent (a ``u_k`` symbol)."""
    return Cost(other_flops=call["self"].numel)


@rule("aten.nonzero", "aten.nonzero_static", "aten.argwhere")
def nonzero_flops(call: OpCall) -> Cost:
    """One compare per element of ``self`` (the count of its nonzeros is a ``u_k`` symbol)."""
    return Cost(other_flops=call["self"].numel)


@rule("aten._unsafe_masked_index_put_accumulate")
def masked_accumulate_flops(call: OpCall) -> Cost:
    """One add per value accumulated (the backward of a masked gather, as ``_unsafe_index_put``)."""
    return Cost(other_flops=call["values"].numel)


@rule("aten.segment_reduce")
def segment_reduce_flops(call: OpCall) -> Cost:
    """One op per element of ``data`` (sum, prod, max, min); mean also divides each output once."""
    flops = call["data"].numel
    if call["reduce"] == "mean":
        flops += call.outputs[0].numel
    return Cost(other_flops=flops)


@rule("aten.repeat_interleave")
def repeat_interleave_flops(call: OpCall) -> Cost:
    """``repeat_interleave(repeats)``: one add per element of ``repeats`` (the prefix sum of the
    output positions); the output's length is data-dependent."""
    return Cost(other_flops=call["repeats"].numel)


@rule("aten.embedding_renorm", "aten.embedding_renorm_")
def embedding_renorm_flops(call: OpCall) -> Cost:
    """indices·(3·D + 1): each looked-up row's norm (square, add), a compare with ``max_norm`` and a
    scale (``nn.Embedding(max_norm=…)``); a row looked up twice is counted twice (an upper bound)."""
    return Cost(other_flops=call["indices"].numel * (3 * call["self"].shape[-1] + 1))
