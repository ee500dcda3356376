"""symcx's exception hierarchy: one base class, one subclass per way things go wrong."""

from __future__ import annotations

__all__ = [
    "SymcxError",
    "TraceError",
    "ShapeError",
    "UnsupportedOpError",
    "UnsupportedCall",
    "RuleError",
    "DeviceError",
]


class SymcxError(Exception):
    """Base class of every error symcx raises on purpose."""


class TraceError(SymcxError):
    """The model could not be traced (data-dependent control flow, an op fake tensors cannot run)."""


class ShapeError(SymcxError):
    """The example input does not fit the model (wrong rank, channels or features)."""


class UnsupportedOpError(SymcxError):
    """An aten op has no cost rule and ``strict=True`` was asked for."""


class UnsupportedCall(SymcxError):
    """A rule met arguments it has no formula for (an LSTM projection, packed sequences).

    Raised by a rule while costing; the op is then listed as unsupported, with this reason,
    exactly as an op with no rule is (and raised as :class:`UnsupportedOpError` with
    ``strict=True``).
    """


class RuleError(SymcxError):
    """A cost rule was registered twice, or registered for something that is not an aten op."""


class DeviceError(SymcxError):
    """The requested device is not available (e.g. ``cuda`` on a machine without CUDA)."""
