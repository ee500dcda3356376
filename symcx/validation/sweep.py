"""The validation sweep: analyze once, then run the real model at each batch size and compare.

What runs: the model itself (eager PyTorch, not the traced graph) on a batch of size ``t``
made by repeating the example input's rows, then the scalar loss symcx traced (the sum of
the floating-point outputs, or ``loss``); the output is kept until the run ends, as a
training loop keeps ``output`` while it calls ``loss.backward()``. With ``backward`` that
is a training step without the optimizer: training mode, then ``loss.backward()``,
gradients dropped (``set_to_none``) before every run as ``optimizer.zero_grad()`` does.
Without it, it is inference: eval mode under ``torch.no_grad()``. The analysis is traced in
the same mode. Per batch size, in this order:

1. one run under ``FlopCounterMode``, forward and backward counted apart;
2. one run under the memory tracker (``torch.cuda.max_memory_allocated``, or
   :func:`symcx.validation.live_bytes.measure_peak_bytes` on CPU);
3. ``warmup`` untimed runs, then ``repeats`` timed ones.

An out-of-memory error (CUDA's, or the CPU allocator's ``can't allocate memory``) or any
other exception at one size is recorded in that size's row, memory is freed, and the sweep
goes on. A size whose predicted peak (baseline included) exceeds the memory the device has
free is not run but recorded as ``skipped``, unless ``force``. Ctrl-C (``KeyboardInterrupt``)
ends the sweep: the sizes that finished are kept and the result is marked ``partial``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._torch import tree_leaves, tree_map
from .._version import __version__
from ..routes import analyze
from ..errors import DeviceError, SymcxError
from ..capture import default_loss
from . import measure
from .fit import fit_line
from .graph_run import (GraphMeasurement, GraphSide, excluded_by, graph_size, time_source, traced_analysis,
                        with_time_model)
from .predict import Formulas, formulas
from .report import FlopCheck, SizeResult, Validation, format_bytes, shapes_with_t
from .step_time import profile_dtype
from .timing import Calibration

__all__ = ["validate"]

Progress = Callable[[int, int, str], None]


def _call(model: torch.nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, dict):
        return model(**batch)
    return model(*batch)


def _storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages under ``tensors`` (tied weights counted once)."""
    seen: dict[int, int] = {}
    for x in tree_leaves(tensors):
        if isinstance(x, torch.Tensor):
            st = x.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _measure(
    model: torch.nn.Module,
    batch: Any,
    dev: torch.device,
    *,
    backward: bool,
    repeats: int,
    warmup: int,
    loss: Callable[[Any], torch.Tensor],
) -> dict[str, Any]:
    """FLOPs, peak bytes and time samples of one batch; raises what the model raises."""
    grad_mode = contextlib.nullcontext if backward else torch.no_grad

    def forward() -> tuple[Any, torch.Tensor]:
        with grad_mode():
            out = _call(model, batch)
            return out, loss(out)

    def step() -> None:
        out, scalar = forward()  # the output stays alive through backward, as in a training loop
        if backward:
            scalar.backward()

    def drop_grads() -> None:
        model.zero_grad(set_to_none=True)

    drop_grads()
    fwd, bwd = measure.count_flops(forward, (lambda result: result[1].backward()) if backward else None)
    drop_grads()
    peak, base = measure.peak_bytes(step, dev)
    if base is None:
        base = _storage_bytes((list(model.parameters()), list(model.buffers()), batch))
    samples = measure.time_step(step, dev, repeats, warmup, before=drop_grads)
    drop_grads()
    return {"fwd": fwd, "bwd": bwd, "peak": peak, "base": base, "samples": samples}


def _row(batch_size: int, f: Formulas, backward: bool, measured: dict[str, Any] | None,
         status: str = "ok", error: str | None = None) -> SizeResult:
    p = f.at(batch_size)
    m = measured or {}
    checks = [FlopCheck("forward", p["forward_flops"], p["fcm_forward_flops"], m.get("fwd"))]
    if backward:
        checks.append(FlopCheck("backward", p["backward_flops"], p["fcm_backward_flops"], m.get("bwd")))
    samples = tuple(m.get("samples", ()))
    return SizeResult(
        batch_size=batch_size,
        status=status,
        error=error,
        flops=tuple(checks),
        predicted_flops=p["forward_flops"] + p["backward_flops"],
        predicted_bytes=p["predicted_bytes"],
        predicted_baseline_bytes=p["baseline_bytes"],
        times_s=samples,
        time=measure.summarize(list(samples)) if samples else None,
        peak_bytes=m.get("peak"),
        baseline_bytes=m.get("base"),
    )


def _too_big(predicted: int, free: int | None, dev: torch.device) -> str | None:
    """Why a size is skipped (its predicted peak exceeds ``free``), or None to run it."""
    if free is None or predicted <= free:
        return None
    return (f"predicted peak {format_bytes(predicted)} exceeds the {format_bytes(free)} free on {dev}; "
            f"not run (force=True, --force, to try anyway)")


def _run_size(model: torch.nn.Module, example: Any, b: int, dev: torch.device, f: Formulas, *,
              backward: bool, repeats: int, warmup: int, batch_dim: int, force: bool,
              loss: Callable[[Any], torch.Tensor]) -> SizeResult:
    """One batch size: skipped if predicted too big, else measured; an exception is recorded, not raised."""
    p = f.at(b)
    skip = None if force else _too_big(p["predicted_bytes"] + p["baseline_bytes"], measure.available_bytes(dev), dev)
    if skip is not None:
        return _row(b, f, backward, None, "skipped", skip)
    try:
        measured = _measure(model, measure.make_batch(example, b, dev, batch_dim), dev, backward=backward,
                            repeats=repeats, warmup=warmup, loss=loss)
    except Exception as err:  # the user's model may raise anything; record it per size
        failure = ("oom" if measure.is_oom(err) else "error", _one_line(err))
    else:
        return _row(b, f, backward, measured)
    model.zero_grad(set_to_none=True)  # out of the except block: its traceback no longer holds the batch
    measure.free_memory(dev)
    return _row(b, f, backward, None, *failure)


def _size(model: torch.nn.Module, example: Any, b: int, dev: torch.device, f: Formulas, assumptions: list,
          graph: GraphSide | None, *, backward: bool, repeats: int, warmup: int, batch_dim: int, force: bool,
          loss: Callable[[Any], torch.Tensor]) -> tuple[SizeResult, GraphMeasurement | None]:
    """One batch size: excluded by the assumptions, or the eager run and (``graph``) the traced graph."""
    why = excluded_by(assumptions, b)
    if why is not None:
        return _row(b, f, backward, None, "excluded", f"t={b} is outside what the analysis assumes ({why}): its "
                    f"formulas and traced graph do not hold there; not run"), None
    row = _run_size(model, example, b, dev, f, backward=backward, repeats=repeats, warmup=warmup,
                    batch_dim=batch_dim, force=force, loss=loss)
    if graph is None:
        return row, None
    return graph_size(row, graph, model, lambda: measure.make_batch(example, b, dev, batch_dim), dev,
                      repeats=repeats, warmup=warmup)


def _check_args(batch_sizes: Sequence[int], repeats: int, warmup: int) -> list[int]:
    sizes = list(batch_sizes)
    if not sizes:
        raise SymcxError("batch_sizes is empty: give at least one batch size")
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise SymcxError(f"batch sizes must be positive integers, got {b!r}")
    if len(set(sizes)) != len(sizes):
        raise SymcxError(f"batch sizes repeat: {sizes}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SymcxError(f"repeats must be an integer of at least 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise SymcxError(f"warmup must be a non-negative integer, got {warmup!r}")
    return sizes


def validate(
    model: torch.nn.Module,
    example_input: Any,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = (1, 16, 64, 256),
    backward: bool = False,
    repeats: int = 20,
    warmup: int = 3,
    progress: Progress | None = None,
    *,
    batch_dim: int = 0,
    loss: Callable[[Any], torch.Tensor] | None = None,
    force: bool = False,
    run: str = "graph",
    calibration: Calibration | str | None = None,
    device_profile: str | None = None,
) -> Validation:
    """Run ``model`` at each batch size on ``device`` and compare with symcx's formulas.

    With ``run="graph"`` (the default) each size also executes the traced joint graph itself
    (forward, loss, backward, whatever ``backward`` says), checks that its outputs and every
    gradient equal eager PyTorch's on the same seed (a mismatch is a failure naming the first
    differing module and node), times it node by node, and predicts its step time per size
    and per layer from ``calibration`` or ``device_profile`` (neither: a fit on this sweep's own
    node times, marked in-sample). A size the analysis' assumptions exclude (``t ≤ 15`` at
    ``t = 32``) is recorded as ``"excluded"`` and not run.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is moved to ``device`` for the sweep and moved back after, and its
        training mode is restored. It is run for real, so it must fit the device at the
        smallest batch size.
    example_input : Tensor, tuple of tensors, or dict of keyword tensors
        An input of the right shape; dim ``batch_dim`` of every tensor is the batch. Batches
        of each size repeat its rows.
    device : {"cpu", "cuda", "cuda:N"}
        Where to run. CUDA without a GPU raises :class:`~symcx.errors.DeviceError`.
    batch_sizes : sequence of int
        The batch sizes ``t`` to run, each once.
    backward : bool
        Run a training step without the optimizer (train mode, forward, ``loss.backward()``)
        instead of inference (eval mode, forward under ``torch.no_grad()``).
    repeats, warmup : int
        Timed runs per size, after ``warmup`` untimed ones.
    progress : callable, optional
        ``progress(done, total, label)``, called as each batch size finishes.
    batch_dim : int
        The batch dimension of every input.
    loss : callable, optional
        Output → scalar; default the sum of every floating-point output, as in
        :func:`symcx.analyze`.
    force : bool
        Run every size, even one whose predicted peak exceeds the memory the device has free
        (:func:`~symcx.validation.measure.available_bytes`); by default such a size is
        recorded as ``"skipped"`` with the reason.
    run : {"graph", "model"}
        ``"model"`` runs only the eager model (no graph check, no step-time prediction).
    calibration : Calibration or path, optional
        A step-time calibration (:func:`~symcx.validation.calibrate_device`, ``symcx calibrate``).
    device_profile : str, optional
        Predict from a named GPU's datasheet roofline instead (``"h100-sxm"``; at the parameters' dtype).

    Returns
    -------
    Validation
        With ``partial=True`` and the finished sizes only, when interrupted (Ctrl-C).

    Raises
    ------
    DeviceError
        ``device`` is not ``cpu``/``cuda``, CUDA is not available, or the parameters do not
        fit on the device.
    SymcxError
        Bad batch sizes, repeats, warmup or ``run``; both ``calibration`` and ``device_profile``,
        an unreadable calibration or an unknown profile; formulas in symbols other than ``t``; and
        what :func:`symcx.analyze` raises (``TraceError``, ``ShapeError``).

    Examples
    --------
    >>> import torch, symcx
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> v = symcx.validate(mlp, torch.randn(1, 4), batch_sizes=[2, 4, 8], repeats=2, warmup=0)
    >>> [(r.batch_size, r.flops[0].measured, r.flops[0].expected) for r in v.sizes]
    [(2, 72, 72), (4, 144, 144), (8, 288, 288)]
    >>> v.ok
    True
    """
    dev = measure.resolve_device(device)
    sizes = _check_args(batch_sizes, repeats, warmup)
    if run not in ("graph", "model"):
        raise SymcxError(f"run must be 'graph' (the traced graph and the model) or 'model', not {run!r}")
    dtype = profile_dtype(model)
    source = time_source(calibration, device_profile, dtype)
    first = next(iter(model.parameters()), None)
    home = first.device if first is not None else dev
    was_training = model.training
    loss_fn = loss or default_loss
    example = tree_map(lambda x: x.to(dev) if isinstance(x, torch.Tensor) else x, example_input)
    shapes = [tuple(x.shape) for x in tree_leaves(example_input) if isinstance(x, torch.Tensor)]
    try:
        try:
            model.to(dev)
        except Exception as err:
            if measure.is_oom(err):
                raise DeviceError(f"the model's parameters do not fit on {dev}: {_one_line(err)}") from err
            raise
        if run == "graph":
            a, trace, no_graph = traced_analysis(model, example, batch_dim=batch_dim, loss=loss, train=backward)
        else:
            a, trace, no_graph = analyze(model, example, batch_dim=batch_dim, loss=loss, train=backward), None, None
        f = formulas(a, backward)
        model.train(backward)
        rows: list[SizeResult] = []
        runs: dict[int, GraphMeasurement] = {}
        partial = False
        graph = GraphSide(trace, no_graph, loss) if run == "graph" else None
        try:
            for done, b in enumerate(sizes, 1):
                row, measured = _size(model, example, b, dev, f, a.assumptions, graph, backward=backward,
                                      repeats=repeats, warmup=warmup, batch_dim=batch_dim, force=force, loss=loss_fn)
                rows.append(row)
                if measured is not None:
                    runs[b] = measured
                if progress is not None:
                    progress(done, len(sizes), f"t={b} {rows[-1].status}")
        except KeyboardInterrupt:  # keep what finished; the caller says it was interrupted
            partial = True
            model.zero_grad(set_to_none=True)
            measure.free_memory(dev)
    finally:
        model.train(was_training)
        model.to(home)

    rows, time_model = with_time_model(rows, a.step, runs, source, dtype, measure.device_name(dev))
    ran = [r for r in rows if r.status == "ok"]
    return Validation(
        model=type(model).__name__,
        device=str(dev),
        device_name=measure.device_name(dev),
        backward=backward,
        repeats=repeats,
        warmup=warmup,
        batch_dim=batch_dim,
        input_shapes=shapes_with_t(shapes, batch_dim),
        run=("eager model on batches repeating the example's rows; "
             + ("train mode: forward, loss, loss.backward(); gradients set to None before each run"
                if backward else "eval mode under torch.no_grad(): forward and loss")
             + ("; and the traced joint graph (forward, loss, backward) run node by node on the same batches, "
                "checked against eager on the same seed" if run == "graph" else "")),
        formulas=f.as_strings(),
        memory_model=f.memory_model,
        memory_tracker=measure.TRACKERS[dev.type],
        deviations=tuple(a.deviations),
        sizes=tuple(rows),
        time_fit=fit_line([r.predicted_flops for r in ran], [r.median_s for r in ran]),
        memory_fit=fit_line([r.predicted_bytes for r in ran], [r.peak_bytes for r in ran]),
        torch_version=torch.__version__,
        symcx_version=__version__,
        partial=partial,
        run_mode=run,
        time_model=time_model,
    )
