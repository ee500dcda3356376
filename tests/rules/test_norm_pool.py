"""Norm and pooling ``other_flops`` against the per-element constants of symcx.rules.norm and
symcx.rules.pool, worked out by hand from each layer's shapes. FlopCounterMode counts none of
these (0), so the oracle is the documented convention applied to the real layer's sizes.

Norm, per element: forward 4 statistics (training, or no running statistics) + 2 normalize
+ 1 per γ and 1 per β (RMS: 3 + 1 per γ); backward 9 for grad-input (2 for batch norm with
running statistics) + 3 when γ/β get grads (RMS: 7 + 2). Pooling: prod(kernel) per output
element (max, avg), adaptive: every input element once + one per output element; backward:
max one per grad-output element, avg prod(kernel) per grad-output element, adaptive one per
grad-input element.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import symcx
from symcx._torch import op_schema
from symcx.cost import OpCall, bind_arguments
from symcx.rules import lookup

from .conftest import evaluate, info, needs_grad, run_step

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


@st.composite
def norms(draw):
    kind = draw(st.sampled_from(["batch", "layer", "group", "instance"]))
    c = draw(st.integers(1, 4))
    n = draw(st.integers(2, 3))
    dims = draw(st.integers(1, 3))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    affine = draw(st.booleans())
    if kind == "batch":
        layer = [nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d][dims - 1](
            c, affine=affine, track_running_stats=draw(st.booleans()))
        layer.train(draw(st.booleans()))
    elif kind == "instance":
        dims = min(dims, 2)
        spatial = tuple(max(2, k) for k in spatial[:dims])  # instance norm needs > 1 element
        layer = [nn.InstanceNorm1d, nn.InstanceNorm2d][dims - 1](c, affine=affine)
    elif kind == "layer":
        last = draw(st.integers(1, dims))
        layer = nn.LayerNorm(spatial[-last:], elementwise_affine=affine, bias=draw(st.booleans()))
    else:
        groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        layer = nn.GroupNorm(groups, c, affine=affine)
    return layer, (n, c, *spatial), draw(st.booleans())


def norm_by_hand(layer: nn.Module, shape: tuple, input_grad: bool) -> tuple[int, int]:
    """(forward, backward) other_flops of ``layer`` on ``shape`` by the convention above."""
    numel = math.prod(shape)
    gamma = getattr(layer, "weight", None) is not None
    beta = getattr(layer, "bias", None) is not None
    grads = gamma or beta
    running = isinstance(layer, BATCH_NORMS) and layer.track_running_stats and not layer.training
    forward = ((0 if running else 4) + 2 + gamma + beta) * numel
    if isinstance(layer, BATCH_NORMS) and layer.training and layer.track_running_stats:
        forward += 1  # num_batches_tracked += 1
    if not (input_grad or grads):
        return forward, 0
    backward = (((2 if running else 9) if input_grad else 0) + (3 if grads else 0)) * numel
    if isinstance(layer, INSTANCE_NORMS):
        # instance norm is a batch norm over (1, N·C, …) with γ, β repeated N times: their
        # N·C gradients are summed back, one add each
        backward += (gamma + beta) * shape[0] * shape[1]
    return forward, backward


@pytest.mark.slow
@settings(max_examples=250, deadline=None)
@given(norms())
def test_norm_other_flops_by_hand(case):
    layer, shape, input_grad = case
    x = needs_grad(torch.randn(shape), input_grad)
    if not (input_grad or any(p.requires_grad for p in layer.parameters())):
        x = needs_grad(x, True)  # something must need a gradient for a backward to run
        input_grad = True
    step = run_step(layer, x)
    expected = norm_by_hand(layer, tuple(x.shape), input_grad)
    assert (step.other_flops("forward"), step.other_flops("backward")) == expected
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("mask", [(True, True), (True, False), (False, True)])
def test_fused_rms_norm_by_hand(weight, mask):
    # nn.RMSNorm runs as pow, mean, add, rsqrt, mul on CPU (pointwise rules); the fused kernel
    # (CUDA) on a (2, 3, 5) input: forward (3 + γ)·30, backward 7·30 for grad-input + 2·30 for γ
    x = info(torch.empty(2, 3, 5))
    w = info(torch.empty(5)) if weight else None
    rstd = info(torch.empty(2, 3, 1))
    fwd_args = bind_arguments(op_schema(torch.ops.aten._fused_rms_norm.default), (x, [5], w, 1e-5), {})
    fwd = lookup("aten._fused_rms_norm.default")(OpCall("aten._fused_rms_norm.default", fwd_args, (x, rstd)))
    bwd_op = torch.ops.aten._fused_rms_norm_backward.default
    bwd_args = bind_arguments(op_schema(bwd_op), (x, x, [5], rstd, w, list(mask)), {})
    bwd = lookup("aten._fused_rms_norm_backward.default")(OpCall("aten._fused_rms_norm_backward.default", bwd_args, (x, w)))
    assert fwd.other_flops == (3 + weight) * 30
    assert bwd.other_flops == (7 * mask[0] + 2 * mask[1]) * 30


@st.composite
def pools(draw):
    kind = draw(st.sampled_from(["max", "avg", "adaptive_avg", "adaptive_max"]))
    dims = draw(st.integers(1, 3))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if kind.startswith("adaptive"):
        out = tuple(draw(st.integers(1, 3)) for _ in range(dims))
        spatial = tuple(draw(st.integers(o, o + 4)) for o in out)
        cls = {"adaptive_avg": [nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d],
               "adaptive_max": [nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d]}[kind][dims - 1]
        return cls(out), (n, c, *spatial), None
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    ceil_mode = draw(st.booleans())
    if kind == "max":
        dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
        reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        layer = [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d][dims - 1](
            kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        reach = list(kernel)
        layer = [nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d][dims - 1](
            kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=draw(st.booleans()))
    spatial = tuple(draw(st.integers(r, r + 4)) for r in reach)
    return layer, (n, c, *spatial), math.prod(kernel)


@pytest.mark.slow
@settings(max_examples=250, deadline=None)
@given(pools())
def test_pool_other_flops_by_hand(case):
    layer, shape, window = case
    x = needs_grad(torch.randn(shape), True)
    step = run_step(layer, x)
    out = layer(x).numel()
    if window is None and "aten.mean" in step.ops("forward"):
        # global average pooling runs as a mean: one add per input element, one divide back each
        expected = (x.numel(), x.numel())
    elif window is None:
        expected = (x.numel() + out, x.numel())
    elif isinstance(layer, MAX_POOLS):
        expected = (window * out, out)
    else:
        expected = (window * out, window * out)
    assert (step.other_flops("forward"), step.other_flops("backward")) == expected
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


# --- end to end: the layer's row in symcx.analyze --------------------------------------------


class Fronted(nn.Module):
    """A 1×1 conv in front, so that the layer's input needs a gradient, then the layer."""

    def __init__(self, channels, layer):
        super().__init__()
        self.front = nn.Conv1d(channels, channels, 1) if layer_dims(layer) == 1 else nn.Conv2d(channels, channels, 1)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.front(x))


def layer_dims(layer):
    return 1 if "1d" in type(layer).__name__ else 2


E2E = [
    (nn.BatchNorm2d(4), (4, 6, 6), None),
    (nn.BatchNorm2d(4, affine=False), (4, 5, 5), None),
    (nn.BatchNorm1d(3), (3, 7), None),
    (nn.LayerNorm([5, 5]), (3, 5, 5), None),
    (nn.LayerNorm(6, bias=False), (2, 4, 6), None),
    (nn.GroupNorm(2, 4), (4, 3, 3), None),
    (nn.InstanceNorm2d(3, affine=True), (3, 4, 4), None),
    (nn.MaxPool2d(2), (3, 6, 6), 4),
    (nn.MaxPool2d(3, stride=2, padding=1, dilation=2), (2, 9, 9), 9),
    (nn.AvgPool2d(3, stride=1, padding=1), (3, 5, 5), 9),
    (nn.AvgPool1d(2, ceil_mode=True), (3, 7), 2),
    (nn.AdaptiveAvgPool2d(2), (3, 5, 5), None),
    (nn.AdaptiveMaxPool2d((2, 3)), (2, 6, 6), None),
    (nn.MaxPool1d(3), (2, 9), 3),
]


@pytest.mark.parametrize("layer,shape,window", E2E, ids=[type(c[0]).__name__ for c in E2E])
def test_analyze_rows_by_hand(layer, shape, window):
    model = Fronted(shape[0], layer)
    a = symcx.analyze(model, torch.randn(2, *shape))
    row = next(r for r in a.layers if r.name == "layer")
    for batch in (3, 5):
        y = model(torch.randn(batch, *shape))
        x_numel, out = batch * math.prod(shape), y.numel()
        if window is None and not isinstance(layer, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            expected = norm_by_hand(layer, (batch, *shape), True)
        elif window is None:
            expected = (x_numel + out, x_numel)
        elif isinstance(layer, MAX_POOLS):
            expected = (window * out, out)
        else:
            expected = (window * out, window * out)
        got = (evaluate(row.forward_other_flops, t=batch), evaluate(row.backward_other_flops, t=batch))
        assert got == expected
