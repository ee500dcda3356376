"""The hook between :class:`~symcx.analysis.Analysis` and its exporters, which import it.

``Analysis.to_latex()`` and its siblings call :func:`render`; :mod:`symcx.export`
registers its functions here with :func:`register_printer` when it is imported, so that
nothing below the exporters imports them. This module imports nothing of symcx but its
errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import SymcxError

__all__ = ["register_printer", "render"]

_PRINTERS: dict[str, Callable[..., str]] = {}


def register_printer(fmt: str, fn: Callable[..., str]) -> None:
    """Make ``fn(obj, **settings)`` the printer of format ``fmt`` (replacing any before it).

    Examples
    --------
    >>> import torch, symcx
    >>> from symcx.export.markdown import to_markdown
    >>> register_printer("markdown", to_markdown)  # what importing symcx.export does
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> render("markdown", a, title="Linear").splitlines()[0]
    '## Linear'
    """
    _PRINTERS[fmt] = fn


def render(fmt: str, obj: Any, **settings: Any) -> str:
    """``obj`` printed in format ``fmt`` by its registered printer.

    Raises
    ------
    SymcxError
        No printer is registered for ``fmt``.

    Examples
    --------
    >>> import torch, symcx, symcx.export
    >>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
    >>> render("markdown", a).splitlines()[0]
    '## symcx analysis'
    >>> render("yaml", a)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    symcx.errors.SymcxError: no printer for format 'yaml' (registered: json, latex, markdown); import symcx.export...
    """
    try:
        fn = _PRINTERS[fmt]
    except KeyError:
        known = ", ".join(sorted(_PRINTERS)) or "none"
        raise SymcxError(f"no printer for format {fmt!r} (registered: {known}); "
                         "import symcx.export, which registers latex, markdown and json") from None
    return fn(obj, **settings)
