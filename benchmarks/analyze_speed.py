"""Wall time of ``symcx.analyze`` on big graphs, beside FlopCounterMode (and fvcore) in the same run.

Models: the seed homework's MNIST CNN (input 2×1×28×28) and a 32-layer MLP; ResNet-50 (input 2×3×224×224); GPT-2 small, 12 layers (Hugging Face's
``GPT2LMHeadModel`` from its default config when ``transformers`` is installed, and
``symcx.zoo.models.gpt2_small``; input 2×128 token ids); ReLU MLPs of width 256 at depths 8,
48 and 64 (input 2×256). symcx analyzes one training step (forward, loss, backward) with the
batch symbolic (GPT-2 also with the sequence length symbolic); FlopCounterMode counts a real
forward+backward on the CPU at the same input, and symcx's formula at that size must equal its
count; fvcore (forward only, ``torch.jit.trace``) is timed when importable.

Floors (exit status 1 when one fails): the seed net analyzes in under 1 s; GPT-2 analysis (batch symbolic, the first GPT-2 listed)
under 5 s and at most 10× FlopCounterMode's time; MLP depth 8 → 64 (×8) at most ×10 in time.

Each time is the best of three calls (symcx's median is shown too), after one small warm-up
analysis; the process's CPU seconds are shown beside the wall seconds. FlopCounterMode is timed
the same way.

    python benchmarks/analyze_speed.py [--threads N] [--skip seed,resnet50,gpt2,mlp]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

import symcx
from symcx.zoo import MLP, MnistCNN
from symcx.zoo.models import ResNet50, gpt2_small

SEED_FLOOR_S = 1.0
GPT2_FLOOR_S = 5.0
GPT2_FCM_RATIO = 10.0
DEPTH_RATIO = 10.0
GPT2_LENGTH = 128
REPEAT = 3  # every time is the best of three runs (the median is shown too): shared machines are noisy

Example = torch.Tensor | dict[str, torch.Tensor]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def call(model: torch.nn.Module, example: Example) -> Any:
    return model(**example) if isinstance(example, dict) else model(example)


def flop_counter_step(model: torch.nn.Module, example: Example) -> int:
    """FlopCounterMode's count of a real forward + backward (loss: sum of the logits)."""
    with FlopCounterMode(display=False) as counter:
        out = call(model, example)
        logits = out if isinstance(out, torch.Tensor) else out.logits
        logits.sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def fvcore_seconds(model: torch.nn.Module, example: Example) -> float | None:
    """Wall seconds of fvcore's forward count, or None when fvcore is absent or rejects the model."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        return None
    inputs = tuple(example.values()) if isinstance(example, dict) else (example,)

    def count() -> int:
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())

    try:
        return timed(count)[1]
    except Exception:  # its torch.jit.trace rejects the model: not measured
        return None


def gpt2_models(ids: torch.Tensor) -> list[tuple[str, torch.nn.Module, Example]]:
    """Hugging Face's GPT-2 small (default config) when installed, then symcx's GPT at its sizes."""
    models: list[tuple[str, torch.nn.Module, Example]] = []
    try:
        import transformers
    except ImportError:
        pass
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False))
        models.append((f"GPT-2 (transformers {transformers.__version__})", model, {"input_ids": ids}))
    models.append(("GPT-2 (symcx.zoo.models.gpt2_small)", gpt2_small(), ids))
    return models


def measure(
    name: str,
    model: torch.nn.Module,
    example: Example,
    dims: dict[str, int] | None = None,
    fvcore: bool = True,
    repeat: int = 1,
) -> dict[str, Any]:
    """Time symcx (best of ``repeat``), FlopCounterMode and fvcore on ``model``; check symcx's count."""
    model.train()
    runs = [timed(lambda: symcx.analyze(model, example, dims=dims)) for _ in range(repeat)]
    a, wall, cpu = runs[0][0], min(r[1] for r in runs), min(r[2] for r in runs)
    median = statistics.median(r[1] for r in runs)
    fcm_runs = [timed(lambda: flop_counter_step(model, example)) for _ in range(repeat)]
    flops, fcm_wall, fcm_cpu = fcm_runs[0][0], min(r[1] for r in fcm_runs), min(r[2] for r in fcm_runs)
    first = next(iter(example.values())) if isinstance(example, dict) else example
    values = {"t": first.shape[0], **{k: first.shape[d] for k, d in (dims or {}).items()}}
    return dict(
        name=name, nodes=len(a.step.nodes), wall=wall, median=median, cpu=cpu, fcm_wall=fcm_wall, fcm_cpu=fcm_cpu,
        fvcore=fvcore_seconds(model, example) if fvcore else None,
        exact=a.subs(**values).flop_counter_flops("step") == flops, unsupported=sum(a.unsupported.values()),
    )


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="symcx.analyze vs FlopCounterMode (real forward+backward) and fvcore (forward)")
    columns = ("model", "nodes", "symcx s (cpu)", "symcx median s", "FCM s (cpu)", "fvcore s", "symcx/FCM", "exact",
               "unsupported")
    for column in columns:
        out.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        out.add_row(
            r["name"],
            str(r["nodes"]),
            f"{r['wall']:.2f} ({r['cpu']:.2f})",
            f"{r['median']:.2f}",
            f"{r['fcm_wall']:.2f} ({r['fcm_cpu']:.2f})",
            "n/a" if r["fvcore"] is None else f"{r['fvcore']:.2f}",
            f"{r['wall'] / r['fcm_wall']:.1f}×",
            "yes" if r["exact"] else "NO",
            str(r["unsupported"]),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 keeps torch's default")
    parser.add_argument("--skip", default="", help="comma-separated: seed, resnet50, gpt2, mlp")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console(width=160)
    console.print(
        f"torch {torch.__version__}, symcx {symcx.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; load average {os.getloadavg()[0]:.2f}"
    )
    symcx.analyze(MLP((16, 16, 4)), torch.randn(2, 16))  # warm-up: first-call costs of torch's tracer
    rows: list[dict[str, Any]] = []
    verdicts: list[tuple[str, bool]] = []

    if "seed" not in skip:
        seed = measure("seed MNIST CNN, t", MnistCNN(), torch.randn(2, 1, 28, 28), repeat=REPEAT)
        rows += [seed, measure("MLP depth 32, t", MLP((256,) * 33), torch.randn(2, 256), repeat=REPEAT)]
        verdicts.append((f"seed net analysis {seed['wall']:.2f} s < {SEED_FLOOR_S:.0f} s", seed["wall"] < SEED_FLOOR_S))

    if "resnet50" not in skip:
        rows.append(measure("ResNet-50, t", ResNet50(), torch.randn(2, 3, 224, 224), repeat=REPEAT))

    if "gpt2" not in skip:
        ids = torch.randint(0, 50257, (2, GPT2_LENGTH))
        for k, (name, model, example) in enumerate(gpt2_models(ids)):
            row = measure(f"{name}, t", model, example, repeat=REPEAT)
            rows += [row, measure(f"{name}, t and L", model, example, {"L": 1}, fvcore=False, repeat=REPEAT)]
            if k == 0:
                verdicts += [
                    (f"{name} analysis {row['wall']:.2f} s (median {row['median']:.2f} s) < {GPT2_FLOOR_S:.0f} s",
                     row["wall"] < GPT2_FLOOR_S),
                    (f"{name} analysis ≤ {GPT2_FCM_RATIO:.0f}× FlopCounterMode ({row['wall'] / row['fcm_wall']:.1f}×)",
                     row["wall"] <= GPT2_FCM_RATIO * row["fcm_wall"]),
                ]

    if "mlp" not in skip:
        by_depth = {}
        for depth in (8, 48, 64):
            model = MLP((256,) * (depth + 1))
            by_depth[depth] = measure(f"MLP depth {depth}, t", model, torch.randn(2, 256), repeat=REPEAT)
            rows.append(by_depth[depth])
        growth = by_depth[64]["wall"] / by_depth[8]["wall"]
        text = f"MLP depth 8 → 64 (×8) takes ×{growth:.1f} the time, ≤ ×{DEPTH_RATIO:.0f}"
        verdicts.append((text, growth <= DEPTH_RATIO))

    console.print(table(rows))
    verdicts += [(f"{r['name']}: symcx equals FlopCounterMode, no unsupported op", r["exact"] and not r["unsupported"])
                 for r in rows]
    for text, good in verdicts:
        console.print(f"{'ok  ' if good else 'FAIL'} {text}")
    return 0 if all(good for _, good in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
