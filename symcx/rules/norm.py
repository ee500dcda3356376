"""Normalization layers: batch, layer, group and RMS norm, forward and backward (``other_flops``).

Per element, training forward: statistics 4 (mean: add; variance: subtract, square, add),
normalize 2 (subtract mean, multiply by 1/σ), affine 1 each for γ (multiply) and β (add). Inference
(running statistics) skips the statistics. Backward: 9 per element for grad-input
(recompute x̂, two reductions, three products, two subtractions; 2, ``g·γ·1/σ``, for batch norm
with running statistics), 3 more when γ/β get grads.
RMS norm: 3 per element (square, add, multiply by 1/rms), 1 more for γ; backward 7 per element
for grad-input, 2 for grad-γ.
Weight norm (``w = g·v/‖v‖``, on the weight, not the activations): 3 per element of v (square,
add, scale) + 2 per norm (sqrt, g/‖v‖); backward 5 per element of v + 3 per norm.
"""

from __future__ import annotations

from ..cost import Cost, OpCall, TensorInfo
from .registry import rule

__all__ = ["norm_flops", "norm_backward_flops", "rms_norm_flops", "weight_norm_flops", "weight_norm_backward_flops"]

STATS, NORMALIZE, BACKWARD_INPUT, BACKWARD_INPUT_EVAL, BACKWARD_AFFINE = 4, 2, 9, 2, 3
RMS, RMS_BACKWARD_INPUT, RMS_BACKWARD_WEIGHT = 3, 7, 2
WN_PER_V, WN_PER_G, WN_BACKWARD_PER_V, WN_BACKWARD_PER_G = 3, 2, 5, 3


def _affine(call: OpCall) -> int:
    """1 for a γ (multiply) and 1 for a β (add): the ``weight`` and ``bias`` arguments that are tensors."""
    return isinstance(call.get("weight"), TensorInfo) + isinstance(call.get("bias"), TensorInfo)


@rule("aten.native_batch_norm", "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_functional")
def batch_norm_flops(call: OpCall) -> Cost:
    """Training batch norm: (4 + 2 + γ + β) per element; eval skips the 4 statistics ops."""
    per = (STATS if call["training"] else 0) + NORMALIZE + _affine(call)
    return Cost(other_flops=per * call["input"].numel)


@rule("aten._native_batch_norm_legit_no_training")
def batch_norm_eval_flops(call: OpCall) -> Cost:
    """Inference batch norm: (2 + γ + β) per element."""
    return Cost(other_flops=(NORMALIZE + _affine(call)) * call["input"].numel)


@rule("aten.native_layer_norm", "aten.native_group_norm")
def norm_flops(call: OpCall) -> Cost:
    """Layer/group norm: (4 + 2 + γ + β) per element."""
    return Cost(other_flops=(STATS + NORMALIZE + _affine(call)) * call["input"].numel)


@rule(
    "aten.native_batch_norm_backward",
    "aten.native_layer_norm_backward",
    "aten.native_group_norm_backward",
)
def norm_backward_flops(call: OpCall) -> Cost:
    """9 per element for grad-input (2, ``g·γ/σ``, for batch norm in eval), plus 3 for γ/β grads.

    Batch norm's backward alone has ``train``; each has an ``output_mask`` of three flags.
    """
    mask = call["output_mask"]
    eval_bn = not call.get("train", True)
    per = ((BACKWARD_INPUT_EVAL if eval_bn else BACKWARD_INPUT) if mask[0] else 0)
    per += BACKWARD_AFFINE if any(mask[1:]) else 0
    return Cost(other_flops=per * call["grad_out"].numel)


@rule("aten._fused_rms_norm")
def rms_norm_flops(call: OpCall) -> Cost:
    """RMS norm: square, add (mean of squares), multiply by 1/rms: 3 per element, + 1 for γ."""
    weight = isinstance(call.get("weight"), TensorInfo)
    return Cost(other_flops=(RMS + weight) * call["input"].numel)


@rule("aten._fused_rms_norm_backward")
def rms_norm_backward_flops(call: OpCall) -> Cost:
    """RMS norm backward: 7 per element for grad-input, 2 for grad-weight, as asked."""
    mask = call["output_mask"]
    per = (RMS_BACKWARD_INPUT if mask[0] else 0) + (RMS_BACKWARD_WEIGHT if mask[1] else 0)
    return Cost(other_flops=per * call["grad_out"].numel)


@rule("aten._weight_norm_interface")
def weight_norm_flops(call: OpCall) -> Cost:
    """w = g·v/‖v‖, the norm over every dim but ``dim``: 3·v.numel + 2·g.numel.

    Per element of v: square, add (the norms) and the scaling multiply; per norm (element of g):
    sqrt and g/‖v‖.
    """
    return Cost(other_flops=WN_PER_V * call["v"].numel + WN_PER_G * call["g"].numel)


@rule("aten._weight_norm_interface_backward")
def weight_norm_backward_flops(call: OpCall) -> Cost:
    """5·v.numel + 3·g.numel, as the kernel computes (per element of v / per norm):

    grad_g = Σ(grad_w·v)/‖v‖ (multiply, add / divide); grad_v = (g/‖v‖)·(grad_w − v·(grad_g/‖v‖))
    (multiply, subtract, multiply / divide, divide).
    """
    return Cost(other_flops=WN_BACKWARD_PER_V * call["saved_v"].numel + WN_BACKWARD_PER_G * call["saved_g"].numel)
