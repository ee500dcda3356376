"""Matrix products: mm, addmm, bmm, baddbmm, dot, mv — 2·m·k·n FLOPs (1 multiply-add = 2 FLOPs).

Bias and ``beta·self`` adds of addmm/baddbmm are not counted, as in FlopCounterMode.
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall
from . import rule

__all__ = ["matmul_flops", "mm_flops", "bmm_flops", "dot_flops", "mv_flops"]

TWO = sympy.Integer(2)
_NO_FCM = "FlopCounterMode has no formula for matrix-vector products and counts 0"


def matmul_flops(m, k, n, batch=sympy.Integer(1)) -> Cost:
    """2·batch·m·k·n FLOPs, factors kept for the derivation."""
    factors = (TWO, batch, m, k, n) if batch != 1 else (TWO, m, k, n)
    return Cost(flops=sympy.Mul(*factors), factors=(factors,))


@rule("aten.mm", "aten.addmm")
def mm_flops(call: OpCall) -> Cost:
    """``(m×k) @ (k×n)``: 2·m·k·n; addmm's bias add is not counted."""
    a, b = (call.args[0], call.args[1]) if call.op.startswith("aten.mm") else (call.args[1], call.args[2])
    m, k = a.shape
    _, n = b.shape
    return matmul_flops(m, k, n)


@rule("aten.bmm", "aten.baddbmm")
def bmm_flops(call: OpCall) -> Cost:
    """``(b×m×k) @ (b×k×n)``: 2·b·m·k·n; baddbmm's add is not counted."""
    a, b = (call.args[0], call.args[1]) if call.op.startswith("aten.bmm") else (call.args[1], call.args[2])
    batch, m, k = a.shape
    n = b.shape[2]
    return matmul_flops(m, k, n, batch)


@rule("aten.dot", "aten.vdot")
def dot_flops(call: OpCall) -> Cost:
    """Inner product of two k-vectors: 2·k (FlopCounterMode has no formula and counts 0)."""
    (k,) = call.args[0].shape
    return Cost(flops=TWO * k, factors=((TWO, k),), fcm_flops=sympy.Integer(0), note=_NO_FCM)


@rule("aten.mv", "aten.addmv")
def mv_flops(call: OpCall) -> Cost:
    """Matrix-vector ``(m×k) @ k``: 2·m·k (FlopCounterMode has no formula and counts 0)."""
    a = call.args[0] if call.op.startswith("aten.mv") else call.args[1]
    m, k = a.shape
    return Cost(flops=TWO * m * k, factors=((TWO, m, k),), fcm_flops=sympy.Integer(0), note=_NO_FCM)
