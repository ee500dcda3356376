"""Fewer passes of Python's cycle collector while symcx traces and walks a step.

A trace makes hundreds of thousands of objects that live as long as the analysis (fx nodes,
sympy expressions, snapshots, records). With the default thresholds (a young pass every 700
allocations) the collector walks them again and again, and each full pass walks every object
alive before the trace too: together 10–25 % of a deep model's analysis (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["fewer_collections", "THRESHOLDS"]

#: The collector's thresholds while symcx works (at least these): a young pass per 50,000 net
#: allocations. Cyclic garbage is still collected, later.
THRESHOLDS = (50_000, 50, 100)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """The objects alive before kept out of the collector's passes (``gc.freeze``) and its
    thresholds raised to :data:`THRESHOLDS`, both restored after. Left as they are when the
    caller froze objects, turned the collector off or set a threshold of 0 (no automatic passes).

    >>> import gc
    >>> before = gc.get_threshold()
    >>> with fewer_collections():
    ...     gc.get_threshold()[0] >= 50_000
    True
    >>> gc.get_threshold() == before
    True
    """
    old = gc.get_threshold()
    if gc.get_freeze_count() or not gc.isenabled() or old[0] == 0:
        yield
        return
    gc.freeze()
    gc.set_threshold(*(max(a, b) for a, b in zip(old, THRESHOLDS)))
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
