"""An op with no rule is named (op, layer and the model's source line), counted nowhere, and
refused under ``strict=True``; registering one function makes it supported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symcx
from symcx import t
from symcx.errors import UnsupportedOpError
from symcx.cost import Cost
from symcx.rules import register


@torch.library.custom_op("symcx_test::cube", mutates_args=())
def cube(x: torch.Tensor) -> torch.Tensor:
    return x * x * x


@cube.register_fake
def _(x):
    return torch.empty_like(x)


cube.register_autograd(
    lambda ctx, grad: grad * 3 * ctx.saved_tensors[0] ** 2,
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
)


class Cubed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)

    def forward(self, x):
        return torch.ops.symcx_test.cube(self.lin(x))  # CUBE_LINE


CUBE_LINE = next(k for k, line in enumerate(open(__file__), 1) if line.rstrip().endswith("# CUBE_LINE"))


def test_unsupported_op_is_named_and_counted_nowhere(caplog):
    a = symcx.analyze(Cubed(), torch.randn(3, 4))
    assert dict(a.unsupported) == {("symcx_test.cube", "cube"): 1}
    assert a.forward_flops == 2 * 4 * 6 * t  # the Linear alone
    assert f"test_registry.py:{CUBE_LINE}" in caplog.text and "symcx_test.cube" in caplog.text


def test_strict_refuses_it_with_the_source_line():
    with pytest.raises(UnsupportedOpError, match=rf"symcx_test\.cube\.default at cube \(.*test_registry\.py:{CUBE_LINE}\)"):
        symcx.analyze(Cubed(), torch.randn(3, 4), strict=True)


def test_one_registered_function_makes_it_supported(monkeypatch):
    import symcx.rules

    monkeypatch.setattr(symcx.rules, "_REGISTRY", dict(symcx.rules._REGISTRY))  # undone after the test
    register("symcx_test.cube", lambda call: Cost(other_flops=2 * call.outputs[0].numel), replace=True)
    a = symcx.analyze(Cubed(), torch.randn(3, 4), strict=True)
    assert not a.unsupported
    row = next(r for r in a.layers if r.name == "cube")
    assert row.forward_other_flops == 2 * 6 * t  # x·x·x: two multiplies per element
