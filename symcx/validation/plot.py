"""PNG of a validation sweep: time and peak memory against batch size, measured vs predicted.

Uses matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so it
works headless and leaves a user's interactive backend alone.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..files import replace_atomically

if TYPE_CHECKING:  # for the annotation only: report imports this module, not the reverse
    from .report import Validation

__all__ = ["plot_validation", "fit_points"]


def fit_points(ys: list[float], measured: list[float]) -> tuple[list[float], bool]:
    """A fitted line's points as a log axis can show them, and whether any was raised.

    A fit with a negative intercept is below zero at small t (t = 1 on the seed net: the
    line ``1.1e-10·FLOPs - 45 ms``), which a log axis cannot draw: the line used to vanish
    there. Such points are drawn at a floor, half the smallest positive value among the
    fit and the measurements, so the line stays visible to the last size; the legend says so.

    Examples
    --------
    >>> fit_points([-0.037, 0.086, 0.48], [0.011, 0.135, 0.35])
    ([0.0055, 0.086, 0.48], True)
    """
    positive = [y for y in [*ys, *measured] if y > 0]
    floor = min(positive) / 2 if positive else 1.0
    return [y if y > 0 else floor for y in ys], any(y <= 0 for y in ys)


def _fit_label(label: str, raised: bool) -> str:
    return label + ("; ≤ 0 at small t, drawn at the floor" if raised else "")


def plot_validation(v: "Validation", path: str | os.PathLike) -> None:
    """Write ``v`` as a two-panel figure to ``path`` (written whole or not at all).

    The format follows the extension (``.png``, ``.pdf``, ``.svg``; PNG without one).

    Left: median time per run (bars from the first to the third quartile) and the fit
    ``slope·FLOPs(t) + intercept``. Right: measured peak bytes above the baseline, symcx's
    prediction, and the fit. Both axes are logarithmic, so sizes from 1 to thousands share a
    plot; where a fitted line is not positive (a negative intercept at small t) it is drawn at
    a floor below every measurement (:func:`fit_points`), so it never vanishes. Sizes that ran
    out of memory or failed are marked on the x axis.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install symcx[plot]``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'symcx[plot]'") from err

    ok = [r for r in v.sizes if r.status == "ok"]
    failed = [r for r in v.sizes if r.status != "ok"]
    ts = [r.batch_size for r in v.sizes]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_t, ax_m = fig.subplots(1, 2)
    phase = "forward+backward" if v.backward else "forward"
    fig.suptitle(f"symcx validate: {v.model}, {phase}, {v.device_name}")

    if ok:
        med = [r.time["median_s"] * 1e3 for r in ok]
        lo = [m - r.time["q1_s"] * 1e3 for m, r in zip(med, ok)]
        hi = [r.time["q3_s"] * 1e3 - m for m, r in zip(med, ok)]
        ax_t.errorbar([r.batch_size for r in ok], med, yerr=[lo, hi], fmt="o", capsize=3, label="measured median")
    if v.time_fit is not None:
        f = v.time_fit
        r2 = "-" if f.r2 is None else f"{f.r2:.4f}"
        ys, raised = fit_points([f.predict(r.predicted_flops) * 1e3 for r in v.sizes], med if ok else [])
        ax_t.plot(ts, ys, "-", label=_fit_label(f"fit: {f.slope:.2e} s/FLOP · FLOPs(t) {f.intercept * 1e3:+.2f} ms "
                                                f"(R² {r2})", raised))
    ax_t.set_title("time per run")
    ax_t.set_ylabel("ms")

    ax_m.plot(ts, [r.predicted_bytes / 2**20 for r in v.sizes], "s--", label="symcx predicted")
    if ok:
        ax_m.plot([r.batch_size for r in ok if r.peak_bytes is not None],
                  [r.peak_bytes / 2**20 for r in ok if r.peak_bytes is not None], "o", label="measured peak")
    if v.memory_fit is not None:
        f = v.memory_fit
        r2 = "-" if f.r2 is None else f"{f.r2:.4f}"
        peaks = [r.peak_bytes / 2**20 for r in ok if r.peak_bytes is not None]
        ys, raised = fit_points([f.predict(r.predicted_bytes) / 2**20 for r in v.sizes], peaks)
        ax_m.plot(ts, ys, "-", label=_fit_label(f"fit: {f.slope:.3f} · predicted {f.intercept / 2**20:+.2f} MiB "
                                                f"(R² {r2})", raised))
    ax_m.set_title("peak memory above parameters and input")
    ax_m.set_ylabel("MiB")

    for ax in (ax_t, ax_m):
        for r in failed:
            ax.axvline(r.batch_size, color="red", alpha=0.3, linestyle=":")
            ax.annotate(r.status.upper(), (r.batch_size, 0), xycoords=("data", "axes fraction"),
                        xytext=(2, 4), textcoords="offset points", color="red", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_xlabel("batch size t")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)

    ext = os.path.splitext(os.fspath(path))[1]
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format=ext[1:].lower() or "png", dpi=120))
