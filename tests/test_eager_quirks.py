"""Memory that eager kernels allocate beyond the op's shapes: CPU dropout's float mask, oneDNN's
LSTM workspace, the cache a decoder's output holds.

Each predicted training peak is checked against the live-tensor tracker on a real iteration
(bytes allocated while it runs, against the predicted peak less what is resident before it).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import symcx
from symcx.errors import SymcxError
from symcx.validation.live_bytes import measure_peak_bytes
from symcx.zoo.models import LSTMClassifier

transformers = pytest.importorskip("transformers")


def _loss(out):
    tensors = out.values() if isinstance(out, dict) else [out]
    return sum(v.sum() for v in tensors if isinstance(v, torch.Tensor) and v.is_floating_point())


def measured(model: nn.Module, batch) -> int:
    """Bytes one SGD iteration allocates; the output kept to its end, as a training loop's ``out``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def iteration():
        out = model(**batch) if isinstance(batch, dict) else model(batch)
        _loss(out).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    iteration()
    return measure_peak_bytes(iteration)


def predicted(a: symcx.Analysis, t: int) -> int:
    mem = a.subs(t=t).memory()
    return int(mem.peak - mem.resident)


@functools.cache
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, vocab_size=500, max_position_embeddings=64)
    model = transformers.BertModel(config).train()
    return model, symcx.analyze(model, {"input_ids": torch.randint(0, 500, (2, 32))}, optimizer="sgd")


@functools.cache
def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=500, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).train()
    return model, symcx.analyze(model, {"input_ids": torch.randint(0, 500, (2, 32))}, optimizer="sgd")


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 8])
def test_cpu_dropout_keeps_a_float_mask_as_eager_does(t):
    # BERT in train mode: eager CPU dropout keeps a float32 mask per dropout (Dropout.cpp),
    # four times the bool mask of native_dropout that the python dispatcher would trace
    model, a = bert()
    assert any(n.packet == "aten.bernoulli_" for n in a.step.nodes)
    assert not any(n.packet == "aten.native_dropout" for n in a.step.nodes)
    got = measured(model, {"input_ids": torch.randint(0, 500, (t, 32))})
    assert predicted(a, t) == got


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 8])
def test_a_decoder_output_keeps_its_key_value_cache(t):
    # GPT-2 with use_cache=True returns a DynamicCache of per-layer keys and values: the loop's
    # `out` holds them to the end of the iteration (and an `aten.ones` in the forward, the causal
    # mask's, is a temporary, not the backward's seed)
    model, a = gpt2()
    got = measured(model, {"input_ids": torch.randint(0, 500, (t, 32))})
    assert predicted(a, t) == got


def test_lstm_workspace_is_flagged_and_max_batch_size_refuses():
    # oneDNN's LSTM workspace has no size rule (the meta kernel makes it empty): flagged, never
    # a silent under-prediction, and the largest batch that fits is not answered
    a = symcx.analyze(LSTMClassifier(), torch.randn(2, 20, 16), optimizer="sgd")
    mem = a.memory()
    assert mem.not_modelled and "aten.mkldnn_rnn_layer" in mem.not_modelled[0]
    assert "workspace" in mem.not_modelled[0]
    with pytest.raises(SymcxError, match="cannot be sized"):
        a.max_batch_size("64MiB")


@pytest.mark.slow
def test_a_gru_has_no_unsized_workspace():
    # eager CPU runs GRU as per-step cells (oneDNN RNN is LSTM only): nothing is flagged
    a = symcx.analyze(LSTMClassifier(cell="gru", layers=1, bidirectional=False), torch.randn(2, 5, 16))
    assert a.memory().not_modelled == ()
    assert a.max_batch_size("64MiB") > 0
