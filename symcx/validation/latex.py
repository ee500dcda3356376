"""A :class:`~symcx.validation.report.Validation` as LaTeX: predicted vs measured, the fits, the plot.

The measured half of a write-up: per batch size, symcx's FLOPs next to FlopCounterMode's, the
median time and achieved FLOP/s, the predicted next to the measured peak memory; then the
least-squares fits (time against predicted FLOPs, memory against predicted bytes) and the
plot as a figure; the table is scaled to the line width. A fragment needs ``amsmath``,
``booktabs`` and ``graphicx``, as the analysis's own fragment (:func:`symcx.export.to_latex`)
does with ``array``, so the estimate, the
measurement and the comparison compile as one document under
:data:`symcx.export.latex.PREAMBLE`.
"""

from __future__ import annotations

import os

from ..export.latex import PREAMBLE, latex_text
from .fit import Fit
from .report import SizeResult, Validation, format_bytes, format_flops

__all__ = ["validation_to_latex"]

_COLUMNS = (r"$t$", "Status", "FLOPs (symcx)", "FlopCounterMode", "Time, median [q1, q3]", "FLOP/s",
            "Memory predicted", "Memory measured", "Error")


def _number(value: float, digits: int = 3) -> str:
    """``value`` in math mode: ``1.14 \\times 10^{-10}``, or plain below 10^4 and above 10^-2."""
    if value == 0 or 1e-2 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return rf"{mantissa} \times 10^{{{int(exponent)}}}"


def _flops_cell(row: SizeResult) -> str:
    """FlopCounterMode's measured total, and whether every phase equals symcx's formula for it."""
    measured = [c.measured for c in row.flops if c.measured is not None]
    if not measured:
        return "--"
    verdict = "= formula" if row.flops_ok else "differs"
    return f"{latex_text(format_flops(sum(measured)))} ({verdict})"


def _row(row: SizeResult) -> str:
    """One batch size: predicted and measured FLOPs, time, FLOP/s, memory, relative error."""
    status = {"ok": "ok", "oom": "out of memory", "skipped": "skipped", "excluded": "excluded"}.get(row.status, "error")
    if row.time is None:
        time = "--"
    else:
        ms = {k: v * 1e3 for k, v in row.time.items()}
        time = f"{ms['median_s']:.2f} ms [{ms['q1_s']:.2f}, {ms['q3_s']:.2f}]"
    err = row.memory_rel_error
    cells = [str(row.batch_size), status, format_flops(row.predicted_flops), _flops_cell(row), time,
             format_flops(row.flops_per_s, "FLOP/s"), format_bytes(row.predicted_bytes),
             format_bytes(row.peak_bytes), "--" if err is None else f"{err * 100:+.1f}%"]
    return " & ".join(c if k == 3 else latex_text(c) for k, c in enumerate(cells)) + r" \\"


def _r2(fit: Fit) -> str:
    r2 = "--" if fit.r2 is None else f"{fit.r2:.4f}"
    return rf"\quad (R^2 = {r2},\ {fit.n}\ \text{{sizes}})"


def _fit_lines(v: Validation) -> list[str]:
    """The fits as ``align*`` lines: time against predicted FLOPs, memory against predicted bytes."""
    lines = []
    if v.time_fit is not None:
        f = v.time_fit
        sign = "+" if f.intercept >= 0 else "-"
        lines.append(rf"\text{{time}} &\approx {_number(f.slope)}\ \text{{s/FLOP}} \cdot \text{{FLOPs}}(t) "
                     rf"{sign} {abs(f.intercept) * 1e3:.2f}\ \text{{ms}} {_r2(f)}")
        if f.slope > 0:
            lines.append(rf"\text{{marginal rate}} &= 1 / \text{{slope}} = "
                         rf"\text{{{latex_text(format_flops(1 / f.slope, 'FLOP/s'))}}}")
    if v.memory_fit is not None:
        f = v.memory_fit
        sign = "+" if f.intercept >= 0 else "-"
        lines.append(rf"\text{{peak memory}} &\approx {f.slope:.4f} \cdot \text{{predicted}} {sign} "
                     rf"\text{{{latex_text(format_bytes(abs(f.intercept)))}}} {_r2(f)}")
    return lines


def _step_time(v: Validation) -> list[str]:
    """With the traced graph run: per size, graph = eager, predicted and measured step time; the worst layers."""
    if v.run_mode != "graph" or not any(r.measured_time_s is not None or r.graph_error for r in v.sizes):
        return []
    rows = []
    for r in v.sizes:
        same = {True: "yes", False: "NO"}.get(r.graph_matches_eager, "not run" if r.graph_error else "--")
        pred = "--" if r.predicted_time_s is None else f"{r.predicted_time_s * 1e3:.2f} ms"
        meas = "--" if r.measured_time_s is None else f"{r.measured_time_s * 1e3:.2f} ms"
        err = r.time_rel_error
        rows.append(" & ".join(latex_text(c) for c in (str(r.batch_size), same, pred, meas,
                                                       "--" if err is None else f"{err * 100:+.1f}%")) + r" \\")
    parts = ["The traced joint graph itself, executed at each size and compared with eager PyTorch on the same "
             "seed, and its step time (the sum of its nodes) against the prediction:",
             "\n".join([r"\begin{center}\footnotesize", r"\begin{tabular}{@{}rlrrr@{}}", r"\toprule",
                        r"$t$ & Graph = eager & Predicted & Measured & Error \\", r"\midrule", *rows,
                        r"\bottomrule", r"\end{tabular}", r"\end{center}"])]
    timed = [r for r in v.sizes if r.layers and r.predicted_time_s is not None]
    if timed:
        worst = ", ".join(f"{w.layer or 'model'} ({w.measured_s * 1e3:.2f} ms measured, {w.predicted_s * 1e3:.2f} ms "
                          f"predicted)" for w in timed[-1].worst_layers())
        parts.append(f"Layers where measurement and prediction disagree most at $t = {timed[-1].batch_size}$: "
                     f"{latex_text(worst, breakable=True)}.")
    return parts


def _notes(v: Validation) -> list[str]:
    """What was measured how, sizes that did not run, known FlopCounterMode errors, failures."""
    phase = "forward and backward" if v.backward else "forward"
    notes = [f"{phase.capitalize()} pass on {latex_text(v.device_name)}, {v.repeats} timed runs per size after "
             f"{v.warmup} warm-up runs (torch {latex_text(v.torch_version)}, symcx {latex_text(v.symcx_version)}).",
             "Memory is above the baseline (parameters, buffers, the input batch): predicted by "
             f"{latex_text(v.memory_model)}, measured by {latex_text(v.memory_tracker)}."]
    notes += [f"$t = {r.batch_size}$: {latex_text(r.status)}: {latex_text(r.error or '', breakable=True)}"
              for r in v.sizes if r.status != "ok"]
    notes += [f"FlopCounterMode differs from symcx (known, expected): {latex_text(d, breakable=True)}"
              for d in v.deviations]
    notes += [rf"$t = {r.batch_size}$: traced graph not run: {latex_text(r.graph_error, breakable=True)}"
              for r in v.sizes if r.graph_error is not None and r.graph_error != r.error]
    if v.time_model is not None:
        r2 = "" if v.time_model.r2 is None else f"; per-node fit $R^2 = {v.time_model.r2:.3f}$"
        notes.append(f"Step time predicted by {latex_text(v.time_model.source)} "
                     f"({latex_text(v.time_model.detail, breakable=True)}{r2}).")
    notes += [rf"\textbf{{Failure:}} {latex_text(f, breakable=True)}" for f in v.failures]
    return notes


def validation_to_latex(validation: Validation, *, standalone: bool = False,
                        plot_path: str | os.PathLike | None = None) -> str:
    """The validation as LaTeX: predicted-vs-measured table, the fits, the plot as a figure.

    Parameters
    ----------
    validation : Validation
        A sweep's result (:func:`symcx.validation.validate`, or ``Validation.from_json``).
    standalone : bool
        A whole ``article`` (the analysis export's preamble) instead of a fragment; the
        fragment needs ``amsmath``, ``booktabs`` and ``graphicx``.
    plot_path : str or path-like, optional
        A plot written by :meth:`Validation.plot` (PNG or PDF), included as a figure; the
        path is written as given, so give it relative to where pdflatex runs.

    Returns
    -------
    str

    Examples
    --------
    >>> from symcx.validation import Validation
    >>> v = Validation.from_json(open("docs/validation/mnist-cnn-cpu-backward.json").read())
    >>> tex = validation_to_latex(v, plot_path="fit.png")
    >>> r"1 & ok & 71.57 MFLOP & 71.57 MFLOP (= formula)" in tex, r"\\includegraphics" in tex
    (True, True)
    """
    v = validation
    phase = "forward+backward" if v.backward else "forward"
    parts = [f"% symcx validate: {v.model}, {phase}, {v.device_name}",
             f"Predicted against measured, per batch size $t$ ({latex_text(v.model)}, {phase}, "
             f"{latex_text(v.device_name)}):",
             "\n".join([r"\begin{center}\footnotesize\setlength{\tabcolsep}{3pt}\resizebox{\linewidth}{!}{%",
                        r"\begin{tabular}{@{}rllrrrrrr@{}}", r"\toprule", " & ".join(_COLUMNS) + r" \\", r"\midrule",
                        *map(_row, v.sizes), r"\bottomrule", r"\end{tabular}}", r"\end{center}"])]
    fits = _fit_lines(v)
    if fits:
        parts.append("Least-squares fits over the sizes that ran:")
        parts.append("\\begin{align*}\n" + " \\\\\n".join(fits) + "\n\\end{align*}")
    parts += _step_time(v)
    if plot_path is not None:
        parts.append("\n".join([r"\begin{figure}[htbp]", r"\centering",
                                rf"\includegraphics[width=\linewidth]{{{os.fspath(plot_path)}}}",
                                rf"\caption{{Time and peak memory against batch size $t$, measured and predicted, "
                                rf"with the fits ({latex_text(v.model)}, {phase}).}}", r"\end{figure}"]))
    parts.append("\\begin{itemize}\\raggedright\n" + "\n".join(rf"\item {n}" for n in _notes(v)) + "\n\\end{itemize}")
    body = "\n\n".join(parts)
    if not standalone:
        return body
    return f"{PREAMBLE}\n\\section*{{symcx validate: {latex_text(v.model)}}}\n\n{body}\n\n\\end{{document}}\n"
