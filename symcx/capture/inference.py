"""Capture generation with the model's own cache: the prefill of L prompt tokens, and one decode step.

Both run in eval mode with no grad, under the same fake mode and ShapeEnv as a training trace.
The prefill records the model on ``(t, L)`` token ids and returns its cache. The decode step
first runs a prefill of ``P`` tokens *unrecorded* (so the cache is exactly what the model
builds: GQA, MQA, MLA and sliding windows come out of the model's code, not a config parser),
then records one token per sequence with that cache; the cache's tensors are the step's
``cache_*`` placeholders, with sizes in ``t`` and ``P``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import sympy
import torch

from .._torch import (
    DimDynamic,
    FakeTensorMode,
    ShapeEnv,
    StatelessSymbolicContext,
    enable_python_dispatcher,
    reparametrize_module,
    tree_leaves,
)
from ..errors import ShapeError, SymcxError, TraceError
from .naming import assumptions_of, name_symbols
from .records import Trace
from .kernels import EagerKernels
from .recorder import Recorder, module_tags
from .trace import _classify, _fake_params, _no_autocast_cache, _quiet_fake_tensor_log, _source_line

__all__ = ["trace_prefill", "trace_decode", "cache_tensors", "CACHE_PREFIX"]

#: Placeholders of the decode step that hold the cache it reads.
CACHE_PREFIX = "cache_"


def cache_tensors(cache: Any, depth: int = 5) -> list[torch.Tensor]:
    """Every tensor held by a cache object (HF ``DynamicCache``/``StaticCache`` layers, tuples of
    (key, value), or a model's own object), in attribute order, each once."""
    seen: set[int] = set()
    out: list[torch.Tensor] = []

    def walk(obj: Any, level: int) -> None:
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                out.append(obj)
            return
        if level > depth or id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return
        seen.add(id(obj))
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else (
            vars(obj).values() if hasattr(obj, "__dict__") else ())
        for item in items:
            walk(item, level + 1)

    walk(cache, 0)
    return out


def _cache_of(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None) if not isinstance(out, dict) else out.get(name)
        if value is not None:
            return value
    if isinstance(out, tuple) and len(out) > 1:
        return out[1]
    return None


def _cache_keyword(model: torch.nn.Module) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _ids(mode: FakeTensorMode, example: torch.Tensor, length_hint: int) -> tuple[torch.Tensor, dict]:
    """Fake ``(t, length)`` token ids with both dims symbolic, and their symbols' names."""
    if example.dim() != 2 or example.is_floating_point():
        raise ShapeError(f"prompt ids must be a (batch, length) integer tensor, not {tuple(example.shape)} {example.dtype}")
    real = torch.zeros(8, length_hint, dtype=example.dtype, device=example.device)  # sizes away from 0/1
    ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.DYNAMIC])
    fake = mode.from_tensor(real, symbolic_context=ctx)
    return fake, {fake.shape[0].node.expr: "t", fake.shape[1].node.expr: "L"}


@contextlib.contextmanager
def _inference(model: torch.nn.Module, mode: FakeTensorMode, tensors: dict) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for ctx in (_quiet_fake_tensor_log(), reparametrize_module(model, tensors), mode,
                        enable_python_dispatcher(), EagerKernels(), torch.no_grad(), _no_autocast_cache()):
                stack.enter_context(ctx)
            yield
    except (TraceError, ShapeError, SymcxError):
        raise
    except Exception as err:  # anything torch raises while tracing the user's model
        cls, cause = _classify(err)
        where = _source_line(err)
        raise cls(f"cannot trace {type(model).__name__}: {cause}" + (f"\n  at {where}" if where else "")) from err
    finally:
        model.train(was_training)


def _finish(model: torch.nn.Module, recorder: Recorder, shape_env: ShapeEnv, syms: dict, param_nodes: dict,
            buffer_nodes: dict, input_nodes: list[str]) -> Trace:
    rename, user, hints = name_symbols(shape_env, syms, [], None)
    return Trace(
        graph=recorder.graph, rename=rename, shape_env=shape_env, user_symbols=user, hints=hints,
        param_nodes=param_nodes, buffer_nodes=buffer_nodes, input_nodes=input_nodes, trainable=frozenset(),
        assumptions=assumptions_of(shape_env, rename, user), dropped_guards=[],
        module_types={name: type(mod).__name__ for name, mod in model.named_modules()},
        leaf_modules=frozenset(name for name, mod in model.named_modules() if not any(True for _ in mod.children())),
    )


def _setup(model: torch.nn.Module):
    shape_env = ShapeEnv(duck_shape=False)
    mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=False)
    params, buffers, _ = _fake_params(mode, model, None)
    recorder = Recorder(mode)
    param_nodes = {recorder.placeholder(f"param_{k}", v).name: name for k, (name, v) in enumerate(params.items())}
    buffer_nodes = {recorder.placeholder(f"buffer_{k}", v).name: name for k, (name, v) in enumerate(buffers.items())}
    return shape_env, mode, {**params, **buffers}, recorder, param_nodes, buffer_nodes


def trace_prefill(model: torch.nn.Module, prompt_ids: torch.Tensor, *, length_hint: int = 12) -> Trace:
    """The forward of ``t`` prompts of ``L`` tokens with the cache on (``use_cache=True``)."""
    shape_env, mode, tensors, recorder, param_nodes, buffer_nodes = _setup(model)
    ids, syms = _ids(mode, prompt_ids, length_hint)
    with _inference(model, mode, tensors):
        input_nodes = [recorder.placeholder("input_0", ids).name]
        with recorder, module_tags(model, recorder):
            out = model(ids, use_cache=True)
        cache = _cache_of(out)
        if cache is None:
            raise SymcxError(f"{type(model).__name__} returned no cache (no `cache`/`past_key_values` in its "
                             "output with use_cache=True): inference needs a causal model with a KV cache "
                             "(an encoder such as BERT has no decode step)")
        recorder.output([x for x in tree_leaves(getattr(out, "logits", out)) if isinstance(x, torch.Tensor)]
                        + cache_tensors(cache))
    return _finish(model, recorder, shape_env, syms, param_nodes, buffer_nodes, input_nodes)


def trace_decode(model: torch.nn.Module, prompt_ids: torch.Tensor, *, length_hint: int = 12) -> Trace:
    """One decode step: one new token per sequence after ``P`` cached tokens (the cache built by an
    unrecorded prefill of ``P`` tokens)."""
    shape_env, mode, tensors, recorder, param_nodes, buffer_nodes = _setup(model)
    ids, syms = _ids(mode, prompt_ids, length_hint)
    syms = {s: ("P" if name == "L" else name) for s, name in syms.items()}
    with _inference(model, mode, tensors):
        with Recorder(mode):  # not kept: it only makes the model's own constants fake, as the real one does
            cache = _cache_of(model(ids, use_cache=True))
        if cache is None:
            raise SymcxError(f"{type(model).__name__} returned no cache: decoding needs a causal model with a KV "
                             "cache (an encoder such as BERT has no decode step)")
        cached = cache_tensors(cache)
        input_nodes = [recorder.placeholder(f"{CACHE_PREFIX}{k}", x).name for k, x in enumerate(cached)]
        step = ids[:, -1:]
        input_nodes.append(recorder.placeholder("input_0", step).name)
        with recorder, module_tags(model, recorder):
            out = model(step, use_cache=True, **{_cache_keyword(model): cache})
        recorder.output([x for x in tree_leaves(getattr(out, "logits", out)) if isinstance(x, torch.Tensor)]
                        + cache_tensors(_cache_of(out)))
    if not any(isinstance(s, sympy.Symbol) for s in syms):
        raise TraceError("the decode step has no symbolic length")
    return _finish(model, recorder, shape_env, syms, param_nodes, buffer_nodes, input_nodes)
