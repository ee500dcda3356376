"""The serving figures of an :class:`~symcx.serving.Inference` as rows, Markdown and JSON.

One list of ``(key, label, formula)`` rows (:func:`serving_rows`) feeds every format, so they
cannot disagree; ``at`` evaluates each formula at the values given (``{"t": 8, "L": 512}``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sympy

from ..errors import SymcxError
from ..serving import Inference
from ..symbols import symbol

__all__ = ["SERVING", "serving_rows", "serving_to_markdown", "serving_to_json"]

#: Figures of a serving report: key -> label.
SERVING = {
    "prefill_flops": "Prefill FLOPs (L prompt tokens)",
    "prefill_other_flops": "Other prefill FLOPs",
    "decode_flops": "Decode-step FLOPs (one token after P cached)",
    "decode_other_flops": "Other decode-step FLOPs",
    "generate_flops": "FLOPs of G new tokens after an L-token prompt",
    "kv_cache_bytes": "KV-cache bytes (P cached tokens)",
    "bytes_per_token": "KV-cache bytes per cached token and sequence",
    "weight_bytes": "Weight bytes",
    "decode_peak_bytes": "Decode-step peak bytes (weights + cache + activations)",
    "prefill_intensity": "Prefill arithmetic intensity (FLOPs per byte moved)",
    "decode_intensity": "Decode arithmetic intensity (FLOPs per byte moved)",
}


def _values(at: Mapping[str, int] | None) -> dict[sympy.Symbol, int]:
    out = {}
    for name, value in (at or {}).items():
        if name not in ("t", "L", "P", "G"):
            raise SymcxError(f"unknown symbol {name!r}; serving figures are in t, L, P and G")
        out[symbol(name)] = value
    return out


def serving_rows(inf: Inference, at: Mapping[str, int] | None = None) -> list[tuple[str, str, sympy.Expr, Any]]:
    """``(key, label, formula, value at at)`` for every figure of :data:`SERVING`.

    Examples
    --------
    >>> import torch, symcx
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=64))
    >>> rows = serving_rows(symcx.inference(m, torch.zeros(1, 4, dtype=torch.long)), at={"t": 2, "P": 10})
    >>> next((f, v) for k, _, f, v in rows if k == "kv_cache_bytes")
    (128*P*t, 2560)
    """
    formulas = {
        "prefill_flops": inf.prefill_flops, "prefill_other_flops": inf.prefill_other_flops,
        "decode_flops": inf.decode_flops, "decode_other_flops": inf.decode_other_flops,
        "generate_flops": inf.generate_flops(), "kv_cache_bytes": inf.kv_cache_bytes,
        "bytes_per_token": inf.bytes_per_token(), "weight_bytes": inf.weight_bytes,
        "decode_peak_bytes": inf.decode_peak_bytes,
        "prefill_intensity": inf.arithmetic_intensity("prefill"), "decode_intensity": inf.arithmetic_intensity("decode"),
    }
    values = _values(at)
    return [(k, SERVING[k], sympy.sympify(f), sympy.sympify(f).subs(values)) for k, f in formulas.items()]


def _number(value: sympy.Expr) -> Any:
    if value.is_Integer:
        return int(value)
    if value.is_Number:
        return float(value)
    return str(value)


def serving_to_json(inf: Inference, at: Mapping[str, int] | None = None, indent: int | None = 2) -> str:
    """Schema ``symcx.serving/1``: every figure as a sympy string, and its value at ``at``."""
    rows = serving_rows(inf, at)
    doc = {
        "schema": "symcx.serving/1",
        "symbols": {"t": "batch (sequences)", "L": "prompt tokens", "P": "cached tokens", "G": "generated tokens"},
        "convention": "flops: FlopCounterMode (1 multiply-add = 2 FLOPs); other_flops: elementwise, norms, softmax",
        "formulas": {k: str(f) for k, _, f, _ in rows},
        "at": dict(at or {}),
        "values": {k: _number(v) for k, _, _, v in rows} if at else None,
        "unsupported": [{"op": op, "layer": layer, "count": c} for (op, layer), c in sorted(inf.unsupported.items())],
    }
    return json.dumps(doc, indent=indent)


def serving_to_markdown(inf: Inference, at: Mapping[str, int] | None = None, title: str = "symcx inference") -> str:
    """A Markdown table of every figure (and its value at ``at``)."""
    rows = serving_rows(inf, at)
    head = "| Quantity | Formula |" + (" Value |" if at else "")
    lines = [f"## {title}", "", "Symbols: `t` sequences, `L` prompt tokens, `P` cached tokens, `G` new tokens.", "",
             head, "| :-- | --: |" + (" --: |" if at else "")]
    for _, label, formula, value in rows:
        lines.append(f"| {label} | `{formula}` |" + (f" `{value}` |" if at else ""))
    return "\n".join(lines) + "\n"
