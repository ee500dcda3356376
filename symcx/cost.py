"""What a cost rule sees (``TensorInfo``, ``OpCall``) and what it returns (``Cost``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import sympy

__all__ = ["TensorInfo", "OpCall", "Cost", "ZERO", "numel", "product"]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """A tensor as a rule sees it: symbolic shape, dtype name, element size in bytes, and whether
    autograd tracks it (in the forward, it depends on a trainable parameter) — fused kernels
    without an output mask need that to know which gradients are computed."""

    shape: tuple[sympy.Expr, ...]
    dtype: str
    itemsize: int
    requires_grad: bool = False

    @property
    def numel(self) -> sympy.Expr:
        """Number of elements, a sympy expression."""
        return product(self.shape)

    @property
    def nbytes(self) -> sympy.Expr:
        """Storage size in bytes, a sympy expression."""
        return self.numel * self.itemsize


@dataclasses.dataclass(frozen=True)
class OpCall:
    """One aten call in the graph: its op name, arguments (tensors as ``TensorInfo``) and outputs.

    ``options`` carries the analysis options a rule may honour (e.g. ``causal_attention``).
    """

    op: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    out: Any  # TensorInfo, a tuple of them, or a size
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """Positional argument ``index``, else keyword ``name``, else ``default``."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        """Every tensor output, flattened."""
        out = self.out if isinstance(self.out, (tuple, list)) else (self.out,)
        return tuple(o for o in out if isinstance(o, TensorInfo))


@dataclasses.dataclass(frozen=True)
class Cost:
    """FLOPs of one aten call.

    ``flops`` follows FlopCounterMode's convention (1 multiply-add = 2 FLOPs; only matmul-like
    ops, convolutions and attention count); ``other_flops`` is symcx's count for everything
    FlopCounterMode ignores (elementwise, norms, pooling, softmax, reductions). ``factors``
    keeps the product behind ``flops`` unevaluated, for derivations; ``fcm_flops`` is what
    FlopCounterMode reports where it is known to be wrong, with ``note`` saying why.
    """

    flops: sympy.Expr = sympy.Integer(0)
    other_flops: sympy.Expr = sympy.Integer(0)
    factors: tuple[tuple[sympy.Expr, ...], ...] = ()
    fcm_flops: sympy.Expr | None = None
    note: str = ""

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(
            flops=self.flops + other.flops,
            other_flops=self.other_flops + other.other_flops,
            factors=self.factors + other.factors,
            fcm_flops=None
            if self.fcm_flops is None and other.fcm_flops is None
            else (self.fcm_flops if self.fcm_flops is not None else self.flops)
            + (other.fcm_flops if other.fcm_flops is not None else other.flops),
            note="; ".join(x for x in (self.note, other.note) if x),
        )


ZERO = Cost()


def product(items) -> sympy.Expr:
    """Product of sizes as a sympy expression (1 for an empty shape)."""
    return sympy.Mul(*[sympy.sympify(i) for i in items])


def numel(x: TensorInfo) -> sympy.Expr:
    """Number of elements of ``x``."""
    return x.numel
