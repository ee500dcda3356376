"""Validate per-GPU memory on real processes: one per rank, ``torch.distributed`` on gloo, DDP or FSDP2.

:func:`validate_distributed` spawns ``gpus`` processes on localhost (``torch.multiprocessing``,
``spawn``), each wrapping the model with ``DistributedDataParallel`` or ``fully_shard`` (the
same units as the prediction) and running Adam steps, the model's output kept to the step's
end as the single-device sweep keeps it. Per batch size, after warm-up steps, a rank measures
the CPU allocator's peak, the least of five steps (``torch.profiler`` allocation events:
FSDP2 grows its unsharded parameters with ``untyped_storage().resize_()``, which no dispatch
mode sees), and once the live-tensor peak of :func:`~.live_bytes.measure_peak_bytes`. Both are
bytes above what is live when the step starts, the convention of :mod:`symcx.validation.predict`;
the prediction is ``peak - resident`` of :func:`~symcx.parallel.parallel_memory` with
``backend="gloo"`` (gloo's own copies in its collectives counted). The whole
run is bounded by ``timeout`` seconds; every rank is terminated on the way out.

With ``device="cuda"`` the ranks run NCCL, rank r on ``cuda:r``, and each measures
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus ``memory_allocated``
at the step's start (the single-device CUDA convention); the prediction is ``backend="nccl"``.
That path is written but has not been run (no GPU where it was written).
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import sympy
import torch

from .._torch import allocation_events
from ..capture.fsdp_policy import torch_mp_policy
from ..capture.sharded import rank_step
from ..errors import SymcxError
from ..parallel import STRATEGIES, fsdp_units, mp_policy_of, parallel_memory
from ..routes import analyze
from ..zero_partition import rank_optimizer
from .live_bytes import measure_peak_bytes
from .measure import make_batch

__all__ = ["validate_distributed", "check_devices", "TOLERANCE", "RUNNABLE", "BACKEND"]

#: Strategies torch runs on gloo: DDP, ZeRO-1 (DDP with ``ZeroRedundancyOptimizer``), FSDP2.
RUNNABLE = ("ddp", "zero1", "fsdp")
#: Why the others cannot run.
RUNNABLE_NOT = {"zero2": "torch has no ZeRO-2 (gradients sharded, parameters replicated): ZeroRedundancyOptimizer "
                         "shards only the optimizer state, and FSDP2 always shards the parameters at rest"}
#: The process-group backend by device type: gloo on the CPU, NCCL on CUDA (rank r on cuda:r).
BACKEND = {"cpu": "gloo", "cuda": "nccl"}
#: Relative error within which a rank's measured peak counts as matching the prediction.
TOLERANCE = 0.05
#: Untimed steps per batch size before the measured one: optimizer state made, DDP buckets rebuilt.
WARMUP = 3
#: Steps measured with the allocator per batch size, the least kept: gloo frees a collective's
#: buffer on its own thread, now and then after the next one is made, which only ever adds a
#: communication buffer to a step's peak (seen: +6% to +17% on the small GPT under FSDP2, in one
#: step of three, on a loaded machine); the least is the peak the strategy itself reaches.
REPEATS = 5


@contextlib.contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null: kineto writes a ``USDT: … profiler_start`` line there
    at every profiler start and stop, from C++, which no setting of torch 2.13 silences."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _allocator_peak(step: Any) -> int:
    """Peak of the CPU allocator's total over one ``step()``, above its total at the start."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _native_stderr_muted():
        prof.start()
    try:
        step()
    finally:
        with _native_stderr_muted():
            prof.stop()
    events = allocation_events(prof)
    if not events:
        return 0
    baseline = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - baseline


def _wrap(model: torch.nn.Module, strategy: str, units: Sequence[str], mp_policy: Any = None,
          device: torch.device | None = None) -> tuple[torch.nn.Module, list, list]:
    """The model wrapped for ``strategy``; the tensors the optimizer updates; the model's own parameters.

    FSDP2's parameters are ``DTensor``s; the optimizer updates their local shards (what a rank holds).
    ``mp_policy`` (a name or torch's ``MixedPrecisionPolicy``) is given to every ``fully_shard``.
    On CUDA, DDP is given the rank's device.
    """
    if strategy in ("ddp", "zero1"):
        on_cuda = device is not None and device.type == "cuda"
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_cuda else None)
        params = list(wrapped.parameters())
        return wrapped, params, params
    from torch.distributed.fsdp import fully_shard

    policy = torch_mp_policy(mp_policy)
    named = dict(model.named_modules())
    for unit in units:
        if unit:
            fully_shard(named[unit], mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    params = list(model.parameters())
    return model, [p.to_local().detach() for p in params], params


def _optimizer(strategy: str, params: list) -> torch.optim.Optimizer:
    """Adam; under ZeRO-1 torch's ``ZeroRedundancyOptimizer``: each rank keeps the state of, and
    steps, its share of the parameters (whole ones, given greedily by size), then broadcasts them."""
    if strategy != "zero1":
        return torch.optim.Adam(params)
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.Adam)


def _cuda_peak(step: Any, dev: torch.device) -> int:
    """Peak of CUDA's caching allocator over one ``step()`` above what it held at the start: the
    single-device convention (:func:`symcx.validation.measure.peak_bytes`)."""
    from .measure import peak_bytes

    return peak_bytes(step, dev)[0]


def _rank_main(rank: int, world: int, port: int, model: torch.nn.Module, example: Any, strategy: str,
               units: Sequence[str], batches: Sequence[int], results: Any, device: str = "cpu",
               mp_policy: Any = None) -> None:
    """One rank: join the process group (gloo on the CPU, NCCL on ``cuda:rank``), wrap the model,
    measure one step per batch size, report on ``results``."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dev = torch.device("cpu")
    if device == "cuda":
        dev = torch.device("cuda", rank)
        torch.cuda.set_device(dev)
    dist.init_process_group(BACKEND[dev.type], rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        wrapped, updated, params = _wrap(model.to(dev), strategy, units, mp_policy, dev)
        opt = _optimizer(strategy, updated)
        for batch in batches:
            x = make_batch(example, batch, dev)

            step = functools.partial(rank_step, wrapped, x, opt, updated, params)
            for _ in range(WARMUP):
                step()
            if dev.type == "cuda":
                allocator = min(_cuda_peak(step, dev) for _ in range(REPEATS))
            else:
                allocator = min(_allocator_peak(step) for _ in range(REPEATS))
            live = measure_peak_bytes(step)
            results.put((rank, batch, allocator, live))
        # every rank's collectives done before any tears its group down: a rank that destroyed it
        # while ZeroRedundancyOptimizer's broadcasts were still in flight aborted ("terminate
        # called without an active exception"), once in a CI run
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(model: torch.nn.Module, example: Any, gpus: int, strategy: str, units: Sequence[str],
               batches: Sequence[int], timeout: float, device: str = "cpu",
               mp_policy: Any = None) -> dict[tuple[int, int], tuple[int, int]]:
    """Spawn ``gpus`` ranks and collect (rank, batch) → (allocator peak, live-tensor peak)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    policy = None if mp_policy is None else mp_policy_of(mp_policy).name  # a name pickles to the ranks
    procs = mp.start_processes(_rank_main, args=(gpus, _free_port(), model, example, strategy, tuple(units),
                                                 tuple(batches), results, device, policy),
                               nprocs=gpus, join=False, start_method="spawn")
    deadline, out = time.monotonic() + timeout, {}
    try:
        while len(out) < gpus * len(batches):
            left = deadline - time.monotonic()
            if left <= 0:
                raise SymcxError(f"the {gpus} ranks did not finish within {timeout:.0f} s")
            try:
                rank, batch, allocator, live = results.get(timeout=min(left, 1.0))
                out[(rank, batch)] = (allocator, live)
            except queue.Empty:
                if procs.join(timeout=0):  # every rank ended without reporting everything
                    break
        procs.join(timeout=max(1.0, deadline - time.monotonic()))
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
        raise SymcxError(f"a rank failed: {str(err).strip().splitlines()[-1]}") from err
    finally:
        for p in procs.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    return out


def check_devices(device: str, gpus: int) -> torch.device:
    """The device type the ranks run on: ``cpu`` (gloo), or ``cuda`` (NCCL) with at least ``gpus`` CUDA
    devices visible; a clear :class:`SymcxError` otherwise."""
    if device not in BACKEND:
        raise SymcxError(f"device must be 'cpu' (gloo) or 'cuda' (NCCL), not {device!r}")
    if device == "cuda":
        if torch.version.cuda is None or not torch.cuda.is_available():
            raise SymcxError(f"--gpus {gpus} --device cuda runs NCCL on CUDA devices, but CUDA is not available "
                             f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
        if torch.cuda.device_count() < gpus:
            raise SymcxError(f"--gpus {gpus} --device cuda runs one rank per CUDA device, but only "
                             f"{torch.cuda.device_count()} are visible")
    return torch.device(device)


def validate_distributed(model: torch.nn.Module, example: Any, *, gpus: int, strategy: str,
                         batch_sizes: Sequence[int] = (4, 16), units: Sequence[str] | None = None,
                         timeout: float = 600.0, device: str = "cpu", mp_policy: Any = None) -> dict[str, Any]:
    """Predicted and measured per-rank peak bytes of a training step (Adam) on ``gpus`` processes:
    gloo on the CPU, or NCCL with rank r on ``cuda:r`` (``device="cuda"``).

    Returns a JSON-ready dict: ``strategy``, ``gpus``, ``backend``, ``device``, ``mp_policy``,
    ``tolerance`` and ``runs``, one per batch size (per GPU) with ``ranks``: ``rank``,
    ``predicted_peak_bytes``, ``measured_peak_bytes`` (allocator: the CPU allocator's, or
    ``torch.cuda.max_memory_allocated``), ``live_tensor_peak_bytes`` (:func:`measure_peak_bytes`),
    ``error`` (relative) and ``within_tolerance``. ``mp_policy`` (FSDP2 only) wraps with
    ``fully_shard(..., mp_policy=...)`` and predicts from the step traced at its param_dtype.
    Raises :class:`SymcxError` for bad input, a rank that fails, or the timeout.

    >>> import torch
    >>> r = validate_distributed(torch.nn.Linear(8, 4), torch.randn(2, 8), gpus=2, strategy="ddp",
    ...                          batch_sizes=[4])  # doctest: +SKIP
    """
    if strategy not in RUNNABLE:
        raise SymcxError(f"validation on processes runs ddp, zero1 or fsdp (torch's own), not {strategy!r}"
                         + (f"; {RUNNABLE_NOT[strategy]}" if strategy in RUNNABLE_NOT else
                            f"; strategies are {', '.join(STRATEGIES)}"))
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise SymcxError(f"gpus must be a positive number of processes, not {gpus!r}")
    dev = check_devices(device, gpus)
    policy = mp_policy_of(mp_policy)
    if policy is not None and strategy != "fsdp":
        raise SymcxError(f"mp_policy is FSDP2's MixedPrecisionPolicy: strategy='fsdp', not {strategy!r}")
    backend = BACKEND[dev.type]
    # torch's ZeRO-1 gives each rank whole parameters: one prediction per rank, from the step traced
    # with that rank's own optimizer (its for-loop's locals live across its parameters, not the model's)
    if strategy == "zero1":
        analyses = [analyze(model, example, optimizer=rank_optimizer(gpus, r)) for r in range(gpus)]
        mems = [parallel_memory(analyses[r].step, gpus, strategy, units=units, backend=backend, partition="params",
                                rank=r) for r in range(gpus)]
    else:
        analyses = [analyze(model, example, optimizer="adam", precision=policy.trace if policy else None)]
        one = parallel_memory(analyses[0].step, gpus, strategy, units=units, backend=backend, mp_policy=policy)
        mems = [one] * gpus
    a = analyses[0]
    chosen = fsdp_units(a.step, units)
    measured = _run_ranks(model, example, gpus, strategy, chosen, list(batch_sizes), timeout, dev.type, policy)
    missing = [f"rank {r} at t={b}" for b in batch_sizes for r in range(gpus) if (r, b) not in measured]
    if missing:
        raise SymcxError(f"no measurement from {', '.join(missing)}: a rank ended early")
    t = a.symbols.get("t", sympy.Symbol("t"))
    runs = []
    for batch in batch_sizes:
        ranks = []
        for rank in range(gpus):
            predicted = int(sympy.sympify(mems[rank].peak - mems[rank].resident).subs(t, batch))
            allocator, live = measured[(rank, batch)]
            error = (allocator - predicted) / max(predicted, 1)
            ranks.append({"rank": rank, "predicted_peak_bytes": predicted, "measured_peak_bytes": allocator,
                          "live_tensor_peak_bytes": live, "error": error, "within_tolerance": abs(error) <= TOLERANCE})
        runs.append({"batch": batch, "ranks": ranks})
    return {"schema": "symcx.validation.distributed/1", "strategy": strategy, "gpus": gpus, "backend": backend,
            "device": dev.type, "mp_policy": policy.name if policy else None, "tolerance": TOLERANCE,
            "peak_node": mems[0].peak_node, "peak_phase": mems[0].peak_phase, "runs": runs}
