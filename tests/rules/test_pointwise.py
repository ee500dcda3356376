"""Elementwise, softmax and loss ``other_flops`` against the per-element counts of
symcx.rules.pointwise, worked out by hand from each op's textbook formula and the real
tensor sizes. FlopCounterMode counts none of these.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import symcx

from .conftest import evaluate, needs_grad, run_forward, run_step

#: (module factory, forward ops per element, backward ops per element), by hand:
ACTIVATIONS = {
    "relu": (nn.ReLU, 1, 1),  # max(x, 0); g where y > 0
    "relu_inplace": (lambda: nn.ReLU(inplace=True), 1, 1),
    "leaky_relu": (nn.LeakyReLU, 2, 2),  # compare, multiply
    "gelu": (nn.GELU, 5, 9),  # x·½·(1 + erf(x/√2)); g·(Φ(x) + x·φ(x))
    "gelu_tanh": (lambda: nn.GELU("tanh"), 5, 9),
    "silu": (nn.SiLU, 5, 8),  # x·σ(x); g·σ·(1 + x·(1 − σ))
    "sigmoid": (nn.Sigmoid, 4, 3),  # 1/(1 + exp(−x)); g·y·(1 − y)
    "tanh": (nn.Tanh, 1, 3),  # g·(1 − y²)
    "hardtanh": (nn.Hardtanh, 1, 2),
    "relu6": (nn.ReLU6, 1, 2),
    "elu": (nn.ELU, 4, 3),
    "selu": (nn.SELU, 4, 3),
    "celu": (nn.CELU, 5, 3),  # celu's gradient runs as elu_backward
    "softplus": (nn.Softplus, 4, 4),
    "mish": (nn.Mish, 7, 13),
    "hardswish": (nn.Hardswish, 4, 4),
    "hardsigmoid": (nn.Hardsigmoid, 3, 2),
    "prelu": (nn.PReLU, 2, 4),  # backward: grad-input and grad-weight
    "logsigmoid": (nn.LogSigmoid, 4, 4),
    "softmax": (lambda: nn.Softmax(-1), 5, 4),  # max, subtract, exp, sum, divide; y·(g − Σg·y)
    "log_softmax": (lambda: nn.LogSoftmax(1), 5, 4),
}
#: dropout on the CPU is traced as eager runs it (Dropout.cpp's _dropout): a float mask drawn
#: with bernoulli_, scaled by div_ (1), multiplied in (1); its backward is one multiply by the mask
DROPOUT = (lambda: nn.Dropout(0.3), 2, 1)


@settings(max_examples=250, deadline=None)
@given(
    st.sampled_from(sorted(ACTIVATIONS)),
    st.lists(st.integers(1, 5), min_size=2, max_size=4),
)
@pytest.mark.slow
def test_activation_other_flops_by_hand(name, shape):
    factory, forward, backward = ACTIVATIONS[name]
    layer = factory()
    x = needs_grad(torch.randn(shape), True)
    step = run_step(lambda x: layer(x * 1.0), x)  # x·1 so that an in-place op has a non-leaf input
    numel = x.numel()
    mul = numel  # the x·1.0 in front: one multiply per element, forward and backward
    expected_backward = backward * numel + mul
    if name == "prelu" and numel > 1:  # the one weight's gradient is summed over every element
        expected_backward += numel
    assert step.other_flops("forward") == forward * numel + mul
    assert step.other_flops("backward") == expected_backward
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


def test_glu_by_hand():
    # glu halves dim -1: a·σ(b), 5 per output element; backward 9 per output element
    x = needs_grad(torch.randn(3, 4, 6), True)
    step = run_step(lambda x: F.glu(x * 1.0), x)
    out = 3 * 4 * 3
    assert step.other_flops("forward") == 5 * out + x.numel()
    assert step.other_flops("backward") == 9 * out + x.numel()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(2, 7))
def test_cross_entropy_by_hand(n, classes):
    x = needs_grad(torch.randn(n, classes), True)
    target = torch.randint(0, classes, (n,))
    step = run_step(lambda x: F.cross_entropy(x, target), x)
    # log_softmax 5 per logit; nll: one add per target + the mean's divide;
    # backward: nll scatter 1 per logit, log_softmax backward 4 per logit
    assert step.other_flops("forward") == 5 * n * classes + n + 1
    assert step.other_flops("backward") == n * classes + 4 * n * classes


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_mse_and_residual_by_hand(shape):
    x, y = needs_grad(torch.randn(shape), True), torch.randn(shape)
    step = run_step(lambda x: F.mse_loss(x, y), x)
    # subtract, square, add per element, forward and backward
    assert (step.other_flops("forward"), step.other_flops("backward")) == (3 * x.numel(), 3 * x.numel())
    x, w = needs_grad(x, True), needs_grad(torch.randn(shape[-1]), True)  # fresh leaves: no .grad to add into
    step = run_step(lambda x, w: x * w + x, x, w)
    # forward: multiply (broadcast w), add; backward: g·w and g·x (one multiply each), the
    # sum of g·x back to w's shape (one add per element, whenever x has leading dims),
    # and the two gradients of x added
    numel = x.numel()
    summed = numel if len(shape) > 1 else 0
    assert step.other_flops("forward") == 2 * numel
    assert step.other_flops("backward") == 2 * numel + summed + numel


# --- end to end: the activation's row in symcx.analyze -----------------------------------------


E2E = ["relu", "gelu", "silu", "sigmoid", "tanh", "softmax", "leaky_relu", "hardswish", "elu", "mish",
       "prelu", "relu_inplace", "dropout"]


@pytest.mark.parametrize("name", E2E)
def test_analyze_activation_rows_by_hand(name):
    factory, forward, backward = DROPOUT if name == "dropout" else ACTIVATIONS[name]
    model = nn.Sequential(nn.Linear(6, 5), factory(), nn.Linear(5, 3))
    a = symcx.analyze(model, torch.randn(4, 6))
    row = next(r for r in a.layers if r.name == "1")
    # the activation's input needs a gradient: (t, 5) elements; PReLU adds its weight's sum
    for batch in (2, 7):
        numel = batch * 5
        extra = numel if name == "prelu" else 0
        got = (evaluate(row.forward_other_flops, t=batch), evaluate(row.backward_other_flops, t=batch))
        assert got == (forward * numel, backward * numel + extra)


def test_analyze_cross_entropy_loss_by_hand():
    model = nn.Linear(5, 4)
    a = symcx.analyze(model, torch.randn(3, 5),
                      loss=lambda out: F.cross_entropy(out, torch.zeros(out.shape[0], dtype=torch.long)))
    # 2·t·5·4 matmul; log_softmax 5·4·t, nll t + 1; backward 4·t + 4·4·t, plus the bias grad sum 4·t
    assert evaluate(a.forward_other_flops, t=3) == 5 * 4 * 3 + 3 + 1
    assert evaluate(a.backward_other_flops, t=3) == 4 * 3 + 4 * 4 * 3 + 4 * 3
    assert evaluate(a.forward_flops, t=3) == 2 * 3 * 5 * 4


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.sampled_from(["bce_logits", "bce", "smooth_l1", "huber"]))
def test_fused_losses_by_hand(shape, loss):
    """Per element: BCE with logits (1 − y)·x + log1p(exp(−x)), summed: 7; its backward runs as
    sigmoid (4), subtract, multiply, mean divide: 7. BCE on probabilities −(y·log x + (1 − y)·log(1 − x)),
    summed: 9; backward g·(x − y)/(x·(1 − x)): 5. Smooth L1 / Huber: subtract, abs, compare,
    multiply, divide, select, summed: 7; backward subtract, abs, compare, divide, sign, select, multiply: 7."""
    y = torch.rand(shape)
    x = needs_grad(torch.rand(shape) * 0.8 + 0.1, True)
    fn, forward, backward = {
        "bce_logits": (lambda x: F.binary_cross_entropy_with_logits(x, y), 7, 7),
        "bce": (lambda x: F.binary_cross_entropy(x, y), 9, 5),
        "smooth_l1": (lambda x: F.smooth_l1_loss(x, y), 7, 7),
        "huber": (lambda x: F.huber_loss(x, y, delta=0.5), 7, 7),
    }[loss]
    step = run_step(fn, x)
    assert (step.other_flops("forward"), step.other_flops("backward")) == (forward * x.numel(), backward * x.numel())


def test_xlogy_by_hand():
    """x·log(y), 0 where x = 0: log, multiply, select per element (KL divergence runs it)."""
    y = needs_grad(torch.rand(3, 4) + 0.1, True)
    step = run_step(lambda y: torch.xlogy(torch.rand(3, 4), y).sum(), y)
    assert step.other_flops("forward") == 3 * 12 + 12  # xlogy, then the sum


def test_moe_router_counting_ops_by_hand():
    """A mixture-of-experts router's bookkeeping: ``histc`` of the chosen experts (one bin
    increment per element) and ``floor_divide`` of the sorted slots by top-k (one per element)."""
    ids = torch.randint(0, 4, (6, 2))
    step = run_forward(lambda e: (torch.histc(e.float(), bins=4, min=0, max=3), e.flatten() // 2), ids)
    assert step.ops("forward") == ["aten._to_copy", "aten.histc", "aten.view", "aten.floor_divide"]
    assert step.other_flops("forward") == 12 + 12  # histc over 12 ids; 12 quotients
