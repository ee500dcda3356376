"""Scans, uniques, searches, ``mode``, ``bincount`` and the reductions outside the reduction table:
hand counts of ``other_flops`` on real aten calls (FlopCounterMode counts 0 for all of them).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from .conftest import needs_grad, run_forward, run_step

SEQ = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])  # 5 sorted keys: ⌈log₂(5 + 1)⌉ = 3 compares per search
IDS = torch.tensor([0, 2, 2, 5, 1, 0, 3, 3, 3, 4])  # 10 non-negative ints

#: name -> (fn of x (3×7, needs a gradient), forward other_flops, backward other_flops), by hand
WITH_BACKWARD = {
    # 3 slices of 7 sorted (7·⌈log₂ 7⌉ = 21 each) and their runs counted (7 each); backward a plain scatter
    "mode": (lambda x: x.mode(dim=1).values, 3 * (21 + 7), 0),
    # one compare per element, 21; backward: the grads scatter-added at the indices, one add each
    "cummax": (lambda x: x.cummax(dim=1).values, 21, 21),
    "cummin": (lambda x: x.cummin(dim=0).values, 21, 21),
    "cumprod": (lambda x: x.cumprod(1), 21, None),  # one multiply each
    "logcumsumexp": (lambda x: x.logcumsumexp(1), 3 * 21, None),  # exp, add, log each
    "aminmax": (lambda x: torch.aminmax(x, dim=1).min, 2 * 21, None),  # two compares each
    "nansum": (lambda x: x.nansum(1), 2 * 21, None),  # isnan select, add each
    "renorm": (lambda x: x.renorm(2, 0, 1.0), 3 * 21, None),  # norm (square, add), scale each
    "trace": (lambda x: x.trace(), 3, None),  # the 3 diagonal elements of a 3×7 matrix added
}


@pytest.mark.parametrize("name", sorted(WITH_BACKWARD))
def test_scans_and_reductions_by_hand(name):
    fn, forward, backward = WITH_BACKWARD[name]
    step = run_step(fn, needs_grad(torch.randn(3, 7), True))
    assert step.other_flops("forward") == forward
    if backward is not None:
        assert step.other_flops("backward") == backward
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


#: ops without a derivative (integer outputs, data-dependent sizes): name -> (fn of x (3×7), other_flops)
FORWARD_ONLY = {
    "count_nonzero": (lambda x: torch.count_nonzero(x, dim=1), 2 * 21),  # compare, add each
    # 21 values, each binary-searched among 5 keys: 21·3
    "searchsorted": (lambda x: torch.searchsorted(SEQ, x), 21 * 3),
    "searchsorted_scalar": (lambda x: torch.searchsorted(SEQ, 0.3), 3),
    "bucketize": (lambda x: torch.bucketize(x, SEQ, right=True), 21 * 3),
    "bincount": (lambda x: torch.bincount(IDS), 10),  # one add per id into its bin
    "bincount_weights": (lambda x: torch.bincount(IDS, weights=x[0, :5].repeat(2), minlength=8), 10),
    # the 21 elements sorted (21·⌈log₂ 21⌉ = 105), each compared with its neighbour (21)
    "unique": (lambda x: torch.unique(x), 105 + 21),
    "unique_inverse_counts": (lambda x: torch.unique(x, return_inverse=True, return_counts=True), 105 + 21 + 2 * 21),
    # 3 rows sorted: 21 elements·⌈log₂ 3⌉ = 42, neighbours compared 21, counts 3
    "unique_dim": (lambda x: torch.unique(x, dim=0, return_counts=True), 42 + 21 + 3),
    "unique_consecutive": (lambda x: torch.unique_consecutive(x), 21),
    "unique_consecutive_dim": (lambda x: torch.unique_consecutive(x, dim=1, return_counts=True), 21 + 7),
    "nonzero": (lambda x: torch.nonzero(x), 21),  # one compare each
    "masked_select": (lambda x: x.masked_select(x > 0), 21),  # the compare; the selection moves data
    "segment_sum": (lambda x: torch.segment_reduce(x.flatten(), "sum", lengths=torch.tensor([10, 11])), 21),
    "segment_mean": (lambda x: torch.segment_reduce(x.flatten(), "mean", lengths=torch.tensor([10, 11])), 21 + 2),
    "repeat_interleave": (lambda x: torch.repeat_interleave(torch.tensor([1, 2, 3])), 3),  # prefix sum of 3
    # 6 looked-up rows of width 3 (a 5×3 table): norm (square, add) and scale per element, one compare per row
    "embedding_max_norm": (lambda x: F.embedding(torch.tensor([[0, 1, 1], [4, 2, 0]]), x[:, :5].T.contiguous(),
                                                 max_norm=1.0), 6 * (3 * 3 + 1)),
    "histogram": (lambda x: torch.histogram(x, bins=4), 21),  # one bin increment each
    # the mask's compare (21), then mask select + softmax 5 per element
    "masked_softmax": (lambda x: torch.ops.aten._masked_softmax(x, x > 0), 21 + 6 * 21),
    # clip_grad_norm_(foreach=True)'s norms of a 3×7 and a 4-vector: square and add per element
    "foreach_norm": (lambda x: torch.ops.aten._foreach_norm.Scalar([x, x[0, :4]]), 2 * (21 + 4)),
}


@pytest.mark.parametrize("name", sorted(FORWARD_ONLY))
def test_forward_only_searches_and_uniques_by_hand(name):
    fn, expected = FORWARD_ONLY[name]
    step = run_forward(fn, torch.randn(3, 7))
    assert step.other_flops("forward") == expected
    assert step.fcm_forward == 0
