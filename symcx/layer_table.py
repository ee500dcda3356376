"""Per-layer rows as a table people read: ``Analysis.layers``, the module tree, readable units.

:class:`LayerTable` is the list ``Analysis.layers`` returns: still a list of
:class:`~symcx.rows.LayerRow` (indexing, ``len``, iteration), printed as a plain-text table in
Python and as HTML or Markdown in Jupyter. :func:`tree_entries` groups rows by module-path
prefix, fvcore-style: every block (``layer1``, ``layer1.0``) gets a row of its descendants'
totals, and ``depth`` folds the tree as torchinfo's ``depth`` does. :func:`human_integer`
writes counts as ``21.2M`` and bytes as ``9.08MiB``, for the terminal and Markdown tables.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sympy

from .rows import LayerRow

__all__ = ["LayerTable", "Entry", "tree_entries", "human_integer", "share"]

ZERO = sympy.Integer(0)
_COUNT_UNITS = ("", "K", "M", "G", "T", "P")
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_integer(value: int, unit: str = "count") -> str:
    """``value`` to three significant digits with a unit prefix: counts in powers of 1000, bytes of 1024.

    Counts below 1000 and bytes below 1024 print exactly; negative values keep their sign.

    Examples
    --------
    >>> human_integer(21233664), human_integer(999), human_integer(1_199_882)
    ('21.2M', '999', '1.20M')
    >>> human_integer(9_523_800, "bytes"), human_integer(512, "bytes"), human_integer(86_528, "bytes")
    ('9.08MiB', '512B', '84.5KiB')
    """
    base, units = (1024, _BYTE_UNITS) if unit == "bytes" else (1000, _COUNT_UNITS)
    sign, rest = ("-" if value < 0 else ""), abs(int(value))
    k = 0
    while rest >= base ** (k + 1) and k + 1 < len(units):
        k += 1
    if k == 0:
        return f"{sign}{rest}{units[0]}" if rest else "0"
    scaled = rest / base**k
    if scaled >= 999.5 and (base == 1000 or round(scaled) >= 1024) and k + 1 < len(units):
        k, scaled = k + 1, rest / base ** (k + 1)  # 999,999 -> 1.00M, not 1000K
    text = f"{round(scaled)}" if scaled >= 99.95 else f"{scaled:.1f}" if scaled >= 9.995 else f"{scaled:.2f}"
    return f"{sign}{text}{units[k]}"


def share(part: Any, whole: Any, values: Mapping[sympy.Symbol, Any]) -> str:
    """``part / whole`` as a percentage at ``values`` (``"12.3%"``), "" where it is not a number.

    >>> t = sympy.Symbol("t")
    >>> share(3 * t, 12 * t + 4, {t: 8}), share(0, 5, {}), share(1, 0, {}), share(1, 10**4, {})
    ('24.0%', '0.0%', '', '<0.1%')
    """
    whole = sympy.sympify(whole).subs(values)
    part = sympy.sympify(part).subs(values)
    if not (whole.is_Number and part.is_Number) or whole == 0:
        return ""
    percent = 100 * float(part) / float(whole)
    return "<0.1%" if 0 < percent < 0.05 else f"{percent:.1f}%"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of a module tree: a layer (``row`` set) or a block's totals (``row`` None).

    ``level`` is the number of dotted parts of ``name`` (``layer1.0.conv1``: 3); a block's
    figures are the sums over every row under it, ``rows`` counts them. ``trainable`` is the
    row's flag; a block's is False when one row under it is frozen, True when every row with
    parameters trains, None when none has parameters.
    """

    name: str
    level: int
    row: LayerRow | None
    params: sympy.Expr
    forward_flops: sympy.Expr
    backward_flops: sympy.Expr
    other_flops: sympy.Expr
    saved_bytes: sympy.Expr
    rows: int = 1
    trainable: bool | None = None

    @property
    def label(self) -> str:
        """The name's last part, indented two spaces per level below the top."""
        return "  " * (self.level - 1) + self.name.rsplit(".", 1)[-1]


def _entry(row: LayerRow) -> Entry:
    return Entry(row.name, row.name.count(".") + 1, row, row.params, row.forward_flops, row.backward_flops,
                 row.forward_other_flops + row.backward_other_flops, row.saved_bytes, trainable=row.trainable)


def _add(block: Entry, row: Entry) -> Entry:
    return dataclasses.replace(
        block, params=block.params + row.params, forward_flops=block.forward_flops + row.forward_flops,
        backward_flops=block.backward_flops + row.backward_flops, other_flops=block.other_flops + row.other_flops,
        saved_bytes=block.saved_bytes + row.saved_bytes, rows=block.rows + 1,
        trainable=row.trainable if block.trainable is None else block.trainable and row.trainable is not False)


def tree_entries(rows: Iterable[LayerRow], depth: int | None = None) -> list[Entry]:
    """The rows as a module tree: a totals line before each block's first row, folded at ``depth``.

    A block is a dotted prefix of some row's name (``layer1`` and ``layer1.0`` of
    ``layer1.0.conv1``); its totals add up every row under it, each once (fvcore's
    aggregation). Lines deeper than ``depth`` are left out, their figures still in the
    block that holds them.

    Examples
    --------
    >>> from symcx.rows import LayerRow
    >>> def row(name, params):
    ...     return LayerRow(name, "Linear", (), (), 2 * params, 4 * params, 0, 0, params, 0, 0, ())
    >>> rows = [row("stem", 10), row("body.0.fc", 20), row("body.1.fc", 30)]
    >>> [(e.label, e.params, e.rows) for e in tree_entries(rows)]
    [('stem', 10, 1), ('body', 50, 2), ('  0', 20, 1), ('    fc', 20, 1), ('  1', 30, 1), ('    fc', 30, 1)]
    >>> [(e.label, e.params) for e in tree_entries(rows, depth=1)]
    [('stem', 10), ('body', 50)]
    """
    order: list[str] = []
    entries: dict[str, Entry] = {}
    for row in rows:
        leaf = _entry(row)
        parts = row.name.split(".")
        for level in range(1, len(parts)):
            prefix = ".".join(parts[:level])
            key = prefix + "."  # a block and a row of the same name stay apart
            if key not in entries:
                order.append(key)
                entries[key] = Entry(prefix, level, None, ZERO, ZERO, ZERO, ZERO, ZERO, rows=0)
            entries[key] = _add(entries[key], leaf)
        order.append(row.name + "#" + str(len(order)))
        entries[order[-1]] = leaf
    return [entries[k] for k in order if depth is None or entries[k].level <= depth]


class LayerTable(list):
    """A list of :class:`~symcx.rows.LayerRow` that prints as a table (Python, Jupyter).

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), torch.randn(2, 4))
    >>> layers = a.layers
    >>> len(layers), layers[0].name, isinstance(layers, list)
    (3, '0', True)
    >>> print(repr(layers).splitlines()[0])
    Layer  Type    Output  Params  Forward FLOPs  Backward FLOPs  Other FLOPs  Saved bytes
    """

    _HEAD = ("Layer", "Type", "Output", "Params", "Forward FLOPs", "Backward FLOPs", "Other FLOPs", "Saved bytes")

    def _cells(self) -> list[tuple[str, ...]]:
        def shape(row: LayerRow) -> str:
            return "×".join(str(d) for d in row.out_shape) if row.out_shape else "scalar"

        return [(r.name, r.type, shape(r), str(r.params), str(r.forward_flops), str(r.backward_flops),
                 str(sympy.sympify(r.forward_other_flops + r.backward_other_flops)), str(r.saved_bytes))
                for r in self]

    def __repr__(self) -> str:
        """A plain-text table, one line per row, numbers right-aligned."""
        lines = [self._HEAD, *self._cells()]
        widths = [max(len(line[i]) for line in lines) for i in range(len(self._HEAD))]
        return "\n".join(
            "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
            for line in lines)

    def _repr_markdown_(self) -> str:
        """A GitHub Markdown table (Jupyter)."""
        def row(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        return "\n".join([row(self._HEAD), "| " + " | ".join([":--"] * 3 + ["--:"] * 5) + " |",
                          *map(row, self._cells())]) + "\n"

    def _repr_html_(self) -> str:
        """An HTML table (Jupyter)."""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self._HEAD)
        body = "".join("<tr>" + "".join(
            f'<td style="text-align:{"left" if i < 3 else "right"}">{html.escape(c)}</td>' for i, c in enumerate(cells))
            + "</tr>" for cells in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
