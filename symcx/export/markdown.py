"""A :class:`~symcx.export.report.Report` as Markdown: per-layer table, derivations, totals, memory, notes.

Expressions print as sympy's ``str`` form in code spans, integers with thousands separators
(``1,199,882``), in scientific form (``1.20e6``) or plain, by the ``numbers`` setting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

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
)

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..rows import LayerRow

__all__ = ["MarkdownPrinter", "to_markdown"]

_COLUMNS = ("Layer", "Type", "Output", "Forward FLOPs", "Backward FLOPs", "Other FLOPs", "Params", "Saved bytes")


def _code(text: str) -> str:
    """``text`` as a code span that is safe inside a table cell."""
    return "`" + text.replace("|", "\\|") + "`"


class MarkdownPrinter(StrPrinter):
    """sympy's ``str`` printer with readable integers, taught :class:`Report`, its rows and notes.

    Settings beyond sympy's: ``numbers`` ("separators", "scientific", "plain"), ``digits``
    (3, significant digits in scientific form), ``title`` ("symcx analysis").

    Examples
    --------
    >>> import sympy
    >>> MarkdownPrinter().doprint(sympy.Integer(23984896) * sympy.Symbol("t"))
    '23,984,896*t'
    >>> MarkdownPrinter({"numbers": "scientific"}).doprint(sympy.Integer(23984896))
    '2.40e7'
    >>> from symcx.export.report import UncountedNote
    >>> MarkdownPrinter().doprint(UncountedNote("aten.fft_r2c", "fc1", 2))
    'Not counted (no cost rule): `aten.fft_r2c` in `fc1` (×2).'
    """

    _default_settings: dict[str, Any] = {
        **StrPrinter._default_settings,
        **NUMBER_SETTINGS,
        "title": "symcx analysis",
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        check_number_settings(self._settings)

    def _print_Integer(self, expr: sympy.Integer) -> str:
        value = int(expr)
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

    def _print_LayerRow(self, row: LayerRow) -> str:
        """One table row."""
        shape = _code(self.product(row.out_shape, "×")) if row.out_shape else "scalar"
        cells = [_code(row.name), row.type.replace("|", "\\|"), shape]
        cells += [self._expr(e) for e in (row.forward_flops, row.backward_flops,
                                          row.forward_other_flops + row.backward_other_flops,
                                          row.params, row.saved_bytes)]
        return "| " + " | ".join(cells) + " |"

    def _derivations(self, report: Report) -> list[str]:
        lines = []
        for row in report.layers:
            for phase, factors, total in (("forward", row.derivation, row.forward_flops),
                                          ("backward", row.backward_derivation, row.backward_flops)):
                if factors:
                    terms = " + ".join(self.product(fs) for fs in factors)
                    lines.append(f"- {_code(row.name)} {phase}: {_code(terms)} = {self._expr(total)}")
        return lines

    def _table(self, figures: tuple[Figure, ...], at: dict[sympy.Symbol, Any]) -> list[str]:
        """A Quantity | Formula table, with a column of values where ``at`` gives any."""
        head = ["| Quantity | Formula |", "| :-- | --: |"]
        if at:
            where = ", ".join(f"{k} = {self._print(v)}" for k, v in at.items())
            head = [f"| Quantity | Formula | at {where} |", "| :-- | --: | --: |"]
        lines = []
        for f in figures:
            cells = [f.label, self._expr(f.formula), *([self._expr(f.value)] if at else [])]
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
        out += ["| " + " | ".join(_COLUMNS) + " |", "| " + " | ".join([":--"] * 3 + ["--:"] * 5) + " |"]
        out += [self._print(row) for row in report.layers]
        derivations = self._derivations(report)
        if derivations:
            out += ["", "Derivations (FLOPs):", "", *derivations]
        out += ["", *self._table(report.summary, report.at), ""]
        out.append(f"Big-O: one step {self._expr(report.big_o.step)}, training {self._expr(report.big_o.training)}.")
        mem = report.memory
        if mem is not None:
            out += ["", f"Memory of one training step, bytes (optimizer: {mem.optimizer}):", ""]
            out += self._table(mem.figures, report.at)
            out += ["", f"The peak is reached in {_code(mem.peak_layer)} (op {_code(mem.peak_node)})."]
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
