"""Real models that failed or were silently wrong (issue 17, the capture side).

Each case is a small module doing what the real model does, and where the class matters a
one- or two-layer Hugging Face model from a tiny config (random weights, no downloads), checked
against FlopCounterMode on a real training step (forward, then ``backward()`` of the summed
output), or for the precise error it must raise.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import symcx
from symcx.capture import default_loss
from symcx.errors import TraceError

from .conftest import fcm_forward_backward


def fcm_step(model: torch.nn.Module, *args, **kwargs) -> tuple[int, int]:
    """(forward, backward) FLOPs of a real step whose loss is symcx's default (every float output summed)."""
    with FlopCounterMode(display=False) as f:
        out = model(*args, **kwargs)
        forward = f.get_total_flops()
        default_loss(out).backward()
    return forward, f.get_total_flops() - forward


def flops_at(a: symcx.Analysis, **values: int) -> tuple[int, int]:
    at = a.subs(**values) if values else a
    return int(at.forward_flops), int(at.backward_flops)


# --- item 3: LayerDrop and other random branches -------------------------------------------------

class LayerDrop(torch.nn.Module):
    """Two linear layers; the second is skipped at random in training, as wav2vec2's LayerDrop."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 6), torch.nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if self.training and torch.rand([]) < 0.1:  # the random branch
            return x
        return self.b(x)


def test_random_branch_is_named_with_the_way_out():
    with pytest.raises(TraceError) as err:
        symcx.analyze(LayerDrop(), torch.randn(2, 4))
    text = str(err.value)
    assert "random draw" in text and "layerdrop=0" in text and "train=False" in text
    assert "torch.rand([]) < 0.1" in text  # the source line of the branch
    assert "test_real_models.py" in text


def test_random_branch_traces_in_eval_mode():
    model = LayerDrop().eval()
    a = symcx.analyze(model, torch.randn(2, 4), train=False)
    for batch in (3, 5):
        assert flops_at(a, t=batch) == fcm_forward_backward(model, torch.randn(batch, 4))


def test_a_data_dependent_branch_that_is_not_random_keeps_the_generic_message():
    class Branch(torch.nn.Module):
        def forward(self, x):
            x = torch.nn.functional.dropout(x, 0.1, training=True)  # random values, not a random branch
            return x if x.sum() > 0 else -x

    with pytest.raises(TraceError, match="data-dependent control flow: the model branches on, or reads"):
        symcx.analyze(Branch(), torch.randn(2, 4))


def _wav2vec2(layerdrop: float) -> torch.nn.Module:
    tf = pytest.importorskip("transformers")
    config = tf.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2, layerdrop=layerdrop, mask_time_prob=0.0, vocab_size=12,
    )
    return tf.Wav2Vec2ForCTC(config)


@pytest.mark.slow
def test_wav2vec2_layerdrop_is_named():
    with pytest.raises(TraceError) as err:
        symcx.analyze(_wav2vec2(0.1), torch.randn(2, 400))
    assert "random draw" in str(err.value) and "layerdrop=0" in str(err.value)


# --- item 9: inputs that get requires_grad inside the model --------------------------------------

class FeatureEncoder(torch.nn.Module):
    """wav2vec2's feature encoder in small: the raw input is made a leaf that needs a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = torch.nn.Conv1d(1, 4, 5, stride=2)
        self.conv1 = torch.nn.Conv1d(4, 4, 3, stride=2)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, None]
        if self.training:
            h.requires_grad = True  # as Wav2Vec2FeatureEncoder: so checkpointing has a grad input
        h = self.conv1(torch.relu(self.conv0(h)))
        return self.head(h.transpose(1, 2))


def test_leaf_made_in_the_forward_gets_its_gradient():
    model = FeatureEncoder()
    a = symcx.analyze(model, torch.randn(2, 41))
    for batch in (2, 5):
        # the grad-input convolution of conv0, 2·(t·4·19)·(1·5) FLOPs, is in FlopCounterMode's backward
        assert flops_at(a, t=batch) == fcm_forward_backward(model, torch.randn(batch, 41))


def test_grad_input_of_the_first_conv_only_where_the_model_asks_for_it():
    def first_conv_mask(a: symcx.Analysis) -> list[bool]:
        (v,) = [v for v in a.step.nodes if v.packet == "aten.convolution_backward" and v.module == "conv0"]
        return list(v.call["output_mask"])

    model = FeatureEncoder()
    assert first_conv_mask(symcx.analyze(model, torch.randn(2, 41))) == [True, True, True]
    eval_run = symcx.analyze(model, torch.randn(2, 41), train=False)  # eval: no requires_grad set
    assert first_conv_mask(eval_run) == [False, True, True]
    for batch in (2, 5):
        assert flops_at(eval_run, t=batch) == fcm_forward_backward(model.eval(), torch.randn(batch, 41))


@pytest.mark.slow
def test_wav2vec2_without_layerdrop_matches_flop_counter():
    model = _wav2vec2(0.0)
    a = symcx.analyze(model, torch.randn(2, 400))
    assert not a.unsupported, dict(a.unsupported)
    model.train()
    for batch in (2, 3):
        forward, backward = fcm_step(model, torch.randn(batch, 400))
        at = a.subs(t=batch)
        # FlopCounterMode counts the grouped positional conv's grad-weight twice (groups=2): that is
        # symcx's flop_counter_flops; the grad-input of the feature encoder's first conv is in both
        assert (at.forward_flops, at.flop_counter_flops("backward")) == (forward, backward)


# --- item 4: meta-device decoders with the default cache ------------------------------------------

def _llama_config():
    tf = pytest.importorskip("transformers")
    return tf, tf.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, use_cache=True,
    )


@pytest.mark.slow
def test_meta_llama_with_its_cache_counts_as_the_cpu_model():
    """DynamicCache makes ``torch.tensor([])`` on meta, which skips ``lift_fresh`` and was never faked."""
    tf, config = _llama_config()
    # eager attention on both: SDPA picks its kernel by device (the math path on meta, CPU flash on CPU)
    with torch.device("meta"):
        meta = tf.LlamaForCausalLM._from_config(config, attn_implementation="eager")
    cpu = tf.LlamaForCausalLM._from_config(config, attn_implementation="eager")
    example = torch.randint(0, 64, (2, 8))
    on_meta = symcx.analyze(meta, example, dims={"L": 1})
    on_cpu = symcx.analyze(cpu, example, dims={"L": 1})
    assert (on_meta.forward_flops, on_meta.backward_flops) == (on_cpu.forward_flops, on_cpu.backward_flops)
    cpu.train()
    for batch, length in ((2, 8), (3, 12)):
        ids = torch.randint(0, 64, (batch, length))
        assert flops_at(on_meta, t=batch, L=length) == fcm_step(cpu, input_ids=ids)


# --- item 5: caches inside the model's code -------------------------------------------------------

@functools.lru_cache(maxsize=4)
def relative_index(size: int) -> torch.Tensor:
    """A cached helper returning a tensor, as BEiT's ``generate_relative_position_index``."""
    pos = torch.arange(size)
    return (pos[:, None] - pos[None, :]) + size - 1


class RelativeBias(torch.nn.Module):
    """Attention-like scores plus a learned bias gathered through the cached index."""

    def __init__(self, size: int = 6, width: int = 4) -> None:
        super().__init__()
        self.size = size
        self.table = torch.nn.Parameter(torch.randn(2 * size - 1))
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        scores = h @ h.transpose(1, 2)
        return scores + self.table[relative_index(self.size)]


def test_real_run_after_analyze_with_a_cached_helper():
    relative_index.cache_clear()
    model = RelativeBias()
    a = symcx.analyze(model, torch.randn(2, 6, 4))
    for batch in (2, 3):  # a fake index left in the cache would fail here
        assert flops_at(a, t=batch) == fcm_forward_backward(model, torch.randn(batch, 6, 4))


def test_analyze_after_a_real_run_with_a_cached_helper():
    relative_index.cache_clear()
    model = RelativeBias()
    expected = {batch: fcm_forward_backward(model, torch.randn(batch, 6, 4)) for batch in (2, 3)}
    assert relative_index.cache_info().currsize == 1  # the real index is cached
    a = symcx.analyze(model, torch.randn(2, 6, 4))
    for batch in (2, 3):
        assert flops_at(a, t=batch) == expected[batch]
    model(torch.randn(2, 6, 4)).sum().backward()  # and the model still runs


def _beit():
    tf = pytest.importorskip("transformers")
    config = tf.BeitConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
        patch_size=8, num_labels=3, use_relative_position_bias=True,
    )
    return tf.BeitForImageClassification(config)


@pytest.mark.slow
def test_beit_relative_position_cache_both_orders():
    model = _beit()
    model.train()
    before = fcm_step(model, torch.randn(2, 3, 16, 16))  # fills the cache with a real index
    a = symcx.analyze(model, torch.randn(2, 3, 16, 16))
    assert flops_at(a, t=2) == before
    assert flops_at(a, t=3) == fcm_step(model.train(), torch.randn(3, 3, 16, 16))  # after: a real run again


# --- item 6: weights that pin the batch -----------------------------------------------------------

class PinnedBmm(torch.nn.Module):
    """PyTorch's test_flop_counter case: ``bmm`` with a parameter of batch 3."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3, 4, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, self.w)


class PinnedAddmm(torch.nn.Module):
    """PyTorch's test_flop_counter case: ``addmm`` with a (4, 6) bias, which fixes the rows at 4."""

    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.randn(4, 6))
        self.w = torch.nn.Parameter(torch.randn(5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b, x, self.w)


@pytest.mark.parametrize(("model", "example", "size", "by_hand"), [
    # forward 3·(2×4 @ 4×5) = 2·3·2·4·5; backward the grad of w only (x needs none), the same product
    (PinnedBmm(), torch.randn(3, 2, 4), 3, (2 * 3 * 2 * 4 * 5, 2 * 3 * 2 * 4 * 5)),
    (PinnedAddmm(), torch.randn(4, 5), 4, (2 * 4 * 5 * 6, 2 * 4 * 5 * 6)),  # (4×5 @ 5×6), then xᵀ·grad
], ids=["bmm", "addmm"])
def test_weight_that_pins_the_batch_is_traced_at_its_size(model, example, size, by_hand):
    with pytest.warns(UserWarning, match=f"the model fixes the batch at {size}.*batch_dim=None"):
        a = symcx.analyze(model, example)
    assert "t" not in a.symbols
    assert flops_at(a) == fcm_forward_backward(model, example) == by_hand
    assert f"the model fixes the batch at {size}" in a.route_note  # and so every report says it


def test_input_that_does_not_fit_keeps_its_shape_error():
    with pytest.raises(symcx.errors.ShapeError, match="does not fit"):
        symcx.analyze(PinnedBmm(), torch.randn(3, 2, 7))
