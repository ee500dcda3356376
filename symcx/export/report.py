"""The :class:`Report` every export renders: one record of an analysis's sections.

:func:`build_report` is the one place in :mod:`symcx.export` that reads an
:class:`~symcx.analysis.Analysis` (through its public API only); LaTeX, Markdown, JSON and
the terminal table each print the same :class:`Report`, so they cannot disagree. The
notes (how the step was traced, the FLOP convention, the training count, the bounds the
formulas hold under, uncounted ops, departures from FlopCounterMode) are built here once;
each printer only words them.

This module also holds what the printers share: the labels of every figure and the
number styles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, Union

import sympy

from ..complexity import big_o
from ..errors import SymcxError
from ..symbols import N, n, symbol

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..rows import LayerRow

__all__ = [
    "TOTALS",
    "TRAINING",
    "MEMORY",
    "LAYER_MEMORY",
    "REPORT_SETTINGS",
    "NUMBER_SETTINGS",
    "NUMBERS",
    "check_number_settings",
    "scientific",
    "split_settings",
    "Figure",
    "BigO",
    "LayerBytes",
    "MemorySection",
    "RouteNote",
    "ConventionNote",
    "TrainingNote",
    "AssumptionNote",
    "UncountedNote",
    "DeviationNote",
    "Note",
    "Report",
    "build_report",
    "type_label",
    "PLAIN_NAMES",
    "plain_op",
    "plain_names",
]

#: Totals of one training step: key -> label.
TOTALS = {
    "forward_flops": "Forward FLOPs",
    "backward_flops": "Backward FLOPs",
    "step_flops": "Step FLOPs (forward + backward)",
    "forward_other_flops": "Other forward FLOPs",
    "backward_other_flops": "Other backward FLOPs",
    "params": "Parameters",
    "trainable_params": "Trainable parameters",
    "param_bytes": "Parameter bytes",
    "activation_bytes": "Activation bytes saved for backward",
}

#: Totals over training (:meth:`Analysis.training`): key -> label.
TRAINING = {
    "epochs": "Epochs",
    "samples": "Training samples",
    "steps_per_epoch": "Steps per epoch",
    "flops_per_step": "FLOPs per step",
    "flops_per_epoch": "FLOPs per epoch",
    "total_flops": "Training FLOPs",
    "other_flops_total": "Other training FLOPs",
}

#: Memory of one training step, in bytes (``Analysis.memory``): key -> label.
MEMORY = {
    "params": "Parameters",
    "buffers": "Buffers",
    "inputs": "Input batch",
    "grads": "Gradients",
    "optimizer": "Optimizer state",
    "activations": "Activations saved for backward",
    "peak": "Peak (training step)",
    "inference_peak": "Peak (inference)",
}

#: Memory of one layer, in bytes: key -> label.
LAYER_MEMORY = {
    "param_bytes": "Parameter bytes",
    "grad_bytes": "Gradient bytes",
    "saved_bytes": "Saved bytes",
}

#: Training figures the totals tables leave out (the note and the step totals say them).
_UNTABLED = ("epochs", "samples", "flops_per_step")

#: Settings of :func:`build_report` that every exporter takes, with their defaults.
REPORT_SETTINGS: dict[str, Any] = {"at": None, "epochs": n, "samples": N, "optimizer": None}

#: Number settings every printer takes, with their defaults.
NUMBER_SETTINGS: dict[str, Any] = {"numbers": "separators", "digits": 3}

#: Integer styles the printers offer.
NUMBERS = ("separators", "scientific", "plain")


def check_number_settings(settings: Mapping[str, Any]) -> None:
    """Refuse a ``numbers`` style or ``digits`` count the printers cannot honour.

    Raises
    ------
    ValueError
        ``numbers`` is not one of :data:`NUMBERS`, or ``digits`` is not a positive int.

    Examples
    --------
    >>> check_number_settings({"numbers": "roman", "digits": 3})
    Traceback (most recent call last):
    ...
    ValueError: numbers must be one of ('separators', 'scientific', 'plain'), not 'roman'
    """
    if settings["numbers"] not in NUMBERS:
        raise ValueError(f"numbers must be one of {NUMBERS}, not {settings['numbers']!r}")
    if not isinstance(settings["digits"], int) or settings["digits"] < 1:
        raise ValueError(f"digits must be a positive int, not {settings['digits']!r}")


def scientific(value: int, digits: int) -> tuple[str, int] | None:
    """(mantissa, exponent) of ``value`` to ``digits`` significant digits, None below 10^(digits+1).

    Examples
    --------
    >>> scientific(1199882, 3), scientific(9999, 3)
    (('1.20', 6), None)
    """
    if abs(value) < 10 ** (digits + 1):
        return None
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return mantissa, int(exponent)


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``settings`` split into :func:`build_report`'s keywords and the rest (the printer's).

    Examples
    --------
    >>> split_settings({"at": {"t": 64}, "numbers": "plain"})
    ({'at': {'t': 64}}, {'numbers': 'plain'})
    """
    options = {k: v for k, v in settings.items() if k in REPORT_SETTINGS}
    return options, {k: v for k, v in settings.items() if k not in REPORT_SETTINGS}


@dataclasses.dataclass(frozen=True)
class Figure:
    """One labelled figure: its formula, and its value at the report's ``at`` (the formula without one)."""

    key: str
    label: str
    formula: sympy.Expr
    value: sympy.Expr


@dataclasses.dataclass(frozen=True)
class BigO:
    """Growth of the FLOPs, as ``O(...)`` expressions: of one step and of the whole training.

    ``training`` is always in the epochs ``n`` and samples ``N`` (and the symbols still free):
    with numbers for them the total no longer grows with anything (``O(1)``), which says
    nothing. ``where`` holds the numbers given for ``n`` and ``N``, for the printers to state
    beside it (``O(N n)`` with ``n = 1, N = 60,000``).
    """

    step: sympy.Expr
    training: sympy.Expr
    where: dict[sympy.Symbol, sympy.Expr] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class LayerBytes:
    """Memory of one layer: :data:`LAYER_MEMORY` figures."""

    name: str
    figures: tuple[Figure, ...]


@dataclasses.dataclass(frozen=True)
class PeakPiece:
    """One candidate of the peak: the bytes held while ``node`` runs (its ``phase`` and ``layer``);
    the peak is the largest piece at the sizes in use."""

    node: str
    phase: str
    layer: str
    figure: Figure


@dataclasses.dataclass(frozen=True)
class MemorySection:
    """Memory of one training step with ``optimizer``: :data:`MEMORY` figures, the peak's place, per layer."""

    optimizer: str
    figures: tuple[Figure, ...]
    peak_node: str
    peak_layer: str
    by_layer: tuple[LayerBytes, ...]
    peak_op: str = ""  # the peak node's op family (``aten.threshold_backward``), "" where unknown
    pieces: tuple[PeakPiece, ...] = ()  # the peak's candidates, when it is a Max of more than one
    not_modelled: tuple[str, ...] = ()  # memory the peak leaves out (Memory.not_modelled)
    by_dtype: tuple[tuple[str, Figure], ...] = ()  # bytes held at the peak node, by dtype


@dataclasses.dataclass(frozen=True)
class RouteNote:
    """How the step was traced: ``Analysis.route_note`` in ``text``; ``route`` and, for the
    interpolated route, ``reason`` (why the symbolic trace failed), for printers that word it
    for readers who do not know PyTorch's internals."""

    text: str
    route: str = "symbolic"
    reason: str | None = None


@dataclasses.dataclass(frozen=True)
class ConventionNote:
    """What the FLOPs count (``counted``, FlopCounterMode's convention) and what "other FLOPs" count."""

    counted: tuple[str, ...] = ("matmul", "convolution", "attention")
    other: tuple[str, ...] = ("elementwise ops", "norms", "pooling", "softmax", "reductions")


@dataclasses.dataclass(frozen=True)
class TrainingNote:
    """The training totals' ``epochs`` and ``samples``, ``ceiling(samples/t)`` steps per epoch."""

    epochs: sympy.Expr
    samples: sympy.Expr


@dataclasses.dataclass(frozen=True)
class AssumptionNote:
    """A bound under which the formulas hold (``t >= 2``)."""

    condition: sympy.Basic


@dataclasses.dataclass(frozen=True)
class UncountedNote:
    """An op with no cost rule, in ``layer``, ``count`` times: its cost is missing from the totals."""

    op: str
    layer: str
    count: int


@dataclasses.dataclass(frozen=True)
class DeviationNote:
    """Where symcx departs from FlopCounterMode (``Analysis.deviations``)."""

    text: str


Note = Union[RouteNote, ConventionNote, TrainingNote, AssumptionNote, UncountedNote, DeviationNote]
_N = TypeVar("_N", RouteNote, ConventionNote, TrainingNote, AssumptionNote, UncountedNote, DeviationNote)


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything an export shows, as sympy expressions and plain records.

    ``symbols`` are the names the formulas are in, ``hints`` their example values while
    tracing, ``substituted`` the values already put in with :meth:`Analysis.subs`, ``at``
    the values every :class:`Figure`'s ``value`` is at. ``layers`` are the analysis's rows
    (with their forward and backward derivations); ``memory`` is None where no memory
    formula exists (the interpolation route when the peak moves between program points).
    ``notes`` come in the order every export lists them.
    """

    symbols: dict[str, sympy.Symbol]
    hints: dict[sympy.Symbol, int]
    substituted: dict[sympy.Symbol, sympy.Expr]
    route: str
    at: dict[sympy.Symbol, sympy.Expr]
    layers: tuple[LayerRow, ...]
    totals: tuple[Figure, ...]
    training: tuple[Figure, ...]
    big_o: BigO
    memory: MemorySection | None
    notes: tuple[Note, ...]

    @property
    def summary(self) -> tuple[Figure, ...]:
        """The figures of a totals table: :data:`TOTALS`, then training less epochs, samples and per-step FLOPs."""
        return self.totals + tuple(f for f in self.training if f.key not in _UNTABLED)

    def figure(self, key: str) -> Figure:
        """The totals or training figure ``key`` (:data:`TOTALS`, :data:`TRAINING`)."""
        return next(f for f in self.totals + self.training if f.key == key)

    def notes_of(self, kind: type[_N]) -> list[_N]:
        """The notes of one kind (:class:`UncountedNote`…), in order."""
        return [note for note in self.notes if isinstance(note, kind)]


def type_label(row: LayerRow) -> str:
    """The row's type, or "" where its name already says it (a functional op: ``relu_1``)."""
    return "" if row.name.rsplit(".", 1)[-1].startswith(row.type) else row.type


#: Plain names of op families, for readers who do not know aten (a student's write-up).
PLAIN_NAMES = {
    "relu": "ReLU", "threshold_backward": "ReLU (backward)", "gelu": "GELU", "gelu_backward": "GELU (backward)",
    "silu": "SiLU", "sigmoid": "sigmoid", "tanh": "tanh", "hardtanh": "hardtanh", "leaky_relu": "leaky ReLU",
    "max_pool1d": "max pool", "max_pool2d": "max pool", "max_pool3d": "max pool",
    "max_pool2d_with_indices": "max pool", "max_pool3d_with_indices": "max pool",
    "max_pool2d_with_indices_backward": "max pool (backward)", "avg_pool2d": "average pool",
    "avg_pool2d_backward": "average pool (backward)", "adaptive_avg_pool2d": "adaptive average pool",
    "_adaptive_avg_pool2d": "adaptive average pool", "_log_softmax": "log-softmax",
    "_log_softmax_backward_data": "log-softmax (backward)", "_softmax": "softmax",
    "_softmax_backward_data": "softmax (backward)", "native_dropout": "dropout",
    "native_dropout_backward": "dropout (backward)", "native_batch_norm": "batch norm",
    "_native_batch_norm_legit": "batch norm", "native_layer_norm": "layer norm", "native_group_norm": "group norm",
    "convolution": "convolution", "convolution_backward": "convolution (backward)", "addmm": "linear",
    "mm": "matrix product", "bmm": "batched matrix product", "embedding": "embedding", "add": "add", "mul": "multiply",
    "mean": "mean", "sum": "sum", "cat": "concatenate", "view": "reshape", "flatten": "flatten",
    "nll_loss_forward": "NLL loss", "nll_loss_backward": "NLL loss (backward)",
}


def plain_op(op: str) -> str:
    """A plain name for an op family or fx node name (``aten.max_pool2d_with_indices`` → ``max pool``).

    A node name's counter (``threshold_backward_1``) and in-place ``_`` are dropped; a
    family with no entry in :data:`PLAIN_NAMES` keeps its name, with spaces for ``_``.

    Examples
    --------
    >>> plain_op("aten.max_pool2d_with_indices"), plain_op("threshold_backward_1"), plain_op("relu_")
    ('max pool', 'ReLU (backward)', 'ReLU')
    """
    name = op.split(".")[1] if op.startswith("aten.") else op
    for candidate in (name, name.rstrip("_"), name.rsplit("_", 1)[0]):
        if candidate in PLAIN_NAMES:
            return PLAIN_NAMES[candidate]
    return name.strip("_").replace("_", " ")


def plain_names(rows: Iterable[LayerRow]) -> dict[str, str]:
    """Each row's name for a reader: a module's path as is; a functional op by :func:`plain_op`.

    Functional rows that share a plain name are numbered in forward order (``ReLU 1``,
    ``ReLU 2``); inside a module the module's path stays in front (``block.ReLU``).

    Examples
    --------
    >>> import torch, symcx
    >>> from symcx.zoo import MnistCNN
    >>> names = plain_names(symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28)).layers)
    >>> names["conv1"], names["relu_1"], names["max_pool2d_with_indices"], names["_log_softmax"]
    ('conv1', 'ReLU 2', 'max pool', 'log-softmax')
    """
    rows = list(rows)
    out: dict[str, str] = {}
    for row in rows:
        prefix, _, last = row.name.rpartition(".")
        functional = row.type and last.startswith(row.type) and row.name != "loss"
        out[row.name] = (f"{prefix}." if prefix else "") + plain_op(last) if functional else row.name
    counts: dict[str, int] = {}
    for name in out.values():
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    for key, name in out.items():
        if counts[name] > 1 and name != key:
            seen[name] = seen.get(name, 0) + 1
            out[key] = f"{name} {seen[name]}"
    return out


def _at_values(analysis: Analysis, at: Mapping[Any, Any] | None) -> dict[sympy.Symbol, sympy.Expr]:
    """``at`` keyed by symbol; a name the analysis does not know raises :class:`SymcxError`."""
    known = {*analysis.symbols, *(str(s) for s in analysis.values), "t", "n", "N"}
    for key in at or {}:
        if str(key) not in known:
            raise SymcxError(f"unknown symbol {str(key)!r} in at; this analysis has {sorted(known)}")
    return {symbol(str(k)): sympy.sympify(v) for k, v in (at or {}).items()}


def _figures(
    labels: Mapping[str, str], formulas: Mapping[str, Any], at: Mapping[sympy.Symbol, Any]
) -> tuple[Figure, ...]:
    """A :class:`Figure` per key of ``labels``: its formula from ``formulas``, and its value at ``at``."""
    out = []
    for key, label in labels.items():
        formula = sympy.sympify(formulas[key])
        out.append(Figure(key, label, formula, formula.subs(at) if at else formula))
    return tuple(out)


def _fields(source: Any, keys: Iterable[str]) -> dict[str, Any]:
    """``getattr(source, key)`` for every key."""
    return {key: getattr(source, key) for key in keys}


#: How :class:`symcx.interpolate` says the interpolated route has no memory formula.
_NO_MEMORY_FORMULA = "no memory formula"


def _memory(analysis: Analysis, optimizer: str | None, at: Mapping[sympy.Symbol, Any]) -> MemorySection | None:
    """The memory section, or None where no memory formula exists for ``optimizer``."""
    try:
        mem = analysis.memory(optimizer=optimizer)
    except SymcxError as err:  # only the interpolated route's missing formula; a bad optimizer raises
        if str(err).startswith(_NO_MEMORY_FORMULA):
            return None
        raise
    by_layer = tuple(LayerBytes(m.name, _figures(LAYER_MEMORY, _fields(m, LAYER_MEMORY), at)) for m in mem.by_layer)
    step = analysis.step
    peak_op = step.node(mem.peak_node).packet if mem.peak_node in step else ""
    pieces = tuple(
        PeakPiece(node, step.node(node).phase if node in step else "optimizer",
                  step.node(node).layer if node in step else "optimizer",
                  _figures({"peak": node}, {"peak": expr}, at)[0])
        for node, expr in mem.candidates) if len(mem.candidates) > 1 else ()
    return MemorySection(mem.optimizer_name, _figures(MEMORY, _fields(mem, MEMORY), at), mem.peak_node, mem.peak_layer,
                         by_layer, peak_op, pieces, mem.not_modelled,
                         tuple((d, _figures({"peak": d}, {"peak": e}, at)[0]) for d, e in mem.peak_by_dtype))


def _notes(analysis: Analysis, epochs: sympy.Expr, samples: sympy.Expr) -> tuple[Note, ...]:
    """Every note, in the order the exports list them."""
    return (
        RouteNote(analysis.route_note, analysis.route, analysis.fallback_reason),
        ConventionNote(),
        TrainingNote(epochs, samples),
        *(AssumptionNote(a) for a in analysis.assumptions),
        *(UncountedNote(op, layer, count) for (op, layer), count in sorted(analysis.unsupported.items())),
        *(DeviationNote(d) for d in analysis.deviations),
    )


def _big_o(analysis: Analysis, epochs: sympy.Expr, samples: sympy.Expr) -> BigO:
    """Big-O of a step and of training; training in ``n`` and ``N``, their numbers in ``where``."""
    total = analysis.training(epochs=n, samples=N).total_flops
    where = {s: v for s, v in ((n, epochs), (N, samples)) if v != s}
    return BigO(big_o(analysis.step_flops), big_o(total), where)


def build_report(
    analysis: Analysis,
    *,
    at: Mapping[Any, Any] | None = None,
    epochs: Any = n,
    samples: Any = N,
    optimizer: str | None = None,
) -> Report:
    """The :class:`Report` of ``analysis``: the sections every export shows.

    Parameters
    ----------
    analysis : Analysis
    at : dict, optional
        Symbol values (``{"t": 64}``, by name or symbol) at which every figure's ``value`` is
        taken; without it, ``value`` is the formula.
    epochs, samples : int or sympy expression
        Passed to :meth:`Analysis.training` (default the symbols ``n`` and ``N``).
    optimizer : str
        Passed to ``Analysis.memory``.

    Returns
    -------
    Report

    Raises
    ------
    SymcxError
        ``at`` names a symbol the analysis does not have.

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> r = build_report(a, at={"t": 10}, epochs=2)
    >>> step = r.figure("step_flops")
    >>> step.formula, step.value, r.figure("total_flops").formula, r.big_o.training, r.big_o.where
    (48*t, 480, 96*t*ceiling(N/t), O(N*n), {n: 2})
    >>> [type(note).__name__ for note in r.notes]
    ['RouteNote', 'ConventionNote', 'TrainingNote']
    """
    at_values = _at_values(analysis, at)
    values = analysis.values
    epochs = sympy.sympify(epochs).subs(values)
    samples = sympy.sympify(samples).subs(values)
    totals = analysis.training(epochs=epochs, samples=samples)
    training = {"epochs": epochs, "samples": samples}
    training.update({key: getattr(totals, key) for key in TRAINING if key not in training})
    return Report(
        symbols=analysis.symbols,
        hints=analysis.hints,
        substituted=values,
        route=analysis.route,
        at=at_values,
        layers=tuple(analysis.layers),
        totals=_figures(TOTALS, _fields(analysis, TOTALS), at_values),
        training=_figures(TRAINING, training, at_values),
        big_o=_big_o(analysis, epochs, samples),
        memory=_memory(analysis, optimizer, at_values),
        notes=_notes(analysis, epochs, samples),
    )
