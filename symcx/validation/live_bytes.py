"""Measure the peak bytes of live tensors a function allocates, on any device.

The measured counterpart of :func:`symcx.memory.step_memory`'s peak: CPU has no allocator
counter like ``torch.cuda.max_memory_allocated``, so allocations are watched at the aten level.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from .._torch import TorchDispatchMode, tree_leaves

__all__ = ["measure_peak_bytes"]


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of storages that ops allocate while active, until each storage dies."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._lock = threading.Lock()  # finalizers may run on autograd's device threads
        self._finalizers: list[weakref.finalize] = []
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        with self._lock:
            self._seen.discard(key)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() for x in tree_leaves((args, kwargs)) if _dense(x)}
        for x in tree_leaves(out):
            if not _dense(x) or x.is_meta:
                continue
            storage = x.untyped_storage()
            key, nbytes = id(storage), storage.nbytes()
            with self._lock:
                if key in self._seen or nbytes == 0 or storage.data_ptr() in inputs:
                    continue
                self._seen.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            fin = weakref.finalize(storage, self._free, key, nbytes)
            fin.atexit = False
            self._finalizers.append(fin)
        return out

    def close(self) -> None:
        for fin in self._finalizers:
            fin.detach()
        self._finalizers.clear()


def _dense(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.layout == torch.strided


def measure_peak_bytes(fn: Callable[[], Any]) -> int:
    """Run ``fn()`` and return the peak bytes of live tensors it allocated (above the entry baseline).

    Every aten op that runs while ``fn`` does (forward, autograd's backward, optimizer steps)
    is seen through a ``TorchDispatchMode``; an output whose storage is not one of the op's
    inputs' storages is a new allocation, counted once per storage until the storage is freed
    (a ``weakref.finalize`` on it; torch keeps a storage's Python object as long as the
    storage lives, so the finalizer fires when the memory is released). Views, in-place ops
    and ``out=`` results add nothing. Memory a kernel allocates internally and frees before
    returning (workspaces) is not a tensor and is not seen; nor are frees of tensors that
    existed before ``fn`` ran, so the result is the peak of what ``fn`` allocated.

    Why this mechanism: a dispatch mode sees allocations at the aten level, the level of the
    joint graph, including the backward autograd runs in C++; the finalizer sits on the
    storage, not the tensor, because autograd keeps saved tensors as other tensor objects over
    the same storage; and CPU has no allocator counter like ``torch.cuda.max_memory_allocated``.
    It works on any device.

    Parameters
    ----------
    fn : callable
        Run with no arguments; its return value is discarded after the measurement.

    Returns
    -------
    int
        Peak bytes allocated during the call and alive at the same time.

    Examples
    --------
    >>> import torch
    >>> from symcx.validation.live_bytes import measure_peak_bytes
    >>> x = torch.ones(1000)
    >>> measure_peak_bytes(lambda: (x * 2) + 1)  # x*2 and the sum are both live: 2·4000
    8000
    """
    mode = _LiveTensorBytes()
    try:
        with mode:
            fn()
        return mode.peak
    finally:
        mode.close()
