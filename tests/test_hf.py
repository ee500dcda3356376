"""Hugging Face models built from tiny configs with random weights (no downloads) against
FlopCounterMode: GPT-2, BERT and ViT, eager and SDPA attention, two batch sizes and two
sequence lengths, forward and backward; Llama, T5, Swin and ConvNeXt at two batch sizes.

With SDPA, GPT-2 and BERT pass an explicit mask, which sends attention down the unfused path
(``bmm`` + ``_safe_softmax``) that FlopCounterMode counts in full; ViT passes none and gets the
fused CPU flash kernel, which FlopCounterMode counts as 0, so there the oracle is
FlopCounterMode plus the attention formula by hand.
"""

from __future__ import annotations

import functools

import pytest
import sympy
import torch
from torch.utils.flop_counter import FlopCounterMode

import symcx
from symcx import t
from symcx.capture import default_loss

tf = pytest.importorskip("transformers")

IMPLS = ["eager", "sdpa"]
SIZES_TL = [(2, 8), (3, 12)]
VOCAB, WIDTH, HEADS, LAYERS, POSITIONS = 100, 64, 4, 2, 64

pytestmark = pytest.mark.slow  # Hugging Face models: each builds and traces a transformer


def fcm_step(model: torch.nn.Module, **inputs: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs FlopCounterMode counts on a real step, loss ``logits.sum()``.

    Without labels these models return only ``logits``, so this is symcx's default loss too.
    """
    model.train()
    with FlopCounterMode(display=False) as f:
        out = model(**inputs)
        forward = f.get_total_flops()
        out.logits.sum().backward()
    return forward, f.get_total_flops() - forward


def gpt2(impl: str):
    config = tf.GPT2Config(
        n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS, vocab_size=VOCAB, n_positions=POSITIONS,
        use_cache=False, bos_token_id=0, eos_token_id=0,
    )
    return tf.GPT2LMHeadModel._from_config(config, attn_implementation=impl)


def bert(impl: str):
    config = tf.BertConfig(
        num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=2 * WIDTH,
        vocab_size=VOCAB, max_position_embeddings=POSITIONS,
    )
    return tf.BertForSequenceClassification._from_config(config, attn_implementation=impl)


def vit(impl: str):
    config = tf.ViTConfig(
        num_hidden_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=2 * WIDTH,
        image_size=32, patch_size=8, num_labels=10,
    )
    return tf.ViTForImageClassification._from_config(config, attn_implementation=impl)


@functools.cache
def analyzed(build, impl: str) -> tuple[torch.nn.Module, symcx.Analysis]:
    """The model and its analysis, once per test session (text models with ``L`` symbolic)."""
    model = build(impl)
    if build is vit:
        a = symcx.analyze(model, torch.randn(2, 3, 32, 32))
    else:
        a = symcx.analyze(model, {"input_ids": torch.randint(0, VOCAB, (2, 16))}, dims={"L": 1})
    assert not a.unsupported, dict(a.unsupported)
    assert a.route == "symbolic"
    return model, a


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2", "bert"])
def test_text_models_match_flop_counter(build, impl):
    model, a = analyzed(build, impl)
    L = a.symbols["L"]
    # the score-matrix products, Q·Kᵀ and P·V, 2·t·L·L·WIDTH each per layer
    assert a.forward_flops.coeff(L, 2) == LAYERS * 2 * 2 * t * WIDTH
    for batch, length in SIZES_TL:
        forward, backward = fcm_step(model, input_ids=torch.randint(0, VOCAB, (batch, length)))
        at = a.subs(t=batch, L=length)
        assert (at.forward_flops, at.backward_flops) == (forward, backward)


def test_bert_formula_is_bounded_by_its_position_table():
    _, a = analyzed(bert, "eager")
    assert a.assumptions == [sympy.Le(a.symbols["L"], POSITIONS)]


@pytest.mark.parametrize("impl", IMPLS)
def test_vit_matches_flop_counter(impl):
    model, a = analyzed(vit, impl)
    for batch in (2, 3):
        forward, backward = fcm_step(model, pixel_values=torch.randn(batch, 3, 32, 32))
        at = a.subs(t=batch)
        if impl == "sdpa":
            # fused CPU flash attention, counted 0 by FlopCounterMode: 16 patches + [CLS] = 17
            # positions; per layer forward Q·Kᵀ and P·V, backward five such products
            one = 2 * batch * 17 * 17 * WIDTH
            assert (at.flop_counter_flops("forward"), at.flop_counter_flops("backward")) == (forward, backward)
            forward, backward = forward + LAYERS * 2 * one, backward + LAYERS * 5 * one
        assert (at.forward_flops, at.backward_flops) == (forward, backward)


def test_gpt2_rows_keep_module_names():
    _, a = analyzed(gpt2, "eager")
    rows = {r.name: r for r in a.layers}
    L = a.symbols["L"]
    c_attn = rows["transformer.h.0.attn.c_attn"]  # GPT-2's Conv1D: WIDTH -> 3·WIDTH per token
    assert c_attn.type == "Conv1D"
    assert c_attn.forward_flops == 2 * t * L * WIDTH * 3 * WIDTH
    assert rows["lm_head"].forward_flops == 2 * t * L * WIDTH * VOCAB


def llama():
    config = tf.LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=POSITIONS,
    )
    return tf.LlamaForCausalLM(config), lambda batch: {"input_ids": torch.randint(0, VOCAB, (batch, 12))}


def t5():
    config = tf.T5Config(d_model=32, d_ff=64, num_layers=LAYERS, num_heads=4, d_kv=8, vocab_size=VOCAB)
    return tf.T5ForConditionalGeneration(config), lambda batch: {
        "input_ids": torch.randint(0, VOCAB, (batch, 12)), "decoder_input_ids": torch.randint(0, VOCAB, (batch, 7)),
    }


def swin():
    config = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)
    return tf.SwinModel(config), lambda batch: {"pixel_values": torch.randn(batch, 3, 32, 32)}


def convnext():
    config = tf.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])
    return tf.ConvNextModel(config), lambda batch: {"pixel_values": torch.randn(batch, 3, 32, 32)}


@pytest.mark.parametrize("build", [llama, t5, swin, convnext], ids=["llama", "t5", "swin", "convnext"])
def test_more_families_count_what_flop_counter_counts(build):
    """RoPE + grouped-query attention + RMSNorm + SiLU (Llama), encoder-decoder with relative
    position bias (T5), shifted-window attention (Swin), depthwise conv + channels-last LayerNorm
    (ConvNeXt): symcx's FlopCounterMode total equals a real step's at two batch sizes, nothing
    unsupported."""
    torch.manual_seed(0)
    model, inputs = build()
    model.train()
    a = symcx.analyze(model, inputs(2))
    assert not a.unsupported, dict(a.unsupported)
    assert a.route == "symbolic"
    for batch in (2, 3):
        example = inputs(batch)
        with FlopCounterMode(display=False) as f:
            out = model(**example)
            forward = f.get_total_flops()
            default_loss(out).backward()
        model.zero_grad(set_to_none=True)
        at = a.subs(t=batch)
        assert (at.flop_counter_flops("forward"), at.flop_counter_flops("backward")) == (
            forward, f.get_total_flops() - forward
        )


def test_gradient_checkpointing_counts_the_recompute():
    """``gradient_checkpointing_enable()``: each block's forward runs again in the backward, which
    FlopCounterMode counts there; symcx's totals follow, and fewer activations are saved."""
    torch.manual_seed(0)
    plain, ckpt = gpt2("eager"), gpt2("eager")
    ckpt.load_state_dict(plain.state_dict())
    # transformers 5 renamed it (the old name warns); older versions have only the old one
    (getattr(ckpt, "activation_checkpointing_enable", None) or ckpt.gradient_checkpointing_enable)()
    ids = {"input_ids": torch.randint(0, VOCAB, (2, 8))}
    a_plain, a_ckpt = symcx.analyze(plain.train(), ids), symcx.analyze(ckpt.train(), ids)
    assert not a_ckpt.unsupported
    for batch in (2, 3):
        forward, backward = fcm_step(ckpt, input_ids=torch.randint(0, VOCAB, (batch, 8)))
        at = a_ckpt.subs(t=batch)
        assert (at.forward_flops, at.backward_flops) == (forward, backward)
    assert a_ckpt.forward_flops == a_plain.forward_flops
    assert a_ckpt.memory().activations < a_plain.memory().activations


def test_named_length_is_shared_by_mask_and_token_types():
    """``dims={"L": 1}`` makes dim 1 symbolic in every input of the ids' rank and length (the
    attention mask and token types too), so the inputs keep fitting each other."""
    torch.manual_seed(0)
    model = bert("eager")
    model.train()

    def inputs(batch, length):
        return {
            "input_ids": torch.randint(0, VOCAB, (batch, length)),
            "attention_mask": torch.ones(batch, length, dtype=torch.long),
            "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        }

    shared = symcx.analyze(model, inputs(2, 10), dims={"L": 1})
    explicit = symcx.analyze(model, inputs(2, 10), dims={"L": [(0, 1), (1, 1), (2, 1)]})
    assert shared.route == explicit.route == "symbolic"
    assert shared.forward_flops == explicit.forward_flops
    for batch, length in SIZES_TL:
        forward, backward = fcm_step(model, **inputs(batch, length))
        at = shared.subs(t=batch, L=length)
        assert (at.forward_flops, at.backward_flops) == (forward, backward)
