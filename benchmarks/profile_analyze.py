"""Where ``symcx.analyze``'s time goes, by phase and by package (cProfile), for the issue's models.

    python benchmarks/profile_analyze.py [--models gpt2,resnet18,densenet121,mlp8,mlp64] [--dump DIR]

Per model: the aten calls the recorder saw, the wall seconds of ``analyze`` (unprofiled, after
a warm-up), then under cProfile the share of the symbolic trace, of the concrete re-trace for the
guards, of the graph records and the cost rules, and the profile's own time by package
(exclusive: every second counted once). cProfile slows Python-heavy code ~2×; the shares hold.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models as bench_models  # noqa: E402

import symcx  # noqa: E402
from symcx.zoo import MLP  # noqa: E402

#: (label, function name, file suffix): cumulative seconds of these functions.
PHASES = (
    ("all traces (symbolic + re-trace)", "_trace_once", "capture/trace.py"),
    ("guard re-trace", "drop_guards", "capture/bounds.py"),
    ("graph records (build_step)", "build_step", "symcx/step.py"),
    ("cost rules", "annotate_costs", "rules/apply.py"),
    ("fake cache hits: outputs rebuilt", "_output_from_cache_entry", "fake_tensor.py"),
    ("fake cache misses: kernels", "_dispatch_impl", "fake_tensor.py"),
    ("fake cache key", "_cache_key", "fake_tensor.py"),
    ("SymInt arithmetic (SymNode)", "binary_magic_impl", "sym_node.py"),
    ("recorder snapshot", "_snapshot", "capture/recorder.py"),
    ("recorder source line", "_user_frame", "capture/recorder.py"),
)
#: path fragment → package bucket for exclusive time (first match wins).
BUCKETS = (
    ("torch/_subclasses", "torch fake tensors"),
    ("torch/fx/experimental", "torch symbolic shapes"),
    ("sympy", "sympy"),
    ("torch/_refs", "torch decompositions/refs"), ("torch/_prims", "torch decompositions/refs"),
    ("torch/_decomp", "torch decompositions/refs"),
    ("torch/fx", "torch fx graph"),
    ("symcx/capture", "symcx capture (recorder)"),
    ("symcx", "symcx graph, rules, memory"),
    ("transformers", "model code"), ("benchmarks", "model code"), ("symcx/zoo", "model code"),
    ("torch", "torch other (nn, autograd, dispatch)"),
)


def model_zoo() -> dict[str, tuple[torch.nn.Module, object]]:
    """The issue's models and their inputs (GPT-2 at L=128, images at 224²)."""
    return {
        "gpt2": (bench_models.gpt2_hf(), {"input_ids": torch.randint(0, 50257, (2, 128))}),
        "resnet18": (bench_models.resnet18(), torch.randn(2, 3, 224, 224)),
        "densenet121": (bench_models.densenet121(), torch.randn(2, 3, 224, 224)),
        "mlp8": (MLP((256,) * 9), torch.randn(2, 256)),
        "mlp64": (MLP((256,) * 65), torch.randn(2, 256)),
    }


def cumulative(stats: pstats.Stats, name: str, suffix: str) -> float:
    """Cumulative seconds of the function ``name`` in a file ending with ``suffix``."""
    return sum(v[3] for (path, _, fn), v in stats.stats.items() if fn == name and path.endswith(suffix))


def by_package(stats: pstats.Stats) -> dict[str, float]:
    """Exclusive seconds per package bucket."""
    out: dict[str, float] = defaultdict(float)
    for (path, _, _), v in stats.stats.items():
        bucket = next((b for frag, b in BUCKETS if frag in path), "python builtins / C")
        out[bucket] += v[2]
    return dict(out)


def profile(name: str, model: torch.nn.Module, example: object, dump: str | None) -> None:
    model.train()
    start = time.perf_counter()
    a = symcx.analyze(model, example)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    a.memory(), a.layers
    mem_wall = time.perf_counter() - start
    calls = sum(1 for v in a.step.nodes if v.kind == "call_function")
    prof = cProfile.Profile()
    prof.enable()
    symcx.analyze(model, example)
    prof.disable()
    stats = pstats.Stats(prof)
    total = cumulative(stats, "analyze", "symcx/routes.py")
    print(f"\n## {name}: {calls} recorded calls, analyze {wall:.2f} s ({1000 * wall / calls:.2f} ms per call), "
          f"memory()+layers {mem_wall:.2f} s; profiled {total:.2f} s")
    secs = {label: cumulative(stats, fn, suffix) for label, fn, suffix in PHASES}
    secs["symbolic trace alone"] = secs["all traces (symbolic + re-trace)"] - secs["guard re-trace"]
    for label, sec in secs.items():
        print(f"  {label:<36} {sec:7.2f} s  {100 * sec / total:5.1f} %")
    print("  exclusive time by package:")
    for bucket, sec in sorted(by_package(stats).items(), key=lambda kv: -kv[1]):
        print(f"    {bucket:<36} {sec:7.2f} s  {100 * sec / total:5.1f} %")
    if dump:
        stats.dump_stats(os.path.join(dump, f"{name}.prof"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,resnet18,densenet121,mlp8,mlp64")
    parser.add_argument("--dump", default=None, help="folder for the .prof files")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    symcx.analyze(MLP((16, 16, 4)), torch.randn(2, 16))  # warm-up
    zoo = model_zoo()
    for name in args.models.split(","):
        profile(name, *zoo[name], args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
