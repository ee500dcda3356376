"""A :class:`~symcx.export.report.Report` as Markdown: per-layer table, derivations, totals, memory, notes.

Expressions print as sympy's ``str`` form in code spans, integers with thousands separators
(``1,199,882``), in scientific form (``1.20e6``) or plain, by the ``numbers`` setting; with
``units="human"`` the tables print counts as ``1.20M`` and bytes as ``4.58MiB`` (derivations
stay exact). The per-layer table is a module tree (:func:`~symcx.layer_table.tree_entries`):
a totals row per block, folded at ``depth``, with each row's share of the parameters and of
the step's FLOPs. The column logic here (:meth:`MarkdownPrinter.entry_cells`) serves the
terminal table too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from ..layer_table import Entry, human_integer, share, tree_entries
from .report import (
    NUMBER_SETTINGS,
    AssumptionNote,
    ConventionNote,
    Figure,
    Report,
    RouteNote,
    TrainingNote,
    UncountedNote,
    build_report,
    check_number_settings,
    scientific,
    split_settings,
    type_label,
)

if TYPE_CHECKING:
    from ..analysis import Analysis

__all__ = ["MarkdownPrinter", "to_markdown", "COLUMNS", "NUMBER_COLUMNS"]

#: The per-layer columns, in order, and which hold numbers (right-aligned, never wrapped).
COLUMNS = ("Layer", "Type", "Input", "Output", "Kernel", "Params", "% params", "Trainable",
           "Forward FLOPs", "Backward FLOPs", "% FLOPs", "Other FLOPs", "Saved bytes", "Weights + biases")
NUMBER_COLUMNS = frozenset({"Params", "% params", "Forward FLOPs", "Backward FLOPs", "% FLOPs", "Other FLOPs",
                            "Saved bytes"})
#: Columns holding expressions (code spans in Markdown).
_EXPRESSION_COLUMNS = frozenset({"Input", "Output", "Params", "Forward FLOPs", "Backward FLOPs", "Other FLOPs",
                                 "Saved bytes", "Weights + biases"})
_UNITS = ("exact", "human")


def _code(text: str) -> str:
    """``text`` as a code span that is safe inside a table cell."""
    return "`" + text.replace("|", "\\|") + "`"


class MarkdownPrinter(StrPrinter):
    """sympy's ``str`` printer with readable integers, taught :class:`Report`, its rows and notes.

    Settings beyond sympy's: ``numbers`` ("separators", "scientific", "plain"), ``digits``
    (3, significant digits in scientific form), ``units`` ("exact", or "human": ``21.2M``,
    ``9.08MiB`` in the tables), ``depth`` (None, or fold the module tree below this level),
    ``timeline`` (None, or the path of a memory-timeline image to show), ``title``
    ("symcx analysis").

    Examples
    --------
    >>> import sympy
    >>> MarkdownPrinter().doprint(sympy.Integer(23984896) * sympy.Symbol("t"))
    '23,984,896*t'
    >>> MarkdownPrinter({"numbers": "scientific"}).doprint(sympy.Integer(23984896))
    '2.40e7'
    >>> MarkdownPrinter({"units": "human"}).cell(sympy.Integer(532072) * sympy.Symbol("t"), "bytes")
    '520KiB*t'
    >>> from symcx.export.report import UncountedNote
    >>> MarkdownPrinter().doprint(UncountedNote("aten.fft_r2c", "fc1", 2))
    'Not counted (no cost rule): `aten.fft_r2c` in `fc1` (×2).'
    """

    _default_settings: dict[str, Any] = {
        **StrPrinter._default_settings,
        **NUMBER_SETTINGS,
        "units": "exact",
        "depth": None,
        "timeline": None,
        "title": "symcx analysis",
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        check_number_settings(self._settings)
        if self._settings["units"] not in _UNITS:
            raise ValueError(f"units must be one of {_UNITS}, not {self._settings['units']!r}")
        depth = self._settings["depth"]
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise ValueError(f"depth must be a positive int or None, not {depth!r}")
        self._unit: str | None = None  # "count" or "bytes" while a table cell prints in human units

    def _print_Integer(self, expr: sympy.Integer) -> str:
        value = int(expr)
        if self._unit is not None:
            return human_integer(value, self._unit)
        style = self._settings["numbers"]
        sci = scientific(value, self._settings["digits"]) if style == "scientific" else None
        if sci is not None:
            return f"{sci[0]}e{sci[1]}"
        return f"{value:,}" if style == "separators" else str(value)

    _print_int = _print_Integer

    def _expr(self, expr: Any) -> str:
        return _code(self._print(sympy.sympify(expr)))

    def product(self, factors: Any, sep: str = " × ") -> str:
        """Factors joined by ``sep``, unevaluated, each parenthesized where needed: ``t×8×(H - 2)``."""
        return sep.join(self.parenthesize(sympy.sympify(f), PRECEDENCE["Mul"], strict=True) for f in factors)

    def cell(self, expr: Any, unit: str = "count") -> str:
        """``expr`` for a table cell: in ``unit`` ("count" or "bytes") when ``units`` is "human"."""
        self._unit = unit if self._settings["units"] == "human" else None
        try:
            return self._print(sympy.sympify(expr))
        finally:
            self._unit = None

    def _shape(self, shape: Any) -> str:
        return (self.product(shape, "×") or "scalar") if shape is not None else ""

    def entry_cells(self, entry: Entry, report: Report) -> dict[str, str]:
        """The :data:`COLUMNS` of one tree line, as plain text (no code spans)."""
        at = report.at or report.hints
        row = entry.row
        kernel = ""
        if row is not None:
            shapes = ", ".join(self.product(shape, "×") for shape in row.weight_shapes)
            kernel = "; ".join(x for x in (shapes, row.details) if x)
        return {
            "Layer": entry.name, "Type": type_label(row) if row is not None else f"block of {entry.rows}",
            "Input": self._shape(row.in_shape) if row is not None and row.in_shape else "",
            "Output": self._shape(row.out_shape) if row is not None else "", "Kernel": kernel,
            "Params": self.cell(entry.params),
            "% params": share(entry.params, report.figure("params").formula, at) if entry.params != 0 else "",
            "Trainable": {True: "yes", False: "no", None: ""}[entry.trainable],
            "Forward FLOPs": self.cell(entry.forward_flops), "Backward FLOPs": self.cell(entry.backward_flops),
            "% FLOPs": share(entry.forward_flops + entry.backward_flops, report.figure("step_flops").formula, at)
            if entry.forward_flops + entry.backward_flops != 0 else "",
            "Other FLOPs": self.cell(entry.other_flops), "Saved bytes": self.cell(entry.saved_bytes, "bytes"),
            # the seed's "1×3×3×32 weights and 32 biases": counts, where a layer has both
            "Weights + biases": f"{self.cell(row.weights)} + {self.cell(row.biases)}"
            if row is not None and row.biases != 0 else "",
        }

    def _layer_lines(self, report: Report) -> list[str]:
        """The per-layer table: header, alignment, one line per tree entry (blocks in bold)."""
        lines = ["| " + " | ".join(COLUMNS) + " |",
                 "| " + " | ".join("--:" if c in NUMBER_COLUMNS else ":--" for c in COLUMNS) + " |"]
        for entry in tree_entries(report.layers, self._settings["depth"]):
            cells = self.entry_cells(entry, report)
            out = [_code(cells[c]) if c in _EXPRESSION_COLUMNS and cells[c] else cells[c].replace("|", "\\|")
                   for c in COLUMNS]
            out[0] = _code(cells["Layer"]) if entry.row is not None else f"**{_code(cells['Layer'])}**"
            lines.append("| " + " | ".join(out) + " |")
        return lines

    def _derivations(self, report: Report) -> list[str]:
        """One line per layer and phase: the products factor by factor; backward terms named
        by what they compute (``grad input``, ``grad weight``)."""
        lines = []
        for row in report.layers:
            if row.derivation:
                terms = _code(" + ".join(self.product(fs) for fs in row.derivation))
                lines.append(f"- {_code(row.name)} forward: {terms} = {self._expr(row.forward_flops)}")
            if row.backward_terms:
                terms = " + ".join(f"{label} {_code(self.product(fs))}" for label, fs in row.backward_terms)
                lines.append(f"- {_code(row.name)} backward: {terms} = {self._expr(row.backward_flops)}")
        return lines

    def _table(self, figures: tuple[Figure, ...], at: dict[sympy.Symbol, Any], bytes_: bool = False) -> list[str]:
        """A Quantity | Formula table, with a column of values where ``at`` gives any.

        ``bytes_``: every figure is bytes (else only those whose key says so).
        """
        head = ["| Quantity | Formula |", "| :-- | --: |"]
        if at:
            where = ", ".join(f"{k} = {self._print(v)}" for k, v in at.items())
            head = [f"| Quantity | Formula | at {where} |", "| :-- | --: | --: |"]
        lines = []
        for f in figures:
            unit = "bytes" if bytes_ or "bytes" in f.key else "count"
            cells = [f.label, _code(self.cell(f.formula, unit)), *([_code(self.cell(f.value, unit))] if at else [])]
            lines.append("| " + " | ".join(cells) + " |")
        return head + lines

    # --- notes ---------------------------------------------------------------------------
    def _print_RouteNote(self, note: RouteNote) -> str:
        return note.text

    _print_DeviationNote = _print_RouteNote

    def _print_ConventionNote(self, note: ConventionNote) -> str:
        other = ", ".join(note.other[:-1]) + " and " + note.other[-1]
        return (f"FLOPs follow FlopCounterMode (one multiply-add is 2 FLOPs; {', '.join(note.counted)}); "
                f"other FLOPs are {other}.")

    def _print_TrainingNote(self, note: TrainingNote) -> str:
        steps = _code("ceiling(" + self._print(note.samples) + "/t)")
        return (f"Training: epochs {self._expr(note.epochs)}, samples {self._expr(note.samples)}, {steps} steps "
                "per epoch (the last, partial batch counted as a full one).")

    def _print_AssumptionNote(self, note: AssumptionNote) -> str:
        return f"Valid for {self._expr(note.condition)}."

    def _print_UncountedNote(self, note: UncountedNote) -> str:
        return f"Not counted (no cost rule): {_code(note.op)} in {_code(note.layer)} (×{note.count})."

    def _print_Report(self, report: Report) -> str:
        """The whole report: table, derivations, totals, big-O, memory, notes."""
        out = [f"## {self._settings['title']}", ""]
        symbols = ", ".join(_code(k) for k in report.symbols) or "none"
        out += [f"Per-layer costs of one training step; symbols: {symbols} (`t` is the batch size):", ""]
        out += self._layer_lines(report)
        derivations = self._derivations(report)
        if derivations:
            out += ["", "Derivations (FLOPs):", "", *derivations]
        out += ["", *self._table(report.summary, report.at), ""]
        out.append(f"Big-O: one step {self._expr(report.big_o.step)}, training {self._expr(report.big_o.training)}.")
        mem = report.memory
        if mem is not None:
            out += ["", f"Memory of one training step, bytes (optimizer: {mem.optimizer}):", ""]
            out += self._table(mem.figures, report.at, bytes_=True)
            out += ["", f"The peak is reached in {_code(mem.peak_layer)} (op {_code(mem.peak_node)})."]
            if mem.pieces:
                out += ["", "The peak is the largest of these points of the step (bytes held while the op runs):", ""]
                out += [f"- {_code(p.node)} ({p.phase}, {_code(p.layer)}): {self._expr(p.figure.formula)}"
                        for p in mem.pieces]
            if len(mem.by_dtype) > 1:
                out += ["", "At the peak, by dtype: " + ", ".join(
                    f"{d} {self._expr(f.value)}" for d, f in mem.by_dtype) + "."]
            out += [f"- Memory not modelled: {what}." for what in mem.not_modelled]
            if self._settings["timeline"]:
                out += ["", f"![Memory timeline of one training step]({self._settings['timeline']})"]
        out += ["", "Notes:", "", *[f"- {self._print(note)}" for note in report.notes]]
        return "\n".join(out) + "\n"


def to_markdown(analysis: Analysis, **settings: Any) -> str:
    """The analysis as Markdown (GitHub tables).

    Parameters
    ----------
    analysis : Analysis
    **settings
        :func:`~symcx.export.report.build_report`'s (``at``, ``epochs``, ``samples``,
        ``optimizer``) and :class:`MarkdownPrinter`'s (``numbers``, ``digits``, ``title``);
        an unknown name raises ``TypeError``.

    Returns
    -------
    str

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(784, 10), torch.randn(2, 784))
    >>> md = to_markdown(a, at={"t": 64})
    >>> print(next(line for line in md.splitlines() if line.startswith("| Forward FLOPs")))
    | Forward FLOPs | `15,680*t` | `1,003,520` |
    """
    options, settings = split_settings(settings)
    printer = MarkdownPrinter(settings)
    return printer.doprint(build_report(analysis, **options))
