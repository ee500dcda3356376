"""What a cost rule sees (``TensorInfo``, ``OpCall``) and what it returns (``Cost``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import sympy
import torch

__all__ = ["TensorInfo", "OpCall", "Cost", "ZERO", "product", "bind_arguments"]


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


def bind_arguments(schema: torch.FunctionSchema | None, args: tuple, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Every argument of one call by its schema name: given positionally, by keyword, or the default.

    >>> from symcx._torch import op_schema
    >>> bind_arguments(op_schema(torch.ops.aten.addmm.default), ("b", "x", "w"), {})
    {'self': 'b', 'mat1': 'x', 'mat2': 'w', 'beta': 1, 'alpha': 1}
    """
    if schema is None:
        return {f"arg{k}": v for k, v in enumerate(args)} | dict(kwargs)
    bound: dict[str, Any] = {}
    for k, arg in enumerate(schema.arguments):
        if k < len(args) and not arg.kwarg_only:
            bound[arg.name] = args[k]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value if arg.has_default_value() else None
    return bound


@dataclasses.dataclass(frozen=True)
class OpCall:
    """One aten call: its op name, arguments by schema name (tensors as ``TensorInfo``), outputs.

    A rule reads arguments by name, ``call["output_mask"]``, never by position. ``options``
    carries the analysis options a rule may honour (e.g. ``causal_attention``).
    """

    op: str
    arguments: Mapping[str, Any]
    out: Any  # TensorInfo, a tuple of them, or a size
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        try:
            return self.arguments[name]
        except KeyError:
            raise KeyError(f"{self.op} has no argument {name!r}; it has {list(self.arguments)}") from None

    def get(self, name: str, default: Any = None) -> Any:
        """Argument ``name``, or ``default`` when the schema has none of that name or it is None."""
        value = self.arguments.get(name)
        return default if value is None else value

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        """Every tensor argument in schema order (lists of tensors flattened)."""
        out: list[TensorInfo] = []
        for value in self.arguments.values():
            items = value if isinstance(value, (tuple, list)) else (value,)
            out += [v for v in items if isinstance(v, TensorInfo)]
        return tuple(out)

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


ZERO = Cost()


def product(items) -> sympy.Expr:
    """Product of sizes as a sympy expression (1 for an empty shape)."""
    return sympy.Mul(*[sympy.sympify(i) for i in items])
