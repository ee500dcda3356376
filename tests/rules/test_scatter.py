"""Scatters, sorting and selection, ``unfold``, the embedding backward and weight norm: hand
counts of ``other_flops`` on real aten calls, FlopCounterMode's 0 for all of them, and models
that analyze with nothing unsupported.
"""

from __future__ import annotations

import warnings

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn

import symcx
from symcx import t

from .conftest import evaluate, fcm_counts, needs_grad, run_forward, run_step

#: x is 3×7; IDX scatters each row's 7 elements into 4 slots (slot 0 twice, 1 twice, 2 twice, 3 once)
IDX = torch.tensor([[0, 1, 1, 3, 0, 2, 2]] * 3)
ROWS = torch.tensor([0, 4, 0])  # index_add/index_reduce: x's 3 rows into a 5×7 tensor


#: name -> (fn of x (3×7, needs a gradient), forward other_flops, backward other_flops), by hand
WITH_BACKWARD = {
    # one compare per element, 3·7; the backward scatters the 3 grads into zeros: a write, 0
    "max_dim": (lambda x: x.max(dim=1).values, 21, 0),
    # 21 compares + the 2 kept per row sorted, 3·2·⌈log₂ 2⌉ = 6; backward a plain scatter
    "topk": (lambda x: x.topk(2, dim=1).values, 21 + 6, 0),
    # 3 rows of 7: 3·7·⌈log₂ 7⌉ = 63; backward a plain scatter
    "sort": (lambda x: x.sort(dim=1).values, 63, 0),
    "kthvalue": (lambda x: x.kthvalue(2, dim=1).values, 21, 0),  # a selection: one compare each
    "median": (lambda x: x.median(dim=1).values, 21, 0),
    # a view; backward adds each of the 5 windows·3 elements·3 rows = 45 grads back
    "unfold": (lambda x: x.unfold(1, 3, 1), 0, 45),
    # one add per index element, 3·7; backward a gather (free)
    "scatter_add": (lambda x: torch.zeros(3, 4).scatter_add(1, IDX, x), 21, 0),
    "scatter_reduce_sum": (lambda x: torch.zeros(3, 4).scatter_reduce(1, IDX, x, "sum"), 21, 0),
    # mean: 21 adds, 21 count adds, 3·4 = 12 divides; backward: the counts' scatter_add (21),
    # counts == 0 (12, masked to 1), grad / counts (12), gathered back and divided (21) = 66
    "scatter_reduce_mean": (lambda x: torch.zeros(3, 4).scatter_reduce(1, IDX, x, "mean"), 2 * 21 + 12, 66),
    # amax: 21 compares; backward (torch's scatter_reduce_backward): self == result (12),
    # src == gathered result (21), scatter_add of the ties (21), grad / ties (12), grad_self:
    # eq (12) and multiply (12), grad_src: eq (21) and multiply (21) = 132; the last scatter writes 0s
    "scatter_reduce_amax": (
        lambda x: torch.zeros(3, 4).scatter_reduce(1, IDX, x, "amax", include_self=False), 21, 132,
    ),
    # one add per source element, 3·7; backward an index_select (free)
    "index_add": (lambda x: torch.zeros(5, 7).index_add(0, ROWS, x), 21, 0),
    # alpha ≠ 1: 21 adds + 21 multiplies; backward: the gathered grad times alpha, 21
    "index_add_alpha": (lambda x: torch.zeros(5, 7).index_add(0, ROWS, x, alpha=2.0), 2 * 21, 21),
    # amax: 21 compares; backward: self == result (35), source == gathered (21), index_add of
    # the ties (21), grad / ties (35), grad_self multiply (35), grad_source multiply (21) = 168
    "index_reduce_amax": (lambda x: torch.zeros(5, 7).index_reduce(0, ROWS, x, "amax"), 21, 168),
    # mean: 21 adds + 21 count adds + 35 divides
    "index_reduce_mean": (lambda x: torch.zeros(5, 7).index_reduce(0, ROWS, x, "mean"), 2 * 21 + 35, None),
}


@pytest.mark.filterwarnings("ignore:index_reduce\\(\\) is in beta")
@pytest.mark.parametrize("name", sorted(WITH_BACKWARD))
def test_scatter_sort_and_unfold_by_hand(name):
    fn, forward, backward = WITH_BACKWARD[name]
    step = run_step(fn, needs_grad(torch.randn(3, 7), True))
    assert step.other_flops("forward") == forward
    if backward is not None:
        assert step.other_flops("backward") == backward
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


#: ops without a derivative, forward only: name -> (fn of x (3×7), other_flops), by hand
FORWARD_ONLY = {
    "scatter_src": (lambda x: torch.zeros(3, 4).scatter(1, IDX, x), 0),  # a write
    "scatter_value": (lambda x: torch.zeros(3, 4).scatter(1, IDX, 1.0), 0),
    "scatter_multiply": (lambda x: torch.ones(3, 4).scatter(1, IDX, x, reduce="multiply"), 21),  # one per index
    "scatter_value_add": (lambda x: torch.zeros(3, 4).scatter_(1, IDX, 2.0, reduce="add"), 21),
    "scatter_reduce_prod_": (lambda x: torch.ones(3, 4).scatter_reduce_(1, IDX, x, "prod"), 21),
    "scatter_add_": (lambda x: torch.zeros(3, 4).scatter_add_(1, IDX, x), 21),
    "index_add_": (lambda x: torch.zeros(5, 7).index_add_(0, ROWS, x), 21),
    "put_accumulate": (lambda x: torch.zeros(30).put_(torch.tensor([0, 5, 5]), x[0, :3], accumulate=True), 3),
    "put": (lambda x: torch.zeros(30).put(torch.tensor([0, 5, 9]), x[0, :3]), 0),
    "argsort": (lambda x: x.argsort(dim=1), 63),  # as sort: 3·7·⌈log₂ 7⌉
    "msort": (lambda x: x.msort(), 7 * 3 * 2),  # dim 0: 7 columns of 3, ⌈log₂ 3⌉ = 2
    "index_copy": (lambda x: torch.zeros(5, 7).index_copy(0, torch.tensor([0, 4, 2]), x), 0),
    "index_fill": (lambda x: x.index_fill(1, torch.tensor([0, 2]), -1.0), 0),
    "take": (lambda x: torch.take(x, IDX), 0),  # a gather
    # runs as index % 7 (wrapping negative indices: 21 remainders) and a gather (free)
    "take_along_dim": (lambda x: torch.take_along_dim(x, IDX, 1), 21),
}


@pytest.mark.filterwarnings("ignore:The reduce argument of torch.scatter")
@pytest.mark.parametrize("name", sorted(FORWARD_ONLY))
def test_forward_only_scatters_by_hand(name):
    fn, expected = FORWARD_ONLY[name]
    step = run_forward(fn, torch.randn(3, 7))
    assert step.other_flops("forward") == expected
    assert step.fcm_forward == 0


@pytest.mark.parametrize("scale, expected", [(False, 6 * 7), (True, 6 * 7 + 6 + 6 * 7)])
def test_embedding_backward_is_one_add_per_looked_up_element(scale, expected):
    # 2×3 = 6 lookups of rows of width 7: 42 adds into the 3×7 weight grad (not 3·7 = 21);
    # scale_grad_by_freq counts the 6 indices and divides the 42 grads
    ids = torch.tensor([[1, 2, 1], [0, 0, 2]])
    step = run_step(lambda w: F.embedding(ids, w, scale_grad_by_freq=scale), needs_grad(torch.randn(3, 7), True))
    assert step.ops("backward").count("aten.embedding_dense_backward") == 1
    assert step.other_flops("forward") == 0
    assert step.other_flops("backward") == expected
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


def test_embedding_model_backward_grows_with_the_batch():
    a = symcx.analyze(nn.Embedding(50, 8), torch.randint(0, 50, (4, 6)))
    assert a.unsupported == {}
    emb = next(r for r in a.layers if r.name == "embedding")
    # t·6 lookups of width 8 added into the grad: 48·t (was V·D = 50·8 = 400, independent of t)
    assert emb.backward_other_flops == 6 * 8 * t
    assert (a.forward_flops, a.backward_flops) == (0, 0)


def test_weight_norm_interface_by_hand():
    # v 4×2×3 (24), g 4×1×1 (4): forward 3·24 + 2·4 = 80; backward 5·24 + 3·4 = 132
    v, g = needs_grad(torch.randn(4, 2, 3), True), needs_grad(torch.rand(4, 1, 1), True)
    step = run_step(lambda v, g: torch.ops.aten._weight_norm(v, g, 0), v, g)
    assert "aten._weight_norm_interface" in step.ops("forward")
    assert step.other_flops("forward") == 80
    assert step.other_flops("backward") == 132
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)


class _MaxOverPositions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).max(dim=1).values


class _Windows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).unfold(1, 3, 1)


def _check_fcm(a: symcx.Analysis, model: nn.Module, x: torch.Tensor) -> None:
    forward, backward = fcm_counts(model, x)
    batch = x.shape[0]
    assert (evaluate(a.forward_flops, t=batch), evaluate(a.backward_flops, t=batch)) == (forward, backward)


def test_max_over_dim_model_backward_is_a_free_scatter():
    model, x = _MaxOverPositions(), torch.randn(2, 4, 6)
    a = symcx.analyze(model, x)
    assert a.unsupported == {}
    rows = {r.name: r for r in a.layers}
    # t·4·5 compares; the backward scatters the t·5 grads into zeros: 0
    assert (rows["max_1"].forward_other_flops, rows["max_1"].backward_other_flops) == (20 * t, 0)
    # + the loss's sum of t·5; backward: the Linear's bias grad sums t·4·5
    assert (a.forward_other_flops, a.backward_other_flops) == (20 * t + 5 * t, 20 * t)
    _check_fcm(a, model, x)


def test_unfold_model_backward_adds_the_windows_back():
    model, x = _Windows(), torch.randn(2, 6)
    a = symcx.analyze(model, x)
    assert a.unsupported == {}
    rows = {r.name: r for r in a.layers}
    # a view forward; backward: t·4 windows·3 grads added back
    assert (rows["unfold"].forward_other_flops, rows["unfold"].backward_other_flops) == (0, 12 * t)
    assert rows["unfold"].bytes_out == 0  # its schema aliases the input (Tensor(a) -> Tensor(a)): a view
    assert a.backward_other_flops == 12 * t + 6 * t  # + the Linear's bias grad sum of t·6
    _check_fcm(a, model, x)


@pytest.mark.parametrize(
    "make, row, norms",
    [
        (lambda: nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3)), "parametrizations.weight.0", 4),
        (lambda: nn.utils.weight_norm(nn.Conv1d(2, 4, 3)), "_weight_norm_interface", 4),
        # wav2vec2's positional conv: one norm per kernel tap (dim=2), g 1×1×3
        (lambda: nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3), dim=2), "parametrizations.weight.0", 3),
    ],
)
def test_weight_norm_conv1d_model(make, row, norms):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        model = make()
    x = torch.randn(2, 2, 8)
    a = symcx.analyze(model, x)
    assert a.unsupported == {}
    wn = {r.name: r for r in a.layers}[row]
    # v 4×2×3 (24), one norm per element of g: forward 3·24 + 2·norms (80 for dim 0),
    # backward 5·24 + 3·norms (132 for dim 0), once per step (no t)
    assert (wn.forward_other_flops, wn.backward_other_flops) == (3 * 24 + 2 * norms, 5 * 24 + 3 * norms)
    assert wn.ops == ("aten._weight_norm_interface",)
    _check_fcm(a, model, x)


def test_gat_style_scatter_softmax_model():
    model, x = _GATLayer(), torch.randn(2, 5, 4)
    a = symcx.analyze(model, x)
    assert a.unsupported == {}
    rows = {r.name: r for r in a.layers}
    # E = 8 edges per sample: amax one compare each, t·8; the denominator's scatter_add t·8;
    # the messages' index_add t·8·4
    assert rows["scatter_reduce"].forward_other_flops == 8 * t
    assert rows["scatter_add"].forward_other_flops == 8 * t
    assert rows["index_add"].forward_other_flops == 8 * 4 * t
    _check_fcm(a, model, x)


class _GATLayer(nn.Module):
    """One attention head over a fixed 5-node graph of 8 edges, PyG-style: scatter softmax by target."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.att = nn.Parameter(torch.randn(4))
        self.register_buffer("src", torch.tensor([0, 1, 2, 3, 4, 0, 2, 4]))
        self.register_buffer("dst", torch.tensor([1, 2, 3, 4, 0, 3, 0, 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        m = h.index_select(1, self.src)
        score = (m * self.att).sum(-1)
        dst = self.dst.expand_as(score)
        top = score.new_zeros(score.shape[0], 5).scatter_reduce(1, dst, score, "amax", include_self=False)
        e = (score - top.gather(1, dst)).exp()
        alpha = e / e.new_zeros(e.shape[0], 5).scatter_add(1, dst, e).gather(1, dst)
        return h.new_zeros(h.shape).index_add(1, self.dst, m * alpha.unsqueeze(-1))



class _SortTopK(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).sort(dim=1).values.topk(2, dim=1).values


def test_sort_along_a_symbolic_length():
    model = _SortTopK()
    a = symcx.analyze(model, torch.randn(2, 8, 4), dims={"L": 1})
    assert a.unsupported == {}
    L = a.symbols["L"]
    # sort: t·4 slices of L keys, t·4·L·⌈log₂ L⌉; topk: t·4·L compares + t·4 slices of 2 kept, 2·1
    # each; the loss sums t·2·4
    sort = 4 * t * L * sympy.ceiling(sympy.log(L, 2))
    assert sympy.simplify(a.forward_other_flops - (sort + 4 * t * L + 8 * t + 8 * t)) == 0
    assert evaluate(a.forward_other_flops, t=3, L=8) == 4 * 3 * 8 * 3 + 4 * 3 * 8 + 16 * 3
    _check_fcm(a.subs(L=8), model, torch.randn(2, 8, 4))
