"""Matrix products: mm, addmm, bmm, baddbmm, dot, mv, grouped mm — 2·m·k·n FLOPs (1 multiply-add = 2 FLOPs).

Bias and ``beta·self`` adds of addmm/baddbmm are not counted, as in FlopCounterMode.
"""

from __future__ import annotations

import dataclasses

import sympy

from ..cost import Cost, OpCall
from .registry import rule

__all__ = ["matmul_flops", "mm_flops", "bmm_flops", "dot_flops", "mv_flops", "trilinear_flops", "grouped_mm_flops"]

TWO = sympy.Integer(2)
_NO_FCM = "FlopCounterMode has no formula for matrix-vector products and counts 0"


def matmul_flops(m, k, n, batch=sympy.Integer(1)) -> Cost:
    """2·batch·m·k·n FLOPs, factors kept for the derivation."""
    factors = (TWO, batch, m, k, n) if batch != 1 else (TWO, m, k, n)
    return Cost(flops=sympy.Mul(*factors), factors=(factors,))


@rule("aten.mm", "aten.addmm")
def mm_flops(call: OpCall) -> Cost:
    """``(m×k) @ (k×n)``: 2·m·k·n; addmm's bias add is not counted.

    ``mm(self, mat2)`` and ``addmm(self, mat1, mat2)``: addmm's ``self`` is the bias.
    """
    a, b = (call["mat1"], call["mat2"]) if "mat1" in call.arguments else (call["self"], call["mat2"])
    m, k = a.shape
    _, n = b.shape
    return matmul_flops(m, k, n)


@rule("aten.bmm", "aten.baddbmm")
def bmm_flops(call: OpCall) -> Cost:
    """``(b×m×k) @ (b×k×n)``: 2·b·m·k·n; baddbmm's add is not counted.

    ``bmm(self, mat2)`` and ``baddbmm(self, batch1, batch2)``: baddbmm's ``self`` is the addend.
    """
    a, b = (call["batch1"], call["batch2"]) if "batch1" in call.arguments else (call["self"], call["mat2"])
    batch, m, k = a.shape
    n = b.shape[2]
    return matmul_flops(m, k, n, batch)


@rule("aten.dot", "aten.vdot")
def dot_flops(call: OpCall) -> Cost:
    """Inner product of two k-vectors: 2·k (FlopCounterMode has no formula and counts 0)."""
    (k,) = call["self"].shape
    return Cost(flops=TWO * k, factors=((TWO, k),), fcm_flops=sympy.Integer(0), note=_NO_FCM)


@rule("aten.mv", "aten.addmv")
def mv_flops(call: OpCall) -> Cost:
    """Matrix-vector ``(m×k) @ k``: 2·m·k (FlopCounterMode has no formula and counts 0).

    ``mv(self, vec)`` and ``addmv(self, mat, vec)``: addmv's ``self`` is the addend.
    """
    a = call["mat"] if "mat" in call.arguments else call["self"]
    m, k = a.shape
    return Cost(flops=TWO * m * k, factors=((TWO, m, k),), fcm_flops=sympy.Integer(0), note=_NO_FCM)


_TRILINEAR_NOTE = "FlopCounterMode has no formula for _trilinear (nn.Bilinear) and counts 0"


def _pair_cost(a: list, b: list, summed: set[int]) -> tuple[sympy.Expr, sympy.Expr]:
    """(FLOPs, other operations) of one ``sumproduct_pair`` of two broadcastable operands.

    With nothing to sum it is an elementwise multiply (one operation per broadcast element, not
    a FLOP in FlopCounterMode's convention); otherwise a batched matrix product, 2·(product of
    the broadcast sizes). A summed dim only one operand carries is reduced in it first (one add
    per element of that operand) and is not part of the product.
    """
    sizes = [y if x == 1 else x for x, y in zip(a, b)]
    if not summed:
        return sympy.Integer(0), sympy.Mul(*sizes)
    other = sympy.Integer(0)
    kept = []
    for d, (x, y) in enumerate(zip(a, b)):
        if d in summed and (x == 1 or y == 1):
            if x != 1 or y != 1:
                other += sympy.Mul(*(a if y == 1 else b))
            continue
        kept.append(sizes[d])
    return TWO * sympy.Mul(*kept), other


def _broadcast(a: list, b: list, summed: set[int]) -> list:
    return [sympy.Integer(1) if d in summed else (y if x == 1 else x) for d, (x, y) in enumerate(zip(a, b))]


@rule("aten._trilinear")
def trilinear_flops(call: OpCall) -> Cost:
    """``(i1·i2·i3).sum(sumdim)`` as the kernel computes it: for each index of ``unroll_dim``,
    i1 times i2 (summing the dims i3 lacks), then that times i3; a pair with dims to sum is a
    batched matrix product (2 FLOPs per multiply-add), one without is an elementwise multiply
    (``other_flops``), as are the adds of each slice into the output. ``nn.Bilinear`` forward:
    2·B·O·J·(I + 1). FlopCounterMode counts 0."""
    i1, i2, i3 = call["i1"], call["i2"], call["i3"]
    expands = [set(call[name]) for name in ("expand1", "expand2", "expand3")]
    sumdim, unroll = set(call["sumdim"]), call["unroll_dim"]
    total = len(i1.shape) + len(expands[0])
    shapes = []
    for x, expand in zip((i1, i2, i3), expands):
        it = iter(x.shape)
        shapes.append([sympy.Integer(1) if d in expand else next(it) for d in range(total)])
    unroll_size = next(s[unroll] for s, e in zip(reversed(shapes), reversed(expands)) if unroll not in e)
    for s in shapes:
        s[unroll] = sympy.Integer(1)
    sum12 = {d for d in sumdim if d in expands[2] and d != unroll}
    sum23 = {d for d in sumdim if d not in expands[2] and d != unroll}
    f1, o1 = _pair_cost(shapes[0], shapes[1], sum12)
    buf = _broadcast(shapes[0], shapes[1], sum12)
    f2, o2 = _pair_cost(buf, shapes[2], sum23)
    added = sympy.Mul(*_broadcast(buf, shapes[2], sum23))
    return Cost(flops=unroll_size * (f1 + f2), other_flops=unroll_size * (o1 + o2 + added),
                factors=((unroll_size, f1 + f2),), fcm_flops=sympy.Integer(0), note=_TRILINEAR_NOTE)


_GROUPED_NOTE = (
    "_grouped_mm (mixture-of-experts): the rows per expert are data-dependent; counted as every "
    "token routed to exactly its top-k experts (the groups cover all rows), the dense-equivalent count. "
    "FlopCounterMode has no formula for _grouped_mm and counts 0"
)


@rule("aten._grouped_mm")
def grouped_mm_flops(call: OpCall) -> Cost:
    """Grouped GEMM ``(m×k) @ (k×n)`` split into groups by ``offs``: 2·m·k·n in all.

    ``offs`` splits the rows of a 2-D ``self`` over a 3-D ``mat2`` (an MoE expert forward),
    the shared dim of two 2-D operands (a weight gradient) or the columns of a 2-D ``mat2``;
    whichever dim is split, the groups' products add up to one ``m×k×n`` product, provided the
    groups cover the split dim, i.e. every routed token is computed once per chosen expert.
    Two 3-D operands are a batched product, 2·b·m·k·n. FlopCounterMode counts 0.
    """
    a, b = call["self"], call["mat2"]
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = a.shape[0] if len(a.shape) == 3 and len(b.shape) == 3 else sympy.Integer(1)
    cost = matmul_flops(m, k, n, batch)
    return dataclasses.replace(cost, fcm_flops=sympy.Integer(0), note=_GROUPED_NOTE)
