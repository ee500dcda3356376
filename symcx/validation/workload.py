"""The default calibration workload: one small net with every op class the step-time model fits.

:class:`CalibrationNet` is none of the models symcx's step-time figures are checked on (the seed
net, ResNet-18, the GPT): an image branch (5×5 and 3×3 convolutions from 3 to 384 channels, down
to 2×2 pixels, where convolution kernels run least efficiently; batch norm, a 1×1 residual
projection, max-pool, dropout; a linear layer whose 6 MB of weights overflow a CPU's L2 cache
and a narrow one) and a token branch (embeddings, layer norm, causal scaled-dot-product attention, a GELU MLP, a
vocabulary head), so that one calibration covers convolutions, GEMMs of several shapes,
attention, elementwise/norm work and data movement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CalibrationNet"]


class CalibrationNet(nn.Module):
    """Takes ``(images (t, 3, 24, 24), token ids (t, 12))``; returns (class log-probabilities, token logits)."""

    def __init__(self, vocab: int = 300, width: int = 48, heads: int = 4) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 5, padding=2)
        self.c2, self.b2 = nn.Conv2d(12, 24, 3, bias=False), nn.BatchNorm2d(24)
        self.c3, self.b3 = nn.Conv2d(24, 48, 3, padding=1, bias=False), nn.BatchNorm2d(48)
        self.c4, self.b4 = nn.Conv2d(48, 96, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(96)
        self.c5, self.b5 = nn.Conv2d(96, 192, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(192)
        self.c6 = nn.Conv2d(192, 384, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(24, 48, 1, bias=False)
        self.drop = nn.Dropout(0.2)
        self.fc1, self.fc2 = nn.Linear(384 * 2 * 2, 1024), nn.Linear(1024, 10)
        self.heads, self.width = heads, width
        self.emb, self.pos = nn.Embedding(vocab, width), nn.Embedding(32, width)
        self.ln1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ln2, self.up, self.down = nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.c1(images))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        x = F.relu(self.b3(self.c3(x)) + self.skip(x))
        x = self.drop(F.relu(self.b4(self.c4(x))))
        x = F.relu(self.c6(F.relu(self.b5(self.c5(x)))))
        classes = F.log_softmax(self.fc2(F.relu(self.fc1(torch.flatten(x, 1)))), dim=1)
        batch, length = ids.shape
        h = self.drop(self.emb(ids) + self.pos(torch.arange(length, device=ids.device)))
        qkv = self.qkv(self.ln1(h)).view(batch, length, 3, self.heads, self.width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, length, self.width)
        h = h + self.proj(a)
        h = h + self.drop(self.down(F.gelu(self.up(self.ln2(h)))))
        return classes, self.head(h)

    @staticmethod
    def example_input() -> tuple[torch.Tensor, torch.Tensor]:
        """Two images and two 12-token sequences."""
        return torch.randn(2, 3, 24, 24), torch.randint(0, 300, (2, 12))
