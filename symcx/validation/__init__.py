"""Validate symcx's formulas on a device: run the model per batch size and compare.

``validate(model, example_input, device="cpu", batch_sizes=[1, 16, 64, 256])`` returns a
:class:`Validation`: per batch size, FlopCounterMode's count next to the formulas, the
wall time and achieved FLOP/s, the peak memory next to the predicted bytes, and
least-squares fits of time against predicted FLOPs and of memory against predicted bytes.
See ``docs/validation.md`` for how to read it.

Modules: ``measure`` (devices, FLOP counting, timing, peak memory), ``predict`` (formulas
evaluated per batch size), ``fit`` (least squares), ``report`` (result types, JSON, table),
``plot`` (PNG), ``sweep`` (the loop).
"""

from __future__ import annotations

from .fit import Fit, fit_line
from .report import SCHEMA, FlopCheck, SizeResult, Validation
from .sweep import validate

__all__ = ["validate", "Validation", "SizeResult", "FlopCheck", "Fit", "fit_line", "SCHEMA"]
