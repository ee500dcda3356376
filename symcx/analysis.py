"""Totals over the annotated graph: per-layer rows, forward/backward FLOPs, parameters, big-O.

:func:`analyze` is the entry point: trace → graph → rules → :class:`Analysis`. Totals are
sums of per-node sympy expressions (``sympy.Add``; like terms combine as they are added);
no whole-expression ``simplify`` is ever called.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import networkx as nx
import sympy
import torch

from .cost import TensorInfo
from .errors import ShapeError, SymcxError, TraceError
from .fallback import fitted_layer_memory, fitted_memory, interpolated_graph
from .graph import ALIAS_OPS, build_graph
from .rules import annotate_costs, is_free
from .symbols import N, n, t
from .trace import DimSpec, Trace, trace_training_step

if TYPE_CHECKING:
    from .memory import Memory

__all__ = ["analyze", "Analysis", "LayerRow", "Training", "O", "big_o"]

ZERO = sympy.Integer(0)
FORWARD_PHASES = ("forward", "loss")


class O(sympy.Function):
    """Big-O of an expression, kept unevaluated so it prints as ``O(n*N)`` and ``\\mathcal{O}``."""

    nargs = 1

    def _latex(self, printer):
        return r"\mathcal{O}\left(" + printer._print(self.args[0]) + r"\right)"


def _asymptotic(expr: sympy.Expr) -> sympy.Expr:
    """Replace ceiling/floor by their argument: they do not change the growth rate."""
    return expr.replace(lambda e: isinstance(e, (sympy.ceiling, sympy.floor)), lambda e: e.args[0])


def big_o(expr: sympy.Expr, symbols: Iterable[sympy.Symbol] | None = None) -> sympy.Expr:
    """Leading terms of ``expr`` as every symbol grows: coefficients dropped, dominated terms too.

    A monomial is dropped when another has every exponent at least as large and one larger.

    >>> from symcx.symbols import symbol
    >>> i, j, k, t = (symbol(s) for s in "ijkt")
    >>> big_o(6*t*i*j + 6*t*j*k + 4*t*j + 7)
    O(i*j*t + j*k*t)
    """
    expr = sympy.expand(_asymptotic(sympy.sympify(expr)))
    syms = sorted(symbols or expr.free_symbols, key=str)
    if not syms or expr.is_Number:
        return O(sympy.Integer(1))
    try:
        poly_terms = [sympy.Poly(term, *syms).monoms()[0] for term in sympy.Add.make_args(expr)]
    except sympy.PolynomialError:
        return O(expr)
    keep = []
    for m in set(poly_terms):
        dominated = any(o != m and all(a >= b for a, b in zip(o, m)) for o in poly_terms)
        if not dominated:
            keep.append(sympy.Mul(*[s**e for s, e in zip(syms, m)]))
    return O(sympy.Add(*keep))


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One per-layer row: a leaf module, or a functional op called directly in a module."""

    name: str
    type: str
    ops: tuple[str, ...]
    out_shape: tuple[sympy.Expr, ...]
    forward_flops: sympy.Expr
    backward_flops: sympy.Expr
    forward_other_flops: sympy.Expr
    backward_other_flops: sympy.Expr
    params: sympy.Expr
    bytes_out: sympy.Expr
    saved_bytes: sympy.Expr
    derivation: tuple[tuple[sympy.Expr, ...], ...]
    backward_derivation: tuple[tuple[sympy.Expr, ...], ...] = ()
    notes: tuple[str, ...] = ()

    def subs(self, values: Mapping[sympy.Symbol, Any]) -> "LayerRow":
        """This row with ``values`` substituted in every expression."""
        def s(e):
            return sympy.sympify(e).subs(values)

        return dataclasses.replace(
            self,
            out_shape=tuple(s(x) for x in self.out_shape),
            forward_flops=s(self.forward_flops),
            backward_flops=s(self.backward_flops),
            forward_other_flops=s(self.forward_other_flops),
            backward_other_flops=s(self.backward_other_flops),
            params=s(self.params),
            bytes_out=s(self.bytes_out),
            saved_bytes=s(self.saved_bytes),
            derivation=tuple(tuple(s(f) for f in fs) for fs in self.derivation),
            backward_derivation=tuple(tuple(s(f) for f in fs) for fs in self.backward_derivation),
        )


@dataclasses.dataclass(frozen=True)
class Training:
    """Whole-training totals: ``steps_per_epoch = ceiling(N/t)``, ``total = n·steps·per_step``."""

    steps_per_epoch: sympy.Expr
    flops_per_step: sympy.Expr
    flops_per_epoch: sympy.Expr
    total_flops: sympy.Expr
    other_flops_total: sympy.Expr

    def big_o(self) -> sympy.Expr:
        """Growth of the whole-training FLOPs, e.g. ``O(n*N)``."""
        return big_o(self.total_flops)


class Analysis:
    """The symbolic cost of one training step of a model, and its totals.

    Every figure is a sympy expression in ``t`` (batch), the input dims the user named and,
    with ``widths``, the layer widths. FLOPs follow FlopCounterMode's convention (1
    multiply-add = 2 FLOPs, matmul/conv/attention only); ``*_other_flops`` count the ops
    it ignores. Use :meth:`subs` to evaluate at numbers.

    Examples
    --------
    >>> import torch, symcx
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> a = symcx.analyze(mlp, torch.randn(5, 4))
    >>> a.forward_flops
    36*t
    >>> a.subs(t=10).forward_flops
    360
    """

    def __init__(
        self,
        graph: nx.DiGraph,
        trace: Trace,
        unsupported: Counter,
        values: Mapping[sympy.Symbol, Any] | None = None,
    ) -> None:
        self.graph = graph
        self.trace = trace
        self.unsupported = unsupported
        self._values = dict(values or {})

    # --- helpers -------------------------------------------------------------------------
    def _s(self, expr: sympy.Expr) -> sympy.Expr:
        expr = sympy.sympify(expr)
        return expr.subs(self._values) if self._values else expr

    def _sum(self, key: str, phases: tuple[str, ...]) -> sympy.Expr:
        return self._s(self._raw_sum(key, phases))

    @functools.lru_cache(maxsize=None)
    def _raw_sum(self, key: str, phases: tuple[str, ...]) -> sympy.Expr:
        terms = []
        for _, data in self.graph.nodes(data=True):
            cost = data.get("cost")
            if cost is not None and data["phase"] in phases:
                terms.append(getattr(cost, key) if key != "fcm_flops" else
                             (cost.fcm_flops if cost.fcm_flops is not None else cost.flops))
        return sympy.Add(*terms)

    # --- identity ------------------------------------------------------------------------
    @property
    def values(self) -> dict[sympy.Symbol, sympy.Expr]:
        """The symbol values substituted with :meth:`subs` (empty for the symbolic analysis)."""
        return dict(self._values)

    @property
    def symbols(self) -> dict[str, sympy.Symbol]:
        """The user symbols the formulas are in (``t`` and any named dims or widths)."""
        return {k: v for k, v in self.trace.user_symbols.items() if v not in self._values}

    @property
    def assumptions(self) -> list[sympy.Basic]:
        """Bounds under which the formulas hold (guards that change the graph past them)."""
        return list(self.trace.assumptions)

    @property
    def route(self) -> str:
        """How the formulas were obtained: ``"symbolic"`` (one symbolic trace) or ``"interpolated"``.

        ``"interpolated"``: the model would not trace with symbolic sizes (``fallback_reason``
        says why), so it was traced at a grid of sizes and every node's cost fitted exactly.
        """
        return self.trace.route

    @property
    def route_note(self) -> str:
        """One sentence for reports: how the step was traced (and, interpolated, why)."""
        if self.route == "symbolic":
            return ("Traced once with symbolic sizes: one joint forward+backward aten graph on fake tensors "
                    "(symcx's dispatch recorder, the graph make_fx would build).")
        return (f"Interpolated: the symbolic trace failed ({self.fallback_reason}); traced with concrete sizes "
                f"on a grid, each cost fitted exactly and checked at one more point.")

    @property
    def fallback_reason(self) -> str | None:
        """Why the symbolic route failed, when the interpolated route was taken."""
        return self.graph.graph.get("fallback_reason")

    @property
    def hints(self) -> dict[sympy.Symbol, int]:
        """The example value of each symbol used while tracing."""
        return dict(self.trace.hints)

    # --- FLOPs ---------------------------------------------------------------------------
    @property
    def forward_flops(self) -> sympy.Expr:
        """Forward (and loss) FLOPs of one step, FlopCounterMode convention."""
        return self._sum("flops", FORWARD_PHASES)

    @property
    def backward_flops(self) -> sympy.Expr:
        """Backward FLOPs of one step, counted op by op as autograd runs it."""
        return self._sum("flops", ("backward",))

    @property
    def step_flops(self) -> sympy.Expr:
        """Forward + backward FLOPs of one training step."""
        return self.forward_flops + self.backward_flops

    @property
    def forward_other_flops(self) -> sympy.Expr:
        """FLOPs of forward ops FlopCounterMode ignores (elementwise, norms, pooling, softmax)."""
        return self._sum("other_flops", FORWARD_PHASES)

    @property
    def backward_other_flops(self) -> sympy.Expr:
        """FLOPs of backward ops FlopCounterMode ignores."""
        return self._sum("other_flops", ("backward",))

    @property
    def forward_macs(self) -> sympy.Expr:
        """Forward multiply-accumulates: ``forward_flops / 2``."""
        return self.forward_flops / 2

    @property
    def backward_macs(self) -> sympy.Expr:
        """Backward multiply-accumulates: ``backward_flops / 2``."""
        return self.backward_flops / 2

    def flop_counter_flops(self, phase: str = "step") -> sympy.Expr:
        """What FlopCounterMode itself reports, where it differs (``forward``/``backward``/``step``)."""
        phases = {"forward": FORWARD_PHASES, "backward": ("backward",), "step": FORWARD_PHASES + ("backward",)}
        return self._sum("fcm_flops", phases[phase])

    @property
    def deviations(self) -> list[str]:
        """Notes on every op where symcx departs from FlopCounterMode, with the layer."""
        seen: dict[str, None] = {}
        for _, data in self.graph.nodes(data=True):
            cost = data.get("cost")
            if cost is not None and cost.note:
                seen.setdefault(f"{data['layer']}: {data['packet']}: {cost.note}")
        return list(seen)

    # --- parameters and memory -----------------------------------------------------------
    def _param_nodes(self, trainable_only: bool = False):
        for name, data in self.graph.nodes(data=True):
            if data.get("phase") == "param":
                if trainable_only and data["param"] not in self.trace.trainable:
                    continue
                yield name, data

    @property
    def params(self) -> sympy.Expr:
        """Number of parameters (an Integer, or an expression with symbolic widths)."""
        return self._s(sympy.Add(*[d["out"].numel for _, d in self._param_nodes()]))

    @property
    def trainable_params(self) -> sympy.Expr:
        """Number of parameters with ``requires_grad``."""
        return self._s(sympy.Add(*[d["out"].numel for _, d in self._param_nodes(True)]))

    @property
    def param_bytes(self) -> sympy.Expr:
        """Bytes of all parameters."""
        return self._s(sympy.Add(*[d["out"].nbytes for _, d in self._param_nodes()]))

    def _memory(
        self, optimizer: str = "sgd", dtype: Any = None, training: bool = True, values: Mapping | None = None
    ) -> Memory:
        """The memory model over the graph (memoized); on the grouped interpolation route, fitted
        per field."""
        from .memory import step_memory

        key = (optimizer, str(dtype), training, None if values is None else tuple(map(str, values.items())))
        cache = self.__dict__.setdefault("_memory_cache", {})
        if key not in cache:
            kwargs = dict(optimizer=optimizer, dtype=dtype, training=training)
            if "grid" in self.graph.graph:
                mem = fitted_memory(self.graph.graph["grid"], **kwargs)
                cache[key] = mem if values is None else _subs_memory(mem, values)
            else:
                cache[key] = step_memory(self.graph, values=values, **kwargs)
        return cache[key]

    @functools.cached_property
    def _saved_by_layer(self) -> dict[str, sympy.Expr]:
        if "grid" in self.graph.graph:
            return {row.name: row.saved_bytes for row in fitted_layer_memory(self.graph.graph["grid"])}
        return {row.name: row.saved_bytes for row in self._memory().by_layer}

    @property
    def activation_bytes(self) -> sympy.Expr:
        """Bytes of forward values autograd keeps for the backward (the input, held anyway, excluded).

        Per output of a multi-output op: max-pool keeps its indices, not its values.
        """
        return self._s(sympy.Add(*self._saved_by_layer.values()))

    # --- rows ----------------------------------------------------------------------------
    @functools.cached_property
    def _rows(self) -> list[LayerRow]:
        groups: dict[str, list[str]] = {}
        ordered = sorted(self.graph.nodes, key=lambda v: self.graph.nodes[v]["order"])
        for name in ordered:  # rows in the order of their first forward op
            data = self.graph.nodes[name]
            if data["phase"] in FORWARD_PHASES:
                groups.setdefault(data["layer"], [])
        for name in ordered:
            data = self.graph.nodes[name]
            if data["kind"] == "output" or data["phase"] == "input":
                continue
            groups.setdefault(data["layer"], []).append(name)
        rows = []
        for layer, names in groups.items():
            row = self._row(layer, names)
            if row is not None:
                rows.append(row)
        return rows

    def _row(self, layer: str, names: list[str]) -> LayerRow | None:
        G = self.graph
        fwd = [v for v in names if G.nodes[v]["phase"] in FORWARD_PHASES]
        bwd = [v for v in names if G.nodes[v]["phase"] == "backward"]
        prm = [v for v in names if G.nodes[v]["phase"] == "param"]

        def total(nodes, key):
            return sympy.Add(*[getattr(G.nodes[v]["cost"], key) for v in nodes if G.nodes[v].get("cost")])

        ops = tuple(dict.fromkeys(G.nodes[v]["packet"] for v in fwd if G.nodes[v]["packet"] not in ALIAS_OPS))
        row_values = dict(
            forward_flops=total(fwd, "flops"),
            backward_flops=total(bwd, "flops"),
            forward_other_flops=total(fwd, "other_flops"),
            backward_other_flops=total(bwd, "other_flops"),
            params=sympy.Add(*[G.nodes[v]["out"].numel for v in prm]),
        )
        module = G.nodes[fwd[0]]["module"] if fwd else ""
        leaf = module == layer and module != ""
        if not leaf and all(is_free(op) for op in ops) and all(v == 0 for v in row_values.values()):
            return None
        kind = self.trace.module_types.get(module, "") if leaf else (ops[0].split(".", 1)[-1] if ops else "")
        last = next((G.nodes[v]["out"] for v in reversed(fwd) if isinstance(G.nodes[v].get("out"), (TensorInfo, tuple))), None)
        if isinstance(last, tuple):
            last = next((o for o in last if isinstance(o, TensorInfo)), None)
        derivation = tuple(f for v in fwd if G.nodes[v].get("cost") for f in G.nodes[v]["cost"].factors)
        backward_derivation = tuple(f for v in bwd if G.nodes[v].get("cost") for f in G.nodes[v]["cost"].factors)
        notes = tuple(dict.fromkeys(G.nodes[v]["cost"].note for v in fwd + bwd if G.nodes[v].get("cost") and G.nodes[v]["cost"].note))
        row = LayerRow(
            name=layer,
            type=kind,
            ops=ops,
            out_shape=last.shape if last is not None else (),
            bytes_out=sympy.Add(*[G.nodes[v]["bytes"] for v in fwd]),
            saved_bytes=self._saved_by_layer.get(layer, sympy.Integer(0)),
            derivation=derivation,
            backward_derivation=backward_derivation,
            notes=notes,
            **row_values,
        )
        return row.subs(self._values) if self._values else row

    @property
    def layers(self) -> list[LayerRow]:
        """Per-layer rows in forward order (layers with no cost, params or ops are omitted)."""
        return list(self._rows)

    # --- totals over training ------------------------------------------------------------
    def training(self, epochs: Any = n, samples: Any = N) -> Training:
        """Totals for ``epochs`` passes over ``samples`` examples, ``ceiling(N/t)`` steps each.

        The last, partial batch is counted as a full one (an upper bound by at most one step).
        """
        batch = self._values.get(t, t)
        steps = sympy.ceiling(sympy.sympify(samples) / batch)
        step = self.step_flops
        return Training(
            steps_per_epoch=steps,
            flops_per_step=step,
            flops_per_epoch=steps * step,
            total_flops=sympy.sympify(epochs) * steps * step,
            other_flops_total=sympy.sympify(epochs) * steps * (self.forward_other_flops + self.backward_other_flops),
        )

    def big_o(self, of: str = "training") -> sympy.Expr:
        """Growth of the FLOPs: ``"training"`` (n epochs over N samples) or ``"step"``.

        >>> import torch, symcx
        >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(5, 4))
        >>> a.big_o(), a.big_o("step")
        (O(N*n), O(t))
        """
        if of == "step":
            return big_o(self.step_flops)
        if of == "training":
            return self.training().big_o()
        raise ValueError(f"big_o(of=...) takes 'training' or 'step', not {of!r}")

    # --- evaluation ----------------------------------------------------------------------
    def subs(self, values: Mapping[Any, Any] | None = None, **named: Any) -> "Analysis":
        """The same analysis with symbols replaced by numbers (``subs(t=64)``).

        The graph keeps its symbolic costs; every property of the result is evaluated.
        """
        by_name = {s.name: s for s in (*self.trace.user_symbols.values(), t, n, N)}
        merged = dict(self._values)
        for key, value in {**(values or {}), **named}.items():
            sym = by_name.get(key) if isinstance(key, str) else key
            if sym is None:
                raise SymcxError(f"unknown symbol {key!r}; this analysis has {sorted(by_name)}")
            merged[sym] = sympy.sympify(value)
        return Analysis(self.graph, self.trace, self.unsupported, merged)

    def memory(self, optimizer: str = "sgd", dtype: Any = None, training: bool = True) -> Memory:
        """Bytes one training step holds: parameters, gradients, optimizer state, saved
        activations and the peak, with the node where it occurs; see :func:`symcx.memory.step_memory`.

        >>> import torch, symcx
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> mem = symcx.analyze(mlp, torch.randn(5, 4)).memory(optimizer="adam")
        >>> mem.params, mem.optimizer, mem.activations, mem.peak_layer
        (92, 200, 12*t, '1')
        """
        return self._memory(optimizer=optimizer, dtype=dtype, training=training, values=self._values or None)

    def max_batch_size(self, budget_bytes: int, optimizer: str = "sgd") -> int:
        """Largest batch ``t`` whose training-step peak fits in ``budget_bytes`` (0 if none).

        >>> import torch, symcx
        >>> a = symcx.analyze(torch.nn.Linear(784, 10), torch.randn(2, 784))
        >>> a.max_batch_size(16 * 2**30)  # (16 GiB - 62808 B) // 3176 B per sample
        5409258
        """
        return self.memory(optimizer=optimizer).max_batch_size(budget_bytes)

    def __repr__(self) -> str:
        syms = ", ".join(self.symbols) or "none"
        return (
            f"<symcx.Analysis symbols: {syms}; forward {self.forward_flops} FLOPs, "
            f"backward {self.backward_flops} FLOPs, params {self.params}>"
        )

    def to_latex(self, *, standalone: bool = False, **settings: Any) -> str:
        """LaTeX table, derivations and totals; see :func:`symcx.export.latex.to_latex`."""
        from .export.latex import to_latex

        return to_latex(self, standalone=standalone, **settings)

    def to_markdown(self, **settings: Any) -> str:
        """Markdown table, derivations and totals; see :func:`symcx.export.markdown.to_markdown`."""
        from .export.markdown import to_markdown

        return to_markdown(self, **settings)

    def to_json(self, **options: Any) -> str:
        """JSON of schema ``symcx.analysis/1``; see :func:`symcx.export.json.to_json`."""
        from .export.json import to_json

        return to_json(self, **options)

    def _repr_latex_(self) -> str:
        from .export.latex import to_latex

        return to_latex(self, environment="array")

    def _repr_markdown_(self) -> str:
        from .export.markdown import to_markdown

        return to_markdown(self)


def _subs_memory(mem: Memory, values: Mapping[sympy.Symbol, Any]) -> Memory:
    """``mem`` with ``values`` substituted in every expression."""
    if not values:
        return mem
    fields = ("params", "buffers", "inputs", "grads", "optimizer", "activations", "peak", "inference_peak")
    return dataclasses.replace(mem, **{f: sympy.sympify(getattr(mem, f)).subs(values) for f in fields})


def _dim_specs(dims: Mapping[str, Any] | None) -> list[DimSpec]:
    specs = []
    for name, where in (dims or {}).items():
        if name in ("t", "n", "N"):
            raise SymcxError(f"{name!r} is reserved (t batch, n epochs, N samples); choose another name")
        if isinstance(where, int):
            specs.append(DimSpec(name, where, 0, shared=True))
        elif isinstance(where, tuple) and len(where) == 2:
            specs.append(DimSpec(name, where[1], where[0]))
        elif isinstance(where, list) and where and all(isinstance(w, tuple) and len(w) == 2 for w in where):
            specs += [DimSpec(name, dim, index) for index, dim in where]
        else:
            raise SymcxError(
                f"dims[{name!r}] must be a dim index, (input index, dim) or a list of those, not {where!r}"
            )
    return specs


def analyze(
    model: torch.nn.Module,
    example_input: Any,
    *,
    dims: Mapping[str, int | tuple[int, int]] | None = None,
    widths: bool | str = False,
    batch_dim: int | None = 0,
    loss: Callable[[Any], torch.Tensor] | None = None,
    train: bool = True,
    strict: bool = False,
    causal_attention: bool = False,
) -> Analysis:
    """Trace one training step of ``model`` and return its symbolic cost.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it may live on the ``meta`` device (no memory is touched).
    example_input : Tensor, tuple of tensors, or dict of keyword tensors
        An input of the right rank and dtype. Dim ``batch_dim`` of every tensor becomes the
        symbol ``t``; its example size does not matter (the trace uses 8).
    dims : dict, optional
        Input dimensions to make symbolic, by name: ``{"H": 2, "W": 3}`` (dims of the first
        input, and of every other input of its rank with the same example size there, as an
        attention mask beside token ids), ``{"L": (1, 1)}`` (input 1, dim 1 only) or
        ``{"L": [(0, 1), (2, 1)]}``. Example sizes must be 2 or more.
    widths : bool or {"d", "letters"}
        Make every layer width symbolic: ``d_0, d_1, …`` (True or "d") or the seed's
        ``i, j, k, l, …`` ("letters").
    batch_dim : int or None
        The batch dimension of every input; None for no batch symbol.
    loss : callable, optional
        Maps the model's output to the scalar whose gradient is taken; default: the sum of
        every floating-point output (backward FLOPs do not depend on the choice).
    train : bool
        Trace in training mode (dropout active, batch statistics), restoring the mode after.
    strict : bool
        Raise :class:`~symcx.errors.UnsupportedOpError` on an op with no cost rule instead of
        listing it in ``Analysis.unsupported``.
    causal_attention : bool
        Count only the unmasked half of a causal attention's score matrix (off by default,
        as FlopCounterMode, which counts the full square).

    Returns
    -------
    Analysis

    Raises
    ------
    TraceError
        The model cannot be traced (e.g. data-dependent control flow); the message names the
        cause and the model's source line.
    ShapeError
        The example input does not fit the model.
    UnsupportedOpError
        With ``strict=True``, for an op that has no rule.

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> a.forward_flops, a.backward_flops, a.params
    (24*t, 24*t, 15)
    """
    if not isinstance(model, torch.nn.Module):
        raise SymcxError(f"analyze() needs a torch.nn.Module, not {type(model).__name__}")
    style = None if widths is False else ("d" if widths is True else widths)
    if style not in (None, "d", "letters"):
        raise SymcxError(f"widths must be True, False, 'd' or 'letters', not {widths!r}")
    specs = _dim_specs(dims)
    options = {"causal_attention": causal_attention}
    was_training = model.training
    model.train(train)
    try:
        try:
            trace = trace_training_step(model, example_input, batch_dim=batch_dim, dims=specs, widths=style, loss=loss)
        except TraceError as err:
            if style is not None or "data-dependent" in str(err):
                raise
            try:  # the fallback route: concrete traces on a grid, interpolated exactly
                graph, trace, unsupported = interpolated_graph(
                    model, example_input, batch_dim=batch_dim, dims=specs, loss=loss, options=options,
                    reason=str(err).splitlines()[0], strict=strict,
                )
            except (TraceError, ShapeError) as again:  # the symbolic route's cause comes first
                raise TraceError(f"{err}\n  the interpolation fallback failed too: {again}") from err
            return Analysis(graph, trace, unsupported)
    finally:
        model.train(was_training)
    graph = build_graph(trace)
    unsupported = annotate_costs(graph, strict=strict, options=options)
    return Analysis(graph, trace, unsupported)
