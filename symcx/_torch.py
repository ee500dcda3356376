"""Every private torch API symcx uses, imported or wrapped here and nowhere else.

A torch upgrade that moves one of these breaks this file, loudly, and
``tests/test_torch_private.py`` pins each name (and checks that no other module of symcx
reaches into ``torch._*``, ``torch.fx.experimental`` or a private attribute of an op).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch._decomp.decompositions as _decompositions
from torch._dispatch.python import enable_python_dispatcher
from torch._ops import OpOverload, OpOverloadPacket
from torch._C._profiler import _EventType as ProfilerEventType
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
import torch.fx.experimental.sym_node as _sym_node
from torch.fx.experimental.sym_node import SymNode
from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._python_dispatch import TorchDispatchMode, autograd_would_have_decomposed
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from torch.utils._sympy import functions as torch_sympy_functions
from torch.utils.weak import WeakTensorKeyDictionary

__all__ = [
    "PRIVATE_APIS",
    "FakeTensorMode",
    "unset_fake_temporarily",
    "ShapeEnv",
    "DimDynamic",
    "StatelessSymbolicContext",
    "enable_python_dispatcher",
    "reparametrize_module",
    "rename_in_order",
    "autograd_would_have_decomposed",
    "TorchDispatchMode",
    "WeakTensorKeyDictionary",
    "OpOverload",
    "OpOverloadPacket",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_unflatten",
    "torch_sympy_functions",
    "is_op",
    "op_names",
    "op_schema",
    "packet_name",
    "sequence_nr",
    "current_sequence_nr",
    "module_attributes",
    "eager_lstm_kernels",
    "eager_dropout_kernels",
    "conv_layout_unguarded",
    "symnode_ops_memoized",
    "SymNode",
    "make_fx",
    "ProfilerEventType",
    "fake_process_group",
    "allocation_events",
]

#: The private torch surface, one line each (pinned by tests/test_torch_private.py).
PRIVATE_APIS = (
    "torch._subclasses.fake_tensor.FakeTensorMode",
    "torch._subclasses.fake_tensor.unset_fake_temporarily (the replay check runs blocks on meta inside a fake run)",
    "torch.fx.experimental.symbolic_shapes.ShapeEnv / StatelessSymbolicContext / DimDynamic",
    "torch._dispatch.python.enable_python_dispatcher (as make_fx's symbolic mode)",
    "torch.nn.utils.stateless._reparametrize_module (functional_call's swap, kept through the backward)",
    "torch.fx.graph._Namespace / torch.fx.graph.Graph._target_to_str (a graph renamed in place in order, its _graph_namespace replaced)",
    "torch.utils._python_dispatch.autograd_would_have_decomposed (as make_fx)",
    "torch.utils._python_dispatch.TorchDispatchMode (the recorder; validation.live_bytes)",
    "torch.utils.weak.WeakTensorKeyDictionary",
    "torch.autograd.graph.Node._sequence_nr / torch.autograd._get_sequence_nr",
    "torch.nn.modules.module.Module (its per-instance _forward_hooks, _backward_hooks… dicts: block reuse's key)",
    "torch.utils._pytree (tree_leaves, tree_map, tree_flatten, tree_unflatten)",
    "torch.utils._sympy.functions (translated in symbols.py)",
    "torch._ops.OpOverload / OpOverloadPacket: _opname, _overloadname, _schema, _qualified_op_name",
    "torch._decomp.decompositions.select_one_layer_lstm_function / mkldnn_one_layer_lstm",
    "torch._C._get_mkldnn_enabled",
    "torch._C._select_conv_backend / _conv_determine_backend_memory_format / _ConvBackend (fake conv's layout choice)",
    "torch.fx.experimental.sym_node (SymNode's binary magic methods and wrap_int, memoized while tracing)",
    "torch._ops.OpOverload (its py_kernels and _dispatch_cache: aten.dropout's Python decomposition set aside)",
    "torch.fx.experimental.proxy_tensor.make_fx (the reference the recorder is tested against)",
    "torch._C._profiler._EventType (the allocator-peak oracle of tests/test_memory.py)",
    "torch.testing._internal.distributed.fake_pg.FakeStore (and the 'fake' backend it registers)",
    "torch.autograd.profiler.profile (its kineto_results.experimental_event_tree: allocation events)",
)


def reparametrize_module(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> Any:
    """``functional_call``'s context manager that swaps ``tensors`` into ``model`` (tied weights kept)."""
    return _reparametrize_module(model, tensors, tie_weights=True)


def rename_in_order(graph: torch.fx.Graph, candidate: Callable[[torch.fx.Node], str | None]) -> dict[str, str]:
    """Rename every node of ``graph`` in place, in program order, as ``create_node`` names a node
    asked for ``candidate(node)`` (None: fx's name for its target) in a new graph; returns the old
    name -> new name. Block reuse inserts copies out of creation order, so fx numbered them so."""
    namespace = torch.fx.graph._Namespace()
    names: dict[str, str] = {}
    for node in graph.nodes:
        want = candidate(node)
        name = namespace.create_name(want if want is not None else graph._target_to_str(node.target), None)
        namespace.associate_name_with_obj(name, node)
        names[node.name] = name
        object.__setattr__(node, "name", name)  # Node.__setattr__ only re-files it by (op, target)
    graph._graph_namespace = namespace
    return names


def is_op(target: Any) -> bool:
    """True for an aten (or other namespace) operator overload, the target of a recorded call."""
    return isinstance(target, OpOverload)


def op_names(target: Any) -> tuple[str, str]:
    """(overload name, family name) of an fx target: ``("aten.mm.default", "aten.mm")``.

    A target that is not an op overload (``operator.getitem``) is named by ``__name__`` twice.
    """
    if isinstance(target, OpOverload):
        packet = f"{target.namespace}.{target._opname}"
        return f"{packet}.{target._overloadname}", packet
    name = getattr(target, "__name__", str(target))
    return name, name


def packet_name(op: OpOverloadPacket) -> str:
    """Family name of an op packet: ``torch.ops.aten.mm`` → ``"aten.mm"``."""
    return op._qualified_op_name.replace("::", ".")


def op_schema(target: Any) -> torch.FunctionSchema | None:
    """The ``FunctionSchema`` of an op overload (argument names, alias annotations), else None."""
    return target._schema if isinstance(target, OpOverload) else None


def sequence_nr(autograd_node: Any) -> int:
    """The sequence number of an autograd graph node: that of the forward op that made it."""
    return autograd_node._sequence_nr()


def current_sequence_nr() -> int:
    """The sequence number the next autograd node will get, less one: that of the op just run."""
    return torch.autograd._get_sequence_nr() - 1


#: ``nn.Module``'s own per-instance bookkeeping (parameters, submodules, hook dicts), not a module's state.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module())) - {"training"}
_INSTANCE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def module_attributes(mod: torch.nn.Module) -> dict[str, Any] | None:
    """A module's own instance attributes (``training`` and what its ``__init__`` set, not
    ``nn.Module``'s bookkeeping), or None when it has forward or backward hooks of its own."""
    if any(getattr(mod, key, None) for key in _INSTANCE_HOOKS):
        return None
    return {k: v for k, v in vars(mod).items() if k not in _MODULE_INTERNALS}


@contextlib.contextmanager
def eager_dropout_kernels() -> Iterator[None]:
    """Trace ``F.dropout`` to the kernels eager mode runs, not torch's Python decomposition.

    With the python dispatcher on (as ``make_fx``'s symbolic mode), ``aten.dropout`` becomes
    ``native_dropout`` (a bool mask) on every device. Eager's C++ ``at::dropout``
    (aten/src/ATen/native/Dropout.cpp) takes ``native_dropout`` only where the fused kernel is
    acceptable (CUDA, XPU, …); on the CPU it draws a mask of the input's dtype
    (``empty_like(x).bernoulli_(1 - p).div_(1 - p)``) and multiplies, so the backward keeps a
    float mask, four times the bool one. Setting the decomposition aside runs that composite.
    """
    op = torch.ops.aten.dropout.default
    keys = [k for k in (torch._C.DispatchKey.CompositeImplicitAutograd, torch._C.DispatchKey.Autograd)
            if k in op.py_kernels]
    saved = {k: op.py_kernels.pop(k) for k in keys}
    op._dispatch_cache.clear()
    try:
        yield
    finally:
        op.py_kernels.update(saved)
        op._dispatch_cache.clear()


_CONV_BACKENDS = tuple(getattr(torch._C._ConvBackend, name) for name in dir(torch._C._ConvBackend)
                       if not name.startswith("_") and name not in ("name", "value"))


@contextlib.contextmanager
def conv_layout_unguarded() -> Iterator[None]:
    """Let a fake convolution pick its backend at the size hints without guarding on the sizes,
    where every backend gives its output the same memory format.

    Torch's fake ``conv`` (``torch._subclasses.fake_impls.conv``) asks
    ``torch._C._select_conv_backend`` only to choose the output's layout
    (``_conv_determine_backend_memory_format``); the choice reads sizes (oneDNN when
    ``input.size(0) >= 16``), which guards a symbolic batch (``t <= 15``). When the layout is
    the same whichever backend is chosen, the guard constrains nothing the trace records. Only
    where the batch is the one symbolic size: other sizes' guards (channels equal) must be kept.
    """
    original = torch._C._select_conv_backend

    def select(input: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        env = getattr(getattr(input, "fake_mode", None), "shape_env", None)
        # only a symbolic batch: a symbolic channel or image size has shape checks whose guards count
        static = all(isinstance(d, int) for d in (*input.shape[1:], *weight.shape))
        if env is None or not static:
            return original(input, weight, *args, **kwargs)
        try:
            with env.suppress_guards():
                backend = original(input, weight, *args, **kwargs)
                formats = {torch._C._conv_determine_backend_memory_format(input, weight, b) for b in _CONV_BACKENDS}
        except RuntimeError:
            formats = set()
        return backend if len(formats) == 1 else original(input, weight, *args, **kwargs)

    torch._C._select_conv_backend = select
    try:
        yield
    finally:
        torch._C._select_conv_backend = original


def _binary_symnode_methods() -> list[str]:
    """The attributes of ``SymNode`` that implement its binary magic methods (``_mul``, ``_and_``…)."""
    names = []
    for method in _sym_node.magic_methods:
        if method in _sym_node.unary_magic_methods or method in ("sym_ite", "round"):
            continue
        trailing = "_" if method in _sym_node.magic_methods_on_operator_with_trailing_underscore else ""
        if hasattr(SymNode, f"_{method}{trailing}"):
            names.append(f"_{method}{trailing}")
    return names


def _table(env: Any) -> dict:
    """The memo of one ShapeEnv's SymNode operations (it dies with the trace)."""
    table = env.__dict__.get("_symcx_symnode_ops")
    if table is None:
        table = env.__dict__["_symcx_symnode_ops"] = {}
    return table


def _memoized(attr: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a binary SymNode method) answered from a table on the operands' ShapeEnv."""
    def memo(self: Any, other: Any) -> Any:
        env = self.shape_env
        if env is None or type(other) is not SymNode or other.shape_env is not env:
            return fn(self, other)
        key = (attr, self._expr, other._expr, self.pytype, other.pytype, self._hint, other._hint,
               self.constant, other.constant, self._optimized_summation, other._optimized_summation)
        table = _table(env)
        try:
            out = table.get(key)
        except TypeError:  # an unhashable hint: computed as torch does
            return fn(self, other)
        if out is None:
            out = table[key] = fn(self, other)
        return out
    return memo


def _memoized_wrap_int(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``SymNode.wrap_int`` (a constant's node, made for each int a size meets) kept per ShapeEnv and int."""
    def memo(self: Any, num: Any) -> Any:
        env = self.shape_env
        if env is None or type(num) is not int:
            return fn(self, num)
        table = _table(env)
        out = table.get(("wrap_int", num))
        if out is None:
            out = table[("wrap_int", num)] = fn(self, num)
        return out
    return memo


@contextlib.contextmanager
def symnode_ops_memoized() -> Iterator[None]:
    """Symbolic size arithmetic answered once per distinct operation while symcx traces.

    Torch builds every size product, sum and comparison of every op (an output's numel, its
    contiguity, a view's strides) anew as a ``SymNode`` with sympy; the same operands recur in
    every layer, and it was a fifth of a symbolic trace (docs/performance.md). The result of a
    binary ``SymNode`` method depends only on its operands' expressions, types, hints and
    constants, so it is kept in a table on their ``ShapeEnv`` (it dies with the trace); so is the
    node of each int constant. Left to torch under ``make_fx``'s proxy mode, which records each
    operation, and when already on.
    """
    node = SymNode
    if getattr(node, "_symcx_memoized", False) or get_proxy_mode() is not None:
        yield
        return
    originals = {name: getattr(node, name) for name in [*_binary_symnode_methods(), "wrap_int"]}
    for name, fn in originals.items():
        setattr(node, name, _memoized_wrap_int(fn) if name == "wrap_int" else _memoized(name, fn))
    node._symcx_memoized = True
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(node, name, fn)
        node._symcx_memoized = False


@contextlib.contextmanager
def eager_lstm_kernels() -> Iterator[None]:
    """Trace ``nn.LSTM`` to the kernel eager CPU training runs (oneDNN), as eager does.

    PyTorch's LSTM decomposition picks oneDNN's ``mkldnn_rnn_layer`` only when the input needs
    no gradient, and otherwise unrolls per-step cells, fixing the sequence length; eager mode
    runs oneDNN in both cases (measured, torch 2.13). symcx follows eager.
    """
    original: Callable[..., Any] = _decompositions.select_one_layer_lstm_function

    def select(input, hx, params):
        tensors = [input, *hx, *(p for layer in params for p in layer)]
        if (
            torch._C._get_mkldnn_enabled()
            and all(x.device.type == "cpu" for x in tensors)
            and all(x.dtype in (torch.float, torch.bfloat16) for x in tensors)
            and hx[0].size(2) == hx[1].size(2)  # no projections
        ):
            return _decompositions.mkldnn_one_layer_lstm
        return original(input, hx, params)

    _decompositions.select_one_layer_lstm_function = select
    try:
        yield
    finally:
        _decompositions.select_one_layer_lstm_function = original


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A default process group of ``world_size`` ranks (this one rank 0) on torch's fake backend:
    collectives return at once, so ``fully_shard``/DDP can be built and run in one process, as
    torch's ``FSDPMemTracker`` tests and torchtitan's memory estimator do."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized in this process")
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def allocation_events(prof: Any) -> list[tuple[int, int, int]]:
    """(time ns, bytes, allocator total after) of every allocation (negative: a free) a finished
    ``torch.profiler.profile(profile_memory=True)`` saw, in time order: it sees storages that
    ``untyped_storage().resize_()`` grows (FSDP2's unsharded parameters), which no dispatch mode does."""
    events, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        event = todo.pop()
        todo.extend(event.children)
        if event.tag == ProfilerEventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.total_allocated))
    return sorted(events)
