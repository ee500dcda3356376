"""Activation checkpointing of a model's repeated blocks, as ``--checkpoint`` asks for it.

A Hugging Face model gets its own switch, ``gradient_checkpointing_enable`` (non-reentrant);
any other model gets ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` around
each child of its outermost ``nn.ModuleList`` / ``nn.Sequential`` containers (a transformer's
blocks, a ResNet stage's blocks): the forward of each block runs again in the backward, and
only the block's inputs are kept.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import SymcxError

__all__ = ["checkpoint_blocks"]


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The children of the outermost containers (a container inside a chosen one is not descended)."""
    out: list[tuple[str, nn.Module]] = []
    chosen: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or mod is model and isinstance(model, nn.Sequential):
            continue
        if any(name.startswith(c + ".") for c in chosen) or len(mod) < 2:
            continue
        chosen.append(name)
        out += [(f"{name}.{k}", child) for k, child in mod.named_children()
                if any(True for _ in child.parameters())]
    if not out and isinstance(model, nn.Sequential):
        out = [(k, child) for k, child in model.named_children() if any(True for _ in child.parameters())]
    return out


def _checkpointed(forward: Any) -> Any:
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def checkpoint_blocks(model: nn.Module) -> str:
    """Turn on activation checkpointing in ``model`` (in place); say what was checkpointed.

    Raises
    ------
    SymcxError
        When the model has no repeated blocks to checkpoint.

    Examples
    --------
    >>> blocks = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> checkpoint_blocks(blocks)
    'torch.utils.checkpoint around 2 blocks (0, 2)'
    """
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if callable(enable) and getattr(model, "supports_gradient_checkpointing", False):
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return "Hugging Face gradient_checkpointing_enable (use_reentrant=False)"
    blocks = _blocks(model)
    if not blocks:
        raise SymcxError(f"{type(model).__name__} has no blocks to checkpoint (no nn.ModuleList or nn.Sequential "
                         f"of layers with parameters); wrap its layers in torch.utils.checkpoint yourself")
    for _, block in blocks:
        block.forward = _checkpointed(block.forward)
    names = ", ".join(name for name, _ in blocks[:6]) + (", ..." if len(blocks) > 6 else "")
    return f"torch.utils.checkpoint around {len(blocks)} blocks ({names})"
