"""Real architectures written in the project: ResNet-18/50, a GPT decoder, a small transformer,
an RNN classifier and a ViT, for the examples, the bundled names and the whole-model tests.

Each model has an ``example_input()``; the defaults are small enough to run on a CPU in tests,
and the ``*_config`` factories give the published sizes (ResNet-50: 25,557,032 parameters;
GPT at GPT-2 small sizes: 124,439,808 with tied embeddings).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNet18",
    "ResNet50",
    "Attention",
    "Block",
    "GPT",
    "gpt2_small",
    "TinyTransformer",
    "LSTMClassifier",
    "ViT",
]


# --- ResNet ---------------------------------------------------------------------------------
def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN pairs and a residual add; a strided 1×1 conv-BN downsample when shapes change."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, each with BN, and a residual add."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """The ImageNet ResNet (He et al. 2015), laid out as torchvision's so parameter counts match.

    Stem: 7×7/2 conv, BN, ReLU, 3×3/2 max-pool; four stages of ``blocks`` residual blocks
    (widths 64, 128, 256, 512; stages 2–4 start with stride 2); adaptive average pool; FC.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: Sequence[int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        stages = []
        for k, (width, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            layer = []
            for j in range(count):
                layer.append(block(c_in, width, stride=2 if (k > 0 and j == 0) else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def example_input(self, size: int = 224) -> torch.Tensor:
        """A batch of two ``size``×``size`` images."""
        return torch.randn(2, self.in_channels, size, size)


def ResNet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2], 11,689,512 parameters with 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def ResNet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3], 25,557,032 parameters with 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


# --- transformers ---------------------------------------------------------------------------
class Attention(nn.Module):
    """Multi-head self-attention: one fused QKV projection, ``heads`` heads, an output projection.

    ``impl="sdpa"`` calls ``F.scaled_dot_product_attention``; ``impl="manual"`` writes the same
    computation out as ``q @ kᵀ / √d``, a ``-inf`` causal mask, softmax and ``@ v``.
    """

    def __init__(self, dim: int, heads: int, *, causal: bool, impl: str = "sdpa") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        if impl not in ("sdpa", "manual"):
            raise ValueError(f"impl must be 'sdpa' or 'manual', not {impl!r}")
        self.heads, self.causal, self.impl = heads, causal, impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (z.view(b, length, self.heads, dim // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(dim // self.heads)
            if self.causal:
                mask = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~mask, float("-inf"))
            y = F.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))`` (GELU, 4× wide)."""

    def __init__(self, dim: int, heads: int, *, causal: bool, impl: str = "sdpa", norm: str = "layer") -> None:
        super().__init__()
        make_norm = {"layer": nn.LayerNorm, "rms": nn.RMSNorm}[norm]
        self.ln1 = make_norm(dim)
        self.attn = Attention(dim, heads, causal=causal, impl=impl)
        self.ln2 = make_norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A GPT-2-style decoder: token and learned position embeddings, causal blocks, a LM head.

    Takes token ids of shape ``(t, L)`` with ``L ≤ block_size``; returns logits ``(t, L, vocab)``.
    ``attention="manual"`` computes attention by hand (matmul + softmax) instead of
    ``F.scaled_dot_product_attention``; ``norm="rms"`` uses RMSNorm; ``tie_weights`` shares the
    token embedding with the LM head, as GPT-2 does.
    """

    def __init__(
        self,
        vocab_size: int = 512,
        block_size: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        *,
        attention: str = "sdpa",
        norm: str = "layer",
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, causal=True, impl=attention, norm=norm) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd) if norm == "layer" else nn.RMSNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.tok_emb(ids) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def example_input(self, length: int = 16) -> torch.Tensor:
        """Two sequences of ``length`` random token ids."""
        return torch.randint(0, self.vocab_size, (2, length))


def gpt2_small(**kw) -> GPT:
    """GPT at GPT-2 small sizes: 12 layers, 12 heads, width 768, 50,257 tokens, 1024 positions.

    With tied embeddings it has GPT-2's 124,439,808 parameters. Build it under
    ``torch.device("meta")`` to analyze it without allocating weights.
    """
    return GPT(50257, 1024, 12, 12, 768, tie_weights=True, **kw)


class TinyTransformer(nn.Module):
    """An encoder classifier built on ``nn.MultiheadAttention``: embedding, positions, post-norm layers.

    Each layer: ``x = norm1(x + mha(x, x, x))``, ``x = norm2(x + ff(x))`` with a ReLU MLP; the
    output is the mean over positions through a linear classifier. Takes ids ``(t, L)``.
    """

    def __init__(
        self, vocab_size: int = 256, max_len: int = 64, dim: int = 32, heads: int = 4, layers: int = 2, classes: int = 4
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(layers))
        self.norm1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.ff = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim)) for _ in range(layers)
        )
        self.norm2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        for attn, norm1, ff, norm2 in zip(self.attn, self.norm1, self.ff, self.norm2):
            x = norm1(x + attn(x, x, x)[0])
            x = norm2(x + ff(x))
        return self.classifier(x.mean(dim=1))

    def example_input(self, length: int = 12) -> torch.Tensor:
        """Two sequences of ``length`` random token ids."""
        return torch.randint(0, self.vocab_size, (2, length))


class LSTMClassifier(nn.Module):
    """A recurrent sequence classifier: ``nn.LSTM`` (or ``nn.GRU``/``nn.RNN``), then a linear head.

    Takes ``(t, L, features)`` (batch first); classifies from the last time step's output.
    """

    def __init__(
        self,
        features: int = 16,
        hidden: int = 32,
        layers: int = 2,
        classes: int = 5,
        *,
        cell: str = "lstm",
        bidirectional: bool = True,
    ) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.features = features
        self.rnn = rnn(features, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])

    def example_input(self, length: int = 10) -> torch.Tensor:
        """Two sequences of ``length`` feature vectors."""
        return torch.randn(2, length, self.features)


class ViT(nn.Module):
    """A Vision Transformer: patch embedding conv, class token, learned positions, pre-norm blocks.

    Non-causal ``F.scaled_dot_product_attention`` (or by hand with ``attention="manual"``);
    classifies from the class token. Takes ``(t, channels, image, image)``.
    """

    def __init__(
        self,
        image: int = 32,
        patch: int = 8,
        dim: int = 48,
        depth: int = 2,
        heads: int = 3,
        classes: int = 10,
        channels: int = 3,
        *,
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if image % patch:
            raise ValueError(f"image size {image} is not a multiple of the patch size {patch}")
        self.image, self.channels = image, channels
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, causal=False, impl=attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])

    def example_input(self) -> torch.Tensor:
        """Two images."""
        return torch.randn(2, self.channels, self.image, self.image)

