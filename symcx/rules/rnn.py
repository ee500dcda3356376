"""Fused recurrent kernels: oneDNN's LSTM layer (``aten.mkldnn_rnn_layer``), cuDNN's whole
RNN (``aten._cudnn_rnn``), and their backward.

On CPU, PyTorch sends ``nn.LSTM`` (and only the LSTM: ``nn.GRU`` and ``nn.RNN`` run as
per-step ``mm``/``addmm`` cells, counted by the matmul rules) to one oneDNN call per layer and
direction. FlopCounterMode has no formula for it and counts 0; symcx counts the matrix
products of the same layer run as explicit per-step cells, which is what FlopCounterMode
counts when oneDNN is switched off. With sequence length ``T``, batch ``B``, input width
``I``, ``G·H`` gate rows (``G = 4`` for an LSTM, ``H`` hidden units) and hidden width ``P``
(``P = H``):

- forward, input and hidden products at every step: ``2·T·B·GH·I + 2·T·B·GH·P``;
- backward, grad ``W_ih`` ``2·T·B·GH·I`` and grad ``W_hh`` ``2·T·B·GH·P`` over every step, the
  gradient of the hidden state ``2·B·GH·P`` per step for steps ``1..T−1`` (and step 0 only when
  the initial state needs a gradient; the default zero state does not), and grad-input
  ``2·T·B·GH·I`` only when the layer's input needs a gradient.

Biases are not counted in ``flops`` (as FlopCounterMode). ``other_flops`` counts the cell's
elementwise work per step, batch element and hidden unit, with the constants of
:mod:`symcx.rules.pointwise` (sigmoid 4, tanh 1, their backward 3):

- forward 18 + 4·(1 + 2·bias): 4 gate sums (input product + hidden product, + two biases),
  3 sigmoids (12), 2 tanh (2), ``c' = f·c + i·g`` (3), ``h' = o·tanh(c')`` (1);
- backward 23 + 8·bias: ``dh`` sum (1), ``do`` (1 + 3), ``dc`` (1 + 3 + 1), ``df``, ``di``,
  ``dg`` (4 each), ``dc_prev`` (1), and one add per gate element into each bias gradient.

The oneDNN kernel has no output mask: whether the input and the initial state need a
gradient is read from ``TensorInfo.requires_grad``, which the graph sets on every forward
value that depends on a trainable parameter.

On CUDA, ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` run as one ``_cudnn_rnn`` call for all layers
and directions (gate rows ``G·H``: 4H LSTM, 3H GRU, H RNN). Each layer-direction is counted as
above, with input width ``I`` for layer 0 and ``dirs·H`` above it; in the backward, grad-input
is computed for every layer above the first (the lower layer needs it) and for the first when
``output_mask[0]`` asks, and the step-0 state gradient when ``output_mask[1]`` does.
``other_flops``: the LSTM's cell constants above; cuDNN's GRU and RNN cell arithmetic is not
counted (the note says so). LSTM projections (``proj_size``) are refused.
"""

from __future__ import annotations

import sympy

from ..cost import Cost, OpCall, TensorInfo
from ..errors import UnsupportedCall
from .registry import rule

__all__ = [
    "rnn_forward_cost", "rnn_backward_cost", "LSTM_FORWARD_OPS", "LSTM_BACKWARD_OPS", "FCM_NOTE", "CUDNN_NOTE",
]

TWO = sympy.Integer(2)
FCM_NOTE = "FlopCounterMode has no formula for oneDNN's LSTM kernel and counts 0"
#: Elementwise operations per step, batch element and hidden unit (see the module docstring).
LSTM_FORWARD_OPS, LSTM_BACKWARD_OPS, LSTM_GATES = 18, 23, 4
LSTM_MODE = 2
CUDNN_NOTE = "FlopCounterMode has no formula for cuDNN's RNN kernel and counts 0"
#: cuDNN's cell modes (RNN_RELU, RNN_TANH, LSTM, GRU) and their gate rows per hidden unit.
CUDNN_GATES = {0: 1, 1: 1, 2: 4, 3: 3}


def rnn_forward_cost(seq, batch, input_size, gate_rows, hidden) -> Cost:
    """``2·T·B·GH·I + 2·T·B·GH·P``: the input and hidden products of every step.

    >>> rnn_forward_cost(10, 3, 16, 4 * 32, 32).flops  # 2*3*10*4*32*(16 + 32)
    368640
    """
    factors = ((TWO, seq, batch, gate_rows, input_size), (TWO, seq, batch, gate_rows, hidden))
    return Cost(flops=sympy.Add(*[sympy.Mul(*f) for f in factors]), factors=factors)


def rnn_backward_cost(
    seq, batch, input_size, gate_rows, hidden, *, input_grad: bool, state_grad: bool
) -> Cost:
    """Weight gradients over every step, hidden-state gradients, grad-input if asked.

    >>> rnn_backward_cost(10, 3, 16, 128, 32, input_grad=False, state_grad=False).flops
    589824
    """
    seq = sympy.sympify(seq)
    steps = seq if state_grad else seq - 1
    factors = [
        (TWO, seq, batch, gate_rows, input_size),
        (TWO, seq, batch, gate_rows, hidden),
        (TWO, steps, batch, gate_rows, hidden),
    ]
    if input_grad:
        factors.append((TWO, seq, batch, gate_rows, input_size))
    return Cost(flops=sympy.Add(*[sympy.Mul(*f) for f in factors]), factors=tuple(factors))


def _check_unpacked(call: OpCall) -> None:
    """Refuse packed sequences (``batch_sizes`` given): symcx has no formula for them."""
    packed = call.get("batch_sizes", ())
    if packed:
        raise UnsupportedCall(
            f"packed sequences (batch_sizes={list(packed)}) are not supported; pad the batch instead of packing it"
        )


def _sizes(call: OpCall, w_ih: TensorInfo, w_hh: TensorInfo) -> tuple:
    """(T, B, I, G·H, P) of one oneDNN layer-direction call, after checking it is an unpacked LSTM.

    The input is (T, B, I) whatever ``batch_first`` says: PyTorch transposes it before the call.
    oneDNN's mode enum is RNN_RELU 0, RNN_TANH 1, LSTM 2, GRU 3; PyTorch sends only LSTMs.
    """
    _check_unpacked(call)
    if call["mode"] != LSTM_MODE:
        raise UnsupportedCall(f"mode {call['mode']} is not an LSTM ({LSTM_MODE}); no rule for that cell on oneDNN")
    seq, batch, input_size = call["input"].shape
    return seq, batch, input_size, w_ih.shape[0], w_hh.shape[1]


@rule("aten.mkldnn_rnn_layer")
def mkldnn_rnn_layer_flops(call: OpCall) -> Cost:
    """One LSTM layer and direction on oneDNN: ``2·T·B·4H·(I + H)``; FlopCounterMode counts 0.

    ``weight0`` is W_ih (4H × I), ``weight1`` W_hh (4H × H).
    """
    seq, batch, i, gh, p = _sizes(call, call["weight0"], call["weight1"])
    bias = 1 if call["has_biases"] else 0
    cost = rnn_forward_cost(seq, batch, i, gh, p)
    other = (LSTM_FORWARD_OPS + LSTM_GATES * (1 + 2 * bias)) * seq * batch * gh / LSTM_GATES
    return Cost(flops=cost.flops, other_flops=other, factors=cost.factors, fcm_flops=sympy.Integer(0), note=FCM_NOTE)


@rule("aten.mkldnn_rnn_layer_backward")
def mkldnn_rnn_layer_backward_flops(call: OpCall) -> Cost:
    """Its backward: weight grads, hidden-state grads for steps 1..T−1, grad-input if needed.

    Here ``weight1`` is W_ih and ``weight2`` W_hh; whether the input and the initial state
    ``hx_`` need a gradient is read from ``requires_grad`` (the kernel has no output mask).
    """
    seq, batch, i, gh, p = _sizes(call, call["weight1"], call["weight2"])
    bias = 1 if call["has_biases"] else 0
    grads = dict(input_grad=call["input"].requires_grad, state_grad=call["hx_"].requires_grad)
    cost = rnn_backward_cost(seq, batch, i, gh, p, **grads)
    other = (LSTM_BACKWARD_OPS + 2 * LSTM_GATES * bias) * seq * batch * gh / LSTM_GATES
    return Cost(flops=cost.flops, other_flops=other, factors=cost.factors, fcm_flops=sympy.Integer(0), note=FCM_NOTE)


def _cudnn_layers(call: OpCall) -> tuple:
    """(T, B, [(I, G·H, P) per layer-direction], bias, mode) of a ``_cudnn_rnn`` call or its backward.

    ``weight`` holds ``weight_stride0`` tensors per layer-direction (W_ih, W_hh, then biases).
    """
    _check_unpacked(call)
    x, weights, stride, mode = call["input"], call["weight"], call["weight_stride0"], call["mode"]
    if mode not in CUDNN_GATES:
        raise UnsupportedCall(f"unknown cuDNN RNN mode {mode}")
    if call.get("proj_size", 0) != 0:
        raise UnsupportedCall(f"LSTM projections (proj_size={call['proj_size']}) have no rule")
    batch, seq = (x.shape[0], x.shape[1]) if call["batch_first"] else (x.shape[1], x.shape[0])
    chunks = [weights[k : k + stride] for k in range(0, len(weights), stride)]
    layers = [(w[0].shape[1], w[0].shape[0], w[1].shape[1]) for w in chunks]
    return seq, batch, layers, stride >= 4, mode


def _cudnn_total(costs: list[Cost], layers, seq, batch, mode: int, lstm_ops: int) -> Cost:
    """The layers' costs summed; ``lstm_ops`` cell operations per step, batch element and unit
    for an LSTM, none counted for GRU/RNN cells (the note says so)."""
    other, note = sympy.Integer(0), CUDNN_NOTE
    if mode == LSTM_MODE:
        other = sum((lstm_ops * seq * batch * gh / LSTM_GATES for _, gh, _ in layers), sympy.Integer(0))
    else:
        note += "; the GRU/RNN cell's elementwise work is not in other_flops"
    factors = tuple(f for c in costs for f in c.factors)
    return Cost(flops=sympy.Add(*[c.flops for c in costs]), other_flops=other, factors=factors,
                fcm_flops=sympy.Integer(0), note=note)


@rule("aten._cudnn_rnn")
def cudnn_rnn_flops(call: OpCall) -> Cost:
    """Every layer and direction of an RNN on cuDNN: ``2·T·B·GH·(I + H)`` each; FlopCounterMode counts 0."""
    seq, batch, layers, bias, mode = _cudnn_layers(call)
    costs = [rnn_forward_cost(seq, batch, i, gh, p) for i, gh, p in layers]
    return _cudnn_total(costs, layers, seq, batch, mode, LSTM_FORWARD_OPS + LSTM_GATES * (1 + 2 * bias))


@rule("aten._cudnn_rnn_backward")
def cudnn_rnn_backward_flops(call: OpCall) -> Cost:
    """Its backward: weight grads, state grads, grad-input for every layer above the first."""
    seq, batch, layers, bias, mode = _cudnn_layers(call)
    mask = call["output_mask"]
    dirs = 2 if call["bidirectional"] else 1
    costs = [
        rnn_backward_cost(seq, batch, i, gh, p, input_grad=k >= dirs or bool(mask[0]), state_grad=bool(mask[1]))
        for k, (i, gh, p) in enumerate(layers)
    ]
    return _cudnn_total(costs, layers, seq, batch, mode, LSTM_BACKWARD_OPS + 2 * LSTM_GATES * bias)
