"""The command line, run as ``python -m symcx`` in a subprocess; model specs and file writing in process."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sympy
import torch

from symcx import cli
from symcx.errors import SymcxError
from symcx.cli_specs import example_input, load_model, parse_input, parse_symbolic

REPO = Path(__file__).resolve().parents[1]

NET_PY = textwrap.dedent("""
    import torch

    class NotAModule:
        pass

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x)

    def make():
        return Net()

    def three():
        return 3

    class NeedsArgs(torch.nn.Module):
        def __init__(self, width):
            super().__init__()

    def on_meta():
        with torch.device("meta"):
            return Net()

    def boom():
        class Boom(torch.nn.Linear):
            def forward(self, x):
                raise RuntimeError("boom")
        return Boom(4, 3)

    def sized(channels=8, bias=True, kernel=3):
        return torch.nn.Conv2d(3, channels, kernel, bias=bias)

    class Interrupts(torch.nn.Linear):  # Ctrl-C as the sweep reaches a batch over 10 (the trace at t = 8 does not)

        def __init__(self):
            super().__init__(4, 3)

        def forward(self, x):
            if isinstance(x.shape[0], int) and x.shape[0] > 10:  # a real run, not the trace's symbolic size
                raise KeyboardInterrupt
            return super().forward(x)
""")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "symcx", *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def workdir(tmp_path):
    (tmp_path / "net.py").write_text(NET_PY)
    return tmp_path


# --- subprocess runs: one per format and per bad argument ------------------------------------
@pytest.mark.slow
def test_table_on_the_terminal():
    out = run("analyze", "mnist-cnn", "--exact")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    for text in ("conv1", "Conv2d", "389,376*t", "21,233,664*t", "23,984,896*t", "1,199,882", "O(N*n)",
                 "max_pool2d_with_indices", "Peak (training step)"):
        assert text in out.stdout, text


@pytest.mark.slow
def test_latex_to_a_file_whole(workdir):
    out = run("analyze", "mnist-cnn", "--input", "1x28x28", "--format", "latex", "--batch", "64",
              "--output", "seed.tex", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == "wrote seed.tex\n"
    tex = (workdir / "seed.tex").read_text()
    assert tex.startswith(r"\documentclass") and tex.endswith("\\end{document}\n")
    # 2*26*26*3*3*1*32 = 389,376; at t = 64 the forward is 23,984,896*64 = 1,535,033,344
    assert r"= 2 \times t \times 32 \times 1 \times 3 \times 3 \times 26 \times 26 = 389{,}376 t" in tex
    assert r"= 1{,}535{,}033{,}344 \quad \text{at } t = 64" in tex
    assert sorted(p.name for p in workdir.iterdir()) == ["net.py", "seed.tex"]  # no temporary left


@pytest.mark.slow
def test_markdown_with_letter_widths():
    out = run("analyze", "mlp", "--widths", "letters", "--format", "markdown")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("## symcx analysis of mlp\n")
    # the seed's O(t*(ij + jk + kl)) with 2 FLOPs per multiply-add
    assert "| Forward FLOPs | `2*i*j*t + 2*j*k*t + 2*k*l*t` |" in out.stdout
    assert "Big-O: one step `O(i*j*t + j*k*t + k*l*t)`" in out.stdout


@pytest.mark.slow
def test_json_with_batch_epochs_and_samples():
    out = run("analyze", "mnist-cnn", "--format", "json", "--batch", "64", "--epochs", "1", "--samples", "60000")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["totals"]["forward_flops"] == "23984896*t"  # the formula stays symbolic
    assert doc["values"]["totals"]["forward_flops"] == 23984896 * 64
    # ceil(60000/64) = 938 steps of (23,984,896 + 47,580,416) * 64 FLOPs, one epoch
    assert doc["values"]["training"]["total_flops"] == math.ceil(60000 / 64) * (23984896 + 47580416) * 64


@pytest.mark.slow
def test_model_file_factory_with_symbolic_dims(workdir):
    out = run("analyze", "net.py:make", "--input", "3x16x16", "--symbolic", "H,W", "--format", "json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    syms = {s: sympy.Symbol(s, positive=True, integer=True) for s in doc["symbols"]}
    t, H, W = syms["t"], syms["H"], syms["W"]
    # 2 * 8 out * 3 in * 3*3 kernel per output position, (H-2)*(W-2) positions, t samples
    got = sympy.sympify(doc["totals"]["forward_flops"], locals=syms)
    assert sympy.expand(got - 2 * 8 * 3 * 3 * 3 * (H - 2) * (W - 2) * t) == 0


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
@pytest.mark.parametrize("args, message", [
    (["analyze", "foo"], "symcx analyze: error: unknown model 'foo': give path/to/file.py:Name"),
    (["analyze", "mnist-cnn", "--input", "1x28xq"], "malformed --input '1x28xq': expected positive sizes"),
    (["analyze", "nope.py:Net", "--input", "3x8x8"], "symcx analyze: error: file not found: nope.py"),
    (["analyze", "net.py:NotAModule", "--input", "3x8x8"],
     "symcx analyze: error: net.py:NotAModule is a class but not a torch.nn.Module subclass"),
    (["validate", "mnist-cnn", "--batch-sizes", "0,x"], "malformed --batch-sizes '0,x'"),
    (["analyze", "mnist-cnn", "--output", "missing/out.tex"], "cannot write missing/out.tex: no directory"),
    (["analyze", "mnist-cnn", "--optimizer", "lion"],
     "argument --optimizer: unknown optimizer 'lion'; use one of adam, adamw, sgd, sgd-momentum, ASGD"),
    (["analyze", "mnist-cnn", "--optimizer", "AdamW:lr=1e-3,betaz=1"], "AdamW takes no argument 'betaz'; it takes lr"),
    (["analyze", "mnist-cnn", "--fragment", "--format", "markdown"],
     "symcx analyze: error: --fragment is for --format latex only, not --format markdown"),
    (["analyze", "mnist-cnn", "--fragment", "--format", "json"], "--fragment is for --format latex only"),
    (["analyze", "mnist-cnn", "--fragment"], "--fragment is for --format latex only, not --format table"),
    (["validate", "mnist-cnn", "--plot", "fit.xyz", "--output", "keep.txt"],
     "symcx validate: error: cannot plot to fit.xyz: the extension must be one of png, pdf, svg, jpg, jpeg"),
    (["validate", "mnist-cnn", "--plot", "fit"], "cannot plot to fit: the extension must be one of"),
    (["validate", "mnist-cnn", "--plot", "missing/fit.png"], "cannot write missing/fit.png: no directory"),
    (["validate", "net.py:on_meta", "--input", "3x8x8", "--output", "keep.txt"],
     "symcx validate: error: net.py:on_meta builds its parameters on the meta device"),
    (["analyze", "mnist-cnn", "--input", "1x1x28x28"],
     "note: --input 1x1x28x28 has one dim more than a sample of MnistCNN's example_input() (3 dims): "
     "--input excludes the batch dim"),
])
def test_bad_arguments_one_line_exit_2(workdir, args, message):
    (workdir / "keep.txt").write_text("old")
    if "--output" not in args:
        args = [*args, "--output", "keep.txt"] if args[0] == "analyze" else args
    out = run(*args, cwd=workdir)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert (workdir / "keep.txt").read_text() == "old"  # written whole or not at all
    assert sorted(p.name for p in workdir.iterdir()) == ["keep.txt", "net.py"]


def test_optimizer_in_any_case():
    parser = cli.build_parser()
    for given, expected in [("ADAM", "adam"), ("adamW", "adamw"), ("SGD-Momentum", "sgd-momentum"), ("sgd", "sgd")]:
        assert parser.parse_args(["analyze", "mlp", "--optimizer", given]).optimizer == expected
    assert parser.parse_args(["analyze", "mlp"]).optimizer == "sgd"


@pytest.mark.slow
def test_optimizer_upper_case_keeps_the_memory_section():
    out = run("analyze", "mnist-cnn", "--optimizer", "Adam", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    # Adam keeps two copies of the 1,199,882 float32 parameters and a 4-byte step per tensor (8)
    assert doc["memory"]["optimizer"] == str(2 * 4 * 1199882 + 4 * 8)


def test_build_report_raises_for_a_bad_optimizer():
    from symcx.export import build_report

    a = symcx_analyze_linear()
    with pytest.raises(SymcxError, match="optimizer must be one of"):
        build_report(a, optimizer="lion")
    state = next(f for f in build_report(a, optimizer="adam").memory.figures if f.key == "optimizer")
    assert state.formula == 2 * 15 * 4 + 2 * 4  # Adam: two moments of the 15 parameters, a step per tensor


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
def test_a_torch_optim_class_with_arguments_is_traced():
    out = run("analyze", "mlp", "--optimizer", "RMSprop:lr=1e-3,momentum=0.5", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    # RMSprop with momentum: square_avg and momentum_buffer per parameter, a step per tensor (6 tensors)
    params = 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert doc["memory"]["optimizer"] == str(2 * 4 * params + 6 * 4)
    assert doc["memory"]["optimizer_name"].startswith("RMSprop(lr=0.001, momentum=0.5)")
    assert doc["layers"][-1]["name"] == "optimizer"


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
def test_inference_figures_as_json(workdir):
    (workdir / "lm.py").write_text(
        "import torch\nfrom transformers import GPT2Config, GPT2LMHeadModel\n"
        "def tiny():\n"
        "    m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=64))\n"
        "    m.example_input = lambda: torch.zeros(1, 4, dtype=torch.long)\n"
        "    return m\n")
    out = run("analyze", "lm.py:tiny", "--inference", "--format", "json", "--batch", "4", cwd=workdir)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "symcx.serving/1"
    # 1 layer × (key + value) × 2 heads × head dim 8 × 4 B per cached token and sequence
    assert doc["formulas"]["kv_cache_bytes"] == "128*P*t" and doc["values"]["bytes_per_token"] == 128
    bad = run("analyze", "lm.py:tiny", "--inference", "--format", "latex", cwd=workdir)
    assert bad.returncode == 2 and "not latex" in bad.stderr


def symcx_analyze_linear():
    import symcx

    return symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_fails_first(workdir):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        out = run("validate", "mnist-cnn", "--output", "locked/out.json", cwd=workdir)
    finally:
        locked.chmod(0o700)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"symcx validate: error: cannot write locked/out.json: directory {locked} is not writable\n"


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
@pytest.mark.parametrize("args, reason", [
    # the predicted peak, about 2**65 bytes at this size, exceeds any free memory: skipped unless --force
    (["mlp", "--batch-sizes", "99999999999999999999"], "t=99999999999999999999: skipped: predicted peak "),
    (["mlp", "--batch-sizes", "99999999999999999999", "--force"], "t=99999999999999999999: error: OverflowError"),
    (["torch.nn:ReLU", "--input", "4", "--backward", "--batch-sizes", "2,4"],
     "t=2: error: RuntimeError: element 0 of tensors does not require grad"),
])
def test_validate_where_no_batch_size_ran_exits_3(workdir, args, reason):
    out = run("validate", *args, "--repeats", "1", "--warmup", "0", "--output", "out.json", "--plot", "fit.png",
              cwd=workdir)
    assert out.returncode == 3, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("symcx validate: error: no batch size ran (")
    assert reason in out.stderr and "Traceback" not in out.stderr
    assert reason.split(": ")[1] in out.stdout  # the table still shows each size's failure
    assert sorted(p.name for p in workdir.iterdir()) == ["net.py"]  # neither file written


@pytest.mark.slow
def test_trace_error_said_once(workdir):
    out = run("analyze", "net.py:boom", "--input", "4", cwd=workdir)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.count("RuntimeError: boom") == 1, out.stderr
    assert "fallback failed too" not in out.stderr


def test_input_help_says_the_batch_is_excluded(capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "excluding the batch dim" in text and "the symbol t (example size 8)" in text


@pytest.mark.slow
def test_help_runs_as_a_module():
    out = run("--help")
    assert out.returncode == 0
    assert "analyze" in out.stdout and "validate" in out.stdout and out.stdout.startswith("usage: symcx")


# --- in process ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command, options", [
    ("analyze", ["--input", "--format", "--output", "--batch", "--symbolic", "--widths", "--epochs", "--samples",
                 "--optimizer", "--numbers", "--fragment", "--strict", "--model-args", "--exact", "--depth",
                 "--plot-memory", "MODEL", "mnist-cnn", "examples:", "runs its code"]),
    ("validate", ["--input", "--device", "--batch-sizes", "--backward", "--repeats", "--warmup", "--output",
                  "--plot", "--model-args", "--force", "MODEL"]),
])
def test_subcommand_help_is_complete(capsys, command, options):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, option


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh.txt"
    cli.write_atomic(str(fresh), "text")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.read_text() == "text" and fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    fresh.unlink()
    target = tmp_path / "out.json"
    target.write_text("old")
    target.chmod(0o640)
    cli.write_atomic(str(target), "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        cli.write_atomic(str(target), "newer")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_load_model_specs(workdir):
    assert type(load_model("mlp")).__name__ == "MLP"
    assert isinstance(load_model("torch.nn:Identity"), torch.nn.Identity)
    assert type(load_model(f"{workdir / 'net.py'}:make")).__name__ == "Net"
    cases = {
        "net.py": "say which class or factory",
        f"{workdir / 'net.py'}:three": "returned an object of type int, not a torch.nn.Module",
        f"{workdir / 'net.py'}:NeedsArgs": "cannot build",
        f"{workdir / 'net.py'}:Missing": "has no attribute 'Missing' (nn.Module classes there: Interrupts, NeedsArgs, Net)",
        "no_such_package_xyz:make": "cannot import module 'no_such_package_xyz'",
    }
    for spec, message in cases.items():
        with pytest.raises(SymcxError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_model(spec)


def test_input_and_symbolic_parsing():
    assert parse_input("1x28x28") == [((1, 28, 28), torch.float32)]
    assert parse_input("16,16:long") == [((16,), torch.float32), ((16,), torch.int64)]
    for bad in ("", "1x", "x28", "0x28", "1x28:nonsense", "1.5x2"):
        with pytest.raises(SymcxError, match="malformed --input"):
            parse_input(bad)
    mlp = load_model("mlp")
    assert example_input(mlp, "784").shape == (2, 784)
    with pytest.raises(SymcxError, match="has no example_input"):
        example_input(torch.nn.Identity(), None)
    image = torch.randn(2, 3, 32, 32)
    assert parse_symbolic("H,W", image) == {"H": 2, "W": 3}
    assert parse_symbolic("L", torch.randn(2, 16)) == {"L": 1}
    assert parse_symbolic("S=2", image) == {"S": 2}
    with pytest.raises(SymcxError, match="cannot tell which dim 'Q'"):
        parse_symbolic("Q", image)
    with pytest.raises(SymcxError, match="malformed --symbolic"):
        parse_symbolic("H=x", image)


# --- issue 13: --model-args, --exact/--depth, Ctrl-C in a sweep ------------------------------
@pytest.mark.slow
def test_model_args_reach_the_factory(workdir):
    out = run("analyze", "net.py:sized", "--model-args", "channels=4,bias=false,kernel=1", "--input", "3x8x8",
              "--format", "json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    # Conv2d(3, 4, 1, bias=False): 4·3·1·1 = 12 weights, no bias; 2·t·4·3·8·8 = 1,536·t forward FLOPs
    totals = json.loads(out.stdout)["totals"]
    assert totals["params"] == "12" and totals["forward_flops"] == "1536*t"


@pytest.mark.slow
def test_model_args_for_validate(workdir):
    out = run("validate", "net.py:sized", "--model-args", "channels=2,kernel=1", "--input", "3x4x4",
              "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0", "--output", "v.json", cwd=workdir)
    assert out.returncode == 0, out.stderr
    sizes = json.loads((workdir / "v.json").read_text())["sizes"]
    # Conv2d(3, 2, 1): 2·t·2·3·4·4 = 192·t FLOPs, measured by FlopCounterMode
    assert [s["flops"][0]["measured"] for s in sizes] == [192, 384]


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
@pytest.mark.parametrize("args, message", [
    (["--model-args", "channels"], "malformed --model-args item 'channels': expected key=value"),
    (["--model-args", "width=2,width=3"], "--model-args gives 'width' twice"),
    (["--model-args", "depth=3"], "cannot build net.py:sized(depth=3): TypeError: "),
])
def test_bad_model_args_one_line_exit_2(workdir, args, message):
    out = run("analyze", "net.py:sized", *args, "--input", "3x8x8", cwd=workdir)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr


def test_parse_model_args_values():
    from symcx.cli_specs import parse_model_args

    assert parse_model_args("a=1,b=-2.5,c=TRUE,d=false,e=None,f=resnet50,g=1e3") == {
        "a": 1, "b": -2.5, "c": True, "d": False, "e": None, "f": "resnet50", "g": 1000.0}
    assert parse_model_args(None) == {} and parse_model_args("") == {}


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
@pytest.mark.parametrize("flag", [["--exact"], ["--depth", "2"]])
def test_table_options_rejected_for_json(flag):
    out = run("analyze", "mnist-cnn", "--format", "json", *flag)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"symcx analyze: error: {flag[0]} is for --format table or markdown only")


@pytest.mark.slow
def test_human_units_by_default_exact_on_request():
    human, exact = run("analyze", "mnist-cnn"), run("analyze", "mnist-cnn", "--exact")
    assert human.returncode == exact.returncode == 0
    # conv2: 2·24·24·3·3·32·64 = 21,233,664 FLOPs per sample
    assert "21.2M*t" in human.stdout and "21,233,664*t" not in human.stdout
    assert "21,233,664*t" in exact.stdout


@pytest.mark.slow
def test_depth_folds_the_tree():
    out = run("analyze", "resnet18", "--depth", "1", "--format", "markdown", "--exact")
    assert out.returncode == 0, out.stderr
    assert "| **`layer1`** | block of 12 |" in out.stdout and "| `layer1.0.conv1` |" not in out.stdout


@pytest.mark.slow
def test_markdown_links_the_memory_timeline(workdir):
    (workdir / "figs").mkdir()
    out = run("analyze", "mnist-cnn", "--format", "markdown", "--output", "r.md", "--plot-memory", "figs/m.png",
              "--batch", "4", cwd=workdir)
    assert out.returncode == 0, out.stderr
    assert "![Memory timeline of one training step](figs/m.png)" in (workdir / "r.md").read_text()
    # the seed's peak at t = 4: 532,072·4 + 9,523,800 = 11,652,088 bytes (tests/test_memory.py)
    assert "peak 11,652,088 bytes" in out.stderr
    assert (workdir / "figs" / "m.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
def test_ctrl_c_in_a_sweep_writes_the_finished_sizes_and_exits_130(workdir):
    out = run("validate", "net.py:Interrupts", "--input", "4", "--batch-sizes", "2,4,16", "--repeats", "1",
              "--warmup", "0", "--output", "v.json", cwd=workdir)
    assert out.returncode == 130
    assert "symcx: interrupted after 2 of 3 batch sizes" in out.stderr
    doc = json.loads((workdir / "v.json").read_text())
    assert doc["partial"] is True and [s["batch_size"] for s in doc["sizes"]] == [2, 4]
    assert sorted(p.name for p in workdir.iterdir()) == ["net.py", "v.json"]  # written whole, no temporary


@pytest.mark.slow  # a subprocess per case: the fast subset keeps the rest of the CLI tests
def test_validate_as_latex_with_its_plot(workdir):
    out = run("validate", "mnist-cnn", "--batch-sizes", "1,2", "--repeats", "1", "--warmup", "0",
              "--format", "latex", "--plot", "fit.png", "--output", "report.tex", cwd=workdir)
    assert out.returncode == 0, out.stderr
    tex = (workdir / "report.tex").read_text()
    assert tex.startswith("\\documentclass") and tex.rstrip().endswith("\\end{document}")
    assert "\\includegraphics" in tex and "fit.png" in tex
    assert (workdir / "fit.png").exists()
    printed = run("validate", "mnist-cnn", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0",
                  "--format", "json", cwd=workdir)
    assert printed.returncode == 0 and json.loads(printed.stdout)["schema"] == "symcx.validation/1"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex")
def test_latex_report_shows_the_memory_timeline_and_compiles(workdir):
    out = run("analyze", "mnist-cnn", "--format", "latex", "--plot-memory", "mem.png", "--output", "seed.tex",
              cwd=workdir)
    assert out.returncode == 0, out.stderr
    tex = (workdir / "seed.tex").read_text()
    assert "\\includegraphics[width=\\linewidth]{mem.png}" in tex
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "seed.tex"], cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (workdir / "seed.pdf").stat().st_size > 10_000
