"""The interpolation route: trace at concrete sizes and fit every node's cost exactly.

When a model will not trace with symbolic sizes (a kernel that pins the batch, an op that
refuses symbolic shapes), its FLOPs and bytes are still polynomials of low degree in t and
the named dims. symcx traces the step at a grid of concrete values, checks that the step is
the same at every point, fits each node's cost and shapes with a polynomial of degree ≤ 2 in
each symbol (:class:`~symcx.polyfit.Fitter`), and verifies the fit at two more points: one
just past the grid, and one a few base sizes away (see :func:`_far_point`). A node that does
not fit is an error, never a guess.

After strided ops (a convolution's or pooling's stride, a slice's step) a size steps with
⌊(x + r)/S⌋, constant over S consecutive sizes, and no polynomial in x fits it. Then the grid
is spread to base, base + P, base + 2P (P the product of the model's strides), each floor the
shapes show is located by bisection (:func:`_plateaus`), and every figure is fitted again as a
polynomial in those floors, checked at every other traced size (:func:`_fit_strided`).

Some steps grow with a size: a GRU or RNN runs one cell per time step, so the number of
nodes depends on L; so does a Python loop over time (a Mamba or RWKV scan). Then the nodes are
grouped by (phase, module, op family), a functional op under its module's path rather than its
per-call layer, and each group's total cost is fitted instead; the merged step has one node
per group and no data flow, and memory is fitted from the memory model of each concrete trace
(:class:`FittedMemory`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sympy
import torch

from ._torch import tree_leaves
from .capture import BATCH_HINT, DimSpec, Iteration, trace_at
from .cost import Cost, OpCall, TensorInfo
from .errors import ShapeError, SymcxError, TraceError
from .memory import MEMORY_FIELDS, LayerMemory, Memory, MemoryModel, TracedMemory, step_memory
from .peak import dominates
from .rules import annotate_costs
from .polyfit import DEGREE, Atom, Fitter
from .step import Node, Step, Storage, build_step
from .symbols import symbol

__all__ = ["interpolated", "FittedMemory", "DEGREE", "MAX_PERIOD"]

def _base_values(example: Any, batch_dim: int | None, dims: Sequence[DimSpec]) -> dict[str, int]:
    tensors = [x for x in tree_leaves(example) if isinstance(x, torch.Tensor)]
    values = {"t": BATCH_HINT} if batch_dim is not None else {}
    for d in dims:
        values[d.name] = max(2, int(tensors[d.input].shape[d.dim]))
    return values


def _scalars(node: Node) -> list[sympy.Expr]:
    """The numbers of one node that are fitted: costs, bytes and output shapes, flattened."""
    out: list[sympy.Expr] = [sympy.sympify(node.bytes)]
    if node.cost is not None:
        out += [node.cost.flops, node.cost.other_flops,
                node.cost.fcm_flops if node.cost.fcm_flops is not None else node.cost.flops]
    for info in node.out if isinstance(node.out, tuple) else (node.out,):
        if isinstance(info, TensorInfo):
            out += list(info.shape)
    return out


def _rebuild(node: Node, fitted: list[sympy.Expr]) -> None:
    """Write fitted values back in the order ``_scalars`` read them."""
    it = iter(fitted)
    node.bytes = next(it)
    if node.cost is not None:
        flops, other, fcm = next(it), next(it), next(it)
        node.cost = dataclasses.replace(node.cost, flops=flops, other_flops=other, factors=(),
                                        fcm_flops=None if fcm == flops else fcm)
    if isinstance(node.out, (tuple, TensorInfo)):
        new = []
        for info in node.out if isinstance(node.out, tuple) else (node.out,):
            if isinstance(info, TensorInfo):
                info = dataclasses.replace(info, shape=tuple(next(it) for _ in info.shape))
            new.append(info)
        node.out = tuple(new) if isinstance(node.out, tuple) else new[0]


def _module_layers(step: Step) -> None:
    """Relabel each functional op's per-call layer (``mixer.bmm_16``) with its module's path.

    Functional ops are named after their fx node, so a Python loop over time (a Mamba or RWKV
    scan, ``for i in range(x.shape[1])``) makes new layers at every step and no two grid
    points have the same layers; per module, the layers are the same and each one's cost is L
    times one step's. Ops of the root module take the model's class name.
    """
    root = step.module_types.get("", "model")
    # backward ops and parameters carry the layer of their forward op, so the forward's names say it all
    renamed = {v.layer: v.module or root for v in step.calls() if v.phase == "forward" and v.layer != v.module}
    for v in step.nodes:
        v.layer = renamed.get(v.layer, v.layer)


def _groups(step: Step) -> dict[tuple[str, str, str], list[Node]]:
    out: dict[tuple[str, str, str], list[Node]] = {}
    for v in step.calls():
        out.setdefault((v.phase, v.layer, v.packet), []).append(v)
    return out


def _group_node(key: tuple[str, str, str], members: list[list[Node]], order: int, fit: Fitter) -> Node:
    """One node standing for a group's ops, its total cost, bytes and last shape fitted."""
    first = members[0][0]
    what = f"{key[1]} {key[2]}"
    node = dataclasses.replace(first, name=f"{key[2].split('.')[-1]}[{key[0]}:{key[1]}]", order=order, inputs=(),
                               value=None, grouped=len(members[0]))
    node.bytes = fit.one([sympy.Add(*[sympy.sympify(v.bytes) for v in m]) for m in members], f"{what} bytes")
    if all(v.cost is not None for v in members[0]):
        rows = [[sympy.Add(*[v.cost.flops for v in m]), sympy.Add(*[v.cost.other_flops for v in m]),
                 sympy.Add(*[v.cost.fcm_flops if v.cost.fcm_flops is not None else v.cost.flops for v in m])]
                for m in members]
        flops, other, fcm = fit.many(rows, what)
        notes = "; ".join(dict.fromkeys(v.cost.note for v in members[0] if v.cost.note))
        node.cost = Cost(flops=flops, other_flops=other, fcm_flops=None if fcm == flops else fcm, note=notes)
    else:
        node.cost = None
    last = [m[-1].out for m in members]
    if all(isinstance(o, TensorInfo) for o in last):
        shape = fit.many([list(o.shape) for o in last], f"{what} shape")
        node.out = dataclasses.replace(last[0], shape=tuple(shape))
    return node


def _grouped(steps: list[Step], fit: Fitter) -> list[Node]:
    """The nodes of a step that grows with the sizes: one per (phase, module, op family)."""
    per_step = [_groups(s) for s in steps]
    keys = list(per_step[0])
    if any(set(g) != set(keys) for g in per_step[1:]):
        raise TraceError("the traced graph's layers and ops change with the sizes")
    ref = steps[0]
    nodes = []
    for v in ref.nodes:
        if v.kind != "call_function":
            node = dataclasses.replace(v)
            _rebuild(node, fit.many([_scalars(s.node(v.name)) for s in steps], v.name))
            nodes.append(node)
    order = max((v.order for v in ref.nodes), default=0) + 1
    nodes += [_group_node(key, [g[key] for g in per_step], order + k, fit) for k, key in enumerate(keys)]
    return sorted(nodes, key=lambda v: v.order)


def _fitted_storages(steps: list[Step], fit: Fitter) -> dict[str, Storage]:
    """Every storage of the (same) step with its shape fitted over the grid."""
    ref = steps[0].storages
    out = {}
    for key, s in ref.items():
        shape = fit.many([list(st.storages[key].info.shape) for st in steps], f"storage {key}")
        out[key] = dataclasses.replace(s, info=dataclasses.replace(s.info, shape=tuple(shape)))
    return out


@dataclasses.dataclass(frozen=True)
class FittedMemory:
    """The memory model of a grouped step: each concrete trace's memory, fitted field by field."""

    steps: tuple[Step, ...]
    fit: Fitter

    def memory(self, *, optimizer: str | None = None, dtype: Any = None, training: bool = True,
               values: Mapping[sympy.Symbol, Any] | None = None, iteration: str = "steady") -> Memory:
        """Memory of the step, fitted over the grid (the steady state: ``iteration`` must be it).

        Raises
        ------
        SymcxError
            When a figure, typically the peak, moves between program points across the grid and
            so is no single polynomial (a ``Max`` of several), which this route cannot recover.
        """
        if iteration != "steady":
            raise SymcxError("the interpolated route fits the steady state only")
        if dtype is not None:
            raise SymcxError("memory(dtype=...) traces the step again, which the interpolated route cannot do here: "
                             "analyze(..., precision='bf16') traces the model at that precision")
        mems = [step_memory(s, optimizer=optimizer, dtype=dtype, training=training) for s in self.steps]
        try:
            fitted = {f: self.fit.one([getattr(m, f) for m in mems], f"memory {f}") for f in MEMORY_FIELDS}
        except TraceError as err:
            raise SymcxError(
                f"no memory formula on the interpolated route: {str(err).split(': the grid gives', 1)[0]} "
                f"(its peak moves between program points as the sizes change); FLOPs and saved bytes are exact"
            ) from err
        ref = mems[0]
        floor = fitted["params"] + fitted["buffers"] + fitted["inputs"] + fitted["optimizer"] + fitted["grads"]
        if training and not dominates(fitted["peak"], floor):  # fitted where one piece of a Max is the largest
            raise SymcxError("no memory formula on the interpolated route: the peak fitted over the grid falls below "
                             "the parameters, gradients and inputs at small sizes (its peak moves between program "
                             "points as the sizes change); FLOPs and saved bytes are exact")
        mem = dataclasses.replace(ref, **fitted, candidates=((ref.peak_node, fitted["peak"]),), by_layer=self.layers())
        return mem.subs(values or {})

    def layers(self) -> tuple[LayerMemory, ...]:
        """Per-layer parameter, gradient and saved bytes, fitted over the grid."""
        layers = []
        for rows in zip(*[step_memory(s).by_layer for s in self.steps]):
            nums = self.fit.many([[r.param_bytes, r.grad_bytes, r.saved_bytes] for r in rows],
                                 f"memory of {rows[0].name}")
            layers.append(LayerMemory(rows[0].name, *nums, saved=()))
        return tuple(layers)


def _step_at(model: torch.nn.Module, example: Any, values: Mapping[str, int], **trace: Any) -> Step:
    """The step traced at concrete sizes ``values`` (``trace``: :func:`~symcx.capture.trace_at`'s options)."""
    return build_step(trace_at(model, example, values, **trace))


class _Traces:
    """The steps traced at concrete sizes, each traced and costed once (None where the model does not run)."""

    def __init__(self, trace: Callable[[Mapping[str, int]], Step], options: Mapping[str, Any], strict: bool) -> None:
        self.trace, self.options, self.strict = trace, options, strict
        self.steps: dict[tuple[tuple[str, int], ...], Step | None] = {}
        self.failures: dict[tuple[tuple[str, int], ...], Exception] = {}
        self.unsupported: Counter | None = None

    def __call__(self, values: Mapping[str, int]) -> Step:
        """The step at ``values``; raises the trace's error where the model does not run."""
        key = tuple(sorted(values.items()))
        if key not in self.steps:
            try:
                step = self.trace(values)
            except (TraceError, ShapeError) as err:
                self.steps[key], self.failures[key] = None, err
                raise
            found = annotate_costs(step.nodes, strict=self.strict, options=self.options)
            self.unsupported = found if self.unsupported is None else self.unsupported
            self.steps[key] = step
        if self.steps[key] is None:  # asked again: the same error (its cause, not a new one)
            raise self.failures[key]
        return self.steps[key]

    def maybe(self, values: Mapping[str, int]) -> Step | None:
        """The step at ``values``, None where the model does not run there."""
        try:
            return self(values)
        except (TraceError, ShapeError):
            return None

    def points(self) -> list[dict[str, int]]:
        """Every size traced so far at which the model ran."""
        return [dict(k) for k, s in self.steps.items() if s is not None]


def _far_point(traces: _Traces, base: Mapping[str, int]) -> dict[str, int] | None:
    """A check point far from the grid: ``3·base + 1`` (else ``2·base + 1``) of each size.

    The grid (base … base+2) and the near check (base+4) are five consecutive sizes: a size
    that steps with the floor of a stride of 5 or more (a strided convolution's output,
    ``⌊(L − k)/s⌋ + 1``) can be constant over all of them, and its fit would silently drop the
    symbol. A point a few base lengths away (odd, off the strides' multiples) leaves that
    plateau. Where the model does not run there (a size past a position table), the next
    candidate is tried; if none runs, only the near check is made.
    """
    for scale in (3, 2):
        values = {k: scale * v + 1 for k, v in base.items()}
        if traces.maybe(values) is not None:
            return values
    return None


#: Op families whose ``stride`` (a pooling's defaults to its window) or ``step`` makes a size step.
_STRIDED = ("conv", "pool", "aten.slice", "aten.unfold")

#: The largest stride period the strided fit tries (the lattice grid spans two of them).
MAX_PERIOD = 4096


def _strides(call: OpCall) -> list[int]:
    """The strides and steps of one call (a convolution's, a pooling's, a slice's)."""
    if not any(s in call.op for s in _STRIDED):
        return []
    out = []
    for name in ("stride", "step"):
        value = call.get(name)
        if name == "stride" and value is not None and len(value) == 0:
            value = call.get("kernel_size")  # pooling: the stride defaults to the window
        out += [int(s) for s in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(s, int)]
    return [s for s in out if s > 1]


def _stride_period(step: Step) -> int:
    """A multiple of every size's stride: the product over forward ops of the lcm of their strides.

    A chain of strided ops multiplies its strides (⌊⌊x/a⌋/b⌋ = ⌊x/(a·b)⌋), so every size the
    shapes show steps with a divisor of this product.
    """
    return math.prod(math.lcm(1, *_strides(v.call)) for v in step.calls() if v.phase == "forward" and v.call)


def _entry(step: Step | None, key: tuple[str, int, int]) -> int | None:
    """Size ``key = (node, output, dim)`` in ``step``, None where the step lacks it."""
    name, k, d = key
    if step is None or name not in step:
        return None
    out = step.node(name).out
    infos = out if isinstance(out, tuple) else (out,)
    info = infos[k] if k < len(infos) else None
    return int(info.shape[d]) if isinstance(info, TensorInfo) and d < len(info.shape) else None


def _stepping_sizes(lattice: list[Step], period: int) -> dict[tuple[int, int], tuple[str, int, int]]:
    """Sizes that grow by period/S over the lattice (S > 1 a divisor of it): the first of each
    (S, value at base), by (S, value)."""
    found: dict[tuple[int, int], tuple[str, int, int]] = {}
    for v in lattice[0].nodes:
        infos = v.out if isinstance(v.out, tuple) else (v.out,)
        for k, info in enumerate(infos):
            for d in range(len(info.shape) if isinstance(info, TensorInfo) else 0):
                vals = [_entry(s, (v.name, k, d)) for s in lattice]
                if None in vals or vals[1] - vals[0] != vals[2] - vals[1]:
                    continue
                delta = vals[1] - vals[0]
                if 0 < delta < period and period % delta == 0:
                    found.setdefault((period // delta, vals[0]), (v.name, k, d))
    return found


def _plateau(value_at: Callable[[int], int | None], start: int, stride: int, first: int) -> Atom | None:
    """The atom (S, r) of a size that is ⌊(x + r)/S⌋ + const, from where it first steps past ``start``.

    The size is ``first`` at ``start`` and ``first + 1`` at ``start + stride``; a bisection finds
    the step x₁ (⌈log₂ S⌉ traces), and ⌊(x₁ + c)/S⌋ = first + 1 exactly there gives c.
    """
    lo, hi = start, start + stride
    if value_at(hi) != first + 1:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value = value_at(mid)
        if value not in (first, first + 1):
            return None
        lo, hi = (lo, mid) if value == first + 1 else (mid, hi)
    return stride, ((first + 1) * stride - hi) % stride


def _plateaus(traces: _Traces, base: Mapping[str, int], name: str, period: int) -> list[Atom]:
    """The plateaus ⌊(x + r)/S⌋ of dim ``name`` that the shapes show, each located by bisection."""
    b = base[name]
    lattice = [traces.maybe({**base, name: b + k * period}) for k in range(DEGREE + 1)]
    if None in lattice:
        return []
    atoms: list[Atom] = []
    for (stride, first), key in _stepping_sizes(lattice, period).items():
        atom = _plateau(lambda x: _entry(traces.maybe({**base, name: x}), key), b, stride, first)
        if atom is not None and atom not in atoms:
            atoms.append(atom)
    return atoms


def _where(node: Node) -> str:
    """A node's name and layer, for an error message."""
    return f"{node.name} (in {node.layer})" if node.layer and node.layer != node.name else node.name


@dataclasses.dataclass
class _Fitted:
    """The outcome of one fit: the reference step, its fitted nodes and storages, the memory model."""

    ref: Step
    nodes: tuple[Node, ...]
    storages: dict[str, Storage]
    memory: FittedMemory | None  # None: the step is the same at every point (TracedMemory)


def _fit(traces: _Traces, grid: list[dict], checks: list[dict], names: list[str],
         atoms: Mapping[str, Sequence[Atom]] | None = None) -> _Fitted:
    """Every node fitted over ``grid``, verified at ``checks`` (node by node when the step is the
    same everywhere, else per (phase, module, op family) group)."""
    steps = [traces(p) for p in grid + checks]
    fit = Fitter(grid, checks, names, atoms)
    ref = steps[0]
    same = all([v.name for v in s.nodes] == [v.name for v in ref.nodes]
               and all(a.op == b.op for a, b in zip(s.nodes, ref.nodes)) for s in steps[1:])
    if not same:
        for s in steps:
            _module_layers(s)
        return _Fitted(ref, tuple(_grouped(steps, fit)), {}, FittedMemory(tuple(steps), fit))
    nodes = []
    for v in ref.nodes:
        node = dataclasses.replace(v)
        _rebuild(node, fit.many([_scalars(s.node(v.name)) for s in steps], _where(v)))
        nodes.append(node)
    return _Fitted(ref, tuple(nodes), _fitted_storages(steps, fit), None)


def _fit_strided(traces: _Traces, base: Mapping[str, int], names: list[str], plain: TraceError) -> _Fitted:
    """The fit again with the floors of the model's strides, after the plain polynomial failed.

    The lattice grid (each dim at base, base + P, base + 2P, P a multiple of every stride) puts
    every plateau ⌊(x + r)/S⌋ on three distinct values; each plateau the shapes show is located
    by bisection; the checks are every other traced size (the bisection's included, on either
    side of each step) and one more off the lattice. Refuses, with ``plain``, when the model has
    no strides or a node fits neither way.
    """
    dims = [n for n in names if n != "t"]
    period = _stride_period(traces(base))
    if not dims or not 1 < period <= MAX_PERIOD:
        raise plain
    atoms = {d: _plateaus(traces, base, d, period) for d in dims}
    if not any(atoms.values()):
        raise plain
    spacing = {n: period if n in dims else 1 for n in names}
    grid = [dict(zip(names, p)) for p in itertools.product(
        *[[base[k] + i * spacing[k] for i in range(DEGREE + 1)] for k in names])]
    traces.maybe({k: base[k] + DEGREE + 2 + (period + period // 2 if k in dims else 0) for k in names})
    checks = [p for p in traces.points() if p not in grid]
    try:
        return _fit(traces, grid, checks, names, atoms)
    except TraceError as err:
        raise TraceError(f"{err}; the floors of the strides (period {period}) do not fit either") from plain


def interpolated(
    model: torch.nn.Module,
    example_input: Any,
    *,
    batch_dim: int | None,
    dims: Sequence[DimSpec],
    loss: Callable[[Any], torch.Tensor] | None,
    options: Mapping[str, Any],
    reason: str,
    strict: bool = False,
    iteration: Iteration | None = None,
) -> tuple[Step, Counter, MemoryModel]:
    """A step with symbolic costs from concrete traces on a grid (``route == "interpolated"``),
    its unsupported ops, and its memory model.

    Raises
    ------
    TraceError
        If the step changes between grid points, or a node's cost or shape is neither a
        polynomial of degree ≤ 2 in each symbol nor one in the floors of the model's strides
        at every check point (the near one, base + 4, one a few base sizes away, and, for the
        floors, the sizes on either side of each step).
    """
    base = _base_values(example_input, batch_dim, dims)
    names = list(base)
    if not names:
        raise TraceError(f"{reason}; and there is no size to interpolate over")
    traces = _Traces(lambda values: _step_at(model, example_input, values, batch_dim=batch_dim, dims=dims,
                                             loss=loss, iteration=iteration), options, strict)
    grid = [dict(zip(names, p)) for p in itertools.product(*[[base[k] + i for i in range(DEGREE + 1)] for k in names])]
    checks = [{k: base[k] + DEGREE + 2 for k in names}]
    far = _far_point(traces, base)
    try:
        fitted = _fit(traces, grid, checks + ([far] if far else []), names)
        if far is None and len(names) > ("t" in names) and _stride_period(fitted.ref) > 1:
            # five consecutive sizes can all lie on one plateau of a stride: no far check, no trust
            raise TraceError("the model does not run far from the grid, where its strides would show")
    except TraceError as err:
        fitted = _fit_strided(traces, base, names, err)
    syms = {k: symbol(k) for k in names}
    merged = dataclasses.replace(
        fitted.ref, nodes=fitted.nodes, storages=fitted.storages, user_symbols=syms,
        hints={syms[k]: base[k] for k in names}, assumptions=[], route="interpolated", fallback_reason=reason,
    )
    return merged, traces.unsupported or Counter(), fitted.memory or TracedMemory(merged)

