"""What symcx predicts for a validation run, as formulas in ``t`` evaluated per batch size.

The FLOP and memory formulas come from the public :class:`~symcx.analysis.Analysis` API
alone (``forward_flops``, ``flop_counter_flops``, ``memory``), so they hold whichever route
the analysis took (one symbolic trace, or concrete traces interpolated). Memory figures are bytes *above the
baseline*, the baseline being what is live before a run starts (parameters, buffers and the
input batch), so that the prediction and the measurement count the same thing on every
device.
"""

from __future__ import annotations

import dataclasses

import sympy

from ..analysis import Analysis
from ..errors import SymcxError

__all__ = ["Formulas", "formulas"]


@dataclasses.dataclass(frozen=True)
class Formulas:
    """The formulas a sweep checks, each a sympy expression in ``t`` alone."""

    t: sympy.Symbol
    forward_flops: sympy.Expr
    backward_flops: sympy.Expr
    fcm_forward_flops: sympy.Expr
    fcm_backward_flops: sympy.Expr
    predicted_bytes: sympy.Expr
    baseline_bytes: sympy.Expr
    memory_model: str

    def at(self, batch: int) -> dict[str, int]:
        """Every formula evaluated at ``t = batch``, as Python ints."""
        out = {}
        for field in dataclasses.fields(self):
            expr = getattr(self, field.name)
            if isinstance(expr, sympy.Expr) and field.name != "t":
                out[field.name] = int(sympy.sympify(expr).subs(self.t, batch))
        return out

    def as_strings(self) -> dict[str, str]:
        """The formulas as sympy strings (for the JSON report)."""
        return {
            f.name: str(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in ("t", "memory_model")
        }


def _memory_formulas(a: Analysis, backward: bool) -> tuple[sympy.Expr, sympy.Expr, str]:
    """(peak bytes above the baseline, baseline bytes, a line naming the model used)."""
    mem = a.memory(optimizer="sgd", training=backward)
    baseline = mem.params + mem.buffers + mem.inputs
    if backward:
        return mem.peak - baseline, baseline, (
            "symcx.memory training-step peak (liveness over the joint graph; saved activations, "
            "temporaries, gradients), no optimizer state"
        )
    return mem.inference_peak - baseline, baseline, (
        "symcx.memory inference peak (forward ops, each value freed after its last reader)"
    )


def formulas(a: Analysis, backward: bool) -> Formulas:
    """The formulas to check for analysis ``a``; raises if they hold symbols other than ``t``.

    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> f = formulas(a, backward=True)
    >>> f.forward_flops, f.at(10)["forward_flops"]
    (24*t, 240)
    """
    t = a.symbols.get("t")
    if t is None:
        raise SymcxError("validation sweeps the batch size, but this analysis has no batch symbol t")
    mem, baseline, model = _memory_formulas(a, backward)
    f = Formulas(
        t=t,
        forward_flops=a.forward_flops,
        backward_flops=a.backward_flops if backward else sympy.Integer(0),
        fcm_forward_flops=a.flop_counter_flops("forward"),
        fcm_backward_flops=a.flop_counter_flops("backward") if backward else sympy.Integer(0),
        predicted_bytes=sympy.sympify(mem),
        baseline_bytes=sympy.sympify(baseline),
        memory_model=model,
    )
    extra = set().union(*(getattr(f, k.name).free_symbols for k in dataclasses.fields(f)
                          if isinstance(getattr(f, k.name), sympy.Expr) and k.name != "t")) - {t}
    if extra:
        raise SymcxError(
            f"validation needs formulas in t alone, but they also hold {sorted(map(str, extra))}; "
            f"analyze without symbolic dims or widths"
        )
    return f
