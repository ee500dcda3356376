"""Per-GPU memory and communication under DDP, ZeRO-1/2 and FSDP2 (symcx.parallel)."""

from __future__ import annotations

import json
import math

import pytest
import sympy
import torch

import symcx
from symcx.capture.distributed import fsdp_shard_numels
from symcx.cli import main
from symcx.errors import SymcxError
from symcx.parallel import fsdp_shard_numel

g, t = symcx.g, symcx.t


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


@pytest.fixture(scope="module")
def mlp():
    return symcx.analyze(_mlp(), torch.randn(2, 64), optimizer="adam")


@pytest.mark.parametrize("strategy", ["zero1", "zero2"])
def test_g_formula_at_one_gpu_is_the_single_device_peak(mlp, strategy):
    single = mlp.memory()
    for gpus in (1, g):
        m = mlp.memory(gpus=gpus, strategy=strategy)
        for batch in (1, 2, 8, 33, 100, 129, 10**6):  # both peaks are a Max of lines in t; equal everywhere
            assert m.peak.subs({g: 1, t: batch}) == single.peak.subs(t, batch)
        assert m.subs({g: 1}).model_states == single.params + single.grads + single.optimizer


def test_ddp_at_one_gpu_adds_its_gradient_buckets(mlp):
    # DDP's Reducer keeps a flat copy of every gradient (gradient_as_bucket_view=False): 9610 params · 4 B
    single, ddp = mlp.memory(), mlp.memory(gpus=1, strategy="ddp")
    for batch in (1, 8, 100, 10**6):
        assert ddp.peak.subs(t, batch) - single.peak.subs(t, batch) == 9610 * 4


def test_fsdp_params_are_padded_dim0_shards(mlp):
    # 0.weight (128, 64), 0.bias (128,), 2.weight (10, 128), 2.bias (10,) at g = 3, 4 B each:
    # ceil(128/3)·64 + ceil(128/3) + ceil(10/3)·128 + ceil(10/3) = 43·65 + 4·129 = 3311 elements
    m = mlp.memory(gpus=3, strategy="fsdp")
    assert m.params == 3311 * 4 == m.grads
    assert mlp.memory(gpus=g, strategy="fsdp").params.subs(g, 3) == m.params


def test_fsdp_shard_sizes_come_from_fully_shard():
    # fully_shard under the fake process group: rank 0 holds ceil(dim0/g) rows
    model = _mlp()
    for gpus in (2, 3, 5, 7):
        seen = fsdp_shard_numels(model, gpus, ["0", "2"])
        for name, p in model.named_parameters():
            assert seen[name] == math.ceil(p.shape[0] / gpus) * (p.numel() // p.shape[0])
            assert seen[name] == fsdp_shard_numel(tuple(p.shape), gpus)


def test_zero1_shards_only_the_optimizer_state(mlp):
    # Adam: exp_avg and exp_avg_sq of 9610 float32 params, flat shards ceil(numel/g) per tensor, + 4 step scalars
    m = mlp.memory(gpus=4, strategy="zero1")
    shards = sum(math.ceil(n / 4) for n in (8192, 128, 1280, 10))
    assert m.optimizer == 2 * 4 * shards + 4 * 4
    assert m.params == m.grads == 9610 * 4


def test_fsdp_peak_names_its_node_and_phase(mlp):
    m = mlp.memory(gpus=2, strategy="fsdp")
    assert m.peak_phase in ("forward", "backward", "optimizer") and m.peak_node
    at = m.subs({t: 16})
    assert at.peak == max(e for _, e in at.candidates)


def test_communication_ring_volumes(mlp):
    grads = 9610 * 4
    assert mlp.communication(8, "ddp").all_reduce == 2 * 7 * grads // 8  # ring all-reduce: 2(g-1)/g·B
    z = mlp.communication(2, "zero2")
    flat = sum(math.ceil(n / 2) for n in (8192, 128, 1280, 10)) * 4
    assert z.reduce_scatter == flat == z.all_gather  # (g-1)·shard, g = 2
    f = mlp.communication(2, "fsdp")
    # units 0 and 2 all-gathered before forward and again before backward: 2·(g-1)·their padded shards
    shard = (64 * 64 + 64 + 5 * 128 + 5) * 4
    assert f.all_gather == 2 * shard and f.reduce_scatter == shard
    kept = mlp.communication(2, "fsdp", reshard_after_forward=False)  # gathered once, kept to the backward
    assert kept.all_gather == shard and kept.reduce_scatter == shard


def test_training_totals_take_the_global_batch(mlp):
    tr = mlp.training(gpus=g)
    assert tr.global_batch == g * t
    assert tr.steps_per_epoch == sympy.ceiling(symcx.N / (g * t))
    assert tr.flops_per_step == g * mlp.step_flops


def test_zero_paper_figure_one():
    # Rajbhandari et al., ZeRO, Fig. 1: Ψ = 7.5B, N = 64, mixed-precision Adam (K = 12):
    # DDP (2+2+K)Ψ = 120 GB; ZeRO-1 4Ψ + KΨ/N = 31.4; ZeRO-2 2Ψ + (2+K)Ψ/N = 16.6; ZeRO-3 (2+2+K)Ψ/N = 1.9
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(a, b, bias=False)
                                      for a, b in ((25000, 75000), (75000, 25000)) * 2])
    a = symcx.analyze(model, torch.randn(2, 25000, device="meta"), optimizer="adam")
    assert a.params == 7_500_000_000
    want = {"ddp": 120.0, "zero1": 31.4, "zero2": 16.6, "fsdp": 1.9}
    got = {s: round(float(a.memory(gpus=64, strategy=s, precision="mixed").model_states) / 1e9, 1) for s in want}
    assert got == want


@pytest.mark.parametrize("gpus", [0, -1, 1.5, True, "2"])
def test_bad_gpus(mlp, gpus):
    with pytest.raises(SymcxError, match="gpus must be"):
        mlp.memory(gpus=gpus, strategy="ddp")


def test_bad_strategy_and_no_parameters(mlp):
    with pytest.raises(SymcxError, match="strategy must be one of"):
        mlp.memory(gpus=2, strategy="zero4")
    with pytest.raises(SymcxError, match="not modules"):
        mlp.memory(gpus=2, strategy="fsdp", units=["encoder"])
    bare = symcx.analyze(torch.nn.Flatten(), torch.randn(2, 3, 4))
    with pytest.raises(SymcxError, match="no (trainable )?parameters"):
        bare.memory(gpus=2, strategy="fsdp")
    with pytest.raises(SymcxError, match="no parameters"):
        fsdp_shard_numels(torch.nn.Flatten(), 2)


def test_cli_gpus(capsys):
    assert main(["analyze", "mnist-cnn", "--gpus", "2", "--strategy", "zero2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "zero2" and out["gpus"] == "2" and out["peak_phase"]
    for bad in (["--gpus", "0"], ["--gpus", "2", "--strategy", "zero9"], ["--gpus", "x"]):
        with pytest.raises(SystemExit) as exit_:
            main(["analyze", "mnist-cnn", *bad])
        assert exit_.value.code == 2
