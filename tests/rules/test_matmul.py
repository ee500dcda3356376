"""Matrix-product rules against FlopCounterMode on an explicit ``torch.bmm`` of the operands
broadcast to full batch shape (vectors as 1-row or 1-column matrices): 2·batch·m·k·n forward,
and one such product per operand that needs a gradient backward.

FlopCounterMode has no formula for ``mv`` and ``dot`` (what ``@`` runs for a vector operand)
and counts them 0; symcx counts 2·m·k and 2·k. Their backward forms the gradient of the matrix
(or of both vectors) as an elementwise outer product, ``mul``: symcx counts it in
``other_flops``, one multiply per element, not as a matrix product.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import symcx

from .conftest import evaluate, fcm_counts, needs_grad, run_step


def as_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as one ``torch.bmm`` over the broadcast batch (vectors made matrices)."""
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    batch = torch.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    (m, k), n = a2.shape[-2:], b2.shape[-1]
    a3 = a2.expand(*batch, m, k).reshape(-1, m, k)
    b3 = b2.expand(*batch, k, n).reshape(-1, k, n)
    return torch.bmm(a3, b3)


@st.composite
def matmul_shapes(draw):
    m, k, n = (draw(st.integers(1, 6)) for _ in range(3))
    rank = draw(st.integers(0, 3))
    batch = [draw(st.integers(1, 3)) for _ in range(rank)]
    # each operand takes a suffix of the batch, some of its sizes broadcast from 1
    a_batch = [s if draw(st.booleans()) else 1 for s in batch[draw(st.integers(0, rank)):]]
    b_batch = [s if draw(st.booleans()) else 1 for s in batch[draw(st.integers(0, rank)):]]
    a = (k,) if draw(st.integers(0, 4)) == 0 else (*a_batch, m, k)
    b = (k,) if draw(st.integers(0, 4)) == 0 else (*b_batch, k, n)
    return a, b, draw(st.booleans()), draw(st.booleans())


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(matmul_shapes())
def test_matmul_rules_match_bmm(case):
    a_shape, b_shape, a_grad, b_grad = case
    a = needs_grad(torch.randn(a_shape), a_grad)
    b = needs_grad(torch.randn(b_shape), b_grad or not a_grad)
    step = run_step(torch.matmul, a, b)
    forward, backward = fcm_counts(as_bmm, a, b)
    assert step.flops("forward") == forward
    assert (step.fcm_view("forward"), step.fcm_view("backward")) == (step.fcm_forward, step.fcm_backward)
    if not {"aten.mv", "aten.dot"} & set(step.ops("forward")):  # mm or bmm ran: as the oracle
        assert step.flops("backward") == backward
        assert (step.fcm_forward, step.fcm_backward) == (forward, backward)
        return
    # mv or dot: the vector's gradient is again a matrix-vector product, 2·batch·m·k·n; the
    # matrix's (or, for dot, both vectors') an elementwise outer product, not counted in flops
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)
    vector = a if a.dim() == 1 else b
    by_hand = 0 if a.dim() == b.dim() == 1 or not vector.requires_grad else forward
    assert step.flops("backward") == by_hand


@st.composite
def linear_cases(draw):
    lead = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, 3))))
    return draw(st.integers(1, 16)), draw(st.integers(1, 16)), draw(st.booleans()), lead, draw(st.booleans())


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(linear_cases())
def test_linear_matches_flop_counter_mode(case):
    in_f, out_f, bias, lead, input_grad = case
    layer = nn.Linear(in_f, out_f, bias=bias)
    x = needs_grad(torch.randn(*lead, in_f), input_grad)
    step = run_step(layer, x)
    rows = math.prod(lead)
    # by hand: forward 2·rows·in·out; backward grad-weight 2·rows·in·out, grad-input the same if asked
    assert step.flops("forward") == step.fcm_forward == 2 * rows * in_f * out_f
    assert step.flops("backward") == step.fcm_backward == 2 * rows * in_f * out_f * (1 + input_grad)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_baddbmm_and_addmm_match_flop_counter_mode(b, m, k, n):
    x, y = needs_grad(torch.randn(b, m, k), True), needs_grad(torch.randn(b, k, n), True)
    c = needs_grad(torch.randn(b, m, n), True)
    step = run_step(lambda c, x, y: torch.baddbmm(c, x, y, beta=0.5), c, x, y)
    assert (step.flops("forward"), step.flops("backward")) == (step.fcm_forward, step.fcm_backward)
    assert step.flops("forward") == 2 * b * m * k * n
    step = run_step(lambda c, x, y: torch.addmm(c[0], x[0], y[0]), c, x, y)
    assert (step.flops("forward"), step.flops("backward")) == (step.fcm_forward, step.fcm_backward)


# --- end to end: symcx.analyze ------------------------------------------------------------------


class Mixer(nn.Module):
    """``x @ W`` with a 3-d input and a weight matrix, then a batched product with itself."""

    def __init__(self, k, n):
        super().__init__()
        self.w = nn.Parameter(torch.randn(k, n))

    def forward(self, x):
        y = x @ self.w  # (t, m, n)
        return y.transpose(1, 2) @ y  # (t, n, n): bmm


MLPS = [
    [7, 5, 3],
    [16, 32, 32, 10],
    [4, 9],
    [12, 6, 6, 6, 2],
]


@pytest.mark.parametrize("widths", MLPS)
@pytest.mark.parametrize("bias", [True, False])
def test_analyze_mlp_matches_flop_counter_mode(widths, bias):
    layers = []
    for i, o in zip(widths, widths[1:]):
        layers += [nn.Linear(i, o, bias=bias), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    a = symcx.analyze(model, torch.randn(3, widths[0]))
    for batch in (1, 6):
        assert (evaluate(a.forward_flops, t=batch), evaluate(a.backward_flops, t=batch)) == fcm_counts(
            model, torch.randn(batch, widths[0]))


@pytest.mark.parametrize("m,k,n", [(4, 3, 5), (2, 6, 2), (7, 1, 3)])
def test_analyze_broadcast_matmul_matches_flop_counter_mode(m, k, n):
    model = Mixer(k, n)
    a = symcx.analyze(model, torch.randn(3, m, k), dims={"M": 1})
    for batch, rows in ((2, 3), (5, 8)):
        got = (evaluate(a.forward_flops, t=batch, M=rows), evaluate(a.backward_flops, t=batch, M=rows))
        assert got == fcm_counts(model, torch.randn(batch, rows, k))


def _sumproduct_pair(a, b, dims):
    """ATen's ``sumproduct_pair`` (aten/src/ATen/native/Linear.cpp) written out: a multiply when
    nothing is summed, else a summed dim only one side has is reduced there and the rest is one
    ``bmm`` of (kept-in-both, left-only, summed) by (kept-in-both, summed, right-only)."""
    if not dims:
        return a * b
    lro, lo, ro, summed = [], [], [], []
    for d in range(a.dim()):
        sl, sr = a.shape[d] != 1, b.shape[d] != 1
        if d in dims:
            if sl and sr:
                summed.append(d)
            elif sl:
                a = a.sum(d, keepdim=True)
            elif sr:
                b = b.sum(d, keepdim=True)
        elif sl and sr:
            lro.append(d)
        elif sl:
            lo.append(d)
        elif sr:
            ro.append(d)
    size = lambda x, ds: math.prod(x.shape[d] for d in ds)  # noqa: E731
    rest = [d for d in range(a.dim()) if d not in lro + lo + summed + ro]
    left = a.permute(lro + lo + summed + ro + rest).reshape(size(a, lro), size(a, lo), size(a, summed))
    right = b.permute(lro + summed + ro + lo + rest).reshape(size(b, lro), size(b, summed), size(b, ro))
    torch.bmm(left, right)
    shape = [1 if d in dims else max(x, y) for d, (x, y) in enumerate(zip(a.shape, b.shape))]
    return torch.zeros(shape)  # the values do not matter here, only the sizes


def _trilinear_replica(i1, i2, i3, expand1, expand2, expand3, sumdim, unroll_dim=1):
    """ATen's ``_trilinear`` loop written out: per index of the unrolled dim, i1·i2 summed over
    the dims i3 lacks, then that with i3 (two ``sumproduct_pair``s)."""
    ops = []
    for x, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        for d in sorted(expand):
            x = x.unsqueeze(d)
        ops.append(x)
    sum12 = [d for d in sumdim if d in expand3 and d != unroll_dim]
    sum23 = [d for d in sumdim if d not in expand3 and d != unroll_dim]
    for k in range(max(x.shape[unroll_dim] for x in ops)):
        sl = [x.narrow(unroll_dim, k if x.shape[unroll_dim] > 1 else 0, 1) for x in ops]
        _sumproduct_pair(_sumproduct_pair(sl[0], sl[1], sum12), sl[2], sum23)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.booleans())
def test_trilinear_matches_the_kernels_loop(batch, in1, in2, out, input_grad):
    """nn.Bilinear forward and every backward ``_trilinear`` against the kernel's own loop under
    FlopCounterMode; the forward is 2·B·O·J·(I + 1) by hand."""
    layer = nn.Bilinear(in1, in2, out)
    x1, x2 = needs_grad(torch.randn(batch, in1), input_grad), needs_grad(torch.randn(batch, in2), input_grad)
    step = run_step(layer, x1, x2)
    assert step.flops("forward") == 2 * batch * out * in2 * (in1 + 1)
    for phase, calls in (("forward", step.forward_calls), ("backward", step.backward_calls)):
        oracle = 0
        for func, args, kwargs, _ in calls:
            if "_trilinear" in str(func):
                with FlopCounterMode(display=False) as f:
                    _trilinear_replica(*args, **kwargs)
                oracle += f.get_total_flops()
        assert step.flops(phase) == oracle


def _grouped_by_hand(a: torch.Tensor, b: torch.Tensor, offs: list[int]) -> torch.Tensor:
    """The grouped GEMM of rows ``offs[g-1]:offs[g]`` of ``a`` with ``b[g]``, one ``mm`` per group."""
    starts = [0, *offs[:-1]]
    return torch.cat([a[s:e] @ b[g] for g, (s, e) in enumerate(zip(starts, offs))])


@pytest.mark.parametrize("offs", [[2, 4, 6], [0, 5, 6], [6, 6, 6]])  # even, an empty group, all in one
def test_grouped_mm_counts_one_mm_per_group_and_flop_counter_mode_zero(offs):
    a, b = torch.randn(6, 4, requires_grad=True), torch.randn(3, 4, 8, requires_grad=True)
    counts = torch.tensor(offs, dtype=torch.int32)
    # square: a plain sum's gradient is expanded (stride 0), which the CPU grouped kernel refuses
    step = run_step(lambda x, w: torch.nn.functional.grouped_mm(x, w, offs=counts).square(), a, b)
    oracle = fcm_counts(lambda x, w: _grouped_by_hand(x, w, offs).square(), a, b)
    # by hand: forward 2·6·4·8 = 384 whatever the split; backward grad-a and grad-b, 2·384
    assert (step.flops("forward"), step.flops("backward")) == oracle == (384, 768)
    assert (step.fcm_view("forward"), step.fcm_view("backward")) == (step.fcm_forward, step.fcm_backward) == (0, 0)


def test_grouped_mm_of_two_3d_operands_is_a_batched_product():
    a, b = torch.randn(3, 8, 4, requires_grad=True), torch.randn(3, 4, 8, requires_grad=True)
    step = run_step(lambda x, w: torch.nn.functional.grouped_mm(x, w).square(), a, b)
    assert (step.flops("forward"), step.flops("backward")) == fcm_counts(lambda x, w: torch.bmm(x, w).square(), a, b)
