"""Models the speed benchmarks share that neither symcx's zoo nor the installed packages provide."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DenseNet", "densenet121", "gpt2_hf", "resnet18"]


class _DenseLayer(nn.Module):
    """BN-ReLU-conv1×1 (4k channels) then BN-ReLU-conv3×3 (k channels), concatenated to the input."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """torchvision's DenseNet layout (growth 32, transitions halving channels and size)."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, classes: int = 1000) -> None:
        super().__init__()
        c = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.MaxPool2d(3, 2, 1)]
        for k, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(c, growth))
                c += growth
            if k < len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def densenet121() -> DenseNet:
    """DenseNet-121: dense blocks of 6, 12, 24 and 16 layers."""
    return DenseNet((6, 12, 24, 16))


def resnet18() -> nn.Module:
    """symcx's bundled ResNet-18 (torchvision's layout)."""
    from symcx.zoo.models import ResNet18

    return ResNet18()


def gpt2_hf(layers: int = 12) -> nn.Module:
    """Hugging Face's GPT-2 small from its default config (``use_cache=False``)."""
    import transformers

    return transformers.GPT2LMHeadModel(transformers.GPT2Config(use_cache=False, n_layer=layers))
