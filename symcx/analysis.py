"""Totals over an annotated step: per-layer rows, forward/backward FLOPs, parameters, memory, big-O.

An :class:`Analysis` is route-agnostic: it holds a typed :class:`~symcx.step.Step` (costs
attached) and the :class:`~symcx.memory.MemoryModel` its route built, and never asks which
route ran. Totals are sums of per-node sympy expressions (``sympy.Add``; like terms combine
as they are added); no whole-expression ``simplify`` is ever called.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import networkx as nx
import sympy

from .collector import fewer_collections
from .complexity import big_o
from .errors import SymcxError
from .layer_table import LayerTable
from .memory import Memory, MemoryModel, not_modelled
from .parallel import (Communication, ParallelMemory, check_fsdp_shards, check_fsdp_trace, communication, fsdp_units,
                       parallel_memory)
from .printing import render
from .rows import LayerRow, layer_rows
from .step import FORWARD_PHASES, Node, Step
from .symbols import N, n, t

__all__ = ["Analysis", "Training"]

_PHASES = {"forward": FORWARD_PHASES, "backward": ("backward",), "step": FORWARD_PHASES + ("backward",),
           "optimizer": ("optimizer",)}


@dataclasses.dataclass(frozen=True)
class Training:
    """Whole-training totals: ``steps_per_epoch = ceiling(N/t)``, ``total = n·steps·per_step``
    (data-parallel: ``global_batch = g·t`` samples a step, ``flops_per_step`` over all GPUs)."""

    steps_per_epoch: sympy.Expr
    flops_per_step: sympy.Expr
    flops_per_epoch: sympy.Expr
    total_flops: sympy.Expr
    other_flops_total: sympy.Expr
    global_batch: sympy.Expr = t

    def big_o(self) -> sympy.Expr:
        """Growth of the whole-training FLOPs, e.g. ``O(n*N)``."""
        return big_o(self.total_flops)


def _fcm(node: Node) -> sympy.Expr:
    """What FlopCounterMode counts for a node: its own figure where it is known to differ."""
    return node.cost.fcm_flops if node.cost.fcm_flops is not None else node.cost.flops


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
        step: Step,
        unsupported: Counter,
        memory_model: MemoryModel,
        values: Mapping[sympy.Symbol, Any] | None = None,
        shards: Callable[[int, Sequence[str]], Mapping[str, int]] | None = None,
        fsdp_trace: Callable[..., Any] | None = None,
    ) -> None:
        self.step = step
        self._shards = shards  # FSDP2's shard sizes at a concrete g, from fully_shard (routes.py)
        self._fsdp_trace = fsdp_trace  # rank 0's step traced through fully_shard at a concrete g (routes.py)
        self.unsupported = unsupported
        self._memory_model = memory_model
        self._values = dict(values or {})
        self._sums: dict[Any, sympy.Expr] = {}
        self._memories: dict[tuple, Memory] = {}

    # --- helpers -------------------------------------------------------------------------
    def _s(self, expr: sympy.Expr) -> sympy.Expr:
        expr = sympy.sympify(expr)
        return expr.subs(self._values) if self._values else expr

    def _costed(self, phases: tuple[str, ...]) -> Iterator[Node]:
        return (v for v in self.step.nodes if v.cost is not None and v.phase in phases)

    def _sum(self, key: str, phase: str) -> sympy.Expr:
        """Total of one cost field over a phase, memoized per analysis (``subs`` makes a new one)."""
        if (key, phase) not in self._sums:
            terms = [_fcm(v) if key == "fcm_flops" else getattr(v.cost, key) for v in self._costed(_PHASES[phase])]
            self._sums[(key, phase)] = self._s(sympy.Add(*terms))
        return self._sums[(key, phase)]

    # --- identity ------------------------------------------------------------------------
    @property
    def graph(self) -> nx.DiGraph:
        """The step as a ``networkx.DiGraph``: one node per aten op (attribute ``"node"``, a
        :class:`~symcx.step.Node`), edges along data flow."""
        return self.step.graph

    @property
    def values(self) -> dict[sympy.Symbol, sympy.Expr]:
        """The symbol values substituted with :meth:`subs` (empty for the symbolic analysis)."""
        return dict(self._values)

    @property
    def symbols(self) -> dict[str, sympy.Symbol]:
        """The user symbols the formulas are in (``t`` and any named dims or widths)."""
        return {k: v for k, v in self.step.user_symbols.items() if v not in self._values}

    @property
    def assumptions(self) -> list[sympy.Basic]:
        """Bounds under which the formulas hold (guards that change the graph past them)."""
        return list(self.step.assumptions)

    @property
    def dropped_guards(self) -> list[sympy.Basic]:
        """Guards torch recorded that were tested past their bound and found not to change the step."""
        return list(self.step.dropped_guards)

    @property
    def route(self) -> str:
        """How the formulas were obtained: ``"symbolic"`` (one symbolic trace) or ``"interpolated"``.

        ``"interpolated"``: the model would not trace with symbolic sizes (``fallback_reason``
        says why), so it was traced at a grid of sizes and every node's cost fitted exactly.
        """
        return self.step.route

    @property
    def route_note(self) -> str:
        """One sentence for reports: how the step was traced (and, interpolated, why)."""
        if self.fallback_reason is None:
            how = ("Traced once with symbolic sizes: one joint forward+backward aten graph on fake tensors "
                   "(symcx's dispatch recorder, the graph make_fx would build).")
        else:
            how = (f"Interpolated: the symbolic trace failed ({self.fallback_reason}); traced with concrete sizes "
                   f"on a grid, each cost fitted exactly and checked at one more point.")
        return " ".join((how, *self.step.notes, *self._iteration_notes()))

    def _iteration_notes(self) -> list[str]:
        """What the traced iteration holds beyond a plain step, and memory the model cannot size."""
        step, out = self.step, []
        if step.optimizer is not None:
            out.append(f"The iteration includes {step.optimizer}'s step() and zero_grad() "
                       f"({self.optimizer_implementation} implementation).")
        if step.precision != "as given":
            out.append(f"Precision: {step.precision}.")
        if step.accumulate > 1:
            out.append(f"Gradient accumulation: {step.accumulate} micro-batches of t per optimizer step; FLOPs and "
                       f"layers are per micro-batch, memory is the whole iteration's.")
        out += [f"Memory not modelled: {what}." for what in not_modelled(step)]
        return out

    @property
    def fallback_reason(self) -> str | None:
        """Why the symbolic route failed, when the interpolated route was taken."""
        return self.step.fallback_reason

    @property
    def hints(self) -> dict[sympy.Symbol, int]:
        """The example value of each symbol used while tracing."""
        return dict(self.step.hints)

    # --- FLOPs ---------------------------------------------------------------------------
    @property
    def forward_flops(self) -> sympy.Expr:
        """Forward (and loss) FLOPs of one step, FlopCounterMode convention."""
        return self._sum("flops", "forward")

    @property
    def backward_flops(self) -> sympy.Expr:
        """Backward FLOPs of one step, counted op by op as autograd runs it."""
        return self._sum("flops", "backward")

    @property
    def step_flops(self) -> sympy.Expr:
        """Forward + backward FLOPs of one training step."""
        return self.forward_flops + self.backward_flops

    @property
    def forward_other_flops(self) -> sympy.Expr:
        """FLOPs of forward ops FlopCounterMode ignores (elementwise, norms, pooling, softmax)."""
        return self._sum("other_flops", "forward")

    @property
    def backward_other_flops(self) -> sympy.Expr:
        """FLOPs of backward ops FlopCounterMode ignores."""
        return self._sum("other_flops", "backward")

    @property
    def recompute_flops(self) -> sympy.Expr:
        """FLOPs of the forward ops activation checkpointing runs again in the backward (in
        ``backward_flops``): hardware FLOPs less model FLOPs, what HFU counts and MFU does not."""
        if "recompute" not in self._sums:
            self._sums["recompute"] = self._s(sympy.Add(*[v.cost.flops for v in self._costed(("backward",))
                                                          if v.recompute]))
        return self._sums["recompute"]

    @property
    def model_flops(self) -> sympy.Expr:
        """FLOPs of one step without the recompute: the numerator of MFU (``step_flops`` is HFU's)."""
        return self.step_flops - self.recompute_flops

    @property
    def optimizer_other_flops(self) -> sympy.Expr:
        """FLOPs of the traced ``optimizer.step()`` (elementwise: Adam's moments and update); 0 untraced."""
        return self._sum("other_flops", "optimizer")

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
        if phase not in _PHASES:
            raise SymcxError(f"phase must be one of {sorted(_PHASES)}, not {phase!r}")
        return self._sum("fcm_flops", phase)

    @property
    def deviations(self) -> list[str]:
        """Notes on every op where symcx departs from FlopCounterMode, with the layer."""
        seen: dict[str, None] = {}
        for v in self._costed(_PHASES["step"]):
            if v.cost.note:
                seen.setdefault(f"{v.layer}: {v.packet}: {v.cost.note}")
        return list(seen)

    # --- parameters and memory -----------------------------------------------------------
    def _param_total(self, key: str, trainable_only: bool = False) -> sympy.Expr:
        nodes = [v for v in self.step.nodes if v.phase == "param"
                 and (not trainable_only or v.param in self.step.trainable)]
        return self._s(sympy.Add(*[getattr(v.out, key) for v in nodes]))

    @property
    def params(self) -> sympy.Expr:
        """Number of parameters (an Integer, or an expression with symbolic widths)."""
        return self._param_total("numel")

    @property
    def trainable_params(self) -> sympy.Expr:
        """Number of parameters with ``requires_grad``."""
        return self._param_total("numel", trainable_only=True)

    @property
    def param_bytes(self) -> sympy.Expr:
        """Bytes of all parameters."""
        return self._param_total("nbytes")

    @functools.cached_property
    def _saved_by_layer(self) -> dict[str, sympy.Expr]:
        return {row.name: row.saved_bytes for row in self._memory_model.layers()}

    @property
    def activation_bytes(self) -> sympy.Expr:
        """Bytes of forward values autograd keeps for the backward (the input, held anyway, excluded).

        Per output of a multi-output op: max-pool keeps its indices, not its values.
        """
        return self._s(sympy.Add(*self._saved_by_layer.values()))

    def memory(self, optimizer: str | None = None, dtype: Any = None, training: bool = True,
               step: str = "steady", *, gpus: Any = None, strategy: str = "ddp",
               reshard_after_forward: bool = True, precision: str | None = None,
               units: Sequence[str] | None = None, mp_policy: Any = None) -> Memory | ParallelMemory:
        """Bytes one training step holds: parameters, gradients, optimizer state, saved
        activations and the peak, with the node where it occurs; see :func:`symcx.memory.step_memory`.

        Analysed with ``optimizer=...``, the iteration's optimizer step is traced: ``step``
        is ``"steady"`` (state made by an earlier step) or ``"first"`` (a fresh optimizer, its
        state made in the step). Otherwise ``optimizer`` names a modelled one (default SGD).
        With ``gpus`` (a number or ``symcx.g``), the per-GPU memory under ``strategy``
        (``"ddp"``, ``"zero1"``, ``"zero2"``, ``"fsdp"``), t per GPU: a
        :class:`~symcx.parallel.ParallelMemory`; see :func:`symcx.parallel.parallel_memory`.
        ``mp_policy`` (``"bf16"``, ``"bf16-reduce-bf16"``, … or torch's ``MixedPrecisionPolicy``)
        is FSDP2's mixed precision on the float32 model: analyse with ``precision="bf16"`` (the
        compute FSDP2 runs) and the sharded parameters, gradients and Adam state are float32.

        >>> import torch, symcx
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
        >>> mem = symcx.analyze(mlp, torch.randn(5, 4)).memory(optimizer="adam")
        >>> mem.params, mem.optimizer, mem.activations, mem.peak_layer
        (92, 200, 12*t, '1')
        """
        if gpus is not None:
            return self._parallel(parallel_memory, optimizer, dtype, training, step, gpus, strategy,
                                  reshard_after_forward, precision, units, mp_policy)
        key = (optimizer, str(dtype), training, step)
        if key not in self._memories:
            with fewer_collections():
                self._memories[key] = self._memory_model.memory(
                    optimizer=optimizer, dtype=dtype, training=training, values=self._values or None, iteration=step)
        return self._memories[key]

    def _parallel(self, fn: Callable, optimizer: Any, dtype: Any, training: bool, step: str, gpus: Any,
                  strategy: str, reshard: bool, precision: str | None, units: Sequence[str] | None,
                  mp_policy: Any = None) -> Any:
        """:func:`parallel_memory` or :func:`communication` of the step, FSDP2's padding checked once
        against ``fully_shard`` where the route gave a way to run it."""
        if (optimizer, dtype, training, step) != (None, None, True, "steady"):
            raise SymcxError("memory(gpus=...) is the steady training step as traced: analyze(..., optimizer=...) "
                             "for the optimizer; optimizer=, dtype=, training=False and step='first' do not apply")
        if strategy == "fsdp" and self._shards is not None:
            found = fsdp_units(self.step, units)
            shapes = {v.param: tuple(int(d) for d in v.out.shape) for v in self.step.nodes
                      if v.phase == "param" and all(sympy.sympify(d).is_Integer for d in v.out.shape)}
            check_fsdp_shards(lambda k: self._shards(k, found), shapes)
            self._shards = None  # checked: the rule holds for this model
        out = fn(self.step, gpus, strategy, reshard_after_forward=reshard, precision=precision, units=units,
                 mp_policy=mp_policy)
        return out.subs(self._values) if self._values else out

    def check_fsdp(self, batch: int = 2, *, reshard_after_forward: bool = True, units: Sequence[str] | None = None,
                   fit: Sequence[int] = (2, 3, 4), check: int = 8, mp_policy: Any = None) -> list[dict[str, Any]]:
        """The FSDP2 formula in g checked, exactly, against rank 0's step traced through ``fully_shard``
        on torch's fake process group at each ``fit`` g and at ``check``; see
        :func:`symcx.parallel.check_fsdp_trace` (one row per g; :class:`SymcxError` on a mismatch).
        With ``mp_policy`` (an analysis traced at its param_dtype) the float32 model is wrapped with
        ``fully_shard(..., mp_policy=...)``.

        >>> import torch, symcx
        >>> a = symcx.analyze(torch.nn.Linear(8, 6), torch.randn(2, 8), optimizer="adam")
        >>> [r["traced_peak_bytes"] == r["predicted_peak_bytes"] for r in a.check_fsdp(batch=4)]
        [True, True, True, True]
        """
        if self._fsdp_trace is None:
            raise SymcxError("check_fsdp needs the model: an analysis of the symbolic route (symcx.analyze)")
        found = fsdp_units(self.step, units)
        return check_fsdp_trace(self.step, lambda k: self._fsdp_trace(k, batch, found, reshard_after_forward, mp_policy),
                                batch, reshard_after_forward=reshard_after_forward, units=units, fit=fit, check=check,
                                mp_policy=mp_policy)

    def communication(self, gpus: Any, strategy: str, *, reshard_after_forward: bool = True,
                      precision: str | None = None, units: Sequence[str] | None = None,
                      mp_policy: Any = None) -> Communication:
        """Bytes each GPU sends per step under ``strategy`` on ``gpus`` GPUs, ring algorithm, by collective;
        see :func:`symcx.parallel.communication`.

        >>> import torch, symcx
        >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
        >>> a.communication(symcx.g, "ddp").all_reduce  # 2(g-1)/g of 60 gradient bytes
        60*(2*g - 2)/g
        """
        return self._parallel(communication, None, None, True, "steady", gpus, strategy, reshard_after_forward,
                              precision, units, mp_policy)

    @property
    def optimizer_implementation(self) -> str | None:
        """Which form of the traced optimizer ran, as torch picked it for the parameters' device
        (or the user's ``foreach=``/``fused=``): ``"fused"``, ``"foreach"`` or ``"for-loop"``; None untraced."""
        if self.step.optimizer is None:
            return None
        packets = {v.packet for v in self.step.calls() if v.phase == "optimizer"}
        if any(p.startswith("aten._fused_") for p in packets):
            return "fused"
        return "foreach" if any(p.startswith("aten._foreach_") for p in packets) else "for-loop"

    @property
    def optimizer(self) -> str | None:
        """The optimizer whose step was traced with the iteration (``analyze(..., optimizer=...)``), else None."""
        return self.step.optimizer

    def max_batch_size(self, budget_bytes: int | str, optimizer: str | None = None) -> int:
        """Largest batch ``t`` whose training-step peak fits in ``budget_bytes`` (0 if none).

        ``budget_bytes`` is bytes, or a string such as ``"16GiB"``, ``"512 MB"`` or ``"1.5GB"``
        (see :func:`symcx.memory.parse_bytes`).

        >>> import torch, symcx
        >>> a = symcx.analyze(torch.nn.Linear(784, 10), torch.randn(2, 784))
        >>> a.max_batch_size(16 * 2**30)  # (16 GiB - 62808 B) // 3176 B per sample
        5409258
        """
        return self.memory(optimizer=optimizer).max_batch_size(budget_bytes)

    # --- rows ----------------------------------------------------------------------------
    @functools.cached_property
    def _rows(self) -> list[LayerRow]:
        rows = layer_rows(self.step, self._saved_by_layer)
        return [row.subs(self._values) for row in rows] if self._values else rows

    @property
    def layers(self) -> LayerTable:
        """Per-layer rows in forward order (layers with no cost, params or ops are omitted).

        A :class:`~symcx.layer_table.LayerTable`: a list that prints as a table.
        """
        return LayerTable(self._rows)

    # --- totals over training ------------------------------------------------------------
    def training(self, epochs: Any = n, samples: Any = N, gpus: Any = 1) -> Training:
        """Totals for ``epochs`` passes over ``samples`` examples, ``ceiling(N/t)`` steps each.

        The last, partial batch is counted as a full one (an upper bound by at most one step).
        With ``gpus`` (a number or ``symcx.g``) data-parallel, t per GPU: a step takes the global
        batch ``g·t`` (``ceiling(N/(g·t))`` steps), and its FLOPs are ``g`` times one GPU's.
        """
        batch = self._values.get(t, t) * sympy.sympify(gpus)
        steps = sympy.ceiling(sympy.sympify(samples) / batch)
        step = self.step_flops * sympy.sympify(gpus)
        return Training(
            steps_per_epoch=steps,
            flops_per_step=step,
            flops_per_epoch=steps * step,
            total_flops=sympy.sympify(epochs) * steps * step,
            other_flops_total=sympy.sympify(epochs) * steps * sympy.sympify(gpus) * (
                self.forward_other_flops + self.backward_other_flops + self.optimizer_other_flops),
            global_batch=batch,
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

        Every symbol (``t``, ``n``, ``N`` and each size) is a positive integer, so a number must
        be one (a Python ``int`` or a sympy ``Integer`` > 0); a sympy expression substitutes
        partially (``subs(t=symcx.symbol("b"))``). Anything else raises :class:`SymcxError`.
        The step keeps its symbolic costs; every property of the result is evaluated.
        """
        by_name = {s.name: s for s in (*self.step.user_symbols.values(), t, n, N)}
        merged = dict(self._values)
        for key, value in {**(values or {}), **named}.items():
            sym = by_name.get(key) if isinstance(key, str) else key
            if sym is None:
                raise SymcxError(f"unknown symbol {key!r}; this analysis has {sorted(by_name)}")
            name = getattr(sym, "name", key)
            if isinstance(value, sympy.Basic) and not value.is_number:
                merged[sym] = value  # partial substitution: an expression in other symbols
                continue
            if isinstance(value, bool) or not isinstance(value, (numbers.Integral, sympy.Integer)) or value < 1:
                raise SymcxError(
                    f"subs({name}={value!r}): {name} must be a positive integer or a sympy expression "
                    f"(e.g. symcx.symbol('b')), not {value!r} ({type(value).__name__})"
                )
            merged[sym] = sympy.Integer(value)
        return Analysis(self.step, self.unsupported, self._memory_model, merged, self._shards, self._fsdp_trace)

    def __repr__(self) -> str:
        syms = ", ".join(self.symbols) or "none"
        return (
            f"<symcx.Analysis symbols: {syms}; forward {self.forward_flops} FLOPs, "
            f"backward {self.backward_flops} FLOPs, params {self.params}>"
        )

    # --- exports (through symcx.printing: the exporters register there, nothing imports them here)
    def to_latex(self, *, standalone: bool = False, **settings: Any) -> str:
        """LaTeX table, derivations and totals; see :func:`symcx.export.latex.to_latex`."""
        return render("latex", self, standalone=standalone, **settings)

    def to_markdown(self, **settings: Any) -> str:
        """Markdown table, derivations and totals; see :func:`symcx.export.markdown.to_markdown`."""
        return render("markdown", self, **settings)

    def to_json(self, **options: Any) -> str:
        """JSON of schema ``symcx.analysis/1``; see :func:`symcx.export.json.to_json`."""
        return render("json", self, **options)

    def _repr_latex_(self) -> str:
        return render("latex", self, environment="array")

    def _repr_markdown_(self) -> str:
        return render("markdown", self)
