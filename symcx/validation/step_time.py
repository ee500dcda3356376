"""Predicted step time of an analysis, per step and per layer, from a calibration or a named GPU.

A *time source* is a :class:`~symcx.validation.timing.Calibration` (fitted on a device's
per-node times, :func:`symcx.validation.calibrate_device`, saved as JSON and read back with
:func:`load_calibration`) or a :class:`~symcx.validation.timing.DeviceProfile` (a datasheet
roofline, ``"h100-sxm"``): :func:`predict_time` turns either into seconds as a formula in ``t``;
:func:`layer_times` sets predicted beside measured seconds, layer by layer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Union

import sympy
import torch

from ..analysis import Analysis
from ..errors import SymcxError
from ..step import Step
from .timing import Calibration, DeviceProfile, node_seconds, profile_named

__all__ = ["TimeSource", "LayerTime", "TimeModel", "predict_time", "layer_times", "load_calibration",
           "profile_dtype"]

TimeSource = Union[Calibration, DeviceProfile]

_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclasses.dataclass(frozen=True)
class LayerTime:
    """One layer row's measured seconds (forward and backward nodes of the traced graph) and predicted seconds."""

    layer: str
    measured_s: float
    predicted_s: float | None

    @property
    def rel_error(self) -> float | None:
        """``(predicted - measured) / measured``, None when either is missing or measured is 0."""
        if self.predicted_s is None or not self.measured_s:
            return None
        return (self.predicted_s - self.measured_s) / self.measured_s


@dataclasses.dataclass(frozen=True)
class TimeModel:
    """Where a sweep's predicted step times come from: ``source`` is ``"calibration"``,
    ``"device-profile"`` or ``"fitted"`` (fitted on this sweep's own node times: in-sample);
    ``r2`` the per-node fit's R² (None for a datasheet roofline); ``formula`` seconds in ``t``."""

    source: str
    detail: str
    r2: float | None
    formula: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)


def profile_dtype(model: torch.nn.Module) -> str:
    """The roofline dtype of a model's parameters (``fp32``, ``bf16`` or ``fp16``; ``fp32`` without parameters)."""
    first = next(iter(model.parameters()), None)
    return _DTYPES.get(first.dtype, "fp32") if first is not None else "fp32"


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration saved by ``symcx calibrate`` (:meth:`Calibration.to_json`).

    Raises
    ------
    SymcxError
        The file is missing, not JSON, or not a symcx calibration.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise SymcxError(f"cannot read calibration {path}: {err.strerror or err}") from err
    try:
        return Calibration.from_json(text)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SymcxError(f"{path} is not a symcx calibration ({type(err).__name__}: {err})") from err


def _step(of: Analysis | Step) -> Step:
    return of.step if isinstance(of, Analysis) else of


def predict_time(analysis: Analysis | Step, source: TimeSource | str, *, dtype: str = "fp32") -> sympy.Expr:
    """Predicted seconds of one training step of ``analysis``, a formula in ``t``.

    Parameters
    ----------
    analysis : Analysis or Step
        What :func:`symcx.analyze` returned (or its ``step``).
    source : Calibration, DeviceProfile or str
        A calibration (:func:`load_calibration`, :func:`~symcx.validation.calibrate_device`),
        or a device profile or its name in :data:`~symcx.validation.timing.DEVICE_PROFILES`.
    dtype : str
        The peak a device profile is read at (``fp32``, ``tf32``, ``bf16``, ``fp16``).

    Examples
    --------
    >>> import torch, symcx
    >>> from symcx.validation import predict_time
    >>> a = symcx.analyze(torch.nn.Linear(1000, 1000), torch.randn(2, 1000))
    >>> seconds = predict_time(a, "h100-sxm")     # the fp32 roofline: a lower bound
    >>> round(float(seconds.subs(symcx.t, 4096)) * 1e6)  # µs
    279

    By hand at t = 4096, 67 TFLOP/s fp32 and 3.35 TB/s, 5 µs per costed node: the forward and the
    weight-gradient GEMMs, 2·4096·10⁶ FLOPs each, 2·(122.27 + 5); the loss's sum and the bias
    gradient's sum each read the 4096×1000 fp32 output, 16.4 MB: 2·(4.89 + 5); the loss's seed
    gradient, 5. Views cost nothing. 254.54 + 19.78 + 5 = 279.3.
    """
    model = profile_named(source, dtype) if isinstance(source, (str, DeviceProfile)) else source
    return sympy.Add(*(node_seconds(node, model, dtype=dtype) for node in _step(analysis).calls()))


def layer_times(step: Step, measured: Mapping[str, float], source: TimeSource | None,
                values: Mapping[sympy.Symbol, int], *, dtype: str = "fp32") -> tuple[LayerTime, ...]:
    """Per layer row (in forward order): measured seconds (``measured`` by fx node name) beside predicted ones."""
    got: dict[str, float] = {}
    want: dict[str, float] = {}
    for node in step.calls():
        if node.name not in measured:
            continue
        got[node.layer] = got.get(node.layer, 0.0) + measured[node.name]
        if source is not None:
            want[node.layer] = want.get(node.layer, 0.0) + float(
                sympy.sympify(node_seconds(node, source, dtype=dtype)).xreplace(values))
    return tuple(LayerTime(layer, s, want.get(layer) if source is not None else None) for layer, s in got.items())
