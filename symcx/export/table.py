"""A :class:`~symcx.export.report.Report` as rich renderables: the terminal tables of ``symcx analyze``.

Expressions print as in Markdown (:class:`~symcx.export.markdown.MarkdownPrinter`), without
code spans, and so do the per-layer columns (the module tree, shares, units). The layer
table picks its columns when it is printed, by the console's width: every column from 250
characters (a pipe or a file gets 250), all but weights + biases from 200, the main ones from
120, and below that the layer, parameters, FLOPs and saved bytes only. Number columns never wrap (``no_wrap``; an ellipsis if even that cannot fit),
text columns fold. The notes are the other exports', less two that the terminal says
elsewhere: the FLOP convention (in ``symcx analyze --help``) and the training count (in the
title of the totals table).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import sympy
from rich import box
from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

from ..layer_table import tree_entries
from .markdown import COLUMNS, NUMBER_COLUMNS, MarkdownPrinter
from .report import (
    AssumptionNote,
    ConventionNote,
    Figure,
    Report,
    RouteNote,
    TrainingNote,
    UncountedNote,
)

__all__ = ["TablePrinter", "LayersView", "FiguresView", "to_renderables", "LAYOUTS"]

#: The layer table's columns by the least console width that shows them, widest first.
LAYOUTS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (250, COLUMNS),
    (200, tuple(c for c in COLUMNS if c != "Weights + biases")),
    (120, ("Layer", "Type", "Output", "Params", "% params", "Forward FLOPs", "Backward FLOPs", "% FLOPs",
           "Saved bytes")),
    (0, ("Layer", "Params", "Forward FLOPs", "Backward FLOPs", "% FLOPs", "Saved bytes")),
)
_TITLE = "Per-layer costs of one training step (t = batch size)"


def _longest_word(texts: Iterable[str], cap: int = 30) -> int:
    """The longest space-free run in ``texts`` (at most ``cap``): a formula column wraps between terms only."""
    return min(cap, max((len(w) for text in texts for w in text.split()), default=1))


class FiguresView:
    """A Quantity | Formula [| value] table as a rich renderable; where the console is too narrow for
    the formulas and values side by side, the values come in a second table below."""

    _QUANTITY = 12  # the least width of the Quantity column

    def __init__(self, title: str, headers: list[str], cells: list[list[str]]) -> None:
        self.title, self.headers, self.cells = title, headers, cells

    def _table(self, title: str | None, columns: list[int], width: int) -> Table:
        table = Table(title=title, title_justify="left")
        spare = width - sum(_longest_word(row[k] for row in self.cells) for k in columns[1:]) - 3 * len(columns) - 1
        for k in columns:
            if k == 0:
                table.add_column(self.headers[0], overflow="fold", min_width=self._QUANTITY,
                                 max_width=max(self._QUANTITY, spare))
            else:  # formulas wrap between terms, never inside a number
                table.add_column(self.headers[k], justify="right", overflow="ellipsis",
                                 min_width=_longest_word(row[k] for row in self.cells))
        for row in self.cells:
            table.add_row(*(row[k] for k in columns))
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        words = [_longest_word(row[k] for row in self.cells) for k in range(1, len(self.headers))]
        width = options.max_width
        if len(self.headers) < 3 or self._QUANTITY + sum(words) + 10 <= width:
            yield self._table(self.title, list(range(len(self.headers))), width)
            return
        yield self._table(self.title, [0, 1], width)
        yield self._table(None, [0, 2], width)


class LayersView:
    """The per-layer table as a rich renderable whose columns follow the console's width (:data:`LAYOUTS`)."""

    def __init__(self, rows: list[tuple[bool, dict[str, str]]], title: str = _TITLE) -> None:
        self.rows = rows  # (is a block, cells by column)
        self.title = title

    def table(self, width: int) -> Table:
        """The table for a console ``width`` characters wide."""
        columns = next(cols for least, cols in LAYOUTS if width >= least)
        narrow = width < LAYOUTS[1][0]  # below the 13-column layout: no vertical rules, to save width
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD,
                      pad_edge=not narrow, collapse_padding=narrow)
        for col in columns:
            if col in NUMBER_COLUMNS:
                table.add_column(col, justify="right", no_wrap=True, overflow="ellipsis")
            else:
                table.add_column(col, overflow="fold", ratio=1 if col == "Layer" else None)
        for block, cells in self.rows:
            table.add_row(*(cells[c] for c in columns), style="bold" if block else None)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        yield self.table(options.max_width)


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

    def _layers(self, report: Report) -> LayersView:
        rows = []
        for entry in tree_entries(report.layers, self._settings["depth"]):
            cells = self.entry_cells(entry, report)
            cells["Layer"] = entry.label
            rows.append((entry.row is None, cells))
        return LayersView(rows)

    def _figures(self, title: str, figures: tuple[Figure, ...], report: Report, bytes_: bool = False) -> FiguresView:
        """A Quantity | Formula table, with a column of values where the report has ``at``.

        ``bytes_``: every figure is bytes (else those whose key says so).
        """
        unit = {f.key: "bytes" if bytes_ or "bytes" in f.key else "count" for f in figures}
        cells = [[f.label, self.cell(f.formula, unit[f.key]), *([self.cell(f.value, unit[f.key])] if report.at else [])]
                 for f in figures]
        headers = ["Quantity", "Formula"]
        if report.at:
            headers.append("at " + ", ".join(f"{k} = {v}" for k, v in report.at.items()))
        return FiguresView(title, headers, cells)

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
                                     mem.figures, report, bytes_=True))
            out.append(Text(f"The peak is reached in {mem.peak_layer} (op {mem.peak_node})."))
            if mem.pieces:
                out.append(Text("The peak is the largest of: " + "; ".join(
                    f"{p.node} ({p.phase}, {p.layer}) {self._fmt(p.figure.formula)}" for p in mem.pieces)))
            out += [Text(f"Memory not modelled: {what}.") for what in mem.not_modelled]
        notes = (self._print(note) for note in report.notes)
        return out + [note for note in notes if note is not None]


def to_renderables(report: Report, *, numbers: str = "separators", digits: int = 3, units: str = "exact",
                   depth: int | None = None) -> list[Any]:
    """The report as rich renderables: per-layer table, totals, big-O, memory, notes.

    Parameters
    ----------
    report : Report
        From :func:`~symcx.export.report.build_report`; its ``at`` values get a column.
    numbers : {"separators", "scientific", "plain"}
        How integers print.
    digits : int
        Significant digits in scientific form.
    units : {"exact", "human"}
        "human": counts as ``21.2M``, bytes as ``9.08MiB`` (``symcx analyze``'s default).
    depth : int, optional
        Fold the module tree below this level (torchinfo's ``depth``).

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
    >>> totals.headers, big_o.plain
    (['Quantity', 'Formula', 'at t = 64'], 'Big-O: one step O(t), training O(N*n)')
    """
    return TablePrinter({"numbers": numbers, "digits": digits, "units": units, "depth": depth}).doprint(report)
