"""Shape functions that make the trace run an op as eager does where torch's meta kernel refuses.

``aten._grouped_mm`` (the grouped GEMM of mixture-of-experts layers: transformers' default
``experts_implementation="grouped_mm"``) runs in fp32 on the CPU, but torch's meta kernel checks
the CUDA kernel's rule, bf16 only (torch 2.13), so a fake trace of an fp32 MoE model stops with
"Expected inputs of BF16 type". :class:`EagerKernels` is a dispatch mode that sits between the
recorder and the fake mode: the recorder still records the op, and the mode answers it with the
output the eager kernel makes, from shapes alone. Every other op passes through unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from .._torch import TorchDispatchMode

__all__ = ["EagerKernels", "grouped_mm_fake", "eager_experts_hint"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def grouped_mm_fake(
    mat_a: torch.Tensor, mat_b: torch.Tensor, offs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The output of ``aten._grouped_mm`` from shapes alone, as the CPU kernel makes it.

    ``offs`` splits the rows of a 2-D ``mat_a`` over the groups of a 3-D ``mat_b``, the columns
    of a 2-D ``mat_b`` over a 3-D ``mat_a``, or the shared dim of two 2-D operands (one output
    matrix per group); two 3-D operands are a batched product.

    >>> a, b = torch.empty(6, 4), torch.empty(3, 4, 8)
    >>> grouped_mm_fake(a, b, torch.empty(3, dtype=torch.int32)).shape
    torch.Size([6, 8])
    """
    if mat_a.dtype != mat_b.dtype or mat_a.dtype not in _FLOATS:
        raise RuntimeError(f"_grouped_mm: expected two operands of one floating dtype, "
                           f"got {mat_a.dtype} and {mat_b.dtype}")
    if mat_a.dim() not in (2, 3) or mat_b.dim() not in (2, 3):
        raise RuntimeError(f"_grouped_mm: operands must be 2-D or 3-D, got {mat_a.dim()}-D and {mat_b.dim()}-D")
    if mat_a.dim() == 3 and mat_b.dim() == 3:
        size = [mat_a.shape[0], mat_a.shape[1], mat_b.shape[-1]]
    elif mat_a.dim() == 2 and mat_b.dim() == 2:
        if offs is None:
            raise RuntimeError("_grouped_mm: two 2-D operands need offs")
        size = [offs.shape[0], mat_a.shape[0], mat_b.shape[1]]
    else:
        size = [mat_a.shape[-2], mat_b.shape[-1]]
    return mat_a.new_empty(size, dtype=out_dtype or mat_a.dtype)


#: Ops answered by a shape function of ours, not torch's meta kernel.
_SHAPE_FUNCTIONS = {torch.ops.aten._grouped_mm.default: grouped_mm_fake}


class EagerKernels(TorchDispatchMode):
    """Answer the ops of :data:`_SHAPE_FUNCTIONS` with our shape functions; pass the rest on.

    Enter it inside the fake mode and outside the recorder (the recorder is the innermost
    mode, so it sees the op first; the call then reaches this mode, whose ``new_empty`` reaches
    the fake mode).
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        shape_function = _SHAPE_FUNCTIONS.get(func)
        if shape_function is not None:
            return shape_function(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def eager_experts_hint(where: str | None) -> str:
    """The way out when a data-dependent stop is transformers' eager mixture-of-experts loop.

    transformers' ``experts_implementation="eager"`` loops over the experts that tokens were
    routed to (``for expert_idx in expert_hit``), which no shape-only trace can follow; its
    ``"grouped_mm"`` and ``"batched_mm"`` implementations run every expert as one op.
    ``where`` is the ``file:line: code`` the trace stopped at; the hint is ``""`` elsewhere.

    >>> eager_experts_hint("modeling_mixtral.py:81: for expert_idx in expert_hit:").startswith("; ")
    True
    """
    if not where or "expert" not in where.rsplit(": ", 1)[-1]:
        return ""
    return ("; this is a mixture-of-experts layer run with transformers' experts_implementation=\"eager\": "
            "call model.set_experts_implementation(\"grouped_mm\") (or load the model with "
            "experts_implementation=\"grouped_mm\" or \"batched_mm\"), which symcx traces")
