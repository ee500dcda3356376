"""An :class:`~symcx.analysis.Analysis` as Markdown: per-layer table, derivations, totals, memory.

Expressions print as sympy's ``str`` form in code spans, integers with thousands separators
(``1,199,882``), in scientific form (``1.20e6``) or plain, by the ``numbers`` setting.
"""

from __future__ import annotations

from typing import Any

import sympy
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter

from ..analysis import Analysis, LayerRow
from .json import (
    MEMORY,
    REPORT_SETTINGS,
    TOTALS,
    TRAINING,
    backward_derivations,
    check_number_settings,
    report,
    scientific,
)

__all__ = ["MarkdownPrinter", "to_markdown"]

_COLUMNS = ("Layer", "Type", "Output", "Forward FLOPs", "Backward FLOPs", "Other FLOPs", "Params", "Saved bytes")


def _code(text: str) -> str:
    """``text`` as a code span that is safe inside a table cell."""
    return "`" + text.replace("|", "\\|") + "`"


class MarkdownPrinter(StrPrinter):
    """sympy's ``str`` printer with readable integers, taught :class:`Analysis` and :class:`LayerRow`.

    Settings beyond sympy's: ``numbers`` ("separators", "scientific", "plain"), ``digits``
    (3, significant digits in scientific form), ``at`` (symbol values at which totals are
    also evaluated), ``epochs`` and ``samples`` (n, N), ``optimizer`` ("sgd"), ``title``.

    Examples
    --------
    >>> import sympy
    >>> MarkdownPrinter().doprint(sympy.Integer(23984896) * sympy.Symbol("t"))
    '23,984,896*t'
    >>> MarkdownPrinter({"numbers": "scientific"}).doprint(sympy.Integer(23984896))
    '2.40e7'
    """

    _default_settings: dict[str, Any] = {
        **StrPrinter._default_settings,
        **REPORT_SETTINGS,
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

    def _derivations(self, analysis: Analysis) -> list[str]:
        backward = backward_derivations(analysis)
        lines = []
        for row in analysis.layers:
            for phase, factors, total in (("forward", row.derivation, row.forward_flops),
                                          ("backward", backward.get(row.name, ()), row.backward_flops)):
                if factors:
                    terms = " + ".join(self.product(fs) for fs in factors)
                    lines.append(f"- {_code(row.name)} {phase}: {_code(terms)} = {self._expr(total)}")
        return lines

    def _table(self, rows: list[tuple[str, Any]], at_values: dict) -> list[str]:
        head = ["| Quantity | Formula |", "| :-- | --: |"]
        if at_values:
            where = ", ".join(f"{k} = {self._print(v)}" for k, v in at_values.items())
            head = [f"| Quantity | Formula | at {where} |", "| :-- | --: | --: |"]
        lines = []
        for label, expr in rows:
            cells = [label, self._expr(expr)]
            if at_values:
                cells.append(self._expr(sympy.sympify(expr).subs(at_values)))
            lines.append("| " + " | ".join(cells) + " |")
        return head + lines

    def _print_Analysis(self, analysis: Analysis) -> str:
        """The whole report: table, derivations, totals, big-O, memory, notes."""
        s = self._settings
        rep = report(analysis, epochs=s["epochs"], samples=s["samples"], optimizer=s["optimizer"])
        at_values = {sympy.Symbol(str(k), positive=True, integer=True): sympy.sympify(v)
                     for k, v in (s["at"] or {}).items()}
        out = [f"## {s['title']}", ""]
        symbols = ", ".join(_code(k) for k in analysis.symbols) or "none"
        out += [f"Per-layer costs of one training step; symbols: {symbols} (`t` is the batch size):", ""]
        out += ["| " + " | ".join(_COLUMNS) + " |", "| " + " | ".join([":--"] * 3 + ["--:"] * 5) + " |"]
        out += [self._print(row) for row in analysis.layers]
        derivations = self._derivations(analysis)
        if derivations:
            out += ["", "Derivations (FLOPs):", "", *derivations]
        rows = [(TOTALS[k], v) for k, v in rep["totals"].items()]
        rows += [(TRAINING[k], v) for k, v in rep["training"].items() if k not in ("epochs", "samples", "flops_per_step")]
        out += ["", *self._table(rows, at_values), ""]
        out.append(f"Big-O: one step {_code('O(' + self._print(rep['big_o']['step']) + ')')}, "
                   f"training {_code('O(' + self._print(rep['big_o']['training']) + ')')}.")
        if rep["memory"] is not None:
            mem = rep["memory"]
            out += ["", f"Memory of one training step, bytes (optimizer: {s['optimizer']}):", ""]
            out += self._table([(MEMORY[k], mem[k]) for k in MEMORY], at_values)
            out += ["", f"The peak is reached in {_code(mem['peak_layer'])} (op {_code(mem['peak_node'])})."]
        notes = [analysis.route_note,
                 "FLOPs follow FlopCounterMode (one multiply-add is 2 FLOPs; matmul, convolution, attention); "
                 "other FLOPs are elementwise ops, norms, pooling, softmax and reductions.",
                 f"Training: epochs {self._expr(s['epochs'])}, samples {self._expr(s['samples'])}, "
                 f"{_code('ceiling(' + self._print(sympy.sympify(s['samples'])) + '/t)')} steps per epoch "
                 "(the last, partial batch counted as a full one)."]
        notes += [f"Valid for {self._expr(a)}." for a in analysis.assumptions]
        notes += [f"Not counted (no cost rule): {_code(op)} in {_code(layer)} (×{count})."
                  for (op, layer), count in sorted(analysis.unsupported.items())]
        notes += list(analysis.deviations)
        out += ["", "Notes:", "", *[f"- {x}" for x in notes]]
        return "\n".join(out) + "\n"


def to_markdown(analysis: Analysis, **settings: Any) -> str:
    """The analysis as Markdown (GitHub tables).

    Parameters
    ----------
    analysis : Analysis
    **settings
        :class:`MarkdownPrinter` settings (``numbers``, ``digits``, ``at``, ``epochs``,
        ``samples``, ``optimizer``, ``title``); an unknown name raises ``TypeError``.

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
    return MarkdownPrinter(settings).doprint(analysis)
