"""LaTeX of a validation sweep, and the plot's fitted line on a log axis.

The sweep is the committed CPU run of the seed net (docs/validation/mnist-cnn-cpu-backward.json);
expected cells are worked out by hand from its numbers.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import symcx
from symcx.export import to_latex
from symcx.export.latex import PREAMBLE
from symcx.validation import Validation
from symcx.validation.latex import validation_to_latex
from symcx.validation.plot import fit_points
from symcx.zoo import MnistCNN

PDFLATEX = shutil.which("pdflatex")
SWEEP = Path(__file__).resolve().parents[1] / "docs" / "validation" / "mnist-cnn-cpu-backward.json"


@pytest.fixture(scope="module")
def sweep():
    return Validation.from_json(SWEEP.read_text())


def test_table_rows_against_the_sweep(sweep):
    tex = validation_to_latex(sweep)
    # t = 64: (23,984,896 + 47,580,416)·64 = 4,580,179,968 FLOPs; median 352.44 ms; 4.58e9 / 0.35244 s = 13.00 GFLOP/s
    assert (r"64 & ok & 4.58 GFLOP & 4.58 GFLOP (= formula) & 352.44 ms [329.81, 443.99] & 13.00 GFLOP/s & "
            r"36.79 MiB & 36.79 MiB & +0.0\% \\") in tex
    assert tex.count(r" \\" + "\n") >= 5  # header and four sizes


def test_fits_and_figure(sweep):
    tex = validation_to_latex(sweep, plot_path="plots/fit.png")
    # slope 1.1414e-10 s/FLOP, intercept -44.99 ms; 1 / slope = 8.76 GFLOP/s
    assert (r"\text{time} &\approx 1.14 \times 10^{-10}\ \text{s/FLOP} \cdot \text{FLOPs}(t) - 44.99\ \text{ms} "
            r"\quad (R^2 = 0.9924,\ 4\ \text{sizes})") in tex
    assert r"\text{marginal rate} &= 1 / \text{slope} = \text{8.76 GFLOP/s}" in tex
    assert r"\includegraphics[width=\linewidth]{plots/fit.png}" in tex
    assert r"\includegraphics" not in validation_to_latex(sweep)
    assert validation_to_latex(sweep, standalone=True).startswith(r"\documentclass")


def test_failed_sizes_and_failures_are_listed(sweep):
    import dataclasses

    oom = dataclasses.replace(sweep.sizes[-1], status="oom", error="CUDA out of memory", time=None, peak_bytes=None)
    tex = validation_to_latex(dataclasses.replace(sweep, sizes=sweep.sizes[:-1] + (oom,)))
    assert r"256 & out of memory & 18.32 GFLOP" in tex and r"\item $t = 256$: oom: CUDA out of memory" in tex


def test_fitted_line_stays_visible_where_it_is_negative(sweep):
    f = sweep.time_fit
    # at t = 1: 1.1415e-10 · 71,565,312 - 0.044987 s = -36.8 ms, below a log axis
    ys = [f.predict(r.predicted_flops) * 1e3 for r in sweep.sizes]
    assert ys[0] < 0
    medians = [r.time["median_s"] * 1e3 for r in sweep.sizes]
    shown, raised = fit_points(ys, medians)
    # drawn at half the smallest positive value: the t = 1 median, 11.03 ms
    assert raised and shown[0] == pytest.approx(min(medians) / 2) and shown[1:] == ys[1:]
    assert fit_points([1.0, 2.0], [3.0]) == ([1.0, 2.0], False)


def test_plot_writes_a_png(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    sweep.plot(tmp_path / "fit.png")
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex is not installed (apt-get install texlive-latex-base "
                    "texlive-latex-recommended); CI installs it")
def test_estimate_and_measurement_compile_as_one_document(sweep, tmp_path):
    pytest.importorskip("matplotlib")
    sweep.plot(tmp_path / "fit.png")
    estimate = to_latex(symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28)), epochs=1, samples=60000)
    doc = "\n\n".join([PREAMBLE, r"\section*{Estimate}", estimate, r"\section*{Measurement}",
                       validation_to_latex(sweep, plot_path="fit.png"), r"\end{document}"])
    (tmp_path / "hw.tex").write_text(doc)
    run = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "hw.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    log = (tmp_path / "hw.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    assert not re.search(r"^! ", log, re.M) and "Overfull \\hbox" not in log
    assert (tmp_path / "hw.pdf").stat().st_size > 0


GRAPH_SWEEP = SWEEP.with_name("mnist-cnn-cpu-graph.json")  # --run graph with a calibration, t = 1, 8, 32


def test_the_traced_graph_and_its_step_time_are_tabulated():
    v = Validation.from_json(GRAPH_SWEEP.read_text())
    tex = validation_to_latex(v)
    for row in v.sizes:  # each row: t, graph = eager, predicted, measured, (predicted - measured) / measured
        p, m = row.predicted_time_s, row.measured_time_s
        cells = f"{row.batch_size} & yes & {p * 1e3:.2f} ms & {m * 1e3:.2f} ms & {(p - m) / m * 100:+.1f}\\% \\\\"
        assert cells in tex
    worst = max(v.sizes[-1].layers, key=lambda r: abs(r.predicted_s - r.measured_s))
    plain = tex.replace(r"\allowbreak{}", "").replace(r"\_", "_")  # breaks after dots; escaped underscores
    assert f"disagree most at $t = 32$: {worst.layer} ({worst.measured_s * 1e3:.2f} ms measured" in plain
    assert "Step time predicted by calibration" in tex
    assert "Graph = eager" not in validation_to_latex(Validation.from_json(SWEEP.read_text()))  # --run model era
