"""The interpolation route: trace at concrete sizes and fit every node's cost exactly.

When a model will not trace with symbolic sizes (a kernel that pins the batch, an op that
refuses symbolic shapes), its FLOPs and bytes are still polynomials of low degree in t and
the named dims. symcx traces the step at a grid of concrete values, checks that the step is
the same at every point, fits each node's cost and shapes with a polynomial of degree ≤ 2 in
each symbol, and verifies the fit at two more points: one just past the grid, and one a few
base sizes away (see :func:`_far_step`), where a size that steps with a stride (a strided
convolution's output length, constant over a few consecutive sizes) leaves its plateau. A node
that does not fit is an error, never a guess.

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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sympy
import torch

from ._torch import tree_leaves
from .capture import BATCH_HINT, DimSpec, Iteration, trace_at
from .cost import Cost, TensorInfo
from .errors import ShapeError, SymcxError, TraceError
from .memory import MEMORY_FIELDS, LayerMemory, Memory, MemoryModel, TracedMemory, step_memory
from .rules import annotate_costs
from .step import Node, Step, Storage, build_step
from .symbols import symbol

__all__ = ["interpolated", "FittedMemory", "DEGREE"]

#: Highest power of each symbol the fit allows (attention is quadratic in L).
DEGREE = 2


def _base_values(example: Any, batch_dim: int | None, dims: Sequence[DimSpec]) -> dict[str, int]:
    tensors = [x for x in tree_leaves(example) if isinstance(x, torch.Tensor)]
    values = {"t": BATCH_HINT} if batch_dim is not None else {}
    for d in dims:
        values[d.name] = max(2, int(tensors[d.input].shape[d.dim]))
    return values


class _Fitter:
    """Fits values sampled on the grid with polynomials, each verified at the check points.

    Samples come in the order of ``grid + checks``: the grid's determine the polynomial, each
    check point's must agree with it.
    """

    def __init__(self, grid: list[dict[str, int]], checks: list[dict[str, int]], names: list[str]) -> None:
        syms = [symbol(nm) for nm in names]
        self.monomials = [
            sympy.Mul(*[s**e for s, e in zip(syms, exps)])
            for exps in itertools.product(range(DEGREE + 1), repeat=len(names))
        ]
        rows = [[m.subs({s: p[nm] for s, nm in zip(syms, names)}) for m in self.monomials] for p in grid]
        self.inverse = sympy.Matrix(rows).inv()
        self.size = len(grid)
        self.checks = [{symbol(k): c[k] for k in names} for c in checks]
        self.names = names

    def one(self, samples: Sequence[sympy.Expr], what: str) -> sympy.Expr:
        """The polynomial through the grid's samples; it must give each check point's sample."""
        coeffs = self.inverse * sympy.Matrix(list(samples[: self.size]))
        poly = sympy.Add(*[c * m for c, m in zip(coeffs, self.monomials)])
        for at, sample in zip(self.checks, samples[self.size:]):
            if poly.subs(at) != sample:
                where = ", ".join(f"{k}={v}" for k, v in at.items())
                raise TraceError(
                    f"{what} is not a polynomial of degree ≤ {DEGREE} in {self.names}: "
                    f"the grid gives {poly}, the trace at {where} gives {sample} (neither a cost of higher degree "
                    f"nor a size that steps with the floor of a stride, as after a strided convolution or "
                    f"pooling, has such a formula)"
                )
        return poly

    def many(self, rows: Sequence[Sequence[sympy.Expr]], what: str) -> list[sympy.Expr]:
        """Fit column by column: ``rows[i]`` are the values at grid point ``i``."""
        if len({len(r) for r in rows}) != 1:
            raise TraceError(f"{what} changes shape with the sizes")
        return [self.one(col, what) for col in zip(*rows)]


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


def _group_node(key: tuple[str, str, str], members: list[list[Node]], order: int, fit: _Fitter) -> Node:
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


def _grouped(steps: list[Step], fit: _Fitter) -> list[Node]:
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


def _fitted_storages(steps: list[Step], fit: _Fitter) -> dict[str, Storage]:
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
    fit: _Fitter

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
        mems = [step_memory(s, optimizer=optimizer, dtype=dtype, training=training) for s in self.steps]
        try:
            fitted = {f: self.fit.one([getattr(m, f) for m in mems], f"memory {f}") for f in MEMORY_FIELDS}
        except TraceError as err:
            raise SymcxError(
                f"no memory formula on the interpolated route: {str(err).split(': the grid gives', 1)[0]} "
                f"(its peak moves between program points as the sizes change); FLOPs and saved bytes are exact"
            ) from err
        ref = mems[0]
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


def _far_step(step_at: Callable[[Mapping[str, int]], Step], base: Mapping[str, int]) -> tuple[dict, Step] | None:
    """A check point far from the grid, and its step: ``3·base + 1`` (else ``2·base + 1``) of each size.

    The grid (base … base+2) and the near check (base+4) are five consecutive sizes: a size
    that steps with the floor of a stride of 5 or more (a strided convolution's output,
    ``⌊(L − k)/s⌋ + 1``) can be constant over all of them, and its fit would silently drop the
    symbol. A point a few base lengths away (odd, off the strides' multiples) leaves that
    plateau. Where the model does not run there (a size past a position table), the next
    candidate is tried; if none runs, only the near check is made.
    """
    for scale in (3, 2):
        values = {k: scale * v + 1 for k, v in base.items()}
        try:
            return values, step_at(values)
        except (TraceError, ShapeError):
            continue
    return None


def _where(node: Node) -> str:
    """A node's name and layer, for an error message."""
    return f"{node.name} (in {node.layer})" if node.layer and node.layer != node.name else node.name


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
        If the step changes between grid points, or a node's cost or shape is not a polynomial
        of degree ≤ 2 in each symbol at a check point (the near one, base + 4, and one a few
        base sizes away, which catches a size that steps with a stride).
    """
    base = _base_values(example_input, batch_dim, dims)
    names = list(base)
    if not names:
        raise TraceError(f"{reason}; and there is no size to interpolate over")
    grid = [dict(zip(names, p)) for p in itertools.product(*[[base[k] + i for i in range(DEGREE + 1)] for k in names])]
    checks = [{k: base[k] + DEGREE + 2 for k in names}]
    steps, unsupported = [], Counter()

    def step_at(values: Mapping[str, int]) -> Step:
        return _step_at(model, example_input, values, batch_dim=batch_dim, dims=dims, loss=loss, iteration=iteration)

    for values in grid + checks:
        steps.append(step_at(values))
        unsupported = annotate_costs(steps[-1].nodes, strict=strict, options=options)
    far = _far_step(step_at, base)
    if far is not None:
        checks.append(far[0])
        steps.append(far[1])
        annotate_costs(far[1].nodes, strict=strict, options=options)
    ref = steps[0]
    fit = _Fitter(grid, checks, names)
    same = all([v.name for v in s.nodes] == [v.name for v in ref.nodes]
               and all(a.op == b.op for a, b in zip(s.nodes, ref.nodes)) for s in steps[1:])
    if same:
        for v in ref.nodes:
            _rebuild(v, fit.many([_scalars(s.node(v.name)) for s in steps], _where(v)))
        nodes, storages = ref.nodes, _fitted_storages(steps, fit)
    else:
        for s in steps:
            _module_layers(s)
        nodes, storages = tuple(_grouped(steps, fit)), {}
    syms = {k: symbol(k) for k in names}
    merged = dataclasses.replace(
        ref, nodes=tuple(nodes), storages=storages, user_symbols=syms, hints={syms[k]: base[k] for k in names},
        assumptions=[], route="interpolated", fallback_reason=reason,
    )
    memory = TracedMemory(merged) if same else FittedMemory(tuple(steps), fit)
    return merged, unsupported, memory
