"""Issue 17, items 12 and 13 on Hugging Face models built from tiny configs: no false bound on the
batch, the position table's bound on L (GPT-2, OPT's offset table), readable divisibility (Mamba2),
and every formula exact against FlopCounterMode at two sizes per symbol.
"""

from __future__ import annotations

import pytest
import sympy
import torch

import symcx
from symcx import symbol, t

from .test_real_models import fcm_step

tf = pytest.importorskip("transformers")

L = symbol("L")


def _exact(a: symcx.Analysis, model: torch.nn.Module, sizes: list[tuple[int, int]], vocab: int = 64) -> None:
    """The analysis equals FlopCounterMode's count of a real step at each (t, L) (FlopCounterMode's
    own view for the backward, where it overcounts a grouped convolution's grad-weight)."""
    model.train()
    for batch, length in sizes:
        at = a.subs(t=batch, L=length)
        expected = fcm_step(model, torch.randint(0, vocab, (batch, length)))
        assert (int(at.forward_flops), int(at.flop_counter_flops("backward"))) == expected


def _no_batch_bound(a: symcx.Analysis) -> None:
    assert not any(c.free_symbols == {t} for c in a.assumptions), a.assumptions


@pytest.mark.slow
def test_gpt2_carries_its_position_bound():
    config = tf.GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=40, bos_token_id=0,
                           eos_token_id=0)
    model = tf.GPT2LMHeadModel._from_config(config, attn_implementation="eager")
    a = symcx.analyze(model, torch.randint(0, 64, (2, 8)), dims={"L": 1})
    assert sympy.Le(L, 40) in a.assumptions  # wpe(arange(L)) into n_positions = 40 rows
    _no_batch_bound(a)
    _exact(a, model, [(2, 8), (3, 12), (16, 8)])


@pytest.mark.slow
def test_opt_carries_its_position_bound_through_the_offset():
    config = tf.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                          max_position_embeddings=40, word_embed_proj_dim=16)
    model = tf.OPTForCausalLM._from_config(config, attn_implementation="eager")
    a = symcx.analyze(model, torch.randint(0, 64, (2, 8)), dims={"L": 1})
    # positions cumsum(mask) − 1 + 2 (OPT's offset) index a table of 40 + 2 rows: L + 1 ≤ 41
    assert sympy.Le(L, 40) in a.assumptions
    _no_batch_bound(a)
    _exact(a, model, [(2, 8), (3, 12), (16, 8)])


@pytest.mark.slow
def test_mamba2_keeps_no_batch_bound_and_reads_its_divisibility():
    config = tf.Mamba2Config(vocab_size=64, hidden_size=16, state_size=8, num_heads=4, head_dim=8, expand=2,
                             n_groups=1, num_hidden_layers=1, chunk_size=8, use_cache=False)
    model = tf.Mamba2ForCausalLM(config)
    a = symcx.analyze(model, torch.randint(0, 64, (2, 16)), dims={"L": 1})
    _no_batch_bound(a)
    assert any(c.free_symbols == {t} for c in a.dropped_guards)  # the t <= 15 was tested and dropped
    # chunks of 8: L a multiple of 8, and more than one chunk (L = 8q, q ≥ 2)
    assert sorted(map(str, a.assumptions)) == ["Eq(Mod(L, 8), 0)", "L >= 16"]
    _exact(a, model, [(2, 16), (16, 24), (20, 32)])
