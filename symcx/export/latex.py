"""A :class:`~symcx.export.report.Report` as LaTeX: per-layer table, derivations, totals, big-O, memory.

:class:`SymcxLatexPrinter` is sympy's ``LatexPrinter`` with ``_print_<Class>`` methods for
symcx's own objects and with integers printed with thousands separators (``1{,}199{,}882``)
or in scientific form (``1.20 \\times 10^{6}``). A fragment needs ``amsmath``, ``array`` and
``booktabs``; ``standalone=True`` gives a whole document that compiles with the packages
of Debian's ``texlive-latex-base`` and ``texlive-latex-recommended``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE

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
    plain_names,
    plain_op,
    scientific,
    split_settings,
    type_label,
)

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..rows import LayerRow

__all__ = ["SymcxLatexPrinter", "to_latex", "PREAMBLE", "latex_text"]

_ENVIRONMENTS = ("tabular", "longtable", "array")
_SPECIALS = {"_": r"\_", "#": r"\#", "$": r"\$", "%": r"\%", "&": r"\&", "{": r"\{", "}": r"\}"}
_MATH_ESCAPES = {**_SPECIALS, "~": r"\sim{}", "^": r"\wedge{}", "\\": r"\backslash{}"}
#: Text mode in the default OT1 encoding, whose fonts every TeX has as Type 1: no T1-only glyphs.
_TEXT_ESCAPES = {**_SPECIALS, **{ch: rf"\ensuremath{{{m}}}" for ch, m in
                                 (("~", r"\sim"), ("^", r"\wedge"), ("\\", r"\backslash"), ("<", "<"), (">", ">"),
                                  ("|", "|"))}}
#: Visible characters of a formula line in the totals before it is cut (a4 with 1.5 cm margins).
_LINE = 60
#: Layer names longer than this get a fixed-width column in which they wrap (after ``.`` and ``_``).
_NAME_CHARS = 26
#: Most rows a standalone document sets in a ``tabular`` (one page) before it takes a ``longtable``.
_TABULAR_ROWS = 60
_FLOP_COLUMNS = ("Layer", "Type", "Forward FLOPs", "Backward FLOPs", "Other FLOPs")
_SHAPE_COLUMNS = ("Layer", "Input shape", "Output shape", "Settings", "Parameter shapes", "Weights", "Biases")
_SIZE_COLUMNS = ("Layer", "Params", "Trainable", "Output bytes", "Saved bytes")
_OP_COLUMNS = ("Layer", "PyTorch name", "Operators")
#: How the symbolic route is said to a reader who does not know PyTorch's internals.
_SYMBOLIC_ROUTE = ("Counted by tracing one training step (forward pass, loss and backward pass) once, with the "
                   "batch size kept as the symbol $t$; no data is run, and every count is exact.")
#: The standalone document's preamble, up to ``\begin{document}`` (validation's LaTeX uses it too).
PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[a4paper,margin=1.5cm]{geometry}
\usepackage{amsmath}
\usepackage{array}
\usepackage{graphicx}
\usepackage{booktabs}
\usepackage{longtable}
\allowdisplaybreaks
\setlength{\parindent}{0pt}
\renewcommand{\labelitemi}{\ensuremath{\bullet}}% Type 1 fonts only (the text bullet is a bitmap)
\newsavebox{\symcxbox}
% a table wider than the text is scaled down to fit
\newcommand{\symcxfit}[1]{\sbox{\symcxbox}{#1}%
  \ifdim\wd\symcxbox>\linewidth\resizebox{\linewidth}{!}{\usebox{\symcxbox}}\else\usebox{\symcxbox}\fi}
\begin{document}"""


def _visible(latex: str) -> int:
    """Rough count of the characters ``latex`` shows (a command counts one, braces none)."""
    latex = re.sub(r"\\(left|right|bigl|bigr)\b", "", latex)
    return len(re.sub(r"[{}_^ ]", "", re.sub(r"\\[a-zA-Z]+", "x", latex)))


def _pack(items: list[str]) -> list[str]:
    """Join consecutive pieces while a line stays within ``_LINE`` visible characters."""
    lines = [items[0]]
    for item in items[1:]:
        if _visible(lines[-1] + item) <= _LINE:
            lines[-1] += " " + item
        else:
            lines.append(item)
    return lines


def _math_name(text: str, font: str = r"\mathtt") -> str:
    """``text`` in a math-mode font, LaTeX specials escaped (``max\\_pool2d``)."""
    return font + "{" + "".join(_MATH_ESCAPES.get(ch, ch) for ch in text) + "}"


def latex_text(text: str, breakable: bool = False) -> str:
    """``text`` for text mode, LaTeX specials escaped; ``breakable``: lines may break after ``.``/``_``.

    >>> print(latex_text("relu_1 & 50%"))
    relu\\_1 \\& 50\\%
    """
    out = "".join(_TEXT_ESCAPES.get(ch, ch) for ch in text)
    return out.replace(".", r".\allowbreak{}").replace(r"\_", r"\_\allowbreak{}") if breakable else out


class SymcxLatexPrinter(LatexPrinter):
    """sympy's LaTeX printer, taught symcx's :class:`Report`, its rows and notes.

    Settings beyond sympy's (whose ``fold_short_frac`` is on here: ``N / t``):

    ``standalone`` (False)
        A whole ``article`` document rather than a fragment.
    ``environment`` (None)
        The per-layer tables: ``"tabular"``, ``"longtable"`` (breaks across pages; its columns
        align from the second pdflatex run on) or ``"array"`` (math mode only, for
        MathJax/Jupyter). None: ``tabular``, or ``longtable`` in a standalone document of more
        than 60 layers.
    ``numbers`` ("separators")
        Integers as ``1{,}199{,}882``, ``"scientific"`` (``1.20 \\times 10^{6}`` from
        ``10^{digits+1}`` up) or ``"plain"``.
    ``digits`` (3)
        Significant digits in scientific form.
    ``title`` (None)
        The standalone document's heading (default ``symcx analysis``).
    ``timeline`` (None)
        The path of a memory-timeline image (``symcx analyze --plot-memory``), shown as a figure
        after the memory table (the document needs ``graphicx``, which the standalone preamble has).

    Examples
    --------
    >>> import sympy
    >>> SymcxLatexPrinter().doprint(sympy.Integer(1199882) * sympy.Symbol("t"))
    '1{,}199{,}882 t'
    >>> SymcxLatexPrinter({"numbers": "scientific"}).doprint(sympy.Integer(1199882))
    '1.20 \\\\times 10^{6}'
    >>> from symcx.export.report import UncountedNote
    >>> SymcxLatexPrinter().doprint(UncountedNote("aten.fft_r2c", "fc1", 2))
    'Not counted (no cost rule): $\\\\mathtt{aten.fft\\\\_r2c}$ in $\\\\mathtt{fc1}$ ($\\\\times 2$).'
    """

    _default_settings: dict[str, Any] = {
        **LatexPrinter._default_settings,
        "fold_short_frac": True,
        "standalone": False,
        "environment": None,
        **NUMBER_SETTINGS,
        "title": None,
        "timeline": None,
    }

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        s = self._settings
        check_number_settings(s)
        if s["environment"] not in (None, *_ENVIRONMENTS):
            raise ValueError(f"environment must be one of {_ENVIRONMENTS}, not {s['environment']!r}")

    # --- numbers -------------------------------------------------------------------------
    def _print_Integer(self, expr: sympy.Integer) -> str:
        value = int(expr)
        style = self._settings["numbers"]
        sci = scientific(value, self._settings["digits"]) if style == "scientific" else None
        if sci is not None:
            return rf"{sci[0]} \times 10^{{{sci[1]}}}"
        if style == "separators":
            return f"{value:,}".replace(",", "{,}")
        return str(value)

    _print_int = _print_Integer

    # --- symcx objects -------------------------------------------------------------------
    def _math(self, expr: Any) -> str:
        """An expression as math-mode LaTeX."""
        return self._print(sympy.sympify(expr))

    def _product(self, factors: Any) -> str:
        """Factors joined by ``\\times``, unevaluated, parenthesized where needed."""
        return r" \times ".join(self.parenthesize(sympy.sympify(f), PRECEDENCE["Mul"], strict=True) for f in factors)

    def _name(self, row: LayerRow) -> str:
        """The row's name for a reader (:func:`~symcx.export.report.plain_names`: ``max pool``, ``ReLU 2``)."""
        return getattr(self, "_names", {}).get(row.name, row.name)

    def _row(self, name: str, cells: list[str]) -> str:
        """A table row: the layer name, then math cells (empty ones stay empty)."""
        if self._settings["environment"] == "array":
            return " & ".join([_math_name(name), *cells]) + r" \\"
        name = rf"\texttt{{{latex_text(name, breakable=True)}}}"
        return " & ".join([name, *(f"${c}$" if c else "" for c in cells)]) + r" \\"

    def _print_LayerRow(self, row: LayerRow) -> str:
        """The row's FLOPs: name, type, forward, backward, other (forward + backward)."""
        kind = _math_name(type_label(row), r"\mathrm") if type_label(row) and self._name(row) == row.name else ""
        other = row.forward_other_flops + row.backward_other_flops
        return self._row(self._name(row), [kind, *map(self._math, (row.forward_flops, row.backward_flops, other))])

    def _shape(self, shape: tuple[Any, ...]) -> str:
        return self._product(shape) or r"\text{scalar}"

    def _shape_row(self, row: LayerRow) -> str:
        """The row's shapes and parameters: input and output shapes, settings, parameter shapes, weights, biases."""
        details = _math_name(row.details, r"\mathrm").replace("×", r"\times ").replace("→", r"\to ")
        shapes = ",\\ ".join(self._product(w) for w in row.weight_shapes)
        weights, biases = (("", "") if row.trainable is None else (self._math(row.weights), self._math(row.biases)))
        return self._row(self._name(row), [self._shape(row.in_shape) if row.in_shape else "",
                                           self._shape(row.out_shape), details if row.details else "",
                                           shapes, weights, biases])

    def _size_row(self, row: LayerRow) -> str:
        """The row's sizes: name, params, trainable, output bytes, bytes saved for backward."""
        trainable = {True: r"\text{yes}", False: r"\text{no}", None: ""}[row.trainable]
        return self._row(self._name(row), [self._math(row.params), trainable,
                                           *map(self._math, (row.bytes_out, row.saved_bytes))])

    def _op_row(self, row: LayerRow) -> str:
        """Appendix row: the name in the tables, the PyTorch module path or function, its aten ops."""
        ops = ", ".join(latex_text(op.removeprefix("aten."), breakable=True) for op in row.ops)
        kind = f" ({latex_text(row.type)})" if type_label(row) and self._name(row) == row.name else ""
        name = latex_text(row.name, breakable=True)
        return rf"{latex_text(self._name(row), breakable=True)} & \texttt{{{name}}}{kind} & \texttt{{{ops}}} \\"

    def _derivation(self, product: tuple[Any, ...]) -> list[str]:
        """One product unevaluated, ``2 \\times t \\times 32 \\times …``, cut into lines at ``\\times``."""
        factors = [self.parenthesize(sympy.sympify(f), PRECEDENCE["Mul"], strict=True) for f in product]
        return _pack([factors[0], *(r"\times " + f for f in factors[1:])])

    def _derivation_lines(self, report: Report) -> list[str]:
        """Each layer's forward and backward products, factor by factor; a backward term says its gradient."""
        lines = []
        for row in report.layers:
            backward = row.backward_terms or tuple(("", f) for f in row.backward_derivation)
            for phase, terms, total in (("forward", tuple(("", f) for f in row.derivation), row.forward_flops),
                                        ("backward", backward, row.backward_flops)):
                if not terms:
                    continue
                name = self._name(row)
                label = _math_name(name) + r"\ \text{" + phase + "}"
                if len(name) > _NAME_CHARS and self._settings["environment"] != "array":
                    lines.append(rf"\intertext{{\texttt{{{latex_text(name, breakable=True)}}} {phase}:}}")
                    label = ""
                body = []
                for k, (what, product) in enumerate(terms):
                    pieces = self._derivation(product)
                    head = rf"\text{{{what}: }}" if what else ""
                    body.append(("" if k == 0 else "+ ") + head + pieces[0])
                    body += [r"\quad " + p for p in pieces[1:]]
                result = self._math(total)
                if len(body) == 1 and _visible(body[0] + result) <= _LINE:
                    lines.append(f"{label} &= {body[0]} = {result}")
                    continue
                lines.append(f"{label} &= {body[0]}")
                lines += [rf"&\phantom{{=}} {b}" for b in body[1:]]
                lines.append(f"&= {result}")
        return lines

    def _pieces(self, expr: Any) -> list[str]:
        """``expr`` cut into lines of about ``_LINE`` visible characters (at ``+`` and ``,``).

        Continuation pieces start with their operator; parentheses that span lines are
        ``\\bigl(``/``\\bigr)``, which, unlike ``\\left``/``\\right``, may.
        """
        expr = sympy.sympify(expr)
        text = self._print(expr)
        if _visible(text) <= _LINE:
            return [text]
        if expr.is_Add:
            items = []
            for k, term in enumerate(self._as_ordered_terms(expr)):
                sub = self._pieces(term)
                if k and not sub[0].startswith("-"):
                    sub[0] = "+ " + sub[0]
                items += sub
            return _pack(items)
        if isinstance(expr, (sympy.Max, sympy.Min)):
            items = []
            for k, arg in enumerate(expr.args):
                sub = self._pieces(arg)
                sub[-1] += "," if k < len(expr.args) - 1 else ""
                items += sub
            name = r"\max" if isinstance(expr, sympy.Max) else r"\min"
            items[0] = name + r"\bigl(" + items[0]
            items[-1] += r"\bigr)"
            return _pack(items)
        if expr.is_Mul:
            longest = max(expr.args, key=lambda f: _visible(self._print(f)))
            if longest.is_Add or isinstance(longest, (sympy.Max, sympy.Min)):
                rest = self._print(sympy.Mul(*[f for f in expr.args if f is not longest]))
                sub = self._pieces(longest)
                wrap = not isinstance(longest, (sympy.Max, sympy.Min))
                sub[0] = f"{rest} " + (r"\bigl(" if wrap else "") + sub[0]
                sub[-1] += r"\bigr)" if wrap else ""
                return sub
        return [text]

    def _equation(self, label: str, expr: Any, value: Any = None, at: dict | None = None) -> list[str]:
        """``label &= expr`` over as many lines as it needs, and ``value`` (at ``at``) if that differs."""
        pieces = self._pieces(expr)
        lines = [f"{label} &= {pieces[0]}", *[rf"&\phantom{{=}}\quad {p}" for p in pieces[1:]]]
        if value is None or value == expr:
            return lines
        where = r" \quad \text{at } " + ", ".join(f"{self._math(k)} = {self._math(v)}" for k, v in (at or {}).items())
        values = self._pieces(value)
        if len(pieces) == 1 and len(values) == 1 and _visible(pieces[0] + values[0]) <= _LINE:
            lines[0] += f" && = {values[0]}{where}"
            return lines
        lines += [f"&= {values[0]}", *[rf"&\phantom{{=}}\quad {p}" for p in values[1:]]]
        lines[-1] += where
        return lines

    def _figure_lines(self, figures: tuple[Figure, ...], at: dict) -> list[str]:
        """An equation per figure, with its value where ``at`` changes it."""
        return [line for f in figures for line in self._equation(rf"\text{{{f.label}}}", f.formula, f.value, at)]

    def _totals_lines(self, report: Report) -> list[str]:
        lines = self._figure_lines(report.summary, report.at)
        lines += self._equation(r"\text{Big-O, one step}", report.big_o.step)
        training = self._equation(r"\text{Big-O, training}", report.big_o.training)
        if report.big_o.where:  # the big-O stays in n and N; the numbers given for them beside it
            training[-1] += r" \quad \text{with } " + r",\ ".join(
                f"{self._math(k)} = {self._math(v)}" for k, v in report.big_o.where.items())
        lines += training
        if self._settings["environment"] == "array":  # no itemized notes in math mode: keep the gaps visible
            lines += [rf"\text{{Not counted (no cost rule)}} &\ {_math_name(u.op)}\ \text{{in}}\ "
                      rf"{_math_name(u.layer)} \times {u.count}" for u in report.notes_of(UncountedNote)]
        return lines

    def _memory_lines(self, report: Report) -> list[str]:
        mem = report.memory
        if mem is None:
            return []
        lines = self._figure_lines(mem.figures, report.at)
        if self._settings["environment"] == "array":  # no footnotes in math mode
            lines.append(rf"\text{{Peak reached in}} &\ {_math_name(self._peak_layer(mem))}\ "
                         rf"(\text{{{latex_text(plain_op(mem.peak_op or mem.peak_node))}}})")
        return lines

    def _peak_layer(self, mem: Any) -> str:
        """The peak's layer by its name in the tables (``ReLU 2``; ``optimizer`` for the optimizer's step)."""
        return getattr(self, "_names", {}).get(mem.peak_layer, mem.peak_layer)

    def _peak_sentence(self, mem: Any) -> str:
        """Where the peak is reached, in words; the operator and graph node in a footnote."""
        what = plain_op(mem.peak_op or mem.peak_node)
        where = latex_text(self._peak_layer(mem))
        if mem.peak_layer == "optimizer":
            place = "in the optimizer's update of the parameters"
        elif what.endswith("(backward)"):
            place = f"in the backward pass of {where}"
        else:
            place = f"in {where} ({latex_text(what)})"
        op = latex_text(mem.peak_op.removeprefix("aten.") if mem.peak_op else mem.peak_node, breakable=True)
        return (rf"The peak is reached {place}.\footnote{{Operator \texttt{{{op}}}, graph node "
                rf"\texttt{{{latex_text(mem.peak_node, breakable=True)}}}.}}")

    # --- notes ---------------------------------------------------------------------------
    def _print_RouteNote(self, note: RouteNote) -> str:
        """How the step was counted, for a reader who does not know PyTorch's internals."""
        if note.route == "symbolic":
            return _SYMBOLIC_ROUTE
        why = f" ({latex_text(note.reason, breakable=True)})" if note.reason else ""
        return (f"Interpolated: the symbolic trace failed{why}, so the step was traced at several concrete sizes "
                "and each count fitted exactly (and checked at one more size).")

    def _print_DeviationNote(self, note: Any) -> str:
        return latex_text(note.text, breakable=True)

    def _print_ConventionNote(self, note: ConventionNote) -> str:
        return (f"FLOPs count one multiply-add as 2 FLOPs, in {', '.join(note.counted)} (the convention of "
                f"PyTorch's FlopCounterMode). Other FLOPs are symcx's count of what that convention leaves out: "
                f"{', '.join(note.other)}.")

    def _print_TrainingNote(self, note: TrainingNote) -> str:
        epochs, samples = self._math(note.epochs), self._math(note.samples)
        return (rf"Training: epochs ${epochs}$, samples ${samples}$, $\lceil {samples} / t \rceil$ steps per "
                "epoch (the last, partial batch counted as a full one).")

    def _print_AssumptionNote(self, note: AssumptionNote) -> str:
        return rf"Valid for ${self._math(note.condition)}$."

    def _print_UncountedNote(self, note: UncountedNote) -> str:
        return (rf"Not counted (no cost rule): ${_math_name(note.op)}$ in ${_math_name(note.layer)}$ "
                rf"($\times {note.count}$).")

    def _align(self, lines: list[str]) -> str:
        if not lines:
            return ""
        env = "aligned" if self._settings["environment"] == "array" else "align*"
        body = " \\\\\n".join(lines)
        block = f"\\begin{{{env}}}\n{body}\n\\end{{{env}}}"
        return f"$$\n{block}\n$$" if env == "aligned" else block

    def _table(self, columns: tuple[str, ...], rows: list[str], names: list[str], spec: str | None = None) -> str:
        env = self._settings["environment"]
        if env is None:  # longtable breaks across pages, but aligns its columns only on a second run
            env = "longtable" if self._settings["standalone"] and len(rows) > _TABULAR_ROWS else "tabular"
        spec = spec or "ll" + "r" * (len(columns) - 2)
        if env != "array" and max(map(len, names), default=0) > _NAME_CHARS:
            spec = r">{\raggedright\arraybackslash}p{4.2cm}" + spec[1:]
        if env == "array":
            head = " & ".join(rf"\text{{{c}}}" for c in columns) + r" \\ \hline"
            return "$$\n\\begin{array}{" + spec + "}\n" + "\n".join([head, *rows]) + "\n\\end{array}\n$$"
        head = " & ".join(columns) + r" \\"
        if env == "longtable":
            lines = [rf"\begin{{longtable}}{{@{{}}{spec}@{{}}}}", r"\toprule", head, r"\midrule", r"\endhead",
                     *rows, r"\bottomrule", r"\end{longtable}"]
            return "{\\footnotesize\\setlength{\\tabcolsep}{4pt}\n" + "\n".join(lines) + "\n}"
        fit = self._settings["standalone"]  # \symcxfit is defined in the standalone preamble
        lines = [r"\begin{center}\footnotesize\setlength{\tabcolsep}{4pt}" + (r"\symcxfit{%" if fit else ""),
                 rf"\begin{{tabular}}{{@{{}}{spec}@{{}}}}", r"\toprule", head, r"\midrule",
                 *rows, r"\bottomrule", r"\end{tabular}" + ("}" if fit else ""), r"\end{center}"]
        return "\n".join(lines)

    def _print_Report(self, report: Report) -> str:
        """The whole report: tables, derivations, totals, big-O, memory, notes, the operators behind the rows."""
        s = self._settings
        self._names = plain_names(report.layers)
        array = s["environment"] == "array"
        parts = self._tables(report)
        derivations = self._derivation_lines(report)
        if derivations and not array:
            parts.append("FLOPs of each matmul, convolution and attention, factor by factor (a backward pass computes "
                         "the gradient of the layer's input and of its weight; a layer whose input needs no gradient, "
                         "such as the first, has no grad-input term):")
        parts.append(self._align(derivations))
        if not array:
            parts.append("Totals of one training step, and over training:")
        parts.append(self._align(self._totals_lines(report)))
        if report.memory is not None:
            if not array:
                optimizer = latex_text(report.memory.optimizer)
                parts.append(rf"Memory of one training step, in bytes (optimizer: {optimizer}).")
            parts.append(self._align(self._memory_lines(report)))
            if not array:
                parts.append(self._peak_sentence(report.memory))
            if not array and self._settings["timeline"]:
                path = str(self._settings["timeline"]).replace("\\", "/")
                parts.append("\\begin{figure}[h]\\centering\\includegraphics[width=\\linewidth]{" + path + "}\n"
                             "\\caption{Bytes held over one training step's ops: forward, backward, optimizer "
                             "step; the peak marked.}\n\\end{figure}")
        if not array:
            notes = [note for note in report.notes if not isinstance(note, RouteNote)]
            parts.append("\\begin{itemize}\\raggedright\n" + "\n".join(rf"\item {self._print(x)}" for x in notes)
                         + "\n\\end{itemize}")
            parts.append("Operators behind each row (the names PyTorch gives them):")
            parts.append(self._table(_OP_COLUMNS, [self._op_row(row) for row in report.layers],
                                     list(self._names.values()), spec="lll"))
        body = "\n\n".join(p for p in parts if p)
        if not s["standalone"]:
            return body
        title = latex_text(s["title"] or "symcx analysis")
        return f"{PREAMBLE}\n\\section*{{{title}}}\n\n{body}\n\n\\end{{document}}\n"

    def _tables(self, report: Report) -> list[str]:
        """The per-layer tables: FLOPs; shapes and parameters; sizes; each introduced in text mode."""
        array = self._settings["environment"] == "array"
        names = [self._name(row) for row in report.layers]
        parts = []
        if not array:
            others = [f"${self._math(v)}$" for k, v in report.symbols.items() if k != "t"]
            symbols = f"symbols: {', '.join(others)}; " if others else ""
            route = next(iter(report.notes_of(RouteNote)), None)
            footnote = rf"\footnote{{{self._print(route)}}}" if route is not None else ""
            parts.append(f"% symcx analysis; symbols: {', '.join(report.symbols) or 'none'}")
            parts.append(rf"Per-layer FLOPs of one training step{footnote} ({symbols}batch size $t$):")
        parts.append(self._table(_FLOP_COLUMNS, [self._print(row) for row in report.layers], names))
        if not array:
            parts.append("Per-layer shapes and parameters (settings: k kernel, s stride, p padding, d dilation, "
                         "g groups; a parameter named bias counts as a bias, every other as weights):")
        parts.append(self._table(_SHAPE_COLUMNS, [self._shape_row(row) for row in report.layers], names,
                                 spec="lllllrr"))
        if not array:
            parts.append("Per-layer sizes in bytes (saved bytes: what autograd keeps until the backward pass):")
        parts.append(self._table(_SIZE_COLUMNS, [self._size_row(row) for row in report.layers], names,
                                 spec="lrcrr"))
        return parts


def to_latex(analysis: Analysis, *, standalone: bool = False, **settings: Any) -> str:
    """The analysis as LaTeX: a fragment, or a whole document with ``standalone=True``.

    Parameters
    ----------
    analysis : Analysis
    standalone : bool
        A compilable ``article`` (amsmath, array, booktabs, longtable, geometry) instead of
        a fragment (which needs amsmath, array and booktabs). A document with a ``longtable`` (more
        than 60 layers) needs two pdflatex runs for its columns to align.
    **settings
        :func:`~symcx.export.report.build_report`'s (``at``, ``epochs``, ``samples``,
        ``optimizer``), :class:`SymcxLatexPrinter`'s (``numbers``, ``digits``,
        ``environment``, ``title``) and sympy's own (``mul_symbol``, ``symbol_names``…).
        An unknown name raises ``TypeError``.

    Returns
    -------
    str

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Conv2d(1, 32, 3), torch.randn(2, 1, 28, 28))
    >>> tex = to_latex(a)
    >>> r"2 \\times t \\times 32 \\times 1 \\times 3 \\times 3 \\times 26 \\times 26 = 389{,}376 t" in tex
    True
    """
    options, settings = split_settings(settings)
    printer = SymcxLatexPrinter({"standalone": standalone, **settings})
    return printer.doprint(build_report(analysis, **options))
