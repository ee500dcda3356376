"""The numeric precision of a traced step: autocast, or parameters cast to a 16-bit float type.

``"bf16-autocast"`` / ``"fp16-autocast"`` run the forward and the loss under
``torch.autocast`` with that dtype (the backward and the optimizer outside it, as a training
loop runs them); fp16 adds ``torch.amp.GradScaler``'s loss scaling and gradient unscaling.
``"bf16"`` / ``"fp16"`` trace the model as ``model.to(dtype)`` makes it (floating-point
parameters, buffers and inputs cast), without touching the user's model. Analysing inside the
user's own ``with torch.autocast(...)`` block needs nothing from here: the trace runs under it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import SymcxError

__all__ = ["Precision", "PRECISIONS", "AS_GIVEN", "precision_of", "autocast_forward"]


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a step computes: ``autocast`` dtype for the forward (or None), ``params`` dtype of the
    floating-point parameters, buffers and inputs (or None: as given), GradScaler or not."""

    name: str
    autocast: torch.dtype | None = None
    params: torch.dtype | None = None
    scaler: bool = False


#: The model as the user built it: its own dtypes, no autocast (unless the caller's).
AS_GIVEN = Precision("as given")
#: The precisions ``analyze(..., precision=...)`` and ``--precision`` take.
PRECISIONS = {
    "fp32": Precision("fp32", params=torch.float32),
    "bf16-autocast": Precision("bf16-autocast", autocast=torch.bfloat16),
    "fp16-autocast": Precision("fp16-autocast", autocast=torch.float16, scaler=True),
    "bf16": Precision("bf16", params=torch.bfloat16),
    "fp16": Precision("fp16", params=torch.float16),
    "fp64": Precision("fp64", params=torch.float64),
}


def precision_of(value: Any) -> Precision:
    """A :class:`Precision` from its name (``"bf16-autocast"``), a float dtype, or None (as traced).

    Raises
    ------
    SymcxError
        For a name that is not one of :data:`PRECISIONS` or a dtype that is not a float type.
    """
    if value is None:
        return AS_GIVEN
    if isinstance(value, Precision):
        return value
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise SymcxError(f"a precision dtype must be a floating-point type, not {value}")
        return Precision(str(value).replace("torch.", ""), params=value)
    if isinstance(value, str) and value.lower() in PRECISIONS:
        return PRECISIONS[value.lower()]
    raise SymcxError(f"unknown precision {value!r}; use one of {', '.join(PRECISIONS)}")


@contextlib.contextmanager
def autocast_forward(precision: Precision, device: torch.device) -> Iterator[None]:
    """``torch.autocast`` for the forward of ``precision`` on ``device``'s type; nothing without it."""
    if precision.autocast is None:
        yield
        return
    if device.type not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        raise SymcxError(f"autocast needs the model on a compute device (cpu or cuda), not {device.type}: "
                         f"build it on the CPU, or analyze a model cast with precision='bf16'")
    with torch.autocast(device.type, dtype=precision.autocast):
        yield
