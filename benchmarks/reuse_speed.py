"""CPU seconds of ``symcx.analyze`` (then ``memory()``) with and without block reuse (issue 18).

Models: residual MLPs of identical blocks (``x + W2 relu(W1 x)``, width 256) at depths 8 and 64;
the zoo's flat ReLU MLP (``symcx.zoo.MLP``, Linear+ReLU layers: no block above one Linear) at
depths 8 and 64; ``symcx.zoo.models.GPT`` with 8 layers and ``gpt2_small`` (12 layers), L symbolic.
Each figure is the best of three calls (process CPU seconds), after a warm-up; the reused step's
FLOPs and peak must equal the full trace's (exit status 1 otherwise). ``trace`` is the symbolic
trace alone, ``check`` the two concrete traces reuse adds to verify it (``trace_training_step``).

    python benchmarks/reuse_speed.py [--skip mlp,flat,gpt]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import symcx
from symcx.capture import DimSpec, trace_training_step
from symcx.zoo import MLP
from symcx.zoo.models import GPT, gpt2_small

REPEAT = 3


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


def blocks(depth: int, d: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(d, d), *[Block(d) for _ in range(depth)])


def best(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(last result, best CPU seconds of ``REPEAT`` calls)."""
    times, out = [], None
    for _ in range(REPEAT):
        start = time.process_time()
        out = fn()
        times.append(time.process_time() - start)
    return out, min(times)


def measure(name: str, model: nn.Module, x: Any, **kw: Any) -> dict[str, Any]:
    """Analyze (and memory) with and without reuse; the symbolic trace alone with reuse."""
    row: dict[str, Any] = {"model": name}
    for reuse in (False, True):
        def run() -> tuple:
            a = symcx.analyze(model, x, reuse=reuse, **kw)
            return a, a.memory()
        (a, m), row[f"analyze {'reuse' if reuse else 'full'}"] = best(run)
        row[f"figures {reuse}"] = (a.forward_flops, a.backward_flops, m.peak, m.peak_node)
        row["notes"] = [n for n in a.step.notes if n.startswith("block reuse")]
    dims = [DimSpec("L", 1, 0, shared=True)] if kw.get("dims") else []
    _, row["trace full"] = best(lambda: trace_training_step(model, x, dims=dims))
    _, row["trace+check reuse"] = best(lambda: trace_training_step(model, x, dims=dims, reuse=True))
    row["same"] = row["figures False"] == row["figures True"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated: mlp, flat, gpt")
    skip = set(parser.parse_args().skip.split(","))
    torch.manual_seed(0)
    symcx.analyze(blocks(2, 16), torch.randn(2, 16), reuse=True)  # warm-up
    rows = []
    if "mlp" not in skip:
        rows += [measure(f"MLP blocks depth {d}", blocks(d), torch.randn(2, 256)) for d in (8, 64)]
    if "flat" not in skip:
        rows += [measure(f"flat MLP depth {d}", MLP((256,) * (d + 1)), torch.randn(2, 256)) for d in (8, 64)]
    if "gpt" not in skip:
        gpt = GPT(n_layer=8)
        rows.append(measure("zoo GPT, 8 layers", gpt, gpt.example_input(), dims={"L": 1}))
        small = gpt2_small()
        rows.append(measure("zoo gpt2_small", small, small.example_input(), dims={"L": 1}))
    keys = ["analyze full", "analyze reuse", "trace full", "trace+check reuse"]
    print(f"{'model':24} " + " ".join(f"{k:>18}" for k in keys) + "  same  replayed")
    for row in rows:
        replayed = sum(int(n.split(" calls replayed")[0].rsplit(" ", 1)[1])
                       for n in row["notes"] if "replayed" in n)
        print(f"{row['model']:24} " + " ".join(f"{row[k]:18.2f}" for k in keys) + f"  {row['same']!s:5} {replayed}")
    for name in ("MLP blocks", "flat MLP"):
        pair = [r for r in rows if r["model"].startswith(name)]
        if len(pair) == 2:
            ratio = pair[1]["analyze reuse"] / pair[0]["analyze reuse"]
            print(f"{name}: depth 8 -> 64, analyze with reuse x{ratio:.1f}"
                  f" (full x{pair[1]['analyze full'] / pair[0]['analyze full']:.1f})")
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
