"""The seed's 784-512-256-10 MLP, with every layer width symbolic (the textbook form).

Run from the repository root: ``python -m examples.mlp``.
"""

from __future__ import annotations

import torch

import symcx
from symcx.zoo import MLP


def main() -> None:
    model = MLP()
    numeric = symcx.analyze(model, model.example_input())
    print("forward FLOPs per step:", numeric.forward_flops, " backward:", numeric.backward_flops)
    widths = symcx.analyze(model, torch.randn(2, 784), widths="letters")
    print("with symbolic widths: forward", widths.forward_flops, " backward", widths.backward_flops)
    print("parameters:", widths.params)


if __name__ == "__main__":
    main()
