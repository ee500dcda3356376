"""Per-GPU memory and communication of a traced step under data parallelism: DDP, ZeRO-1/2, FSDP2.

The traced single-device step (:class:`~symcx.step.Step`, t the *per-GPU* batch) is walked
again with every storage classified and sized for one of ``g`` GPUs: parameters, gradients,
optimizer state and the optimizer step's temporaries are replicated or sharded per strategy;
activations stay as traced. Sharding pads as torch does: FSDP2's ``fully_shard`` chunks each
parameter on dim 0, ``ceiling(dim0/g)`` rows per rank (:func:`fsdp_shard_numel`, checked
against ``fully_shard`` itself under torch's fake process group, see
:func:`check_fsdp_shards`); ZeRO-1/2 shard each tensor flat, ``ceiling(numel/g)``
elements. FSDP2 also holds its units' unsharded parameters and the all-gather and
reduce-scatter buffers, their lifetimes checked byte for byte against one rank's step traced
through ``fully_shard`` (:func:`check_fsdp_trace`; see docs/parallel.md for the model and its limits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sympy

from .budget import max_batch_size
from .capture.fsdp_policy import MP_POLICIES, MixedPolicy, mp_policy_of
from .errors import SymcxError
from .memory import _END, _Life, _lives, kernel_copies
from .peak import max_of, peak_points
from .step import Step, storage_keys
from .symbols import g as G_SYMBOL
from .zero_partition import owned_params, state_owners

__all__ = ["STRATEGIES", "ParallelMemory", "Communication", "parallel_memory", "communication",
           "fsdp_shard_numel", "check_fsdp_shards", "check_fsdp_trace", "check_gpus", "fsdp_units", "parallel_report",
           "MixedPolicy", "MP_POLICIES", "mp_policy_of", "BACKENDS"]

#: The data-parallel strategies: what each shards (params, gradients, optimizer state).
STRATEGIES = {"ddp": (False, False, False), "zero1": (False, False, True), "zero2": (False, True, True),
              "fsdp": (True, True, True)}
#: Bytes per element of parameters and gradients under ``precision="mixed"`` (bf16/fp16).
_HALF = 2
#: ``precision="mixed"`` keeps an fp32 master copy of each trainable parameter in the optimizer state.
_MASTER = 4
ZERO = sympy.Integer(0)
#: Example number of GPUs at which a symbolic-g peak node is chosen.
G_HINT = 8
#: What ``backend`` takes: None (torch.distributed's own tensors), gloo's CPU copies, NCCL on CUDA.
BACKENDS = (None, "gloo", "nccl")


def check_gpus(gpus: Any, strategy: str) -> sympy.Expr:
    """``gpus`` as a sympy integer or the symbol ``g``; a clear error for anything else or an unknown strategy."""
    if strategy not in STRATEGIES:
        raise SymcxError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if isinstance(gpus, sympy.Symbol):
        if not (gpus.is_integer and gpus.is_positive):
            raise SymcxError(f"gpus must be a positive integer or a positive-integer symbol such as symcx.g, "
                             f"not {gpus!r}")
        return gpus
    if isinstance(gpus, bool) or not isinstance(gpus, (int, sympy.Integer)) or gpus < 1:
        raise SymcxError(f"gpus must be a positive integer or the symbol symcx.g, not {gpus!r}")
    return sympy.Integer(gpus)


def fsdp_shard_numel(shape: Sequence[sympy.Expr], gpus: Any) -> sympy.Expr:
    """Elements of one rank's (padded) FSDP2 shard of a tensor of ``shape``: ``ceiling(dim0/g)·rest``.

    >>> fsdp_shard_numel((5, 7), 2), fsdp_shard_numel((), 4)
    (21, 1)
    """
    if not shape:
        return sympy.Integer(1)
    rest = sympy.Mul(*shape[1:])
    return sympy.ceiling(sympy.sympify(shape[0]) / gpus) * rest


def _flat_shard(numel: sympy.Expr, gpus: Any) -> sympy.Expr:
    return sympy.ceiling(sympy.sympify(numel) / gpus)


def check_fsdp_shards(probe: Callable[[int], Mapping[str, int]], shapes: Mapping[str, Sequence[int]],
                      fit: Sequence[int] = (2, 3, 4), check: int = 5) -> None:
    """Identify each parameter's shard size in g from ``fully_shard`` at ``fit`` GPUs, checked at one more.

    ``probe(g)`` returns the padded shard numel of every parameter that ``fully_shard`` makes
    under a fake process group of ``g`` ranks (:func:`symcx.capture.distributed.fsdp_shard_numels`).
    The sizes must be ``ceiling(dim0/g)·rest`` at every ``fit`` point and at ``check``, else the
    formula does not hold for this torch and :class:`SymcxError` says where.
    """
    for gpus in (*fit, check):
        seen = probe(gpus)
        for name, shape in shapes.items():
            want = fsdp_shard_numel(tuple(shape), gpus)
            if name in seen and seen[name] != want:
                raise SymcxError(f"fully_shard gives {name} a shard of {seen[name]} elements at g={gpus}, not "
                                 f"ceiling(dim0/g)*rest = {want}; symcx's FSDP2 padding rule does not hold here")


def check_fsdp_trace(step: Step, probe: Callable[[int], Any], batch: int, *, reshard_after_forward: bool = True,
                     units: Sequence[str] | None = None, fit: Sequence[int] = (2, 3, 4),
                     check: int = 8, mp_policy: Any = None) -> list[dict[str, Any]]:
    """Check the FSDP2 formula in g against one rank's step traced through ``fully_shard`` itself.

    ``probe(g)`` traces rank 0's Adam step at per-GPU batch ``batch`` on ``g`` fake ranks
    (:func:`symcx.capture.sharded.trace_fsdp_step`). The formula of :func:`parallel_memory`,
    built once with the symbol g, is evaluated at each ``fit`` g and at ``check``; its resident
    bytes and its peak above them must equal the traced ones exactly, else :class:`SymcxError`
    says where. Returns one row per g: ``gpus``, ``traced_*`` and ``predicted_*`` bytes, ``peak_op``.
    With ``mp_policy`` the formula is FSDP2's mixed precision (``step`` traced at its param_dtype)
    and ``probe`` must wrap the float32 model with ``fully_shard(..., mp_policy=...)``.
    """
    mem = parallel_memory(step, G_SYMBOL, "fsdp", reshard_after_forward=reshard_after_forward, units=units,
                          mp_policy=mp_policy)
    sizes = {s: batch if s.name == "t" else step.hints.get(s, s) for s in mem.peak.free_symbols - {G_SYMBOL}}
    rows = []
    for gpus in (*fit, check):
        traced, values = probe(gpus), {**sizes, G_SYMBOL: gpus}
        resident = sympy.sympify(mem.resident).subs(values)
        rows.append({"gpus": gpus, "traced_resident_bytes": traced.resident_bytes, "predicted_resident_bytes": int(resident),
                     "traced_peak_bytes": traced.peak_bytes, "predicted_peak_bytes": int(mem.peak.subs(values) - resident),
                     "peak_op": traced.peak_op})
        row = rows[-1]
        if (row["traced_resident_bytes"], row["traced_peak_bytes"]) != (row["predicted_resident_bytes"],
                                                                        row["predicted_peak_bytes"]):
            raise SymcxError(f"FSDP2 traced through fully_shard at g={gpus}, t={batch} holds {traced.resident_bytes} B "
                             f"at the step's start and peaks {traced.peak_bytes} B above it (at {traced.peak_op}); "
                             f"the formula in g gives {row['predicted_resident_bytes']} and "
                             f"{row['predicted_peak_bytes']}")
    return rows


@dataclasses.dataclass(frozen=True)
class ParallelMemory:
    """Bytes one GPU holds in a data-parallel training step, as sympy expressions in ``g`` and ``t``.

    ``params``, ``grads`` and ``optimizer`` are the model states per GPU (replicated or
    sharded); ``activations`` what the forward keeps for the backward (t per GPU);
    ``buffers`` the largest communication buffer held at once (DDP's gradient buckets;
    FSDP2's unsharded unit plus its all-gather output); ``peak`` the largest live total, at
    ``peak_node`` in ``peak_phase``; ``resident`` what is held before the step starts.
    """

    strategy: str
    gpus: sympy.Expr
    params: sympy.Expr
    grads: sympy.Expr
    optimizer: sympy.Expr
    activations: sympy.Expr
    buffers: sympy.Expr
    resident: sympy.Expr
    peak: sympy.Expr
    peak_node: str
    peak_phase: str
    candidates: tuple[tuple[str, sympy.Expr], ...]
    reshard_after_forward: bool = True
    mp_policy: str | None = None  # the FSDP2 MixedPrecisionPolicy's name (MP_POLICIES), or None

    @property
    def model_states(self) -> sympy.Expr:
        """Parameters, gradients and optimizer state per GPU: the ZeRO paper's "model states"."""
        return self.params + self.grads + self.optimizer

    def subs(self, values: Mapping[Any, Any]) -> "ParallelMemory":
        """These figures with ``values`` substituted (``{symcx.g: 64, symcx.t: 8}``)."""
        fields = ("gpus", "params", "grads", "optimizer", "activations", "buffers", "resident", "peak")
        out = {f: sympy.sympify(getattr(self, f)).subs(values) for f in fields}
        out["candidates"] = tuple((v, sympy.sympify(e).subs(values)) for v, e in self.candidates)
        return dataclasses.replace(self, **out)

    def max_batch_size(self, budget_bytes: int | str) -> int:
        """Largest per-GPU batch ``t`` whose peak fits in ``budget_bytes`` (``gpus`` must be a number)."""
        if self.peak.free_symbols - {s for s in self.peak.free_symbols if s.name == "t"}:
            raise SymcxError("max_batch_size needs a peak in t alone: substitute g (and any other size) first")
        return max_batch_size(self.peak, budget_bytes)


@dataclasses.dataclass(frozen=True)
class Communication:
    """Bytes each GPU sends per step, by collective (ring algorithm): see :func:`communication`."""

    strategy: str
    gpus: sympy.Expr
    all_reduce: sympy.Expr
    reduce_scatter: sympy.Expr
    all_gather: sympy.Expr

    @property
    def total(self) -> sympy.Expr:
        """Bytes sent per GPU per step, over every collective."""
        return self.all_reduce + self.reduce_scatter + self.all_gather

    def subs(self, values: Mapping[Any, Any]) -> "Communication":
        """These figures with ``values`` substituted (``{symcx.g: 8}``)."""
        fields = ("gpus", "all_reduce", "reduce_scatter", "all_gather")
        return dataclasses.replace(self, **{f: sympy.sympify(getattr(self, f)).subs(values) for f in fields})


# --- classification -----------------------------------------------------------------------
#: Containers without a forward of their own: ``fully_shard`` refuses them, so their children are units.
_CONTAINERS = ("ModuleList", "ModuleDict", "ParameterList", "ParameterDict")


def fsdp_units(step: Step, units: Sequence[str] | None) -> tuple[str, ...]:
    """The modules ``fully_shard`` wraps: ``units``, or by default every direct child of the root that
    holds parameters (a ``ModuleList``'s children in its place: a transformer's blocks); the root ("")
    is always one, for the parameters no other unit holds."""
    if units is None:
        found: set[str] = set()
        for v in step.nodes:
            if v.phase != "param" or "." not in v.param:
                continue
            parts = v.param.split(".")
            unit = parts[0]
            for part in parts[1:-1]:
                if step.module_types.get(unit) not in _CONTAINERS:
                    break
                unit = f"{unit}.{part}"
            if step.module_types.get(unit) not in _CONTAINERS:
                found.add(unit)
        units = sorted(found, key=lambda u: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in u.split(".")])
    return ("", *[u for u in units if u])


def _unit_of(path: str, units: Sequence[str]) -> str:
    """The innermost unit whose module holds ``path`` (a module path or a parameter name)."""
    best = ""
    for u in units:
        if u and (path == u or path.startswith(u + ".")) and len(u) > len(best):
            best = u
    return best


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the walk sizes storages: the strategy's flags, ``g``, precision and FSDP units."""

    strategy: str
    gpus: sympy.Expr
    mixed: bool
    units: tuple[str, ...]
    reshard: bool
    gloo: bool = False  # count gloo's own copies in its all-gather and reduce-scatter
    mp: MixedPolicy | None = None  # FSDP2's MixedPrecisionPolicy: the step traced at its param_dtype
    owned: frozenset[str] | None = None  # torch's ZeRO-1: the parameters whose state this rank keeps
    owners: Mapping[str, str] = dataclasses.field(default_factory=dict)  # state/optimizer node → parameter
    kernels: bool = False  # count the copies a matrix kernel makes of a broadcast operand (the allocator's view)

    def shard(self, info: Any, itemsize: int, sharded: bool) -> sympy.Expr:
        """Bytes of one storage on one GPU: whole, or its shard under this strategy's padding."""
        if not sharded:
            return info.numel * itemsize
        if self.strategy == "fsdp":
            return fsdp_shard_numel(info.shape, self.gpus) * itemsize
        return _flat_shard(info.numel, self.gpus) * itemsize

    def state_bytes(self, info: Any, itemsize: int, owner: str | None) -> sympy.Expr:
        """Bytes of optimizer state (or a step temporary) of parameter ``owner`` on this rank: as the
        strategy shards it, or under torch's ZeRO-1 whole if this rank owns the parameter, else none."""
        if self.owned is None:
            return self.shard(info, itemsize, STRATEGIES[self.strategy][2])
        return info.numel * itemsize if owner is None or owner in self.owned else ZERO


def _item(plan: _Plan, info: Any, half: bool) -> int:
    """Element size: 16-bit for parameters and gradients under mixed precision, else as traced."""
    return _HALF if half and plan.mixed and info.dtype in ("float32", "float64") else info.itemsize


def _orig(plan: _Plan, info: Any) -> int:
    """Element size of a tensor the model holds in its own dtype (a sharded parameter, its optimizer
    state, a buffer, the batch): under ``mp`` float32 where the trace ran it in ``param_dtype``."""
    return 4 if plan.mp is not None and info.dtype == plan.mp.param_dtype else info.itemsize


def _is_grad(life: _Life) -> bool:
    """A gradient: made in the backward and kept to the end of the step (``autograd.grad``'s results)."""
    return life.phase == "backward" and life.last == _END


# --- the walk -----------------------------------------------------------------------------
@dataclasses.dataclass
class _Walk:
    """Events of the per-GPU walk: allocations and frees at (fractional) program times."""

    allocs: dict[float, list[tuple[str, sympy.Expr]]] = dataclasses.field(default_factory=dict)
    frees: dict[float, list[sympy.Expr]] = dataclasses.field(default_factory=dict)
    phases: dict[str, str] = dataclasses.field(default_factory=dict)

    def hold(self, node: str, nbytes: sympy.Expr, born: float, end: float) -> None:
        """``nbytes`` live from ``born`` (counted at that point) until after the point at ``end``."""
        self.allocs.setdefault(born, []).append((node, nbytes))
        self.frees.setdefault(max(end, born), []).append(nbytes)

    def points(self) -> tuple[list[tuple[str, sympy.Expr]], sympy.Expr]:
        """(node, live bytes) at every time something is allocated; and what is live at the end."""
        live, points = ZERO, []
        for when in sorted(set(self.allocs) | {k for k in self.frees if k != _END}):
            new = sympy.Add(*[b for _, b in self.allocs.get(when, ())])
            if new != 0:
                points.append((self.allocs[when][0][0], live + new))
            live = live + new - sympy.Add(*self.frees.get(when, ()))
        return points, live


def _unit_spans(step: Step, units: Sequence[str]) -> dict[str, dict[str, list[int]]]:
    """Orders of each unit's forward and backward ops (by the module that ran them)."""
    spans: dict[str, dict[str, list[int]]] = {u: {"forward": [], "backward": []} for u in units}
    for v in step.nodes:
        if v.kind == "call_function" and v.phase in spans[""]:
            spans[_unit_of(v.module, units)][v.phase].append(v.order)
    return spans


def _unit_sizes(step: Step, plan: _Plan, lives: Mapping[str, _Life]) -> tuple[dict, dict]:
    """Each unit's unsharded parameter bytes and its padded shard bytes. FSDP2's unsharded parameters
    are views into its all-gather outputs, g padded shards each (the storage it resizes)."""
    full: dict[str, sympy.Expr] = {u: ZERO for u in plan.units}
    shard: dict[str, sympy.Expr] = {u: ZERO for u in plan.units}
    for life in lives.values():
        if life.phase == "param":
            info = step.storages[life.key].info
            u = _unit_of(step.node(life.node).param, plan.units)
            size = _item(plan, info, True)
            shard[u] += fsdp_shard_numel(info.shape, plan.gpus) * size
            full[u] += plan.gpus * fsdp_shard_numel(info.shape, plan.gpus) * size
    return full, shard


def _gather_intervals(spans: Mapping[str, Mapping[str, list[int]]], u: str, reshard: bool,
                      prefetch: Mapping[str, int]) -> list[tuple[str, int, int, int]]:
    """(phase, issue, first own op, last op) of each span over which unit ``u``'s parameters are
    unsharded: its forward and its backward, or one span when it is not resharded after forward
    (the root never is); a backward all-gather is issued at the previous unit's backward, where
    FSDP2 prefetches it."""
    fwd, bwd = spans[u]["forward"], spans[u]["backward"]
    if fwd and bwd and (not reshard or u == ""):
        return [("forward", min(fwd), min(fwd), max(bwd))]
    out = [(phase, min(x), min(x), max(x)) for phase, x in (("forward", fwd), ("backward", bwd)) if x]
    if bwd and u in prefetch:
        out[-1] = ("backward", min(prefetch[u], min(bwd)), min(bwd), max(bwd))
    return out


def _fsdp_gathers(step: Step, plan: _Plan, walk: _Walk, lives: Mapping[str, _Life]) -> tuple[sympy.Expr, int]:
    """Hold FSDP2's unsharded parameters over each unit's spans (from its wait), and each all-gather
    output (g padded shards) from its issue to the later of its wait and the next all-gather of the
    phase (FSDP2 frees it there), the last one of the forward at the forward's end. Returns the
    largest unsharded unit with its output, and the shard bytes all-gathered over the step."""
    full, shard = _unit_sizes(step, plan, lives)
    spans = _unit_spans(step, plan.units)
    order = sorted((min(s["backward"]), u) for u, s in spans.items() if s["backward"])
    prefetch = {later: first for (first, _), (_, later) in zip(order, order[1:])}
    gathers = sorted((issue, phase, first, last, u) for u in plan.units if full[u] != 0
                     for phase, issue, first, last in _gather_intervals(spans, u, plan.reshard, prefetch))
    forward_end = max((v.order for v in step.nodes if v.phase == "forward"), default=0) + 0.25
    largest, gathered = [], ZERO
    # under mp_policy the cast shards are freed between the output's allocation and the copy-out, which
    # then comes after it (traced): the copy-out, and the frees it precedes, a step later
    after = 0.015625 if plan.mp is not None else 0.0
    for k, (issue, phase, first, last, u) in enumerate(gathers):
        label = f"{u or 'root'}.all_gather({phase})"
        walk.phases[label] = phase
        walk.hold(label, full[u], first - 0.5 + after, last + 0.125)  # from the unit's wait (copy-out) to its reshard
        later = [i for i, p, *_ in gathers[k + 1:] if p == phase]
        freed = max(later[0], first) - 0.5 + after if later else (
            forward_end if phase == "forward" else first - 0.5 + after)
        # a backward prefetch is issued once the previous unit's copy-out has freed its output
        born = issue - (0.375 if issue < first else 0.5)
        walk.hold(label, plan.gpus * shard[u], born, freed)
        if plan.mp is not None:  # the shards cast to param_dtype, copied into the output and freed
            walk.hold(label, shard[u], born, born)
        if plan.gloo and issue < first:  # gloo's copy of the output; elsewhere no larger than the copy-out
            walk.hold(label, plan.gpus * shard[u], born, born)
        gathered += shard[u]
        largest.append(full[u] + plan.gpus * shard[u])
    return (sympy.Max(*largest) if largest else ZERO), gathered


def _post_backward(step: Step, plan: _Plan) -> dict[str, float]:
    """When each unit's gradients are reduce-scattered: after its last backward op (FSDP2's post-backward)."""
    spans = _unit_spans(step, plan.units)
    last = max((v.order for v in step.nodes if v.phase == "backward"), default=0)
    return {u: (max(s["backward"]) if s["backward"] else last) + 0.25 for u, s in spans.items()}  # after the reshard


@dataclasses.dataclass
class _Totals:
    """Per-GPU sums the walk collects, by kind."""

    params: sympy.Expr = ZERO
    fixed: sympy.Expr = ZERO  # buffers and the input batch
    state: sympy.Expr = ZERO
    grads: sympy.Expr = ZERO
    grads_full: sympy.Expr = ZERO
    activations: sympy.Expr = ZERO
    grad_shards: dict[str, sympy.Expr] = dataclasses.field(default_factory=dict)  # reduce-scatter output, per unit
    grad_kept: dict[str, sympy.Expr] = dataclasses.field(default_factory=dict)  # the sharded gradient FSDP2 keeps
    param_shards: sympy.Expr = ZERO


def _place_grad(plan: _Plan, walk: _Walk, tot: _Totals, life: _Life, info: Any, freed: float) -> None:
    """A gradient: whole to the end (DDP, ZeRO-1), or whole until reduce-scattered (FSDP2: until
    ``freed``), then its shard."""
    whole = info.numel * _item(plan, info, True)
    tot.grads_full += whole
    if plan.strategy in ("ddp", "zero1"):
        walk.hold(life.node, whole, life.born, _END)
        tot.grads += whole
        return
    piece = plan.shard(info, _item(plan, info, True), True)
    if plan.strategy == "zero2":  # reduce-scattered as soon as it is made (a bucket of one tensor)
        walk.hold(life.node, whole, life.born, life.born)
        walk.hold(life.node, piece, life.born + 0.5, _END)
        tot.grads += piece
    else:  # FSDP2: the unit's unsharded gradients live until its post-backward reduce-scatter
        walk.hold(life.node, whole, life.born, freed)


#: When, after a unit's post-backward starts, the reduce-scatter's output is cast to float32 (a
#: reduce_dtype other than float32) and foreach_reduce returns, freeing the gradient it still holds:
#: after the collective (and gloo's copy in it), before anything the next op makes.
_RS_CAST = 0.0625 + 0.0078125


def _grad_params(step: Step, lives: Mapping[str, _Life]) -> dict[str, str]:
    """Gradient storage → its parameter: the step returns the gradients in the trainable parameters'
    order (after the model's output); {} where that reading does not hold up."""
    params = [v.param for v in step.nodes if v.phase == "param" and v.param in step.trainable]
    out = next((v for v in step.nodes if v.kind == "output"), None)
    grads = [k for name in (out.inputs if out else ()) if step.node(name).phase == "backward"
             for k in storage_keys(step.node(name).value)][:len(params)]
    if len(grads) != len(params) or len(set(grads)) != len(grads) or not all(_is_grad(lives[k]) for k in grads):
        return {}
    return dict(zip(grads, params))


def _grad_frees(step: Step, plan: _Plan, lives: Mapping[str, _Life]) -> dict[str, float]:
    """When FSDP2 frees each unsharded gradient: at its unit's reduce-scatter copy-in, except the one of the
    unit's last parameter, which ``foreach_reduce``'s loop variable holds until it returns (after the
    reduce-scatter; traced, see capture.sharded). Without the parameter names, the unit's last-made one."""
    if plan.strategy != "fsdp":
        return {}
    post = _post_backward(step, plan)
    units = {k: _unit_of(step.node(s.node).module, plan.units) for k, s in lives.items() if _is_grad(s)}
    owner = _grad_params(step, lives)
    if owner:  # a gradient belongs to its parameter's unit
        units = {k: _unit_of(owner.get(k, step.node(lives[k].node).module), plan.units) for k in units}
        order = {p: i for i, p in enumerate(owner.values())}
        last = {u: max((order.get(owner.get(k), -1), k) for k, v in units.items() if v == u)[1]
                for u in set(units.values())}
    else:
        last = {u: max((lives[k].born, k) for k, v in units.items() if v == u)[1] for u in set(units.values())}
    return {k: post[u] + (_RS_CAST if last[u] == k else 0.0) for k, u in units.items()}


def _place(step: Step, plan: _Plan, walk: _Walk, tot: _Totals, lives: Mapping[str, _Life]) -> None:
    """Size every storage of the step for one GPU and put it on the walk (resident ones in ``tot``)."""
    shard_params = STRATEGIES[plan.strategy][0]
    frees = _grad_frees(step, plan, lives)
    # the loss and its seed die when backward() returns (traced through fully_shard); symcx.memory, and the
    # other strategies with it (their g = 1 is the single-device figure), hold them through the optimizer
    backward_end = max((v.order for v in step.nodes if v.phase == "backward"), default=0) + 0.75
    for life in lives.values():
        info, v = step.storages[life.key].info, step.node(life.node)
        if life.phase == "param":
            size = plan.shard(info, _orig(plan, info) if plan.mp else _item(plan, info, True), shard_params)
            tot.params += size
            if plan.strategy == "fsdp" and v.param in step.trainable:  # its reduce-scatter output: FSDP2's shard
                unit = _unit_of(v.param, plan.units)
                reduced = plan.shard(info, plan.mp.reduce_bytes, True) if plan.mp else size
                tot.grad_shards[unit] = tot.grad_shards.get(unit, ZERO) + reduced
                tot.grad_kept[unit] = tot.grad_kept.get(unit, ZERO) + size
                tot.grads += size
            if plan.mixed and v.param in step.trainable:  # the fp32 master copy, sharded as the state
                tot.state += plan.state_bytes(info, _MASTER, v.param)
        elif life.phase in ("buffer", "input"):
            tot.fixed += info.numel * _orig(plan, info)
            if plan.mp is not None and life.phase == "input" and info.dtype == plan.mp.param_dtype:
                # FSDP2's root casts the float batch to param_dtype before its forward: the copy the compute reads
                walk.hold(life.node, info.numel * info.itemsize, -1, life.last)
        elif life.phase == "state":
            tot.state += plan.state_bytes(info, _orig(plan, info), plan.owners.get(life.node))
        elif _is_grad(life):
            _place_grad(plan, walk, tot, life, info, frees.get(life.key, _END))
        else:
            size = (plan.state_bytes(info, _orig(plan, info), plan.owners.get(life.node)) if life.phase == "optimizer"
                    else info.numel * info.itemsize)
            loss_end = plan.strategy == "fsdp" and life.phase == "loss" and life.last == _END
            walk.hold(life.node, size, life.born, backward_end if loss_end else life.last)
            if life.saved and life.phase in ("forward", "loss"):
                tot.activations += size
    _reduce_scatters(step, plan, walk, tot, _post_backward(step, plan) if plan.strategy == "fsdp" else {})


def _reduce_scatters(step: Step, plan: _Plan, walk: _Walk, tot: _Totals, post: Mapping[str, float]) -> None:
    """FSDP2's post-backward per unit: the reduce-scatter input (g padded gradient shards), held until
    the next unit's reduce-scatter starts (or the backward's end), and this rank's shard, kept."""
    done = sorted((post[u], u) for u in tot.grad_shards)
    end = max((v.order for v in step.nodes if v.phase == "backward"), default=0) + 0.75
    for k, (when, unit) in enumerate(done):
        label = f"{unit or 'root'}.reduce_scatter"
        walk.phases[label] = "backward"
        freed = done[k + 1][0] - 0.125 if k + 1 < len(done) else end  # freed as the next one starts
        walk.hold(label, plan.gpus * tot.grad_shards[unit], when, freed)
        if plan.mp is not None and plan.mp.reduce_bytes != 4:  # the output in reduce_dtype, cast to float32 after
            walk.hold(label, tot.grad_shards[unit], when + 0.0625, when + _RS_CAST)
            walk.hold(label, tot.grad_kept[unit], when + _RS_CAST, _END)
        else:
            walk.hold(label, tot.grad_shards[unit], when + 0.0625, _END)  # made once the unsharded grads are freed
        if plan.gloo:  # gloo's copy of the input, held while the collective runs
            walk.hold(label, plan.gpus * tot.grad_shards[unit], when + 0.0625, when + 0.0625)


def _plan(step: Step, gpus: Any, strategy: str, reshard_after_forward: bool, precision: str | None,
          units: Sequence[str] | None, backend: str | None = None, partition: str = "flat", rank: int = 0,
          mp_policy: Any = None) -> _Plan:
    """The checked options of a data-parallel walk."""
    count = check_gpus(gpus, strategy)
    owned = _torch_partition(step, count, strategy, partition, rank)
    if backend not in BACKENDS:
        raise SymcxError(f"backend must be None (torch.distributed's own buffers), 'gloo' (with gloo's CPU copies) "
                         f"or 'nccl' (CUDA), not {backend!r}")
    mp = _checked_policy(step, strategy, precision, mp_policy)
    if precision not in (None, "mixed"):
        raise SymcxError(f"precision must be None (as traced) or 'mixed' (16-bit params and grads, fp32 master "
                         f"copy and optimizer state), not {precision!r}")
    if step.route != "symbolic":
        raise SymcxError("per-GPU memory needs the symbolic route's storages; this step was interpolated")
    if not any(v.phase == "param" and v.param in step.trainable for v in step.nodes):
        raise SymcxError(f"{strategy} has nothing to replicate or shard: the model has no trainable parameters")
    unknown = [u for u in units or () if u and u not in step.module_types]
    if unknown:
        raise SymcxError(f"FSDP units {unknown} are not modules of the traced model")
    return _Plan(strategy, count, precision == "mixed", fsdp_units(step, units), bool(reshard_after_forward),
                 backend == "gloo", mp, owned, state_owners(step) if owned is not None else {},
                 kernels=backend in ("gloo", "nccl"))


def _checked_policy(step: Step, strategy: str, precision: str | None, mp_policy: Any) -> MixedPolicy | None:
    """``mp_policy`` as a :class:`MixedPolicy`, refused unless FSDP2 on a step traced at its ``param_dtype``."""
    mp = mp_policy_of(mp_policy)
    if mp is None:
        return None
    if strategy != "fsdp":
        raise SymcxError(f"mp_policy is FSDP2's MixedPrecisionPolicy: strategy='fsdp', not {strategy!r} "
                         f"(precision='mixed' models 16-bit DDP/ZeRO)")
    if precision is not None:
        raise SymcxError("mp_policy and precision='mixed' are two models of the same thing: give one")
    if step.precision != mp.trace:
        raise SymcxError(f"mp_policy={mp.name!r} sizes the compute FSDP2 runs in {mp.param_dtype}: trace it with "
                         f"symcx.analyze(..., precision={mp.trace!r}) (the model itself stays float32), "
                         f"not a step traced at precision {step.precision!r}")
    return mp


def _torch_partition(step: Step, gpus: sympy.Expr, strategy: str, partition: str, rank: Any) -> frozenset[str] | None:
    """The parameters whose state ``rank`` keeps under ``partition="params"`` (torch's ZeRO-1); None for "flat"."""
    if partition not in ("flat", "params"):
        raise SymcxError(f"partition must be 'flat' (each tensor split in g) or 'params' (torch's "
                         f"ZeroRedundancyOptimizer: whole parameters per rank), not {partition!r}")
    if partition == "flat":
        return None
    if strategy != "zero1" or not gpus.is_Integer:
        raise SymcxError("partition='params' is torch's ZeRO-1 (ZeroRedundancyOptimizer): strategy='zero1' and a "
                         f"number of GPUs, not strategy={strategy!r}, gpus={gpus}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < int(gpus):
        raise SymcxError(f"rank must be one of 0..{int(gpus) - 1}, not {rank!r}")
    return owned_params(step, int(gpus), rank)


def parallel_memory(step: Step, gpus: Any, strategy: str, *, reshard_after_forward: bool = True,
                    precision: str | None = None, units: Sequence[str] | None = None,
                    backend: str | None = None, partition: str = "flat", rank: int = 0,
                    mp_policy: Any = None) -> ParallelMemory:
    """Per-GPU memory of ``step`` (the single-GPU trace, t per GPU) data-parallel on ``gpus`` GPUs.

    Parameters
    ----------
    step : Step
        The traced step (``Analysis.step``), with its optimizer when traced with one.
    gpus : int or sympy.Symbol
        The number of GPUs, or ``symcx.g`` for a formula in g.
    strategy : {"ddp", "zero1", "zero2", "fsdp"}
        DDP replicates everything (plus its gradient buckets); ZeRO-1 shards the optimizer
        state; ZeRO-2 also the gradients; FSDP2 (``fully_shard``) also the parameters.
    reshard_after_forward : bool
        FSDP2's option: free a unit's unsharded parameters after its forward (all-gathered again
        in the backward) or keep them to its backward.
    precision : {None, "mixed"}
        None counts tensors as traced; "mixed" holds parameters and gradients in 16 bits and an
        fp32 master copy with the optimizer state (trace in fp32: Adam's K = 12 bytes per parameter).
    units : sequence of str, optional
        The modules ``fully_shard`` wraps (default: each direct child of the root holding parameters).
    backend : {None, "gloo", "nccl"}
        None counts the tensors torch.distributed itself allocates (as traced through
        ``fully_shard`` on the fake backend, :func:`check_fsdp_trace`); "gloo" adds the copies
        gloo's CPU collectives make through torch's allocator: a full copy of a reduce-scatter's
        input, and one of an all-gather's output (measured; it adds to the peak only for a
        backward prefetch); and, as the CPU allocator holds it too, each copy a matrix kernel
        makes of a broadcast operand while it runs (:func:`symcx.memory.kernel_copies`).
        "nccl" (CUDA) counts those kernel copies (cuBLAS clones a broadcast operand too) but
        no collective copies: NCCL's buffers are not torch tensors.
    partition : {"flat", "params"}
        How ZeRO-1 splits the optimizer state: "flat" cuts each tensor in g (``ceiling(numel/g)``,
        as DeepSpeed does); "params" is torch's ``ZeroRedundancyOptimizer`` on DDP: whole
        parameters per rank, largest first to the least-loaded rank, DDP's gradient buckets
        resident; needs ``gpus`` a number, and gives the memory of ``rank``.
    rank : int
        With ``partition="params"``, the rank whose memory is wanted (0 … gpus-1).
    mp_policy : {None, "bf16", "bf16-reduce-bf16", "fp16", "fp16-reduce-fp16"} or MixedPrecisionPolicy
        FSDP2's mixed precision on a float32 model (``fully_shard(..., mp_policy=...)``): the
        all-gathered parameters, the compute and the unsharded gradients in ``param_dtype``;
        the reduce-scatter in ``reduce_dtype`` (float32 for "bf16"); the sharded parameters,
        their gradients, the optimizer state and the batch in float32, and the batch's
        ``param_dtype`` copy the root casts. ``step`` must be traced at ``param_dtype``
        (``analyze(..., precision="bf16")``): that is the compute FSDP2 runs.

    Returns
    -------
    ParallelMemory

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4), optimizer="adam")
    >>> m = parallel_memory(a.step, symcx.g, "zero1")
    >>> m.optimizer  # exp_avg, exp_avg_sq of weight (12) and bias (3), 4 B each, sharded; 2 step scalars
    8*ceiling(3/g) + 8*ceiling(12/g) + 8
    """
    plan = _plan(step, gpus, strategy, reshard_after_forward, precision, units, backend, partition, rank, mp_policy)
    lives = _lives(step, None)
    walk, tot = _Walk(), _Totals()
    _place(step, plan, walk, tot, lives)
    if plan.kernels:  # what the allocator also holds: a matrix kernel's copy of a broadcast operand
        for node, nbytes in kernel_copies(step):
            walk.hold(node, nbytes, step.node(node).order, step.node(node).order)
    largest = ZERO
    if strategy == "fsdp":
        largest, _ = _fsdp_gathers(step, plan, walk, lives)
    # DDP's Reducer (under torch's ZeRO-1 too): a flat copy of every gradient
    buckets = tot.grads_full if strategy == "ddp" or plan.owned is not None else ZERO
    points, end = walk.points()
    if step.optimizer is None:  # as symcx.memory: the untraced optimizer's step holds what is kept to the end
        walk.phases["optimizer.step"] = "optimizer"
        points.append(("optimizer.step", end))
    hints = {**step.hints, **({plan.gpus: G_HINT} if isinstance(plan.gpus, sympy.Symbol) else {})}
    kept, node = peak_points(points, hints)
    resident = tot.params + tot.fixed + tot.state + buckets
    return ParallelMemory(
        strategy=strategy, gpus=plan.gpus, params=tot.params, grads=tot.grads, optimizer=tot.state,
        activations=tot.activations, buffers=largest if strategy == "fsdp" else buckets, resident=resident,
        peak=resident + max_of(e for _, e in kept), peak_node=node,
        peak_phase=step.node(node).phase if node in step else walk.phases.get(node, ""),
        candidates=tuple((v, resident + e) for v, e in kept), reshard_after_forward=plan.reshard,
        mp_policy=plan.mp.name if plan.mp else None,
    )


def communication(step: Step, gpus: Any, strategy: str, *, reshard_after_forward: bool = True,
                  precision: str | None = None, units: Sequence[str] | None = None,
                  mp_policy: Any = None) -> Communication:
    """Bytes each GPU sends per step, ring algorithm: an all-reduce of B bytes sends ``2(g-1)/g·B``, an
    all-gather or reduce-scatter of g padded shards of S bytes sends ``(g-1)·S``.

    DDP all-reduces the gradients; ZeRO-1/2 reduce-scatter them and all-gather the updated
    parameters (the same volume, as in the ZeRO paper); FSDP2 all-gathers each unit's parameters
    before its forward and again before its backward (``reshard_after_forward``; not the root),
    and reduce-scatters its gradients. Options as :func:`parallel_memory` (under ``mp_policy`` the
    all-gathers carry ``param_dtype``, the reduce-scatters ``reduce_dtype``).

    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> communication(a.step, 4, "ddp").all_reduce  # 2·3/4 of 15 float32 gradients
    90
    """
    plan = _plan(step, gpus, strategy, reshard_after_forward, precision, units, mp_policy=mp_policy)
    lives = _lives(step, None)
    walk, tot = _Walk(), _Totals()
    _place(step, plan, walk, tot, lives)
    ring = plan.gpus - 1
    if strategy == "ddp":
        return Communication(strategy, plan.gpus, 2 * ring / plan.gpus * tot.grads_full, ZERO, ZERO)
    if strategy in ("zero1", "zero2"):
        def flat(keep: Callable[[_Life], bool]) -> sympy.Expr:
            infos = [step.storages[s.key].info for s in lives.values() if keep(s)]
            return sympy.Add(*[_flat_shard(i.numel, plan.gpus) * _item(plan, i, True) for i in infos])

        grads = flat(_is_grad)
        params = flat(lambda s: s.phase == "param" and step.node(s.node).param in step.trainable)
        return Communication(strategy, plan.gpus, ZERO, ring * grads, ring * params)
    _, gathered = _fsdp_gathers(step, plan, _Walk(), lives)
    return Communication(strategy, plan.gpus, ZERO, ring * sympy.Add(*tot.grad_shards.values()), ring * gathered)


def parallel_report(analysis: Any, gpus: Any, strategy: str, batch: int | None = None, fmt: str = "table",
                    mp_policy: Any = None) -> str:
    """Per-GPU memory and communication of ``analysis`` (an :class:`~symcx.analysis.Analysis`) as
    JSON (``fmt="json"``) or lines of text, at per-GPU batch ``batch`` (None: in t), under FSDP2's
    ``mp_policy`` when given."""
    import json

    mem = analysis.memory(gpus=gpus, strategy=strategy, mp_policy=mp_policy)
    comm = analysis.communication(gpus, strategy, mp_policy=mp_policy)
    if batch is not None:
        values = {s: batch for s in mem.peak.free_symbols | mem.resident.free_symbols if s.name == "t"}
        mem = mem.subs(values)
    rows = {
        "strategy": strategy, "gpus": str(mem.gpus), "mp_policy": mem.mp_policy, "params_bytes": str(mem.params),
        "grads_bytes": str(mem.grads),
        "optimizer_bytes": str(mem.optimizer), "activations_bytes": str(mem.activations),
        "buffers_bytes": str(mem.buffers), "peak_bytes": str(mem.peak), "peak_node": mem.peak_node,
        "peak_phase": mem.peak_phase, "all_reduce_bytes": str(comm.all_reduce),
        "reduce_scatter_bytes": str(comm.reduce_scatter), "all_gather_bytes": str(comm.all_gather),
        "communication_convention": "ring algorithm, bytes sent per GPU per step",
    }
    if fmt == "json":
        return json.dumps({"schema": "symcx.parallel/1", **rows}, indent=2) + "\n"
    return "".join(f"{k.replace('_', ' ')}: {v}\n" for k, v in rows.items())
