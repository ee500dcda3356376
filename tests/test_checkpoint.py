"""Activation checkpointing: the recompute is backward work whose temporaries die as eager frees them."""

from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint as checkpoint
from torch import nn

import symcx
from symcx import t
from symcx.validation.live_bytes import measure_peak_bytes

from .conftest import fcm_forward_backward


def _block() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())


class Blocks(nn.Module):
    """Three blocks, each checkpointed or not."""

    def __init__(self, ckpt: bool) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.blocks = nn.ModuleList([_block() for _ in range(3)])

    def forward(self, x):
        for b in self.blocks:
            x = checkpoint.checkpoint(b, x, use_reentrant=False) if self.ckpt else b(x)
        return x


def _measured(model: nn.Module, x) -> int:
    def step():
        out = model(x)
        out.sum().backward()

    step()
    model.zero_grad(set_to_none=True)
    peak = measure_peak_bytes(step)
    model.zero_grad(set_to_none=True)
    return peak


@pytest.mark.parametrize("ckpt", [False, True])
def test_peak_is_exact_with_and_without_checkpointing(ckpt):
    torch.manual_seed(0)
    model = Blocks(ckpt)
    a = symcx.analyze(model, torch.randn(2, 64))
    for batch in (1, 8, 32, 128):
        mem = a.subs(t=batch).memory()
        assert mem.peak - mem.resident == _measured(model, torch.randn(batch, 64))


def test_recompute_flops_are_the_checkpointed_forward():
    torch.manual_seed(0)
    plain, ckpt = Blocks(False), Blocks(True)
    ckpt.load_state_dict(plain.state_dict())
    a_plain, a_ckpt = (symcx.analyze(m, torch.randn(2, 64)) for m in (plain, ckpt))
    # every block's forward runs again in the backward: 3 · 2·t·(64·256 + 256·64) FLOPs
    assert a_ckpt.recompute_flops == 3 * 2 * t * (64 * 256 + 256 * 64) == a_plain.forward_flops
    assert a_ckpt.backward_flops - a_plain.backward_flops == a_ckpt.recompute_flops
    assert a_ckpt.model_flops == a_plain.step_flops and a_plain.recompute_flops == 0
    x = torch.randn(5, 64)
    assert fcm_forward_backward(ckpt, x)[1] == a_ckpt.subs(t=5).backward_flops  # FlopCounterMode agrees


@pytest.mark.slow
def test_hugging_face_gradient_checkpointing_within_2_percent():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=3, n_head=2, n_embd=64, vocab_size=100, n_positions=64,
                                  attn_implementation="eager", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).train()
    model.gradient_checkpointing_enable()
    a = symcx.analyze(model, torch.randint(0, 100, (2, 16)), dims={"L": 1})
    for batch, length in ((2, 16), (8, 32)):
        x = torch.randint(0, 100, (batch, length))
        mem = a.subs(t=batch, L=length).memory()

        def step():
            logits = model(x).logits  # held through the backward, as a training loop's variable is
            logits.sum().backward()

        step()
        model.zero_grad(set_to_none=True)
        got = measure_peak_bytes(step)
        model.zero_grad(set_to_none=True)
        assert abs((mem.peak - mem.resident) - got) <= 0.02 * got

