"""Mixed-precision loss scaling (``torch.amp.GradScaler``): its two kernels, in ``other_flops``.

``GradScaler.unscale_`` runs ``aten._amp_foreach_non_finite_check_and_unscale_(grads, found_inf,
inv_scale)``: per gradient element one multiply by ``inv_scale`` and one finiteness check
(aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp), 2 operations. ``GradScaler.update`` runs
``aten._amp_update_scale_`` on the scalar scale: a handful of scalar operations, counted as 1.
FlopCounterMode counts neither.

>>> from symcx.rules import lookup
>>> lookup("aten._amp_update_scale_.default").__name__
'amp_update_scale_flops'
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall, TensorInfo
from .registry import rule

__all__ = ["amp_unscale_flops", "amp_update_scale_flops"]


@rule("aten._amp_foreach_non_finite_check_and_unscale_", "aten._amp_foreach_non_finite_check_and_unscale")
def amp_unscale_flops(call: OpCall) -> Cost:
    """2 operations (multiply, finiteness check) per element of every gradient."""
    grads = call["self"]
    items = grads if isinstance(grads, (list, tuple)) else (grads,)
    return Cost(other_flops=2 * sympy.Add(*[g.numel for g in items if isinstance(g, TensorInfo)]))


@rule("aten._amp_update_scale_", "aten._amp_update_scale")
def amp_update_scale_flops(call: OpCall) -> Cost:
    """One scalar update of the loss scale (grow, or back off after an overflow)."""
    return Cost(other_flops=sympy.Integer(1))
