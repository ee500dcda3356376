"""An :class:`~symcx.analysis.Analysis` as JSON, schema ``symcx.analysis/1`` (docs/json-schema.md).

Every expression is a string that ``sympy.sympify`` reads back, given the document's
symbols as ``locals`` (``N`` would otherwise be sympy's ``N()`` function)::

    syms = {s: sympy.Symbol(s, positive=True, integer=True) for s in doc["symbols"]}
    sympy.sympify(doc["totals"]["forward_flops"], locals=syms)

This module also defines :func:`report`, the totals, training, big-O and memory sections
that every export shows, so that the LaTeX, Markdown and JSON outputs cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sympy

from ..analysis import Analysis, LayerRow, big_o
from ..symbols import N, n, symbol
from ..errors import SymcxError

__all__ = ["SCHEMA", "TOTALS", "TRAINING", "MEMORY", "report", "backward_derivations", "to_json"]

#: The schema name written in every document; bumped on any incompatible change.
SCHEMA = "symcx.analysis/1"

#: Totals of one training step: key -> label.
TOTALS = {
    "forward_flops": "Forward FLOPs",
    "backward_flops": "Backward FLOPs",
    "step_flops": "Step FLOPs (forward + backward)",
    "forward_other_flops": "Other forward FLOPs",
    "backward_other_flops": "Other backward FLOPs",
    "params": "Parameters",
    "trainable_params": "Trainable parameters",
    "param_bytes": "Parameter bytes",
    "activation_bytes": "Activation bytes saved for backward",
}

#: Totals over training (:meth:`Analysis.training`): key -> label.
TRAINING = {
    "epochs": "Epochs",
    "samples": "Training samples",
    "steps_per_epoch": "Steps per epoch",
    "flops_per_step": "FLOPs per step",
    "flops_per_epoch": "FLOPs per epoch",
    "total_flops": "Training FLOPs",
    "other_flops_total": "Other training FLOPs",
}

#: Memory of one training step, in bytes (``Analysis.memory``): key -> label.
MEMORY = {
    "params": "Parameters",
    "buffers": "Buffers",
    "inputs": "Input batch",
    "grads": "Gradients",
    "optimizer": "Optimizer state",
    "activations": "Activations saved for backward",
    "peak": "Peak (training step)",
    "inference_peak": "Peak (inference)",
}

_LAYER_MEMORY = ("param_bytes", "grad_bytes", "saved_bytes")
_ROW_EXPRS = (
    "forward_flops",
    "backward_flops",
    "forward_other_flops",
    "backward_other_flops",
    "params",
    "bytes_out",
    "saved_bytes",
)


#: Settings every printer of a report takes, with their defaults.
REPORT_SETTINGS: dict[str, Any] = {
    "numbers": "separators",
    "digits": 3,
    "at": None,
    "epochs": n,
    "samples": N,
    "optimizer": "sgd",
}

#: Integer styles the printers offer.
NUMBERS = ("separators", "scientific", "plain")


def check_number_settings(settings: Mapping[str, Any]) -> None:
    """Refuse a ``numbers`` style or ``digits`` count the printers cannot honour."""
    if settings["numbers"] not in NUMBERS:
        raise ValueError(f"numbers must be one of {NUMBERS}, not {settings['numbers']!r}")
    if not isinstance(settings["digits"], int) or settings["digits"] < 1:
        raise ValueError(f"digits must be a positive int, not {settings['digits']!r}")


def scientific(value: int, digits: int) -> tuple[str, int] | None:
    """(mantissa, exponent) of ``value`` to ``digits`` significant digits, None below 10^(digits+1)."""
    if abs(value) < 10 ** (digits + 1):
        return None
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return mantissa, int(exponent)


def _memory(analysis: Analysis, optimizer: str) -> Any:
    """``analysis.memory(optimizer=...)``, or None where no memory formula exists for it.

    (The interpolation route has none when the peak moves between program points.)
    """
    try:
        return analysis.memory(optimizer=optimizer)
    except SymcxError:
        return None


def report(
    analysis: Analysis, *, epochs: Any = n, samples: Any = N, optimizer: str = "sgd"
) -> dict[str, Any]:
    """The sections every export shows, as sympy expressions.

    Parameters
    ----------
    analysis : Analysis
    epochs, samples : int or sympy expression
        Passed to :meth:`Analysis.training` (default the symbols ``n`` and ``N``).
    optimizer : str
        Passed to ``Analysis.memory``.

    Returns
    -------
    dict
        ``totals``, ``training`` (keyed as :data:`TOTALS` and :data:`TRAINING`), ``big_o``
        (``step`` and ``training``: the argument of ``O(...)``), and ``memory`` (keyed as
        :data:`MEMORY`, plus ``optimizer_name``, ``peak_node``, ``peak_layer`` and ``by_layer``)
        or None where this symcx has no ``Analysis.memory``.

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> r = report(a, epochs=2)
    >>> r["totals"]["step_flops"], r["training"]["total_flops"], r["big_o"]["training"]
    (48*t, 96*t*ceiling(N/t), N)
    """
    values = {k: v for k, v in analysis._values.items()}
    epochs = sympy.sympify(epochs).subs(values)
    samples = sympy.sympify(samples).subs(values)
    tr = analysis.training(epochs=epochs, samples=samples)
    training = {"epochs": epochs, "samples": samples}
    training.update({key: sympy.sympify(getattr(tr, key)).subs(values) for key in TRAINING if key not in training})
    memory = None
    mem = _memory(analysis, optimizer)
    if mem is not None:
        memory = {key: sympy.sympify(getattr(mem, key)) for key in MEMORY}
        memory.update(optimizer_name=optimizer, peak_node=mem.peak_node, peak_layer=mem.peak_layer)
        memory["by_layer"] = [{"name": m.name, **{k: sympy.sympify(getattr(m, k)) for k in _LAYER_MEMORY}}
                              for m in mem.by_layer]
    return {
        "totals": {key: sympy.sympify(getattr(analysis, key)) for key in TOTALS},
        "training": training,
        "big_o": {
            "step": big_o(analysis.step_flops).args[0],
            "training": big_o(training["total_flops"]).args[0],
        },
        "memory": memory,
    }


def backward_derivations(analysis: Analysis) -> dict[str, tuple[tuple[sympy.Expr, ...], ...]]:
    """Factors of every counted backward op, by layer (the forward ones are ``LayerRow.derivation``).

    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)), torch.randn(2, 4))
    >>> backward_derivations(a)["1"]
    ((2, t, 2, 3), (2, 2, t, 3))
    """
    G = analysis.graph
    out: dict[str, list[tuple[sympy.Expr, ...]]] = {}
    for name in sorted(G.nodes, key=lambda v: G.nodes[v]["order"]):
        data = G.nodes[name]
        cost = data.get("cost")
        if data["phase"] == "backward" and cost is not None and cost.factors:
            out.setdefault(data["layer"], []).extend(cost.factors)
    values = analysis._values
    return {
        layer: tuple(tuple(sympy.sympify(f).subs(values) if values else f for f in fs) for fs in factors)
        for layer, factors in out.items()
    }


def _str(expr: Any) -> str:
    return str(sympy.sympify(expr))


def _number(expr: Any) -> int | float | None:
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Number:
        return float(expr)
    return None


def _render_LayerRow(row: LayerRow, backward: tuple, leaf) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": row.name, "type": row.type, "ops": list(row.ops)}
    doc["out_shape"] = [leaf(s) for s in row.out_shape]
    doc.update({key: leaf(getattr(row, key)) for key in _ROW_EXPRS})
    doc["derivation"] = [[leaf(f) for f in fs] for fs in row.derivation]
    doc["backward_derivation"] = [[leaf(f) for f in fs] for fs in backward]
    doc["notes"] = list(row.notes)
    return doc


def _render_report(rep: dict[str, Any], leaf) -> dict[str, Any]:
    out = {
        "totals": {k: leaf(v) for k, v in rep["totals"].items()},
        "training": {k: leaf(v) for k, v in rep["training"].items()},
        "memory": None,
    }
    if rep["memory"] is not None:
        mem = rep["memory"]
        out["memory"] = {k: leaf(mem[k]) for k in MEMORY}
        out["memory"]["by_layer"] = [{"name": m["name"], **{k: leaf(m[k]) for k in _LAYER_MEMORY}}
                                     for m in mem["by_layer"]]
    return out


def _render_Analysis(
    analysis: Analysis, *, at: Mapping[str, Any] | None, epochs: Any, samples: Any, optimizer: str
) -> dict[str, Any]:
    rep = report(analysis, epochs=epochs, samples=samples, optimizer=optimizer)
    backward = backward_derivations(analysis)
    doc: dict[str, Any] = {"schema": SCHEMA}
    names = {str(s) for section in ("totals", "training") for e in rep[section].values()
             for s in sympy.sympify(e).free_symbols}
    names |= set(analysis.symbols)
    doc["symbols"] = sorted(names)
    doc["hints"] = {str(s): int(v) for s, v in analysis.hints.items() if str(s) in names}
    doc["substituted"] = {str(s): _str(v) for s, v in analysis._values.items()}
    doc["route"] = analysis.route
    doc["convention"] = ("flops: FlopCounterMode (1 multiply-add = 2 FLOPs; matmul, convolution, attention); "
                         "other_flops: elementwise, norms, pooling, softmax, reductions; bytes: storage bytes")
    doc["assumptions"] = [_str(a) for a in analysis.assumptions]
    rendered = _render_report(rep, _str)
    doc["totals"] = rendered["totals"]
    doc["training"] = rendered["training"]
    doc["big_o"] = {k: _str(v) for k, v in rep["big_o"].items()}
    doc["memory"] = rendered["memory"]
    if doc["memory"] is not None:
        doc["memory"].update({k: rep["memory"][k] for k in ("optimizer_name", "peak_node", "peak_layer")})
    doc["layers"] = [_render_LayerRow(row, backward.get(row.name, ()), _str) for row in analysis.layers]
    doc["unsupported"] = [
        {"op": op, "layer": layer, "count": count} for (op, layer), count in sorted(analysis.unsupported.items())
    ]
    doc["deviations"] = list(analysis.deviations)
    evaluated = analysis.subs(**at) if at else analysis
    at_values = {symbol(str(k)): sympy.sympify(v) for k, v in (at or {}).items()}
    rep_at = report(evaluated, epochs=sympy.sympify(epochs).subs(at_values),
                    samples=sympy.sympify(samples).subs(at_values), optimizer=optimizer)
    values = {"at": {str(k): _number(v) for k, v in at_values.items()}, **_render_report(rep_at, _number)}
    if doc["memory"] is None:
        values["memory"] = None
    values["layers"] = [
        {"name": row.name, **{key: _number(getattr(row, key)) for key in _ROW_EXPRS}} for row in evaluated.layers
    ]
    doc["values"] = values
    return doc


def to_json(
    analysis: Analysis,
    *,
    at: Mapping[str, Any] | None = None,
    epochs: Any = n,
    samples: Any = N,
    optimizer: str = "sgd",
    indent: int | None = 2,
) -> str:
    """The analysis as a JSON document of schema ``symcx.analysis/1``.

    Parameters
    ----------
    analysis : Analysis
    at : dict, optional
        Symbol values (``{"t": 64}``) at which ``values`` evaluates every figure; the
        formulas stay symbolic. Numbers already substituted with :meth:`Analysis.subs`
        show in ``values`` too.
    epochs, samples : int or sympy expression
        For the ``training`` section (default the symbols ``n`` and ``N``).
    optimizer : str
        For the ``memory`` section.
    indent : int or None
        Passed to :func:`json.dumps`.

    Returns
    -------
    str

    Examples
    --------
    >>> import json, torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> doc = json.loads(to_json(a, at={"t": 64}))
    >>> doc["totals"]["forward_flops"], doc["values"]["totals"]["forward_flops"]
    ('24*t', 1536)
    """
    doc = _render_Analysis(analysis, at=at, epochs=epochs, samples=samples, optimizer=optimizer)
    return json.dumps(doc, indent=indent)
