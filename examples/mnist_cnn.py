"""The seed homework's MNIST CNN: its FLOP formulas, per layer and per training step.

Run from the repository root: ``python -m examples.mnist_cnn``. ``Net`` is the model, so
``from examples.mnist_cnn import Net`` and ``symcx analyze examples/mnist_cnn.py:Net`` work.
"""

from __future__ import annotations

import torch

import symcx
from symcx.zoo import MnistCNN

Net = MnistCNN


def main() -> None:
    a = symcx.analyze(Net(), torch.randn(2, 1, 28, 28))
    for row in a.layers:
        print(f"{row.name:10} forward {row.forward_flops}  backward {row.backward_flops}  params {row.params}")
    print("forward FLOPs per step: ", a.forward_flops)
    print("backward FLOPs per step:", a.backward_flops)
    print("training, n epochs over N samples:", a.training().total_flops, "=", a.big_o())


if __name__ == "__main__":
    main()
