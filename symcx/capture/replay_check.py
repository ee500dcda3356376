"""The check behind block reuse: every replayed call, run for real, runs its template's ops.

Block reuse copies a template's recorded nodes for each later call with the same key; the key
sees the module's state and its arguments, not what its code may read besides (a global, a
counter, a config list indexed by a call count). So after the symbolic trace the model's
forward runs once more on the ``meta`` device at the example sizes (no fake tensors, no
symbolic sizes: a small fraction of a trace), each candidate call logging its aten calls (op,
non-tensor arguments, output shapes and dtypes); a replayed call's log must equal its
template's. A model that cannot run on meta (Hugging Face's masks read ``.item()`` unless
they see a fake tensor) runs on fake tensors with static sizes instead (no ``ShapeEnv``), its
logged calls still on meta (``blocks_on_meta``: a fake op costs ten meta ones), and where a
block cannot, all of it fake. The backward is autograd's formulas over the forward's ops, on
the same shapes and ``requires_grad``, so a forward that matches gives the same backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .._torch import (FakeTensorMode, TorchDispatchMode, reparametrize_module, tree_flatten,
                      tree_unflatten, unset_fake_temporarily)
from .caches import isolated_caches
from .recorder import leaves
from .reuse import PLAIN

__all__ = ["replay_mismatch"]

def _entry(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple:
    """What a call's log keeps of one op: the op, its non-tensor arguments, its outputs' shapes and dtypes."""
    plain = tuple(a for a in leaves((args, kwargs)) if isinstance(a, PLAIN))
    outs = tuple((tuple(o.shape), o.dtype) for o in leaves(out) if isinstance(o, torch.Tensor))
    return (str(func), plain, outs)


class _OpLog(TorchDispatchMode):
    """Appends each aten call to every open call's log (a call's log holds its submodules' ops too)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[list[tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.open:
            entry = _entry(func, args, kwargs, out)
            for log in self.open:
                log.append(entry)
        return out


def _meta(x: Any) -> Any:
    """A tensor's stand-in on the meta device (layout, dtype and ``requires_grad`` kept); others as they are."""
    if not isinstance(x, torch.Tensor):
        return x
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return out.requires_grad_(x.requires_grad)


def _call_on_meta(mod: torch.nn.Module, forward: Any, fake: FakeTensorMode, args: tuple, kwargs: dict) -> Any:
    """``forward`` run on meta stand-ins of its fake arguments and of ``mod``'s fake tensors; its
    outputs made fake again (on the arguments' device) for the rest of the fake run."""
    leaves, spec = tree_flatten((args, kwargs))
    fakes = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not fakes or not all(fake.is_our_fake(x) for x in fakes):  # inside a block already on meta
        return forward(*args, **kwargs)
    device = fakes[0].device
    with unset_fake_temporarily():
        own = {k: _meta(v) for k, v in [*mod.named_parameters(), *mod.named_buffers()]}
        margs, mkwargs = tree_unflatten([_meta(x) for x in leaves], spec)
        with reparametrize_module(mod, own):
            out = forward(*margs, **mkwargs)
    outs, out_spec = tree_flatten(out)
    with fake:
        outs = [torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device=device).requires_grad_(o.requires_grad)
                if isinstance(o, torch.Tensor) else o for o in outs]
    return tree_unflatten(outs, out_spec)


@contextlib.contextmanager
def _logged(model: torch.nn.Module, paths: set[str], oplog: _OpLog,
            on_meta: FakeTensorMode | None = None) -> Iterator[dict[str, list[tuple]]]:
    """Each module of ``paths``, while called, keeps a log of its ops (by path); with ``on_meta``
    (the run's fake mode), it runs on meta stand-ins (:func:`_call_on_meta`)."""
    logs: dict[str, list[tuple]] = {}
    mods = {path: model.get_submodule(path) for path in paths}

    def wrap(path: str, forward: Any) -> Any:
        def logged(*args: Any, **kwargs: Any) -> Any:
            log = logs.setdefault(path, [])
            oplog.open.append(log)
            try:
                if on_meta is not None:
                    return _call_on_meta(mods[path], forward, on_meta, args, kwargs)
                return forward(*args, **kwargs)
            finally:
                oplog.open.remove(log)
        return logged

    for path, mod in mods.items():
        mod.forward = wrap(path, mod.forward)
    try:
        yield logs
    finally:
        for mod in mods.values():
            del mod.forward


def _stand_in(value: torch.Tensor, cast: torch.dtype | None, fake: FakeTensorMode | None) -> torch.Tensor:
    """``value`` on the meta device, or as a fake tensor of ``fake`` (floats as ``cast``, as the
    trace's ``model.to(dtype)``)."""
    dtype = cast if cast is not None and value.is_floating_point() else value.dtype
    if fake is None:
        return torch.empty(value.shape, dtype=dtype, device="meta").requires_grad_(value.requires_grad)
    with fake:
        return torch.empty(value.shape, dtype=dtype, device=value.device).requires_grad_(value.requires_grad)


def replay_mismatch(model: torch.nn.Module, args: tuple, kwargs: dict, pairs: Sequence[tuple[str, str]],
                    cast: torch.dtype | None = None, fake: FakeTensorMode | None = None,
                    blocks_on_meta: bool = False) -> tuple[str, str] | None:
    """The first (replayed call, template) of ``pairs`` whose ops differ when ``model`` runs on ``args``,
    ``kwargs`` (tensors at the example sizes: meta ones, or fake ones of ``fake``) with its
    parameters and buffers on the meta device (or fake; with ``blocks_on_meta`` the calls of
    ``pairs`` on meta all the same); None when every replay runs its template's ops. Raises
    what the model raises there (a kernel meta lacks, a value it reads)."""
    oplog = _OpLog()
    swapped = {k: _stand_in(v, cast, fake) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    paths = {p for pair in pairs for p in pair}
    on_meta = fake if blocks_on_meta else None
    with isolated_caches(model), reparametrize_module(model, swapped), _logged(model, paths, oplog, on_meta) as logs:
        with fake if fake is not None else contextlib.nullcontext(), oplog:
            model(*args, **kwargs)
    for replay, template in pairs:
        if logs.get(replay) != logs.get(template):
            return replay, template
    return None
