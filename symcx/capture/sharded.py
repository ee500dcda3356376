"""One rank's FSDP2 training step traced through ``fully_shard`` itself, and its live bytes walked.

A copy of the model with fake parameters (torch's ``FakeTensorMode``: no memory, no data) is
wrapped with ``torch.distributed.fsdp.fully_shard`` (each unit, then the root) on a device mesh
of ``g`` ranks of torch's fake process group (:func:`symcx._torch.fake_process_group`), and the
step runs: forward, ``default_loss(out).backward()`` (the output kept to the step's end), Adam
on this rank's local shards. FSDP2's own all-gathers and reduce-scatters run as the c10d ops
they are (``c10d._allgather_base_``, ``c10d._reduce_scatter_base_``; the fake backend returns at
once). A ``TorchDispatchMode`` sees every op and counts each new storage until it dies; FSDP2
grows and frees its unsharded parameters with ``untyped_storage().resize_()``, which no dispatch
mode sees, so that method is wrapped while the step runs, as torch's own ``MemTracker`` does.
The result is the peak of bytes live above the step's start, the convention of
:func:`symcx.validation.distributed.validate_distributed`, at one concrete g and batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .._torch import FakeTensorMode, TorchDispatchMode, fake_process_group, op_names, tree_leaves, tree_map
from ..errors import SymcxError
from .fsdp_policy import torch_mp_policy
from .trace import default_loss

__all__ = ["RankTrace", "trace_fsdp_step", "rank_step"]

#: Untraced steps before the recorded one: Adam's state is made in the first.
WARMUP = 2


@dataclasses.dataclass(frozen=True)
class RankTrace:
    """Rank 0's recorded FSDP2 step at ``gpus`` ranks and per-GPU ``batch``: the bytes live at the
    step's start (``resident_bytes``: shards, buffers, Adam's state, the batch), its peak above
    that, the op at which the peak occurs, and the collectives FSDP2 issued, in order."""

    gpus: int
    batch: int
    resident_bytes: int
    peak_bytes: int
    peak_op: str
    collectives: tuple[str, ...]


class _LiveBytes(TorchDispatchMode):
    """Bytes of storages made by ops (or grown by ``resize_``) while active, each until it dies."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self.peak_op = 0, 0, ""
        self.collectives: list[str] = []
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()  # finalizers may run on autograd's threads
        self._finalizers: list[weakref.finalize] = []

    def _set(self, storage: torch.UntypedStorage, nbytes: int, op: str) -> None:
        """Record that ``storage`` now holds ``nbytes`` (0: released), watching it until it dies."""
        key = id(storage)
        with self._lock:
            if key not in self._sizes:
                fin = weakref.finalize(storage, self._die, key)
                fin.atexit = False
                self._finalizers.append(fin)
            self.live += nbytes - self._sizes.get(key, 0)
            self._sizes[key] = nbytes
            if self.live > self.peak:
                self.peak, self.peak_op = self.live, op

    def _die(self, key: int) -> None:
        with self._lock:
            self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = op_names(func)[0]
        if name.startswith("c10d."):
            self.collectives.append(name)
        inputs = {id(x.untyped_storage()) for x in tree_leaves((args, kwargs)) if _plain(x)}
        for x in tree_leaves(out):
            if _plain(x):
                storage = x.untyped_storage()
                if id(storage) not in inputs and id(storage) not in self._sizes and storage.nbytes():
                    self._set(storage, storage.nbytes(), name)
        return out

    @contextlib.contextmanager
    def resizes(self) -> Iterator[None]:
        """Count ``UntypedStorage.resize_`` (FSDP2's unshard and reshard) while inside."""
        original = torch.UntypedStorage.resize_

        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            result = original(storage, size)
            self._set(storage, size, "resize_")
            return result

        torch.UntypedStorage.resize_ = resize_
        try:
            yield
        finally:
            torch.UntypedStorage.resize_ = original

    def close(self) -> None:
        """Stop watching: the storages may outlive the tracker."""
        for fin in self._finalizers:
            fin.detach()


def rank_step(model: torch.nn.Module, x: Any, opt: Any, updated: list, params: list) -> None:
    """One training step as a rank runs it: the output kept to the step's end (as a training loop
    keeps it), the sum loss's backward, each FSDP2 shard in ``updated`` handed its ``DTensor``
    gradient's local part (``updated is params``: DDP's own parameters, nothing to hand), the
    optimizer's step, then every gradient set to None."""
    out = model(*(x if isinstance(x, tuple) else (x,)))
    default_loss(out).backward()
    if updated is not params:
        with torch.no_grad():
            for local, p in zip(updated, params):
                local.grad = None if p.grad is None else p.grad.to_local()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)


def _plain(x: Any) -> bool:
    """A tensor with a storage of its own (not a ``DTensor`` wrapper, whose local tensor is seen)."""
    from torch.distributed.tensor import DTensor

    return isinstance(x, torch.Tensor) and not isinstance(x, DTensor) and x.layout == torch.strided


def _fake_copy(model: torch.nn.Module, mode: Any) -> torch.nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake tensors of the same shapes (ties kept)."""
    fake = copy.deepcopy(model)
    made: dict[int, torch.nn.Parameter] = {}
    for module in fake.modules():
        for name, p in list(module.named_parameters(recurse=False, remove_duplicate=False)):
            if id(p) not in made:
                made[id(p)] = torch.nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
            setattr(module, name, made[id(p)])
        for name, buf in list(module.named_buffers(recurse=False, remove_duplicate=False)):
            setattr(module, name, mode.from_tensor(buf))
    return fake


def _batch(example: Any, batch: int, mode: Any) -> Any:
    """``example`` with dim 0 of every tensor grown to ``batch`` (rows repeated), as fake tensors."""
    def grow(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return x
        return mode.from_tensor(x.index_select(0, torch.arange(batch) % x.shape[0]))

    return tree_map(grow, example)


def _shard(model: torch.nn.Module, mesh: Any, units: Sequence[str], reshard: bool, policy: Any) -> None:
    """``fully_shard`` each named unit (``reshard_after_forward=reshard``), then the root, on ``mesh``;
    the root with torch's default, which keeps its parameters unsharded from forward to backward;
    every one with ``policy`` (torch's ``MixedPrecisionPolicy``)."""
    from torch.distributed.fsdp import fully_shard

    named = dict(model.named_modules())
    missing = [u for u in units if u and u not in named]
    if missing:
        raise SymcxError(f"FSDP units {missing} are not modules of {type(model).__name__}")
    try:
        for unit in units:
            if unit:
                fully_shard(named[unit], mesh=mesh, reshard_after_forward=reshard, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        raise SymcxError(f"cannot shard {type(model).__name__} with fully_shard on {mesh.size()} GPUs: {err}") from err


def trace_fsdp_step(model: torch.nn.Module, example: Any, gpus: int, batch: int, units: Sequence[str] = (),
                    reshard_after_forward: bool = True,
                    optimizer: Callable[[list], torch.optim.Optimizer] | None = None,
                    mp_policy: Any = None) -> RankTrace:
    """Rank 0's FSDP2 training step on ``gpus`` fake ranks at per-GPU ``batch``, traced and its peak walked.

    ``units`` are the modules wrapped before the root; ``optimizer`` makes the optimizer of this
    rank's local shards (default Adam); ``mp_policy`` (a name of :data:`symcx.parallel.MP_POLICIES`
    or torch's ``MixedPrecisionPolicy``) is given to every ``fully_shard``.

    >>> import torch
    >>> r = trace_fsdp_step(torch.nn.Linear(8, 6), torch.randn(2, 8), gpus=2, batch=4)
    >>> r.collectives[:2]  # the root's all-gather in the forward, its reduce-scatter in the backward
    ('c10d._allgather_base_.default', 'c10d._reduce_scatter_base_.default')
    """
    if not any(True for _ in model.parameters()):
        raise SymcxError(f"fully_shard has nothing to shard: {type(model).__name__} has no parameters")
    from torch.distributed.device_mesh import init_device_mesh

    policy = torch_mp_policy(mp_policy)
    mode = FakeTensorMode()
    with fake_process_group(gpus):
        mesh = init_device_mesh("cpu", (gpus,))  # outside fake mode: the mesh reads its ranks
        fake, x = _fake_copy(model, mode), _batch(example, batch, mode)
        with mode:
            _shard(fake, mesh, units, reshard_after_forward, policy)
            try:
                return _run(fake, x, gpus, batch, optimizer or torch.optim.Adam)
            except (RuntimeError, ValueError, TypeError, AssertionError) as err:  # e.g. a parameter tied across units
                raise SymcxError(f"FSDP2 cannot run {type(model).__name__} on {gpus} GPUs with units "
                                 f"{[u for u in units if u]}: {err}") from err


def _run(model: torch.nn.Module, x: Any, gpus: int, batch: int, make: Callable[[list], Any]) -> RankTrace:
    """Warm-up steps, then one recorded step of the sharded ``model`` on ``x``."""
    params = list(model.parameters())
    local = [p.to_local().detach() for p in params]
    opt = make(local)

    def step() -> None:
        rank_step(model, x, opt, local, params)

    for _ in range(WARMUP):
        step()
    held = [*local, *model.buffers(), *tree_leaves(x), *tree_leaves(opt.state)]
    storages = {id(s): s.nbytes() for s in (t.untyped_storage() for t in held if _plain(t))}
    tracker = _LiveBytes()
    try:
        with tracker.resizes(), tracker:
            step()
    finally:
        tracker.close()
    return RankTrace(gpus, batch, sum(storages.values()), tracker.peak, tracker.peak_op, tuple(tracker.collectives))
