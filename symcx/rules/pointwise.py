"""Elementwise ops, softmax, reductions, dropout and losses: symcx's own count, in ``other_flops``.

FlopCounterMode counts none of these. symcx counts arithmetic operations per output element
(per input element for reductions), a transcendental function (exp, log, erf, tanh, sqrt)
as one operation. The per-element constants below are the convention, listed in
docs/conventions.md; each is the operation count of the textbook formula in its comment.
"""

from __future__ import annotations

from ..cost import Cost, OpCall
from .registry import register, rule

__all__ = ["elementwise", "reduction", "PER_ELEMENT", "PER_INPUT_ELEMENT"]


def elementwise(per_element: int):
    """Rule factory: ``per_element`` operations per element of the (first) output."""

    def rule_fn(call: OpCall) -> Cost:
        outs = call.outputs
        if not outs:
            return Cost()
        return Cost(other_flops=per_element * outs[0].numel)

    rule_fn.__name__ = f"elementwise_{per_element}"
    rule_fn.__doc__ = f"{per_element} operation(s) per output element."
    return rule_fn


def reduction(per_element: int):
    """Rule factory: ``per_element`` operations per element of the input, ``self`` in every
    reduction's schema."""

    def rule_fn(call: OpCall) -> Cost:
        return Cost(other_flops=per_element * call["self"].numel)

    rule_fn.__name__ = f"reduction_{per_element}"
    rule_fn.__doc__ = f"{per_element} operation(s) per input element."
    return rule_fn


#: Operations per output element.
PER_ELEMENT: dict[str, int] = {
    # one arithmetic operation or comparison
    **dict.fromkeys(
        [
            "aten.add", "aten.sub", "aten.rsub", "aten.mul", "aten.div", "aten.neg", "aten.abs",
            "aten.relu", "aten.threshold", "aten.threshold_backward", "aten.maximum", "aten.minimum",
            "aten.clamp", "aten.clamp_min", "aten.clamp_max", "aten.where", "aten.eq", "aten.ne",
            "aten.lt", "aten.le", "aten.gt", "aten.ge", "aten.sign", "aten.reciprocal", "aten.exp",
            "aten.log", "aten.sqrt", "aten.rsqrt", "aten.sin", "aten.cos", "aten.erf", "aten.tanh",
            "aten.pow", "aten.square", "aten.floor", "aten.ceil", "aten.round", "aten.trunc",
            "aten.logical_not", "aten.logical_and", "aten.logical_or", "aten.bitwise_not",
            "aten.bitwise_and", "aten.bitwise_or", "aten.log1p", "aten.expm1", "aten.exp2",
            "aten.log2", "aten.hardtanh", "aten.relu6", "aten.fmod", "aten.remainder",
            "aten.masked_scatter", "aten.sgn", "aten.isnan", "aten.isinf", "aten.lerp_scalar",
            "aten.floor_divide",
        ],
        1,
    ),
    "aten.addcmul": 2,  # a + v·b·c
    "aten.addcdiv": 2,
    "aten.lerp": 2,  # a + w·(b − a)
    "aten.leaky_relu": 2,  # compare, multiply
    "aten.leaky_relu_backward": 2,
    "aten.hardtanh_backward": 2,
    "aten.native_dropout": 2,  # mask draw compare, scale-multiply
    "aten.native_dropout_backward": 2,  # grad · mask · scale
    "aten.sigmoid": 4,  # 1 / (1 + exp(−x)): neg, exp, add, div
    "aten.sigmoid_backward": 3,  # g · y · (1 − y)
    "aten.tanh_backward": 3,  # g · (1 − y²)
    "aten.silu": 5,  # x · sigmoid(x)
    "aten.silu_backward": 8,  # g · s · (1 + x·(1 − s)), s recomputed
    "aten.gelu": 5,  # x · ½ · (1 + erf(x/√2)); tanh form counted alike
    "aten.gelu_backward": 9,  # g · (Φ(x) + x·φ(x)), erf and exp recomputed
    "aten.hardsigmoid": 3,
    "aten.hardswish": 4,
    "aten.hardswish_backward": 4,
    "aten.hardsigmoid_backward": 2,
    "aten.elu": 4,
    "aten.elu_backward": 3,
    "aten.softplus": 4,
    "aten.softplus_backward": 4,
    "aten.mish": 7,
    "aten.mish_backward": 13,  # g · (tanh(sp) + x·σ(x)·(1 − tanh²(sp))), sp = softplus(x) recomputed
    "aten.celu": 5,  # max(0, x) + min(0, α·(exp(x/α) − 1)): divide, exp, subtract, multiply, select
    "aten._prelu_kernel": 2,  # compare, multiply (as leaky_relu)
    "aten._prelu_kernel_backward": 4,  # grad-input: compare, multiply; grad-weight: multiply, add
    "aten.log_sigmoid_forward": 4,  # min(x, 0) − log1p(exp(−|x|)): abs, exp, log1p, subtract
    "aten.log_sigmoid_backward": 4,  # g · (1 − σ(x)) from the saved exp(−|x|): add, divide, select, multiply
    "aten.glu": 5,  # a · σ(b) per output element: sigmoid 4, multiply
    "aten._softmax": 5,  # max, subtract, exp, sum, divide
    "aten._log_softmax": 5,  # max, subtract, exp, sum, subtract log-sum
    "aten._safe_softmax": 8,  # softmax (5), then zero fully masked rows: is −inf, all, where
    "aten._masked_softmax": 6,  # the mask's select, then softmax (5)
    "aten._masked_softmax_backward": 4,  # as _softmax_backward_data
    "aten._softmax_backward_data": 4,  # y · (g − Σ g·y): multiply, sum, subtract, multiply
    "aten._log_softmax_backward_data": 4,  # g − exp(y)·Σg: exp, sum, multiply, subtract
    "aten.nll_loss_backward": 1,  # scatter −w into the grad
    "aten.mse_loss_backward": 3,  # 2·(x − y)·g/N per grad-input element: subtract, multiply, scale
    "aten.xlogy": 3,  # x·log(y), 0 where x = 0: log, multiply, select
    "aten.binary_cross_entropy_backward": 5,  # g·(x − y)/(x·(1 − x)): subtract, subtract, multiply, divide, multiply
    "aten.smooth_l1_loss_backward": 7,  # d = x − y; g·(|d| < β ? d/β : sign d): subtract, abs, compare, divide, sign, select, multiply
    "aten.huber_loss_backward": 7,  # as smooth_l1_loss_backward, δ in place of β
}

#: Operations per input element (reductions).
PER_INPUT_ELEMENT: dict[str, int] = {
    "aten.sum": 1,
    "aten.mean": 1,
    "aten.prod": 1,
    "aten.amax": 1,
    "aten.amin": 1,
    "aten.max": 1,
    "aten.min": 1,
    "aten.argmax": 1,
    "aten.argmin": 1,
    "aten.logsumexp": 3,  # exp, add, and max-subtract per element
    "aten.var": 3,  # subtract mean, square, add
    "aten.std": 3,
    "aten.var_mean": 4,
    "aten.norm": 2,
    "aten.linalg_vector_norm": 2,
    "aten.mse_loss": 3,
    "aten.binary_cross_entropy_with_logits": 7,  # (1 − y)·x + log1p(exp(−x)): subtract, multiply, negate, exp, log1p, add; summed
    "aten.binary_cross_entropy": 9,  # −(y·log x + (1 − y)·log(1 − x)): 2 logs, 2 subtracts, 2 multiplies, add, negate; summed
    "aten.smooth_l1_loss": 7,  # d = x − y; |d| < β ? ½·d²/β : |d| − ½·β: subtract, abs, compare, multiply, divide, select; summed
    "aten.huber_loss": 7,  # as smooth_l1_loss, δ in place of β
    "aten.cumsum": 1,
    "aten.any": 1,
    "aten.all": 1,
    "aten.histc": 1,  # one bin increment per element (MoE routers count tokens per expert)
    "aten.histogram": 1,  # as histc
}

for _op, _k in PER_ELEMENT.items():
    register(_op, elementwise(_k))
for _op, _k in PER_INPUT_ELEMENT.items():
    register(_op, reduction(_k))


@rule("aten.glu_backward")
def glu_backward_flops(call: OpCall) -> Cost:
    """9 per grad-output element: σ(b) recomputed (4), grad-a = g·σ(b) (1), grad-b = g·a·σ(b)·(1 − σ(b)) (4)."""
    return Cost(other_flops=9 * call["grad_output"].numel)


@rule("aten.nll_loss_forward", "aten.nll_loss2d_forward")
def nll_loss_flops(call: OpCall) -> Cost:
    """One add per target element (gather −x[target] and sum; the mean's divide is one more)."""
    return Cost(other_flops=call["target"].numel + 1)
