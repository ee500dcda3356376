"""Per-layer rows: weights and biases, shapes in and out, hyper-parameters, labelled backward terms.

Every expected value is worked out by hand from the layer's definition.
"""

from __future__ import annotations

import pytest
import sympy
import torch

import symcx
from symcx.rows import GRAD_INPUT, GRAD_WEIGHT
from symcx.zoo import MnistCNN

T = symcx.symbol("t")


class Norms(torch.nn.Module):
    """conv 3→64 3×3, BatchNorm2d, GroupNorm(4), avg-pool 2, max-pool 2, mean, Linear 64→16, LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 64, 3)
        self.bn = torch.nn.BatchNorm2d(64)
        self.gn = torch.nn.GroupNorm(4, 64)
        self.pool = torch.nn.AvgPool2d(2)
        self.mp = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(64, 16)
        self.ln = torch.nn.LayerNorm(16)

    def forward(self, x):
        x = self.mp(self.pool(self.gn(self.bn(self.conv(x)))))
        return self.ln(self.fc(x.mean((2, 3))))


@pytest.fixture(scope="module")
def seed():
    return {row.name: row for row in symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28)).layers}


@pytest.fixture(scope="module")
def norms():
    return {row.name: row for row in symcx.analyze(Norms(), torch.randn(2, 3, 14, 14)).layers}


def test_weights_and_biases_of_the_seed_net(seed):
    # conv1: 32 filters of 1×3×3 = 288 weights and 32 biases (the seed's "1×3×3×32 and 32")
    assert (seed["conv1"].weights, seed["conv1"].biases) == (288, 32)
    assert seed["conv1"].weight_shapes == ((32, 1, 3, 3), (32,))
    # conv2: 64·32·3·3 = 18,432 weights, 64 biases; fc1: 128·9216 = 1,179,648 and 128
    assert (seed["conv2"].weights, seed["conv2"].biases) == (18432, 64)
    assert (seed["fc1"].weights, seed["fc1"].biases) == (1179648, 128)
    assert all(row.weights + row.biases == row.params for row in seed.values())
    assert seed["conv1"].trainable is True and seed["relu"].trainable is None


def test_frozen_parameters_are_not_trainable():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)
    rows = {r.name: r for r in symcx.analyze(model, torch.randn(2, 4)).layers}
    assert (rows["0"].trainable, rows["1"].trainable) == (False, True)


def test_linear_without_bias_has_no_biases():
    row = symcx.analyze(torch.nn.Linear(5, 7, bias=False), torch.randn(2, 5)).layers[0]
    assert (row.weights, row.biases, row.weight_shapes) == (35, 0, ((7, 5),))  # 7·5 weights


def test_input_shapes_and_hyper_parameters(seed):
    assert seed["conv1"].in_shape == (T, 1, 28, 28)
    assert seed["fc1"].in_shape == (T, 9216)  # 64·12·12 after the flatten, not fc1's bias
    assert seed["conv2"].details == "k=3×3, s=1, p=0, d=1, g=1"
    assert seed["max_pool2d_with_indices"].details == "k=2×2, s=2, p=0"  # F.max_pool2d(x, 2)
    assert seed["fc1"].details == "9216→128"
    assert seed["dropout1"].details == "p=0.25"


def test_strided_padded_grouped_convolution_details():
    conv = torch.nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=1, dilation=2, groups=2)
    row = symcx.analyze(conv, torch.randn(2, 4, 20, 20)).layers[0]
    assert row.details == "k=3×5, s=2×1, p=1, d=2, g=2"
    assert (row.weights, row.biases) == (8 * 2 * 3 * 5, 8)  # C_out · C_in/g · kh · kw


def test_norm_rows_show_the_module_output(norms):
    # a 14×14 input, 3×3 conv: 12×12; the norms keep it; their saved mean/rstd are (64,), (t, 4), (t, 1)
    assert norms["bn"].out_shape == (T, 64, 12, 12)
    assert norms["gn"].out_shape == (T, 64, 12, 12)
    assert norms["ln"].out_shape == (T, 16)
    assert norms["bn"].in_shape == (T, 64, 12, 12)  # the conv's output, not the num_batches_tracked buffer
    assert (norms["bn"].weights, norms["bn"].biases) == (64, 64)  # gamma and beta, 64 each
    assert norms["gn"].details == "groups=4, eps=1e-05" and norms["ln"].details == "shape=16, eps=1e-05"
    assert norms["bn"].details == "eps=1e-05, momentum=0.1"
    assert norms["pool"].out_shape == (T, 64, 6, 6) and norms["mp"].out_shape == (T, 64, 3, 3)


def test_backward_terms_are_labelled(seed):
    # fc1: grad input t×128 @ 128×9216, grad weight 128×t @ t×9216: 2·t·128·9216 each
    assert seed["fc1"].backward_terms == ((GRAD_INPUT, (2, T, 128, 9216)), (GRAD_WEIGHT, (2, 128, T, 9216)))
    # conv2 computes both; conv1's input needs no gradient, so only its grad weight
    assert [label for label, _ in seed["conv2"].backward_terms] == [GRAD_INPUT, GRAD_WEIGHT]
    assert [label for label, _ in seed["conv1"].backward_terms] == [GRAD_WEIGHT]
    for row in seed.values():
        total = sympy.Add(*[sympy.Mul(*f) for _, f in row.backward_terms])
        assert total == row.backward_flops


def test_subs_reaches_the_new_fields(seed):
    row = seed["fc1"].subs({T: 4})
    assert row.in_shape == (4, 9216) and row.backward_terms[0] == (GRAD_INPUT, (2, 4, 128, 9216))
