"""torch's ZeRO-1 (``ZeroRedundancyOptimizer``): whole parameters per rank (symcx.zero_partition)."""

from __future__ import annotations

import pytest
import torch

import symcx
from symcx.errors import SymcxError
from symcx.parallel import parallel_memory
from symcx.zero_partition import owned_params, state_owners


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    return symcx.analyze(model, torch.randn(2, 64), optimizer="adam")


def test_greedy_partition_by_size(mlp):
    # sizes 0.weight 8192, 2.weight 1280, 0.bias 128, 2.bias 10; largest first, each to the rank
    # with the fewest elements: 8192 → 0, 1280 → 1, 128 → 1 (1280 < 8192), 10 → 1
    assert owned_params(mlp.step, 2, 0) == {"0.weight"}
    assert owned_params(mlp.step, 2, 1) == {"0.bias", "2.weight", "2.bias"}
    assert set().union(*(owned_params(mlp.step, 4, r) for r in range(4))) == {"0.weight", "0.bias", "2.weight",
                                                                               "2.bias"}


def test_each_state_and_step_temporary_has_its_parameter(mlp):
    owners = state_owners(mlp.step)
    states = [v for v in mlp.step.nodes if v.phase == "state"]
    assert {owners[v.name] for v in states} == {"0.weight", "0.bias", "2.weight", "2.bias"}
    sqrt = [v for v in mlp.step.nodes if v.phase == "optimizer" and v.op == "aten.sqrt.default"]
    assert [owners[v.name] for v in sqrt] == ["0.weight", "0.bias", "2.weight", "2.bias"]  # Adam's for-loop order


def test_rank_holds_its_parameters_state_whole(mlp):
    # Adam: exp_avg and exp_avg_sq (4 B per element) and a 4-byte step per owned parameter
    r0 = parallel_memory(mlp.step, 2, "zero1", partition="params", rank=0)
    r1 = parallel_memory(mlp.step, 2, "zero1", partition="params", rank=1)
    assert r0.optimizer == 2 * 8192 * 4 + 4
    assert r1.optimizer == 2 * (128 + 1280 + 10) * 4 + 3 * 4
    # on DDP: the Reducer's buckets, a flat copy of all 9610 gradients, are resident on each rank
    flat = parallel_memory(mlp.step, 2, "zero1")
    assert r0.buffers == 9610 * 4 and flat.buffers == 0
    assert r0.resident - r0.optimizer == flat.resident - flat.optimizer + 9610 * 4


def test_bad_partition(mlp):
    with pytest.raises(SymcxError, match="partition must be"):
        parallel_memory(mlp.step, 2, "zero1", partition="rows")
    with pytest.raises(SymcxError, match="number of GPUs"):
        parallel_memory(mlp.step, symcx.g, "zero1", partition="params")
    with pytest.raises(SymcxError, match="strategy='zero1'"):
        parallel_memory(mlp.step, 2, "ddp", partition="params")
    with pytest.raises(SymcxError, match="rank must be one of 0..1"):
        parallel_memory(mlp.step, 2, "zero1", partition="params", rank=2)


@pytest.mark.slow
def test_each_rank_traced_with_its_own_optimizer_keeps_adams_loop_local():
    # ResNet-18 at 32x32: rank 0's share, largest first, opens with two 512x512x3x3 weights, and Adam's
    # for-loop keeps the first one's `denom` in its local until the second's is assigned: the rank's
    # own loop (rank_optimizer) holds those 512*512*3*3*4 bytes more at its peak than the model's
    # loop sized for rank 0 afterwards (real gloo ranks measured the former: docs/parallel.md)
    from symcx.zero_partition import rank_optimizer
    from symcx.zoo.models import ResNet18

    model, x = ResNet18(), torch.randn(2, 3, 32, 32)
    whole = parallel_memory(symcx.analyze(model, x, optimizer="adam").step, 2, "zero1", partition="params", rank=0)
    own = symcx.analyze(model, x, optimizer=rank_optimizer(2, 0)).step
    mine = parallel_memory(own, 2, "zero1", partition="params", rank=0)
    for batch in (2, 8):  # the peaks are Max(...) over candidate points in t
        assert (mine.peak - whole.peak).subs(symcx.t, batch) == 512 * 512 * 3 * 3 * 4
    assert mine.optimizer == whole.optimizer and mine.peak_phase == "optimizer"
    assert {v.param.rsplit(".", 1)[0] for v in own.nodes if v.phase == "state"} == owned_params(own, 2, 0)
