"""What the trace's guards make of the symbols: assumptions, refusals, names (issue 17, items 7, 10–13).

Every formula is checked against a real FlopCounterMode run at two sizes per symbol; every
condition or refusal is asserted as the model's shape arithmetic implies it, worked out by hand.
"""

from __future__ import annotations

import time

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import nn

import symcx
from symcx import symbol, t
from symcx.capture import naming
from symcx.capture import trace as trace_module
from symcx.capture.records import DimSpec
from symcx.errors import TraceError
from symcx.guards import holds_everywhere, readable
from symcx.zoo import MnistCNN

from .conftest import fcm_forward_backward

H, W, L = symbol("H"), symbol("W"), symbol("L")


def _at(a: symcx.Analysis, **values: int) -> tuple[int, int]:
    """The analysis' (forward, backward) FLOPs at ``values``."""
    s = a.subs(**values)
    return int(s.forward_flops), int(s.backward_flops)


# --- item 7: widths="letters" on the seed net ---------------------------------------------------


def test_seed_net_letter_widths_keep_the_single_input_channel():
    a = symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28), widths="letters")
    i, j, k, l = (symbol(c) for c in "ijkl")
    # by hand, 2 FLOPs per MAC: conv1 26·26 outputs × 3·3·1 (the one input channel) × i filters,
    # conv2 24·24 × 3·3·i × j, fc1 (12·12·j) × k, fc2 k × l
    expected = 2 * t * (26 * 26 * 9 * 1 * i + 24 * 24 * 9 * i * j + 144 * j * k + k * l)
    assert sympy.expand(a.forward_flops - expected) == 0
    assert a.subs(i=32, j=64, k=128, l=10).forward_flops == 23984896 * t  # the README's value


# --- item 10: symbolic image size through a Swin-like window partition ----------------------


class WindowNet(nn.Module):
    """Swin's shape arithmetic: a 4×4 patch embed, padding to windows of 7, window attention, crop."""

    def __init__(self, c: int = 8, window: int = 7) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, c, 4, 4)
        self.qkv = nn.Linear(c, 3 * c)
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)
        b, h, w, c = x.shape
        win = self.window
        ph, pw = (win - h % win) % win, (win - w % win) % win  # as Swin pads
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        x = x.view(b, hp // win, win, wp // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, win * win, c)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        y = (q @ k.transpose(-2, -1)).softmax(-1) @ v
        y = y.view(b, hp // win, wp // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        return y[:, :h, :w, :].contiguous()


def test_guard_probe_survives_division_by_a_zero_floor():
    # at H = 2, floor(H/4) = 0: Mod(7, 0) is nan in sympy, a ZeroDivisionError in Python
    guard = sympy.Mod(7, sympy.floor(H / 4)) >= 0
    assert holds_everywhere(guard) is False  # cannot be evaluated at H = 2: does not hold there
    assert holds_everywhere(guard, lower={H: 4}) is True  # floor(H/4) >= 1 from H = 4 on


@pytest.mark.slow
def test_window_partition_with_symbolic_image_size_is_exact():
    start = time.monotonic()
    a = symcx.analyze(WindowNet(), torch.randn(2, 3, 64, 64), dims={"H": 2, "W": 3})
    assert time.monotonic() - start < 120  # minutes before, then a bare ValueError
    for size in [(2, 64, 64), (3, 100, 76)]:  # 16×16 patches pad to 21×21; 25×19 pad to 28×21
        model = WindowNet()
        expected = fcm_forward_backward(model, torch.randn(*size[:1], 3, *size[1:]))
        assert _at(a, t=size[0], H=size[1], W=size[2]) == expected


# --- item 11: symbolic image size the model does not allow ---------------------------------------


@pytest.mark.slow
def test_flatten_into_a_fixed_linear_pins_the_image_size():
    # fc1 takes 9216 = 64·(⌊H/2⌋−2)·(⌊W/2⌋−2) features: at W = 28 only H ∈ {28, 29} fits
    with pytest.raises(TraceError, match=r"pins 'H'.*Eq\(64\*\(floor\(H/2\) - 2\)\*\(floor\(W/2\) - 2\), 9216\)"):
        symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28), dims={"H": 2, "W": 3})


def test_pinning_message_names_the_layer(monkeypatch):
    monkeypatch.setattr(trace_module, "assumptions_of", lambda *args, **kwargs: [])
    trace = trace_module._trace_once(
        MnistCNN(), torch.randn(2, 1, 28, 28), batch_dim=0, dims=[DimSpec("H", 2), DimSpec("W", 3)],
        widths=None, hints={"t": 8}, loss=None,
    )
    with pytest.raises(TraceError, match=r"pins 'H': a shape check in layer 'fc1'.*H in \{28, 29\}"):
        naming.assumptions_of(trace.shape_env, trace.rename, trace.user_symbols, trace.graph)


@pytest.mark.slow
def test_readme_symbolic_image_size_example():
    from symcx.zoo.models import ResNet18

    a = symcx.analyze(ResNet18(num_classes=10), torch.randn(2, 3, 64, 64), dims={"H": 2, "W": 3})
    for size in [(2, 64, 64), (2, 96, 80)]:
        forward, _ = fcm_forward_backward(ResNet18(num_classes=10), torch.randn(size[0], 3, *size[1:]))
        assert int(a.subs(t=size[0], H=size[1], W=size[2]).forward_flops) == forward
    assert int(a.subs(t=2, H=64, W=64).forward_flops) == 592203776  # the README's value


# --- item 12: a slice over the batch is no reason to keep t <= 15 -------------------------------


class SliceNet(nn.Module):
    """``x[:, :, :16]`` and ``ts[:, None]`` slice the symbolic batch in the symbolic trace only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.emb = nn.Linear(1, 4)

    def forward(self, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        y = self.conv(x[:, :, :16])
        return y + self.emb(ts[:, None].float())[:, :, None, None]


def test_slice_over_the_batch_keeps_no_false_bound():
    a = symcx.analyze(SliceNet(), (torch.randn(2, 3, 20, 8), torch.randint(0, 9, (2,))))
    assert not any(c.free_symbols == {t} and isinstance(c, sympy.LessThan) for c in a.assumptions)
    for batch in (16, 20):  # past the t <= 15 the guard claimed
        x = (torch.randn(batch, 3, 20, 8), torch.randint(0, 9, (batch,)))
        assert _at(a, t=batch) == fcm_forward_backward(SliceNet(), x)


# --- item 13: readable divisibility, named data-dependent sizes, position-table bounds ---------


class GroupsOf8(nn.Module):
    """``view(t, L // 8, 8, c)``: only a length divisible by 8 fits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        return self.fc(x).view(b, length // 8, 8, c).sum(2)


def test_readable_divisibility():
    assert readable(sympy.Mod(7 * L, 8) <= 0) == sympy.Eq(sympy.Mod(L, 8), 0)  # 7 is a unit mod 8
    assert readable(sympy.Mod(6 * L, 8) <= 0) == sympy.Eq(sympy.Mod(L, 4), 0)  # 6L ≡ 0 (8) ⇔ L ≡ 0 (4)
    assert readable(sympy.Mod(L, 8) > 0) == sympy.Ne(sympy.Mod(L, 8), 0)


@pytest.mark.slow
def test_view_into_groups_states_divisibility_once():
    a = symcx.analyze(GroupsOf8(), torch.randn(2, 16, 4), dims={"L": 1})
    divisibility = [c for c in a.assumptions if c.has(sympy.Mod)]
    assert divisibility == [sympy.Eq(sympy.Mod(L, 8), 0)]
    for length in (16, 40):
        assert _at(a, t=3, L=length) == fcm_forward_backward(GroupsOf8(), torch.randn(3, length, 4))


class PositiveRows(nn.Module):
    """A Linear over the rows whose first entry is positive: ``nonzero`` gives a data-dependent size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x[torch.nonzero(x[:, 0] > 0).squeeze(1)])


def test_data_dependent_size_has_a_user_name():
    a = symcx.analyze(PositiveRows(), torch.randn(6, 4))
    assert str(a.forward_flops) == "32*u_0"  # 2·4·4 per selected row
    x = torch.randn(6, 4).abs()
    x[[1, 4, 5], 0] *= -1  # three rows selected
    assert _at(a, u_0=3) == fcm_forward_backward(PositiveRows(), x)


class PositionTable(nn.Module):
    """GPT-2's embeddings: tokens plus a learned table of 32 positions, looked up at ``arange(L)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(50, 8)
        self.pos = nn.Embedding(32, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(0, ids.shape[1], device=ids.device).unsqueeze(0)
        return self.fc(self.tok(ids) + self.pos(pos))


def test_position_table_bounds_the_length():
    a = symcx.analyze(PositionTable(), torch.randint(0, 50, (2, 10)), dims={"L": 1})
    assert sympy.Le(L, 32) in a.assumptions  # positions 0 … L−1 index 32 rows


def test_gpt_position_table_bounds_the_length():
    from symcx.zoo.models import GPT

    model = GPT(n_layer=1, block_size=40)
    a = symcx.analyze(model, model.example_input(16), dims={"L": 1})
    assert sympy.Le(L, 40) in a.assumptions  # wpe(arange(L)) into block_size = 40 rows


class AddTwo(nn.Module):
    """``x + y``: the two inputs' dim 1 must be equal."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(x + y)


def test_two_names_the_model_makes_equal_are_refused():
    x = (torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(TraceError, match="the model ties 'W' to 'H'"):
        symcx.analyze(AddTwo(), x, dims={"H": [(0, 1)], "W": [(1, 1)]})
