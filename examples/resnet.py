"""ResNet-18 and ResNet-50 (written in ``symcx.zoo.models``): FLOPs per image, with the image side symbolic.

Run from the repository root: ``python -m examples.resnet``. The 224×224 figures are the
familiar 1.82 and 4.09 GMACs (×2 = FLOPs) per image.
"""

from __future__ import annotations

import torch

import symcx
from symcx.zoo.models import ResNet18, ResNet50


def main() -> None:
    for name, build in (("ResNet-18", ResNet18), ("ResNet-50", ResNet50)):
        model = build()
        a = symcx.analyze(model, model.example_input(224))
        print(f"{name}: {a.params} parameters")
        print(f"  forward  {a.forward_flops} FLOPs  (+ {a.forward_other_flops} other: BN, ReLU, pooling, adds)")
        print(f"  backward {a.backward_flops} FLOPs")
        rows = sorted(a.layers, key=lambda r: -r.forward_flops.subs(symcx.t, 1))[:3]
        print("  heaviest layers:", ", ".join(f"{r.name} {r.forward_flops}" for r in rows))
    square = symcx.analyze(ResNet18(), torch.randn(2, 3, 64, 64), dims={"H": 2, "W": 3})
    print("ResNet-18 with the image size symbolic, forward:", square.forward_flops)
    if square.assumptions:
        print("  valid for", square.assumptions)


if __name__ == "__main__":
    main()
