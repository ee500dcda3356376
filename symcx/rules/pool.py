"""Pooling, forward and backward (``other_flops``): one operation per window element.

Max pooling compares prod(kernel) values per output element and its backward scatters one
value per output element; average pooling adds prod(kernel) values and divides once (counted
as prod(kernel) per output), its backward spreads each grad over the window; adaptive average
pooling reads every input element once and divides once per output element.
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall
from .registry import rule

__all__ = ["pool_flops", "pool_backward_flops", "adaptive_pool_flops"]


def _window(call: OpCall, spatial: int) -> sympy.Expr:
    """prod(kernel_size), a single size standing for every one of the ``spatial`` dims."""
    kernel = list(call["kernel_size"])
    if len(kernel) == 1:
        kernel = kernel * spatial
    return sympy.Mul(*[sympy.sympify(k) for k in kernel])


@rule(
    "aten.max_pool2d_with_indices", "aten.max_pool3d_with_indices", "aten.max_pool1d_with_indices",
    "aten.avg_pool2d", "aten.avg_pool3d", "aten.avg_pool1d", "aten.max_pool2d", "aten.max_pool1d",
    "aten.max_pool3d",
)
def pool_flops(call: OpCall) -> Cost:
    """prod(kernel) per output element."""
    out = call.outputs[0]
    return Cost(other_flops=_window(call, len(out.shape) - 2) * out.numel)


@rule("aten.avg_pool2d_backward", "aten.avg_pool3d_backward")
def pool_backward_flops(call: OpCall) -> Cost:
    """Average-pool backward: prod(kernel) per grad-output element."""
    grad = call["grad_output"]
    return Cost(other_flops=_window(call, len(grad.shape) - 2) * grad.numel)


@rule("aten.max_pool2d_with_indices_backward", "aten.max_pool3d_with_indices_backward")
def max_pool_backward_flops(call: OpCall) -> Cost:
    """Max-pool backward: one scatter-add per grad-output element."""
    return Cost(other_flops=call["grad_output"].numel)


@rule("aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d", "aten.adaptive_max_pool2d", "aten.adaptive_max_pool3d")
def adaptive_pool_flops(call: OpCall) -> Cost:
    """Each input element read once into its window, one divide (or pick) per output."""
    return Cost(other_flops=call["self"].numel + call.outputs[0].numel)


@rule(
    "aten._adaptive_avg_pool2d_backward", "aten._adaptive_avg_pool3d_backward",
    "aten.adaptive_max_pool2d_backward", "aten.adaptive_max_pool3d_backward",
)
def adaptive_pool_backward_flops(call: OpCall) -> Cost:
    """One operation per grad-input element (spread the averaged grad, or scatter the max)."""
    return Cost(other_flops=call.outputs[0].numel)
