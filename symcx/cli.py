"""The ``symcx`` command line: ``analyze`` a model's cost, ``validate`` it against measurements.

This is the only module that prints. Exit codes: 0 done; 1 ``validate`` measured a FLOP count
that differs from its formula; 2 bad arguments or input (unknown model, malformed ``--input``
or ``--model-args``, missing file, a class that is not an ``nn.Module``, an unknown
``--optimizer``, ``--fragment`` without ``--format latex``, ``--exact`` or ``--depth`` without
``--format table``/``markdown``, an unwritable ``--output``, ``--plot`` or ``--plot-memory``,
a plot extension other than png/pdf/svg/jpg/jpeg, ``validate`` of a model on the meta device,
``--device cuda`` without CUDA), with one line on stderr; 3 ``validate`` ran no batch size at
all (every size raised, ran out of memory or was skipped): its table still prints, one line
on stderr says why each size failed, and neither ``--output`` nor ``--plot`` is written; 130
interrupted (a ``validate`` sweep first writes the sizes that finished, marked ``partial``).

MODEL is imported, which runs its code: give only files you trust. symcx never unpickles
weights.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .errors import ShapeError, SymcxError, TraceError
from .files import write_text_atomically
from .capture import PRECISIONS, optimizer_factory
from .checkpointing import checkpoint_blocks
from .cli_specs import example_input, load_model, parse_input, parse_model_args, parse_symbolic
from .symbols import N, g, n, symbol
from .parallel import MP_POLICIES, parallel_report
from .memory import OPTIMIZER_COPIES
from .zoo import BUNDLED

__all__ = ["main", "build_parser", "write_atomic"]

#: The ``--optimizer`` choices (given in any case, normalised to lower case).
OPTIMIZERS = tuple(OPTIMIZER_COPIES)

_MODEL_HELP = (
    "the model: path/to/file.py:ClassOrFactory, package.module:factory, "
    f"or a bundled name ({', '.join(BUNDLED)}); called with --model-args (none by default). "
    "The file is imported, which runs its code: give only files you trust"
)
_MODEL_ARGS_HELP = ("keyword arguments for the class or factory, key=value joined by ',' "
                    "(name=resnet50,pretrained=false): ints, floats, true/false/none, else strings")
_INPUT_HELP = (
    "the shape of one sample, excluding the batch dim, sizes joined by 'x' (1x28x28, not 1x1x28x28): "
    "symcx adds the batch, which the trace makes the symbol t (example size 8); several inputs "
    "joined by ',', integer inputs with a dtype suffix (128:long). Default: the model's example_input()"
)
#: Extensions ``--plot`` writes (matplotlib picks the format by extension).
PLOT_EXTENSIONS = ("png", "pdf", "svg", "jpg", "jpeg")
#: Columns of a table written to a pipe or file (wide enough for every column of the layer table).
_FILE_WIDTH = 250
#: ``validate``'s exit code when no batch size ran.
EXIT_NOTHING_RAN = 3
_ANALYZE_EPILOG = """examples:
  symcx analyze mnist-cnn
  symcx analyze mnist-cnn --input 1x28x28 --format latex --output seed.tex
  symcx analyze mnist-cnn --batch 64 --epochs 1 --samples 60000 --format json
  symcx analyze mlp --widths letters
  symcx analyze my_net.py:Net --input 3x32x32 --symbolic H,W
  symcx analyze resnet18 --depth 1 --exact
  symcx analyze mnist-cnn --plot-memory memory.png
  symcx analyze timm:create_model --model-args model_name=resnet50,pretrained=false --input 3x224x224

FLOPs follow FlopCounterMode (1 multiply-add = 2 FLOPs; matmul, convolution, attention);
"other FLOPs" count what it ignores (elementwise ops, norms, pooling, softmax)."""
_VALIDATE_EPILOG = """examples:
  symcx validate mnist-cnn
  symcx validate mnist-cnn --device cuda --batch-sizes 1,64,512 --backward --plot fit.png"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` that reports a SymcxError as a bad argument."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except SymcxError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    convert.__name__ = parse.__name__
    return convert


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise SymcxError(f"expected a positive integer, not {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise SymcxError(f"expected a non-negative integer, not {text!r}")
    return int(text)


def _batch(text: str) -> int | None:
    """``t`` (keep the batch symbolic) or a positive integer."""
    return None if text == "t" else _positive_int(text)


def _amount(text: str) -> Any:
    """A positive integer, or a symbol name (``n``, ``N``, ``E``…)."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text.isidentifier() and text != "t":
        return symbol(text)
    raise SymcxError(f"expected a positive integer or a symbol name, not {text!r}")


def _batch_sizes(text: str) -> list[int]:
    try:
        return [_positive_int(x.strip()) for x in text.split(",")]
    except SymcxError as err:
        raise SymcxError(f"malformed --batch-sizes {text!r}: {err}; e.g. 1,16,64") from err


def _optimizer(text: str) -> Any:
    """A modelled shorthand (``adam``, any case) as its name; anything else (``AdamW:lr=1e-3``) as
    the optimizer to trace, checked now: an unknown name or argument is a bad argument."""
    name, _, rest = text.partition(":")
    kwargs = parse_model_args(rest) if rest else {}
    if name.lower() in OPTIMIZERS and not kwargs:
        return name.lower()
    return optimizer_factory(name, **kwargs)


def _gpus(text: str) -> Any:
    """``--gpus``: a positive integer, or ``g`` for formulas in the number of GPUs."""
    return g if text == "g" else _positive_int(text)


def _input_spec(text: str) -> str:
    parse_input(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``symcx`` argument parser (subcommands ``analyze`` and ``validate``)."""
    parser = _Parser(
        prog="symcx",
        description="Symbolic time and memory complexity of PyTorch models: exact FLOP and memory "
        "formulas in the batch size t (and any dims you name), LaTeX/Markdown/JSON reports, and "
        "validation against measured runs.",
        epilog="Run 'symcx COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"symcx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_analyze(sub)
    _add_validate(sub)
    _add_calibrate(sub)
    return parser


def _add_analyze(sub: Any) -> None:
    """The ``analyze`` subcommand and its options."""
    a = sub.add_parser("analyze", help="per-layer FLOPs, params, memory and big-O of one training step",
                       description="Trace one training step of MODEL with a symbolic batch size t and report\n"
                       "per-layer forward/backward FLOPs (with derivations), parameters, saved bytes,\n"
                       "totals, training totals over n epochs of N samples, big-O and the memory of a step.",
                       epilog=_ANALYZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    a.add_argument("--model-args", type=_arg(parse_model_args), default={}, metavar="K=V,...", help=_MODEL_ARGS_HELP)
    a.add_argument("--input", type=_arg(_input_spec), metavar="SHAPE", help=_INPUT_HELP)
    a.add_argument("--format", choices=("table", "latex", "markdown", "json"), default="table",
                   help="output format (default: table, a rich table on the terminal)")
    a.add_argument("--output", metavar="FILE", help="write to FILE (whole or not at all) instead of stdout")
    a.add_argument("--batch", type=_arg(_batch), default=None, metavar="t|SIZE",
                   help="keep the batch symbolic (t, default) or also evaluate every total at this size")
    a.add_argument("--symbolic", metavar="NAMES",
                   help="input dims to make symbolic: H,W (last two dims), L (dim 1), or NAME=DIM / NAME=INPUT:DIM")
    a.add_argument("--widths", choices=("symbolic", "letters"),
                   help="make every layer width a symbol: d_0, d_1, ... (symbolic) or i, j, k, ... (letters)")
    a.add_argument("--epochs", type=_arg(_amount), default=n, metavar="n",
                   help="epochs for the training totals: a number or a symbol name (default: n)")
    a.add_argument("--samples", type=_arg(_amount), default=N, metavar="N",
                   help="training-set size for the training totals: a number or a symbol name (default: N)")
    a.add_argument("--optimizer", type=_arg(_optimizer), default="sgd", metavar="NAME[:K=V,...]",
                   help=f"the memory table's optimizer: {', '.join(OPTIMIZERS)} (modelled; any case; default: sgd), "
                   "or any torch.optim class with arguments, traced with the iteration "
                   "(RMSprop, AdamW:lr=1e-3,fused=true)")
    a.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                   help="trace the step at this precision: the forward under torch.autocast (bf16-autocast; "
                   "fp16-autocast with GradScaler) or the model cast (bf16, fp16, fp32, fp64). Default: as built")
    a.add_argument("--checkpoint", action="store_true",
                   help="activation checkpointing: Hugging Face's gradient_checkpointing_enable, or "
                   "torch.utils.checkpoint around each block of the model's ModuleList/Sequential containers")
    a.add_argument("--accumulate", type=_arg(_positive_int), default=1, metavar="K",
                   help="gradient accumulation: K micro-batches of t per optimizer step (memory of the whole "
                   "iteration; FLOPs per micro-batch)")
    a.add_argument("--no-reuse", action="store_true",
                   help="trace every block, not each distinct block once and copies of it for its repeats "
                   "(the figures are the same; reuse is checked and falls back by itself)")
    a.add_argument("--inference", action="store_true",
                   help="serving cost instead of a training step: prefill (t, L), one decode step after P cached "
                   "tokens, KV-cache bytes, G generated tokens (a causal model with a KV cache; table, markdown, json)")
    a.add_argument("--numbers", choices=("separators", "scientific", "plain"), default="separators",
                   help="how integers print: 1,199,882 (separators, default), 1.20e6 (scientific), or plain")
    a.add_argument("--exact", action="store_true",
                   help="with --format table or markdown: exact numbers (21,233,664) instead of 21.2M and 9.08MiB; "
                   "JSON and LaTeX are always exact")
    a.add_argument("--depth", type=_arg(_positive_int), metavar="N",
                   help="with --format table or markdown: fold the module tree below level N (blocks keep their totals)")
    a.add_argument("--plot-memory", metavar="FILE",
                   help=f"draw the memory timeline of one step at --batch (default t = 8) to FILE "
                   f"({', '.join(PLOT_EXTENSIONS)}); a Markdown report shows it")
    a.add_argument("--fragment", action="store_true",
                   help="with --format latex: a fragment to \\input, not a whole document")
    a.add_argument("--strict", action="store_true", help="fail on an op that has no cost rule instead of listing it")
    a.add_argument("--gpus", type=_arg(_gpus), default=None, metavar="G|g",
                   help="per-GPU memory and communication data-parallel on G GPUs (g: a formula in g), t per GPU")
    a.add_argument("--strategy", choices=("ddp", "zero1", "zero2", "fsdp"), default="ddp",
                   help="with --gpus: ddp, zero1, zero2 or fsdp (FSDP2 fully_shard; default: ddp)")
    a.add_argument("--mp-policy", choices=tuple(MP_POLICIES), default=None,
                   help="with --gpus and --strategy fsdp: FSDP2's MixedPrecisionPolicy on the float32 model (bf16: "
                        "param_dtype bf16, reduce_dtype fp32; bf16-reduce-bf16; fp16; fp16-reduce-fp16); the step "
                        "is traced at that precision (--precision bf16 or fp16 implied)")
    a.add_argument("--check-trace", action="store_true",
                   help="with --gpus and --strategy fsdp: check the formula against fully_shard itself, traced on "
                        "torch's fake process group at g = 2, 3, 4 and 8 (per-GPU batch --batch, default 2)")



def _add_validate(sub: Any) -> None:
    """The ``validate`` subcommand and its options."""
    v = sub.add_parser("validate", help="measure FLOPs, time and memory per batch size and compare with the formulas",
                       description="Run MODEL at each batch size on a device; record FlopCounterMode's count,\n"
                       "the median time after warm-up and the peak memory; compare with symcx's formulas\n"
                       "and fit time against predicted FLOPs.",
                       epilog=_VALIDATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    v.add_argument("--model-args", type=_arg(parse_model_args), default={}, metavar="K=V,...", help=_MODEL_ARGS_HELP)
    v.add_argument("--input", type=_arg(_input_spec), metavar="SHAPE", help=_INPUT_HELP)
    v.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    v.add_argument("--batch-sizes", type=_arg(_batch_sizes), default=[1, 16, 64, 256], metavar="LIST",
                   help="comma-separated batch sizes (default: 1,16,64,256)")
    v.add_argument("--backward", action="store_true", help="time and measure full training steps, not forward only")
    v.add_argument("--gpus", type=_arg(_positive_int), default=None, metavar="G",
                   help="with --backward: run G processes (gloo on this CPU; --device cuda: NCCL, rank r on "
                        "cuda:r) and compare each rank's peak")
    v.add_argument("--strategy", choices=("ddp", "zero1", "zero2", "fsdp"), default="ddp",
                   help="with --gpus: DistributedDataParallel, ZeRO-1 (DDP with ZeroRedundancyOptimizer) or FSDP2 "
                        "fully_shard; zero2 has no torch implementation and is refused (default: ddp)")
    v.add_argument("--mp-policy", choices=tuple(MP_POLICIES), default=None,
                   help="with --gpus and --strategy fsdp: fully_shard(..., mp_policy=...) on every unit (bf16: "
                        "param_dtype bf16, reduce_dtype fp32; bf16-reduce-bf16; fp16; fp16-reduce-fp16)")
    v.add_argument("--repeats", type=_arg(_positive_int), default=20, help="timed runs per batch size (default: 20)")
    v.add_argument("--warmup", type=_arg(_count), default=3, help="untimed runs first (default: 3)")
    v.add_argument("--force", action="store_true",
                   help="run every size, even one whose predicted peak exceeds the device's free memory "
                   "(by default such a size is skipped, with the reason)")
    v.add_argument("--run", choices=("graph", "model"), default="graph",
                   help="graph (default): also execute the traced joint graph, check it equals eager, time it per "
                   "node and predict the step time; model: the eager model only")
    v.add_argument("--calibration", metavar="FILE",
                   help="predict step time from a calibration written by 'symcx calibrate' (default: a fit on the "
                   "sweep's own node times, marked in-sample)")
    v.add_argument("--device-profile", metavar="NAME",
                   help="predict step time from a GPU's datasheet roofline: a100-40gb, a100-80gb, h100-sxm, "
                   "h100-pcie, h200, l4")
    v.add_argument("--format", choices=("table", "json", "latex"), default="table",
                   help="table (default: the terminal table; --output writes JSON), json, or latex: the "
                   "predicted-vs-measured table, the fits and the --plot as a figure, for a write-up")
    v.add_argument("--output", metavar="FILE",
                   help="write the results to FILE, as JSON (or LaTeX with --format latex; after Ctrl-C: the "
                   "sizes that finished, \"partial\": true)")
    v.add_argument("--plot", metavar="FILE",
                   help=f"plot measured against predicted to FILE ({', '.join(PLOT_EXTENSIONS)})")


def _add_calibrate(sub: Any) -> None:
    """The ``calibrate`` subcommand: fit the step-time model on a device, save it as JSON."""
    c = sub.add_parser("calibrate", help="fit the step-time model on a device from a traced graph's node times",
                       description="Trace one training step of MODEL (default: symcx's calibration net), run the\n"
                       "traced graph at each batch size, time every node, and fit per op class a launch\n"
                       "floor, seconds per FLOP and per byte; 'validate --calibration FILE' predicts from it.",
                       epilog="examples:\n  symcx calibrate --device cpu --output cal.json\n"
                       "  symcx validate resnet18 --backward --calibration cal.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--model", metavar="MODEL", help=_MODEL_HELP + " (default: symcx's calibration net)")
    c.add_argument("--model-args", type=_arg(parse_model_args), default={}, metavar="K=V,...", help=_MODEL_ARGS_HELP)
    c.add_argument("--input", type=_arg(_input_spec), metavar="SHAPE", help=_INPUT_HELP)
    c.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    c.add_argument("--batch-sizes", type=_arg(_batch_sizes), default=[1, 2, 4, 8, 16, 32, 64], metavar="LIST",
                   help="comma-separated batch sizes (default: 1,2,4,8,16,32,64)")
    c.add_argument("--repeats", type=_arg(_positive_int), default=5, help="timed runs per batch size (default: 5)")
    c.add_argument("--warmup", type=_arg(_count), default=1, help="untimed runs first (default: 1)")
    c.add_argument("--output", metavar="FILE", help="write the calibration JSON to FILE instead of stdout")


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (:func:`symcx.files.write_text_atomically`)."""
    write_text_atomically(path, text)


def _check_writable(path: str | None) -> None:
    """Fail before any work when ``path`` cannot be written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SymcxError(f"cannot write {path}: no directory {folder}")
    if os.path.isdir(path):
        raise SymcxError(f"cannot write {path}: it is a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SymcxError(f"cannot write {path}: directory {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise SymcxError(f"cannot write {path}: the file is read-only")


def _check_plot(path: str | None) -> None:
    """Fail before any work when a plot path has an extension matplotlib is not asked to write, or cannot be written."""
    if path is None:
        return
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in PLOT_EXTENSIONS:
        raise SymcxError(f"cannot plot to {path}: the extension must be one of {', '.join(PLOT_EXTENSIONS)}"
                         f", not {('.' + ext) if ext else 'none'}")
    _check_writable(path)


def _sample_ranks(make: Callable[[], Any]) -> list[int] | None:
    """Ranks of one sample of each input ``make()`` builds (the batch dim excluded), or None."""
    try:
        example = make()
    except Exception:
        return None
    tensors = example if isinstance(example, (tuple, list)) else [example]
    if not all(hasattr(x, "dim") for x in tensors):
        return None
    return [x.dim() - 1 for x in tensors]


@contextlib.contextmanager
def _input_hint(model: Any, spec: str | None) -> Any:
    """Add to an error the likely cause: ``--input`` given with a batch dim the model does not want."""
    try:
        yield
    except (ShapeError, TraceError) as err:
        make = getattr(model, "example_input", None)
        ranks = _sample_ranks(make) if spec is not None and callable(make) else None
        given = [len(shape) for shape, _ in parse_input(spec)] if ranks is not None else []
        if ranks is None or len(given) != len(ranks) or not any(g == r + 1 for g, r in zip(given, ranks)):
            raise
        raise SymcxError(
            f"{err}; note: --input {spec} has one dim more than a sample of {type(model).__name__}'s example_input() "
            f"({', '.join(map(str, ranks))} dims): --input excludes the batch dim, which symcx adds"
        ) from err


def _console(stderr: bool = False) -> Any:
    """A rich console on stdout (or stderr, where stdout carries a document); a pipe gets whole lines
    (every column of the layer table), not 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=_FILE_WIDTH)


def _render_table(renderables: list[Any], to_file: bool) -> str | None:
    from rich.console import Console

    if not to_file:
        console = _console()
        for r in renderables:
            console.print(r)
        return None
    buffer = io.StringIO()
    console = Console(file=buffer, width=_FILE_WIDTH, color_system=None, force_terminal=False)
    for r in renderables:
        console.print(r)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _check_analyze_options(args: argparse.Namespace) -> None:
    """Refuse options that do not apply to ``--format``, and unwritable paths, before any work."""
    if args.fragment and args.format != "latex":
        raise SymcxError(f"--fragment is for --format latex only, not --format {args.format}")
    for flag, given in (("--exact", args.exact), ("--depth", args.depth is not None)):
        if given and args.format not in ("table", "markdown"):
            raise SymcxError(f"{flag} is for --format table or markdown only, not --format {args.format}"
                             + (" (always exact)" if flag == "--exact" else ""))
    _check_writable(args.output)
    _check_plot(args.plot_memory)
    if args.plot_memory is not None and importlib.util.find_spec("matplotlib") is None:
        raise SymcxError("--plot-memory needs matplotlib: pip install 'symcx[plot]' (or pip install matplotlib)")


def _plot_memory(analysis: Any, args: argparse.Namespace) -> str | None:
    """Draw ``--plot-memory``; the path a Markdown report links to (beside ``--output``), or None."""
    if args.plot_memory is None:
        return None
    from .export.timeline import DEFAULT_BATCH, plot_memory_timeline

    batch = args.batch or DEFAULT_BATCH
    peak = plot_memory_timeline(analysis, args.plot_memory, batch=batch, optimizer=args.optimizer,
                                title=f"Memory of one training step of {args.model}, t = {batch} "
                                f"(optimizer: {args.optimizer})")
    print(f"wrote {args.plot_memory} (memory timeline at t = {batch}, peak {peak:,} bytes)", file=sys.stderr)
    base = os.path.dirname(os.path.abspath(args.output)) if args.output else os.getcwd()
    return os.path.relpath(os.path.abspath(args.plot_memory), base)


def _analyze(args: argparse.Namespace) -> int:
    from .routes import analyze
    from .export import build_report, to_json, to_latex, to_markdown
    from .export.table import to_renderables

    _check_analyze_options(args)
    if args.check_trace and (args.gpus is None or args.strategy != "fsdp"):
        raise SymcxError("--check-trace traces FSDP2's fully_shard: give --gpus and --strategy fsdp")
    _check_mp_policy(args)
    model = load_model(args.model, args.model_args)
    x = example_input(model, args.input)
    dims = parse_symbolic(args.symbolic, x) if args.symbolic else None
    widths = {"symbolic": "d", "letters": "letters", None: False}[args.widths]
    if args.inference:
        return _serve(model, x, args)
    traced = None if isinstance(args.optimizer, str) else args.optimizer
    if (args.gpus is not None or args.accumulate > 1) and traced is None:  # the optimizer's step as traced
        traced = optimizer_factory(args.optimizer)
    if args.checkpoint:
        print(f"checkpointing: {checkpoint_blocks(model)}", file=sys.stderr)
    with _input_hint(model, args.input):
        analysis = analyze(model, x, dims=dims, widths=widths, strict=args.strict, optimizer=traced,
                           precision=args.precision, accumulate=args.accumulate, reuse=not args.no_reuse)
    if args.gpus is not None:
        _emit(parallel_report(analysis, args.gpus, args.strategy, args.batch, args.format, args.mp_policy),
              args.output)
        if args.check_trace:
            _check_trace(analysis, args)
        return 0
    timeline = _plot_memory(analysis, args)
    at = {"t": args.batch} if args.batch is not None else None
    common = dict(at=at, epochs=args.epochs, samples=args.samples, optimizer=None if traced else args.optimizer)
    units = "exact" if args.exact else "human"
    if args.format == "table":
        renderables = to_renderables(build_report(analysis, **common), numbers=args.numbers, units=units,
                                     depth=args.depth)
        text = _render_table(renderables, to_file=args.output is not None)
    elif args.format == "latex":
        text = to_latex(analysis, standalone=not args.fragment, numbers=args.numbers,
                        title=f"symcx analysis of {args.model}", timeline=timeline, **common)
    elif args.format == "markdown":
        text = to_markdown(analysis, numbers=args.numbers, title=f"symcx analysis of {args.model}", units=units,
                           depth=args.depth, timeline=timeline, **common)
    else:
        text = to_json(analysis, **common) + "\n"
    _emit(text, args.output)
    return 0


def _emit(text: str | None, output: str | None) -> None:
    """``text`` to ``output`` (whole or not at all), or to stdout (``None``: already printed)."""
    if output is not None:
        write_atomic(output, text or "")
        print(f"wrote {output}", file=sys.stderr)
    elif text is not None:
        sys.stdout.write(text)


def _serve(model: Any, x: Any, args: argparse.Namespace) -> int:
    """``analyze --inference``: the serving figures, as a table, Markdown or JSON."""
    from .export.serving import serving_rows, serving_to_json, serving_to_markdown
    from .serving import inference

    if args.format == "latex":
        raise SymcxError("--inference prints a table, markdown or json, not latex")
    ids = next((v for v in (x if isinstance(x, (tuple, list)) else (x,)) if hasattr(v, "dtype")), x)
    inf = inference(model, ids, strict=args.strict)
    at = {"t": args.batch} if args.batch is not None else None
    if args.format == "json":
        text = serving_to_json(inf, at) + "\n"
    elif args.format == "markdown":
        text = serving_to_markdown(inf, at, title=f"symcx inference of {args.model}")
    else:
        from rich.table import Table

        table = Table(title="Serving cost (t sequences, L prompt tokens, P cached, G new tokens)", title_justify="left")
        for col in ("Quantity", "Formula", *(["at t = " + str(args.batch)] if at else [])):
            table.add_column(col, justify="left" if col == "Quantity" else "right", overflow="fold")
        for _, label, formula, value in serving_rows(inf, at):
            table.add_row(label, str(formula), *([str(value)] if at else []))
        text = _render_table([table], to_file=args.output is not None)
    _emit(text, args.output)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    _check_plot(args.plot)
    _check_writable(args.output)
    model = load_model(args.model, args.model_args)
    if any(p.is_meta for p in (*model.parameters(), *model.buffers())):
        raise SymcxError(f"{args.model} builds its parameters on the meta device, which holds no data to run; "
                         f"validate runs the model for real: build it on cpu or cuda ('symcx analyze' works on meta)")
    x = example_input(model, args.input)
    if args.gpus is not None or args.mp_policy is not None:
        return _validate_ranks(model, x, args)
    from .validation import validate

    with Progress(console=Console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        task: list[Any] = []

        def progress(done: int, total: int, label: str) -> None:
            if not task:
                task.append(bar.add_task(label, total=total))
            bar.update(task[0], completed=done, total=total, description=label)

        with _input_hint(model, args.input):
            result = validate(model, x, device=args.device, batch_sizes=args.batch_sizes, backward=args.backward,
                              repeats=args.repeats, warmup=args.warmup, progress=progress, force=args.force,
                              run=args.run, calibration=args.calibration, device_profile=args.device_profile)
    if args.format == "table" or args.output is not None:
        _console(stderr=args.output is None and args.format != "table").print(result.rich_table())
    if result.partial:
        return _interrupted(result, args)
    if not result.any_ok:  # nothing measured, nothing compared: an error, and no file written
        reasons = "; ".join(f"t={r.batch_size}: {r.status}: {r.error}" for r in result.sizes)
        print(f"symcx validate: error: no batch size ran ({reasons})", file=sys.stderr)
        return EXIT_NOTHING_RAN
    if args.plot is not None:
        _write_plot(result, args.plot)
    text = result.to_json() if args.format != "latex" else _validation_latex(result, args)
    if args.output is not None:
        write_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    elif args.format != "table":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    for line in result.failures:
        print(f"symcx validate: FLOP mismatch: {line}", file=sys.stderr)
    return 0 if result.ok else 1


def _calibrate(args: argparse.Namespace) -> int:
    _check_writable(args.output)
    from .validation import calibrate_device

    model = x = None
    if args.model is not None:
        model = load_model(args.model, args.model_args)
        x = example_input(model, args.input)
    cal = calibrate_device(model, x, device=args.device, batch_sizes=args.batch_sizes, repeats=args.repeats,
                           warmup=args.warmup)
    _emit(cal.to_json() + "\n", args.output)
    print(f"symcx calibrate: {cal.device}: per-node fit R² {cal.r2:.3f}", file=sys.stderr)
    return 0


def _check_mp_policy(args: argparse.Namespace) -> None:
    """``--mp-policy``: FSDP2 only; it implies ``--precision`` at its param_dtype (the compute FSDP2 runs)."""
    if args.mp_policy is None:
        return
    if args.gpus is None or args.strategy != "fsdp":
        raise SymcxError("--mp-policy is FSDP2's MixedPrecisionPolicy: give --gpus and --strategy fsdp")
    want = MP_POLICIES[args.mp_policy].trace
    if args.precision not in (None, want):
        raise SymcxError(f"--mp-policy {args.mp_policy} runs the compute in {want}: --precision {want} (or none), "
                         f"not {args.precision}")
    args.precision = want


def _check_trace(analysis: Any, args: argparse.Namespace) -> None:
    """``analyze --gpus G --strategy fsdp --check-trace``: the formula against ``fully_shard`` traced at
    g = 2, 3, 4, 8, one line per g on stderr (a mismatch raises: exit 2); with ``--mp-policy`` the
    float32 model traced under that policy."""
    rows = analysis.check_fsdp(batch=args.batch or 2, mp_policy=args.mp_policy)
    for row in rows:
        print(f"fully_shard traced at g={row['gpus']}: resident {row['traced_resident_bytes']} B, peak "
              f"{row['traced_peak_bytes']} B above it (at {row['peak_op']}) = the formula", file=sys.stderr)


def _validate_ranks(model: Any, x: Any, args: argparse.Namespace) -> int:
    """``validate --gpus G --strategy S``: one process per rank (gloo on the CPU, NCCL on CUDA), each
    rank's peak against the formula."""
    from .validation.distributed import validate_distributed

    if args.gpus is None:
        raise SymcxError("--mp-policy validates FSDP2 on processes: give --gpus G --strategy fsdp --backward")
    if not args.backward or args.format == "latex":
        raise SymcxError("--gpus validates training steps on processes (gloo on the CPU, NCCL with --device cuda): "
                         "give --backward and --format table or json")
    with _input_hint(model, args.input):
        report = validate_distributed(model, x, gpus=args.gpus, strategy=args.strategy, batch_sizes=args.batch_sizes,
                                      device=args.device, mp_policy=args.mp_policy)
    if args.format == "json":
        import json

        text = json.dumps(report, indent=2) + "\n"
    else:
        text = "".join(f"t={run['batch']} rank {r['rank']}: predicted {r['predicted_peak_bytes']:,} B, measured "
                       f"{r['measured_peak_bytes']:,} B ({r['error']:+.1%}); live tensors "
                       f"{r['live_tensor_peak_bytes']:,} B\n" for run in report["runs"] for r in run["ranks"])
        text += ("measured: the CPU allocator's peak (it also sees kernels' scratch copies, e.g. a matmul's "
                 "of an expanded gradient); live tensors: the bytes of tensors aten ops return (blind to FSDP2's "
                 "storage resizes)\n")
    _emit(text, args.output)
    return 0


def _validation_latex(result: Any, args: argparse.Namespace) -> str:
    """The validation as a standalone LaTeX document, with the plot (beside the output) as a figure."""
    from .validation.latex import validation_to_latex

    plot = None
    if args.plot is not None:
        base = os.path.dirname(os.path.abspath(args.output)) if args.output else os.getcwd()
        plot = os.path.relpath(os.path.abspath(args.plot), base)
    return validation_to_latex(result, standalone=True, plot_path=plot)


def _interrupted(result: Any, args: argparse.Namespace) -> int:
    """After Ctrl-C in a sweep: write the sizes that finished (JSON marked partial), exit 130."""
    done = len(result.sizes)
    if args.output is not None and done:
        write_atomic(args.output, result.to_json())
        print(f"wrote {args.output} (partial: {done} of {len(args.batch_sizes)} sizes)", file=sys.stderr)
    if args.plot is not None and result.any_ok:
        _write_plot(result, args.plot)
    print(f"symcx: interrupted after {done} of {len(args.batch_sizes)} batch sizes", file=sys.stderr)
    return 130


def _write_plot(result: Any, path: str) -> None:
    """``result.plot`` to ``path``: the plot writes itself whole or not at all."""
    result.plot(path)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    >>> main(["analyze", "no-such-model"])
    2
    """
    args = build_parser().parse_args(argv)
    command = {"analyze": _analyze, "validate": _validate, "calibrate": _calibrate}[args.command]
    try:
        return command(args)
    except (SymcxError, OSError) as err:
        message = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"symcx {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("symcx: interrupted", file=sys.stderr)
        return 130
