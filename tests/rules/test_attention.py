"""Attention rules against attention written out as ``q @ kᵀ``, softmax, ``@ v`` under
FlopCounterMode. A fused kernel's backward recomputes the score matrix, so its oracle is the
decomposed backward plus one more ``q @ kᵀ`` (2.5× forward for d_q = d_v); the unfused math
path is the decomposition itself (2×). FlopCounterMode counts CPU flash attention as 0.
"""

from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import symcx
from symcx import symbol, t
from symcx.rules import lookup
from symcx.rules.attention import CAUSAL_NOTE, CPU_NOTE, FCM_RAISES_NOTE, LAYOUT_NOTE, causal_entries

from .conftest import evaluate, fcm_counts, fcm_forward, needs_grad, op_call, run_step

CPU_FLASH = "aten._scaled_dot_product_flash_attention_for_cpu"
aten = torch.ops.aten


def _repeat_heads(k: torch.Tensor, heads: int) -> torch.Tensor:
    return k.repeat_interleave(heads // k.shape[1], 1) if k.shape[1] != heads else k


def scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The score matrix ``q @ kᵀ`` (key heads repeated up to the query's)."""
    return q @ _repeat_heads(k, q.shape[1]).transpose(-2, -1)


def attention_math(q, k, v, causal: bool = False) -> torch.Tensor:
    """Attention written out: ``softmax(q @ kᵀ / √d) @ v``, top-left causal mask if asked."""
    s = scores(q, k) / math.sqrt(q.shape[-1])
    if causal:
        keep = torch.ones(s.shape[-2], s.shape[-1], dtype=torch.bool).tril()
        s = s.masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ _repeat_heads(v, q.shape[1])


def unmasked(s_q: int, s_k: int) -> int:
    """Entries of a top-left causal mask, counted on a real mask."""
    return int(torch.ones(s_q, s_k).tril().sum())


@st.composite
def attention_configs(draw):
    h_kv = draw(st.integers(1, 3))
    s_q = draw(st.integers(1, 9))
    d_q = draw(st.integers(1, 16))
    return dict(
        b=draw(st.integers(1, 3)),
        h_kv=h_kv,
        h_q=h_kv * draw(st.integers(1, 3)),
        s_q=s_q,
        s_k=s_q if draw(st.booleans()) else draw(st.integers(1, 9)),
        d_q=d_q,
        d_v=d_q if draw(st.booleans()) else draw(st.integers(1, 16)),
        causal=draw(st.booleans()),
    )


def _qkv(c):
    q = needs_grad(torch.randn(c["b"], c["h_q"], c["s_q"], c["d_q"]), True)
    k = needs_grad(torch.randn(c["b"], c["h_kv"], c["s_k"], c["d_q"]), True)
    v = needs_grad(torch.randn(c["b"], c["h_kv"], c["s_k"], c["d_v"]), True)
    return q, k, v


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(attention_configs())
def test_sdpa_matches_decomposed_attention(c):
    q, k, v = _qkv(c)
    gqa = c["h_q"] != c["h_kv"]
    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=c["causal"], enable_gqa=gqa)

    step = run_step(sdpa, q, k, v)
    forward, backward = fcm_counts(lambda q, k, v: attention_math(q, k, v, c["causal"]), q, k, v)
    fused = CPU_FLASH in step.ops("forward")
    if fused:
        backward += fcm_forward(scores, q, k)  # the kernel recomputes q @ kᵀ
        assert (step.fcm_forward, step.fcm_backward) == (0, 0)  # FlopCounterMode misses the kernel
    assert (step.flops("forward"), step.flops("backward")) == (forward, backward)
    # symcx's account of FlopCounterMode is FlopCounterMode's own count
    assert (step.fcm_view("forward"), step.fcm_view("backward")) == (step.fcm_forward, step.fcm_backward)

    # causal_attention=True: a fused causal call counts only its unmasked entries
    counted = (step.flops("forward", causal_attention=True), step.flops("backward", causal_attention=True))
    if fused and c["causal"]:
        u = unmasked(c["s_q"], c["s_k"])
        b, h, d_q, d_v = c["b"], c["h_q"], c["d_q"], c["d_v"]
        assert counted == (2 * b * h * u * (d_q + d_v), 2 * b * h * u * (3 * d_q + 2 * d_v))
    else:
        assert counted == (forward, backward)


@pytest.mark.slow
def test_cpu_flash_is_what_runs_and_fcm_counts_it_zero():
    # 2·4 heads, L = 16, d = 8: forward 4·2·4·16·16·8 = 65,536, backward 2.5× = 163,840
    q, k, v = (needs_grad(torch.randn(2, 4, 16, 8), True) for _ in range(3))
    step = run_step(F.scaled_dot_product_attention, q, k, v)
    assert CPU_FLASH in step.ops("forward")
    assert (step.fcm_forward, step.fcm_backward) == (0, 0)
    assert (step.flops("forward"), step.flops("backward")) == (65_536, 163_840)
    notes = {c.note for _, c in step.costs("forward") + step.costs("backward") if c.note}
    assert notes == {CPU_NOTE}


def test_causal_entries_by_hand():
    # rows of a top-left causal 3×5 mask see 1, 2, 3 keys: 6; 5×3: 1+2+3+3+3 = 12;
    # bottom-right 3×5: 3, 4, 5 = 12; 5×3: 0, 0, 1, 2, 3 = 6
    assert causal_entries(3, 5) == 6 == unmasked(3, 5)
    assert causal_entries(5, 3) == 12 == unmasked(5, 3)
    assert causal_entries(3, 5, "bottom-right") == 12
    assert causal_entries(5, 3, "bottom-right") == 6
    L = symbol("L")
    assert sympy.expand(causal_entries(L, L) - L * (L + 1) / 2) == 0


# --- the GPU kernels, on meta tensors -------------------------------------------------------


def _meta(*shape):
    return torch.empty(*shape, device="meta", dtype=torch.float16)


def _fcm(fn):
    with FlopCounterMode(display=False) as f:
        out = fn()
    return f.get_total_flops(), out


def _rule(func, args, out, **options):
    call = op_call(func, args, {}, out, **options)
    return lookup(call.op)(call)


@st.composite
def kernel_configs(draw):
    s = draw(st.integers(1, 9))
    return dict(
        b=draw(st.integers(1, 3)),
        h=draw(st.integers(1, 4)),
        s_q=s,
        s_k=s if draw(st.booleans()) else draw(st.integers(1, 9)),
        d=draw(st.integers(1, 16)),
        d_v=draw(st.integers(1, 16)),
        causal=draw(st.booleans()),
    )


def _bhsd_kernels(b, h, s_q, s_k, d, d_v, causal):
    """(forward op, args, backward op, args from forward outputs, value dim) of the three SDPA
    kernels; the memory-efficient one takes a value head dim ``d_v`` of its own."""
    q, k, v, g = _meta(b, h, s_q, d), _meta(b, h, s_k, d), _meta(b, h, s_k, d), _meta(b, h, s_q, d)
    yield (
        aten._scaled_dot_product_flash_attention.default, (q, k, v, 0.0, causal),
        aten._scaled_dot_product_flash_attention_backward.default,
        lambda o: (g, q, k, v, o[0], o[1], o[2], o[3], o[4], o[5], 0.0, causal, o[6], o[7]), d,
    )
    ve, ge = _meta(b, h, s_k, d_v), _meta(b, h, s_q, d_v)
    yield (
        aten._scaled_dot_product_efficient_attention.default, (q, k, ve, None, True, 0.0, causal),
        aten._scaled_dot_product_efficient_attention_backward.default,
        lambda o: (ge, q, k, ve, None, o[0], o[1], o[2], o[3], 0.0, [True, True, True, False], causal), d_v,
    )
    yield (
        aten._scaled_dot_product_cudnn_attention.default, (q, k, v, None, True, 0.0, causal),
        aten._scaled_dot_product_cudnn_attention_backward.default,
        lambda o: (g, q, k, v, o[0], o[1], o[6], o[7], _meta(0), o[2], o[3], o[4], o[5], 0.0, causal), d,
    )


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(kernel_configs())
def test_gpu_sdpa_kernels_equal_flop_counter_mode(c):
    b, h, s_q, s_k, d = c["b"], c["h"], c["s_q"], c["s_k"], c["d"]
    u = unmasked(s_q, s_k)
    for fwd_op, fwd_args, bwd_op, bwd_args, d_v in _bhsd_kernels(b, h, s_q, s_k, d, c["d_v"], c["causal"]):
        fcm_fwd, out = _fcm(lambda: fwd_op(*fwd_args))
        fcm_bwd, grads = _fcm(lambda: bwd_op(*bwd_args(out)))
        forward, backward = _rule(fwd_op, fwd_args, out), _rule(bwd_op, bwd_args(out), grads)
        assert (forward.flops, backward.flops) == (fcm_fwd, fcm_bwd)
        assert forward.fcm_flops is None and backward.fcm_flops is None
        causal_fwd = _rule(fwd_op, fwd_args, out, causal_attention=True)
        causal_bwd = _rule(bwd_op, bwd_args(out), grads, causal_attention=True)
        if c["causal"]:  # by hand: 2·b·h·U·(d + d_v) forward, 2·b·h·U·(3·d + 2·d_v) backward
            assert causal_fwd.flops == 2 * b * h * u * (d + d_v)
            assert causal_bwd.flops == 2 * b * h * u * (3 * d + 2 * d_v)
            assert (causal_fwd.fcm_flops, causal_bwd.fcm_flops) == (fcm_fwd, fcm_bwd)
            assert CAUSAL_NOTE in causal_fwd.note
        else:
            assert (causal_fwd.flops, causal_bwd.flops) == (fcm_fwd, fcm_bwd)


@settings(max_examples=120, deadline=None)
@given(kernel_configs())
@example(dict(b=1, h=2, s_q=1, s_k=1, d=1, d_v=1, causal=False))
def test_flash_and_efficient_bshd_kernels(c):
    """Right count: FlopCounterMode on the BHSD SDPA kernel of the same attention; symcx's
    record of FlopCounterMode: FlopCounterMode on the BSHD kernel itself (which misreads it)."""
    b, h, s_q, s_k, d = c["b"], c["h"], c["s_q"], c["s_k"], c["d"]
    q, k, v, g = _meta(b, s_q, h, d), _meta(b, s_k, h, d), _meta(b, s_k, h, d), _meta(b, s_q, h, d)
    bhsd = [x.transpose(1, 2).contiguous() for x in (q, k, v, g)]
    right_fwd, o = _fcm(lambda: aten._scaled_dot_product_efficient_attention(*bhsd[:3], None, True))
    right_bwd, _ = _fcm(lambda: aten._scaled_dot_product_efficient_attention_backward(
        bhsd[3], *bhsd[:3], None, o[0], o[1], o[2], o[3], 0.0, [True, True, True, False]))
    kernels = [
        (aten._flash_attention_forward.default, (q, k, v, None, None, s_q, s_k, 0.0, c["causal"], False),
         aten._flash_attention_backward.default,
         lambda o: (g, q, k, v, o[0], o[1], None, None, s_q, s_k, 0.0, c["causal"], o[2], o[3])),
        (aten._efficient_attention_forward.default, (q, k, v, None, None, None, s_q, s_k, 0.0, 2 * c["causal"], True),
         aten._efficient_attention_backward.default,
         lambda o: (g, q, k, v, None, o[0], None, None, s_q, s_k, o[1], 0.0, o[2], o[3], 2 * c["causal"], False)),
    ]
    raises = s_q % s_k != 0  # FlopCounterMode takes s_q, s_k for head counts and checks them
    for fwd_op, fwd_args, bwd_op, bwd_args in kernels:
        out = fwd_op(*fwd_args)
        grads = bwd_op(*bwd_args(out))
        forward, backward = _rule(fwd_op, fwd_args, out), _rule(bwd_op, bwd_args(out), grads)
        assert (forward.flops, backward.flops) == (right_fwd, right_bwd)
        if raises:
            with pytest.raises(AssertionError):
                _fcm(lambda: fwd_op(*fwd_args))
            assert (forward.fcm_flops, backward.fcm_flops) == (0, 0)
            assert FCM_RAISES_NOTE in forward.note
        else:
            misread = (_fcm(lambda: fwd_op(*fwd_args))[0], _fcm(lambda: bwd_op(*bwd_args(out)))[0])
            assert (forward.fcm_flops, backward.fcm_flops) == misread
            assert LAYOUT_NOTE in forward.note
        if c["causal"]:  # both kernels align the causal mask to the bottom right
            u = sum(min(max(i + s_k - s_q + 1, 0), s_k) for i in range(s_q))
            causal = _rule(fwd_op, fwd_args, out, causal_attention=True)
            assert causal.flops == 4 * b * h * u * d


def test_decode_step_bshd_kernels_by_hand():
    # one query, one key, 2 heads, d = 1 (a decode step): q, k, v are (b, s, h, d) = (1, 1, 2, 1).
    # Right: 4·b·h·s_q·s_k·d = 4·1·2·1·1·1 = 8 forward, 2.5× = 20 backward. FlopCounterMode reads
    # the shapes literally as (b, h, s, d) = (1, 1, 2, 1), with no case for size-1 dims: heads 1,
    # sequence 2, so 4·1·1·2·2·1 = 16 forward and 10·1·1·2·2·1 = 40 backward.
    q, k, v, g = (_meta(1, 1, 2, 1) for _ in range(4))
    args = (q, k, v, None, None, 1, 1, 0.0, False, False)
    fcm_fwd, out = _fcm(lambda: aten._flash_attention_forward(*args))
    bargs = (g, q, k, v, out[0], out[1], None, None, 1, 1, 0.0, False, out[2], out[3])
    fcm_bwd, grads = _fcm(lambda: aten._flash_attention_backward(*bargs))
    forward = _rule(aten._flash_attention_forward.default, args, out)
    backward = _rule(aten._flash_attention_backward.default, bargs, grads)
    assert (forward.flops, backward.flops) == (8, 20)
    assert (forward.fcm_flops, backward.fcm_flops) == (fcm_fwd, fcm_bwd) == (16, 40)


def test_packed_batches_count_at_max_length():
    # 2 sequences of at most 6 queries and 3 keys, 4 heads, d = 8: FlopCounterMode's bound on
    # meta offsets, 4·2·4·6·3·8 = 4,608 forward and 2.5× = 11,520 backward
    q, k, v = _meta(12, 4, 8), _meta(6, 4, 8), _meta(6, 4, 8)
    cu = torch.empty(3, device="meta", dtype=torch.int32)
    args = (q, k, v, cu, cu, 6, 3, 0.0, False, False)
    fcm_fwd, out = _fcm(lambda: aten._flash_attention_forward(*args))
    bargs = (_meta(12, 4, 8), q, k, v, out[0], out[1], cu, cu, 6, 3, 0.0, False, out[2], out[3])
    fcm_bwd, grads = _fcm(lambda: aten._flash_attention_backward(*bargs))
    forward = _rule(aten._flash_attention_forward.default, args, out)
    backward = _rule(aten._flash_attention_backward.default, bargs, grads)
    assert (forward.flops, backward.flops) == (fcm_fwd, fcm_bwd) == (4_608, 11_520)
    eargs = (q[None], k[None], v[None], None, cu, cu, 6, 3, 0.0, 0, True)
    fcm_e, eout = _fcm(lambda: aten._efficient_attention_forward(*eargs))
    assert _rule(aten._efficient_attention_forward.default, eargs, eout).flops == fcm_e == 4_608


# --- end to end: symcx.analyze with the sequence length L symbolic ----------------------------


class SelfAttention(nn.Module):
    """A qkv projection, attention by ``how`` ("sdpa" or written out, "math"), an output projection."""

    def __init__(self, dim, heads, kv_heads=None, causal=False, how="sdpa"):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads or heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * self.kv_heads * self.head_dim)
        self.out = nn.Linear(dim, dim)
        self.causal, self.how = causal, how

    def qkv(self, x):
        b, L, _ = x.shape
        q = self.q(x).view(b, L, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, L, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x):
        b, L, _ = x.shape
        q, k, v = self.qkv(x)
        if self.how == "math":
            y = attention_math(q, k, v, self.causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, enable_gqa=self.kv_heads != self.heads)
        return self.out(y.transpose(1, 2).reshape(b, L, -1))


def _like(model, how):
    twin = SelfAttention(model.heads * model.head_dim, model.heads, model.kv_heads, model.causal, how)
    twin.load_state_dict(model.state_dict())
    return twin


def _fused_oracle(model, x):
    """FlopCounterMode on the written-out twin, plus the recomputed scores in the backward."""
    forward, backward = fcm_counts(_like(model, "math"), x)
    q, k, _ = model.qkv(x)
    return forward, backward + fcm_forward(scores, q, k)


E2E_SDPA = [
    dict(dim=16, heads=2),
    dict(dim=16, heads=2, causal=True),
    dict(dim=24, heads=4, kv_heads=2),
    dict(dim=24, heads=4, kv_heads=1, causal=True),
    dict(dim=32, heads=8),
]


@pytest.mark.parametrize("cfg", E2E_SDPA)
def test_analyze_sdpa_with_symbolic_length(cfg):
    model = SelfAttention(**cfg)
    a = symcx.analyze(model, torch.randn(3, 5, cfg["dim"]), dims={"L": 1})
    L = symbol("L")
    assert not a.unsupported
    assert sympy.degree(a.forward_flops, L) == 2  # the t·L²·d attention term
    for batch, length in ((2, 4), (3, 9)):
        x = torch.randn(batch, length, cfg["dim"])
        got = (evaluate(a.forward_flops, t=batch, L=length), evaluate(a.backward_flops, t=batch, L=length))
        assert got == _fused_oracle(model, x)
        assert evaluate(a.flop_counter_flops("step"), t=batch, L=length) == sum(fcm_counts(model, x))


def test_analyze_causal_option_counts_the_triangle():
    model = SelfAttention(16, 2, causal=True)
    full = symcx.analyze(model, torch.randn(3, 5, 16), dims={"L": 1})
    half = symcx.analyze(model, torch.randn(3, 5, 16), dims={"L": 1}, causal_attention=True)
    L = symbol("L")
    # by hand, heads 2, head dim 8: forward 2·t·2·(L² − L(L+1)/2)·(8+8) fewer, backward ·(24+16)
    removed = L**2 - L * (L + 1) / 2
    assert sympy.expand(full.forward_flops - half.forward_flops - 2 * t * 2 * removed * 16) == 0
    assert sympy.expand(full.backward_flops - half.backward_flops - 2 * t * 2 * removed * 40) == 0
    assert any(CAUSAL_NOTE in d for d in half.deviations)
    assert half.flop_counter_flops("step") == full.flop_counter_flops("step")


@pytest.mark.parametrize("causal", [False, True])
def test_analyze_written_out_attention_equals_flop_counter_mode(causal):
    model = SelfAttention(16, 2, causal=causal, how="math")
    a = symcx.analyze(model, torch.randn(3, 5, 16), dims={"L": 1})
    for batch, length in ((2, 3), (4, 7)):
        x = torch.randn(batch, length, 16)
        got = (evaluate(a.forward_flops, t=batch, L=length), evaluate(a.backward_flops, t=batch, L=length))
        assert got == fcm_counts(model, x)


def test_analyze_math_backend_and_dropout_equal_flop_counter_mode():
    model = SelfAttention(16, 4)
    with sdpa_kernel(SDPBackend.MATH):
        a = symcx.analyze(model, torch.randn(3, 5, 16), dims={"L": 1})
        x = torch.randn(2, 6, 16)
        assert evaluate(a.step_flops, t=2, L=6) == sum(fcm_counts(model, x))


class MHA(nn.Module):
    def __init__(self, dim, heads, need_weights, causal=False, batch_first=True):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.need_weights, self.causal = need_weights, causal

    def forward(self, x):
        L = x.shape[1 if self.mha.batch_first else 0]
        mask = torch.ones(L, L, dtype=torch.bool).triu(1) if self.causal else None
        return self.mha(x, x, x, need_weights=self.need_weights, attn_mask=mask, is_causal=self.causal)[0]


@pytest.mark.parametrize(
    "dim,heads,need_weights,causal,batch_first",
    [(16, 2, True, False, True), (16, 4, False, False, True), (24, 3, False, True, True), (16, 2, False, False, False)],
)
def test_analyze_multihead_attention(dim, heads, need_weights, causal, batch_first):
    model = MHA(dim, heads, need_weights, causal, batch_first)
    shape = lambda b, L: (b, L, dim) if batch_first else (L, b, dim)  # noqa: E731
    a = symcx.analyze(model, torch.randn(*shape(3, 5)), batch_dim=0 if batch_first else 1,
                      dims={"L": 1 if batch_first else 0})
    assert not a.unsupported
    for batch, length in ((2, 3), (3, 8)):
        x = torch.randn(*shape(batch, length))
        fwd, bwd = fcm_counts(model, x)
        if not need_weights:  # fused CPU kernel: FlopCounterMode counts it 0; by hand 4·b·L²·dim fwd, 2.5× bwd
            fwd, bwd = fwd + 4 * batch * length**2 * dim, bwd + 10 * batch * length**2 * dim
        got = (evaluate(a.forward_flops, t=batch, L=length), evaluate(a.backward_flops, t=batch, L=length))
        assert got == (fwd, bwd)


def test_analyze_transformer_encoder_layer():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    a = symcx.analyze(layer, torch.randn(3, 5, 16), dims={"L": 1})
    assert not a.unsupported
    L = symbol("L")
    assert sympy.degree(a.forward_flops, L) == 2
    x = torch.randn(2, 7, 16)
    fwd, bwd = fcm_counts(layer, x)
    # the self-attention runs the fused CPU kernel, by hand 4·2·7²·16 forward and 2.5× backward
    assert evaluate(a.forward_flops, t=2, L=7) == fwd + 4 * 2 * 49 * 16
    assert evaluate(a.backward_flops, t=2, L=7) == bwd + 10 * 2 * 49 * 16
