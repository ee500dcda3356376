"""Which optimizer state one rank holds under torch's ZeRO-1 (``ZeroRedundancyOptimizer``).

torch's ``torch.distributed.optim.ZeroRedundancyOptimizer`` does not split tensors: it gives
each trainable parameter whole to one rank, largest first, each to the rank with the fewest
elements so far (its ``_partition_parameters``), and that rank keeps the parameter's state and
runs its share of the optimizer step. :func:`owned_params` repeats that assignment;
:func:`state_owners` names the parameter each optimizer-state storage and optimizer-step
temporary of a traced step belongs to, so :mod:`symcx.parallel` can size them for one rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .step import Step

__all__ = ["owned_params", "state_owners", "rank_optimizer"]


def owned_params(step: Step, gpus: int, rank: int) -> frozenset[str]:
    """The trainable parameters ``rank`` of ``gpus`` steps under ``ZeroRedundancyOptimizer``.

    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4), optimizer="adam")
    >>> sorted(owned_params(a.step, 2, 0)), sorted(owned_params(a.step, 2, 1))  # 12 elements, then 3
    (['weight'], ['bias'])
    """
    params = [(v.param, int(v.out.numel)) for v in step.nodes if v.phase == "param" and v.param in step.trainable]
    return frozenset(name for name, _ in _share(params, lambda p: p[1], gpus, rank))


def _share(items: Sequence[Any], numel: Callable[[Any], int], gpus: int, rank: int) -> list[Any]:
    """``rank``'s items as ``ZeroRedundancyOptimizer._partition_parameters`` gives them, in its order:
    sorted largest first (stable, as torch's ``sorted``), each to the rank with the fewest elements so far."""
    sizes, mine = [0] * gpus, []
    for item in sorted(items, key=numel, reverse=True):
        to = sizes.index(min(sizes))
        sizes[to] += numel(item)
        if to == rank:
            mine.append(item)
    return mine


def rank_optimizer(gpus: int, rank: int, optimizer: type = torch.optim.Adam,
                   **kwargs: Any) -> Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]:
    """``analyze(..., optimizer=...)`` for one rank under torch's ZeRO-1: ``optimizer`` over that rank's
    share, in torch's order, as ``ZeroRedundancyOptimizer`` builds each rank's local optimizer.

    Traced so, the step's optimizer phase is the rank's own loop: a for-loop optimizer's locals
    (Adam's ``denom``) live from one of *its* parameters to the next, which the whole model's
    optimizer, sized per rank afterwards, cannot show.

    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4), optimizer=rank_optimizer(2, 1))
    >>> sorted({v.param.rsplit(".", 1)[0] for v in a.step.nodes if v.phase == "state"})
    ['bias']
    """
    def make(params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        return optimizer(_share(list(params), torch.Tensor.numel, gpus, rank), **kwargs)
    make.__name__ = f"{optimizer.__name__} (ZeRO-1 rank {rank} of {gpus})"
    return make


def state_owners(step: Step) -> dict[str, str]:
    """Node name → parameter for each optimizer-state input (``0.weight.exp_avg``) and each
    optimizer-phase op, by what it reads: a state or parameter, or an op already attributed."""
    owners: dict[str, str] = {}
    for v in step.nodes:
        if v.phase == "state" and v.param:  # named "<parameter>.<state key>", e.g. "0.weight.exp_avg"
            owners[v.name] = v.param.rsplit(".", 1)[0]
        elif v.phase == "param" and v.param:
            owners[v.name] = v.param
        elif v.phase == "optimizer":
            found = next((owners[i] for i in v.inputs if i in owners), None)
            if found is not None:
                owners[v.name] = found
    return {k: p for k, p in owners.items() if step.node(k).phase != "param"}
