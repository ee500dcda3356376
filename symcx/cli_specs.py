"""Model specs and input shapes as the command line takes them.

A model spec is ``path/to/file.py:ClassOrFactory``, ``package.module:factory`` or a bundled
name from :data:`symcx.zoo.BUNDLED` (``mnist-cnn``, ``mlp``). A class or factory is called
with the keyword arguments of ``--model-args`` (none by default; see :func:`parse_model_args`),
and the product must be a ``torch.nn.Module``. An input
spec is sizes joined by ``x`` without the batch (``1x28x28``); several inputs are joined by
``,`` and an integer input takes a dtype suffix (``128:long``). Every failure is a
:class:`~symcx.errors.SymcxError` with a one-line message.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Any

import torch
from torch import nn

from .errors import SymcxError
from .zoo import BUNDLED

__all__ = ["load_model", "parse_model_args", "parse_input", "example_input", "parse_symbolic"]

#: Example size of the batch dim of a built input (the trace replaces it by the symbol t).
EXAMPLE_BATCH = 2
#: Where a dim name goes in an input of rank r, when the user does not say (--symbolic H,W).
_DEFAULT_DIMS = {"L": lambda r: 1, "C": lambda r: 1, "D": lambda r: r - 3, "H": lambda r: r - 2, "W": lambda r: r - 1}
_SHAPE = re.compile(r"^\d+(x\d+)*$")


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise SymcxError(f"file not found: {path}")
    name = "symcx_user_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SymcxError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # lets the file import its siblings
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise SymcxError(f"cannot import {path}: {type(err).__name__}: {err}") from err
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as err:
        raise SymcxError(f"cannot import module {name!r}: {type(err).__name__}: {err}") from err


def _value(text: str) -> Any:
    """A ``--model-args`` value: int, float, true/false/none (any case), else the string itself."""
    literal = {"true": True, "false": False, "none": None}
    if text.lower() in literal:
        return literal[text.lower()]
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``key=value`` pairs joined by ``,`` as keyword arguments for the model's class or factory.

    Values are ints, floats, ``true``/``false``/``none`` (any case) or else strings.

    Parameters
    ----------
    text : str or None
        ``name=resnet50,pretrained=false``; None or empty gives no arguments.

    Returns
    -------
    dict

    Raises
    ------
    SymcxError
        A pair without ``=``, a key that is not an identifier, or a key given twice.

    Examples
    --------
    >>> parse_model_args("name=resnet50,pretrained=false,width=0.5,depth=18,head=None")
    {'name': 'resnet50', 'pretrained': False, 'width': 0.5, 'depth': 18, 'head': None}
    """
    kwargs: dict[str, Any] = {}
    for pair in (p.strip() for p in (text or "").split(",")):
        if not pair:
            continue
        key, eq, value = (x.strip() for x in pair.partition("="))
        if not eq or not key.isidentifier():
            raise SymcxError(f"malformed --model-args item {pair!r}: expected key=value, e.g. depth=18,pretrained=false")
        if key in kwargs:
            raise SymcxError(f"--model-args gives {key!r} twice")
        kwargs[key] = _value(value)
    return kwargs


def _build(obj: Any, where: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    kwargs = kwargs or {}
    if isinstance(obj, nn.Module):
        if kwargs:
            raise SymcxError(f"{where} is a module instance, which takes no --model-args; name its class or a factory")
        return obj
    if inspect.isclass(obj) and not issubclass(obj, nn.Module):
        raise SymcxError(f"{where} is a class but not a torch.nn.Module subclass")
    if not callable(obj):
        raise SymcxError(f"{where} is a {type(obj).__name__}, not an nn.Module class or factory")
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        model = obj(**kwargs)
    except Exception as err:
        raise SymcxError(f"cannot build {where}({call}): {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise SymcxError(f"{where}() returned an object of type {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the model that ``spec`` names, calling it with ``kwargs``.

    Importing a file or module runs its code: only give specs you trust. No weights are
    ever unpickled here.

    Parameters
    ----------
    spec : str
        ``path/to/file.py:Name``, ``package.module:Name`` (``Name`` may be dotted), or a
        bundled name (``mnist-cnn``, ``mlp``).
    kwargs : dict, optional
        Keyword arguments for the class or factory (``--model-args``, :func:`parse_model_args`).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    SymcxError
        Unknown name, file not found, import failure, missing attribute, a product that
        is not an ``nn.Module``.

    Examples
    --------
    >>> type(load_model("mnist-cnn")).__name__
    'MnistCNN'
    >>> type(load_model("torch.nn:Identity")).__name__
    'Identity'
    >>> load_model("torch.nn:Linear", {"in_features": 4, "out_features": 2, "bias": False})
    Linear(in_features=4, out_features=2, bias=False)
    """
    if spec in BUNDLED:
        return _build(BUNDLED[spec], spec, kwargs)
    if ":" not in spec:
        if spec.endswith(".py"):
            raise SymcxError(f"{spec}: say which class or factory to use, as {spec}:Name")
        raise SymcxError(
            f"unknown model {spec!r}: give path/to/file.py:Name, package.module:Name, "
            f"or a bundled name ({', '.join(BUNDLED)})"
        )
    source, attr = spec.rsplit(":", 1)
    if not source or not attr:
        raise SymcxError(f"malformed model spec {spec!r}: expected SOURCE:Name")
    is_file = source.endswith(".py") or os.sep in source or "/" in source
    module = _import_file(source) if is_file else _import_module(source)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(k for k, v in vars(module).items()
                           if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module.__name__)
            hint = f" (nn.Module classes there: {', '.join(found)})" if found else ""
            raise SymcxError(f"{source} has no attribute {attr!r}{hint}")
        obj = getattr(obj, part)
    return _build(obj, f"{source}:{attr}", kwargs)


def parse_input(text: str) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Parse an input spec: shapes without the batch dim, each with its dtype.

    >>> parse_input("1x28x28")
    [((1, 28, 28), torch.float32)]
    >>> parse_input("3x32x32,128:long")
    [((3, 32, 32), torch.float32), ((128,), torch.int64)]
    """
    specs = []
    for part in text.split(","):
        shape, _, dtype_name = part.strip().partition(":")
        if not _SHAPE.match(shape) or any(int(s) == 0 for s in shape.split("x")):
            raise SymcxError(
                f"malformed --input {text!r}: expected positive sizes joined by 'x' without the batch, e.g. 1x28x28"
            )
        dtype = torch.float32
        if dtype_name:
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(dtype, torch.dtype):
                raise SymcxError(f"malformed --input {text!r}: unknown dtype {dtype_name!r} (e.g. long, float16)")
        specs.append((tuple(int(s) for s in shape.split("x")), dtype))
    return specs


def example_input(model: nn.Module, spec: str | None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """An example input: built from ``spec`` with a batch dim added, else ``model.example_input()``.

    >>> example_input(load_model("mlp"), "784").shape
    torch.Size([2, 784])
    >>> example_input(load_model("mnist-cnn"), None).shape
    torch.Size([2, 1, 28, 28])
    """
    if spec is None:
        make = getattr(model, "example_input", None)
        if not callable(make):
            raise SymcxError(f"{type(model).__name__} has no example_input(); give --input, e.g. --input 1x28x28")
        return make()
    tensors = []
    for shape, dtype in parse_input(spec):
        size = (EXAMPLE_BATCH, *shape)
        tensors.append(torch.randn(size, dtype=dtype) if dtype.is_floating_point else torch.zeros(size, dtype=dtype))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def parse_symbolic(text: str, example: Any) -> dict[str, int | tuple[int, int]]:
    """Map ``--symbolic`` names to input dims for :func:`symcx.analyze` (``dims=``).

    ``H``, ``W`` (and ``D``) are the last dims of the first input, ``L`` and ``C`` its dim 1;
    any name can be placed explicitly: ``NAME=DIM`` or ``NAME=INPUT:DIM``.

    >>> import torch
    >>> parse_symbolic("H,W", torch.randn(2, 1, 28, 28))
    {'H': 2, 'W': 3}
    >>> parse_symbolic("L=1:1", (torch.randn(2, 4), torch.randn(2, 8)))
    {'L': (1, 1)}
    """
    first = example[0] if isinstance(example, (tuple, list)) else example
    rank = first.dim() if isinstance(first, torch.Tensor) else 0
    dims: dict[str, int | tuple[int, int]] = {}
    for item in (x.strip() for x in text.split(",")):
        name, eq, where = item.partition("=")
        if not name.isidentifier():
            raise SymcxError(f"malformed --symbolic {text!r}: {item!r} is not NAME or NAME=DIM")
        if not eq:
            if name not in _DEFAULT_DIMS or rank < 2:
                raise SymcxError(f"--symbolic: cannot tell which dim {name!r} is; write {name}=DIM (e.g. {name}=2)")
            dim = _DEFAULT_DIMS[name](rank)
            if not 1 <= dim < rank:
                raise SymcxError(f"--symbolic: the input has rank {rank}, no dim for {name!r}; write {name}=DIM")
            dims[name] = dim
            continue
        match = re.fullmatch(r"(?:(\d+):)?(\d+)", where)
        if match is None:
            raise SymcxError(f"malformed --symbolic {text!r}: {item!r} should be NAME=DIM or NAME=INPUT:DIM")
        dims[name] = (int(match[1]), int(match[2])) if match[1] is not None else int(match[2])
    return dims
