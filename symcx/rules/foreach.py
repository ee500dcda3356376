"""Multi-tensor (``_foreach_*``) and fused optimizer kernels: the per-element count of their one-tensor form.

``optimizer.step()`` of a foreach optimizer runs ``aten._foreach_mul_(params, …)`` over every
parameter at once; its count is the one-tensor op's (:data:`~symcx.rules.pointwise.PER_ELEMENT`)
times the elements of the whole ``self`` list. Fused kernels (``_fused_adam_``, ``_fused_adamw_``,
``_fused_sgd_``) do in one kernel what the for-loop form does op by op: they get the for-loop
form's count per parameter element (traced: Adam's lerp 2, mul 1, addcmul 2, sqrt 1, div 1,
add 1, addcdiv 2 = 10; amsgrad's maximum 1 more; weight decay 1 more; SGD 1, with momentum 3).
All in ``other_flops``: FlopCounterMode counts none of them.

>>> from symcx.rules import lookup
>>> lookup("aten._foreach_addcmul_.Scalar").__name__
'foreach_2'
"""

from __future__ import annotations

import sympy
import torch

from ..cost import Cost, OpCall, TensorInfo
from .pointwise import PER_ELEMENT
from .registry import register, rule

__all__ = ["FOREACH", "foreach"]


def _elements(tensors: object) -> sympy.Expr:
    items = tensors if isinstance(tensors, (list, tuple)) else (tensors,)
    return sympy.Add(*[x.numel for x in items if isinstance(x, TensorInfo)])


def foreach(per_element: int):
    """Rule factory: ``per_element`` operations per element of every tensor in the ``self`` list."""

    def rule_fn(call: OpCall) -> Cost:
        return Cost(other_flops=per_element * _elements(call["self"]))

    rule_fn.__name__ = f"foreach_{per_element}"
    rule_fn.__doc__ = f"{per_element} operation(s) per element of the ``self`` list."
    return rule_fn


#: ``_foreach_`` family (and its in-place form) → operations per element, for every elementwise op aten has one of.
FOREACH: dict[str, int] = {}
for _op, _k in PER_ELEMENT.items():
    _name = "_foreach_" + _op.split(".", 1)[1]
    for _form in (_name, _name + "_"):
        if hasattr(torch.ops.aten, _form):
            FOREACH[f"aten.{_form}"] = _k
for _op, _k in FOREACH.items():
    register(_op, foreach(_k))
register("aten._foreach_norm", foreach(2))  # clip_grad_norm_'s norms: square and add per element, as norm


@rule("aten._fused_adam_", "aten._fused_adamw_")
def fused_adam_flops(call: OpCall) -> Cost:
    """10 operations per parameter element (Adam's for-loop step), +1 with amsgrad, +1 with weight decay."""
    per = 10 + bool(call.get("amsgrad", False)) + (call.get("weight_decay", 0) != 0)
    return Cost(other_flops=per * _elements(call["self"]))


@rule("aten._fused_sgd_")
def fused_sgd_flops(call: OpCall) -> Cost:
    """1 operation per parameter element (the update), 3 with momentum, +1 with weight decay."""
    per = (3 if call.get("momentum", 0) != 0 else 1) + (call.get("weight_decay", 0) != 0)
    return Cost(other_flops=per * _elements(call["self"]))
