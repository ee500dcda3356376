"""Fused scaled-dot-product attention kernels, forward and backward.

The formulas are FlopCounterMode's (``sdpa_flop_count``, ``sdpa_backward_flop_count`` in
``torch/utils/flop_counter.py``), for query ``(b, h, s_q, d_q)``, key ``(b, h_kv, s_k, d_q)``
and value ``(b, h_kv, s_k, d_v)``; grouped-query attention (``h_kv < h``) counts at the
query's ``h`` heads, as the kernels broadcast the key and value heads:

- forward, two batched products, ``Q·Kᵀ`` and ``P·V``: ``2·b·h·s_q·s_k·(d_q + d_v)``,
  i.e. ``4·b·h·s_q·s_k·d`` for ``d_q = d_v = d``;
- backward, five, as the flash and memory-efficient kernels run it (the score matrix is
  recomputed): ``Q·Kᵀ`` again (``d_q``), ``dP = dO·Vᵀ`` and ``dV = Pᵀ·dO`` (``d_v``),
  ``dQ = dS·K`` and ``dK = dSᵀ·Q`` (``d_q``): ``2·b·h·s_q·s_k·(3·d_q + 2·d_v)``, 2.5× the
  forward for ``d_q = d_v``.

The unfused "math" path is no kernel: traced, it is two ``bmm`` and a softmax (rules in
``matmul`` and ``pointwise``), whose backward is 2× its forward, as FlopCounterMode counts it.

Where FlopCounterMode (torch 2.13) is wrong symcx is right and records its figure in
``fcm_flops``: it has no formula for the CPU kernel (``_for_cpu``: counted 0), and it reads
the ``(b, s, h, d)`` tensors of ``_flash_attention_*`` and ``_efficient_attention_*`` as if
they were ``(b, h, s, d)``, which swaps heads and sequence length (and makes it raise
unless ``s_q`` is a multiple of ``s_k``: then symcx records 0). Variable-length (nested)
batches are counted at their maximum sequence lengths, an upper bound, as FlopCounterMode
does on fake tensors.

Causal attention. By default a causal call is counted as a full ``s_q × s_k`` score matrix,
as FlopCounterMode does. With ``analyze(..., causal_attention=True)`` every score-matrix
product of a call whose causal flag is set counts only the unmasked entries, ``U`` in place
of ``s_q·s_k`` (forward ``2·b·h·U·(d_q + d_v)``, backward ``2·b·h·U·(3·d_q + 2·d_v)``), where,
with ``m = min(s_q, s_k)``:

- top-left alignment (``is_causal`` of ``scaled_dot_product_attention``: query ``i`` sees keys
  ``j ≤ i``): ``U = m·(m + 1)/2 + (s_q − m)·s_k``;
- bottom-right alignment (flash-attention's own kernels, ``custom_mask_type = 2`` of the
  memory-efficient one: query ``i`` sees keys ``j ≤ i + s_k − s_q``): ``U = m·(m + 1)/2 + m·(s_k − m)``.

Both give ``U = s·(s + 1)/2`` for ``s_q = s_k = s``: the lower triangle with its diagonal.
Masks passed as tensors (``attn_mask``, ``attn_bias``) are not inspected: counted in full.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy

from ..cost import Cost, OpCall, TensorInfo
from .registry import rule

__all__ = [
    "sdpa_forward_cost",
    "sdpa_backward_cost",
    "causal_entries",
    "CPU_NOTE",
    "LAYOUT_NOTE",
    "FCM_RAISES_NOTE",
    "CAUSAL_NOTE",
]

TWO = sympy.Integer(2)
CPU_NOTE = "FlopCounterMode has no formula for CPU flash attention and counts 0"
LAYOUT_NOTE = (
    "FlopCounterMode reads this kernel's (batch, seq, heads, dim) tensors as (batch, heads, seq, dim), "
    "swapping heads and sequence length"
)
FCM_RAISES_NOTE = "FlopCounterMode raises on these shapes (its grouped-query check sees s_q, s_k as heads)"
CAUSAL_NOTE = "causal_attention: only the unmasked triangle of the score matrix is counted"

TOP_LEFT, BOTTOM_RIGHT = "top-left", "bottom-right"


def causal_entries(s_q: sympy.Expr, s_k: sympy.Expr, alignment: str = TOP_LEFT) -> sympy.Expr:
    """Unmasked entries of an ``s_q × s_k`` causal score matrix (the diagonal included).

    >>> from symcx.symbols import symbol
    >>> L = symbol("L")
    >>> causal_entries(L, L)
    L*(L + 1)/2
    >>> causal_entries(3, 5), causal_entries(5, 3), causal_entries(3, 5, "bottom-right")
    (6, 12, 12)
    """
    s_q, s_k = sympy.sympify(s_q), sympy.sympify(s_k)
    m = sympy.Min(s_q, s_k)
    rest = (s_q - m) * s_k if alignment == TOP_LEFT else m * (s_k - m)
    return m * (m + 1) / 2 + rest


def _score_factors(q: tuple, k: tuple, causal: str | None) -> tuple[sympy.Expr, ...]:
    """Factors of the score-matrix entries, ``(b, h, s_q, s_k)`` or ``(b, h, U)`` when causal."""
    b, h, s_q, _ = q
    s_k = k[2]
    return (b, h, s_q, s_k) if causal is None else (b, h, causal_entries(s_q, s_k, causal))


def sdpa_forward_cost(q: tuple, k: tuple, v: tuple, causal: str | None = None) -> Cost:
    """``Q·Kᵀ`` and ``P·V``: 2·b·h·s_q·s_k·d_q + 2·b·h·s_q·s_k·d_v for BHSD shapes.

    ``causal`` (``"top-left"`` or ``"bottom-right"``) counts only the unmasked entries.

    >>> sdpa_forward_cost((2, 4, 16, 8), (2, 4, 16, 8), (2, 4, 16, 8)).flops  # 4*2*4*16*16*8
    65536
    """
    d_q, d_v = q[3], v[3]
    f = _score_factors(q, k, causal)
    factors = ((TWO, *f, d_q), (TWO, *f, d_v))
    return Cost(flops=sympy.Add(*[sympy.Mul(*x) for x in factors]), factors=factors)


def sdpa_backward_cost(q: tuple, k: tuple, v: tuple, causal: str | None = None) -> Cost:
    """Five products: 2·b·h·s_q·s_k·(3·d_q + 2·d_v) for BHSD shapes (2.5× forward for d_q = d_v).

    >>> sdpa_backward_cost((2, 4, 16, 8), (2, 4, 16, 8), (2, 4, 16, 8)).flops  # 10*2*4*16*16*8
    163840
    """
    d_q, d_v = q[3], v[3]
    f = _score_factors(q, k, causal)
    factors = ((TWO, *f, d_q),) * 3 + ((TWO, *f, d_v),) * 2
    return Cost(flops=sympy.Add(*[sympy.Mul(*x) for x in factors]), factors=factors)


def _bshd(shape: tuple) -> tuple:
    """(b, s, h, d) → (b, h, s, d)."""
    return (shape[0], shape[2], shape[1], shape[3])


def _varlen(shape: tuple, cu_seqlens: TensorInfo, max_len: sympy.Expr) -> tuple:
    """Packed (total, h, d) → (batch, h, max_len, d): FlopCounterMode's upper bound."""
    return (cu_seqlens.shape[0] - 1, shape[-2], max_len, shape[-1])


def _causal(call: OpCall, flag: bool, alignment: str = TOP_LEFT) -> str | None:
    """The alignment to count a causal call with, or None to count the full score matrix."""
    return alignment if flag and call.options.get("causal_attention") else None


def _cost(
    kernel: Callable[..., Cost],
    q: tuple,
    k: tuple,
    v: tuple,
    causal: str | None,
    *,
    fcm: sympy.Expr | None = None,
    notes: tuple[str, ...] = (),
) -> Cost:
    """``kernel`` on BHSD shapes; ``fcm``/``notes`` where FlopCounterMode counts otherwise."""
    cost = kernel(q, k, v, causal)
    if causal is not None:
        notes = notes + (CAUSAL_NOTE,)
        if fcm is None:
            fcm = kernel(q, k, v).flops
    if fcm is None:
        return cost
    return Cost(flops=cost.flops, factors=cost.factors, fcm_flops=fcm, note="; ".join(notes))


def _shapes(call: OpCall) -> tuple[tuple, ...]:
    """The shapes of ``query``, ``key`` and ``value``."""
    return tuple(tuple(call[name].shape) for name in ("query", "key", "value"))


@rule("aten._scaled_dot_product_flash_attention_for_cpu")
def sdpa_cpu_flops(call: OpCall) -> Cost:
    """CPU flash attention: 2·b·h·s_q·s_k·(d_q + d_v); FlopCounterMode counts 0."""
    causal = _causal(call, bool(call["is_causal"]))
    return _cost(sdpa_forward_cost, *_shapes(call), causal, fcm=sympy.Integer(0), notes=(CPU_NOTE,))


@rule("aten._scaled_dot_product_flash_attention_for_cpu_backward")
def sdpa_cpu_backward_flops(call: OpCall) -> Cost:
    """CPU flash attention backward: 2·b·h·s_q·s_k·(3·d_q + 2·d_v); FlopCounterMode counts 0."""
    causal = _causal(call, bool(call["is_causal"]))
    return _cost(sdpa_backward_cost, *_shapes(call), causal, fcm=sympy.Integer(0), notes=(CPU_NOTE,))


@rule(
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_cudnn_attention",
)
def sdpa_flops(call: OpCall) -> Cost:
    """Flash, memory-efficient and cuDNN SDPA: 2·b·h·s_q·s_k·(d_q + d_v), as FlopCounterMode."""
    return _cost(sdpa_forward_cost, *_shapes(call), _causal(call, bool(call["is_causal"])))


@rule(
    "aten._scaled_dot_product_flash_attention_backward",
    "aten._scaled_dot_product_efficient_attention_backward",
    "aten._scaled_dot_product_cudnn_attention_backward",
)
def sdpa_backward_flops(call: OpCall) -> Cost:
    """Their backward: 2·b·h·s_q·s_k·(3·d_q + 2·d_v), as FlopCounterMode (grad masks ignored)."""
    return _cost(sdpa_backward_cost, *_shapes(call), _causal(call, bool(call["is_causal"])))


#: Names of the packed-batch arguments (offsets of q and k, max lengths of q and k) of
#: flash-attention's and memory-efficient attention's own kernels.
_FLASH_PACKED = ("cum_seq_q", "cum_seq_k", "max_q", "max_k")
_EFFICIENT_PACKED = ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k")


def _bshd_shapes(call: OpCall, packed: tuple[str, str, str, str]) -> tuple:
    """BHSD shapes of a kernel's (b, s, h, d) tensors, or of packed ones (offsets given).

    flash-attention packs a batch as (total, h, d), memory-efficient attention as (1, total, h, d).
    """
    q, k, v = (call[name] for name in ("query", "key", "value"))
    cu_q, cu_k, max_q, max_k = (call[name] for name in packed)
    if isinstance(cu_q, TensorInfo):
        return (_varlen(q.shape, cu_q, max_q), _varlen(k.shape, cu_k, max_k), _varlen(v.shape, cu_k, max_k))
    return _bshd(q.shape), _bshd(k.shape), _bshd(v.shape)


def _misread(kernel: Callable[..., Cost], call: OpCall, packed: str) -> tuple:
    """(FlopCounterMode's count, note) on raw (b, s, h, d) shapes read as BHSD; (None, ()) if packed.

    Read that way the sequence lengths are taken for head counts, and FlopCounterMode raises
    unless ``s_q`` is a multiple of ``s_k`` (its grouped-query check): then it reports nothing.
    It reads the shapes literally, size-1 dims included (a decode step's ``s_q = 1``).
    """
    if isinstance(call[packed], TensorInfo):
        return None, ()
    q, k, v = (call[name] for name in ("query", "key", "value"))
    s_q, s_k = q.shape[1], k.shape[1]
    if sympy.Mod(s_q, s_k) != 0:
        return sympy.Integer(0), (LAYOUT_NOTE, FCM_RAISES_NOTE)
    return kernel(tuple(q.shape), tuple(k.shape), tuple(v.shape)).flops, (LAYOUT_NOTE,)


@rule("aten._flash_attention_forward")
def flash_forward_flops(call: OpCall) -> Cost:
    """flash-attention forward on (b, s, h, d) tensors: 2·b·h·s_q·s_k·(d_q + d_v)."""
    causal = _causal(call, bool(call["is_causal"]), BOTTOM_RIGHT)
    fcm, notes = _misread(sdpa_forward_cost, call, "cum_seq_q")
    return _cost(sdpa_forward_cost, *_bshd_shapes(call, _FLASH_PACKED), causal, fcm=fcm, notes=notes)


@rule("aten._flash_attention_backward")
def flash_backward_flops(call: OpCall) -> Cost:
    """flash-attention backward on (b, s, h, d) tensors: 2·b·h·s_q·s_k·(3·d_q + 2·d_v)."""
    causal = _causal(call, bool(call["is_causal"]), BOTTOM_RIGHT)
    fcm, notes = _misread(sdpa_backward_cost, call, "cum_seq_q")
    return _cost(sdpa_backward_cost, *_bshd_shapes(call, _FLASH_PACKED), causal, fcm=fcm, notes=notes)


def _mask_type(call: OpCall) -> str | None:
    """``custom_mask_type``: 0 none, 1 causal from the top left, 2 from the bottom right."""
    kind = int(call["custom_mask_type"])
    return {1: TOP_LEFT, 2: BOTTOM_RIGHT}.get(kind) if call.options.get("causal_attention") else None


@rule("aten._efficient_attention_forward")
def efficient_forward_flops(call: OpCall) -> Cost:
    """Memory-efficient attention forward on (b, s, h, d) tensors: 2·b·h·s_q·s_k·(d_q + d_v)."""
    fcm, notes = _misread(sdpa_forward_cost, call, "cu_seqlens_q")
    shapes = _bshd_shapes(call, _EFFICIENT_PACKED)
    return _cost(sdpa_forward_cost, *shapes, _mask_type(call), fcm=fcm, notes=notes)


@rule("aten._efficient_attention_backward")
def efficient_backward_flops(call: OpCall) -> Cost:
    """Memory-efficient attention backward on (b, s, h, d): 2·b·h·s_q·s_k·(3·d_q + 2·d_v)."""
    fcm, notes = _misread(sdpa_backward_cost, call, "cu_seqlens_q")
    shapes = _bshd_shapes(call, _EFFICIENT_PACKED)
    return _cost(sdpa_backward_cost, *shapes, _mask_type(call), fcm=fcm, notes=notes)
