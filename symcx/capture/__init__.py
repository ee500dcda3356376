"""Capture: fake tensors with symbolic sizes → one joint forward+backward aten graph (a :class:`Trace`).

:mod:`.recorder` records the aten calls; :mod:`.trace` sets up the fake inputs and parameters,
runs the step, names the symbols and keeps the guards that bound them.
"""

from __future__ import annotations

from .recorder import TensorMeta
from .optim import Iteration, OptimizerSpec, optimizer_factory
from .precision import PRECISIONS, Precision, precision_of
from .records import DimSpec, Trace
from .trace import BATCH_HINT, default_loss, trace_at, trace_training_step

__all__ = [
    "Trace", "TensorMeta", "DimSpec", "BATCH_HINT", "trace_training_step", "trace_at", "default_loss",
    "Iteration", "OptimizerSpec", "optimizer_factory", "Precision", "PRECISIONS", "precision_of",
]
