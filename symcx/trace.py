"""Capture one training step of a model as a joint forward+backward aten graph with symbolic sizes.

This is the only module that touches private torch APIs; each one is named in
``PRIVATE_APIS`` and pinned by ``tests/test_trace.py`` so that a torch upgrade breaks here, loudly.

The route (see docs/design.md): the example input becomes a fake tensor under a
``FakeTensorMode`` with a ``ShapeEnv``; the batch dimension and any dimension the user
names are ``DimDynamic.DYNAMIC``. With fake parameters swapped into the model (as
``functional_call`` does), a dispatch mode above the fake mode records every aten call of the
model, a scalar loss and ``torch.autograd.grad`` of it w.r.t. the trainable parameters as one
node of an fx graph: the graph ``make_fx`` would build, without its proxy tracing of every
size computation (2× faster on GPT-2). Module hooks tag forward nodes with their module
path; autograd pre-hooks tag backward nodes with the sequence number of the forward op that
caused them. The swap lasts through the backward, where activation checkpointing runs a
region's forward again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import linecache
import logging
import operator
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sympy
import torch
import torch._decomp.decompositions
from torch._dispatch.python import enable_python_dispatcher
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.utils import _pytree as pytree

# The private torch surface the rest of symcx uses, re-exported from here so that it stays in
# one file (pinned by tests/test_trace.py::test_private_torch_apis_still_exist).
from torch._ops import OpOverload, OpOverloadPacket
from torch.utils._python_dispatch import TorchDispatchMode, autograd_would_have_decomposed
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils._sympy import functions as torch_sympy_functions
from torch.utils.weak import WeakTensorKeyDictionary

from .errors import ShapeError, TraceError
from .guards import as_bound, holds_everywhere, tightest, violating_hints
from .symbols import symbol, to_plain, width_names

__all__ = [
    "Trace",
    "DimSpec",
    "trace_training_step",
    "trace_at",
    "default_loss",
    "PRIVATE_APIS",
    "OpOverload",
    "OpOverloadPacket",
    "TorchDispatchMode",
    "tree_leaves",
    "tree_map",
    "torch_sympy_functions",
]

#: Private torch APIs used by symcx, all in this file (pinned by tests/test_trace.py).
PRIVATE_APIS = (
    "torch._subclasses.fake_tensor.FakeTensorMode",
    "torch.fx.experimental.symbolic_shapes.ShapeEnv / StatelessSymbolicContext / DimDynamic",
    "torch._dispatch.python.enable_python_dispatcher (as make_fx's symbolic mode)",
    "torch.nn.utils.stateless._reparametrize_module (functional_call's swap, kept through the backward)",
    "torch.utils._python_dispatch.autograd_would_have_decomposed (as make_fx)",
    "torch.autograd.graph.Node._sequence_nr / torch.autograd._get_sequence_nr",
    "torch.utils._pytree (tree_leaves, tree_map, tree_flatten, tree_unflatten)",
    "torch.utils._sympy.functions (translated in symbols.py)",
    "torch._ops.OpOverload / OpOverloadPacket (op names, rule keys)",
    "torch._decomp.decompositions.select_one_layer_lstm_function / mkldnn_one_layer_lstm",
    "torch._C._get_mkldnn_enabled",
    "torch.utils._python_dispatch.TorchDispatchMode (the recorder; validation.live_bytes)",
)

_TORCH_DIR = os.path.dirname(torch.__file__)
_THIS_FILE = os.path.abspath(__file__).replace(".pyc", ".py")

#: Default example value of the batch symbol: away from 0/1 specialization and kernel thresholds.
BATCH_HINT = 8


@dataclasses.dataclass(frozen=True)
class DimSpec:
    """A symbolic input dimension: ``name`` for dim ``dim`` of input number ``input``.

    ``shared``: also every other input of the same rank whose size there equals input 0's
    (token ids with their attention mask and token types share ``L``).
    """

    name: str
    dim: int
    input: int = 0
    shared: bool = False


@dataclasses.dataclass(frozen=True)
class TensorMeta:
    """A traced tensor as it was when its op ran (a later in-place op may resize the tensor)."""

    shape: tuple[Any, ...]  # ints and SymInts
    dtype: torch.dtype

    def element_size(self) -> int:
        return self.dtype.itemsize

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point


@dataclasses.dataclass
class Trace:
    """The joint graph of one training step and what is needed to read its sizes.

    ``rename`` maps ShapeEnv symbols to user symbols (``t``, ``H``, ``d_0``…); every
    size must go through :meth:`expr` before it leaves symcx.
    """

    graph: torch.fx.Graph
    rename: dict[sympy.Symbol, sympy.Expr]
    shape_env: ShapeEnv
    user_symbols: dict[str, sympy.Symbol]
    hints: dict[sympy.Symbol, int]
    param_nodes: dict[str, str]  # fx placeholder name -> parameter name
    buffer_nodes: dict[str, str]
    input_nodes: list[str]
    trainable: frozenset[str]
    assumptions: list[sympy.Basic]
    dropped_guards: list[sympy.Basic]
    module_types: dict[str, str]
    leaf_modules: frozenset[str]
    route: str = "symbolic"
    _exprs: dict[Any, sympy.Expr] = dataclasses.field(default_factory=dict, repr=False)

    def expr(self, value: Any) -> sympy.Expr:
        """A size (int, SymInt or sympy expr) as plain sympy in user symbols (memoized)."""
        if isinstance(value, (torch.SymInt, torch.SymFloat)):
            value = value.node.expr
        if isinstance(value, (int, float)):
            return sympy.Integer(value) if isinstance(value, int) else sympy.Float(value)
        out = self._exprs.get(value)
        if out is None:
            out = self._exprs[value] = to_plain(self.shape_env.replace(value)).xreplace(self.rename)
        return out

    def shape(self, tensor: torch.Tensor | TensorMeta) -> tuple[sympy.Expr, ...]:
        """The shape of a (fake) tensor in user symbols."""
        return tuple(self.expr(s) for s in tensor.shape)


def _user_frame() -> str | None:
    """``file:line`` of the innermost caller outside torch and symcx: the model code running."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith(_TORCH_DIR) or path == _THIS_FILE or path.endswith("contextlib.py")):
            return f"{path}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _source_line(err: BaseException) -> str | None:
    """``file:line: code`` of the innermost frame outside torch and symcx, if any."""
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        path = os.path.abspath(frame.filename)
        if path.startswith(_TORCH_DIR) or path == _THIS_FILE or "contextlib" in path:
            continue
        code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
        return f"{frame.filename}:{frame.lineno}: {code}"
    return None


def _classify(err: BaseException) -> tuple[type, str]:
    """The symcx error class and a one-line cause for an exception raised while tracing."""
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else name
    if "DataDependent" in name or "data-dependent" in text.lower() or "_local_scalar_dense" in text:
        return TraceError, (
            "data-dependent control flow: the model branches on, or reads, a tensor's value "
            "(e.g. `if x.sum() > 0` or `.item()`), which a shape-only trace cannot follow"
        )
    shape_words = ("shape", "size", "mat1", "mat2", "expected input", "channels", "dimension", "reduction dim")
    if isinstance(err, (RuntimeError, ValueError, IndexError)) and any(
        w in text.lower() for w in shape_words
    ):
        return ShapeError, f"the example input does not fit the model: {text}"
    return TraceError, f"{name}: {text}"


def default_loss(out: Any) -> torch.Tensor:
    """Sum of every floating-point tensor in the output: the backward FLOPs do not depend on it."""
    leaves = [
        x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor) and x.is_floating_point()
    ]
    if not leaves:
        raise TraceError("the model returned no floating-point tensor to differentiate")
    total = leaves[0].sum()
    for leaf in leaves[1:]:
        total = total + leaf.sum()
    return total


@contextlib.contextmanager
def _eager_lstm_kernels():
    """Trace ``nn.LSTM`` to the kernel eager CPU training runs (oneDNN), as eager does.

    PyTorch's LSTM decomposition picks oneDNN's ``mkldnn_rnn_layer`` only when the input needs
    no gradient, and otherwise unrolls per-step cells, fixing the sequence length; eager mode
    runs oneDNN in both cases (measured, torch 2.13). symcx follows eager.
    """
    decomp = torch._decomp.decompositions
    original = decomp.select_one_layer_lstm_function

    def select(input, hx, params):
        tensors = [input, *hx, *(p for layer in params for p in layer)]
        if (
            torch._C._get_mkldnn_enabled()
            and all(x.device.type == "cpu" for x in tensors)
            and all(x.dtype in (torch.float, torch.bfloat16) for x in tensors)
            and hx[0].size(2) == hx[1].size(2)  # no projections
        ):
            return decomp.mkldnn_one_layer_lstm
        return original(input, hx, params)

    decomp.select_one_layer_lstm_function = select
    try:
        yield
    finally:
        decomp.select_one_layer_lstm_function = original


@contextlib.contextmanager
def _quiet_fake_tensor_log():
    """Fake-tensor dispatch logs a full traceback before re-raising; symcx reports the error itself."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _snapshot(value: Any) -> Any:
    """Fake tensors (also inside tuples and lists) as ``TensorMeta``; anything else as is."""
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_snapshot(v) for v in value)
    return value


class _Recorder(TorchDispatchMode):
    """Record each aten call that reaches it (under the fake mode) as a node of an fx graph.

    This is what ``make_fx`` does, less its proxy tracing of size arithmetic: a value's node is
    looked up by the fake tensor, held weakly (a strong reference would make autograd detach
    fresh tensors, adding ops eager mode does not run), and an in-place op rebinds its output
    to the new node. Nodes carry ``meta["val"]`` (a ``TensorMeta`` snapshot), ``meta["custom"]``
    (the current tag), ``meta["seq_nr"]`` and, in the forward, ``meta["source"]`` (the model's
    ``file:line``).
    """

    _SIZE_QUERIES = (torch.ops.aten.size.default, torch.ops.aten.stride.default, torch.ops.aten.storage_offset.default)

    def __init__(self) -> None:
        super().__init__()
        self.graph = torch.fx.Graph()
        self.tag: dict[str, Any] = {"phase": "forward", "module": ""}
        self._nodes = WeakTensorKeyDictionary()
        self._decomposes: dict[tuple[OpOverload, str | None], bool] = {}
        self._constants = 0

    def set_tag(self, **tag: Any) -> None:
        """Tag every node created from now on (``phase``, ``module``, ``seq_nr``)."""
        self.tag = tag

    def placeholder(self, name: str, value: torch.Tensor) -> torch.fx.Node:
        """An input of the step (parameter, buffer, model input)."""
        node = self.graph.placeholder(name)
        node.meta["val"] = _snapshot(value)
        self._bind(value, node)
        return node

    def output(self, result: Any) -> None:
        """The step's results (model outputs and gradients) as the graph's output node."""
        self.graph.output(tree_map(self._arg, result))

    def _bind(self, value: torch.Tensor, node: torch.fx.Node) -> None:
        self._nodes[value] = node

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
            node.meta.update(val=_snapshot(value), custom=self.tag, seq_nr=torch.autograd._get_sequence_nr() - 1)
            self._constants += 1
            self._bind(value, node)
        return node

    def _track(self, node: torch.fx.Node, out: Any) -> None:
        """Bind output tensors to ``node``; each element of a tuple output gets a ``getitem`` node."""
        if isinstance(out, torch.Tensor):
            self._bind(out, node)
        elif isinstance(out, (tuple, list)):
            for k, item in enumerate(out):
                sub = self.graph.call_function(operator.getitem, (node, k))
                sub.meta.update(val=_snapshot(item), custom=self.tag, seq_nr=node.meta["seq_nr"])
                self._track(sub, item)

    def _would_decompose(self, func: OpOverload, args: tuple, kwargs: dict) -> bool:
        """``autograd_would_have_decomposed``, memoized by op and device type (all it reads)."""
        leaves = tree_leaves((args, kwargs))
        device = next((x.device.type for x in leaves if isinstance(x, torch.Tensor)), None)
        key = (func, device)
        if key not in self._decomposes:
            self._decomposes[key] = autograd_would_have_decomposed(func, leaves)
        return self._decomposes[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.prim.device.default:  # a metadata query, as make_fx leaves it
            return func(*args, **kwargs)
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
        node_args, node_kwargs = tree_map(self._arg, (args, kwargs))
        node = self.graph.create_node(
            "call_function", target, tuple(node_args), node_kwargs, name=func.overloadpacket.__name__
        )
        node.meta.update(val=_snapshot(out), custom=self.tag, seq_nr=torch.autograd._get_sequence_nr() - 1)
        if self.tag.get("phase") == "forward":
            node.meta["source"] = _user_frame()
        self._track(node, out)
        return out


@contextlib.contextmanager
def _module_tags(model: torch.nn.Module, recorder: _Recorder):
    """Global module hooks that keep the current module path in the recorder's tag.

    In the backward they leave the tag alone: a checkpointed module that runs its forward again
    there is backward work, attributed to the backward node that asked for it.
    """
    paths: dict[int, str] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), name)
    stack: list[str] = []

    def pre(mod, args):
        path = paths.get(id(mod))
        if path is not None and recorder.tag.get("phase") == "forward":
            stack.append(path)
            recorder.set_tag(phase="forward", module=path)

    def post(mod, args, out):
        if paths.get(id(mod)) is not None and stack and recorder.tag.get("phase") == "forward":
            stack.pop()
            recorder.set_tag(phase="forward", module=stack[-1] if stack else "")

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


def _tag_backward(roots: Sequence[Any], set_tag: Callable[..., None]) -> None:
    """Pre-hooks on every autograd node: backward ops get the seq_nr of their forward op."""
    seen: set[Any] = set()
    todo = [r for r in roots if r is not None]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        seq = node._sequence_nr()

        def hook(grad_outputs, seq=seq):
            set_tag(phase="backward", seq_nr=seq)

        node.register_prehook(hook)
        todo.extend(fn for fn, _ in node.next_functions if fn is not None and fn not in seen)


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


def _trace_once(
    model: torch.nn.Module,
    example: Any,
    *,
    batch_dim: int | None,
    dims: Sequence[DimSpec],
    widths: str | None,
    hints: Mapping[str, int],
    loss: Callable[[Any], torch.Tensor] | None,
    static: bool = False,
) -> Trace:
    shape_env = ShapeEnv(duck_shape=False)
    mode = FakeTensorMode(shape_env=shape_env, allow_non_fake_inputs=False)
    args, kwargs = _as_tuple(example)
    tensors, spec = pytree.tree_flatten((args, kwargs))
    tensor_pos = [k for k, x in enumerate(tensors) if isinstance(x, torch.Tensor)]

    named: dict[tuple[int, int], str] = {}
    for d in dims:
        if d.input >= len(tensor_pos):
            raise ShapeError(f"dimension {d.name!r} names input {d.input}, but there are {len(tensor_pos)}")
        named[(d.input, d.dim)] = d.name
        first = tensors[tensor_pos[d.input]]
        if d.shared and -first.dim() <= d.dim < first.dim():
            for k, pos in enumerate(tensor_pos):
                x = tensors[pos]
                if x.dim() == first.dim() and x.shape[d.dim] == first.shape[d.dim]:
                    named.setdefault((k, d.dim), d.name)
    fake_leaves = list(tensors)
    # inputs follow the model: a model built on the meta device takes meta inputs
    device = next((p.device for p in (*model.parameters(), *model.buffers())), None)
    if device is None:
        device = next((x.device for x in tensors if isinstance(x, torch.Tensor)), torch.device("cpu"))
    input_syms: dict[sympy.Symbol, str] = {}
    for k, pos in enumerate(tensor_pos):
        x = tensors[pos]
        ndim = x.dim()
        dyn: dict[int, str] = {}
        if batch_dim is not None and ndim > 0:
            dyn[batch_dim % ndim] = "t"
        for (i, d), name in named.items():
            if i == k:
                if not -ndim <= d < ndim:
                    raise ShapeError(f"dimension {name!r} is dim {d} of input {k}, which has {ndim} dims")
                dyn[d % ndim] = name
        if widths and x.is_floating_point() and ndim >= 2 and 1 not in dyn:
            dyn[1] = "__width__"
        shape = list(x.shape)
        for d, name in dyn.items():
            if name in hints:
                shape[d] = hints[name]
            if shape[d] in (0, 1):
                raise ShapeError(
                    f"dimension {name!r} has example size {shape[d]}; sizes 0 and 1 are specialized "
                    f"by the tracer, so give an example size of 2 or more"
                )
        real = torch.empty(shape, dtype=x.dtype, device=device)
        fake = mode.from_tensor(real, symbolic_context=_context(real, set() if static else set(dyn)))
        for d, name in ({} if static else dyn).items():
            sym = fake.shape[d].node.expr
            input_syms[sym] = name
        fake_leaves[pos] = fake
    fargs, fkwargs = pytree.tree_unflatten(fake_leaves, spec)

    width_syms: list[sympy.Symbol] = []

    def fake_param(value: torch.Tensor) -> torch.Tensor:
        dynamic = set()
        if widths and value.dim() >= 1 and value.is_floating_point():
            dynamic = {0, 1} & set(range(value.dim()))
            dynamic = {d for d in dynamic if value.shape[d] > 1}
        fake = mode.from_tensor(value, symbolic_context=_context(value, dynamic))
        order = [1, 0] if value.dim() >= 2 else [0]
        for d in order:
            if d in dynamic:
                width_syms.append(fake.shape[d].node.expr)
        return fake

    params = {k: fake_param(v) for k, v in model.named_parameters()}
    buffers = {k: fake_param(v) for k, v in model.named_buffers()}
    trainable = frozenset(k for k, v in model.named_parameters() if v.requires_grad)
    loss_fn = loss or default_loss

    recorder = _Recorder()
    param_nodes = {recorder.placeholder(f"param_{k}", v).name: name for k, (name, v) in enumerate(params.items())}
    buffer_nodes = {recorder.placeholder(f"buffer_{k}", v).name: name for k, (name, v) in enumerate(buffers.items())}
    input_nodes = [recorder.placeholder(f"input_{k}", x).name for k, x in enumerate(tree_leaves((fargs, fkwargs)))
                   if isinstance(x, torch.Tensor)]

    def joint() -> tuple[list[torch.Tensor], Sequence[torch.Tensor | None]]:
        recorder.set_tag(phase="forward", module="")
        with _module_tags(model, recorder):
            out = model(*fargs, **fkwargs)
        recorder.set_tag(phase="loss", module="")
        scalar = loss_fn(out)
        if not isinstance(scalar, torch.Tensor) or scalar.numel() != 1:
            raise TraceError("the loss must return a scalar tensor")
        wrt = [params[k] for k in params if k in trainable]
        # only tensors leave the traced function (an output may hold caches, e.g. HF's DynamicCache)
        outs = [x for x in tree_leaves(out) if isinstance(x, torch.Tensor)]
        if not wrt or not scalar.requires_grad:
            return outs, ()
        _tag_backward([scalar.grad_fn], recorder.set_tag)
        grads = torch.autograd.grad(scalar, wrt, allow_unused=True)
        return outs, grads

    # the fake parameters stay in the model through the backward too: a checkpointed region
    # (torch.utils.checkpoint) runs its forward again there
    swap = _reparametrize_module(model, {**params, **buffers}, tie_weights=True)
    try:
        with contextlib.ExitStack() as stack:
            for ctx in (_quiet_fake_tensor_log(), _eager_lstm_kernels(), swap, mode, enable_python_dispatcher(), recorder):
                stack.enter_context(ctx)
            autocast_cache = torch.is_autocast_cache_enabled()
            torch.set_autocast_cache_enabled(False)  # as make_fx: cached casts would be untracked tensors
            try:
                result = joint()
            finally:
                torch.set_autocast_cache_enabled(autocast_cache)
    except (TraceError, ShapeError):
        raise
    except Exception as err:  # anything torch raises while tracing the user's model
        cls, cause = _classify(err)
        names = {str(sym): name for sym, name in input_syms.items() if name != "__width__"}
        cause = re.sub(r"\bs\d+\b", lambda m: names.get(m.group(0), m.group(0)), cause)
        where = _source_line(err)
        raise cls(
            f"cannot trace {type(model).__name__}: {cause}" + (f"\n  at {where}" if where else "")
        ) from err
    recorder.output(result)

    rename, user_symbols, hint_values = _name_symbols(shape_env, input_syms, width_syms, widths)
    assumptions = _assumptions(shape_env, rename, user_symbols)
    module_types = {name: type(mod).__name__ for name, mod in model.named_modules()}
    leaves = frozenset(name for name, mod in model.named_modules() if not any(True for _ in mod.children()))
    return Trace(
        graph=recorder.graph,
        rename=rename,
        shape_env=shape_env,
        user_symbols=user_symbols,
        hints=hint_values,
        param_nodes=param_nodes,
        buffer_nodes=buffer_nodes,
        input_nodes=input_nodes,
        trainable=trainable,
        assumptions=assumptions,
        dropped_guards=[],
        module_types=module_types,
        leaf_modules=leaves,
    )


def _name_symbols(
    shape_env: ShapeEnv,
    input_syms: Mapping[sympy.Symbol, str],
    width_syms: Sequence[sympy.Symbol],
    widths: str | None,
) -> tuple[dict[sympy.Symbol, sympy.Expr], dict[str, sympy.Symbol], dict[sympy.Symbol, int]]:
    """Give every free ShapeEnv symbol a user name: t and named dims first, widths in layer order."""
    rename: dict[sympy.Symbol, sympy.Expr] = {}
    user: dict[str, sympy.Symbol] = {}
    hints: dict[sympy.Symbol, int] = {}
    values = shape_env.backed_var_to_val if hasattr(shape_env, "backed_var_to_val") else shape_env.var_to_val

    def canon(sym: sympy.Symbol) -> sympy.Expr:
        return shape_env.replace(sym)

    ordered: list[tuple[sympy.Symbol, str | None]] = []
    ordered += [(s, name) for s, name in input_syms.items() if name != "__width__"]
    width_like = [s for s, name in input_syms.items() if name == "__width__"] + list(width_syms)
    seen_width: list[sympy.Expr] = []
    for s in width_like:
        c = canon(s)
        if c.is_Symbol and c not in seen_width and c not in [canon(x) for x, _ in ordered]:
            seen_width.append(c)
    names = width_names(len(seen_width), widths or "d")
    for c, name in zip(seen_width, names):
        ordered.append((c, name))

    for s, name in ordered:
        c = canon(s)
        if not c.is_Symbol:
            if name in ("t",) or name in {d for d in input_syms.values()}:
                if c.is_Number:
                    hint = "" if name == "t" else (
                        f" (if another input has this size, name it there too: "
                        f"dims={{{name!r}: [(input, dim), ...]}})"
                    )
                    raise TraceError(
                        f"the model pins {name!r} to {c}: a shape check fixed it during tracing, "
                        f"so no formula in {name} exists on the symbolic route{hint}"
                    )
            continue
        if c in rename:
            continue
        user_sym = symbol(name)
        rename[c] = user_sym
        user.setdefault(name, user_sym)
        if c in values:
            hints[user_sym] = int(values[c])
    for s in list(input_syms) + list(width_syms):
        c = canon(s)
        if s not in rename and c.is_Symbol and c in rename:
            rename[s] = rename[c]
    return rename, user, hints


def _assumptions(
    shape_env: ShapeEnv, rename: Mapping[sympy.Symbol, sympy.Expr], user: Mapping[str, sympy.Symbol]
) -> list[sympy.Basic]:
    """Guards that bound a user symbol (e.g. ``t < 16``), in user symbols; noise dropped."""
    out: list[sympy.Basic] = []
    allowed = set(user.values())
    for guard in shape_env.guards:
        try:
            expr = to_plain(shape_env.replace(guard.expr)).xreplace(rename)
        except Exception:  # a guard sympy cannot rewrite is not a bound we can state
            continue
        if expr in (sympy.true, sympy.false) or not expr.free_symbols <= allowed:
            continue
        if not isinstance(expr, (sympy.StrictLessThan, sympy.LessThan, sympy.StrictGreaterThan, sympy.GreaterThan)):
            continue
        if holds_everywhere(expr) or expr in out:
            continue
        out.append(as_bound(expr))
    return tightest(out)


def trace_training_step(
    model: torch.nn.Module,
    example_input: Any,
    *,
    batch_dim: int | None = 0,
    dims: Sequence[DimSpec] = (),
    widths: str | None = None,
    loss: Callable[[Any], torch.Tensor] | None = None,
) -> Trace:
    """Trace one training step (forward, loss, backward) of ``model`` with symbolic sizes.

    Guards that bound a symbol (``t < 16``) are tested by a concrete (cheaper) re-trace past
    the bound: a guard whose re-trace runs the same ops with the shapes the formulas predict is
    dropped (kept in ``dropped_guards``); one that changes the graph stays in ``assumptions``.
    """
    hints = {"t": BATCH_HINT} if batch_dim is not None else {}
    trace = _trace_once(model, example_input, hints=hints, batch_dim=batch_dim, dims=dims, widths=widths, loss=loss)
    kept, dropped = [], []
    for guard in trace.assumptions:
        beyond = violating_hints(guard, trace.hints)
        if beyond is None:
            kept.append(guard)
            continue
        values = {**{str(s): v for s, v in trace.hints.items()}, **beyond}
        try:
            other = trace_at(model, example_input, values, batch_dim=batch_dim, dims=dims, loss=loss)
        except Exception:  # the model does not run past the bound: the bound is real
            kept.append(guard)
            continue
        (dropped if _same_graph_at(trace, other, values) else kept).append(guard)
    trace.assumptions, trace.dropped_guards = kept, dropped
    return trace


def trace_at(
    model: torch.nn.Module,
    example_input: Any,
    values: Mapping[str, int],
    *,
    batch_dim: int | None = 0,
    dims: Sequence[DimSpec] = (),
    loss: Callable[[Any], torch.Tensor] | None = None,
) -> Trace:
    """Trace one training step with every size concrete: ``values`` gives t and the named dims.

    The fallback route traces at several such points and interpolates (see ``fallback.py``).
    """
    return _trace_once(
        model, example_input, batch_dim=batch_dim, dims=dims, widths=None, hints=values, loss=loss, static=True
    )


def _tensor_ops(trace: Trace) -> list[torch.fx.Node]:
    """The aten calls of a trace, without size arithmetic (which only a symbolic trace has)."""
    return [
        n for n in trace.graph.nodes
        if n.op == "call_function" and isinstance(n.target, OpOverload) and not n.target._opname.startswith("sym_")
    ]


def _same_graph_at(symbolic: Trace, concrete: Trace, values: Mapping[str, int]) -> bool:
    """The concrete trace runs the same ops, with the shapes the symbolic one gives at ``values``."""
    at = {symbol(k): v for k, v in values.items()}
    na, nb = _tensor_ops(symbolic), _tensor_ops(concrete)
    if len(na) != len(nb):
        return False
    for x, y in zip(na, nb):
        if x.target != y.target:
            return False
        vx, vy = x.meta.get("val"), y.meta.get("val")
        if isinstance(vx, TensorMeta) and isinstance(vy, TensorMeta):
            if [e.subs(at) for e in symbolic.shape(vx)] != list(vy.shape):
                return False
    return True
