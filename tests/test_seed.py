"""The seed homework's numbers, derived by hand, and the seed net against FlopCounterMode."""

from __future__ import annotations

import pytest
import sympy
import torch

import symcx
from symcx import t
from symcx.zoo import MLP, MnistCNN

from .conftest import fcm_forward_backward


@pytest.fixture(scope="module")
def seed():
    return symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28))


def rows(a):
    return {r.name: r for r in a.layers}


def test_conv_flops_per_sample_match_the_homework(seed):
    r = rows(seed)
    assert r["conv1"].forward_flops == 2 * 26 * 26 * 3 * 3 * 1 * 32 * t  # 389,376 per sample
    assert r["conv2"].forward_flops == 2 * 24 * 24 * 3 * 3 * 32 * 64 * t  # 21,233,664 per sample
    # the unevaluated factors a write-up shows: 2·t·C_out·C_in·k·k·H_out·W_out
    assert r["conv1"].derivation == ((2, t, 32, 1, 3, 3, 26, 26),)


def test_linear_flops_per_sample(seed):
    r = rows(seed)
    assert r["fc1"].forward_flops == 2 * 9216 * 128 * t
    assert r["fc2"].forward_flops == 2 * 128 * 10 * t


def test_params_match_the_homework(seed):
    r = rows(seed)
    assert r["conv1"].params == 1 * 3 * 3 * 32 + 32
    assert r["conv2"].params == 32 * 3 * 3 * 64 + 64
    assert r["fc1"].params == 9216 * 128 + 128
    assert r["fc2"].params == 128 * 10 + 10
    assert seed.params == 1_199_882


def test_forward_is_linear_in_t(seed):
    f = seed.forward_flops
    assert sympy.degree(f, t) == 1 and f.subs(t, 0) == 0
    # sum of the four layers above, per sample
    assert f == (389_376 + 21_233_664 + 2 * 9216 * 128 + 2 * 128 * 10) * t


def test_backward_per_layer(seed):
    r = rows(seed)
    # conv1's input needs no gradient: only grad-weight, one forward-sized product
    assert r["conv1"].backward_flops == 389_376 * t
    # other layers: grad-input and grad-weight, twice the forward
    assert r["conv2"].backward_flops == 2 * 21_233_664 * t
    assert r["fc1"].backward_flops == 2 * 2 * 9216 * 128 * t


def test_derivation_keeps_the_homework_factors(seed):
    (factors,) = rows(seed)["conv1"].derivation
    assert sorted(map(str, factors)) == sorted(map(str, [2, t, 32, 1, 3, 3, 26, 26]))


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_seed_net_equals_flop_counter_mode(seed, batch):
    fwd, bwd = fcm_forward_backward(MnistCNN(), torch.randn(batch, 1, 28, 28))
    a = seed.subs(t=batch)
    assert a.forward_flops == fwd
    assert a.backward_flops == bwd


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_mlp_equals_flop_counter_mode(batch):
    a = symcx.analyze(MLP(), torch.randn(2, 784)).subs(t=batch)
    fwd, bwd = fcm_forward_backward(MLP(), torch.randn(batch, 784))
    assert (a.forward_flops, a.backward_flops) == (fwd, bwd)
    # by hand: 2·t·(784·512 + 512·256 + 256·10)
    assert fwd == 2 * batch * (784 * 512 + 512 * 256 + 256 * 10)


def test_training_totals(seed):
    n, N = symcx.n, symcx.N
    tr = seed.training()
    assert tr.steps_per_epoch == sympy.ceiling(N / t)
    assert tr.total_flops == n * sympy.ceiling(N / t) * (seed.forward_flops + seed.backward_flops)
    at = seed.subs(t=64).training(epochs=2, samples=60000)
    # 60000/64 = 937.5 -> 938 steps, 2 epochs
    assert at.total_flops == 2 * 938 * 64 * (23_984_896 + 47_580_416)


def test_big_o(seed):
    assert str(seed.big_o("step")) == "O(t)"
    assert str(seed.big_o()) == "O(N*n)"


def test_activation_bytes_are_linear_in_t(seed):
    b = seed.activation_bytes
    assert sympy.degree(b, t) == 1 and b.subs(t, 0) == 0


def test_macs_are_half_the_flops(seed):
    assert seed.forward_macs * 2 == seed.forward_flops
