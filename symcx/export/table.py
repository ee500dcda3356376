"""A :class:`~symcx.export.report.Report` as rich renderables: the terminal tables of ``symcx analyze``.

Expressions print as in Markdown (:class:`~symcx.export.markdown.MarkdownPrinter`), without
code spans. The notes are the other exports', less two that the terminal says elsewhere:
the FLOP convention (in ``symcx analyze --help``) and the training count (in the title of
the totals table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sympy
from rich.table import Table
from rich.text import Text

from .markdown import MarkdownPrinter
from .report import (
    AssumptionNote,
    ConventionNote,
    Figure,
    Report,
    RouteNote,
    TrainingNote,
    UncountedNote,
    type_label,
)

if TYPE_CHECKING:
    from ..rows import LayerRow

__all__ = ["TablePrinter", "to_renderables"]

_TEXT_COLUMNS = ("Layer", "Type", "Output")
_NUMBER_COLUMNS = ("Forward FLOPs", "Backward FLOPs", "Other FLOPs", "Params", "Saved bytes")


class TablePrinter(MarkdownPrinter):
    """:class:`MarkdownPrinter`'s expressions; a :class:`Report` prints as a list of rich renderables.

    Examples
    --------
    >>> from symcx.export.report import UncountedNote
    >>> TablePrinter().doprint(UncountedNote("aten.fft_r2c", "fc1", 2))
    <text 'Not counted (no cost rule): aten.fft_r2c in fc1 (x2)' [] 'yellow'>
    """

    def doprint(self, expr: Any) -> Any:
        """``expr`` printed: a str, or rich objects for a report (a list) or a note (None where not shown)."""
        return self._print(expr)

    def _fmt(self, expr: Any) -> str:
        return self._print(sympy.sympify(expr))

    def _cells(self, row: LayerRow) -> list[str]:
        """One row of the layers table."""
        return [row.name, type_label(row), self.product(row.out_shape, "×") or "scalar",
                *map(self._fmt, (row.forward_flops, row.backward_flops,
                                 row.forward_other_flops + row.backward_other_flops, row.params, row.saved_bytes))]

    def _layers(self, report: Report) -> Table:
        table = Table(title="Per-layer costs of one training step (t = batch size)", title_justify="left")
        for col in _TEXT_COLUMNS:
            table.add_column(col, overflow="fold")
        for col in _NUMBER_COLUMNS:
            table.add_column(col, justify="right", overflow="fold")
        for row in report.layers:
            table.add_row(*self._cells(row))
        return table

    def _figures(self, title: str, figures: tuple[Figure, ...], report: Report) -> Table:
        """A Quantity | Formula table, with a column of values where the report has ``at``."""
        table = Table(title=title, title_justify="left")
        table.add_column("Quantity", overflow="fold")
        table.add_column("Formula", justify="right", overflow="fold")
        if report.at:
            where = ", ".join(f"{k} = {v}" for k, v in report.at.items())
            table.add_column(f"at {where}", justify="right", overflow="fold")
        for f in figures:
            table.add_row(f.label, self._fmt(f.formula), *([self._fmt(f.value)] if report.at else []))
        return table

    # --- notes ---------------------------------------------------------------------------
    def _print_RouteNote(self, note: RouteNote) -> Text:
        return Text(note.text, style="dim")

    _print_DeviationNote = _print_RouteNote

    def _print_ConventionNote(self, note: ConventionNote) -> None:
        return None  # ``symcx analyze --help`` says it

    def _print_TrainingNote(self, note: TrainingNote) -> None:
        return None  # the totals table's title says it

    def _print_AssumptionNote(self, note: AssumptionNote) -> Text:
        return Text(f"Valid for {self._fmt(note.condition)}.")

    def _print_UncountedNote(self, note: UncountedNote) -> Text:
        return Text(f"Not counted (no cost rule): {note.op} in {note.layer} (x{note.count})", style="yellow")

    def _print_Report(self, report: Report) -> list[Any]:
        """Per-layer table, totals, big-O, memory, notes."""
        epochs, samples = self._fmt(report.figure("epochs").formula), self._fmt(report.figure("samples").formula)
        out = [self._layers(report),
               self._figures(f"Totals of one step, and of training (epochs {epochs}, samples {samples})",
                             report.summary, report),
               Text(f"Big-O: one step {self._fmt(report.big_o.step)}, training {self._fmt(report.big_o.training)}")]
        mem = report.memory
        if mem is not None:
            out.append(self._figures(f"Memory of one training step, bytes (optimizer: {mem.optimizer})",
                                     mem.figures, report))
            out.append(Text(f"The peak is reached in {mem.peak_layer} (op {mem.peak_node})."))
        notes = (self._print(note) for note in report.notes)
        return out + [note for note in notes if note is not None]


def to_renderables(report: Report, *, numbers: str = "separators", digits: int = 3) -> list[Any]:
    """The report as rich renderables: per-layer table, totals, big-O, memory, notes.

    Parameters
    ----------
    report : Report
        From :func:`~symcx.export.report.build_report`; its ``at`` values get a column.
    numbers : {"separators", "scientific", "plain"}
        How integers print.
    digits : int
        Significant digits in scientific form.

    Returns
    -------
    list
        Tables and texts, to print one by one on a ``rich.console.Console``.

    Examples
    --------
    >>> import torch, symcx
    >>> from symcx.export.report import build_report
    >>> a = symcx.analyze(torch.nn.Linear(784, 10), torch.randn(2, 784))
    >>> layers, totals, big_o, *rest = to_renderables(build_report(a, at={"t": 64}))
    >>> [c.header for c in totals.columns], big_o.plain
    (['Quantity', 'Formula', 'at t = 64'], 'Big-O: one step O(t), training O(N*n)')
    """
    return TablePrinter({"numbers": numbers, "digits": digits}).doprint(report)
