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
block cannot, all of it fake. On meta, a functional op that ran before on the same layouts
and values is answered from memory (``_OpLog``): the blocks repeat their template's ops, and
most meta kernels are Python. The backward is autograd's formulas over the forward's ops, on
the same shapes and ``requires_grad``, so a forward that matches gives the same backward.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .._torch import (FakeTensorMode, TorchDispatchMode, op_schema, packet_name, reparametrize_module, tree_flatten,
                      tree_unflatten, unset_fake_temporarily)
from ..opsets import ALIAS_OPS
from .caches import isolated_caches
from .recorder import leaves
from .reuse import PLAIN

__all__ = ["replay_mismatch"]

def _entry(func: Any, args: tuple, kwargs: dict, out: Any) -> tuple:
    """What a call's log keeps of one op: the op, its non-tensor arguments, its outputs' shapes and dtypes."""
    plain = tuple(a for a in leaves((args, kwargs)) if isinstance(a, PLAIN))
    outs = tuple((tuple(o.shape), o.dtype) for o in leaves(out) if isinstance(o, torch.Tensor))
    return (str(func), plain, outs)


def _key(value: Any) -> Any:
    """A hashable stand-in for an argument of a call on meta tensors (a tensor by its layout,
    plain values by type and value); None where the call is not one to answer from memory."""
    if type(value) is torch.Tensor:
        return (value.shape, value.stride(), value.dtype) if value.device.type == "meta" else None
    if isinstance(value, PLAIN):
        return (type(value), value)
    if isinstance(value, (tuple, list)):
        items = tuple(_key(v) for v in value)
        return None if None in items else (type(value), items)
    return None


def _functional(func: Any) -> bool:
    """Whether ``func`` writes no argument and returns no alias of one (its outputs are new tensors;
    ``_unsafe_view`` aliases without saying so in its schema)."""
    known = _FUNCTIONAL.get(func)
    if known is None:
        schema = op_schema(func)
        known = _FUNCTIONAL[func] = (schema is not None and not schema.is_mutable and packet_name(func.overloadpacket)
                                     not in ALIAS_OPS and all(r.alias_info is None for r in schema.returns))
    return known


_FUNCTIONAL: dict[Any, bool] = {}


def _meta_only(out: Any) -> bool:
    return type(out) is torch.Tensor and out.device.type == "meta"


def _layouts(out: Any) -> Any:
    """What :func:`_made` needs to make ``out`` again: each tensor's layout; None where it is not
    meta tensors alone (a CPU tensor's values may be read)."""
    if _meta_only(out):
        return (out.shape, out.stride(), out.dtype)
    if type(out) in (tuple, list) and all(_meta_only(o) for o in out):
        return type(out), tuple((o.shape, o.stride(), o.dtype) for o in out)
    return None


def _made(layouts: Any) -> Any:
    if isinstance(layouts[0], type):
        return layouts[0](_made(m) for m in layouts[1])
    shape, stride, dtype = layouts
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")


class _OpLog(TorchDispatchMode):
    """Appends each aten call to every open call's log (a call's log holds its submodules' ops too).

    A functional op on meta tensors is answered from memory where the same op ran on the same
    layouts and values before (a meta kernel is a function of them; most are Python, and every
    replayed block runs its template's ops again)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[list[tuple]] = []
        self.known: dict[Any, Any] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        key = (func, _key(args), _key(tuple(kwargs.items()))) if _functional(func) else None
        if key is not None and None in key[1:]:  # an argument that is no meta layout or plain value
            key = None
        if key in self.known:
            out = _made(self.known[key])
        else:
            out = func(*args, **kwargs)
            if key is not None and (layouts := _layouts(out)) is not None:
                self.known[key] = layouts
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
    flat, spec = tree_flatten((args, kwargs))
    fakes = [x for x in flat if isinstance(x, torch.Tensor)]
    if not fakes or not all(fake.is_our_fake(x) for x in fakes):  # inside a block already on meta
        return forward(*args, **kwargs)
    device = fakes[0].device
    with unset_fake_temporarily():
        own = {k: _meta(v) for k, v in [*mod.named_parameters(), *mod.named_buffers()]}
        margs, mkwargs = tree_unflatten([_meta(x) for x in flat], spec)
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
