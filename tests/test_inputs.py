"""Values a caller hands the analysis: ``Analysis.subs`` numbers and memory budgets as strings."""

from __future__ import annotations

import pytest
import sympy
import torch

import symcx
from symcx.memory import max_batch_size, parse_bytes
from symcx.symbols import t


@pytest.fixture(scope="module")
def linear():
    # Linear(4, 3): forward 2*4*3 = 24 FLOPs per sample; training-step peak 28*t + 128 bytes
    return symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))


@pytest.fixture(scope="module")
def sequence():
    # Linear(4, 3) on (t, L, 4): 24 FLOPs per position
    return symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 5, 4), dims={"L": 1})


# --- Analysis.subs ----------------------------------------------------------------------------
def test_subs_takes_positive_integers(linear, sequence):
    assert linear.subs(t=10).forward_flops == 240
    assert linear.subs(t=sympy.Integer(3)).forward_flops == 72
    assert linear.subs({t: 2}).forward_flops == 48
    assert sequence.subs(t=2, L=3).forward_flops == 24 * 2 * 3
    assert linear.subs(n=2, N=100).values == {symcx.symbol("n"): 2, symcx.symbol("N"): 100}


def test_subs_keeps_partial_substitution(linear, sequence):
    b = symcx.symbol("b")
    assert linear.subs(t=b).forward_flops == 24 * b
    assert linear.subs(t=2 * b).forward_flops == 48 * b
    assert sequence.subs(L=7).forward_flops == 24 * 7 * t


@pytest.mark.parametrize("name, value", [
    ("t", -1), ("t", 0), ("t", 2.5), ("t", "x"), ("t", "64"), ("t", True), ("t", None),
    ("t", sympy.Rational(1, 2)), ("t", sympy.Float(3.0)), ("t", sympy.Integer(-2)),
    ("n", -1), ("N", 0.5), ("N", "N"), ("L", 2.5), ("L", 0),
])
def test_subs_refuses_anything_but_a_positive_integer(sequence, name, value):
    with pytest.raises(symcx.SymcxError, match=rf"subs\({name}=.*must be a positive integer"):
        sequence.subs(**{name: value})


def test_subs_still_refuses_unknown_symbols(linear):
    with pytest.raises(symcx.SymcxError, match="unknown symbol 'H'"):
        linear.subs(H=3)


# --- memory budgets ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("1KiB", 1024), ("16GB", 16 * 10**9), ("16GiB", 16 * 2**30), ("512MB", 512 * 10**6),
    ("512 MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1.5 KiB", 1536), ("2kb", 2000),
    ("1024", 1024), ("100B", 100), (" 3 TiB ", 3 * 2**40), (1024, 1024), (0, 0), (16e9, 16 * 10**9),
])
def test_parse_bytes(text, expected):
    got = parse_bytes(text)
    assert got == expected and isinstance(got, int)


@pytest.mark.parametrize("bad", ["16G", "lots", "", "-1GB", "1.5.2GB", "GB", "16 GB free", "1e9"])
def test_parse_bytes_refuses_other_strings(bad):
    with pytest.raises(symcx.SymcxError, match="cannot read the budget .*'16GiB'"):
        parse_bytes(bad)


@pytest.mark.parametrize("bad", [None, 2.5, True, [1024], -1])
def test_parse_bytes_refuses_other_values(bad):
    with pytest.raises(symcx.SymcxError, match="budget"):
        parse_bytes(bad)


def test_max_batch_size_takes_strings(linear):
    # peak 28*t + 128: 1 KiB = 1024 B -> (1024 - 128) // 28 = 32; 1 KB = 1000 B -> 872 // 28 = 31;
    # 1.5 KB = 1500 B -> 1372 // 28 = 49
    assert linear.memory().peak == 28 * t + 128
    assert linear.max_batch_size("1KiB") == linear.max_batch_size(1024) == 32
    assert linear.max_batch_size("1KB") == linear.max_batch_size(1000) == 31
    assert linear.max_batch_size("1.5 KB") == 49
    assert linear.memory().max_batch_size("1KiB") == 32
    assert max_batch_size(28 * t + 128, "1 KiB") == 32
    # 16 GiB = 17179869184 B -> (17179869184 - 128) // 28 = 613566752
    assert linear.max_batch_size("16GiB") == (16 * 2**30 - 128) // 28 == 613_566_752
    with pytest.raises(symcx.SymcxError, match="cannot read the budget '16 gigs'"):
        linear.max_batch_size("16 gigs")
