"""Normalization layers: batch, layer, group and RMS norm, forward and backward (``other_flops``).

Per element, training forward: statistics 4 (mean: add; variance: subtract, square, add),
normalize 2 (subtract mean, multiply by 1/σ), affine 2 (multiply γ, add β). Inference
(running statistics) skips the statistics. Backward: 9 per element for grad-input
(recompute x̂, two reductions, three products, two subtractions), 3 more when γ/β get grads.
"""

from __future__ import annotations

from ..cost import Cost, OpCall, TensorInfo
from . import rule

__all__ = ["norm_flops", "norm_backward_flops", "rms_norm_flops"]

STATS, NORMALIZE, AFFINE, BACKWARD_INPUT, BACKWARD_AFFINE = 4, 2, 2, 9, 3


def _affine(call: OpCall, weight_index: int, name: str) -> bool:
    return isinstance(call.arg(weight_index, name), TensorInfo)


@rule("aten.native_batch_norm", "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_functional")
def batch_norm_flops(call: OpCall) -> Cost:
    """Training batch norm: (4 + 2 + 2·affine) per element; eval skips the 4 statistics ops."""
    x = call.args[0]
    training = bool(call.arg(5, "training", True))
    per = (STATS if training else 0) + NORMALIZE + (AFFINE if _affine(call, 1, "weight") else 0)
    return Cost(other_flops=per * x.numel)


@rule("aten._native_batch_norm_legit_no_training")
def batch_norm_eval_flops(call: OpCall) -> Cost:
    """Inference batch norm: (2 + 2·affine) per element."""
    x = call.args[0]
    return Cost(other_flops=(NORMALIZE + (AFFINE if _affine(call, 1, "weight") else 0)) * x.numel)


@rule("aten.native_layer_norm", "aten.native_group_norm")
def norm_flops(call: OpCall) -> Cost:
    """Layer/group norm: (4 + 2 + 2·affine) per element."""
    x = call.args[0]
    per = STATS + NORMALIZE + (AFFINE if _affine(call, 2 if "layer" in call.op else 1, "weight") else 0)
    return Cost(other_flops=per * x.numel)


@rule(
    "aten.native_batch_norm_backward",
    "aten.native_layer_norm_backward",
    "aten.native_group_norm_backward",
)
def norm_backward_flops(call: OpCall) -> Cost:
    """9 per element for grad-input, plus 3 when weight or bias gradients are produced."""
    grad = call.args[0]
    mask = call.arg(len(call.args) - 1, "output_mask", (True, True, True))
    per = (BACKWARD_INPUT if mask[0] else 0) + (BACKWARD_AFFINE if any(mask[1:]) else 0)
    return Cost(other_flops=per * grad.numel)


@rule("aten._fused_rms_norm")
def rms_norm_flops(call: OpCall) -> Cost:
    """RMS norm: square, add (mean of squares), multiply by 1/rms, multiply γ: 4 per element."""
    return Cost(other_flops=4 * call.args[0].numel)


@rule("aten._fused_rms_norm_backward")
def rms_norm_backward_flops(call: OpCall) -> Cost:
    """RMS norm backward: 7 per element for grad-input, 2 more for grad-weight."""
    return Cost(other_flops=9 * call.args[0].numel)
