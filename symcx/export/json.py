"""A :class:`~symcx.export.report.Report` as JSON, schema ``symcx.analysis/1`` (docs/json-schema.md).

Every expression is a string that ``sympy.sympify`` reads back, given the document's
symbols as ``locals`` (``N`` would otherwise be sympy's ``N()`` function)::

    syms = {s: sympy.Symbol(s, positive=True, integer=True) for s in doc["symbols"]}
    sympy.sympify(doc["totals"]["forward_flops"], locals=syms)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import sympy

from ..symbols import N, n
from .report import AssumptionNote, DeviationNote, Figure, MemorySection, Report, RouteNote, UncountedNote, build_report

if TYPE_CHECKING:
    from ..analysis import Analysis
    from ..rows import LayerRow

__all__ = ["SCHEMA", "CONVENTION", "to_json"]

#: The schema name written in every document; bumped on any incompatible change.
SCHEMA = "symcx.analysis/1"

#: What the document's figures count.
CONVENTION = ("flops: FlopCounterMode (1 multiply-add = 2 FLOPs; matmul, convolution, attention); "
              "other_flops: elementwise, norms, pooling, softmax, reductions; bytes: storage bytes")

_ROW_EXPRS = (
    "forward_flops",
    "backward_flops",
    "forward_other_flops",
    "backward_other_flops",
    "params",
    "bytes_out",
    "saved_bytes",
    "weights",
    "biases",
)

Leaf = Callable[[Any], Any]


def _str(expr: Any) -> str:
    return str(sympy.sympify(expr))


def _number(expr: Any) -> int | float | None:
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    if expr.is_Number:
        return float(expr)
    return None


def _render_LayerRow(row: LayerRow) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": row.name, "type": row.type, "ops": list(row.ops)}
    doc["in_shape"] = [_str(s) for s in row.in_shape]
    doc["out_shape"] = [_str(s) for s in row.out_shape]
    doc.update({key: _str(getattr(row, key)) for key in _ROW_EXPRS})
    doc["weight_shapes"] = [[_str(s) for s in shape] for shape in row.weight_shapes]
    doc["trainable"] = row.trainable
    doc["details"] = row.details
    doc["derivation"] = [[_str(f) for f in fs] for fs in row.derivation]
    doc["backward_derivation"] = [[_str(f) for f in fs] for fs in row.backward_derivation]
    doc["backward_terms"] = [{"label": label, "factors": [_str(f) for f in fs]} for label, fs in row.backward_terms]
    doc["notes"] = list(row.notes)
    return doc


def _figures(figures: tuple[Figure, ...], leaf: Leaf, evaluated: bool) -> dict[str, Any]:
    """``key: leaf(formula)``, or ``key: leaf(value)`` where ``evaluated``."""
    return {f.key: leaf(f.value if evaluated else f.formula) for f in figures}


def _render_MemorySection(mem: MemorySection | None, leaf: Leaf, evaluated: bool) -> dict[str, Any] | None:
    if mem is None:
        return None
    out = _figures(mem.figures, leaf, evaluated)
    out["by_layer"] = [{"name": m.name, **_figures(m.figures, leaf, evaluated)} for m in mem.by_layer]
    out["peak_by_dtype"] = {d: leaf(f.value) if evaluated else leaf(f.formula) for d, f in mem.by_dtype}
    out["peak_pieces"] = [{"node": p.node, "phase": p.phase, "layer": p.layer, "bytes": leaf(p.figure.value)
                           if evaluated else leaf(p.figure.formula)} for p in mem.pieces]
    if not evaluated:
        out.update(optimizer_name=mem.optimizer, peak_node=mem.peak_node, peak_layer=mem.peak_layer,
                   not_modelled=list(mem.not_modelled))
    return out


def _render_values(report: Report) -> dict[str, Any]:
    """The ``values`` section: every figure at ``report.at`` as a number, None where still symbolic."""
    return {
        "at": {str(k): _number(v) for k, v in report.at.items()},
        "totals": _figures(report.totals, _number, True),
        "training": _figures(report.training, _number, True),
        "memory": _render_MemorySection(report.memory, _number, True),
        "layers": [{"name": row.name, **{key: _number(getattr(row, key)) for key in _ROW_EXPRS}}
                   for row in (r.subs(report.at) for r in report.layers)],
    }


def _render_Report(report: Report) -> dict[str, Any]:
    names = {str(s) for f in report.totals + report.training for s in f.formula.free_symbols}
    names |= set(report.symbols)
    return {
        "schema": SCHEMA,
        "symbols": sorted(names),
        "hints": {str(s): int(v) for s, v in report.hints.items() if str(s) in names},
        "substituted": {str(s): _str(v) for s, v in report.substituted.items()},
        "route": report.route,
        "route_note": " ".join(note.text for note in report.notes_of(RouteNote)),
        "convention": CONVENTION,
        "assumptions": [_str(note.condition) for note in report.notes_of(AssumptionNote)],
        "totals": _figures(report.totals, _str, False),
        "training": _figures(report.training, _str, False),
        "big_o": {"step": _str(report.big_o.step.args[0]), "training": _str(report.big_o.training.args[0]),
                  "where": {str(k): _str(v) for k, v in report.big_o.where.items()}},
        "memory": _render_MemorySection(report.memory, _str, False),
        "layers": [_render_LayerRow(row) for row in report.layers],
        "unsupported": [{"op": u.op, "layer": u.layer, "count": u.count} for u in report.notes_of(UncountedNote)],
        "deviations": [note.text for note in report.notes_of(DeviationNote)],
        "values": _render_values(report),
    }


def to_json(
    analysis: Analysis,
    *,
    at: Mapping[str, Any] | None = None,
    epochs: Any = n,
    samples: Any = N,
    optimizer: str | None = None,
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

    Raises
    ------
    SymcxError
        ``at`` names a symbol the analysis does not have.

    Examples
    --------
    >>> import json, torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> doc = json.loads(to_json(a, at={"t": 64}))
    >>> doc["totals"]["forward_flops"], doc["values"]["totals"]["forward_flops"]
    ('24*t', 1536)
    """
    report = build_report(analysis, at=at, epochs=epochs, samples=samples, optimizer=optimizer)
    return json.dumps(_render_Report(report), indent=indent)
