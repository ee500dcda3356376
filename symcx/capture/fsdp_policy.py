"""FSDP2's mixed-precision policies as symcx models them: the named policies, and torch's own.

``fully_shard(..., mp_policy=MixedPrecisionPolicy(param_dtype, reduce_dtype))`` all-gathers the
parameters and runs the compute in ``param_dtype`` and reduce-scatters the gradients in
``reduce_dtype``, keeping the shards, their gradients and the optimizer state in the model's
float32. The capture (``capture/sharded.py``) wraps with torch's policy; the per-GPU walk
(``symcx/parallel.py``) sizes the step by :class:`MixedPolicy`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import SymcxError

__all__ = ["MixedPolicy", "MP_POLICIES", "mp_policy_of", "torch_mp_policy"]


@dataclasses.dataclass(frozen=True)
class MixedPolicy:
    """FSDP2's ``MixedPrecisionPolicy`` as the walk sizes it: parameters all-gathered, and the
    compute run, in ``param_dtype``; gradients reduce-scattered in ``reduce_dtype``; the sharded
    parameters, their gradients and the optimizer state in float32 (the model's own dtype).
    ``trace`` is the ``analyze(..., precision=...)`` whose step is the compute FSDP2 runs."""

    name: str
    param_dtype: str
    reduce_dtype: str
    trace: str

    @property
    def param_bytes(self) -> int:
        """Bytes per element of the all-gathered (unsharded) parameters and the compute."""
        return 4 if self.param_dtype == "float32" else 2

    @property
    def reduce_bytes(self) -> int:
        """Bytes per element of the reduce-scatter's input and output."""
        return 4 if self.reduce_dtype == "float32" else 2


#: The named policies ``mp_policy=`` and ``--mp-policy`` take (all on a float32 model).
MP_POLICIES = {
    "bf16": MixedPolicy("bf16", "bfloat16", "float32", "bf16"),
    "bf16-reduce-bf16": MixedPolicy("bf16-reduce-bf16", "bfloat16", "bfloat16", "bf16"),
    "fp16": MixedPolicy("fp16", "float16", "float32", "fp16"),
    "fp16-reduce-fp16": MixedPolicy("fp16-reduce-fp16", "float16", "float16", "fp16"),
}


def mp_policy_of(value: Any) -> MixedPolicy | None:
    """A :class:`MixedPolicy` from a name of :data:`MP_POLICIES`, a torch
    ``torch.distributed.fsdp.MixedPrecisionPolicy`` (16-bit ``param_dtype``, ``reduce_dtype``
    float32, the same 16-bit type or None, no ``output_dtype``, ``cast_forward_inputs``), or None.

    >>> mp_policy_of("bf16").reduce_dtype, mp_policy_of(None)
    ('float32', None)
    """
    if value is None or isinstance(value, MixedPolicy):
        return value
    if isinstance(value, str):
        if value.lower() not in MP_POLICIES:
            raise SymcxError(f"mp_policy must be one of {', '.join(MP_POLICIES)} or a MixedPrecisionPolicy, "
                             f"not {value!r}")
        return MP_POLICIES[value.lower()]
    names = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}
    param = names.get(str(getattr(value, "param_dtype", None)))
    reduce = str(getattr(value, "reduce_dtype", None))
    if param is None or reduce not in ("None", "torch.float32", str(value.param_dtype)) \
            or getattr(value, "output_dtype", None) is not None or not getattr(value, "cast_forward_inputs", False):
        raise SymcxError(f"mp_policy {value!r} is not modelled: symcx models a 16-bit param_dtype (bf16 or fp16) "
                         f"reduced in float32 or in that dtype, output_dtype=None and cast_forward_inputs=True")
    return MP_POLICIES[param if reduce == "torch.float32" else f"{param}-reduce-{param}"]




def torch_mp_policy(policy: Any) -> Any:
    """torch's ``MixedPrecisionPolicy`` for a policy name of :data:`MP_POLICIES` (or a
    :class:`MixedPolicy`, or torch's own, returned as it is); torch's default (no casts) for None."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if policy is None:
        return MixedPrecisionPolicy()
    if isinstance(policy, MixedPrecisionPolicy):
        return policy
    mp = mp_policy_of(policy)
    return MixedPrecisionPolicy(param_dtype=getattr(torch, mp.param_dtype),
                                reduce_dtype=getattr(torch, mp.reduce_dtype))
