"""Issue 17 regression tests that the audit found thin: item 7's letter widths checked against
FlopCounterMode at two sizes of every symbol (t and each width), not only by hand; item 12 on a
UNet-shaped model (timestep ``ts[:, None]``, crops, a strided down block), exact past t = 15.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import symcx
from symcx.zoo import MnistCNN

from .conftest import fcm_forward_backward


def mnist_with_widths(i: int, j: int, k: int, l: int) -> nn.Module:
    """The seed net with conv1 → i, conv2 → j, fc1 → k, fc2 → l (its forward unchanged)."""
    model = MnistCNN()
    model.conv1, model.conv2 = nn.Conv2d(1, i, 3, 1), nn.Conv2d(i, j, 3, 1)
    model.fc1, model.fc2 = nn.Linear(12 * 12 * j, k), nn.Linear(k, l)
    return model


@pytest.fixture(scope="module")
def letters():
    return symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28), widths="letters")


@pytest.mark.slow
@pytest.mark.parametrize("widths", [(32, 64, 128, 10), (4, 6, 8, 3)])
@pytest.mark.parametrize("batch", [2, 3])
def test_letter_widths_match_flop_counter_mode_at_other_widths(letters, widths, batch):
    model = mnist_with_widths(*widths)
    model.eval()  # dropout draws nothing FlopCounterMode counts; eval keeps the two runs alike
    at = letters.subs(t=batch, **dict(zip("ijkl", widths)))
    expected = fcm_forward_backward(model, torch.randn(batch, 1, 28, 28))
    assert (int(at.forward_flops), int(at.backward_flops)) == expected


class TinyUNet(nn.Module):
    """UNet2DModel's shape in small (diffusers is not installed here): a sinusoidal timestep
    embedding from ``ts[:, None]``, a stride-2 down block, a crop ``x[:, :, :16]``, a nearest
    upsample and a skip concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.time = nn.Linear(8, 4)
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Conv2d(7, 3, 1)

    def forward(self, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-torch.arange(4, dtype=torch.float32))
        emb = ts[:, None].float() * freqs[None]
        emb = self.time(torch.cat([emb.sin(), emb.cos()], dim=-1))
        h = self.down(x[:, :, :16]) + emb[:, :, None, None]
        h = self.up(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(torch.cat([h, x[:, :, :16]], dim=1))


@pytest.fixture(scope="module")
def unet():
    return symcx.analyze(TinyUNet(), (torch.randn(2, 3, 20, 16), torch.randint(0, 100, (2,))))


@pytest.mark.slow
def test_unet_like_keeps_no_false_batch_bound(unet):
    t = symcx.t
    assert not any(c.free_symbols == {t} for c in unet.assumptions), unet.assumptions


@pytest.mark.slow
@pytest.mark.parametrize("batch", [16, 20])  # past the t <= 15 the slices used to claim
def test_unet_like_is_exact_past_the_old_bound(unet, batch):
    x = (torch.randn(batch, 3, 20, 16), torch.randint(0, 100, (batch,)))
    at = unet.subs(t=batch)
    assert (int(at.forward_flops), int(at.backward_flops)) == fcm_forward_backward(TinyUNet(), x)


def test_norm_layers_show_their_output_shape_in_every_export():
    # item 14: BatchNorm2d's output is the activation t×8×6×6 (not its 8 saved statistics), and
    # LayerNorm's is t×16 (not the t×1 mean), in the table rows, Markdown and JSON alike
    import json

    from symcx.export import to_json, to_markdown

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 16), torch.nn.LayerNorm(16))
    a = symcx.analyze(model, torch.randn(2, 3, 8, 8))
    shapes = {r["type"]: r["out_shape"] for r in json.loads(to_json(a))["layers"]}
    assert shapes["BatchNorm2d"] == ["t", "8", "6", "6"] and shapes["LayerNorm"] == ["t", "16"]
    markdown = to_markdown(a)
    assert "| BatchNorm2d | `t×8×6×6` | `t×8×6×6` |" in markdown
    assert "| LayerNorm | `t×16` | `t×16` |" in markdown
