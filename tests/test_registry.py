"""An op with no rule, or whose rule refuses its arguments, is named (op, layer and the model's
source line), counted nowhere, and refused under ``strict=True``; registering one function makes
it supported. Rules are keyed by overload or family, and an overload's own rule comes first."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symcx
from symcx import t
from symcx.cost import Cost
from symcx.errors import RuleError, UnsupportedCall, UnsupportedOpError
from symcx.rules import lookup, register, registry
from symcx.rules.matmul import mm_flops


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


def test_one_registered_function_makes_it_supported(rules):
    register("symcx_test.cube", lambda call: Cost(other_flops=2 * call.outputs[0].numel), replace=True)
    a = symcx.analyze(Cubed(), torch.randn(3, 4), strict=True)
    assert not a.unsupported
    row = next(r for r in a.layers if r.name == "cube")
    assert row.forward_other_flops == 2 * 6 * t  # x·x·x: two multiplies per element


@pytest.fixture
def rules(monkeypatch):
    """The registry's dict, copied for the test and restored after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def test_an_overload_gets_its_own_rule(rules):
    def mm_default(call):
        return Cost()

    register(torch.ops.aten.mm.default, mm_default)
    assert "aten.mm.default" in rules
    assert lookup("aten.mm.default") is mm_default
    assert lookup("aten.mm.out") is mm_flops  # the family's rule still serves the others


def test_registering_one_overload_twice_names_both_functions(rules):
    def first(call):
        return Cost()

    def second(call):
        return Cost()

    register(torch.ops.aten.mm.default, first)
    with pytest.raises(RuleError, match=r"aten\.mm\.default already has rule first; cannot add second"):
        register("aten.mm.default", second)
    assert lookup("aten.mm.default") is first


def test_a_packet_is_keyed_by_its_family_name(rules):
    def mm_packet(call):
        return Cost()

    register(torch.ops.aten.mm, mm_packet, replace=True)
    assert lookup("aten.mm.out") is mm_packet and rules["aten.mm"] is mm_packet


class Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6, bias=False)

    def forward(self, x):
        return self.lin(x)  # MM_LINE


MM_LINE = next(k for k, line in enumerate(open(__file__), 1) if line.rstrip().endswith("# MM_LINE"))


def _refuse(call):
    raise UnsupportedCall("no formula for this test's mm")


def test_a_rule_that_refuses_its_arguments_makes_the_op_unsupported(rules, caplog):
    register(torch.ops.aten.mm.default, _refuse)
    a = symcx.analyze(Projection(), torch.randn(3, 4))
    # the forward mm and the backward's grad-weight mm, both attributed to lin
    assert dict(a.unsupported) == {("aten.mm", "lin"): 2}
    assert a.forward_flops == 0 and a.backward_flops == 0
    assert caplog.text.count("no formula for this test's mm") == 1  # logged once per (op, layer)
    assert f"test_registry.py:{MM_LINE}" in caplog.text


def test_strict_raises_the_refusal_as_unsupported_op_error(rules):
    register(torch.ops.aten.mm.default, _refuse)
    pattern = rf"aten\.mm\.default at lin \(.*test_registry\.py:{MM_LINE}\) .*no formula for this test's mm"
    with pytest.raises(UnsupportedOpError, match=pattern):
        symcx.analyze(Projection(), torch.randn(3, 4), strict=True)
