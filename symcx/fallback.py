"""The fallback route: trace at concrete sizes and interpolate every node's cost exactly.

When a model will not trace with symbolic sizes (a kernel that pins the batch, an op that
refuses symbolic shapes), its FLOPs and bytes are still polynomials of low degree in t and
the named dims. symcx traces the step at a grid of concrete values, checks that the graph is
the same at every point, fits each node's cost and shapes with a polynomial of degree ≤ 2 in
each symbol, and verifies the fit at one more point. A node that does not fit is an error,
never a guess.

Some graphs grow with a size: a GRU or RNN runs one cell per time step, so the number of
nodes depends on L. Then the nodes are grouped by (phase, layer, op) and each group's total
cost is fitted instead; the merged graph has one node per group and no data-flow edges, and
memory is fitted from the memory model of each concrete trace (:func:`fitted_memory`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import networkx as nx
import sympy
import torch

from .cost import Cost, TensorInfo
from .errors import SymcxError, TraceError
from .graph import build_graph
from .rules import annotate_costs
from .symbols import symbol
from .trace import BATCH_HINT, DimSpec, Trace, trace_at, tree_leaves

__all__ = ["interpolated_graph", "fitted_memory", "fitted_layer_memory", "DEGREE"]

#: Highest power of each symbol the fit allows (attention is quadratic in L).
DEGREE = 2


def _base_values(example: Any, batch_dim: int | None, dims: Sequence[DimSpec]) -> dict[str, int]:
    tensors = [x for x in tree_leaves(example) if isinstance(x, torch.Tensor)]
    values = {"t": BATCH_HINT} if batch_dim is not None else {}
    for d in dims:
        values[d.name] = max(2, int(tensors[d.input].shape[d.dim]))
    return values


def _fit(points: list[dict[str, int]], names: list[str]):
    """Monomials and the inverse of their design matrix over the grid ``points``."""
    syms = [symbol(nm) for nm in names]
    monomials = [
        sympy.Mul(*[s**e for s, e in zip(syms, exps)])
        for exps in itertools.product(range(DEGREE + 1), repeat=len(names))
    ]
    rows = [[m.subs({s: p[nm] for s, nm in zip(syms, names)}) for m in monomials] for p in points]
    return monomials, sympy.Matrix(rows).inv()


def _poly(values: list[sympy.Expr], monomials, inverse) -> sympy.Expr:
    coeffs = inverse * sympy.Matrix(values)
    return sympy.Add(*[c * m for c, m in zip(coeffs, monomials)])


def _scalars(data: Mapping[str, Any]) -> list[sympy.Expr]:
    """The numbers of one node that are fitted: costs, bytes and output shapes, flattened."""
    cost = data.get("cost")
    out: list[sympy.Expr] = [sympy.sympify(data.get("bytes", 0))]
    if cost is not None:
        out += [cost.flops, cost.other_flops, cost.fcm_flops if cost.fcm_flops is not None else cost.flops]
    infos = data.get("out")
    for info in infos if isinstance(infos, tuple) else (infos,):
        if isinstance(info, TensorInfo):
            out += list(info.shape)
    return out


def _rebuild(data: dict[str, Any], fitted: list[sympy.Expr]) -> None:
    """Write fitted values back in the order ``_scalars`` read them."""
    it = iter(fitted)
    data["bytes"] = next(it)
    cost = data.get("cost")
    if cost is not None:
        flops, other, fcm = next(it), next(it), next(it)
        data["cost"] = dataclasses.replace(
            cost, flops=flops, other_flops=other, factors=(), fcm_flops=None if fcm == flops else fcm
        )
    infos = data.get("out")
    if isinstance(infos, (tuple, TensorInfo)):
        new = []
        for info in infos if isinstance(infos, tuple) else (infos,):
            if isinstance(info, TensorInfo):
                info = dataclasses.replace(info, shape=tuple(next(it) for _ in info.shape))
            new.append(info)
        data["out"] = tuple(new) if isinstance(infos, tuple) else new[0]


class _Fitter:
    """Fits values sampled on the grid (and the check point, last) with verified polynomials."""

    def __init__(self, grid: list[dict[str, int]], check: dict[str, int], names: list[str], reason: str) -> None:
        self.monomials, self.inverse = _fit(grid, names)
        self.at_check = {symbol(k): check[k] for k in names}
        self.names, self.reason = names, reason

    def one(self, samples: Sequence[sympy.Expr], what: str) -> sympy.Expr:
        """The polynomial through ``samples[:-1]``; it must give ``samples[-1]`` at the check point."""
        poly = _poly(list(samples[:-1]), self.monomials, self.inverse)
        if poly.subs(self.at_check) != samples[-1]:
            raise TraceError(
                f"{self.reason}; and {what} is not a polynomial of degree ≤ {DEGREE} in {self.names}"
            )
        return poly

    def many(self, rows: Sequence[Sequence[sympy.Expr]], what: str) -> list[sympy.Expr]:
        """Fit column by column: ``rows[i]`` are the values at grid point ``i``."""
        if len({len(r) for r in rows}) != 1:
            raise TraceError(f"{self.reason}; and {what} changes shape with the sizes")
        return [self.one(col, what) for col in zip(*rows)]


def _grouped(graphs: list[nx.DiGraph], fit: _Fitter) -> nx.DiGraph:
    """One node per (phase, layer, op family) with its fitted total: for graphs that grow."""

    def groups(G: nx.DiGraph) -> dict[tuple[str, str, str], list[str]]:
        out: dict[tuple[str, str, str], list[str]] = {}
        for v in sorted(G.nodes, key=lambda v: G.nodes[v]["order"]):
            d = G.nodes[v]
            if d["kind"] == "call_function":
                out.setdefault((d["phase"], d["layer"], d["packet"]), []).append(v)
        return out

    per_graph = [groups(G) for G in graphs]
    keys = list(per_graph[0])
    if any(set(g) != set(keys) for g in per_graph[1:]):
        raise TraceError(f"{fit.reason}; and the traced graph's layers and ops change with the sizes")
    ref = graphs[0]
    merged = nx.DiGraph(**ref.graph)
    for v, d in ref.nodes(data=True):
        if d["kind"] != "call_function":
            merged.add_node(v, **d)
            data = merged.nodes[v]
            _rebuild(data, fit.many([_scalars(G.nodes[v]) for G in graphs], v))
    order = max((d["order"] for _, d in ref.nodes(data=True)), default=0) + 1
    for k, key in enumerate(keys):
        members = [g[key] for g in per_graph]
        first = ref.nodes[members[0][0]]
        costs = [[G.nodes[u]["cost"] for u in m] for G, m in zip(graphs, members)]
        unsupported = any(c is None for c in costs[0])
        total = [sympy.Add(*[sympy.sympify(G.nodes[u]["bytes"]) for u in m]) for G, m in zip(graphs, members)]
        attrs = {**first, "order": order + k, "bytes": fit.one(total, f"{key[1]} {key[2]} bytes"), "grouped": len(members[0])}
        if not unsupported:
            cost_rows = [
                [sympy.Add(*[c.flops for c in cs]), sympy.Add(*[c.other_flops for c in cs]),
                 sympy.Add(*[c.fcm_flops if c.fcm_flops is not None else c.flops for c in cs])]
                for cs in costs
            ]
            flops, other, fcm = fit.many(cost_rows, f"{key[1]} {key[2]}")
            notes = "; ".join(dict.fromkeys(c.note for c in costs[0] if c.note))
            attrs["cost"] = Cost(flops=flops, other_flops=other, fcm_flops=None if fcm == flops else fcm, note=notes)
        last = [G.nodes[m[-1]].get("out") for G, m in zip(graphs, members)]
        if all(isinstance(o, TensorInfo) for o in last):
            shape = fit.many([list(o.shape) for o in last], f"{key[1]} {key[2]} shape")
            attrs["out"] = dataclasses.replace(last[0], shape=tuple(shape))
        merged.add_node(f"{key[2].split('.')[-1]}[{key[0]}:{key[1]}]", **attrs)
    return merged


def fitted_layer_memory(grid_info: tuple) -> tuple:
    """Per-layer parameter, gradient and saved bytes of a grouped graph, fitted over the grid."""
    from .memory import LayerMemory, step_memory

    grid, check, names, reason, graphs = grid_info
    fit = _Fitter(grid, check, names, reason)
    layers = []
    for rows in zip(*[step_memory(G).by_layer for G in graphs]):
        nums = fit.many([[r.param_bytes, r.grad_bytes, r.saved_bytes] for r in rows], f"memory of {rows[0].name}")
        layers.append(LayerMemory(rows[0].name, *nums, saved=()))
    return tuple(layers)


def fitted_memory(grid_info: tuple, **kwargs: Any):
    """Memory of a grouped graph: the memory model of each concrete trace, fitted field by field.

    Raises
    ------
    SymcxError
        When a figure, typically the peak, moves between program points across the grid and
        so is no single polynomial (a ``Max`` of several), which this route cannot recover.
    """
    from .memory import Memory, step_memory

    grid, check, names, reason, graphs = grid_info
    fit = _Fitter(grid, check, names, reason)
    kwargs.pop("values", None)
    mems = [step_memory(G, **kwargs) for G in graphs]
    fields = ("params", "buffers", "inputs", "grads", "optimizer", "activations", "peak", "inference_peak")
    try:
        values = {f: fit.one([getattr(m, f) for m in mems], f"memory {f}") for f in fields}
    except TraceError as err:
        raise SymcxError(
            f"no memory formula on the interpolated route: {str(err).rsplit('; and ', 1)[-1]} "
            f"(its peak moves between program points as the sizes change); FLOPs and saved bytes are exact"
        ) from err
    layers = fitted_layer_memory(grid_info)
    ref = mems[0]
    return Memory(
        optimizer_name=ref.optimizer_name, dtype=ref.dtype, training=ref.training, **values,
        peak_node=ref.peak_node, peak_layer=ref.peak_layer, inference_peak_node=ref.inference_peak_node,
        candidates=((ref.peak_node, values["peak"]),), by_layer=tuple(layers),
    )


def interpolated_graph(
    model: torch.nn.Module,
    example_input: Any,
    *,
    batch_dim: int | None,
    dims: Sequence[DimSpec],
    loss: Callable[[Any], torch.Tensor] | None,
    options: Mapping[str, Any],
    reason: str,
    strict: bool = False,
) -> tuple[nx.DiGraph, Trace, Counter]:
    """Graph with symbolic costs from concrete traces on a grid; ``trace.route == "interpolated"``.

    Raises
    ------
    TraceError
        If the graph changes between grid points or a node's cost is not a polynomial of
        degree ≤ 2 in each symbol.
    """
    base = _base_values(example_input, batch_dim, dims)
    names = list(base)
    if not names:
        raise TraceError(f"{reason}; and there is no size to interpolate over")
    grid = [dict(zip(names, p)) for p in itertools.product(*[[base[k] + i for i in range(DEGREE + 1)] for k in names])]
    check = {k: base[k] + DEGREE + 2 for k in names}
    graphs, unsupported = [], Counter()
    for values in grid + [check]:
        trace = trace_at(model, example_input, values, batch_dim=batch_dim, dims=dims, loss=loss)
        G = build_graph(trace)
        unsupported = annotate_costs(G, strict=strict, options=options)
        graphs.append((trace, G))
    ref_trace, ref = graphs[0]
    order = list(ref.nodes)
    same = all(
        list(G.nodes) == order and all(G.nodes[v].get("op") == ref.nodes[v].get("op") for v in order)
        for _, G in graphs[1:]
    )
    syms = {k: symbol(k) for k in names}
    fit = _Fitter(grid, check, names, reason)
    if same:
        merged = ref.copy()
        for v in order:
            _rebuild(merged.nodes[v], fit.many([_scalars(G.nodes[v]) for _, G in graphs], v))
    else:
        merged = _grouped([G for _, G in graphs], fit)
        merged.graph["grid"] = (grid, check, names, reason, [G for _, G in graphs])
    trace = dataclasses.replace(
        ref_trace,
        user_symbols=syms,
        hints={syms[k]: base[k] for k in names},
        assumptions=[],
        route="interpolated",
    )
    merged.graph["trace"] = trace
    merged.graph["fallback_reason"] = reason
    return merged, trace, unsupported
