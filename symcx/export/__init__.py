"""Exports of an :class:`~symcx.analysis.Analysis`: LaTeX, Markdown and JSON.

Each format is one module with one public function; every one shows the same sections
(:func:`symcx.export.json.report`), so the formats cannot disagree.

>>> import torch, symcx
>>> from symcx.export import to_markdown
>>> a = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4))
>>> "| Forward FLOPs | `24*t` |" in to_markdown(a)
True
"""

from __future__ import annotations

from .json import to_json
from .latex import to_latex
from .markdown import to_markdown

__all__ = ["to_latex", "to_markdown", "to_json"]
