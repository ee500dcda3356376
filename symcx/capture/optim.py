"""The optimizer of a traced training iteration: which one, and its step recorded on fake parameters.

:func:`optimizer_factory` turns what a user passes (``"adam"``, a ``torch.optim`` class name
such as ``"RMSprop"``, an ``Optimizer`` subclass, an instance, or a callable ``params ->
Optimizer`` such as ``functools.partial(torch.optim.Adam, lr=1e-3, amsgrad=True)``) into a
factory. :func:`record_optimizer_step` runs that optimizer on the fake trainable parameters,
their ``.grad`` set to the traced gradients: the *steady* step reads state made by an
unrecorded warm-up step (the state becomes ``state_*`` placeholders), the *first* step creates
its state while recorded. Which implementation runs (for-loop, foreach, fused) is what torch
picks for the parameters' device, unless the user's arguments say otherwise.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import SymcxError
from .precision import AS_GIVEN, Precision
from .recorder import Recorder

__all__ = ["OptimizerSpec", "Iteration", "optimizer_factory", "record_optimizer_step", "SHORTHANDS", "STEPS"]

#: Shorthand names: the optimizer and its keyword arguments.
SHORTHANDS: dict[str, tuple[str, dict[str, Any]]] = {
    "sgd": ("SGD", {"lr": 0.01}),
    "sgd-momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
}
#: The iterations that can be traced: the first step of a fresh optimizer, or any later one.
STEPS = ("steady", "first")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer to trace: ``name`` for reports, ``make(params)`` builds it."""

    name: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]


@dataclasses.dataclass(frozen=True)
class Iteration:
    """What a traced iteration runs: ``micro_steps`` forwards and backwards, their gradients
    accumulated in place as ``loss.backward()`` does, then, with an ``optimizer``,
    ``optimizer.step()`` (the ``steady`` state or the ``first`` step of a fresh optimizer) and
    ``zero_grad(set_to_none=...)``; the forward at ``precision``.

    With ``set_to_none=False`` the steady state finds the gradients already allocated (zeroed by
    the last ``zero_grad``), so even the first micro-step accumulates into them.
    """

    optimizer: OptimizerSpec | None = None
    step: str = "steady"
    set_to_none: bool = True
    micro_steps: int = 1
    precision: Precision = AS_GIVEN

    def __post_init__(self) -> None:
        if self.step not in STEPS:
            raise SymcxError(f"step must be one of {STEPS}, not {self.step!r}")
        if not self.set_to_none and self.optimizer is None:
            raise SymcxError("set_to_none=False keeps gradients between iterations: give the optimizer too")
        if isinstance(self.micro_steps, bool) or not isinstance(self.micro_steps, int) or self.micro_steps < 1:
            raise SymcxError(f"accumulate must be a whole number of micro-steps, 1 or more, not {self.micro_steps!r}")

    @property
    def held_grads(self) -> bool:
        """Whether the gradients exist before the iteration starts (``set_to_none=False``, steady)."""
        return not self.set_to_none and self.step == "steady"


def _optim_classes() -> dict[str, type]:
    return {name.lower(): cls for name, cls in vars(torch.optim).items()
            if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}


def _from_name(name: str, kwargs: dict[str, Any]) -> OptimizerSpec:
    classes = _optim_classes()
    base, extra = SHORTHANDS.get(name.lower(), (name, {}))
    cls = classes.get(base.lower())
    if cls is None:
        known = sorted(SHORTHANDS) + sorted(c.__name__ for c in classes.values())
        raise SymcxError(f"unknown optimizer {name!r}; use one of {', '.join(known)}")
    spec = _from_class(cls, {**extra, **kwargs}, name)
    return spec if kwargs else OptimizerSpec(name.lower() if name.lower() in SHORTHANDS else cls.__name__, spec.make)


def _from_class(cls: type, kwargs: dict[str, Any], name: str | None = None) -> OptimizerSpec:
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in kwargs if k not in accepted and not any(p.kind is p.VAR_KEYWORD for p in accepted.values())]
    if unknown:
        raise SymcxError(f"{cls.__name__} takes no argument {', '.join(map(repr, unknown))}; it takes "
                         f"{', '.join(k for k in accepted if k not in ('self', 'params'))}")
    label = name or cls.__name__
    if kwargs:
        label += "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    return OptimizerSpec(label, lambda params: cls(params, **kwargs))


def optimizer_factory(optimizer: Any, **kwargs: Any) -> OptimizerSpec:
    """The optimizer to trace, from a name, a class, an instance or a callable ``params -> Optimizer``.

    Raises
    ------
    SymcxError
        For something that is not an optimizer, an unknown name, or arguments the optimizer does not take.
    """
    if isinstance(optimizer, OptimizerSpec):
        return optimizer
    if isinstance(optimizer, str):
        return _from_name(optimizer, kwargs)
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return _from_class(optimizer, kwargs)
    if isinstance(optimizer, torch.optim.Optimizer):
        defaults = {k: v for k, v in optimizer.defaults.items()
                    if k in inspect.signature(type(optimizer).__init__).parameters}
        return _from_class(type(optimizer), {**defaults, **kwargs}, type(optimizer).__name__)
    if callable(optimizer) and not isinstance(optimizer, type):
        name = getattr(optimizer, "func", optimizer)
        return OptimizerSpec(getattr(name, "__name__", repr(optimizer)), optimizer)
    raise SymcxError(f"optimizer must be a torch.optim.Optimizer (class, instance, or a callable params -> "
                     f"Optimizer) or a name such as 'adam', not {type(optimizer).__name__}")


def _state_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of the optimizer's state, named ``<parameter>.<key>``."""
    out = []
    for param, state in opt.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out.append((f"{names.get(id(param), '?')}.{key}", value))
    return out


def record_optimizer_step(
    recorder: Recorder, iteration: Iteration, params: Sequence[tuple[str, torch.Tensor]],
    grads: Sequence[torch.Tensor | None], scaler: Any = None,
) -> tuple[dict[str, str], list[torch.Tensor]]:
    """Record ``optimizer.step()`` and ``zero_grad()`` on fake ``params`` with ``grads`` as their ``.grad``
    (with a ``torch.amp.GradScaler``, its ``unscale_`` first and its ``update`` after).

    Returns the state placeholders (node name → ``<parameter>.<key>``: the state the recorded step
    finds, made by the constructor and, for the steady state, by an unrecorded warm-up step) and
    the state tensors after the step (kept to the end of the iteration: they outlive it).
    """
    spec = iteration.optimizer
    for (_, p), g in zip(params, grads):
        p.grad = g
    names = {id(p): name for name, p in params}
    with recorder.paused():  # built before the loop, as a user builds it (Adagrad makes its state here)
        try:
            opt = spec.make([p for _, p in params])
        except (TypeError, ValueError) as err:
            raise SymcxError(f"cannot build the optimizer {spec.name}: {err}") from err
        if not isinstance(opt, torch.optim.Optimizer):
            raise SymcxError(f"the optimizer factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
        if iteration.step == "steady":  # the warm-up step makes the state the recorded step reads
            opt.step()
    placeholders = {recorder.placeholder(f"state_{k}", value).name: name
                    for k, (name, value) in enumerate(_state_tensors(opt, names))}
    recorder.set_tag(phase="optimizer", module="")
    if scaler is not None:  # GradScaler.step() reads found_inf with .item(); the finite path is traced
        scaler.unscale_(opt)
    opt.step()
    if scaler is not None:
        scaler.update()
    opt.zero_grad(set_to_none=iteration.set_to_none)
    return placeholders, [v for _, v in _state_tensors(opt, names)]
