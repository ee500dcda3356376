"""The tracer: private torch APIs pinned, symbols named, guards, and clear errors."""

from __future__ import annotations

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx import t
from symcx._torch import eager_dropout_kernels, is_op, make_fx, op_names
from symcx.capture import default_loss, trace_training_step
from symcx.zoo import MnistCNN


def test_backward_ops_map_to_their_forward_module():
    trace = trace_training_step(MnistCNN(), torch.randn(2, 1, 28, 28))
    conv_bwd = [
        n for n in trace.graph.nodes if n.target is torch.ops.aten.convolution_backward.default
    ]
    assert len(conv_bwd) == 2
    a = symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28))
    layers = {v.layer for v in a.step.nodes if v.packet == "aten.convolution_backward"}
    assert layers == {"conv1", "conv2"}
    phases = {v.phase for v in a.step.nodes}
    assert {"input", "param", "forward", "loss", "backward", "output"} <= phases


def test_example_batch_of_one_does_not_specialize():
    a = symcx.analyze(nn.Linear(4, 3), torch.randn(1, 4))
    assert a.forward_flops == 2 * 4 * 3 * t


def test_batch_equal_to_a_width_does_not_merge():
    # example batch 16 and a 16-wide layer: duck shaping would make them one symbol
    a = symcx.analyze(nn.Linear(16, 16), torch.randn(16, 16))
    assert a.forward_flops == 2 * 16 * 16 * t


def test_kernel_selection_guard_is_not_made_or_is_dropped():
    # torch's CPU convolution picks oneDNN at t >= 16, which would guard t <= 15; the choice only
    # sets the output's layout, contiguous with either kernel here, so no guard is made at all
    a = symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28))
    assert a.assumptions == [] and a.dropped_guards == []
    assert a.forward_flops == 23984896 * t  # 2·(26·26·9·32 + 24·24·9·32·64 + 9216·128 + 128·10)
    # channels-last: oneDNN keeps that layout and the slow kernel would not, so the guard is made;
    # the re-trace at t = 16 runs the same ops, and the guard is dropped, not printed
    cl = MnistCNN().to(memory_format=torch.channels_last)
    b = symcx.analyze(cl, torch.randn(2, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    assert b.assumptions == [] and [str(g) for g in b.dropped_guards] == ["t <= 15"]
    assert b.forward_flops == a.forward_flops


def test_no_shape_env_symbol_reaches_the_user():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3))  # any H, W
    a = symcx.analyze(model, torch.randn(2, 1, 28, 28), dims={"H": 2, "W": 3})
    allowed = {t, symcx.symbol("H"), symcx.symbol("W")}
    for v in a.step.nodes:
        out = v.out
        infos = out if isinstance(out, tuple) else (out,)
        for info in infos:
            if isinstance(info, symcx.TensorInfo):
                for size in info.shape:
                    assert sympy.sympify(size).free_symbols <= allowed


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # branch on a value
            return y * 2
        return y


def test_data_dependent_branch_names_cause_and_line():
    with pytest.raises(symcx.TraceError) as err:
        symcx.analyze(DataDependent(), torch.randn(2, 4))
    text = str(err.value)
    assert "data-dependent control flow" in text
    assert "test_trace.py" in text and "if y.sum() > 0" in text


def test_wrong_input_shape_is_a_shape_error_with_the_line():
    with pytest.raises(symcx.ShapeError) as err:
        symcx.analyze(MnistCNN(), torch.randn(2, 1, 32, 32))
    text = str(err.value)
    assert "[t, 12544] X [9216, 128]" in text and "fc1" in text


def test_wrong_channels_is_a_shape_error():
    with pytest.raises(symcx.ShapeError, match="3 channels"):
        symcx.analyze(MnistCNN(), torch.randn(2, 3, 28, 28))


def test_symbolic_dim_of_size_one_is_refused():
    with pytest.raises(symcx.ShapeError, match="sizes 0 and 1"):
        symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28), dims={"C": 1})


def test_not_a_module_is_refused():
    with pytest.raises(symcx.SymcxError, match="nn.Module"):
        symcx.analyze(lambda x: x, torch.randn(2, 2))


def test_reserved_names_are_refused():
    with pytest.raises(symcx.SymcxError, match="reserved"):
        symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28), dims={"n": 2})


def test_meta_device_model_analyzes_without_memory():
    model = MnistCNN().to("meta")
    a = symcx.analyze(model, torch.empty(2, 1, 28, 28, device="meta"))
    assert a.forward_flops == (389_376 + 21_233_664 + 2 * 9216 * 128 + 2 * 128 * 10) * t


def test_frozen_parameters_get_no_gradient_flops():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    a = symcx.analyze(model, torch.randn(2, 8))
    # only the second layer: grad-weight 2·t·6·2 (its input needs no grad, the first layer is frozen)
    assert a.backward_flops == 2 * 6 * 2 * t
    assert a.trainable_params == 6 * 2 + 2 and a.params == 8 * 6 + 6 + 6 * 2 + 2


def test_mode_is_restored():
    model = MnistCNN().eval()
    symcx.analyze(model, torch.randn(2, 1, 28, 28))
    assert not model.training


class EmbeddedLSTM(nn.Module):
    """An LSTM whose input needs a gradient: eager CPU runs oneDNN; the trace must too."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 16)
        self.rnn = nn.LSTM(16, 32, batch_first=True, num_layers=2)

    def forward(self, x):
        return self.rnn(self.lin(x))[0]


def test_lstm_after_a_trainable_layer_keeps_the_length_symbolic():
    a = symcx.analyze(EmbeddedLSTM(), torch.randn(3, 10, 8), dims={"L": 1})
    L = symcx.symbol("L")
    assert a.route == "symbolic" and a.unsupported == {}
    assert any(v.packet == "aten.mkldnn_rnn_layer" for v in a.step.nodes)
    # per-step cells by hand: Linear 2·t·L·8·16; layer 0 2·t·L·4·32·(16+32); layer 1 2·t·L·4·32·(32+32)
    assert a.forward_flops == (256 + 12288 + 16384) * t * L
    # backward: Linear grad-W 256; layer 0 grad-W 4096 + 8192, grad-input 4096, grad-h 8192 per step 1..L-1;
    # layer 1 grad-W 8192 + 8192, grad-input 8192, grad-h 8192 per step 1..L-1
    assert sympy.expand(a.backward_flops - (41216 * t * L + 16384 * t * (L - 1))) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "gru", "block"])
def test_recorder_records_the_ops_make_fx_traces(name):
    """symcx's dispatch recorder sees the same aten calls as torch's own make_fx on the same step."""
    torch.manual_seed(0)
    model, x = {
        "cnn": (MnistCNN(), torch.randn(2, 1, 28, 28)),
        "gru": (nn.GRU(4, 6, batch_first=True), torch.randn(2, 3, 4)),
        "block": (nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), torch.randn(2, 5, 16)),
    }[name]
    params = dict(model.named_parameters())

    def step(params, x):
        out = torch.func.functional_call(model, params, (x,))
        loss = default_loss(out)
        return torch.autograd.grad(loss, list(params.values()))

    with eager_dropout_kernels():  # symcx traces CPU dropout as eager runs it (a float mask), not as make_fx
        reference = make_fx(step, tracing_mode="symbolic")(params, x)

    def aten(graph):
        return [
            str(n.target) for n in graph.nodes
            if is_op(n.target) and not op_names(n.target)[1].startswith("aten.sym_")
        ]

    ours = trace_training_step(model, x).graph
    assert aten(ours) == aten(reference.graph)
    assert len(aten(ours)) > 20


def test_in_place_metadata_change_keeps_each_node_its_own_shape():
    """An in-place view op (``unsqueeze_``) costs nothing and changes the tensor's shape: the node
    that made the tensor keeps the shape it had then (the recorder snapshots sizes per op)."""

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 6)

        def forward(self, x):
            y = self.lin(x) * 2
            y.unsqueeze_(1)
            return y.sum(1)

    a = symcx.analyze(Model(), torch.randn(3, 4))
    assert not a.unsupported
    shapes = {v.packet: v.out.shape for v in a.step.nodes if v.phase == "forward"}
    assert shapes["aten.mul"] == (t, 6) and shapes["aten.unsqueeze_"] == (t, 1, 6)
    assert a.forward_flops == 2 * 4 * 6 * t  # the Linear; mul is pointwise, FlopCounterMode's convention


def test_activation_checkpointing_recomputes_in_the_backward():
    """torch.utils.checkpoint: the checkpointed region's forward runs again in the backward
    (counted there, as FlopCounterMode counts it) and its activations are not saved."""
    import torch.utils.checkpoint as checkpoint
    from torch.utils.flop_counter import FlopCounterMode

    class Net(nn.Module):
        def __init__(self, ckpt: bool) -> None:
            super().__init__()
            self.ckpt = ckpt
            self.block = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

        def forward(self, x):
            return checkpoint.checkpoint(self.block, x, use_reentrant=False) if self.ckpt else self.block(x)

    torch.manual_seed(0)
    plain, ckpt = Net(False), Net(True)
    ckpt.load_state_dict(plain.state_dict())
    a_plain, a_ckpt = (symcx.analyze(m, torch.randn(3, 8)) for m in (plain, ckpt))
    x = torch.randn(5, 8)
    with FlopCounterMode(display=False) as f:
        out = ckpt(x)
        forward = f.get_total_flops()
        out.sum().backward()
    at = a_ckpt.subs(t=5)
    assert (at.forward_flops, at.backward_flops) == (forward, f.get_total_flops() - forward)
    # the recompute (Linear 1 and the ReLU, up to the last tensor the backward needs) is backward work
    assert a_ckpt.backward_flops == a_plain.backward_flops + 2 * 8 * 16 * t
    assert a_ckpt.memory().activations < a_plain.memory().activations
