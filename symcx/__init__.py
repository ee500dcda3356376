"""symcx: symbolic time and memory complexity of PyTorch models, exact and validated.

>>> import torch, symcx
>>> a = symcx.analyze(torch.nn.Linear(784, 10), torch.randn(1, 784))
>>> a.forward_flops
15680*t
"""

from __future__ import annotations

from . import export  # registers the LaTeX, Markdown and JSON printers behind Analysis.to_latex() & co.
from ._version import __version__
from .analysis import Analysis, Training
from .complexity import O, big_o
from .cost import Cost, OpCall, TensorInfo
from .errors import DeviceError, RuleError, ShapeError, SymcxError, TraceError, UnsupportedCall, UnsupportedOpError
from .routes import analyze
from .rows import LayerRow
from .rules import register, rule
from .serving import Inference, inference
from .symbols import N, g, n, symbol, t
from .validation import Validation, validate

__all__ = [
    "analyze",
    "inference",
    "Inference",
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
    "g",
    "symbol",
    "SymcxError",
    "TraceError",
    "ShapeError",
    "UnsupportedOpError",
    "UnsupportedCall",
    "RuleError",
    "DeviceError",
    "__version__",
]
