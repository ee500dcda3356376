"""In-place elementwise ops (``aten.add_``, ``aten.relu_``…): the count of their out-of-place form.

Real models run these: ``nn.ReLU(inplace=True)`` in every ResNet, BatchNorm's
``num_batches_tracked += 1``, RMSNorm's ``variance + eps``. Writing into the input instead of a
new tensor changes the memory, not the arithmetic, so each in-place op that aten defines gets
the per-element count of :data:`~symcx.rules.pointwise.PER_ELEMENT` for its out-of-place op
(in ``other_flops``; FlopCounterMode counts neither form).

>>> from symcx.rules import lookup
>>> lookup("aten.relu_.default").__name__
'elementwise_1'
"""

from __future__ import annotations

import torch

from .pointwise import PER_ELEMENT, elementwise
from .registry import register

__all__ = ["IN_PLACE"]

#: In-place op family -> operations per output element, for every elementwise op aten has an in-place form of.
IN_PLACE: dict[str, int] = {
    f"{op}_": k for op, k in PER_ELEMENT.items() if hasattr(torch.ops.aten, op.split(".", 1)[1] + "_")
}

for _op, _k in IN_PLACE.items():
    register(_op, elementwise(_k))
