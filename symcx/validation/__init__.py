"""Validate symcx's formulas on a device: run the model per batch size and compare.

``validate(model, example_input, device="cpu", batch_sizes=[1, 16, 64, 256])`` returns a
:class:`Validation`: per batch size, FlopCounterMode's count next to the formulas, the
wall time and achieved FLOP/s, the peak memory next to the predicted bytes, and
least-squares fits of time against predicted FLOPs and of memory against predicted bytes.
See ``docs/validation.md`` for how to read it.

With ``run="graph"`` (the default) each size also executes the traced joint graph, checks it
against eager, and compares its measured step time with a prediction: ``calibrate_device()``
fits the step-time model on a device, ``predict_time(analysis, calibration_or_profile)`` gives
seconds as a formula in ``t``.

Modules: ``measure`` (devices, FLOP counting, timing, peak memory), ``predict`` (formulas
evaluated per batch size), ``fit`` (least squares), ``report`` (result types, JSON, table),
``plot`` (PNG), ``sweep`` (the loop), ``execute`` (the traced graph on real tensors),
``graph_run`` (the sweep's graph side), ``timing`` (the step-time model, device profiles),
``step_time`` (predictions per step and layer), ``calibrate`` and ``workload`` (calibration).
"""

from __future__ import annotations

from .calibrate import calibrate_device
from .fit import Fit, fit_line
from .report import SCHEMA, FlopCheck, SizeResult, Validation
from .step_time import LayerTime, TimeModel, load_calibration, predict_time
from .sweep import validate
from .timing import DEVICE_PROFILES, Calibration, DeviceProfile

__all__ = ["validate", "Validation", "SizeResult", "FlopCheck", "Fit", "fit_line", "SCHEMA", "calibrate_device",
           "predict_time", "load_calibration", "Calibration", "DeviceProfile", "DEVICE_PROFILES", "LayerTime",
           "TimeModel"]
