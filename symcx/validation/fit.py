"""Ordinary least squares of a measurement against a prediction: ``y ≈ slope·x + intercept``.

Used by validation to say whether "time is linear in predicted FLOPs" (and memory in
predicted bytes) holds over a sweep: R² near 1 says it does; the slope is then seconds per
FLOP (1 / achieved FLOP/s) or measured bytes per predicted byte.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["Fit", "fit_line"]


@dataclasses.dataclass(frozen=True)
class Fit:
    """A least-squares line ``y = slope·x + intercept`` over ``n`` points, with its R²."""

    slope: float
    intercept: float
    r2: float | None
    n: int

    def predict(self, x: float) -> float:
        """The fitted ``y`` at ``x``."""
        return self.slope * x + self.intercept

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """Least-squares line through ``(xs, ys)``; None with fewer than 2 distinct ``xs``.

    R² is ``1 - SS_res / SS_tot``; it is None with only 2 points (any line fits them) and
    when every ``y`` is equal (``SS_tot = 0``).

    Examples
    --------
    >>> fit_line([1, 2, 3], [3, 5, 7])       # y = 2x + 1 exactly
    Fit(slope=2.0, intercept=1.0, r2=1.0, n=3)
    >>> f = fit_line([0, 1, 2, 3], [0, 1, 1, 2])
    >>> round(f.slope, 3), round(f.intercept, 3), round(f.r2, 3)
    (0.6, 0.1, 0.9)
    """
    if len(xs) != len(ys):
        raise ValueError(f"fit_line needs as many xs as ys, got {len(xs)} and {len(ys)}")
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 and n > 2 else None
    return Fit(slope=float(slope), intercept=float(intercept), r2=r2, n=n)
