"""Foreach and fused optimizer kernels: the one-tensor count per element of the whole list, by hand."""

from __future__ import annotations

import torch

from symcx.rules import lookup

from .conftest import op_call


def _cost(func, args, kwargs=None):
    call = op_call(func, args, kwargs or {}, None)
    return lookup(call.op, call.op.rsplit(".", 1)[0])(call)


def _params():
    return [torch.randn(3, 4), torch.randn(4)]  # 12 + 4 = 16 elements


def test_foreach_ops_count_every_element_of_the_list():
    a, b, c = _params(), _params(), _params()
    # addcmul: a + v·b·c is 2 operations per element: 2 · 16 = 32
    assert _cost(torch.ops.aten._foreach_addcmul_.Scalar, (a, b, c, 0.5)).other_flops == 32
    # mul by a scalar: 1 per element: 16; sqrt out of place: 16
    assert _cost(torch.ops.aten._foreach_mul_.Scalar, (a, 0.9)).other_flops == 16
    assert _cost(torch.ops.aten._foreach_sqrt.default, (a,)).other_flops == 16
    assert _cost(torch.ops.aten._foreach_mul_.Scalar, (a, 0.9)).flops == 0  # FlopCounterMode counts none


def test_fused_adam_and_sgd_count_the_for_loop_step():
    p, g, m, v, vmax = (_params() for _ in range(5))
    steps = [torch.tensor(1.0), torch.tensor(1.0)]
    common = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, maximize=False)
    adam = _cost(torch.ops.aten._fused_adam_.default, (p, g, m, v, vmax, steps),
                 dict(common, weight_decay=0.0, amsgrad=False))
    # Adam per element: lerp 2 + mul 1 + addcmul 2 + sqrt 1 + div 1 + add 1 + addcdiv 2 = 10; 10 · 16 = 160
    assert adam.other_flops == 160
    amsgrad_wd = _cost(torch.ops.aten._fused_adam_.default, (p, g, m, v, vmax, steps),
                       dict(common, weight_decay=0.01, amsgrad=True))
    assert amsgrad_wd.other_flops == (10 + 1 + 1) * 16  # + maximum, + weight decay
    sgd = dict(weight_decay=0.0, lr=0.1, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
    assert _cost(torch.ops.aten._fused_sgd_.default, (p, g, m), dict(sgd, momentum=0.9)).other_flops == 3 * 16
    assert _cost(torch.ops.aten._fused_sgd_.default, (p, g, []), dict(sgd, momentum=0.0)).other_flops == 16
