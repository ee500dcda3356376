"""Exports of an :class:`~symcx.analysis.Analysis`: LaTeX, Markdown, JSON and terminal tables.

Each format is one module that prints one :class:`~symcx.export.report.Report`
(:func:`~symcx.export.report.build_report`), so the formats cannot disagree. Importing this
package registers ``latex``, ``markdown`` and ``json`` with :mod:`symcx.printing`, which
``Analysis.to_latex()`` and its siblings call.

>>> import torch, symcx
>>> from symcx.export import to_markdown
>>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
>>> "| Forward FLOPs | `24*t` |" in to_markdown(a)
True
"""

from __future__ import annotations

from ..printing import register_printer
from .json import to_json
from .latex import to_latex
from .markdown import to_markdown
from .report import Report, build_report

__all__ = ["to_latex", "to_markdown", "to_json", "Report", "build_report"]

register_printer("latex", to_latex)
register_printer("markdown", to_markdown)
register_printer("json", to_json)
