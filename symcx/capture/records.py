"""What the tracer hands on: a :class:`Trace` (the joint aten graph and how to read its sizes) and
the :class:`DimSpec` a user's named dimension becomes."""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy
import torch

from .._torch import ShapeEnv
from ..symbols import to_plain
from .recorder import TensorMeta

__all__ = ["DimSpec", "Trace"]


@dataclasses.dataclass(frozen=True)
class DimSpec:
    """A symbolic input dimension: ``name`` for dim ``dim`` of input number ``input``.

    ``shared``: also every other input of the same rank whose size there equals input 0's
    (token ids with their attention mask and token types share ``L``).
    """

    name: str
    dim: int
    input: int = 0
    shared: bool = False


@dataclasses.dataclass
class Trace:
    """The joint graph of one training step and what is needed to read its sizes.

    ``rename`` maps ShapeEnv symbols to user symbols (``t``, ``H``, ``d_0``…); every
    size must go through :meth:`expr` before it leaves the capture layer. ``notes`` say where
    the tracer departed from what was asked (a batch the model pins is traced concrete).
    """

    graph: torch.fx.Graph
    rename: dict[sympy.Symbol, sympy.Expr]
    shape_env: ShapeEnv
    user_symbols: dict[str, sympy.Symbol]
    hints: dict[sympy.Symbol, int]
    param_nodes: dict[str, str]  # fx placeholder name -> parameter name
    buffer_nodes: dict[str, str]
    input_nodes: list[str]
    trainable: frozenset[str]
    assumptions: list[sympy.Basic]
    dropped_guards: list[sympy.Basic]
    module_types: dict[str, str]
    leaf_modules: frozenset[str]
    notes: list[str] = dataclasses.field(default_factory=list)  # how the trace departed from the request
    state_nodes: dict[str, str] = dataclasses.field(default_factory=dict)  # placeholder -> "<param>.<state key>"
    optimizer: str | None = None  # the traced optimizer's name, when the iteration includes its step
    grad_nodes: dict[str, str] = dataclasses.field(default_factory=dict)  # placeholder -> param (held .grad)
    precision: str = "as given"  # the traced precision's name (capture.precision)
    micro_steps: int = 1  # forwards and backwards traced before the optimizer's step
    deaths: dict[str, str] = dataclasses.field(default_factory=dict)  # node -> last node when its storage died
    _exprs: dict[Any, sympy.Expr] = dataclasses.field(default_factory=dict, repr=False)

    def expr(self, value: Any) -> sympy.Expr:
        """A size (int, SymInt or sympy expr) as plain sympy in user symbols (memoized)."""
        if isinstance(value, (torch.SymInt, torch.SymFloat)):
            value = value.node.expr
        if isinstance(value, (int, float)):
            return sympy.Integer(value) if isinstance(value, int) else sympy.Float(value)
        out = self._exprs.get(value)
        if out is None:
            out = self._exprs[value] = to_plain(self.shape_env.replace(value)).xreplace(self.rename)
        return out

    def shape(self, tensor: torch.Tensor | TensorMeta) -> tuple[sympy.Expr, ...]:
        """The shape of a (fake) tensor in user symbols."""
        return tuple(self.expr(s) for s in tensor.shape)
