"""FSDP2's per-GPU formula in g against rank 0's step traced through ``fully_shard`` itself
(symcx.capture.sharded: fake tensors, torch's fake process group, FSDP2's own collectives)."""

from __future__ import annotations

import pytest
import torch

import symcx
from symcx.capture.sharded import trace_fsdp_step
from symcx.errors import SymcxError
from symcx.parallel import check_fsdp_trace
from symcx.zoo import MnistCNN


def test_trace_of_one_linear_by_hand():
    # Linear(8, 6), the root the only unit, g = 2, per-GPU batch 4, Adam, all 4-byte floats.
    # Start of step: weight shard 3·8 + bias shard 3 = 27 floats (108 B); Adam's exp_avg and
    # exp_avg_sq of them (216 B) and two 4-byte step counters; the batch 4·8 (128 B): 460 B.
    # Peak, in the backward: unsharded params 2·27 floats (216 B), the kept output 4·6 (96 B),
    # the loss and its seed (4 + 4 B), weight grad 6·8 (192 B), bias grad 6 (24 B): 536 B.
    r = trace_fsdp_step(torch.nn.Linear(8, 6), torch.randn(2, 8), gpus=2, batch=4)
    assert (r.resident_bytes, r.peak_bytes) == (460, 536)
    assert r.collectives == ("c10d._allgather_base_.default", "c10d._reduce_scatter_base_.default")


@pytest.fixture(scope="module")
def cnn():
    return symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28), optimizer="adam")


@pytest.mark.slow
@pytest.mark.parametrize("reshard", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_seed_cnn_formula_equals_the_traced_rank_at_each_g(cnn, reshard):
    # the formula is built once in the symbol g and evaluated at g = 2, 3, 4 and checked at 8
    rows = cnn.check_fsdp(batch=2, reshard_after_forward=reshard)
    assert [r["gpus"] for r in rows] == [2, 3, 4, 8]
    for r in rows:
        assert r["traced_peak_bytes"] == r["predicted_peak_bytes"], r
        assert r["traced_resident_bytes"] == r["predicted_resident_bytes"], r
    # g = 3 pads fc1's 128 rows to 129: the unsharded storage FSDP2 resizes is padded too
    assert rows[1]["traced_peak_bytes"] > rows[0]["traced_peak_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("reshard", [True, False])
def test_resnet18_and_gpt_formulas_equal_the_traced_rank(reshard):
    from symcx.zoo.models import GPT, ResNet18

    for model, x in ((ResNet18(), torch.randn(2, 3, 32, 32)), (GPT(), GPT().example_input())):
        a = symcx.analyze(model, x, optimizer="adam")
        for batch in (2, 8):
            for r in a.check_fsdp(batch=batch, reshard_after_forward=reshard):
                assert (r["traced_peak_bytes"], r["traced_resident_bytes"]) == (
                    r["predicted_peak_bytes"], r["predicted_resident_bytes"]), (type(model).__name__, batch, r)


def test_a_mismatch_is_reported(cnn):
    class Wrong:  # a probe whose rank holds one byte more than the formula at its peak
        resident_bytes, peak_op = 0, "x"

        def __init__(self, gpus: int) -> None:
            m = cnn.memory(gpus=gpus, strategy="fsdp")
            self.resident_bytes = int(m.resident.subs(symcx.t, 2))
            self.peak_bytes = int((m.peak - m.resident).subs(symcx.t, 2)) + 1

    with pytest.raises(SymcxError, match="traced through fully_shard at g=2"):
        check_fsdp_trace(cnn.step, Wrong, 2)


def test_bad_input(cnn):
    with pytest.raises(SymcxError, match="nothing to shard"):
        trace_fsdp_step(torch.nn.ReLU(), torch.randn(2, 3), gpus=2, batch=2)
    with pytest.raises(SymcxError, match="not modules"):
        trace_fsdp_step(torch.nn.Linear(3, 3), torch.randn(2, 3), gpus=2, batch=2, units=["nope"])
    tied = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight  # FSDP2 refuses a parameter shared by two units
    with pytest.raises(SymcxError, match="FSDP2 cannot run Sequential on 2 GPUs .* shared"):
        trace_fsdp_step(tied, torch.randint(0, 10, (2, 3)), gpus=2, batch=2, units=["0"])
    plain = symcx.analyze(torch.nn.Linear(3, 3), torch.randn(2, 3))  # no optimizer traced
    with pytest.raises(SymcxError, match="optimizer"):
        plain.check_fsdp()


@pytest.mark.slow
def test_cli_check_trace(capsys):
    from symcx.cli import main

    assert main(["analyze", "mnist-cnn", "--gpus", "g", "--strategy", "fsdp", "--check-trace"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fully_shard traced")]
    assert [line.split(":")[0] for line in lines] == [f"fully_shard traced at g={k}" for k in (2, 3, 4, 8)]
    assert main(["analyze", "mnist-cnn", "--gpus", "2", "--strategy", "ddp", "--check-trace"]) == 2
    assert main(["analyze", "mnist-cnn", "--check-trace"]) == 2
