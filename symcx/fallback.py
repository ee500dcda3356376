"""The fallback route: trace at concrete sizes and interpolate every node's cost exactly.

When a model will not trace with symbolic sizes (a kernel that pins the batch, an op that
refuses symbolic shapes), its FLOPs and bytes are still polynomials of low degree in t and
the named dims. symcx traces the step at a grid of concrete values, checks that the graph is
the same at every point, fits each node's cost and shapes with a polynomial of degree ≤ 2 in
each symbol, and verifies the fit at one more point. A node that does not fit is an error,
never a guess.
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
from .errors import TraceError
from .graph import build_graph
from .rules import annotate_costs
from .symbols import symbol
from .trace import DimSpec, Trace, trace_at, tree_leaves

__all__ = ["interpolated_graph", "DEGREE"]

#: Highest power of each symbol the fit allows (attention is quadratic in L).
DEGREE = 2


def _base_values(example: Any, batch_dim: int | None, dims: Sequence[DimSpec]) -> dict[str, int]:
    tensors = [x for x in tree_leaves(example) if isinstance(x, torch.Tensor)]
    values = {"t": 2} if batch_dim is not None else {}
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
    for _, G in graphs[1:]:
        if list(G.nodes) != order or any(G.nodes[v].get("op") != ref.nodes[v].get("op") for v in order):
            raise TraceError(f"{reason}; and the traced graph changes with the sizes, so no single formula exists")
    monomials, inverse = _fit(grid, names)
    syms = {k: symbol(k) for k in names}
    merged = ref.copy()
    for v in order:
        samples = [_scalars(G.nodes[v]) for _, G in graphs[:-1]]
        fitted = [_poly(list(col), monomials, inverse) for col in zip(*samples)]
        expected = _scalars(graphs[-1][1].nodes[v])
        for f, e in zip(fitted, expected):
            if f.subs({syms[k]: check[k] for k in names}) != e:
                raise TraceError(f"{reason}; and {v}'s cost is not a polynomial of degree ≤ {DEGREE} in {names}")
        _rebuild(merged.nodes[v], fitted)
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
