"""LaTeX export: exact strings for the seed net, options, escaping, and a real pdflatex run."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import pytest
import torch

import symcx
from symcx.export import build_report, to_latex
from symcx.export.latex import SymcxLatexPrinter
from symcx.export.report import UncountedNote
from symcx.zoo import MLP, MnistCNN

PDFLATEX = shutil.which("pdflatex")


@pytest.fixture(scope="module")
def seed():
    return symcx.analyze(MnistCNN(), torch.randn(1, 1, 28, 28))


@pytest.fixture(scope="module")
def mlp():
    return symcx.analyze(MLP(), torch.randn(1, 784), widths="letters")


def test_conv_derivations_are_the_homework_products(seed):
    tex = to_latex(seed)
    # 2*26*26*3*3*1*32 = 389,376 per sample (the seed's FLOPs#1), factors in the rule's order
    assert (r"\mathtt{conv1}\ \text{forward} &= 2 \times t \times 32 \times 1 \times 3 \times 3 \times 26 \times 26"
            r" = 389{,}376 t") in tex
    # 2*24*24*3*3*32*64 = 21,233,664 per sample (FLOPs#2)
    assert (r"\mathtt{conv2}\ \text{forward} &= 2 \times t \times 64 \times 32 \times 3 \times 3 \times 24 \times 24"
            r" = 21{,}233{,}664 t") in tex
    line = next(x for x in tex.splitlines() if x.startswith(r"\mathtt{conv1}\ \text{forward}"))
    factors = line.split("&= ")[1].split(" = ")[0].split(r" \times ")
    assert sorted(factors) == sorted(["2", "t", "26", "26", "3", "3", "1", "32"])


def test_backward_derivation_of_a_linear_layer(seed):
    tex = to_latex(seed)
    # grad input t×10 @ 10×128 and grad weight 10×t @ t×128: 2*128*10 each = 5,120 per sample
    assert (r"\mathtt{fc2}\ \text{backward} &= \text{grad input: }2 \times t \times 10 \times 128 \\" "\n"
            r"&\phantom{=} + \text{grad weight: }2 \times 10 \times t \times 128 \\" "\n"
            r"&= 5{,}120 t") in tex
    # conv1's input needs no gradient: its backward is the grad weight alone, 2*1*32*t*26*26*3*3
    assert (r"\mathtt{conv1}\ \text{backward} &= \text{grad weight: }2 \times 1 \times 32 \times t \times 26 "
            r"\times 26 \times 3 \times 3 = 389{,}376 t") in tex


def test_totals_params_and_big_o(seed):
    tex = to_latex(seed)
    # 389,376 + 21,233,664 + 2*9216*128 + 2*128*10 = 23,984,896 per sample
    assert r"\text{Forward FLOPs} &= 23{,}984{,}896 t \\" in tex
    # 320 + 18,496 + 1,179,776 + 1,290 = 1,199,882
    assert r"\text{Parameters} &= 1{,}199{,}882 \\" in tex
    assert r"\text{Big-O, training} &= \mathcal{O}\left(N n\right)" in tex
    assert r"\text{Steps per epoch} &= \left\lceil{N / t}\right\rceil" in tex


def test_number_styles_and_values_at_a_batch_size(seed):
    assert r"\text{Parameters} &= 1.20 \times 10^{6} \\" in to_latex(seed, numbers="scientific")
    assert r"\text{Parameters} &= 1.1999 \times 10^{6} \\" in to_latex(seed, numbers="scientific", digits=5)
    assert r"\text{Parameters} &= 1199882 \\" in to_latex(seed, numbers="plain")
    # 23,984,896 * 64 = 1,535,033,344
    assert (r"\text{Forward FLOPs} &= 23{,}984{,}896 t && = 1{,}535{,}033{,}344 \quad \text{at } t = 64"
            in to_latex(seed, at={"t": 64}))


def test_symbols_print_as_named(mlp):
    tex = to_latex(mlp)
    # the seed's O(t*(ij + jk + kl)): 2 FLOPs per multiply-add
    assert r"\text{Forward FLOPs} &= 2 i j t + 2 j k t + 2 k l t \\" in tex
    assert r"\mathtt{net.0}\ \text{forward} &= 2 \times t \times i \times j = 2 i j t" in tex


def test_big_o_with_numbers_for_n_and_N(seed):
    tex = to_latex(seed, epochs=1, samples=60000)
    # 71,565,312·t·ceil(60000/t) no longer grows with t; the big-O is said in n, N and their numbers
    assert (r"\text{Big-O, training} &= \mathcal{O}\left(N n\right) \quad \text{with } n = 1,\ N = 60{,}000"
            in tex)
    assert r"\mathcal{O}\left(1\right)" not in tex


def test_plain_names_in_the_tables_the_ops_in_the_appendix(seed):
    tex = to_latex(seed)
    tables, appendix = tex.split("FLOPs of each matmul")[0], tex.split("Operators behind each row")[1]
    # F.max_pool2d, F.log_softmax and the second F.relu, as a student names them
    for plain in (r"\texttt{max pool} & ", r"\texttt{log-softmax} & ", r"\texttt{ReLU 2} & "):
        assert plain in tables
    for jargon in ("pool2d", "log\\_", "threshold", "make", "fake", "aten"):
        assert jargon not in tables, jargon
    assert r"max pool & \texttt{max\_\allowbreak{}pool2d\_\allowbreak{}with\_\allowbreak{}indices} & " in appendix
    assert r"log-softmax & \texttt{\_\allowbreak{}log\_\allowbreak{}softmax} & " in appendix
    assert re.search(r"(?<!\\)_(?!\{)", tex) is None  # every underscore escaped or a math subscript
    assert r"\mathtt{log-softmax}" in seed._repr_latex_()


def test_route_note_is_a_plain_footnote_and_the_peak_in_words(seed):
    tex = to_latex(seed)
    assert r"Per-layer FLOPs of one training step\footnote{Counted by tracing one training step" in tex
    # the peak: the backward of the second ReLU (threshold_backward_1 in the graph), in a footnote
    assert (r"The peak is reached in the backward pass of ReLU 2.\footnote{Operator "
            r"\texttt{threshold\_\allowbreak{}backward}, graph node \texttt{threshold\_\allowbreak{}backward\_"
            r"\allowbreak{}1}.}") in tex
    assert not [line for line in tex.splitlines() if line.startswith(r"\item Traced")]


def test_weights_biases_and_shapes_table(seed):
    tex = to_latex(seed)
    # conv1: input t×1×28×28, output t×32×26×26, 32×1×3×3 = 288 weights and 32 biases
    assert (r"\texttt{conv1} & $t \times 1 \times 28 \times 28$ & $t \times 32 \times 26 \times 26$ & "
            r"$\mathrm{k=3\times 3, s=1, p=0, d=1, g=1}$ & $32 \times 1 \times 3 \times 3,\ 32$ & $288$ & $32$ \\"
            in tex)
    # fc1: 128·9216 = 1,179,648 weights, 128 biases, 9216 → 128
    assert (r"$\mathrm{9216\to 128}$ & $128 \times 9{,}216,\ 128$ & $1{,}179{,}648$ & $128$ \\" in tex)
    assert r"\texttt{conv1} & $320$ & $\text{yes}$ & $86{,}528 t$ & $0$ \\" in tex


def test_standalone_document_and_fragment(seed):
    frag = to_latex(seed)
    assert r"\documentclass" not in frag and r"\begin{tabular}" in frag and r"\begin{align*}" in frag
    doc = to_latex(seed, standalone=True, title="Homework 3, Q1 & Q2")
    assert doc.startswith(r"\documentclass") and doc.rstrip().endswith(r"\end{document}")
    assert r"\section*{Homework 3, Q1 \& Q2}" in doc and r"\begin{tabular}" in doc
    assert r"\begin{longtable}" in to_latex(seed, standalone=True, environment="longtable")


def test_unknown_and_bad_options(seed):
    with pytest.raises(TypeError, match="Unknown setting 'colour'"):
        to_latex(seed, colour="red")
    with pytest.raises(ValueError, match="numbers must be one of"):
        to_latex(seed, numbers="roman")
    with pytest.raises(ValueError, match="environment must be one of"):
        to_latex(seed, environment="figure")


def test_uncounted_ops_are_listed(seed):
    report = build_report(seed)
    gaps = dataclasses.replace(report, notes=report.notes + (UncountedNote("aten.fft_r2c", "fc1", 2),))
    tex = SymcxLatexPrinter().doprint(gaps)
    assert r"\item Not counted (no cost rule): $\mathtt{aten.fft\_r2c}$ in $\mathtt{fc1}$ ($\times 2$)." in tex
    array = SymcxLatexPrinter({"environment": "array"}).doprint(gaps)
    assert r"\text{Not counted (no cost rule)} &\ \mathtt{aten.fft\_r2c}\ \text{in}\ \mathtt{fc1} \times 2" in array


def test_notes(seed):
    tex = to_latex(seed, epochs=1, samples=60000)
    items = [line for line in tex.splitlines() if line.startswith(r"\item ")]
    assert items[0] == (r"\item FLOPs count one multiply-add as 2 FLOPs, in matmul, convolution, attention (the "
                        r"convention of PyTorch's FlopCounterMode). Other FLOPs are symcx's count of what that "
                        r"convention leaves out: elementwise ops, norms, pooling, softmax, reductions.")
    assert items[1] == (r"\item Training: epochs $1$, samples $60{,}000$, $\lceil 60{,}000 / t \rceil$ steps per "
                        "epoch (the last, partial batch counted as a full one).")


def test_memory_section_is_shown_and_optional(seed):
    tex = to_latex(seed)
    # float32: 4 bytes per parameter, 4 * 28 * 28 per input sample
    assert r"\text{Parameters} &= 4{,}799{,}528 \\" + "\n" + r"\text{Buffers} &= 0" in tex
    assert r"\text{Input batch} &= 3{,}136 t \\" in tex
    assert r"Memory of one training step, in bytes (optimizer: sgd)." in tex
    no_memory = dataclasses.replace(build_report(seed), memory=None)
    tex = SymcxLatexPrinter().doprint(no_memory)
    assert "Peak" not in tex and "Memory of" not in tex and r"\text{Forward FLOPs}" in tex


def test_jupyter_latex_is_math_mode_only(seed):
    out = seed._repr_latex_()
    assert out.startswith("$$\n\\begin{array}")
    for text_mode_only in (r"\toprule", r"\begin{itemize}", r"\begin{align*}", "%"):
        assert text_mode_only not in out
    assert seed.to_latex() == to_latex(seed)


def test_long_formulas_are_cut_into_lines(mlp):
    tex = to_latex(mlp)
    peak = tex[tex.index(r"\text{Peak (training step)}"):].split(r"\text{Peak (inference)}")[0]
    assert r"\max\bigl(" in peak and r"\bigr)" in peak and peak.count(r"&\phantom{=}\quad") >= 2


def _long_names():
    model = torch.nn.Sequential()
    model.add_module("a_rather_long_encoder_projection_layer", torch.nn.Linear(8, 4))
    return symcx.analyze(model, torch.randn(2, 8))


def test_long_layer_names_wrap():
    tex = to_latex(_long_names(), standalone=True)
    assert r">{\raggedright\arraybackslash}p{4.2cm}" in tex
    assert r"\texttt{a\_\allowbreak{}rather\_\allowbreak{}long" in tex
    assert r"\intertext{\texttt{a\_\allowbreak{}rather" in tex


def _compile(tex: str, folder, runs: int = 1) -> str:
    (folder / "doc.tex").write_text(tex)
    for _ in range(runs):
        run = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                             cwd=folder, capture_output=True, text=True, timeout=120)
        log = (folder / "doc.log").read_text(errors="replace")
        assert run.returncode == 0, log[-3000:]
    assert (folder / "doc.pdf").stat().st_size > 0
    return log


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex is not installed (apt-get install texlive-latex-base "
                    "texlive-latex-recommended); CI installs it")
@pytest.mark.parametrize("which", ["seed", "seed-longtable", "mlp-symbolic-widths", "long-names"])
def test_standalone_compiles_with_pdflatex(which, seed, tmp_path):
    runs = 1
    if which == "seed":
        tex = to_latex(seed, standalone=True, at={"t": 64})
    elif which == "seed-longtable":
        tex, runs = to_latex(seed, standalone=True, environment="longtable"), 2
    elif which == "long-names":
        tex = to_latex(_long_names(), standalone=True)
    else:
        tex = to_latex(symcx.analyze(MLP(), torch.randn(1, 784), widths=True), standalone=True)
    log = _compile(tex, tmp_path, runs)
    assert not re.search(r"^! ", log, re.M)
    assert not re.search(r"\.\d+pk", log)  # Type 1 fonts only, no bitmap font generated
    assert "Overfull \\hbox" not in log  # the tables and totals fit the page
    assert "Rerun LaTeX" not in log  # a user's single run (two for a longtable) gives the final layout
