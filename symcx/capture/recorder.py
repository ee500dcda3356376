"""Record every aten call of a step as a node of an fx graph, tagged with its module and phase.

This is what ``make_fx`` does, less its proxy tracing of size arithmetic: a value's node is
looked up by the fake tensor, held weakly, and an in-place op rebinds its output to the new
node. Module hooks tag forward nodes with their module path; autograd pre-hooks tag backward
nodes with the sequence number of the forward op that caused them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .._torch import (
    OpOverload,
    TorchDispatchMode,
    WeakTensorKeyDictionary,
    autograd_would_have_decomposed,
    current_sequence_nr,
    sequence_nr,
    tree_leaves,
    tree_map,
)

__all__ = ["TensorMeta", "Recorder", "module_tags", "tag_backward", "grad_leaves", "outside_torch"]

_aten = torch.ops.aten
#: Ops whose output is a random draw: a branch on a value derived from one is a random branch.
_RANDOM_OPS = frozenset({
    _aten.rand, _aten.rand_like, _aten.randn, _aten.randn_like, _aten.randint, _aten.randint_like,
    _aten.randperm, _aten.bernoulli, _aten.bernoulli_, _aten.uniform, _aten.uniform_, _aten.normal,
    _aten.normal_, _aten.exponential_, _aten.geometric_, _aten.cauchy_, _aten.log_normal_,
    _aten.random_, _aten.multinomial,
})
#: Ops that read a tensor's value into Python (``bool(t)``, ``t.item()``).
_VALUE_READS = frozenset({_aten.is_nonzero.default, _aten._local_scalar_dense.default, _aten.item.default})

_TORCH_DIR = os.path.dirname(torch.__file__)
_CAPTURE_DIR = os.path.dirname(os.path.abspath(__file__))


def outside_torch(path: str) -> bool:
    """True for a source file of the model: not torch's, not the tracer's, not contextlib's.

    (symcx's bundled models in ``symcx/zoo`` are models like any other.) An absolute path's
    answer is memoized: every forward op asks it of each frame up to the model's.
    """
    known = _OUTSIDE.get(path)
    if known is None:
        full = os.path.abspath(path)
        known = not (full.startswith(_TORCH_DIR) or full.startswith(_CAPTURE_DIR) or full.endswith("contextlib.py"))
        if os.path.isabs(path):
            _OUTSIDE[path] = known
    return known


#: ``outside_torch`` by absolute source path.
_OUTSIDE: dict[str, bool] = {}


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """A traced tensor as it was when its op ran (a later in-place op may resize the tensor)."""

    shape: tuple[Any, ...]  # ints and SymInts
    dtype: torch.dtype


def _user_frame() -> str | None:
    """``file:line`` of the innermost caller outside torch and symcx: the model code running."""
    frame = sys._getframe(2)
    while frame is not None:
        if outside_torch(frame.f_code.co_filename):
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _eager_frame() -> bool:
    """Whether the Python code now dropping a reference runs in eager mode too: the model's own
    code or ``torch.nn``'s, not a decomposition that stands in for a C++ kernel (an RNN's cells
    kept in a Python list die later than the kernel frees them) nor the tracer or autograd."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.endswith(("weakref.py", "recorder.py"))
                                 or frame.f_code.co_filename in _REUSE_FILES):
        frame = frame.f_back
    if frame is None:
        return False
    path = frame.f_code.co_filename
    return outside_torch(path) or any(f"{os.sep}torch{os.sep}{part}" in path for part in _EAGER_TORCH)


#: Block reuse's frames between a module's ``__call__`` and its ``forward`` (a template's call): the
#: frame a forward returns to there is ``nn.Module``'s in eager.
_REUSE_FILES = frozenset(os.path.join(_CAPTURE_DIR, name) for name in ("reuse.py", "attr_reads.py"))
#: torch's Python that eager runs as the trace does: modules, functionals, optimizers, autograd's engine.
_EAGER_TORCH = (f"nn{os.sep}", f"optim{os.sep}", f"autograd{os.sep}", f"utils{os.sep}checkpoint.py", f"amp{os.sep}")


def _map(fn: Callable[[Any], Any], value: Any) -> Any:
    """``tree_map(fn, value)`` for an op's arguments, without pytree's overhead on plain containers.

    Exact tuples, lists and dicts (all an aten call's arguments hold) are walked here; their
    subclasses (a namedtuple, ``torch.Size``) go to ``tree_map``, so the result is pytree's own.
    """
    cls = type(value)
    if cls is tuple or cls is list:
        return cls([_map(fn, v) for v in value])
    if cls is dict:
        return {k: _map(fn, v) for k, v in value.items()}
    if isinstance(value, (tuple, list, dict)):
        return tree_map(fn, value)
    return fn(value)


def leaves(value: Any, out: list[Any] | None = None) -> list[Any]:
    """``tree_leaves(value)`` with :func:`_map`'s fast path for plain containers."""
    out = [] if out is None else out
    cls = type(value)
    if cls is tuple or cls is list:
        for v in value:
            leaves(v, out)
    elif cls is dict:
        for v in value.values():
            leaves(v, out)
    elif isinstance(value, (tuple, list, dict)):
        out.extend(tree_leaves(value))
    else:
        out.append(value)
    return out


def _snapshot(value: Any) -> Any:
    """Fake tensors (also inside tuples and lists) as ``TensorMeta``; anything else as is."""
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_snapshot(v) for v in value)
    return value


class Recorder(TorchDispatchMode):
    """Record each aten call that reaches it (under the fake mode) as a node of an fx graph.

    A value's node is held weakly: a strong reference would make autograd detach fresh
    tensors, adding ops eager mode does not run. Nodes carry ``meta["val"]`` (a
    ``TensorMeta`` snapshot), ``meta["custom"]`` (the current tag), ``meta["seq_nr"]`` and, in
    the forward, ``meta["source"]`` (the model's ``file:line``).

    With ``fake_mode``, a tensor that is not one of its fakes (a constant the model made on the
    meta device, which skips ``lift_fresh``, or a real tensor a model-level cache kept) is
    faked as a constant before the op runs. ``random_read`` is the source line where the model
    read the value of a tensor derived from a random draw (LayerDrop's ``torch.rand([]) < p``).
    """

    _SIZE_QUERIES = (torch.ops.aten.size.default, torch.ops.aten.stride.default, torch.ops.aten.storage_offset.default)

    def __init__(self, fake_mode: Any = None) -> None:
        super().__init__()
        self.fake_mode = fake_mode
        self.random_read: str | None = None
        self._random = WeakTensorKeyDictionary()  # tensors derived from a random draw
        self.graph = torch.fx.Graph()
        self.tag: dict[str, Any] = {"phase": "forward", "module": ""}
        self._nodes = WeakTensorKeyDictionary()
        self._decomposes: dict[tuple[OpOverload, str | None], bool] = {}
        self._constants = 0
        self._paused = False
        self.deaths: dict[str, str] = {}  # node → the last node recorded when its storage died
        self._watched: set[int] = set()
        self._owners: dict[int, torch.fx.Node] = {}  # watched storage -> the node its death counts for
        self._watching = False
        self._last = ""

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run ops without recording them (an optimizer's warm-up step, whose state the recorded
        step then reads as placeholders)."""
        was, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = was

    def set_tag(self, **tag: Any) -> None:
        """Tag every node created from now on (``phase``, ``module``, ``seq_nr``)."""
        self.tag = tag

    def placeholder(self, name: str, value: torch.Tensor) -> torch.fx.Node:
        """An input of the step (parameter, buffer, model input)."""
        node = self.graph.placeholder(name)
        node.meta["val"] = _snapshot(value)
        self._nodes[value] = node
        return node

    def node_of(self, value: torch.Tensor) -> torch.fx.Node:
        """The node that made ``value`` (or last wrote it in place)."""
        return self._nodes[value]

    def knows(self, value: torch.Tensor) -> bool:
        """Whether ``value`` has a node (an input, a parameter, or a recorded op's output)."""
        return value in self._nodes

    def bind(self, value: torch.Tensor, node: torch.fx.Node, *, watch: torch.fx.Node | None = None) -> None:
        """Make ``node`` the node of ``value`` (a stand-in tensor made unrecorded, as block reuse does);
        ``value``'s storage death counts as ``watch``'s (the node owning the storage ``value`` stands in for)."""
        self._nodes[value] = node
        if watch is not None:
            self._watch(watch, value)

    def storage_owner(self, value: torch.Tensor) -> torch.fx.Node | None:
        """The node whose storage death ``value``'s storage counts as (None: not watched)."""
        return self._owners.get(id(value.untyped_storage())) if value.layout == torch.strided else None

    def last_node(self) -> torch.fx.Node | None:
        """The node recorded last (the graph's tail), or None in an empty graph."""
        return next(iter(reversed(self.graph.nodes)), None)

    def mark_last(self, node: torch.fx.Node) -> None:
        """Count ``node`` as the last recorded (what a storage death is noted against)."""
        self._last = node.name

    def output(self, result: Any) -> None:
        """The step's results (model outputs and gradients) as the graph's output node."""
        self.graph.output(tree_map(self._arg, result))

    def _arg(self, value: Any) -> Any:
        """A tensor as its node (an untraced constant gets a ``get_attr`` node), a SymInt as its
        sympy expression; others unchanged."""
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return value.node.expr
        if not isinstance(value, torch.Tensor):
            return value
        node = self._nodes.get(value)
        if node is None:
            node = self.graph.get_attr(f"_tensor_constant{self._constants}")
            node.meta.update(val=_snapshot(value), custom=self.tag, seq_nr=current_sequence_nr())
            self._constants += 1
            self._nodes[value] = node
        return node

    def _track(self, node: torch.fx.Node, out: Any) -> None:
        """Bind output tensors to ``node``; each element of a tuple output gets a ``getitem`` node."""
        if isinstance(out, torch.Tensor):
            self._nodes[out] = node
            self._watch(node, out)
        elif isinstance(out, (tuple, list)):
            for k, item in enumerate(out):
                sub = self.graph.call_function(operator.getitem, (node, k))
                sub.meta.update(val=_snapshot(item), custom=self.tag, seq_nr=node.meta["seq_nr"])
                self._track(sub, item)

    def _watch(self, node: torch.fx.Node, out: torch.Tensor) -> None:
        """Note when ``out``'s storage dies, if ``node`` made it: ``deaths[node]`` is the node
        recorded last before then. Python frees a tensor when its last reference goes (a local
        the model's code still holds, a tensor autograd saved), as eager does; the storage's
        Python object lives as long as the storage."""
        if out.layout != torch.strided:
            return
        storage = out.untyped_storage()
        if id(storage) in self._watched:
            return
        self._watched.add(id(storage))
        self._owners[id(storage)] = node
        fin = weakref.finalize(storage, self._died, node.name, id(storage))
        fin.atexit = False

    def _died(self, name: str, key: int) -> None:
        self._watched.discard(key)
        self._owners.pop(key, None)
        if self._watching and _eager_frame():  # a node's second storage (a reuse stand-in) dies later
            self.deaths[name] = self._last

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Record storage deaths (:meth:`_watch`) while the step runs, not after it returns."""
        self._watching = True
        try:
            yield
        finally:
            self._watching = False

    def _would_decompose(self, func: OpOverload, args: tuple, kwargs: dict) -> bool:
        """``autograd_would_have_decomposed``, memoized by op and device type (all it reads)."""
        values = leaves((args, kwargs))
        device = next((x.device.type for x in values if isinstance(x, torch.Tensor)), None)
        key = (func, device)
        if key not in self._decomposes:
            self._decomposes[key] = autograd_would_have_decomposed(func, values)
        return self._decomposes[key]

    def _fake_constant(self, value: Any) -> Any:
        """A tensor that is not a fake of ``fake_mode`` as one (a constant); others unchanged."""
        if self.fake_mode is None or not isinstance(value, torch.Tensor) or self.fake_mode.is_our_fake(value):
            return value
        return self.fake_mode.from_tensor(value)

    def _note_random(self, func: OpOverload, args: tuple, kwargs: dict, out: Any) -> None:
        """Mark outputs that derive from random draws alone (LayerDrop's ``torch.rand([]) < p``, not
        dropout's ``x * mask``, whose value is the data's too); remember where the model reads one."""
        if func.overloadpacket not in _RANDOM_OPS:
            if not len(self._random):  # no random draw yet: nothing derives from one
                return
            tensors = [x for x in leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
            if not tensors or not all(x in self._random for x in tensors):
                return
        if func in _VALUE_READS:
            self.random_read = self.random_read or _user_frame() or "?"
        for x in leaves(out):
            if isinstance(x, torch.Tensor):
                self._random[x] = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:  # a metadata query, as make_fx leaves it
            return func(*args, **kwargs)
        if self.fake_mode is not None:
            args, kwargs = _map(self._fake_constant, (args, kwargs))
        if self._paused:
            return func(*args, **kwargs)
        if func in _VALUE_READS:  # noted before the read raises (a shape-only trace cannot read values)
            self._note_random(func, args, kwargs, None)
        if func not in self._SIZE_QUERIES and self._would_decompose(func, args, kwargs):
            with self:  # inference mode skipped autograd's decomposition: apply it here, as make_fx
                out = func.decompose(*args, **kwargs)
                if out is not NotImplemented:
                    return out
        if func is torch.ops.aten.is_nonzero.default:  # ``bool(tensor)``, traced as make_fx does
            with self:
                return (args[0] != 0).item()
        out = func(*args, **kwargs)
        # a fresh constant is copied into the graph (make_fx's rule), so it owns its storage
        target = torch.ops.aten.lift_fresh_copy.default if func is torch.ops.aten.lift_fresh.default else func
        node_args, node_kwargs = _map(self._arg, (args, kwargs))
        node = self.graph.create_node(
            "call_function", target, tuple(node_args), node_kwargs, name=func.overloadpacket.__name__
        )
        tag = self.tag
        if tag.get("phase") == "backward" and not tag.get("recompute") and torch.is_grad_enabled():
            # the engine runs the backward without grad mode; an op that runs with it there is a
            # checkpointed forward run again (its own ops, not only its submodules')
            tag = {**tag, "recompute": True}
        node.meta.update(val=_snapshot(out), custom=tag, seq_nr=current_sequence_nr())
        if self.tag.get("phase") == "forward":
            node.meta["source"] = _user_frame()
        self._track(node, out)
        self._last = node.name
        self._note_random(func, args, kwargs, out)
        return out


@contextlib.contextmanager
def module_tags(model: torch.nn.Module, recorder: Recorder) -> Iterator[None]:
    """Global module hooks that keep the current module path in the recorder's tag.

    In the backward a module that runs its forward again (activation checkpointing's recompute)
    is backward work, attributed to the backward node that asked for it, and tagged
    ``recompute``: its temporaries die at their last reader, as eager frees them.
    """
    paths: dict[int, str] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), name)
    stack: list[str] = []
    recomputing: list[str] = []

    def pre(mod, args):
        path = paths.get(id(mod))
        if path is None:
            return
        if recorder.tag.get("phase") == "forward":
            stack.append(path)
            recorder.set_tag(phase="forward", module=path)
        elif recorder.tag.get("phase") == "backward":
            recomputing.append(path)
            recorder.set_tag(**{**recorder.tag, "recompute": True})

    def post(mod, args, out):
        if paths.get(id(mod)) is None:
            return
        if stack and recorder.tag.get("phase") == "forward":
            stack.pop()
            recorder.set_tag(phase="forward", module=stack[-1] if stack else "")
        elif recomputing and recorder.tag.get("phase") == "backward":
            recomputing.pop()
            if not recomputing:
                recorder.set_tag(**{k: v for k, v in recorder.tag.items() if k != "recompute"})

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def _autograd_nodes(roots: Sequence[Any]) -> Iterator[Any]:
    """Every autograd node below ``roots``, each once, depth first (the order the tracer relies on)."""
    seen: set[Any] = set()
    todo = [r for r in roots if r is not None]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        yield node
        todo.extend(fn for fn, _ in node.next_functions if fn is not None and fn not in seen)


def grad_leaves(roots: Sequence[Any]) -> list[torch.Tensor]:
    """Every leaf tensor the autograd graph below ``roots`` accumulates a gradient into.

    These are what ``loss.backward()`` differentiates w.r.t.: the trainable parameters and any
    tensor the model itself made a leaf (``x.requires_grad = True`` in wav2vec2's encoder).
    """
    leaves: list[torch.Tensor] = []
    for node in _autograd_nodes(roots):
        variable = getattr(node, "variable", None)  # only AccumulateGrad nodes hold one
        if isinstance(variable, torch.Tensor):
            leaves.append(variable)
    return leaves


def tag_backward(roots: Sequence[Any], set_tag: Callable[..., None]) -> None:
    """Pre-hooks on every autograd node: backward ops get the seq_nr of their forward op."""
    for node in _autograd_nodes(roots):
        def hook(grad_outputs, seq=sequence_nr(node)):
            set_tag(phase="backward", seq_nr=seq)

        node.register_prehook(hook)
