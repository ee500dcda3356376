"""RNN rules against the per-step-cells oracle: the same layer run as explicit per-step
``F.linear`` cells under FlopCounterMode (what FlopCounterMode counts for PyTorch's native
path). On CPU ``nn.LSTM`` runs oneDNN's ``mkldnn_rnn_layer`` (rules in symcx.rules.rnn,
counted 0 by FlopCounterMode); ``nn.GRU`` and ``nn.RNN`` run per-step ``addmm`` cells.
"""

from __future__ import annotations

import dataclasses

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import symcx
from symcx import symbol, t
from symcx.errors import UnsupportedCall
from symcx.rules.rnn import (
    CUDNN_NOTE, FCM_NOTE, cudnn_rnn_backward_flops, cudnn_rnn_flops, mkldnn_rnn_layer_flops, rnn_backward_cost,
    rnn_forward_cost,
)

from .conftest import evaluate, fcm_counts, needs_grad, op_call, run_step


def _cell(kind: type, nonlinearity: str, gi, gh, h, c):
    """One step of the cell from its two gate products: the elementwise part of the recurrence."""
    if kind is nn.LSTM:
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if kind is nn.GRU:
        (ir, iz, in_), (hr, hz, hn) = gi.chunk(3, -1), gh.chunk(3, -1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return (1 - z) * n + z * h, c
    return (torch.tanh if nonlinearity == "tanh" else torch.relu)(gi + gh), c


def per_step(rnn: nn.RNNBase, x: torch.Tensor, hx=None) -> torch.Tensor:
    """``rnn(x, hx)[0]`` computed as explicit per-step cells with ``F.linear`` on its weights.

    Each step multiplies its input and its hidden state by the weights (so the zero initial
    state's product is computed, and autograd asks no gradient of it).
    """
    kind = type(rnn)
    dirs = 2 if rnn.bidirectional else 1
    inp = x.transpose(0, 1) if rnn.batch_first else x
    steps, batch = inp.shape[0], inp.shape[1]
    if kind is nn.LSTM:
        h0, c0 = hx if hx is not None else (None, None)
    else:
        h0, c0 = hx, None
    for layer in range(rnn.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(rnn, f"weight_ih{sfx}"), getattr(rnn, f"weight_hh{sfx}")
            b_ih = getattr(rnn, f"bias_ih{sfx}") if rnn.bias else None
            b_hh = getattr(rnn, f"bias_hh{sfx}") if rnn.bias else None
            k = layer * dirs + d
            zeros = torch.zeros(batch, rnn.hidden_size)
            h = h0[k] if h0 is not None else zeros
            c = c0[k] if c0 is not None else zeros
            ys = [None] * steps
            for s in range(steps) if d == 0 else reversed(range(steps)):
                h, c = _cell(kind, getattr(rnn, "nonlinearity", ""), F.linear(inp[s], w_ih, b_ih),
                             F.linear(h, w_hh, b_hh), h, c)
                ys[s] = h
            outs.append(torch.stack(ys))
        inp = torch.cat(outs, -1)
    return inp.transpose(0, 1) if rnn.batch_first else inp


@st.composite
def rnn_configs(draw, kinds=(nn.LSTM, nn.GRU, nn.RNN)):
    kind = draw(st.sampled_from(kinds))
    kw = dict(
        num_layers=draw(st.integers(1, 2)),
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
    )
    if kind is nn.RNN:
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    return dict(
        kind=kind,
        input_size=draw(st.integers(1, 10)),
        hidden_size=draw(st.integers(1, 10)),
        kw=kw,
        batch=draw(st.integers(1, 4)),
        seq=draw(st.integers(1, 4)),
        input_grad=draw(st.booleans()),
        learned_state=draw(st.booleans()),
    )


def _build(cfg):
    rnn = cfg["kind"](cfg["input_size"], cfg["hidden_size"], **cfg["kw"])
    b, s = cfg["batch"], cfg["seq"]
    shape = (b, s, cfg["input_size"]) if rnn.batch_first else (s, b, cfg["input_size"])
    x = needs_grad(torch.randn(shape), cfg["input_grad"])
    hx = None
    if cfg["learned_state"]:
        dirs = 2 if rnn.bidirectional else 1
        state = lambda: needs_grad(torch.randn(rnn.num_layers * dirs, b, rnn.hidden_size), True)  # noqa: E731
        hx = (state(), state()) if cfg["kind"] is nn.LSTM else state()
    return rnn, x, hx


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(rnn_configs())
def test_rules_match_per_step_cells(cfg):
    rnn, x, hx = _build(cfg)
    step = run_step(lambda x, hx: rnn(x, hx)[0], x, hx)
    oracle = fcm_counts(lambda x, hx: per_step(rnn, x, hx), x, hx)
    # grad=True: the rules see whether the real input and initial state required a gradient
    assert (step.flops("forward", grad=True), step.flops("backward", grad=True)) == oracle
    if cfg["kind"] is nn.LSTM:
        assert "aten.mkldnn_rnn_layer" in step.ops("forward")
        assert (step.fcm_forward, step.fcm_backward) == (0, 0)  # FlopCounterMode misses the kernel
    else:
        assert (step.fcm_forward, step.fcm_backward) == oracle  # the native path it counts right
    assert (step.fcm_view("forward"), step.fcm_view("backward")) == (step.fcm_forward, step.fcm_backward)


def test_peers_example_by_hand():
    # PEERS.md §6: nn.LSTM(16, 32, batch_first=True) on (3, 10, 16):
    # forward 2·3·10·4·32·(16+32) = 368,640; backward 2·3·10·128·16 + 2·3·10·128·32
    # + 2·3·9·128·32 = 122,880 + 245,760 + 221,184 = 589,824
    rnn = nn.LSTM(16, 32, batch_first=True)
    step = run_step(lambda x: rnn(x)[0], torch.randn(3, 10, 16))
    assert (step.flops("forward", grad=True), step.flops("backward", grad=True)) == (368_640, 589_824)
    assert rnn_forward_cost(10, 3, 16, 128, 32).flops == 368_640
    assert rnn_backward_cost(10, 3, 16, 128, 32, input_grad=False, state_grad=False).flops == 589_824


def test_lstm_kernel_other_flops_by_hand():
    # per step, batch element and hidden unit: forward 18 + 4·3 (with biases) = 30,
    # backward 23 + 8 = 31; without biases 22 and 23
    for bias, fwd, bwd in ((True, 30, 31), (False, 22, 23)):
        rnn = nn.LSTM(5, 7, bias=bias)
        step = run_step(lambda x: rnn(x)[0], torch.randn(4, 3, 5))
        costs = {p: [c for op, c in step.costs(p) if "mkldnn_rnn_layer" in op] for p in ("forward", "backward")}
        assert [c.other_flops for c in costs["forward"]] == [fwd * 4 * 3 * 7]
        assert [c.other_flops for c in costs["backward"]] == [bwd * 4 * 3 * 7]
        assert all(c.fcm_flops == 0 and c.note == FCM_NOTE for cs in costs.values() for c in cs)


def test_packed_sequences_are_refused():
    rnn = nn.LSTM(3, 4)
    calls = run_step(lambda x: rnn(x)[0], torch.randn(2, 2, 3)).forward_calls
    call = op_call(*next(c for c in calls if "mkldnn_rnn_layer" in str(c[0])))
    packed = dataclasses.replace(call, arguments={**call.arguments, "batch_sizes": [2, 1]})
    with pytest.raises(UnsupportedCall, match="packed sequences"):
        mkldnn_rnn_layer_flops(packed)


def _cudnn_calls(rnn: nn.RNNBase, x: torch.Tensor, hx, input_grad: bool, state_grad: bool):
    """The ``_cudnn_rnn`` call and its backward as a CUDA run would make them (built by hand:
    CPU-only torch cannot run cuDNN), with the real weights, input and initial state."""
    mode = {nn.LSTM: 2, nn.GRU: 3}.get(type(rnn), 0 if getattr(rnn, "nonlinearity", "") == "relu" else 1)
    dirs = 2 if rnn.bidirectional else 1
    zeros = torch.zeros(rnn.num_layers * dirs, x.shape[0 if rnn.batch_first else 1], rnn.hidden_size)
    h0, c0 = (hx if hx is not None else (zeros, zeros)) if mode == 2 else (hx if hx is not None else zeros, None)
    weights = [w for layer in rnn.all_weights for w in layer]
    stride = len(weights) // (rnn.num_layers * dirs)
    tail = [rnn.hidden_size, 0, rnn.num_layers, rnn.batch_first, 0.0, True, rnn.bidirectional, [], None]
    out = rnn(x, hx)[0]
    fwd = op_call(torch.ops.aten._cudnn_rnn.default, [x, weights, stride, None, h0, c0, mode, *tail], {}, (out,))
    mask = [input_grad, state_grad, state_grad and mode == 2, True]
    bwd = op_call(
        torch.ops.aten._cudnn_rnn_backward.default,
        [x, weights, stride, None, h0, c0, out, out, None, None, mode, *tail, torch.empty(0), mask], {}, (x,),
    )
    return fwd, bwd


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(rnn_configs())
def test_cudnn_rules_match_per_step_cells(cfg):
    """cuDNN's one call for all layers and directions counts what the per-step cells do."""
    rnn, x, hx = _build(cfg)
    fwd, bwd = _cudnn_calls(rnn, x, hx, cfg["input_grad"], cfg["learned_state"])
    oracle = fcm_counts(lambda x, hx: per_step(rnn, x, hx), x, hx)
    costs = cudnn_rnn_flops(fwd), cudnn_rnn_backward_flops(bwd)
    assert (costs[0].flops, costs[1].flops) == oracle
    assert all(c.fcm_flops == 0 and c.note.startswith(CUDNN_NOTE) for c in costs)


def test_cudnn_lstm_other_flops_and_refusals():
    """The LSTM cell constants (30 forward, 31 backward per step, batch element and unit, with
    biases) as on oneDNN; projections and packed sequences are refused."""
    rnn = nn.LSTM(5, 7, num_layers=2)
    x = torch.randn(4, 3, 5)
    fwd, bwd = _cudnn_calls(rnn, x, None, False, False)
    assert cudnn_rnn_flops(fwd).other_flops == 2 * 30 * 4 * 3 * 7
    assert cudnn_rnn_backward_flops(bwd).other_flops == 2 * 31 * 4 * 3 * 7
    for name, value, message in (("proj_size", 3, "projections"), ("batch_sizes", [3, 1], "packed sequences")):
        with pytest.raises(UnsupportedCall, match=message):
            cudnn_rnn_flops(dataclasses.replace(fwd, arguments={**fwd.arguments, name: value}))


# --- end to end: symcx.analyze -----------------------------------------------------------------
#
# Under make_fx PyTorch's LSTM decomposition takes oneDNN only when the LSTM's input needs no
# gradient (torch/_decomp/decompositions.py, select_one_layer_lstm_function); then the trace is
# one mkldnn_rnn_layer per layer and direction, whatever the sequence length, and L can be
# symbolic. Otherwise (and for nn.GRU, nn.RNN) it unrolls per-step cells over L, so L must
# stay concrete there.


class Front(nn.Module):
    """A Linear in front (the RNN's input needs a gradient) and a learned initial state."""

    def __init__(self, kind, input_size, hidden_size, **kw):
        super().__init__()
        self.front = nn.Linear(input_size, input_size)
        self.rnn = kind(input_size, hidden_size, **kw)
        dirs = 2 if self.rnn.bidirectional else 1
        self.h0 = nn.Parameter(torch.randn(self.rnn.num_layers * dirs, 1, hidden_size))

    def state(self, batch):
        h = self.h0.expand(-1, batch, -1).contiguous()
        return (h, torch.zeros_like(h)) if isinstance(self.rnn, nn.LSTM) else h

    def forward(self, x, cells=False):
        batch = x.shape[0 if self.rnn.batch_first else 1]
        x = self.front(x)
        if cells:
            return per_step(self.rnn, x, self.state(batch))
        return self.rnn(x, self.state(batch))[0]


class Plain(nn.Module):
    """The RNN alone on the raw input, with the zero initial state."""

    def __init__(self, kind, input_size, hidden_size, **kw):
        super().__init__()
        self.rnn = kind(input_size, hidden_size, **kw)

    def forward(self, x, cells=False):
        return per_step(self.rnn, x) if cells else self.rnn(x)[0]


def _input(kw, batch, length, features):
    shape = (batch, length, features) if kw.get("batch_first") else (length, batch, features)
    return torch.randn(shape)


@pytest.mark.parametrize(
    "wrapper,kind,kw",
    [
        (Front, nn.LSTM, dict(bidirectional=True)),
        (Front, nn.GRU, dict(num_layers=2, batch_first=True)),
        (Front, nn.RNN, dict(nonlinearity="relu", bias=False)),
        (Plain, nn.GRU, dict(bidirectional=True, batch_first=True)),
        (Plain, nn.RNN, dict(num_layers=2)),
    ],
)
@pytest.mark.slow
def test_analyze_per_step_route_matches_cells(wrapper, kind, kw):
    model = wrapper(kind, 5, 4, **kw)
    batch_dim = 0 if kw.get("batch_first") else 1
    a = symcx.analyze(model, _input(kw, 3, 3, 5), batch_dim=batch_dim)
    assert not a.unsupported
    for batch in (2, 5):
        x = _input(kw, batch, 3, 5)
        oracle = fcm_counts(lambda x: model(x, cells=True), x)
        assert (evaluate(a.forward_flops, t=batch), evaluate(a.backward_flops, t=batch)) == oracle
        if kind is not nn.LSTM:  # eager nn.LSTM runs oneDNN (FlopCounterMode: 0), not these cells
            assert evaluate(a.flop_counter_flops("step"), t=batch) == sum(fcm_counts(model, x))


@pytest.mark.parametrize(
    "kw", [dict(batch_first=True), dict(num_layers=2, bidirectional=True), dict(bias=False, num_layers=2)]
)
def test_analyze_lstm_on_onednn_with_symbolic_length(kw):
    model = Plain(nn.LSTM, 5, 4, **kw)
    batch_dim = 0 if kw.get("batch_first") else 1
    a = symcx.analyze(model, _input(kw, 3, 4, 5), batch_dim=batch_dim, dims={"L": 1 - batch_dim})
    L = symbol("L")
    assert {n.split(".")[-1] for n in a.layers[0].ops} >= {"mkldnn_rnn_layer"}
    assert a.forward_flops.free_symbols == {t, L}
    assert sympy.degree(a.forward_flops, L) == 1  # linear in the sequence length
    assert any(FCM_NOTE in d for d in a.deviations)
    for batch, length in ((2, 3), (3, 7)):
        x = _input(kw, batch, length, 5)
        forward, backward = fcm_counts(lambda x: model(x, cells=True), x)
        got = (evaluate(a.forward_flops, t=batch, L=length), evaluate(a.backward_flops, t=batch, L=length))
        assert got == (forward, backward)  # the graph records which tensors need a gradient
        # FlopCounterMode on the real model counts the oneDNN kernel as 0
        assert evaluate(a.flop_counter_flops("step"), t=batch, L=length) == sum(fcm_counts(model, x)) == 0
