"""Which of a module's plain attributes its code reads while it runs: block reuse's test for state
that differs between otherwise identical blocks.

Hugging Face gives every decoder layer its ``layer_idx``; whether a layer's ops depend on it is
a question of its code, not of its name (GPT-2 and Llama read it only to update a KV cache,
Gemma-2 picks sliding or global attention with it). While the first call of a block runs, each
of its modules is given a subclass of its own class whose ``__getattribute__`` notes reads of
the attributes that differ among the block's twins (reading ``__dict__`` itself, as ``vars()``
does, counts as reading them all, except in ``nn.Module``'s own ``__getattr__``/``__setattr__``,
which read only its parameters, buffers and submodules there), and the class is given back afterwards
(FSDP2 swaps a module's class the same way). A class that cannot be swapped counts as reading
every watched attribute. A later call whose
values equal the first call's on every attribute it read runs the same code: every value its
code reads is then the same. See docs/performance.md ("Block reuse").
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["reads_logged"]

#: Each class's logging subclass, made once.
_SUBCLASSES: dict[type, type] = {}
#: ``nn.Module``'s own attribute methods: they read ``__dict__`` for its parameters, buffers and
#: submodules only (every ``self.linear`` goes through ``__getattr__``), not for other attributes.
_MODULE_OWN = frozenset(f.__code__ for f in (torch.nn.Module.__getattr__, torch.nn.Module.__setattr__,
                                             torch.nn.Module.__delattr__))
#: id of a watched module -> (the attribute names watched, the names read so far).
_WATCH: dict[int, tuple[set[str], set[str]]] = {}


def _logging_class(cls: type) -> type:
    """``cls`` with a ``__getattribute__`` that notes reads of a watched module's watched attributes."""
    sub = _SUBCLASSES.get(cls)
    if sub is not None:
        return sub
    base = cls.__getattribute__

    def __getattribute__(self: Any, name: str) -> Any:
        watch = _WATCH.get(id(self))
        if watch is not None:
            if name in watch[0]:
                watch[1].add(name)
            elif name == "__dict__" and sys._getframe(1).f_code not in _MODULE_OWN:
                watch[1].update(watch[0])
        return base(self, name)

    sub = _SUBCLASSES[cls] = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__,
                                                         "__module__": cls.__module__,
                                                         "__qualname__": cls.__qualname__})
    return sub


@contextlib.contextmanager
def reads_logged(mod: torch.nn.Module, watched: Mapping[str, frozenset[str]]) -> Iterator[dict[str, set[str]]]:
    """While the block runs, the attributes of ``watched`` (submodule path relative to ``mod`` ->
    names) that its code reads, by submodule path; every class given back on the way out.

    >>> import torch
    >>> lin = torch.nn.Linear(2, 2)
    >>> lin.tag = 3
    >>> with reads_logged(lin, {"": frozenset({"tag"})}) as read:
    ...     _ = lin(torch.ones(2)), lin.tag
    >>> read, type(lin) is torch.nn.Linear
    ({'': {'tag'}}, True)
    """
    subs = dict(mod.named_modules(remove_duplicate=False))
    read: dict[str, set[str]] = {rel: set() for rel in watched}
    swapped: list[tuple[torch.nn.Module, type]] = []
    try:
        for rel, names in watched.items():
            sub = subs[rel]
            if id(sub) in _WATCH:  # one module under two names: one log
                _WATCH[id(sub)][0].update(names)
                read[rel] = _WATCH[id(sub)][1]
                continue
            cls = type(sub)
            try:
                sub.__class__ = _logging_class(cls)
            except TypeError:  # a class that cannot be subclassed or swapped: count its watched names as read
                read[rel].update(names)
                continue
            _WATCH[id(sub)] = (set(names), read[rel])
            swapped.append((sub, cls))
        yield read
    finally:
        for sub, cls in swapped:
            sub.__class__ = cls
            _WATCH.pop(id(sub), None)
