"""Serving cost with the model's own KV cache, against FlopCounterMode and the real cache tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

transformers = pytest.importorskip("transformers")

import symcx  # noqa: E402
from symcx import t  # noqa: E402
from symcx.capture.inference import cache_tensors  # noqa: E402
from symcx.serving import G, L, P, inference  # noqa: E402


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64,
                                  attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def _llama_gqa():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100, attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg)


def _mistral_window():
    cfg = transformers.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=100, sliding_window=4,
                                     attn_implementation="eager")
    return transformers.MistralForCausalLM(cfg)


BUILDERS = {"gpt2": _gpt2, "llama-gqa": _llama_gqa, "mistral-window": _mistral_window}


@pytest.fixture(scope="module", params=list(BUILDERS))
def served(request):
    torch.manual_seed(0)
    model = BUILDERS[request.param]().eval()
    return request.param, model, inference(model, torch.zeros(1, 4, dtype=torch.long))


def _real(model, batch, prompt, steps):
    """FlopCounterMode's prefill count, each decode step's count, and the cache's bytes after each."""
    ids = torch.randint(0, 100, (batch, prompt))
    with torch.no_grad():
        with FlopCounterMode(display=False) as f:
            out = model(ids, use_cache=True)
        prefill, decode, cache_bytes = f.get_total_flops(), [], [sum(x.nbytes for x in cache_tensors(out.cache))]
        for _ in range(steps):
            with FlopCounterMode(display=False) as f:
                out = model(torch.randint(0, 100, (batch, 1)), cache=out.cache, use_cache=True)
            decode.append(f.get_total_flops())
            cache_bytes.append(sum(x.nbytes for x in cache_tensors(out.cache)))
    return prefill, decode, cache_bytes


@pytest.mark.slow
@pytest.mark.parametrize("batch, prompt", [(2, 6), (3, 9)])
def test_prefill_decode_and_cache_equal_a_real_run(served, batch, prompt):
    name, model, inf = served
    assert inf.unsupported == {}
    prefill, decode, cache_bytes = _real(model, batch, prompt, steps=3)
    assert inf.prefill_flops.subs({t: batch, L: prompt}) == prefill
    # decode step k (k = 0, 1, 2) runs after prompt + k cached tokens
    assert [inf.decode_flops.subs({t: batch, P: prompt + k}) for k in range(3)] == decode
    # the cache after the prefill and after each of the 3 decode steps: the real tensors' bytes
    assert [inf.kv_cache_bytes.subs({t: batch, P: prompt + k}) for k in range(4)] == cache_bytes
    # G = 3 new tokens: the closed-form sum equals the 3 measured decode steps
    assert inf.generate_flops(3).subs({t: batch, L: prompt}) == sum(decode)
    assert inf.generate_flops().subs({t: batch, L: prompt, G: 3}) == sum(decode)


def test_cache_shapes_come_from_the_trace(served):
    name, model, inf = served
    per_token = inf.bytes_per_token()
    cfg = model.config
    if name == "mistral-window":  # the window caps the cache: no growth past 4 tokens
        assert P not in inf.kv_cache_bytes.free_symbols and P not in inf.decode_flops.free_symbols
        return
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # 2 (key, value) × layers × KV heads × head dim × 4 B (fp32): GQA's 2 KV heads, not 4
    assert per_token == 2 * cfg.num_hidden_layers * kv_heads * head_dim * 4


def test_decode_is_bandwidth_bound_and_prefill_less_so(served):
    _, _, inf = served
    at = {t: 1, L: 32, P: 32}
    assert inf.arithmetic_intensity("decode").subs(at) < inf.arithmetic_intensity("prefill").subs(at)


def test_a_model_without_a_cache_is_refused():
    class NoCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, ids, use_cache=False):
            return self.emb(ids)

    with pytest.raises(symcx.SymcxError, match="no cache"):
        inference(NoCache(), torch.zeros(1, 4, dtype=torch.long))


def test_an_encoder_is_refused():
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                          intermediate_size=32, vocab_size=50))
    with pytest.raises(symcx.SymcxError, match="no decode step"):
        inference(bert, torch.zeros(1, 4, dtype=torch.long))


def test_zero_lengths_are_refused(served):
    _, _, inf = served
    with pytest.raises(symcx.SymcxError, match="positive"):
        inf.at(t=1, P=0)
    with pytest.raises(symcx.SymcxError, match="positive"):
        inf.at(t=1, L=0)


@pytest.mark.slow
def test_vllm_paged_cache_for_llama3_8b_on_an_a100():
    """vllm issue 12330: Llama-3-8B, bf16, A100-40GB: weights 14.96 GiB, KV budget 11.12 GiB → 5691 blocks."""
    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                   max_position_embeddings=8192, rope_theta=500000.0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    inf = inference(model, torch.zeros(1, 4, dtype=torch.long, device="meta"))
    assert inf.bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    assert round(float(inf.weight_bytes) / 2**30, 2) == 14.96
    assert 5691 * 16 * 131_072 / 2**30 == pytest.approx(11.115, abs=5e-4)  # what 5691 blocks hold
    # the log's 11.12 GiB is rounded to 0.01: the block count lands within that rounding
    assert abs(inf.kv_blocks("11.12GiB") - 5691) <= 3
    assert inf.kv_blocks(int(11.115 * 2**30)) == 5690  # 11.115 GiB is a hair under 5691 blocks' 11.11523


def test_largest_batch_and_context_for_a_budget(served):
    name, _, inf = served
    peak = inf.decode_peak_bytes
    budget = int(peak.subs({t: 5, P: 16}))  # exactly what 5 sequences of 16 cached tokens need
    assert inf.max_batch(budget, context=16) == 5
    assert peak.subs({t: 6, P: 16}) > budget
    if name != "mistral-window":
        assert inf.max_context(budget, batch=5) == 16
    assert inf.max_batch(1, context=16) == 0  # not even one sequence
