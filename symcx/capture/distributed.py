"""FSDP2's shard of each parameter at a concrete number of GPUs, read from ``fully_shard`` itself.

A copy of the model on the meta device is wrapped with ``torch.distributed.fsdp.fully_shard``
(each unit, then the root) under torch's fake process group of ``g`` ranks
(:func:`symcx._torch.fake_process_group`); rank 0's local shard (``DTensor.to_local()``)
has FSDP2's padded size, ``ceiling(dim0/g)`` rows. No memory is touched and no collective
runs. :func:`symcx.parallel.check_fsdp_shards` matches these sizes against its formula in g.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from .._torch import fake_process_group
from ..errors import SymcxError

__all__ = ["fsdp_shard_numels"]


def _units(model: torch.nn.Module, units: Sequence[str]) -> list[torch.nn.Module]:
    """The modules named ``units`` (the root ``""`` left out: it is wrapped last, as torch asks)."""
    named = dict(model.named_modules())
    missing = [u for u in units if u and u not in named]
    if missing:
        raise SymcxError(f"FSDP units {missing} are not modules of {type(model).__name__}")
    return [named[u] for u in units if u]


def fsdp_shard_numels(model: torch.nn.Module, gpus: int, units: Sequence[str] = ()) -> dict[str, int]:
    """Elements of rank 0's FSDP2 shard of every parameter on ``gpus`` ranks (its padded chunk).

    >>> import torch
    >>> fsdp_shard_numels(torch.nn.Linear(4, 5), 3)  # ceiling(5/3) = 2 rows of 4; bias 2
    {'weight': 8, 'bias': 2}
    """
    if not any(True for _ in model.parameters()):
        raise SymcxError(f"fully_shard has nothing to shard: {type(model).__name__} has no parameters")
    from torch.distributed.fsdp import fully_shard

    meta = copy.deepcopy(model).to("meta")
    try:
        with fake_process_group(gpus):
            for unit in _units(meta, units):
                fully_shard(unit)
            fully_shard(meta)
            return {name: p.to_local().numel() for name, p in meta.named_parameters()}
    except (RuntimeError, ValueError, TypeError) as err:
        raise SymcxError(f"cannot shard {type(model).__name__} with fully_shard on {gpus} GPUs: {err}") from err
