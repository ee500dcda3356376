"""The iteration as users run it: gradient accumulation, ``set_to_none=False``, precision, checkpointing.

Every predicted peak is checked against the live-tensor tracker on the real iteration the setup
describes (its bytes allocated while it runs, against the predicted peak less what is resident
before it starts), never against symcx's own output.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx.checkpointing import checkpoint_blocks
from symcx.validation.live_bytes import measure_peak_bytes
from symcx.zoo import MnistCNN
from symcx.zoo.models import ResNet18

from .test_iteration import BIG as REAL
from .test_iteration import _call

SGD = functools.partial(torch.optim.SGD, lr=0.01)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))


def iteration_bytes(model: nn.Module, x, make=SGD, *, accumulate: int = 1, set_to_none: bool = True,
                    forward=contextlib.nullcontext, scaler: bool = False, step: str = "steady") -> int:
    """Bytes one real iteration allocates: ``accumulate`` micro-steps (only the last one's output
    kept to the end, as a loop that rebinds ``out``), then the optimizer's step and ``zero_grad``."""
    model.zero_grad(set_to_none=True)
    opt = make(model.parameters())
    amp = torch.amp.GradScaler("cpu") if scaler else None

    def one():
        for k in range(accumulate):
            with forward():
                out, loss = _call(model, x)
            (amp.scale(loss) if amp else loss).backward()
            if k < accumulate - 1:
                del out
        if amp:
            amp.unscale_(opt)
        opt.step()
        if amp:
            amp.update()
        opt.zero_grad(set_to_none=set_to_none)

    if step == "steady":
        one()
    return measure_peak_bytes(one)


def predicted(a: symcx.Analysis, t: int, step: str = "steady") -> int:
    mem = a.subs(t=t).memory(step=step)
    return int(mem.peak - mem.resident)


# --- gradient accumulation and set_to_none=False -----------------------------------------
@pytest.mark.parametrize("accumulate", [2, 3])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_accumulation_peak_is_the_whole_iteration(accumulate, set_to_none):
    torch.manual_seed(0)
    model = mlp()
    a = symcx.analyze(model, torch.randn(2, 784), optimizer=SGD, accumulate=accumulate, set_to_none=set_to_none)
    for t in (1, 64):
        got = iteration_bytes(model, torch.randn(t, 784), accumulate=accumulate, set_to_none=set_to_none)
        assert abs(predicted(a, t) - got) <= 16, (accumulate, set_to_none, t, predicted(a, t), got)


def test_accumulation_holds_one_gradient_more_than_a_plain_step_while_it_lasts():
    # the second micro-step's backward runs with the first one's gradients allocated: for SGD on
    # this MLP its peak is the plain step's plus the gradient bytes of the layers already done
    torch.manual_seed(0)
    model = mlp()
    plain = symcx.analyze(model, torch.randn(2, 784), optimizer=SGD)
    acc = symcx.analyze(model, torch.randn(2, 784), optimizer=SGD, accumulate=4)
    assert predicted(acc, 8) > predicted(plain, 8)
    assert acc.forward_flops == plain.forward_flops  # FLOPs stay per micro-batch
    assert "4 micro-batches" in acc.route_note


def test_set_to_none_false_keeps_gradients_resident():
    torch.manual_seed(0)
    model = mlp()
    a = symcx.analyze(model, torch.randn(2, 784), optimizer=SGD, set_to_none=False)
    mem = a.memory()
    params = sum(p.numel() * 4 for p in model.parameters())
    assert mem.held_grads == params  # allocated before the step, zeroed in place by the last one
    assert a.memory(step="first").held_grads == 0  # the very first iteration finds none


@pytest.mark.parametrize("bad, match", [
    (dict(accumulate=0), "whole number of micro-steps"),
    (dict(accumulate=2.5, optimizer="sgd"), "whole number of micro-steps"),
    (dict(accumulate=2), "give optimizer="),
    (dict(set_to_none=False), "give the optimizer too"),
    (dict(precision="fp8"), "unknown precision 'fp8'"),
    (dict(precision=torch.int8), "floating-point type"),
])
def test_bad_iterations_are_refused(bad, match):
    with pytest.raises(symcx.SymcxError, match=match):
        symcx.analyze(nn.Linear(4, 3), torch.randn(2, 4), **bad)


# --- precision ---------------------------------------------------------------------------
@functools.cache
def seed_model() -> nn.Module:
    torch.manual_seed(0)
    return MnistCNN()


@pytest.mark.parametrize("t", [1, 32])
def test_bf16_autocast_shorthand_is_exact(t):
    model = seed_model()
    a = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD, precision="bf16-autocast")
    got = iteration_bytes(model, torch.randn(t, 1, 28, 28),
                          forward=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert predicted(a, t) == got


def test_analysing_inside_the_users_autocast_block_is_the_shorthand():
    model = seed_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD)
    shorthand = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD, precision="bf16-autocast")
    assert inside.memory().peak == shorthand.memory().peak
    got = iteration_bytes(model, torch.randn(8, 1, 28, 28), forward=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert predicted(inside, 8) == got


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 32])
def test_fp16_autocast_with_grad_scaler(t):
    model = seed_model()
    a = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD, precision="fp16-autocast")
    assert any(n.packet == "aten._amp_foreach_non_finite_check_and_unscale_" for n in a.step.nodes)
    assert not a.unsupported
    got = iteration_bytes(model, torch.randn(t, 1, 28, 28), scaler=True,
                          forward=lambda: torch.autocast("cpu", dtype=torch.float16))
    assert abs(predicted(a, t) - got) <= 8, (predicted(a, t), got)  # GradScaler's scalars


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 32])
def test_bf16_parameters_and_memory_dtype_are_traced(t):
    model = seed_model()
    cast = MnistCNN()
    cast.load_state_dict(model.state_dict())
    cast = cast.to(torch.bfloat16)
    got = iteration_bytes(cast, torch.randn(t, 1, 28, 28, dtype=torch.bfloat16))
    a = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD, precision="bf16")
    assert predicted(a, t) == got
    retraced = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD).subs(t=t).memory(dtype=torch.bfloat16)
    assert retraced.dtype == "bfloat16" and retraced.peak - retraced.resident == got
    assert next(model.parameters()).dtype == torch.float32  # the user's model is not touched


# --- the real models (test_iteration's BIG): autocast bf16 and checkpointing within 2%
@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
@pytest.mark.parametrize("setup", ["bf16-autocast", "checkpoint"])
def test_real_models_autocast_and_checkpointing_within_2_percent(name, setup):
    build, make_input = REAL[name]
    torch.manual_seed(0)
    model = build()
    forward = contextlib.nullcontext
    if setup == "checkpoint":
        checkpoint_blocks(model)
        a = symcx.analyze(model, make_input(2), optimizer="adam")
    else:
        a = symcx.analyze(model, make_input(2), optimizer="adam", precision="bf16-autocast")
        forward = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    for t in (1, 8, 32):
        got = iteration_bytes(model, make_input(t), torch.optim.Adam, forward=forward)
        assert abs(predicted(a, t) - got) <= 0.02 * got, (name, setup, t, predicted(a, t), got)


def test_checkpoint_blocks_wraps_each_block_and_refuses_a_model_without_blocks():
    model = ResNet18(num_classes=10)
    assert checkpoint_blocks(model).startswith("torch.utils.checkpoint around 8 blocks (layer1.0, layer1.1")
    with pytest.raises(symcx.SymcxError, match="no blocks to checkpoint"):
        checkpoint_blocks(MnistCNN())


# --- the CLI -----------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "symcx", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_precision_accumulate_and_checkpoint():
    run = _cli("analyze", "mlp", "--optimizer", "AdamW:lr=1e-3", "--precision", "bf16-autocast",
               "--accumulate", "4", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert "bf16-autocast" in run.stdout and "4 micro-batches" in run.stdout  # the route note
    run = _cli("analyze", "resnet18", "--checkpoint", "--input", "3x64x64", "--format", "json")
    assert run.returncode == 0, run.stderr
    assert "checkpointing: torch.utils.checkpoint around 8 blocks" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [("--precision", "fp8"), ("--accumulate", "0"), ("--optimizer", "Adam:betas_x=1")])
def test_cli_bad_iteration_arguments_exit_2(args):
    run = _cli("analyze", "mlp", *args)
    assert run.returncode == 2 and "error" in run.stderr, run.stderr


# --- a readable peak ---------------------------------------------------------------------
@pytest.mark.slow
def test_llama_70b_peak_prints_in_few_pieces_and_equals_the_unpruned_max():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                      num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                                      max_position_embeddings=4096)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    a = symcx.analyze(model, {"input_ids": torch.zeros(2, 16, dtype=torch.long, device="meta")}, dims={"L": 1})
    mem = a.memory()
    (peak_max,) = mem.peak.atoms(sympy.Max)  # resident bytes + Max(pieces)
    assert 1 < len(mem.candidates) <= 8 and len(peak_max.args) == len(mem.candidates)
    at = {symcx.t: 1, symcx.symbol("L"): 4096}
    # every point of the walk (forward, backward, the modelled optimizer step), none pruned
    unpruned = max(int(b.subs(at)) for _, _, b in symcx.memory.memory_timeline(a.step))
    assert int(mem.peak.subs(at)) == unpruned


def test_a_deep_stack_of_identical_blocks_keeps_only_the_ends_of_its_lines():
    # each block's backward adds its gradients and frees its activations: one point per block on a
    # line; the inner points are never the largest, so the peak keeps few pieces, whatever the depth
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)) for _ in range(12)])
    a = symcx.analyze(model, torch.randn(2, 64))
    mem, curve = a.memory(), symcx.memory.memory_timeline(a.step)
    for t in (1, 7, 100, 10**5):
        assert int(mem.peak.subs(symcx.t, t)) == max(int(b.subs(symcx.t, t)) for _, _, b in curve)
    assert len(mem.candidates) <= 4


def test_bytes_at_the_peak_by_dtype_add_up_to_the_peak():
    # bf16 autocast: the bf16 weight copies and activations beside the fp32 parameters and grads
    model = seed_model()
    mem = symcx.analyze(model, torch.randn(2, 1, 28, 28), optimizer=SGD,
                        precision="bf16-autocast").subs(t=8).memory()
    by_dtype = dict(mem.peak_by_dtype)
    assert set(by_dtype) >= {"bfloat16", "float32"}
    assert sum(by_dtype.values()) == mem.peak
    # the fp32 part holds at least the parameters, resident through the step: 4 B · 1,199,882
    assert by_dtype["float32"] >= 4 * sum(p.numel() for p in model.parameters())
