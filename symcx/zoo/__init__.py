"""Bundled models: the seed's MNIST CNN and an MLP, importable wherever symcx is installed.

``examples/`` holds runnable scripts around these; the CLI finds them by name (``mnist-cnn``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MnistCNN", "MLP", "BUNDLED"]


class MnistCNN(nn.Module):
    """The seed homework's network (PyTorch's MNIST example): two 3×3 convs, max-pool, two FCs.

    1,199,882 parameters; takes ``(t, 1, 28, 28)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)

    @staticmethod
    def example_input() -> torch.Tensor:
        """One MNIST-shaped image batch."""
        return torch.randn(2, 1, 28, 28)


class MLP(nn.Module):
    """A ReLU multilayer perceptron, by default the seed's 784-512-256-10."""

    def __init__(self, widths: Sequence[int] = (784, 512, 256, 10)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if k < len(widths) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.in_features = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def example_input(self) -> torch.Tensor:
        """A batch of flat inputs."""
        return torch.randn(2, self.in_features)


def _zoo_model(name: str) -> nn.Module:
    """Build a model of :mod:`symcx.zoo.models` (imported on first use: it is larger)."""
    from . import models as zoo_models

    return getattr(zoo_models, name)()


#: Bundled model names for the command line.
BUNDLED: dict[str, Callable[[], nn.Module]] = {
    "mnist-cnn": MnistCNN,
    "mlp": MLP,
    "resnet18": lambda: _zoo_model("ResNet18"),
    "resnet50": lambda: _zoo_model("ResNet50"),
    "transformer": lambda: _zoo_model("GPT"),
}
