"""Mixture-of-experts models: transformers' grouped-GEMM experts trace, and count as dense top-k.

torch's meta kernel of ``aten._grouped_mm`` takes bf16 only while the CPU kernel runs fp32; the
trace answers it with :class:`symcx.capture.kernels.EagerKernels`. FlopCounterMode counts
``_grouped_mm`` as 0, so the oracles are FlopCounterMode on the same model (it must agree
with symcx's ``flop_counter_flops``) and on the same experts run as ``batched_mm`` (one
``bmm`` per routed token, which FlopCounterMode counts, and which must agree with symcx's
own count).
"""

from __future__ import annotations

import pytest
import torch

import symcx
from symcx import t
from symcx.capture.kernels import eager_experts_hint, grouped_mm_fake
from symcx.symbols import symbol

transformers = pytest.importorskip("transformers")

L = symbol("L")


def tiny_mixtral(experts: str) -> torch.nn.Module:
    """1 layer, hidden 16, 4 experts of width 24, top-2; eager attention (counted by FlopCounterMode)."""
    config = transformers.MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config)
    model.set_experts_implementation(experts)
    return model


def fcm_step(model: torch.nn.Module, ids: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FlopCounterMode FLOPs of one real step on the logits."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as f:
        model(ids)
    forward = f.get_total_flops()
    with FlopCounterMode(display=False) as f:
        # square: a plain sum's gradient is expanded (stride 0), which the CPU grouped kernel refuses
        model(ids).logits.square().sum().backward()
    return forward, f.get_total_flops() - forward


@pytest.fixture(scope="module")
def grouped():
    return symcx.analyze(tiny_mixtral("grouped_mm"), torch.randint(0, 64, (2, 6)), dims={"L": 1})


@pytest.mark.slow
def test_grouped_mm_experts_trace_symbolically(grouped):
    assert grouped.route == "symbolic" and grouped.unsupported == {}
    assert any("top-k" in d and "_grouped_mm" in d for d in grouped.deviations)


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "length"), [(2, 6), (3, 10)])
def test_flop_counter_mode_misses_exactly_the_grouped_gemms(grouped, batch, length):
    ids = torch.randint(0, 64, (batch, length))
    at = grouped.subs(t=batch, L=length)
    assert (at.flop_counter_flops("forward"), at.flop_counter_flops("backward")) == fcm_step(
        tiny_mixtral("grouped_mm"), ids)
    # by hand, S = 2·t·L routed rows (top-2): forward gate-up 2·S·16·48 + down 2·S·24·16 = 2304·S;
    # backward a grad-input and a grad-weight per forward GEMM, 2·2304·S
    rows = 2 * t * L
    assert grouped.forward_flops - grouped.flop_counter_flops("forward") == 2304 * rows
    assert grouped.backward_flops - grouped.flop_counter_flops("backward") == 2 * 2304 * rows


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "length"), [(2, 6), (3, 10)])
def test_grouped_count_equals_the_batched_experts_flop_counter_mode_counts(grouped, batch, length):
    at = grouped.subs(t=batch, L=length)
    fwd, bwd = fcm_step(tiny_mixtral("batched_mm"), torch.randint(0, 64, (batch, length)))
    assert (at.forward_flops, at.backward_flops) == (fwd, bwd)


@pytest.mark.slow
def test_eager_experts_stop_says_how_to_switch():
    with pytest.raises(symcx.TraceError, match=r"data-dependent[\s\S]*set_experts_implementation\(\"grouped_mm\"\)"):
        symcx.analyze(tiny_mixtral("eager"), torch.randint(0, 64, (2, 6)), dims={"L": 1})


def test_hint_only_for_an_experts_loop():
    assert eager_experts_hint(None) == ""
    assert eager_experts_hint("model.py:3: if x.sum() > 0:") == ""
    assert "experts_implementation" in eager_experts_hint("modeling_mixtral.py:81: for expert_idx in expert_hit:")


@pytest.mark.parametrize(
    ("a", "b", "offs", "expected"),
    [
        ((6, 4), (3, 4, 8), [2, 4, 6], (6, 8)),  # rows split over 3 experts (an expert forward)
        ((4, 8), (8, 8), [2, 4, 8], (3, 4, 8)),  # shared dim split (a weight gradient): one matrix per group
        ((3, 8, 4), (4, 8), [2, 4, 8], (8, 8)),  # columns split
        ((3, 8, 4), (3, 4, 8), None, (3, 8, 8)),  # batched
    ],
)
def test_fake_grouped_mm_shape_is_the_cpu_kernels(a, b, offs, expected):
    mat_a, mat_b = torch.randn(a), torch.randn(b)
    counts = None if offs is None else torch.tensor(offs, dtype=torch.int32)
    real = torch.nn.functional.grouped_mm(mat_a, mat_b, offs=counts)
    assert tuple(real.shape) == expected == tuple(grouped_mm_fake(mat_a, mat_b, counts).shape)


_COMMON = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
               max_position_embeddings=64, attn_implementation="eager", intermediate_size=24, moe_intermediate_size=24,
               num_experts_per_tok=2)
_OTHER_MOES = {
    "Qwen2Moe": dict(num_experts=4, shared_expert_intermediate_size=32),
    "Qwen3Moe": dict(num_experts=4, head_dim=8),
    "DeepseekV3": dict(n_routed_experts=4, n_group=1, topk_group=1, first_k_dense_replace=0, q_lora_rank=None,
                       kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_shared_experts=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(_OTHER_MOES))
def test_other_moe_families_count_as_their_batched_experts(family):
    config = getattr(transformers, f"{family}Config")(**_COMMON, **_OTHER_MOES[family])
    torch.manual_seed(0)
    model = getattr(transformers, f"{family}ForCausalLM")(config)
    a = symcx.analyze(model, torch.randint(0, 64, (2, 6)), dims={"L": 1})
    assert a.route == "symbolic" and a.unsupported == {}
    model.set_experts_implementation("batched_mm")
    at = a.subs(t=3, L=5)
    assert (at.forward_flops, at.backward_flops) == fcm_step(model, torch.randint(0, 64, (3, 5)))
