"""Convolutions, forward and backward, any dimensionality, stride, padding, dilation, groups.

Forward (FlopCounterMode's formula): 2 · N · C_out · (C_in/groups) · prod(kernel) · prod(out
spatial); a transposed convolution uses the *input* spatial size. Bias is not counted.
Backward: grad-input is the same product again; grad-weight is also the same product, where
FlopCounterMode (torch 2.13) forgets to divide by ``groups`` and overcounts it ``groups`` times.
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall
from .registry import rule

__all__ = ["conv_flops", "conv_backward_flops", "conv_terms"]

TWO = sympy.Integer(2)
GROUPED_NOTE = (
    "FlopCounterMode counts the grad-weight of a grouped convolution groups times over; "
    "symcx divides by groups"
)


def conv_terms(x_shape, w_shape, out_shape, transposed: bool) -> tuple[sympy.Expr, ...]:
    """Factors of 2·N·C_out·(C_in/groups)·prod(kernel)·prod(spatial), in that order.

    For a transposed conv the weight is (C_in, C_out/groups, k…) and the spatial size is the
    input's; the product is the same multiply-adds seen from the other side.
    """
    spatial = (x_shape if transposed else out_shape)[2:]
    c_a, c_b, *kernel = w_shape
    return (TWO, x_shape[0], c_a, c_b, *kernel, *spatial)


@rule("aten.convolution", "aten._convolution")
def conv_flops(call: OpCall) -> Cost:
    """2·N·C_out·(C_in/groups)·prod(kernel)·prod(out spatial), e.g. the seed's 2·26·26·3·3·1·32·t."""
    factors = conv_terms(call["input"].shape, call["weight"].shape, call.out.shape, bool(call["transposed"]))
    return Cost(flops=sympy.Mul(*factors), factors=(factors,))


def _swap(shape):
    return (shape[1], shape[0], *shape[2:])


@rule("aten.convolution_backward")
def conv_backward_flops(call: OpCall) -> Cost:
    """grad-input (if asked) + grad-weight (if asked), each one forward-sized product.

    grad-weight of a conv with ``groups`` = g is 2·N·C_out·(C_in/g)·prod(kernel)·prod(out);
    FlopCounterMode reports g times that, recorded in ``fcm_flops``.
    """
    grad_out, x, w = call["grad_output"], call["input"], call["weight"]
    transposed = bool(call["transposed"])
    groups = sympy.sympify(call["groups"])
    mask = call["output_mask"]
    outs = call.out
    terms: list[tuple[sympy.Expr, ...]] = []
    fcm = sympy.Integer(0)
    if mask[0]:
        f = conv_terms(grad_out.shape, w.shape, outs[0].shape, not transposed)
        terms.append(f)
        fcm += sympy.Mul(*f)
    if mask[1]:
        gw = outs[1].shape
        if transposed:
            f = conv_terms(_swap(grad_out.shape), _swap(x.shape), _swap(gw), False)
        else:
            f = conv_terms(_swap(x.shape), _swap(grad_out.shape), _swap(gw), False)
        fcm += sympy.Mul(*f)
        if groups != 1:
            f = (*f, 1 / groups)
        terms.append(f)
    flops = sympy.Add(*[sympy.Mul(*f) for f in terms])
    if groups != 1 and mask[1]:
        return Cost(flops=flops, factors=tuple(terms), fcm_flops=fcm, note=GROUPED_NOTE)
    return Cost(flops=flops, factors=tuple(terms))
