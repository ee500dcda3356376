"""symcx: symbolic time and memory complexity of PyTorch models, exact and validated.

>>> import torch, symcx
>>> a = symcx.analyze(torch.nn.Linear(784, 10), torch.randn(1, 784))
>>> a.forward_flops
15680*t
"""

from __future__ import annotations

from .analysis import Analysis, LayerRow, O, Training, analyze, big_o
from .cost import Cost, OpCall, TensorInfo
from .errors import DeviceError, RuleError, ShapeError, SymcxError, TraceError, UnsupportedOpError
from .rules import register, rule
from .symbols import N, n, symbol, t
from .validation import Validation, validate

__version__ = "0.1.0"

__all__ = [
    "analyze",
    "validate",
    "Validation",
    "Analysis",
    "LayerRow",
    "Training",
    "O",
    "big_o",
    "Cost",
    "OpCall",
    "TensorInfo",
    "register",
    "rule",
    "t",
    "n",
    "N",
    "symbol",
    "SymcxError",
    "TraceError",
    "ShapeError",
    "UnsupportedOpError",
    "RuleError",
    "DeviceError",
]
