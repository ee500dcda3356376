"""Serving cost: prefill and per-token decode with the model's own KV cache, and G generated tokens.

:func:`inference` traces (:mod:`symcx.capture.inference`) the prefill of ``L`` prompt tokens and
one decode step after ``P`` cached tokens, each at batch ``t``, costs every node with the same
rules as a training step, and returns an :class:`Inference` whose figures are formulas in
``t``, ``L``, ``P`` and ``G``: FLOPs (FlopCounterMode's convention, and the other FLOPs apart),
bytes moved, KV-cache bytes (read off the traced cache tensors), the memory peak, the cost of
generating ``G`` tokens as a closed-form sum, and vLLM-style paged-cache arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import sympy
import torch

from .budget import max_batch_size, parse_bytes
from .capture.inference import CACHE_PREFIX, trace_decode, trace_prefill
from .errors import SymcxError
from .memory import step_memory
from .rules import annotate_costs
from .step import Step, build_step, traffic
from .symbols import symbol

__all__ = ["Inference", "inference", "P", "L", "G"]

P, L, G = symbol("P"), symbol("L"), symbol("G")


def _total(step: Step, key: str) -> sympy.Expr:
    terms = []
    for v in step.calls():
        if v.cost is not None:
            terms.append(v.cost.fcm_flops if key == "fcm" and v.cost.fcm_flops is not None
                         else v.cost.flops if key == "fcm" else getattr(v.cost, key))
    return sympy.Add(*terms)


@dataclasses.dataclass
class Inference:
    """The cost of serving a model: prefill (in t, L), one decode step (in t, P), G tokens (in t, L, G).

    Examples
    --------
    >>> import torch, symcx
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> m = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=64))
    >>> inf = symcx.inference(m, torch.zeros(1, 4, dtype=torch.long))
    >>> inf.kv_cache_bytes  # 1 layer × (key + value) × t × 2 heads × P × 8 × 4 B
    128*P*t
    """

    prefill: Step
    decode: Step
    unsupported: Counter

    @property
    def prefill_flops(self) -> sympy.Expr:
        """FLOPs of the prefill of L prompt tokens, FlopCounterMode convention."""
        return _total(self.prefill, "flops")

    @property
    def decode_flops(self) -> sympy.Expr:
        """FLOPs of one decode step (one new token per sequence after P cached)."""
        return _total(self.decode, "flops")

    @property
    def prefill_other_flops(self) -> sympy.Expr:
        """Prefill FLOPs FlopCounterMode ignores (elementwise, norms, softmax)."""
        return _total(self.prefill, "other_flops")

    @property
    def decode_other_flops(self) -> sympy.Expr:
        """Decode-step FLOPs FlopCounterMode ignores."""
        return _total(self.decode, "other_flops")

    def flop_counter_flops(self, phase: str = "decode") -> sympy.Expr:
        """What FlopCounterMode itself reports for ``"prefill"`` or ``"decode"`` (it counts CPU SDPA as 0)."""
        return _total(self._phase(phase), "fcm")

    def _phase(self, phase: str) -> Step:
        if phase not in ("prefill", "decode"):
            raise SymcxError(f"phase must be 'prefill' or 'decode', not {phase!r}")
        return self.prefill if phase == "prefill" else self.decode

    def bytes_moved(self, phase: str = "decode") -> sympy.Expr:
        """Bytes read and written by the phase's ops (each op's tensor arguments and new outputs)."""
        return sympy.Add(*[traffic(v) for v in self._phase(phase).calls()])

    def arithmetic_intensity(self, phase: str = "decode") -> sympy.Expr:
        """FLOPs per byte moved: decode's is low (bandwidth-bound), prefill's grows with L."""
        step = self._phase(phase)
        return (_total(step, "flops") + _total(step, "other_flops")) / self.bytes_moved(phase)

    @property
    def kv_cache_bytes(self) -> sympy.Expr:
        """Bytes of the cache holding P tokens for t sequences (the decode step's cache tensors)."""
        return sympy.Add(*[v.out.nbytes for v in self.decode.nodes if v.name.startswith(CACHE_PREFIX)])

    @property
    def weight_bytes(self) -> sympy.Expr:
        """Bytes of the parameters and buffers."""
        return sympy.Add(*[v.out.nbytes for v in self.decode.nodes if v.phase in ("param", "buffer")])

    @property
    def decode_peak_bytes(self) -> sympy.Expr:
        """Peak bytes of a decode step: weights + cache + the step's live activations (its peak)."""
        return step_memory(self.decode, training=False).inference_peak

    def generate_flops(self, tokens: Any = G, prompt: Any = L) -> sympy.Expr:
        """FLOPs of generating ``tokens`` new tokens after a ``prompt``-token prefill: the decode
        steps with P = prompt … prompt + tokens − 1, summed in closed form (prefill excluded)."""
        k = sympy.Dummy("k", integer=True, nonnegative=True)
        per = self.decode_flops.xreplace({P: prompt + k})
        return sympy.expand(sympy.summation(per, (k, 0, sympy.sympify(tokens) - 1)))

    def bytes_per_token(self) -> sympy.Expr:
        """Cache bytes one cached token of one sequence takes (all layers, key and value)."""
        t = symbol("t")
        return sympy.expand(self.kv_cache_bytes.subs({t: 1, P: 1}))

    def kv_blocks(self, budget: int | str, block_size: int = 16) -> int:
        """Paged-cache blocks of ``block_size`` tokens that fit in ``budget`` bytes, as vLLM lays them out."""
        per_block = int(self.bytes_per_token()) * block_size
        return int(parse_bytes(budget)) // per_block

    def _largest(self, budget: int | str, symbol_: sympy.Symbol, fixed: dict) -> int:
        """Largest value of ``symbol_`` (≥ 1) whose decode-step peak fits in ``budget``, 0 if none."""
        return max_batch_size(sympy.sympify(self.decode_peak_bytes).subs(fixed), budget, symbol_)

    def max_batch(self, budget: int | str, context: int) -> int:
        """Most sequences with ``context`` cached tokens whose decode step (weights, cache and its
        activation peak) fits in ``budget`` bytes."""
        return self._largest(budget, symbol("t"), {P: context})

    def max_context(self, budget: int | str, batch: int) -> int:
        """Most cached tokens per sequence for ``batch`` sequences whose decode step fits in ``budget``."""
        if P not in sympy.sympify(self.decode_peak_bytes).free_symbols:
            raise SymcxError("the decode step's memory does not grow with the context (a sliding window?): "
                             "any context fits once one token does")
        return self._largest(budget, P, {symbol("t"): batch})

    def at(self, **values: int) -> dict[str, sympy.Expr]:
        """Every figure evaluated at ``t``, ``L``, ``P``, ``G`` (positive integers; those not given stay symbols).

        Raises
        ------
        SymcxError
            For an unknown name or a value that is not a positive integer (a cache of 0 tokens
            has no decode step; a prompt of 0 tokens no prefill).
        """
        names = {"t": symbol("t"), "L": L, "P": P, "G": G}
        for name, value in values.items():
            if name not in names:
                raise SymcxError(f"unknown symbol {name!r}; inference figures are in t, L, P and G")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SymcxError(f"{name} must be a positive integer, not {value!r}")
        at = {names[k]: v for k, v in values.items()}
        figures = {"prefill_flops": self.prefill_flops, "decode_flops": self.decode_flops,
                   "kv_cache_bytes": self.kv_cache_bytes, "generate_flops": self.generate_flops(),
                   "decode_peak_bytes": self.decode_peak_bytes}
        return {k: sympy.sympify(v).subs(at) for k, v in figures.items()}


def inference(model: torch.nn.Module, prompt_ids: torch.Tensor, *, strict: bool = False) -> Inference:
    """Trace the prefill and one decode step of ``model`` with its own KV cache.

    Parameters
    ----------
    model : torch.nn.Module
        A causal model whose forward takes token ids and ``use_cache=True`` and returns its cache
        (``cache``/``past_key_values``, as Hugging Face decoders do); it may live on ``meta``.
    prompt_ids : Tensor
        Example ``(batch, length)`` integer ids; their sizes do not matter (``t``, ``L``, ``P``
        are symbolic).

    Raises
    ------
    SymcxError
        The model returns no cache, or is not causal (an encoder such as BERT).
    """
    if not isinstance(model, torch.nn.Module):
        raise SymcxError(f"inference() needs a torch.nn.Module, not {type(model).__name__}")
    steps, unsupported = [], Counter()
    for trace in (trace_prefill(model, prompt_ids), trace_decode(model, prompt_ids)):
        step = build_step(trace)
        unsupported += annotate_costs(step.nodes, strict=strict)
        steps.append(step)
    return Inference(steps[0], steps[1], unsupported)

