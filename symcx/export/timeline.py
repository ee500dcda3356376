"""The memory timeline of one training step as a picture: bytes held at every op, the peak marked.

The curve is :func:`symcx.memory.memory_timeline` at one batch size: the walk the peak is
taken from, so the marked top is ``Analysis.memory().peak`` at that size. Forward, loss,
backward and ``optimizer.step()`` are shaded apart. matplotlib's object API on an Agg canvas
(no pyplot), as :mod:`symcx.validation.plot` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sympy

from ..errors import SymcxError
from ..files import replace_atomically
from ..memory import memory_timeline
from ..symbols import t

if TYPE_CHECKING:
    from ..analysis import Analysis

__all__ = ["timeline_points", "plot_memory_timeline", "DEFAULT_BATCH"]

#: The batch size a timeline is drawn at when none is given.
DEFAULT_BATCH = 8
_PHASE_COLORS = {"forward": "tab:blue", "loss": "tab:purple", "backward": "tab:orange", "optimizer": "tab:green"}


def timeline_points(analysis: Analysis, *, batch: int = DEFAULT_BATCH, optimizer: str = "sgd",
                    values: Mapping[str, int] | None = None) -> list[tuple[str, str, str, int]]:
    """(node, layer, phase, bytes) at every allocating op of the step, at batch size ``batch``.

    Symbols other than ``t`` take ``values`` (by name), else their traced example sizes.

    Raises
    ------
    SymcxError
        The analysis was interpolated (no single traced program to walk), or a value is missing.

    Examples
    --------
    >>> import torch, symcx
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> max(b for *_, b in timeline_points(a, batch=8)) == a.subs(t=8).memory().peak  # 28·8 + 128
    True
    """
    if analysis.route != "symbolic":
        raise SymcxError("a memory timeline needs the symbolic route; this analysis was interpolated")
    names = dict(values or {})
    subs = {s: sympy.Integer(names.get(k, analysis.hints.get(s, DEFAULT_BATCH)))
            for k, s in analysis.symbols.items()}
    subs[t] = sympy.Integer(batch)
    step = analysis.step
    out = []
    for node, phase, nbytes in memory_timeline(step, optimizer=optimizer, values=subs):
        if not nbytes.is_Integer:
            raise SymcxError(f"cannot draw the timeline: bytes at {node} stay symbolic ({nbytes}); give every size")
        layer = step.node(node).layer if node in step else "optimizer"
        out.append((node, layer, phase, int(nbytes)))
    return out


def _draw(ax: Any, points: list[tuple[str, str, str, int]], title: str) -> None:
    """The step curve, phases shaded, the peak annotated with its node and layer."""
    xs = list(range(len(points)))
    ys = [b / 2**20 for *_, b in points]
    ax.step(xs, ys, where="post", color="black", linewidth=1.2)
    start = 0
    for i in range(1, len(points) + 1):
        if i == len(points) or points[i][2] != points[start][2]:
            phase = points[start][2]
            ax.axvspan(start - 0.5, i - 0.5, color=_PHASE_COLORS.get(phase, "grey"), alpha=0.15, label=phase)
            start = i
    top = max(xs, key=lambda i: ys[i])
    node, layer, _, nbytes = points[top]
    ax.plot([top], [ys[top]], "o", color="red")
    left = top > 0.6 * len(points)  # keep the label inside the axes
    ax.annotate(f"peak {nbytes / 2**20:.2f} MiB\n{node} ({layer})", (top, ys[top]), xytext=(-20 if left else 20, -30),
                textcoords="offset points", color="red", fontsize=8, ha="right" if left else "left",
                arrowprops={"arrowstyle": "->", "color": "red"})
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="upper left", fontsize=8)
    ax.set_xlabel("op of the step (program order)")
    ax.set_ylabel("bytes held (MiB)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)


def plot_memory_timeline(analysis: Analysis, path: str | os.PathLike, *, batch: int = DEFAULT_BATCH,
                         optimizer: str = "sgd", title: str | None = None) -> int:
    """Write the memory timeline of one training step to ``path`` (whole or not at all).

    Parameters
    ----------
    analysis : Analysis
        A symbolic analysis (:func:`symcx.analyze`).
    path : str or PathLike
        The file; its extension picks the format (png, pdf, svg).
    batch : int
        The batch size ``t`` to draw at (default 8).
    optimizer : str
        Whose state is resident (as :meth:`Analysis.memory`).
    title : str, optional
        The figure title.

    Returns
    -------
    int
        The peak in bytes (the top of the curve).

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install symcx[plot]``).
    SymcxError
        As :func:`timeline_points`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = timeline_points(analysis, batch=batch, optimizer=optimizer)
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    _draw(fig.add_subplot(), points, title or f"Memory of one training step at t = {batch} (optimizer: {optimizer})")
    replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))
    return max(b for *_, b in points)
