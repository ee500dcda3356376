"""Calibrate the step-time model on a device: run a traced step at several batch sizes, fit per op class.

:func:`calibrate_device` traces one training step of a model (by default
:class:`~symcx.validation.workload.CalibrationNet`) with a symbolic batch, executes the traced graph
on the device at each batch size (:func:`~symcx.validation.execute.run_traced_step`; each node's
fastest time over ``repeats`` runs after ``warmup``, as ``validate`` measures), and fits
:func:`~symcx.validation.timing.calibrate` on those per-node times. The result predicts *other*
models' steps (:func:`~symcx.validation.step_time.predict_time`) and saves as JSON
(``Calibration.to_json()``, ``symcx calibrate --output cal.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._torch import tree_map
from ..capture import trace_training_step
from ..errors import SymcxError
from ..rules import annotate_costs
from ..step import build_step
from . import measure
from .execute import run_traced_step
from .timing import Calibration, calibrate
from .workload import CalibrationNet

__all__ = ["calibrate_device", "CALIBRATION_SIZES"]

#: Batch sizes a calibration runs by default: they span the sizes validated (1 to 32) and beyond.
CALIBRATION_SIZES = (1, 2, 4, 8, 16, 32, 64)


def calibrate_device(
    model: torch.nn.Module | None = None,
    example_input: Any = None,
    *,
    device: str | torch.device = "cpu",
    batch_sizes: Sequence[int] = CALIBRATION_SIZES,
    repeats: int = 5,
    warmup: int = 1,
    batch_dim: int = 0,
    loss: Callable[[Any], torch.Tensor] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Calibration:
    """Fit the step-time model to ``device`` from the traced graph of ``model`` run at ``batch_sizes``.

    Parameters
    ----------
    model, example_input : optional
        The model to time (moved to ``device`` and back) and an input whose ``batch_dim`` is the
        batch; default :class:`~symcx.validation.workload.CalibrationNet` and its example.
    device : {"cpu", "cuda", "cuda:N"}
        CUDA without a GPU raises :class:`~symcx.errors.DeviceError`.
    batch_sizes : sequence of int
        Sizes to run; each node's fastest time over ``repeats`` timed runs after ``warmup`` untimed ones.

    Returns
    -------
    Calibration
        Named after the device (GPU model, or CPU and its thread count), with the fit's R².

    Examples
    --------
    >>> from symcx.validation import calibrate_device
    >>> cal = calibrate_device(batch_sizes=[1, 4, 16], repeats=1, warmup=0)
    >>> sorted(k for k in cal.classes if ":" not in k)  # every op class; backward GEMM, conv, attention apart
    ['attention', 'attention_backward', 'compute', 'conv', 'conv_backward', 'free', 'gemm', 'gemm_backward', 'movement']
    >>> "compute:aten.relu" in cal.classes  # op families with enough nodes fitted on their own
    True
    """
    dev = measure.resolve_device(device)
    sizes = list(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise SymcxError(f"batch sizes must be positive integers, got {sizes!r}")
    if len(set(sizes)) < 2:
        raise SymcxError("calibrate needs at least two distinct batch sizes to separate fixed from per-sample costs")
    if model is None:
        model, example_input = CalibrationNet(), CalibrationNet.example_input()
    elif example_input is None:
        raise SymcxError("give the example input of the model to calibrate on")
    first = next(iter(model.parameters()), None)
    home, was = (first.device if first is not None else dev), model.training
    try:
        model.to(dev).train(True)
        example = tree_map(lambda x: x.to(dev) if isinstance(x, torch.Tensor) else x, example_input)
        trace = trace_training_step(model, example, batch_dim=batch_dim, loss=loss)
        step = build_step(trace)
        annotate_costs(step.nodes)
        t = step.user_symbols["t"]
        samples = []
        for done, b in enumerate(sizes, 1):
            batch = measure.make_batch(example, b, dev, batch_dim)
            for _ in range(warmup):
                run_traced_step(trace, model, batch, {"t": b}, device=str(dev))
            runs = [run_traced_step(trace, model, batch, {"t": b}, device=str(dev)).node_seconds
                    for _ in range(repeats)]
            samples.append((step, {t: b}, {name: min(r[name] for r in runs) for name in runs[0]}))
            if progress is not None:
                progress(done, len(sizes), f"t={b}")
    finally:
        model.train(was)
        model.to(home)
    return calibrate(samples, f"{measure.device_name(dev)} ({type(model).__name__})")
