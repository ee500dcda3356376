"""Oracles for the rule tests: FlopCounterMode on real (or decomposed) modules, and the aten
calls of a real training step replayed through symcx's rules.

Replaying a real step is how the property tests stay cheap: no tracing, just the exact aten
calls (ops, arguments, shapes) a layer makes, each turned into an ``OpCall`` and costed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import sympy
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from symcx._torch import TorchDispatchMode, op_names, op_schema, tree_leaves
from symcx.cost import Cost, OpCall, TensorInfo, bind_arguments
from symcx.rules import is_free, lookup


def info(x: torch.Tensor, *, grad: bool = False) -> TensorInfo:
    """The ``TensorInfo`` a rule would see for ``x``; ``requires_grad`` recorded when ``grad``."""
    shape = tuple(sympy.Integer(s) for s in x.shape)
    dtype = str(x.dtype).replace("torch.", "")
    return TensorInfo(shape, dtype, x.element_size(), grad and x.requires_grad)


def _convert(value: Any, grad: bool) -> Any:
    if isinstance(value, torch.Tensor):
        return info(value, grad=grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_convert(v, grad) for v in value)
    if isinstance(value, dict):
        return {k: _convert(v, grad) for k, v in value.items()}
    return value


def op_call(func: Any, args: Sequence[Any], kwargs: dict, out: Any, *, grad: bool = False, **options: Any) -> OpCall:
    """The ``OpCall`` of one aten call (``func`` an OpOverload) with real arguments, bound to its schema."""
    arguments = bind_arguments(op_schema(func), _convert(tuple(args), grad), _convert(dict(kwargs), grad))
    return OpCall(op_names(func)[0], arguments, _convert(out, grad), options)


class Recorder(TorchDispatchMode):
    """Records every aten call (op, args, kwargs, out) that runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


@dataclasses.dataclass
class Step:
    """One real training step: the aten calls of each phase and FlopCounterMode's totals."""

    forward_calls: list
    backward_calls: list
    fcm_forward: int
    fcm_backward: int

    def costs(
        self, phase: str, *, grad: bool = False, strict: bool = False, **options: Any
    ) -> list[tuple[str, Cost]]:
        """(op, symcx cost) of every call of ``phase`` that has a rule.

        An op with no rule fails the test if FlopCounterMode has a formula for it, or if
        ``strict`` (for ``other_flops`` checks); free ops (views, copies) are skipped.
        """
        out = []
        for func, args, kwargs, result in getattr(self, f"{phase}_calls"):
            call = op_call(func, args, kwargs, result, grad=grad, **options)
            fn = lookup(call.op)
            if fn is None:
                free = is_free(call.op.rsplit(".", 1)[0])
                assert free or not (strict or func.overloadpacket in flop_registry), f"no cost rule for {call.op}"
                continue
            out.append((call.op, fn(call)))
        return out

    def flops(self, phase: str, *, grad: bool = False, **options: Any) -> int:
        """symcx's FLOPs of ``phase`` (``forward`` or ``backward``)."""
        return int(sum(c.flops for _, c in self.costs(phase, grad=grad, **options)))

    def fcm_view(self, phase: str, **options: Any) -> int:
        """What symcx says FlopCounterMode reports for ``phase`` (``fcm_flops`` where it differs)."""
        costs = self.costs(phase, **options)
        return int(sum(c.flops if c.fcm_flops is None else c.fcm_flops for _, c in costs))

    def other_flops(self, phase: str, **options: Any) -> int:
        """symcx's ``other_flops`` of ``phase``; every op of it must have a rule or be free."""
        return int(sum(c.other_flops for _, c in self.costs(phase, strict=True, **options)))

    def ops(self, phase: str) -> list[str]:
        """Names of the aten calls of ``phase``, in order."""
        return [op_names(f)[1] for f, *_ in getattr(self, f"{phase}_calls")]


def _loss(out: Any) -> torch.Tensor:
    """Sum of every floating-point output, as symcx's default loss."""
    leaves = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    return sum(x.sum() for x in leaves)


def run_step(fn: Callable[..., Any], *inputs: Any) -> Step:
    """Run ``fn(*inputs)`` and its backward under FlopCounterMode and a :class:`Recorder`."""
    with FlopCounterMode(display=False) as f_fwd, Recorder() as r_fwd:
        out = fn(*inputs)
    loss = _loss(out)
    with FlopCounterMode(display=False) as f_bwd, Recorder() as r_bwd:
        loss.backward()
    return Step(r_fwd.calls, r_bwd.calls, f_fwd.get_total_flops(), f_bwd.get_total_flops())


def run_forward(fn: Callable[..., Any], *inputs: Any) -> Step:
    """Run ``fn(*inputs)`` alone (ops without a derivative: ``scatter`` with ``reduce=``, ``put``)
    under FlopCounterMode and a :class:`Recorder`; the backward phase is empty."""
    with FlopCounterMode(display=False) as f_fwd, Recorder() as r_fwd:
        fn(*inputs)
    return Step(r_fwd.calls, [], f_fwd.get_total_flops(), 0)


def fcm_counts(fn: Callable[..., Any], *inputs: Any) -> tuple[int, int]:
    """(forward, backward) FLOPs FlopCounterMode counts for ``fn(*inputs)`` and its backward."""
    with FlopCounterMode(display=False) as f:
        out = fn(*inputs)
    forward = f.get_total_flops()
    loss = _loss(out)
    with FlopCounterMode(display=False) as f:
        loss.backward()
    return forward, f.get_total_flops()


def fcm_forward(fn: Callable[..., Any], *inputs: Any) -> int:
    """FLOPs FlopCounterMode counts for ``fn(*inputs)`` alone (no backward)."""
    with FlopCounterMode(display=False) as f:
        fn(*inputs)
    return f.get_total_flops()


def needs_grad(x: torch.Tensor, flag: bool) -> torch.Tensor:
    """A leaf copy of ``x`` that requires a gradient when ``flag`` is set."""
    return x.detach().clone().requires_grad_(flag)


def evaluate(expr: Any, **values: int) -> int:
    """An analysis figure at concrete symbol values, as an int."""
    expr = sympy.sympify(expr)
    subs = {s: values[s.name] for s in expr.free_symbols if s.name in values}
    result = expr.subs(subs)
    assert result.is_number, f"{expr} still has symbols after {values}"
    return int(result)
