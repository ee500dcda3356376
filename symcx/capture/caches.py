"""Keep the trace apart from the caches in the model's own code (``functools.lru_cache``).

A cached helper that returns a tensor (BEiT's ``generate_relative_position_index``) would hand
a fake tensor made during the trace to the next real run, and a real tensor from an earlier real
run to the trace. :func:`isolated_caches` clears, after the trace, every cache of the model's
code that the trace filled; a real tensor it met before is faked by the recorder as a constant.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["model_caches", "isolated_caches"]


def _is_cache(obj: Any) -> bool:
    """An ``lru_cache``/``cache`` wrapper: it can report and clear its entries."""
    return callable(getattr(obj, "cache_info", None)) and callable(getattr(obj, "cache_clear", None))


def _caches_in(obj: Any, found: dict[int, Any], depth: int = 0) -> None:
    """The caches ``obj`` is, wraps (``__wrapped__``), binds (a static or class method) or closes
    over (a decorator's inner function, as transformers' ``compile_compatible_method_lru_cache``)."""
    if depth > 3:
        return
    if _is_cache(obj):
        found.setdefault(id(obj), obj)
    inner = [getattr(obj, "__wrapped__", None), getattr(obj, "__func__", None)]
    inner += [_cell_value(cell) for cell in getattr(obj, "__closure__", None) or ()]
    for sub in inner:
        if callable(sub) and sub is not obj:
            _caches_in(sub, found, depth + 1)


def _cell_value(cell: Any) -> Any:
    """A closure cell's value; None for an empty cell."""
    try:
        return cell.cell_contents
    except ValueError:
        return None


def model_caches(model: torch.nn.Module) -> list[Any]:
    """The caches in the classes of ``model``'s modules and in the globals of their source modules.

    Torch's own modules are left out (their caches hold no tensors of the model).

    Examples
    --------
    >>> import functools, torch
    >>> class Cached(torch.nn.Module):
    ...     @staticmethod
    ...     @functools.lru_cache
    ...     def index(n):
    ...         return torch.arange(n)
    >>> [cache.__name__ for cache in model_caches(Cached())]
    ['index']
    """
    found: dict[int, Any] = {}
    seen_modules: set[str] = set()
    for cls in {c for mod in model.modules() for c in type(mod).__mro__}:
        if cls.__module__.split(".")[0] in ("torch", "builtins"):
            continue
        for value in vars(cls).values():
            _caches_in(value, found)
        if cls.__module__ not in seen_modules:
            seen_modules.add(cls.__module__)
            module = sys.modules.get(cls.__module__)
            for value in vars(module).values() if module is not None else ():
                if inspect.isfunction(value) or _is_cache(value):
                    _caches_in(value, found)
    return list(found.values())


@contextlib.contextmanager
def isolated_caches(model: torch.nn.Module) -> Iterator[None]:
    """Clear, on the way out, every cache of ``model``'s code that the trace added entries to.

    A miss while tracing stored a fake tensor: the whole cache goes (``lru_cache`` cannot drop
    one entry), so the next real run computes it again.
    """
    misses = [(cache, cache.cache_info().misses) for cache in model_caches(model)]
    try:
        yield
    finally:
        for cache, before in misses:
            if cache.cache_info().misses != before:
                cache.cache_clear()
