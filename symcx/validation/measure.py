"""Run one batch of a real model on a device and measure it: FLOPs, wall time, peak memory.

Measurements take a ``step``: a no-argument callable that runs the model once on a batch
already on the device. Nothing here knows about sympy or formulas.

On CUDA the peak is the caching allocator's own ``max_memory_allocated``. On CPU it is
:func:`symcx.validation.live_bytes.measure_peak_bytes`, a ``TorchDispatchMode`` that adds the bytes of every
new storage an aten op returns and subtracts them when the storage is freed. That tracker
was chosen over the profiler's memory events (``profile_memory=True``) because it counts
at the level symcx predicts at (the tensors aten ops return), is deterministic, costs one
Python call per op and needs no trace parsing. What it cannot see: scratch buffers a
kernel allocates and frees inside itself (oneDNN reorders, im2col), and allocator rounding.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .._torch import tree_map
from ..errors import DeviceError
from .live_bytes import measure_peak_bytes

__all__ = [
    "resolve_device",
    "device_name",
    "make_batch",
    "count_flops",
    "time_step",
    "peak_bytes",
    "is_oom",
    "free_memory",
    "available_bytes",
    "summarize",
    "TRACKERS",
]

#: How the peak memory is measured, by device type (named in every report).
TRACKERS = {
    "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated before",
    "cpu": "symcx.validation.live_bytes.measure_peak_bytes (TorchDispatchMode: live storages aten ops return)",
}


def resolve_device(device: str | torch.device) -> torch.device:
    """The ``torch.device`` for ``device``, or :class:`DeviceError` if it cannot be used.

    Only ``cpu`` and ``cuda`` (``cuda:N``) are accepted; asking for CUDA without it is an
    error, never a silent CPU run.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from err
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"device {device!r} is not supported: use 'cpu' or 'cuda'")
    if torch.version.cuda is None:
        raise DeviceError(
            f"CUDA is not available: this torch build ({torch.__version__}) has no CUDA support"
        )
    if not torch.cuda.is_available():
        raise DeviceError("CUDA is not available: torch.cuda.is_available() is False (no GPU visible)")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"CUDA device {index} does not exist: {torch.cuda.device_count()} device(s) visible"
        )
    return torch.device("cuda", index)


def device_name(dev: torch.device) -> str:
    """A human name for the device: the GPU model, or the CPU thread count."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})"


def make_batch(example: Any, batch: int, device: torch.device, batch_dim: int = 0) -> Any:
    """``example`` with every tensor's ``batch_dim`` resized to ``batch``, on ``device``.

    Rows of the example are repeated cyclically, so integer inputs (token ids, labels) stay
    valid; the values do not change the cost of dense ops.

    >>> make_batch(torch.arange(6).reshape(2, 3), 3, torch.device("cpu")).tolist()
    [[0, 1, 2], [3, 4, 5], [0, 1, 2]]
    """
    def grow(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return x
        d = batch_dim % x.dim()
        index = torch.arange(batch, device=x.device) % x.shape[d]
        return x.index_select(d, index).to(device)

    return tree_map(grow, example)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def count_flops(forward: Callable[[], Any], backward: Callable[[Any], None] | None) -> tuple[int, int | None]:
    """FlopCounterMode's count of ``forward()`` and, separately, of ``backward(result)``.

    >>> lin = torch.nn.Linear(4, 3)
    >>> count_flops(lambda: lin(torch.ones(2, 4)).sum(), lambda loss: loss.backward())  # 2·2·4·3 each
    (48, 48)
    """
    with FlopCounterMode(display=False) as fwd:
        result = forward()
    if backward is None:
        return fwd.get_total_flops(), None
    with FlopCounterMode(display=False) as bwd:
        backward(result)
    return fwd.get_total_flops(), bwd.get_total_flops()


def time_step(step: Callable[[], None], dev: torch.device, repeats: int, warmup: int,
              before: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` runs of ``step`` after ``warmup`` untimed ones.

    On CUDA the device is synchronized before starting and before stopping the timer
    (``time.perf_counter``), so the time is what the caller waits for, launches included.
    ``before`` runs untimed ahead of every run (e.g. dropping gradients).
    """
    for _ in range(warmup):
        if before is not None:
            before()
        step()
    samples = []
    for _ in range(repeats):
        if before is not None:
            before()
        _sync(dev)
        start = time.perf_counter()
        step()
        _sync(dev)
        samples.append(time.perf_counter() - start)
    return samples


def peak_bytes(step: Callable[[], None], dev: torch.device) -> tuple[int, int | None]:
    """(peak bytes above the baseline while ``step`` runs, baseline bytes or None).

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    baseline ``memory_allocated`` before the run (parameters, the batch, anything else live).
    CPU: :func:`symcx.validation.live_bytes.measure_peak_bytes`, which only sees storages created during
    the run; the baseline is then None (the caller knows what it allocated before).
    """
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        _sync(dev)
        return torch.cuda.max_memory_allocated(dev) - base, base
    return measure_peak_bytes(step), None


#: What a RuntimeError says when memory ran out: CUDA's "out of memory", and the CPU
#: allocator's "DefaultCPUAllocator: can't allocate memory: you tried to allocate ...".
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` means the device ran out of memory (CUDA, or the CPU allocator).

    >>> is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
    ...                     "can't allocate memory: you tried to allocate 12884901888 bytes."))
    True
    >>> is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    False
    """
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _OOM_MESSAGES)


def available_bytes(dev: torch.device) -> int | None:
    """Memory the device can still hand out, in bytes; None where the system does not say.

    CUDA: the free bytes of ``torch.cuda.mem_get_info``. CPU: the available physical pages
    (``os.sysconf("SC_AVPHYS_PAGES")``) times the page size.
    """
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(dev: torch.device) -> None:
    """Collect garbage and, on CUDA, return cached blocks to the device."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def summarize(samples: list[float]) -> Mapping[str, float]:
    """Median, quartiles, min, max and standard deviation of time samples, in seconds."""
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median_s": statistics.median(ordered),
        "q1_s": q[0],
        "q3_s": q[2],
        "min_s": ordered[0],
        "max_s": ordered[-1],
        "stdev_s": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
    }
