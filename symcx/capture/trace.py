"""Capture one training step of a model as a joint forward+backward aten graph with symbolic sizes.

The route (see docs/design.md): the example input becomes a fake tensor under a
``FakeTensorMode`` with a ``ShapeEnv``; the batch dimension and any dimension the user names
are ``DimDynamic.DYNAMIC``. With fake parameters swapped into the model (as
``functional_call`` does), a :class:`~symcx.capture.recorder.Recorder` records every aten
call of the model, a scalar loss and ``torch.autograd.grad`` of it w.r.t. the trainable
parameters as one fx graph. The swap lasts through the backward, where activation
checkpointing runs a region's forward again.
"""

from __future__ import annotations

import contextlib
import linecache
import logging
import re
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sympy
import torch

from .._torch import (
    DimDynamic,
    FakeTensorMode,
    ShapeEnv,
    StatelessSymbolicContext,
    conv_layout_unguarded,
    eager_dropout_kernels,
    eager_lstm_kernels,
    enable_python_dispatcher,
    reparametrize_module,
    symnode_ops_memoized,
    tree_flatten,
    tree_leaves,
    tree_unflatten,
)
from ..errors import ShapeError, SymcxError, TraceError
from .bounds import drop_guards
from .naming import WIDTH, assumptions_of, name_symbols
from .optim import Iteration, record_optimizer_step
from .precision import AS_GIVEN, autocast_forward
from .records import DimSpec, Trace
from .caches import isolated_caches
from .kernels import EagerKernels, eager_experts_hint
from .recorder import Recorder, grad_leaves, module_tags, outside_torch, tag_backward
from .replay_check import replay_mismatch
from .reuse import BlockReuse, Candidates, ReuseFallback, candidates, op_multiset, too_little_to_reuse

__all__ = ["Trace", "DimSpec", "trace_training_step", "trace_at", "default_loss", "BATCH_HINT"]

#: Default example value of the batch symbol: away from 0/1 specialization and kernel thresholds.
BATCH_HINT = 8


def _source_line(err: BaseException) -> str | None:
    """``file:line: code`` of the innermost frame outside torch and the tracer, if any."""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if outside_torch(frame.filename):
            code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
            return f"{frame.filename}:{frame.lineno}: {code}"
    return None


def _classify(err: BaseException, random_read: str | None = None) -> tuple[type, str]:
    """The symcx error class and a one-line cause for an exception raised while tracing.

    ``random_read``: where the model read the value of a random draw (the recorder's note).
    """
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else name
    data_dependent = "DataDependent" in name or "data-dependent" in text.lower() or "_local_scalar_dense" in text
    if data_dependent and random_read is not None:
        return TraceError, (
            "data-dependent control flow on a random draw: the model branches on a "
            "random value (LayerDrop: `if self.training and torch.rand([]) < p`), so one step has no fixed "
            "graph; set the probability to 0 (e.g. `layerdrop=0` in a Hugging Face config) or call "
            "analyze(..., train=False)"
        )
    if data_dependent:
        return TraceError, (
            "data-dependent control flow: the model branches on, or reads, a tensor's value "
            "(e.g. `if x.sum() > 0` or `.item()`), which a shape-only trace cannot follow"
        )
    shape_words = ("shape", "size", "mat1", "mat2", "expected input", "channels", "dimension", "reduction dim")
    if isinstance(err, (RuntimeError, ValueError, IndexError)) and any(w in text.lower() for w in shape_words):
        return ShapeError, f"the example input does not fit the model: {text}"
    return TraceError, f"{name}: {text}"


def default_loss(out: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in the output: the backward FLOPs do not depend on it."""
    leaves = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    if not leaves:
        raise TraceError("the model returned no floating-point tensor to differentiate")
    total = leaves[0].sum()
    for leaf in leaves[1:]:
        total = total + leaf.sum()
    return total


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """Fake-tensor dispatch logs a full traceback before re-raising; symcx reports the error itself."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _no_autocast_cache() -> Iterator[None]:
    """As make_fx: cached autocast casts would be tensors the recorder never saw made."""
    cached = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(cached)


def _context(tensor: torch.Tensor, dynamic: set[int]) -> StatelessSymbolicContext:
    sizes = [DimDynamic.DYNAMIC if d in dynamic else DimDynamic.STATIC for d in range(tensor.dim())]
    return StatelessSymbolicContext(dynamic_sizes=sizes)


def _as_tuple(example: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example, torch.Tensor):
        return (example,), {}
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    raise TraceError(
        f"example_input must be a tensor, a tuple of tensors or a dict of keyword tensors, "
        f"not {type(example).__name__}"
    )


def _named_dims(inputs: list[torch.Tensor], dims: Sequence[DimSpec]) -> dict[tuple[int, int], str]:
    """(input index, dim) → name for every named dim, shared ones spread to matching inputs."""
    named: dict[tuple[int, int], str] = {}
    for d in dims:
        if d.input >= len(inputs):
            raise ShapeError(f"dimension {d.name!r} names input {d.input}, but there are {len(inputs)}")
        named[(d.input, d.dim)] = d.name
        first = inputs[d.input]
        if d.shared and -first.dim() <= d.dim < first.dim():
            for k, x in enumerate(inputs):
                if x.dim() == first.dim() and x.shape[d.dim] == first.shape[d.dim]:
                    named.setdefault((k, d.dim), d.name)
    return named


def _dynamic_dims(k: int, x: torch.Tensor, batch_dim: int | None, named: Mapping, widths: str | None) -> dict[int, str]:
    """The symbolic dims of input ``k`` by name: the batch, the named dims, a width."""
    ndim = x.dim()
    dyn: dict[int, str] = {}
    if batch_dim is not None and ndim > 0:
        dyn[batch_dim % ndim] = "t"
    for (i, d), name in named.items():
        if i == k:
            if not -ndim <= d < ndim:
                raise ShapeError(f"dimension {name!r} is dim {d} of input {k}, which has {ndim} dims")
            dyn[d % ndim] = name
    if widths and x.is_floating_point() and ndim >= 2 and 1 not in dyn and x.shape[1] > 1:
        dyn[1] = WIDTH
    return dyn


def _fake_inputs(
    mode: FakeTensorMode, model: torch.nn.Module, example: Any, *, batch_dim: int | None,
    dims: Sequence[DimSpec], widths: str | None, hints: Mapping[str, int], static: bool,
    cast: torch.dtype | None = None,
) -> tuple[tuple, dict, dict[sympy.Symbol, str]]:
    """The example input as fake tensors with symbolic dims, and each input symbol's name."""
    args, kwargs = _as_tuple(example)
    leaves, spec = tree_flatten((args, kwargs))
    positions = [k for k, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    named = _named_dims([leaves[p] for p in positions], dims)
    # inputs follow the model: a model built on the meta device takes meta inputs
    device = next((p.device for p in (*model.parameters(), *model.buffers())), None)
    if device is None:
        device = next((leaves[p].device for p in positions), torch.device("cpu"))
    input_syms: dict[sympy.Symbol, str] = {}
    for k, pos in enumerate(positions):
        x = leaves[pos]
        dyn = _dynamic_dims(k, x, batch_dim, named, widths)
        shape = list(x.shape)
        for d, name in dyn.items():
            shape[d] = hints.get(name, shape[d])
            if shape[d] in (0, 1):
                raise ShapeError(
                    f"dimension {name!r} has example size {shape[d]}; sizes 0 and 1 are specialized "
                    f"by the tracer, so give an example size of 2 or more"
                )
        dtype = cast if cast is not None and x.is_floating_point() else x.dtype
        real = torch.empty(shape, dtype=dtype, device=device)
        leaves[pos] = mode.from_tensor(real, symbolic_context=_context(real, set() if static else set(dyn)))
        for d, name in ({} if static else dyn).items():
            input_syms[leaves[pos].shape[d].node.expr] = name
    fargs, fkwargs = tree_unflatten(leaves, spec)
    return fargs, fkwargs, input_syms


def _cast(value: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``value`` as ``model.to(dtype)`` would make it (floating point only); its values do not matter."""
    if dtype is None or not value.is_floating_point() or value.dtype == dtype:
        return value
    return torch.empty_like(value, dtype=dtype).requires_grad_(value.requires_grad)


def _fake_params(
    mode: FakeTensorMode, model: torch.nn.Module, widths: str | None, cast: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[sympy.Symbol]]:
    """Fake parameters and buffers (dims 0 and 1 symbolic with ``widths``; floats cast to ``cast``),
    and the width symbols."""
    width_syms: list[sympy.Symbol] = []

    def fake(value: torch.Tensor) -> torch.Tensor:
        value = _cast(value, cast)
        dynamic: set[int] = set()
        if widths and value.dim() >= 1 and value.is_floating_point():
            dynamic = {d for d in {0, 1} & set(range(value.dim())) if value.shape[d] > 1}
        if not dynamic:  # every size static: half the cost of a context of static sizes
            return mode.from_tensor(value, static_shapes=True)
        out = mode.from_tensor(value, symbolic_context=_context(value, dynamic))
        for d in [1, 0] if value.dim() >= 2 else [0]:
            if d in dynamic:
                width_syms.append(out.shape[d].node.expr)
        return out

    params = {k: fake(v) for k, v in model.named_parameters()}
    buffers = {k: fake(v) for k, v in model.named_buffers()}
    return params, buffers, width_syms


def output_tensors(out: Any, depth: int = 4) -> list[torch.Tensor]:
    """Every tensor the model's output holds, a cache object's (HF's ``DynamicCache``) included.

    The caller keeps the output, so what it holds lives as long (a training loop's ``out``
    keeps the key/value cache of a decoder built with ``use_cache=True``).
    """
    found: dict[int, torch.Tensor] = {}

    def walk(value: Any, left: int) -> None:
        for leaf in tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                found.setdefault(id(leaf), leaf)
            elif left > 0 and hasattr(leaf, "__dict__") and not isinstance(leaf, (type, torch.nn.Module)):
                walk(list(vars(leaf).values()), left - 1)

    walk(out, depth)
    return list(found.values())


def _joint_step(
    model: torch.nn.Module, recorder: Recorder, params: Mapping[str, torch.Tensor], trainable: frozenset[str],
    fargs: tuple, fkwargs: dict, loss_fn: Callable[[Any], torch.Tensor], iteration: Iteration | None = None,
    state_nodes: dict[str, str] | None = None, grad_nodes: dict[str, str] | None = None,
) -> tuple:
    """Forward, loss and ``autograd.grad`` w.r.t. what ``loss.backward()`` would fill, tagged by phase,
    then, with an ``iteration``, the optimizer's step (its state placeholders go in ``state_nodes``).

    The gradients are those of the trainable parameters and, after them, any leaf the forward
    itself made to need a gradient (``hidden_states.requires_grad = True``); most models have
    none, and their graph is that of the parameters alone.
    """
    recorder.set_tag(phase="forward", module="")
    with module_tags(model, recorder):  # through the backward too: a checkpointed module's recompute
        return _forward_backward(model, recorder, params, trainable, fargs, fkwargs, loss_fn, iteration, state_nodes,
                                 grad_nodes)


def _forward_backward(
    model: torch.nn.Module, recorder: Recorder, params: Mapping[str, torch.Tensor], trainable: frozenset[str],
    fargs: tuple, fkwargs: dict, loss_fn: Callable[[Any], torch.Tensor], iteration: Iteration | None,
    state_nodes: dict[str, str] | None, grad_nodes: dict[str, str] | None = None,
) -> tuple:
    iteration = iteration or Iteration()
    named = [(k, params[k]) for k in params if k in trainable]
    scaler = _grad_scaler(recorder, iteration, named)
    held = _held_grads(recorder, named, grad_nodes) if iteration.held_grads else None
    grads: list[torch.Tensor | None] | None = held
    for micro in range(iteration.micro_steps):
        recorder.set_tag(phase="forward", module="")
        outs, new = _micro_step(model, recorder, params, named, fargs, fkwargs, loss_fn, iteration, scaler)
        if new is None:
            return outs, ()
        grads = new if grads is None else _accumulate(recorder, grads, new, len(named))
        if micro < iteration.micro_steps - 1:
            del outs, new  # a loop keeps only the last micro-step's output
    if iteration.optimizer is None:
        return outs, tuple(grads)
    placeholders, state = record_optimizer_step(recorder, iteration, named, grads[:len(named)], scaler)
    if state_nodes is not None:
        state_nodes.update(placeholders)
    return outs, tuple(grads), state


def _micro_step(
    model: torch.nn.Module, recorder: Recorder, params: Mapping[str, torch.Tensor],
    named: Sequence[tuple[str, torch.Tensor]], fargs: tuple, fkwargs: dict, loss_fn: Callable[[Any], torch.Tensor],
    iteration: Iteration, scaler: Any,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None] | None]:
    """One forward (under the iteration's autocast), loss and ``autograd.grad``: the output tensors
    and the gradients of the trainable parameters, then of any leaf the forward made (None: no
    gradient to take)."""
    with autocast_forward(iteration.precision, _device_of(params, fargs, fkwargs)):
        out = model(*fargs, **fkwargs)
        recorder.set_tag(phase="loss", module="")
        scalar = loss_fn(out)
    if not isinstance(scalar, torch.Tensor) or scalar.numel() != 1:
        raise TraceError("the loss must return a scalar tensor")
    outs = output_tensors(out)
    if not scalar.requires_grad:
        return outs, None
    known = {id(x) for x in params.values()}
    wrt = [p for _, p in named] + [x for x in grad_leaves([scalar.grad_fn]) if id(x) not in known]
    if not wrt:
        return outs, None
    if scaler is not None:
        scalar = scaler.scale(scalar)
    tag_backward([scalar.grad_fn], recorder.set_tag)
    return outs, list(torch.autograd.grad(scalar, wrt, allow_unused=True))


def _device_of(params: Mapping[str, torch.Tensor], fargs: tuple, fkwargs: dict) -> torch.device:
    tensors = [*params.values(), *(x for x in tree_leaves((fargs, fkwargs)) if isinstance(x, torch.Tensor))]
    return tensors[0].device if tensors else torch.device("cpu")


def _grad_scaler(recorder: Recorder, iteration: Iteration, named: Sequence[tuple[str, torch.Tensor]]) -> Any:
    """fp16 autocast's ``torch.amp.GradScaler`` (its scale made before the iteration), else None."""
    if not iteration.precision.scaler or not named:
        return None
    device = named[0][1].device
    scaler = torch.amp.GradScaler(device.type)
    with recorder.paused():  # the scale and growth tracker exist before the iteration
        scaler.scale(torch.ones((), device=device))
    return scaler


def _held_grads(recorder: Recorder, named: Sequence[tuple[str, torch.Tensor]],
                grad_nodes: dict[str, str] | None) -> list[torch.Tensor | None]:
    """The gradients a ``zero_grad(set_to_none=False)`` left allocated, as placeholders."""
    with recorder.paused():
        held = [torch.zeros_like(p) for _, p in named]
    for k, ((name, _), g) in enumerate(zip(named, held)):
        node = recorder.placeholder(f"grad_{k}", g)
        if grad_nodes is not None:
            grad_nodes[node.name] = name
    return list(held)


def _accumulate(recorder: Recorder, grads: list[torch.Tensor | None], new: list[torch.Tensor | None],
                trainable: int) -> list[torch.Tensor | None]:
    """``.grad += new`` per trainable parameter, as autograd's AccumulateGrad does in the backward:
    each add right after its gradient is made, and that gradient freed at once (``new`` is emptied)."""
    out = list(grads[:trainable])
    for k in range(trainable):
        if new[k] is None:
            continue
        if out[k] is None:
            out[k], new[k] = new[k], None
            continue
        producer = recorder.node_of(new[k])
        tag = recorder.tag
        recorder.set_tag(**(producer.meta.get("custom") or tag))
        with recorder.graph.inserting_after(producer):
            out[k].add_(new[k])
        recorder.set_tag(**tag)
        new[k] = None
    return out + list(new[trainable:])


def _record(model: torch.nn.Module, mode: FakeTensorMode, recorder: Recorder, step: Callable[[], Any],
            input_syms: Mapping[sympy.Symbol, str], tensors: Mapping[str, torch.Tensor]) -> Any:
    """Run ``step`` under the fake mode and the recorder; torch's errors become symcx's, with the line."""
    try:
        with contextlib.ExitStack() as stack:
            # the fake parameters stay in the model through the backward too: a checkpointed
            # region (torch.utils.checkpoint) runs its forward again there
            for ctx in (_quiet_fake_tensor_log(), isolated_caches(model), eager_lstm_kernels(), eager_dropout_kernels(),
                        conv_layout_unguarded(), symnode_ops_memoized(), reparametrize_module(model, dict(tensors)),
                        mode, enable_python_dispatcher(), EagerKernels(), recorder, _no_autocast_cache()):
                stack.enter_context(ctx)
            return step()
    except SymcxError:  # ours, already a clear message (a bad optimizer, a trace error)
        raise
    except Exception as err:  # anything torch raises while tracing the user's model
        cls, cause = _classify(err, recorder.random_read)
        names = {str(sym): name for sym, name in input_syms.items() if name != WIDTH}
        cause = re.sub(r"\bs\d+\b", lambda m: names.get(m.group(0), m.group(0)), cause)
        where = _source_line(err) or recorder.random_read
        raise cls(f"cannot trace {type(model).__name__}: {cause}{eager_experts_hint(where)}"
                  + (f"\n  at {where}" if where else "")) from err


def _trace_once(
    model: torch.nn.Module, example: Any, *, batch_dim: int | None, dims: Sequence[DimSpec],
    widths: str | None, hints: Mapping[str, int], loss: Callable[[Any], torch.Tensor] | None,
    static: bool = False, iteration: Iteration | None = None, reuse: bool = False, banned: frozenset = frozenset(),
    reusers: list | None = None, found: Candidates | None = None,
) -> Trace:
    """One traced step: fake inputs and parameters, the recorded joint graph, symbols named; with
    ``reuse``, repeated blocks replayed from their first call (``capture/reuse.py``; ``found``: the
    model's reuse candidates, if known)."""
    shape_env = ShapeEnv(duck_shape=False)
    mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=False)
    cast = iteration.precision.params if iteration else None
    fargs, fkwargs, input_syms = _fake_inputs(mode, model, example, batch_dim=batch_dim, dims=dims,
                                              widths=widths, hints=hints, static=static, cast=cast)
    params, buffers, width_syms = _fake_params(mode, model, widths, cast)
    trainable = frozenset(k for k, v in model.named_parameters() if v.requires_grad)
    recorder = Recorder(mode)
    param_nodes = {recorder.placeholder(f"param_{k}", v).name: name for k, (name, v) in enumerate(params.items())}
    buffer_nodes = {recorder.placeholder(f"buffer_{k}", v).name: name for k, (name, v) in enumerate(buffers.items())}
    input_nodes = [recorder.placeholder(f"input_{k}", x).name for k, x in enumerate(tree_leaves((fargs, fkwargs)))
                   if isinstance(x, torch.Tensor)]

    state_nodes: dict[str, str] = {}
    grad_nodes: dict[str, str] = {}
    reuser = BlockReuse(model, recorder, banned, found) if reuse else None
    if reuser is not None and reusers is not None:
        reusers.append(reuser)

    def step() -> Any:
        with recorder.watching(), (reuser.installed() if reuser else contextlib.nullcontext()):
            return _joint_step(model, recorder, params, trainable, fargs, fkwargs, loss or default_loss,
                               iteration, state_nodes, grad_nodes)

    recorder.output(_record(model, mode, recorder, step, input_syms, {**params, **buffers}))
    graph, deaths = recorder.graph, dict(recorder.deaths)
    if reuser is not None:
        graph, deaths = reuser.finish(graph, deaths)
    rename, user_symbols, hint_values = name_symbols(shape_env, input_syms, width_syms, widths)
    return Trace(
        graph=graph, rename=rename, shape_env=shape_env, user_symbols=user_symbols, hints=hint_values,
        param_nodes=param_nodes, buffer_nodes=buffer_nodes, input_nodes=input_nodes, trainable=trainable,
        state_nodes=state_nodes, grad_nodes=grad_nodes, deaths=deaths,
        optimizer=iteration.optimizer.name if iteration and iteration.optimizer else None,
        precision=iteration.precision.name if iteration else AS_GIVEN.name,
        micro_steps=iteration.micro_steps if iteration else 1,
        assumptions=assumptions_of(shape_env, rename, user_symbols, graph), dropped_guards=[],
        module_types={name: type(mod).__name__ for name, mod in model.named_modules()},
        leaf_modules=frozenset(name for name, mod in model.named_modules() if not any(True for _ in mod.children())),
        notes=reuser.notes() if reuser else [],
    )


def trace_training_step(
    model: torch.nn.Module,
    example_input: Any,
    *,
    batch_dim: int | None = 0,
    dims: Sequence[DimSpec] = (),
    widths: str | None = None,
    loss: Callable[[Any], torch.Tensor] | None = None,
    iteration: Iteration | None = None,
    reuse: bool = False,
) -> Trace:
    """Trace one training step (forward, loss, backward and, with ``iteration``, the optimizer's
    step) of ``model`` with symbolic sizes.

    Guards that bound a symbol (``t < 16``) are tested by a concrete (cheaper) re-trace past
    the bound: a guard whose re-trace runs the same ops with the shapes the formulas predict is
    dropped (kept in ``dropped_guards``); one that changes the graph stays in ``assumptions``.
    With ``reuse``, each distinct block is traced once and copied for its repeats (see
    :func:`_reused`); ``notes`` say which.
    """
    hints = {"t": BATCH_HINT} if batch_dim is not None else {}
    try:
        trace = _reused(model, example_input, reuse, hints=hints, batch_dim=batch_dim, dims=dims, widths=widths,
                        loss=loss, iteration=iteration)
    except ShapeError as err:
        if batch_dim is None:
            raise
        trace = _pinned_batch(model, example_input, err, batch_dim=batch_dim, dims=dims, widths=widths, loss=loss,
                              iteration=iteration)
        batch_dim = None

    def retrace(values: Mapping[str, int]) -> Trace:
        return trace_at(model, example_input, values, batch_dim=batch_dim, dims=dims, loss=loss, iteration=iteration)

    drop_guards(trace, retrace)
    return trace


def _reused(model: torch.nn.Module, example: Any, reuse: bool, **kw: Any) -> Trace:
    """``_trace_once``; with ``reuse``, repeated blocks replayed and checked (:func:`_replays_differ`); a
    block that fails is traced normally in a new trace, and after three tries the step in full."""
    it = kw["iteration"]
    if not reuse or (it is not None and (it.micro_steps > 1 or it.held_grads or it.precision.autocast)):
        trace = _trace_once(model, example, **kw)
        if reuse:
            trace.notes.append("block reuse is off for gradient accumulation, held gradients and autocast")
        return trace
    found = candidates(model)
    skipped = too_little_to_reuse(model, found)
    if skipped is not None:
        trace = _trace_once(model, example, **kw)
        if skipped:
            trace.notes.append(f"block reuse skipped: {skipped}")
        return trace
    banned: set = set()
    reasons: list[str] = []
    for attempt in range(3):
        reusers: list[BlockReuse] = []
        try:  # a retry finds the candidates again: the first trace ran the model's code
            trace = _trace_once(model, example, reuse=True, banned=frozenset(banned), reusers=reusers,
                                found=None if attempt else found, **kw)
            _replays_differ(model, example, trace, reusers[0], {**kw, "banned": frozenset(banned)})
            trace.notes += [f"block reuse refused after the step: {why}" for why in reasons]
            return trace
        except ReuseFallback as err:
            banned |= err.keys
            reasons.append(str(err))
    trace = _trace_once(model, example, **kw)
    trace.notes.append(f"block reuse fell back to a full trace: {reasons[-1]}")
    return trace


def _replays_differ(model: torch.nn.Module, example: Any, trace: Trace, reuser: BlockReuse, kw: Mapping) -> None:
    """Raise :class:`ReuseFallback` unless every replayed call runs its template's ops at the example sizes.

    The model's forward runs on the meta device, each call's ops logged (``replay_check.py``); where
    it cannot, on fake tensors with static sizes, the logged calls on meta, or else all fake; where
    none runs, concrete traces with and without reuse must record the same ops instead.
    """
    if not reuser.calls:
        return
    values = {name: trace.hints[sym] for name, sym in trace.user_symbols.items() if sym in trace.hints}
    cast = kw["iteration"].precision.params if kw["iteration"] else None
    templates = {c.path: c.template for c in reuser.calls}
    pairs = [(c.path, c.template.path) for c in reuser.calls]
    fake = _Static(FakeTensorMode(allow_non_fake_inputs=False))
    for mode, blocks_on_meta in ((_ON_META, False), (fake, True), (fake, False)):
        args, kwargs, _ = _fake_inputs(mode, model, example, batch_dim=kw["batch_dim"], dims=kw["dims"],
                                       widths=None, hints=values, static=True, cast=cast)
        try:
            wrong = replay_mismatch(model, args, kwargs, pairs, cast, getattr(mode, "mode", None), blocks_on_meta)
        except Exception:  # noqa: BLE001 - whatever the model raises there: a kernel meta lacks, a value
            continue  # read (HF masks read .item() on meta); the next way to check is tried
        if wrong is not None:
            raise ReuseFallback(f"{wrong[0]} runs other ops than {wrong[1]}", templates[wrong[0]].static)
        return
    at = {**kw, "hints": values, "widths": None, "static": True}  # like with like: concrete traces
    full = {k: v for k, v in at.items() if k != "banned"}
    statics = {t.static for t in templates.values()}
    try:
        same = op_multiset(_trace_once(model, example, reuse=True, **at)) == op_multiset(_trace_once(model, example,
                                                                                                      **full))
    except Exception as err:  # noqa: BLE001 - a model the concrete tracer cannot run: unchecked, so not reused
        raise ReuseFallback(f"the replays could not be checked ({type(err).__name__})", *statics) from None
    if not same:
        raise ReuseFallback("the replayed graph's ops and shapes differ from a full trace's at the example sizes",
                            *statics)


class _OnMeta:
    """Stands in for a fake mode in :func:`_fake_inputs`: the example's tensors on the meta device."""

    @staticmethod
    def from_tensor(real: torch.Tensor, symbolic_context: Any = None) -> torch.Tensor:
        return torch.empty(real.shape, dtype=real.dtype, device="meta")


_ON_META = _OnMeta()


class _Static:
    """Stands in for a fake mode in :func:`_fake_inputs`: the example's tensors as fake tensors of
    ``mode`` (no ``ShapeEnv``), every size static."""

    def __init__(self, mode: FakeTensorMode) -> None:
        self.mode = mode

    def from_tensor(self, real: torch.Tensor, symbolic_context: Any = None) -> torch.Tensor:
        return self.mode.from_tensor(real)


def _pinned_batch(
    model: torch.nn.Module, example: Any, err: ShapeError, *, batch_dim: int, dims: Sequence[DimSpec],
    widths: str | None, loss: Callable[[Any], torch.Tensor] | None, iteration: Iteration | None = None,
) -> Trace:
    """The trace at the example's own batch, where a weight fixes it (``bmm(x, w)``, ``w`` of batch 3).

    The symbolic batch failed to fit; if the example fits as it is, the model pins the batch:
    traced with ``batch_dim=None``, with a note. Otherwise the first error stands.
    """
    try:
        trace = _trace_once(model, example, hints={}, batch_dim=None, dims=dims, widths=widths, loss=loss,
                            iteration=iteration)
    except (TraceError, ShapeError):
        raise err from None
    tensors = [x for x in tree_leaves(_as_tuple(example)) if isinstance(x, torch.Tensor) and x.dim() > 0]
    size = tensors[0].shape[batch_dim % tensors[0].dim()] if tensors else "?"
    why = str(err).splitlines()[0].split("does not fit the model: ", 1)[-1]
    trace.notes.append(
        f"the model fixes the batch at {size} (a weight or constant has that size; at another batch: {why}); "
        f"traced at the example's size with batch_dim=None, so no formula in t"
    )
    return trace


def trace_at(
    model: torch.nn.Module,
    example_input: Any,
    values: Mapping[str, int],
    *,
    batch_dim: int | None = 0,
    dims: Sequence[DimSpec] = (),
    loss: Callable[[Any], torch.Tensor] | None = None,
    iteration: Iteration | None = None,
) -> Trace:
    """Trace one training step with every size concrete: ``values`` gives t and the named dims.

    The interpolation route traces at several such points and fits (see ``interpolate.py``).
    """
    return _trace_once(
        model, example_input, batch_dim=batch_dim, dims=dims, widths=None, hints=values, loss=loss, static=True,
        iteration=iteration,
    )


