"""The route layer: :func:`analyze` traces a step symbolically, or, where that fails, by interpolation.

Each route hands :class:`~symcx.analysis.Analysis` the same three things: a typed
:class:`~symcx.step.Step` with costs attached, the unsupported ops, and a
:class:`~symcx.memory.MemoryModel`. Nothing above this layer knows which route ran (the
step's ``route`` and ``fallback_reason`` say so for reports).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .analysis import Analysis
from .capture import DimSpec, Iteration, optimizer_factory, precision_of, trace_training_step
from .capture.distributed import fsdp_shard_numels
from .capture.fsdp_policy import mp_policy_of
from .capture.precision import AS_GIVEN
from .capture.sharded import trace_fsdp_step
from .collector import fewer_collections
from .errors import ShapeError, SymcxError, TraceError
from .interpolate import interpolated
from .memory import MemoryModel, TracedMemory
from .rules import annotate_costs
from .step import Step, build_step

__all__ = ["analyze"]


def _symbolic(
    model: torch.nn.Module, example_input: Any, batch_dim: int | None, dims: Sequence[DimSpec], widths: str | None,
    loss: Callable[[Any], torch.Tensor] | None, options: Mapping[str, Any], strict: bool,
    iteration: Iteration | None = None, reuse: bool = False,
) -> tuple[Step, Counter, MemoryModel]:
    """The symbolic route: one trace with symbolic sizes, costed node by node.

    Where the tracer departed from the request (``Trace.notes``: a batch the model pins), it warns;
    block reuse's notes (``reuse``) are kept in the step, not warned.
    With an optimizer, the first iteration of a fresh one is traced when its memory is asked for.
    """
    def traced(it: Iteration | None) -> tuple[Step, Counter]:
        trace = trace_training_step(model, example_input, batch_dim=batch_dim, dims=dims, widths=widths, loss=loss,
                                    iteration=it, reuse=reuse)
        for note in (n for n in trace.notes if not n.startswith("block reuse")):
            warnings.warn(f"symcx: {type(model).__name__}: {note}", UserWarning, stacklevel=4)
        step = build_step(trace)
        return step, annotate_costs(step.nodes, strict=strict, options=options)

    plain = dataclasses.replace(iteration, micro_steps=1) if iteration is not None else None
    step, unsupported = traced(plain)
    if iteration is not None:
        step.accumulate = iteration.micro_steps  # FLOPs per micro-batch; memory() traces them all
    mode = model.training  # the mode asked for; analyze() restores the model's own after

    def retrace(kind: str, dtype: Any) -> Step:
        it = dataclasses.replace(iteration or Iteration(), step=kind)
        if dtype is not None:
            it = dataclasses.replace(it, precision=precision_of(dtype))
        if it.micro_steps > 2:  # micro-steps after the second repeat it: same ops, same live bytes
            it = dataclasses.replace(it, micro_steps=2)
        was = model.training
        model.train(mode)
        try:
            return traced(it)[0]
        finally:
            model.train(was)

    separate = iteration is not None and iteration.micro_steps > 1
    return step, unsupported, TracedMemory(step, retrace=retrace, separate=separate)


def _dim_specs(dims: Mapping[str, Any] | None) -> list[DimSpec]:
    specs = []
    for name, where in (dims or {}).items():
        if name in ("t", "n", "N"):
            raise SymcxError(f"{name!r} is reserved (t batch, n epochs, N samples); choose another name")
        if isinstance(where, int):
            specs.append(DimSpec(name, where, 0, shared=True))
        elif isinstance(where, tuple) and len(where) == 2:
            specs.append(DimSpec(name, where[1], where[0]))
        elif isinstance(where, list) and where and all(isinstance(w, tuple) and len(w) == 2 for w in where):
            specs += [DimSpec(name, dim, index) for index, dim in where]
        else:
            raise SymcxError(
                f"dims[{name!r}] must be a dim index, (input index, dim) or a list of those, not {where!r}"
            )
    return specs


def _iteration(optimizer: Any, precision: Any, accumulate: int, set_to_none: bool) -> Iteration | None:
    """The iteration to trace beyond a plain forward and backward, or None for just that."""
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise SymcxError(f"accumulate must be a whole number of micro-steps, 1 or more, not {accumulate!r}")
    if accumulate != 1 and optimizer is None:
        raise SymcxError("accumulate=... traces the whole iteration up to the optimizer's step: give optimizer= "
                         "too (e.g. optimizer='sgd')")
    spec = None if optimizer is None else optimizer_factory(optimizer)
    it = Iteration(spec, set_to_none=set_to_none, micro_steps=accumulate, precision=precision_of(precision))
    return None if it == Iteration() else it


def _same_cause(first: str, again: str) -> bool:
    """Whether the fallback failed for the symbolic route's own reason (its message contains the cause)."""
    cause = first.strip().splitlines()[0].strip() if first.strip() else ""
    return bool(cause) and (again.strip() == first.strip() or cause in again)


def analyze(
    model: torch.nn.Module,
    example_input: Any,
    *,
    dims: Mapping[str, int | tuple[int, int]] | None = None,
    widths: bool | str = False,
    batch_dim: int | None = 0,
    loss: Callable[[Any], torch.Tensor] | None = None,
    train: bool = True,
    strict: bool = False,
    causal_attention: bool = False,
    optimizer: Any = None,
    precision: Any = None,
    accumulate: int = 1,
    set_to_none: bool = True,
    reuse: bool = True,
) -> Analysis:
    """Trace one training step of ``model`` and return its symbolic cost.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it may live on the ``meta`` device (no memory is touched).
    example_input : Tensor, tuple of tensors, or dict of keyword tensors
        An input of the right rank and dtype. Dim ``batch_dim`` of every tensor becomes the
        symbol ``t``; its example size does not matter (the trace uses 8).
    dims : dict, optional
        Input dimensions to make symbolic, by name: ``{"H": 2, "W": 3}`` (dims of the first
        input, and of every other input of its rank with the same example size there, as an
        attention mask beside token ids), ``{"L": (1, 1)}`` (input 1, dim 1 only) or
        ``{"L": [(0, 1), (2, 1)]}``. Example sizes must be 2 or more.
    widths : bool or {"d", "letters"}
        Make every layer width symbolic: ``d_0, d_1, …`` (True or "d") or the seed's
        ``i, j, k, l, …`` ("letters").
    batch_dim : int or None
        The batch dimension of every input; None for no batch symbol.
    loss : callable, optional
        Maps the model's output to the scalar whose gradient is taken; default: the sum of
        every floating-point output (backward FLOPs do not depend on the choice).
    train : bool
        Trace in training mode (dropout active, batch statistics), restoring the mode after.
    strict : bool
        Raise :class:`~symcx.errors.UnsupportedOpError` on an op with no cost rule instead of
        listing it in ``Analysis.unsupported``.
    causal_attention : bool
        Count only the unmasked half of a causal attention's score matrix (off by default,
        as FlopCounterMode, which counts the full square).
    optimizer : str, Optimizer class or instance, or callable, optional
        Trace the whole iteration: after the backward, this optimizer's ``step()`` and
        ``zero_grad()`` on the fake parameters, so ``memory()`` is that iteration's (``"adam"``,
        ``"RMSprop"``, ``torch.optim.AdamW``, an instance, or ``functools.partial(torch.optim.Adam,
        amsgrad=True)``). ``memory(step="first")`` is the first step of a fresh optimizer. The
        optimizer's own FLOPs land in the ``optimizer`` row's other FLOPs. The iteration ends
        with ``zero_grad(set_to_none=set_to_none)``.
    precision : str or torch.dtype, optional
        ``"bf16-autocast"`` or ``"fp16-autocast"`` (the forward and loss under ``torch.autocast``;
        fp16 with ``torch.amp.GradScaler``), or ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"fp64"`` (the model
        as ``model.to(dtype)`` makes it; the user's model is not touched). Default: as given, under
        whatever autocast the caller's ``with torch.autocast(...)`` block sets.
    accumulate : int
        Gradient accumulation: an iteration runs ``accumulate`` micro-batches of ``t``, each
        forward and backward adding into ``.grad``, then the optimizer's step (needs
        ``optimizer``). FLOPs and layers stay per micro-batch; ``memory()`` is the whole
        iteration's, traced (two micro-steps: later ones repeat the second).
    set_to_none : bool
        ``zero_grad``'s argument (needs ``optimizer`` when False): with False the gradients stay
        allocated between iterations and each backward adds into them.
    reuse : bool
        Trace each distinct block once (the default): a repeated module (same class, parameter
        layout and argument shapes, and the same values of the state its code reads: HF's
        ``layer_idx`` may differ where only a cache reads it) is copied from its first call,
        checked by running the model's forward on the meta device (or on static fake tensors),
        and traced normally where that check or its backward's shape fails. The figures are
        the full trace's; ``Analysis.route_note`` names the replayed and the refused blocks.
        Skipped (and said) where the repeats hold under a fifth of the model's leaf modules: the
        check would cost more than the replays save.

    Returns
    -------
    Analysis

    Raises
    ------
    TraceError
        The model cannot be traced (e.g. data-dependent control flow); the message names the
        cause and the model's source line.
    ShapeError
        The example input does not fit the model.
    UnsupportedOpError
        With ``strict=True``, for an op that has no rule.

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> a.forward_flops, a.backward_flops, a.params
    (24*t, 24*t, 15)
    """
    if not isinstance(model, torch.nn.Module):
        raise SymcxError(f"analyze() needs a torch.nn.Module, not {type(model).__name__}")
    style = None if widths is False else ("d" if widths is True else widths)
    if style not in (None, "d", "letters"):
        raise SymcxError(f"widths must be True, False, 'd' or 'letters', not {widths!r}")
    specs = _dim_specs(dims)
    options = {"causal_attention": causal_attention}
    iteration = _iteration(optimizer, precision, accumulate, set_to_none)
    was_training = model.training
    model.train(train)
    try:
        try:
            with fewer_collections():
                step, unsupported, memory = _symbolic(model, example_input, batch_dim, specs, style, loss, options,
                                                      strict, iteration, reuse)
        except TraceError as err:
            if style is not None or "data-dependent" in str(err):
                raise
            repeated = False
            try:  # the fallback route: concrete traces on a grid, interpolated exactly
                step, unsupported, memory = interpolated(
                    model, example_input, batch_dim=batch_dim, dims=specs, loss=loss, options=options,
                    reason=str(err).splitlines()[0], strict=strict, iteration=iteration,
                )
            except (TraceError, ShapeError) as again:  # the symbolic route's cause comes first
                if not _same_cause(str(err), str(again)):
                    raise TraceError(f"{err}\n  the interpolation fallback failed too: {again}") from err
                repeated = True
            if repeated:
                raise  # the fallback failed for the same reason: the symbolic route's error, once
    finally:
        model.train(was_training)

    def shards(gpus: int, units: Sequence[str]) -> dict[str, int]:  # fully_shard on a meta copy, fake group
        return fsdp_shard_numels(model, gpus, units)

    def fsdp_trace(gpus: int, batch: int, units: Sequence[str], reshard: bool, mp_policy: Any = None) -> Any:
        """Rank 0's step through ``fully_shard`` on fake tensors (the float32 model under ``mp_policy``,
        whose compute this analysis traced)."""
        policy = mp_policy_of(mp_policy)
        as_traced = iteration is not None and (iteration.precision == AS_GIVEN if policy is None
                                               else iteration.precision.name == policy.trace)
        if iteration is None or iteration.optimizer is None or iteration.micro_steps != 1 or loss is not None \
                or batch_dim != 0 or not as_traced or not iteration.set_to_none:
            raise SymcxError("the FSDP2 trace runs the plain step: analyze(..., optimizer=...) with the default "
                             "loss, batch_dim=0, no precision (with an mp_policy: its param_dtype's), accumulate=1 "
                             "and set_to_none=True")
        return trace_fsdp_step(model, example_input, gpus, batch, units, reshard, iteration.optimizer.make,
                               mp_policy=mp_policy)

    return Analysis(step, unsupported, memory, shards=shards, fsdp_trace=fsdp_trace)
