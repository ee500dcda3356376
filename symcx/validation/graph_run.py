"""The validation sweep's graph side: trace once, then per batch size run the traced graph itself.

:func:`traced_analysis` traces the step symbolically once and builds the :class:`~symcx.Analysis`
from that same trace (no second trace), keeping the trace to execute; a model that only the
interpolation route can analyse has no single graph, and says so. :func:`measure_graph` runs the
graph at one batch size: first against eager PyTorch on the same seed
(:func:`~symcx.validation.execute.compare_with_eager`), then ``warmup`` untimed and ``repeats``
timed runs, each node timed (:func:`~symcx.validation.execute.run_traced_step`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import sympy
import torch

from ..analysis import Analysis
from ..capture import Trace, trace_training_step
from ..errors import SymcxError, TraceError
from ..memory import TracedMemory
from ..routes import analyze
from ..rules import annotate_costs
from ..step import Step, build_step
from . import measure
from .execute import compare_with_eager, run_traced_step
from .report import SizeResult
from .step_time import TimeModel, TimeSource, layer_times, load_calibration, predict_time
from .timing import Calibration, DeviceProfile, calibrate, profile_named

__all__ = ["GraphMeasurement", "GraphSide", "traced_analysis", "measure_graph", "excluded_by", "time_source",
           "graph_size", "with_time_model"]


@dataclasses.dataclass(frozen=True)
class GraphMeasurement:
    """One batch size of the traced graph: whether it computes what eager does, and its times.

    ``mismatch`` lists what differs (``output 0``, ``grad of fc1.weight``) and the first module
    (and node) whose output differs; ``step_seconds`` holds the total of every timed run and
    ``node_seconds`` each node's fastest time over them (on a shared machine a node is now and
    then descheduled for milliseconds: its fastest time is the one other processes disturbed
    least); :attr:`best_s` is their sum.
    """

    matches_eager: bool
    mismatch: str | None
    max_abs_error: float
    random_nodes: tuple[str, ...]
    node_seconds: Mapping[str, float]
    step_seconds: tuple[float, ...]

    @property
    def best_s(self) -> float:
        """The step time from each node's fastest time, seconds: the sum of ``node_seconds``."""
        return sum(self.node_seconds.values())


@dataclasses.dataclass(frozen=True)
class GraphSide:
    """What the sweep needs to run the graph: the trace (None: ``no_graph`` says why) and the loss."""

    trace: Trace | None
    no_graph: str | None
    loss: Callable[[Any], Any] | None


def traced_analysis(model: torch.nn.Module, example: Any, *, batch_dim: int, loss: Callable[[Any], Any] | None,
                    train: bool) -> tuple[Analysis, Trace | None, str | None]:
    """(analysis, the trace it was built from, None), or (analysis, None, why no graph can run).

    The symbolic route as :func:`symcx.analyze` takes it, keeping the trace; where that route
    raises :class:`~symcx.errors.TraceError`, :func:`symcx.analyze` (and its interpolation route) is used.
    """
    was = model.training
    model.train(train)
    try:
        trace = trace_training_step(model, example, batch_dim=batch_dim, loss=loss)
    except TraceError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return (analyze(model, example, batch_dim=batch_dim, loss=loss, train=train), None,
                f"no traced graph to run: the symbolic trace failed ({reason})")
    finally:
        model.train(was)
    for note in trace.notes:
        warnings.warn(f"symcx: {type(model).__name__}: {note}", UserWarning, stacklevel=3)
    step = build_step(trace)
    unsupported = annotate_costs(step.nodes)
    return Analysis(step, unsupported, TracedMemory(step)), trace, None


def excluded_by(assumptions: list[sympy.Basic], batch_size: int) -> str | None:
    """The first assumption of the analysis in ``t`` alone that ``t = batch_size`` violates, as text, or None."""
    for cond in assumptions:
        free = cond.free_symbols
        if len(free) == 1 and next(iter(free)).name == "t" and cond.subs(next(iter(free)), batch_size) is sympy.false:
            return str(cond)
    return None


def measure_graph(trace: Trace, model: torch.nn.Module, batch: Any, batch_size: int, device: torch.device, *,
                  repeats: int, warmup: int, loss: Callable[[Any], Any] | None) -> GraphMeasurement:
    """Check the traced graph against eager at ``batch_size``, then time it node by node.

    Raises what the graph's ops raise on ``device`` (the sweep records it for this size).
    """
    at = {"t": batch_size}
    check, _ = compare_with_eager(trace, model, batch, at, device=str(device), loss=loss)
    mismatch = None if check.ok else "; ".join(check.mismatches)
    for _ in range(warmup):
        run_traced_step(trace, model, batch, at, device=str(device))
    runs = [run_traced_step(trace, model, batch, at, device=str(device)).node_seconds for _ in range(repeats)]
    fastest = {name: min(r[name] for r in runs) for name in runs[0]}
    return GraphMeasurement(check.ok, mismatch, check.max_abs_error, check.random_nodes, fastest,
                            tuple(sum(r.values()) for r in runs))


def time_source(calibration: Calibration | str | None, device_profile: str | None, dtype: str) -> TimeSource | None:
    """The calibration (or the file it is saved in) or the named profile to predict from; None for neither.

    Raises
    ------
    SymcxError
        Both given, an unreadable calibration, or an unknown profile.
    """
    if calibration is not None and device_profile is not None:
        raise SymcxError("give a calibration or a device profile to predict step time from, not both")
    if isinstance(calibration, (str, os.PathLike)):
        return load_calibration(calibration)
    if device_profile is not None:
        return profile_named(device_profile, dtype)
    return calibration


def graph_size(row: SizeResult, graph: GraphSide, model: torch.nn.Module, make_batch: Callable[[], Any],
               device: torch.device, *, repeats: int, warmup: int) -> tuple[SizeResult, GraphMeasurement | None]:
    """``row`` with the traced graph's check and time at its size (on ``make_batch()``, built only
    when the graph runs); what the graph raised is recorded, not raised."""
    if row.status in ("skipped", "oom", "excluded"):
        return row, None
    if graph.trace is None:
        return dataclasses.replace(row, graph_error=graph.no_graph), None
    try:
        m = measure_graph(graph.trace, model, make_batch(), row.batch_size, device, repeats=repeats, warmup=warmup,
                          loss=graph.loss)
    except Exception as err:  # an op the device cannot run, or any other failure: this size only
        text = str(err).strip().splitlines()
        failure = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    else:
        return dataclasses.replace(row, graph_matches_eager=m.matches_eager, graph_mismatch=m.mismatch,
                                   measured_time_s=m.best_s), m
    measure.free_memory(device)
    return dataclasses.replace(row, graph_error=f"the traced graph raised on {device}: {failure}"), None


def with_time_model(rows: list[SizeResult], step: Step, runs: Mapping[int, GraphMeasurement],
                    source: TimeSource | None, dtype: str, device: str) -> tuple[list[SizeResult], TimeModel | None]:
    """Rows with predicted step and layer times, and the model they came from.

    Without a calibration or profile, the model is fitted on these very runs (in-sample, said so).
    """
    if not runs:
        return rows, None
    t = step.user_symbols["t"]
    if source is None:
        source = calibrate([(step, {t: b}, m.node_seconds) for b, m in runs.items()], device)
        kind, detail = "fitted", "fitted on this sweep's own per-node times: in-sample, not a prediction"
    elif isinstance(source, DeviceProfile):
        kind, detail = "device-profile", (f"{source.name} roofline at the dense {dtype} peak "
                                          f"{source.flops[dtype] / 1e12:g} TFLOP/s and {source.bandwidth / 1e9:g} GB/s")
    else:
        kind, detail = "calibration", f"calibrated on {source.device}"
    formula = predict_time(step, source, dtype=dtype)
    out = []
    for row in rows:
        m = runs.get(row.batch_size)
        if m is not None:
            at = {t: row.batch_size}
            row = dataclasses.replace(row, predicted_time_s=float(formula.xreplace(at)),
                                      layers=layer_times(step, m.node_seconds, source, at, dtype=dtype))
        out.append(row)
    r2 = source.r2 if isinstance(source, Calibration) else None
    return out, TimeModel(kind, detail, r2, str(sympy.N(formula, 4)))
