"""Block reuse: trace each distinct block once, and copy its recorded ops for every later identical call.

A module called again as another object of the same class, with equal parameter and buffer
layouts, equal non-tensor state (its own and every submodule's, compared by value) and
arguments of the same structure, shapes, strides, dtypes and ``requires_grad``, does not run:
a :class:`_ReplayFn` makes its outputs unrecorded, the recorder gets copies of the first call's
(the template's) forward nodes at that point, and its backward records a marker that
:meth:`BlockReuse.finish` replaces by copies of the template's backward stretch. The template
learns its boundaries through identity functions around its inputs and output (their
backwards mark where its backward starts and ends). Whatever cannot be shown to match is
refused: at the call (the block traces normally) or, when only the backward shows it, by
:class:`ReuseFallback` (the step is traced again without reuse). See docs/performance.md.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch

from .._torch import current_sequence_nr, is_op, module_attributes, rename_in_order, tree_flatten, tree_unflatten
from ..errors import SymcxError
from .attr_reads import reads_logged
from .recorder import Recorder, TensorMeta

__all__ = ["candidates", "too_little_to_reuse", "BlockReuse", "ReuseFallback", "op_multiset", "PLAIN"]

#: Non-tensor values compared by value in keys (anything else by identity).
PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.device, torch.layout, torch.memory_format)
_CHECKPOINT = os.path.join("utils", "checkpoint.py")
#: Fewer forward ops than this: tracing the block again costs less than replaying it.
MIN_OPS = 4
#: Reuse pays where the repeats (after a kind's first) hold at least this share of the model's leaf
#: modules: a replay saves its ops forward and backward, the check runs the whole forward once
#: more, at about half a traced op's cost (ResNet-18, one repeat among 8 blocks: 15 % slower).
MIN_REPEATED_SHARE = 0.2
_SMALL = "too small to gain"
_TWICE = "a module of its kind is called more than once"


class ReuseFallback(SymcxError):
    """Block reuse cannot show the copies equal a full trace: trace again, with the modules of
    ``keys`` (static keys) traced normally."""

    def __init__(self, message: str, *keys: Any) -> None:
        super().__init__(message)
        self.keys = frozenset(keys)


def _frozen(value: Any, depth: int = 0) -> Any:
    """A hashable stand-in for ``value``: plain values and their containers by value, others by identity."""
    if isinstance(value, PLAIN):
        return (type(value).__name__, value)
    if depth < 4 and isinstance(value, (tuple, list, set, frozenset)):
        items = tuple(_frozen(v, depth + 1) for v in value)
        return (type(value).__name__, tuple(sorted(items, key=repr)) if isinstance(value, (set, frozenset)) else items)
    if depth < 4 and isinstance(value, dict):
        return ("dict", tuple(sorted(((repr(k), _frozen(v, depth + 1)) for k, v in value.items()), key=repr)))
    if depth < 4 and type(value) is functools.partial:  # HF activations: partial(F.gelu, approximate=...)
        return ("partial", id(value.func), _frozen(value.args, depth + 1), _frozen(value.keywords, depth + 1))
    return ("id", id(value))


def _scalar(value: Any) -> bool:
    return isinstance(value, PLAIN) and not isinstance(value, (torch.dtype, torch.device, torch.layout,
                                                                 torch.memory_format))


def _own_state(sub: torch.nn.Module) -> tuple[tuple, tuple, dict[str, Any]] | None:
    """One module's part of :func:`_module_state`, submodules aside: its frozen attributes, its own
    tensors' layouts and its plain scalars by name; None when it has hooks of its own."""
    attrs = module_attributes(sub)
    if attrs is None:
        return None
    tensors = [(k, tuple(v.shape), v.dtype, v.requires_grad) for k, v in sub.named_parameters(recurse=False)]
    tensors += [(k, tuple(v.shape), v.dtype) for k, v in sub.named_buffers(recurse=False)]
    scalars = {k: _frozen(v) for k, v in attrs.items() if _scalar(v)}
    frozen = tuple(sorted(((k, ("scalar", type(v).__name__) if _scalar(v) else _frozen(v))
                           for k, v in attrs.items()), key=repr))
    return frozen, tuple(tensors), scalars


def _module_state(mod: torch.nn.Module,
                  owns: dict[int, Any] | None = None) -> tuple[tuple, dict[tuple[str, str], Any]] | None:
    """Class, non-tensor attributes and tensor layouts of ``mod`` and every submodule, by relative
    name, with each plain scalar attribute (an int, a float, a str, a bool, None) by its type only;
    and those scalars' values by (submodule, name). None when a module has hooks of its own (they
    may differ by call). ``owns`` keeps each module's :func:`_own_state` (by id) across calls."""
    owns = {} if owns is None else owns
    out, scalars = [], {}
    for name, sub in mod.named_modules(remove_duplicate=False):
        if id(sub) not in owns:
            owns[id(sub)] = _own_state(sub)
        own = owns[id(sub)]
        if own is None:
            return None
        frozen, tensors, values = own
        scalars.update({(name, k): v for k, v in values.items()})
        out.append((name, type(sub), frozen, tensors))
    return tuple(out), scalars


Candidates = tuple[dict[int, str], dict[int, tuple], dict[int, dict]]


def candidates(model: torch.nn.Module) -> Candidates:
    """Module paths by id; the static key of every module that has a twin (another object with an
    equal key) and no parameter held outside it (a tied weight's gradient is a sum across blocks);
    and per such module its scalar attributes that differ among its twins (submodule -> names)."""
    paths: dict[int, str] = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(mod), name)
    holders: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        holders.setdefault(id(p), []).append(name)
    keys: dict[int, tuple] = {}
    scalars: dict[int, dict] = {}
    owns: dict[int, Any] = {}
    for mod in {id(m): m for m in model.modules()}.values():
        path = paths[id(mod)]
        if mod is model or "forward" in vars(mod):
            continue
        own = [p for _, p in mod.named_parameters(remove_duplicate=False)]
        if any(not n.startswith(path + ".") for p in own for n in holders[id(p)]):
            continue
        state = _module_state(mod, owns)
        if state is not None:
            keys[id(mod)], scalars[id(mod)] = state
    groups: dict[tuple, list[int]] = {}
    for k, v in keys.items():
        groups.setdefault(v, []).append(k)
    differ: dict[int, dict] = {}
    for members in (m for m in groups.values() if len(m) > 1):
        names = {key for key in scalars[members[0]] if len({scalars[m][key] for m in members}) > 1}
        watched: dict[str, frozenset[str]] = {}
        for sub, attr in names:
            watched[sub] = watched.get(sub, frozenset()) | {attr}
        differ.update({m: watched for m in members})
    return paths, {k: keys[k] for k in differ}, differ


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def _builtin(mod: torch.nn.Module) -> bool:
    return type(mod).__module__.startswith("torch.nn.")


def _leaves(mod: torch.nn.Module) -> int:
    return sum(1 for m in mod.modules() if next(m.children(), None) is None)


def too_little_to_reuse(model: torch.nn.Module, found: Candidates | None = None) -> str | None:
    """Why block reuse would cost more than it saves, or None where it may pay ("" where nothing
    repeats: nothing to say in a report).

    The repeats are the twins after the first of each kind, outermost kinds only (a replayed
    block brings its submodules), torch.nn's own leaf modules left out (a ``Linear``, a norm:
    one op or two, too small to replay); counted in leaf modules, they must be
    :data:`MIN_REPEATED_SHARE` of the model's. ``found``: :func:`candidates` of ``model``, if known.
    """
    paths, keys, _ = found or candidates(model)
    groups: dict[tuple, list[str]] = {}
    for ident, key in keys.items():
        groups.setdefault(key, []).append(paths[ident])
    inside = {p for members in groups.values() for p in members}
    mods = dict(model.named_modules())
    repeated = 0
    for members in groups.values():
        outer = [p for p in members if not any(a in inside for a in _ancestors(p))]
        if len(outer) > 1 and (next(mods[outer[0]].children(), None) is not None or not _builtin(mods[outer[0]])):
            repeated += (len(outer) - 1) * _leaves(mods[outer[0]])
    total = _leaves(model)
    if repeated >= MIN_REPEATED_SHARE * total:
        return None
    if not repeated:
        return ""
    return (f"the repeated blocks hold {repeated} of the model's {total} leaf modules, fewer than the "
            f"{MIN_REPEATED_SHARE:.0%} at which replaying them saves more than checking them costs")


def _size(value: Any) -> Any:
    return value.node.expr if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)) else value


def _layout(x: torch.Tensor) -> tuple:
    return (tuple(_size(s) for s in x.shape), tuple(_size(s) for s in x.stride()), x.dtype, x.device)


def _boundary_meta(x: torch.Tensor) -> tuple:
    return (tuple(x.shape), tuple(x.stride()), x.dtype, x.device)


def _empty(meta: tuple) -> torch.Tensor:
    shape, stride, dtype, device = meta
    return torch.empty_strided(shape, stride, dtype=dtype, device=device)


class _Probe:
    """What an identity boundary saw in the backward: the gradient's node and the graph's tail then."""

    def __init__(self, reuse: "BlockReuse") -> None:
        self.reuse = reuse
        self.tag: dict[str, Any] | None = None
        self.fired = False
        self.grad: torch.fx.Node | None = None
        self.owner: torch.fx.Node | None = None  # the node owning the gradient's storage (a view's base)
        self.tail: torch.fx.Node | None = None

    def pre(self, grad_outputs: Any) -> None:  # runs before tag_backward's hook: keep the tag it overwrites
        self.tag = dict(self.reuse.recorder.tag)

    def saw(self, grad: torch.Tensor | None) -> None:
        rec = self.reuse.recorder
        self.fired = True
        self.grad = rec.node_of(grad) if grad is not None and rec.knows(grad) else None
        self.owner = rec.storage_owner(grad) if self.grad is not None else None
        self.tail = rec.last_node()
        if self.tag is not None:  # an identity adds nothing: the engine's next add is the block's
            rec.set_tag(**self.tag)


class _BoundaryFn(torch.autograd.Function):
    """Identity at a template's boundary, on a fresh stand-in (an in-place op on it stays legal)."""

    @staticmethod
    def forward(ctx: Any, probe: _Probe, x: torch.Tensor) -> torch.Tensor:
        ctx.probe = probe
        ctx.set_materialize_grads(False)
        return _empty(_boundary_meta(x))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple:
        ctx.probe.saw(grad)
        return None, grad


def _marker(*grads: Any) -> None:
    """Target of the node a replayed block's backward leaves, spliced away by ``finish``."""


class _ReplayFn(torch.autograd.Function):
    """A replayed block: its outputs made unrecorded in the forward; a marker in the backward."""

    @staticmethod
    def forward(ctx: Any, call: "_Call", *tensors: torch.Tensor) -> tuple:
        ctx.call = call
        ctx.set_materialize_grads(False)
        outs = tuple(_empty(m) for m in call.template.out_metas)
        ctx.mark_non_differentiable(*[o for o, g in zip(outs, call.template.out_grad) if not g])
        return outs

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple:
        return (None, *ctx.call.backward(grads, ctx.needs_input_grad[1:]))


class _Template:
    """The first call of a key: its forward nodes, what they read from outside, its output, and
    (filled in by the backward) the boundaries' gradients and the parameters'."""

    def __init__(self, path: str, reuse: BlockReuse) -> None:
        self.path = path
        self.refused: str | None = None
        self.static: Any = None  # the module's static key (what a retry bans)
        self.multi: set[int] = set()  # argument leaves the block reads in more than one op
        self.fwd: list[torch.fx.Node] = []
        self.external: dict[torch.fx.Node, tuple[str, Any]] = {}  # node -> ("leaf", i) / ("param"|"buffer", name)
        self.rebound: list[tuple[tuple[str, Any], torch.fx.Node]] = []  # a buffer updated in place -> its new node
        self.seqs = (0, 0)  # [first, end) autograd sequence numbers of the forward
        self.out_spec: Any = None
        self.out_leaves: list[Any] = []  # non-tensor leaves as they are; tensors as None
        self.out_nodes: list[torch.fx.Node] = []
        self.out_owners: list[torch.fx.Node] = []  # the node owning each output's storage (a view's base)
        self.out_metas: list[tuple] = []
        self.out_grad: list[bool] = []
        self.out_probe = _Probe(reuse)
        self.in_probes: dict[int, _Probe] = {}  # leaf index -> the probe of its boundary
        self.param_grads: dict[str, torch.fx.Node] = {}
        self.engine_adds: list[tuple[torch.fx.Node, torch.fx.Node]] = []  # (the engine's add, the share it adds)
        self.grad_owners: dict[tuple[str, Any], torch.fx.Node] = {}  # ("param", name) -> its storage's node
        self.uses = 0
        self.reads: dict[tuple[str, str], Any] = {}  # attributes differing among twins that its code read
        self.differ: dict[str, frozenset[str]] = {}  # those that differ (submodule -> names)

    def param_hook(self, name: str, recorder: Recorder, grad: torch.Tensor) -> None:
        if recorder.knows(grad):
            self.param_grads[name] = recorder.node_of(grad)
            self.grad_owners[("param", name)] = recorder.storage_owner(grad)


class _Call:
    """One replayed call: how the template's outside nodes map to this call's, and its marker."""

    def __init__(self, reuse: BlockReuse, template: _Template, path: str, seq_base: int, grads_of: list) -> None:
        self.reuse, self.template, self.path, self.seq_base = reuse, template, path, seq_base
        self.map: dict[torch.fx.Node, torch.fx.Node] = {}
        self.grads_of = grads_of  # per replay input: ("leaf", i) or ("param", name), with its layout
        self.marker: torch.fx.Node | None = None
        self.grad_nodes: list[tuple[tuple[str, Any], torch.fx.Node]] = []
        self.end_seq = 0  # the tag the backward leaves, resolved by finish

    def seq(self, seq: int | None, replay_seq: int) -> int | None:
        first, end = self.template.seqs
        if seq is None:
            return None
        return self.seq_base + seq - first if first <= seq < end else replay_seq

    def backward(self, grads: tuple, needs: tuple) -> list[torch.Tensor | None]:
        """Record the marker and return stand-in gradients bound to its items."""
        rec = self.reuse.recorder
        args = tuple(rec.node_of(g) if g is not None and rec.knows(g) else None for g in grads)
        self.marker = rec.graph.create_node("call_function", _marker, args, name="reuse_marker")
        self.marker.meta.update(custom=dict(rec.tag), seq_nr=current_sequence_nr())
        rec.mark_last(self.marker)  # a death while the block's backward "runs": finish moves it into the copies
        out: list[torch.Tensor | None] = []
        for k, ((what, meta), need) in enumerate(zip(self.grads_of, needs)):
            if not need:
                out.append(None)
                continue
            with rec.paused():
                g = _empty(meta)
            node = rec.graph.call_function(operator.getitem, (self.marker, k))
            node.meta.update(val=TensorMeta(tuple(g.shape), g.dtype), custom=dict(rec.tag),
                             seq_nr=current_sequence_nr())
            rec.bind(g, node, watch=node)  # its death is the real one: finish moves it to the copy
            self.grad_nodes.append((what, node))
            out.append(g)
        self.end_seq = self.reuse.fresh_seq(1)
        rec.set_tag(phase="backward", seq_nr=self.end_seq)
        return out


def _in_checkpoint() -> bool:
    """Whether the call runs inside ``torch.utils.checkpoint`` (its recompute would replay nothing)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.endswith(_CHECKPOINT):
            return True
        frame = frame.f_back
    return False


class BlockReuse:
    """Replays later calls of identical modules from the first call's recorded nodes (see the module doc).

    Use :meth:`installed` around the step, then :meth:`finish` on the recorded graph.
    """

    def __init__(self, model: torch.nn.Module, recorder: Recorder, banned: frozenset = frozenset(),
                 found: Candidates | None = None) -> None:
        self.model, self.recorder = model, recorder
        self.paths, self.static, self.watched = found or candidates(model)
        self.static = {k: v for k, v in self.static.items() if v not in banned}
        self.templates: dict[tuple, list[_Template]] = {}  # a key's templates, one per value of what they read
        self.calls: list[_Call] = []
        self.refusals: dict[str, str] = {}  # module path -> why it traced normally
        self.busy = False  # inside a template or a replay: nested blocks trace normally
        self.called: set[int] = set()  # candidate modules called so far (outside templates and replays)
        self.twice: set[tuple] = set()  # static keys of a module called twice before any was replayed
        self.restamp: dict[int, int] = {}  # a boundary's or replay's sequence number -> the one a full trace has
        self._seq = -(1 << 40)

    def fresh_seq(self, count: int) -> int:
        """The first of ``count`` sequence numbers no autograd node has (negative ones)."""
        first, self._seq = self._seq, self._seq + count
        return first

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Every candidate module's ``forward`` goes through :meth:`_call` while the step runs."""
        mods = [m for m in self.model.modules() if id(m) in self.static]
        for mod in mods:
            mod.forward = functools.partial(self._call, mod, mod.forward)
        try:
            yield
        finally:
            for mod in mods:
                del mod.forward

    def _call(self, mod: torch.nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
        if self.busy or self.recorder.tag.get("phase") != "forward":
            return forward(*args, **kwargs)
        if id(mod) in self.called:  # a module run twice: its parameters' gradients are sums over its calls
            inner = {self.static[id(m)] for m in mod.modules() if id(m) in self.static}
            if any(t.refused is None and t.static in inner for t in self._all()):
                raise ReuseFallback(f"{self.paths[id(mod)]} is called more than once", *inner)
            self.twice |= inner  # nothing of their kinds replayed yet: traced normally from here on, no new trace
        if self.static[id(mod)] in self.twice:
            self.refusals.setdefault(self.paths[id(mod)], _TWICE)
            return forward(*args, **kwargs)
        self.called.add(id(mod))
        leaves, spec = tree_flatten((args, kwargs))
        key = self._key(mod, leaves, spec)
        if isinstance(key, str):
            self.refusals.setdefault(self.paths[id(mod)], key)
            return forward(*args, **kwargs)
        template = _matching(self.templates.get(key, ()), mod)
        if template is None:
            return self._template(mod, forward, key, leaves, spec)
        if template.refused is not None:
            self.refusals.setdefault(self.paths[id(mod)], template.refused)
            return forward(*args, **kwargs)
        return self._replay(template, mod, leaves)

    def _key(self, mod: torch.nn.Module, leaves: list[Any], spec: Any) -> tuple | str:
        """What the call's ops can depend on, or why it cannot be keyed (the call then traces normally)."""
        if not torch.is_grad_enabled():
            return "grad mode is off"
        if any(torch.is_autocast_enabled(d) for d in ("cpu", "cuda")) or _in_checkpoint():
            return "it runs under autocast or activation checkpointing"
        storages: dict[int, int] = {}
        sig: list[Any] = []
        for x in leaves:
            if isinstance(x, torch.Tensor):
                if not self.recorder.knows(x):
                    return "an argument tensor the recorder has not seen"
                first = storages.setdefault(id(x.untyped_storage()), len(storages))
                sig.append(("T", _layout(x), _size(x.storage_offset()), x.requires_grad, first))
            elif isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                sig.append(("S", _size(x)))
            elif isinstance(x, PLAIN):
                sig.append(("V", type(x).__name__, x))
            else:
                return f"an argument of type {type(x).__name__} (its methods may act where a replay would not)"
        tensors = [("P", k, _layout(v), v.requires_grad) for k, v in mod.named_parameters()]
        tensors += [("B", k, _layout(v)) for k, v in mod.named_buffers()]
        return (self.static[id(mod)], repr(spec), tuple(sig), tuple(tensors))

    def _externals(self, mod: torch.nn.Module, leaves: list[Any]) -> dict[tuple[str, Any], torch.Tensor]:
        """The tensors a call reads from outside: argument leaves, then its parameters and buffers."""
        out: dict[tuple[str, Any], torch.Tensor] = {("leaf", i): x for i, x in enumerate(leaves)
                                                    if isinstance(x, torch.Tensor)}
        out.update({("param", k): v for k, v in mod.named_parameters()})
        out.update({("buffer", k): v for k, v in mod.named_buffers()})
        return out

    def _template(self, mod: torch.nn.Module, forward: Any, key: tuple, leaves: list[Any], spec: Any) -> Any:
        """Run the first call of ``key`` normally between identity boundaries, and learn its nodes."""
        rec = self.recorder
        t = _Template(self.paths[id(mod)], self)
        self.templates.setdefault(key, []).append(t)
        plain_args, plain_kwargs = tree_unflatten(leaves, spec)
        outside = self._externals(mod, leaves)
        for what, x in outside.items():
            t.external.setdefault(rec.node_of(x), what)
        needing = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.requires_grad]
        if any(not isinstance(leaves[i].storage_offset(), int) or leaves[i].storage_offset() != 0 for i in needing):
            t.refused = "an argument needing a gradient is a view at an offset"
            return forward(*plain_args, **plain_kwargs)
        wrapped = list(leaves)
        pre = current_sequence_nr()  # what an op that makes no autograd node inherits, as without boundaries
        for i in needing:
            t.in_probes[i] = probe = _Probe(self)
            wrapped[i] = self._boundary(probe, leaves[i])
        args, kwargs = tree_unflatten(wrapped, spec)
        tail = rec.last_node()
        first = current_sequence_nr() + 1
        before = _module_state(mod)
        self.busy = True
        try:
            with reads_logged(mod, self.watched[id(mod)]) as read:
                out = forward(*args, **kwargs)
        finally:
            self.busy = False
        values = before[1] if before is not None else {}  # what its code read: the values it ran with
        t.reads = {(sub, name): values.get((sub, name)) for sub, names in read.items() for name in names}
        t.differ = self.watched[id(mod)]
        t.seqs = (first, current_sequence_nr() + 1)
        t.fwd = _after(rec.graph, tail)
        for node in t.fwd:
            if pre < node.meta.get("seq_nr", pre) < first:
                node.meta["seq_nr"] = pre
        inner = {**outside, **{("leaf", i): wrapped[i] for i in t.in_probes}}
        t.static = self.static[id(mod)]
        t.multi = {i for i in t.in_probes if sum(rec.node_of(leaves[i]) in n.all_input_nodes for n in t.fwd) > 1}
        t.refused = self._learn(t, mod, inner, outside, out)
        if t.refused is None and (before is None or _module_state(mod) != before):
            t.refused = "its forward changes its own attributes or hooks (a replay would not)"
        if t.refused is None and sum(n.target is not operator.getitem for n in t.fwd) < MIN_OPS:
            t.refused = _SMALL
        if t.refused is not None:
            return out
        for name, p in mod.named_parameters():
            if p.requires_grad:
                p.register_hook(functools.partial(t.param_hook, name, rec))
        out_leaves, _ = tree_flatten(out)
        for k, x in enumerate(out_leaves):
            if isinstance(x, torch.Tensor) and x.requires_grad:
                out_leaves[k] = self._boundary(t.out_probe, x)
        if current_sequence_nr() >= t.seqs[1]:  # ops after the block inherit its last number, not the boundary's
            self.restamp[current_sequence_nr()] = t.seqs[1] - 1 if t.seqs[1] > first else pre
        return tree_unflatten(out_leaves, t.out_spec)

    def _boundary(self, probe: _Probe, x: torch.Tensor) -> torch.Tensor:
        """``x`` through an identity :class:`_BoundaryFn`, unrecorded; the stand-in keeps ``x``'s node."""
        rec = self.recorder
        with rec.paused():
            y = _BoundaryFn.apply(probe, x)
        y.grad_fn.register_prehook(probe.pre)
        rec.bind(y, rec.node_of(x), watch=rec.storage_owner(x))
        return y

    def _learn(self, t: _Template, mod: torch.nn.Module, inner: dict, outside: dict, out: Any) -> str | None:
        """Check the template's forward reads only its arguments, parameters and buffers, and note
        its output; the reason to refuse its key, or None."""
        rec, mine = self.recorder, set(t.fwd)
        for node in t.fwd:
            tag = node.meta.get("custom") or {}
            module = tag.get("module", "")
            if tag.get("phase") != "forward" or tag.get("recompute") or not (
                    module == t.path or module.startswith(t.path + ".")):
                return "its forward records ops outside the block"
            if any(src not in mine and src not in t.external for src in node.all_input_nodes):
                return "its forward reads a tensor that is not an argument, parameter or buffer"
        for what, x in inner.items():
            now = rec.node_of(x)
            if now is not rec.node_of(outside[what]) or (what[0] != "leaf" and t.external.get(now) is None):
                if what[0] != "buffer" or now not in mine:
                    return "its forward changes an argument or a parameter in place"
                t.rebound.append((what, now))
        return self._learn_output(t, out, {id(x.untyped_storage()) for x in outside.values()})

    def _learn_output(self, t: _Template, out: Any, taken: set[int]) -> str | None:
        rec, mine = self.recorder, set(t.fwd)
        leaves, t.out_spec = tree_flatten(out)
        storages: set[int] = set()
        for x in leaves:
            if not isinstance(x, torch.Tensor):
                if not isinstance(x, PLAIN):
                    return f"it returns a {type(x).__name__}"
                t.out_leaves.append(x)
                continue
            storage = id(x.untyped_storage())
            owner = rec.storage_owner(x)
            if not rec.knows(x) or rec.node_of(x) not in mine or storage in taken | storages or owner not in mine:
                return "its output is not a fresh tensor of its own"
            t.out_owners.append(owner)
            storages.add(storage)
            t.out_leaves.append(None)
            t.out_nodes.append(rec.node_of(x))
            t.out_metas.append(_boundary_meta(x))
            t.out_grad.append(x.requires_grad)
        if sum(t.out_grad) > 1:
            return "it returns more than one tensor that needs a gradient"
        return None

    def _replay(self, t: _Template, mod: torch.nn.Module, leaves: list[Any]) -> Any:
        """A later call of ``t``'s key: outputs from :class:`_ReplayFn`, the template's forward nodes copied."""
        rec = self.recorder
        outside = self._externals(mod, leaves)
        inputs = [(what, x) for what, x in outside.items() if what[0] != "buffer"]
        call = _Call(self, t, self.paths[id(mod)], self.fresh_seq(t.seqs[1] - t.seqs[0]),
                     [(what, _boundary_meta(x)) for what, x in inputs])
        call.map = {node: rec.node_of(outside[what]) for node, what in t.external.items()}
        replay_seq = current_sequence_nr()  # the number an op of the block that makes no autograd node inherits
        with rec.paused():
            outs = _ReplayFn.apply(call, *(x for _, x in inputs))
        if current_sequence_nr() > replay_seq:  # ops after the block inherit the copies' last number
            first, end = t.seqs
            self.restamp[current_sequence_nr()] = call.seq_base + end - first - 1 if end > first else replay_seq
        for node in t.fwd:
            copy_ = rec.graph.node_copy(node, call.map.__getitem__)
            tag = dict(node.meta.get("custom") or {})
            tag["module"] = call.path + tag["module"][len(t.path):]
            copy_.meta.update(custom=tag, seq_nr=call.seq(node.meta.get("seq_nr"), replay_seq))
            call.map[node] = copy_
        if t.fwd:
            rec.mark_last(call.map[t.fwd[-1]])
        for (what, node) in t.rebound:
            rec.bind(outside[what], call.map[node])
        for x, node, owner in zip(outs, t.out_nodes, t.out_owners):
            rec.bind(x, call.map[node], watch=call.map[owner])
        self.calls.append(call)
        t.uses += 1
        it = iter(outs)
        return tree_unflatten([next(it) if v is None else v for v in t.out_leaves], t.out_spec)

    def finish(self, graph: torch.fx.Graph, deaths: dict[str, str]) -> tuple[torch.fx.Graph, dict[str, str]]:
        """Replace every replay's marker by copies of its template's backward; the graph renamed as a
        full trace names it, and the storage deaths with it. Raises :class:`ReuseFallback` when a
        template's backward is not one stretch of its own (then trace again without reuse)."""
        for node in graph.nodes:
            if node.meta.get("seq_nr") in self.restamp and (node.meta.get("custom") or {}).get("phase") != "backward":
                node.meta["seq_nr"] = self.restamp[node.meta["seq_nr"]]
        for add, share in _refused_adds(self._all()):
            _deliver_early(add, share)
        if not self.calls:
            return graph, deaths
        order = {node: k for k, node in enumerate(graph.nodes)}
        stretches = {id(t): _stretch(t, graph, order, deaths) for t in self._all() if t.uses}
        positions = {node.name: k for node, k in order.items()}
        ends: dict[int, int] = {}
        replaced: dict[torch.fx.Node, torch.fx.Node] = {}  # a replay's gradient item -> the copy now standing for it
        adds = [pair for t in self._all() if t.uses for pair in t.engine_adds]
        for call in self.calls:
            stretch, end_seq = stretches[id(call.template)]
            ends[call.end_seq] = call.seq(end_seq, call.seq_base)
            adds += _splice(call, graph, stretch, deaths, replaced, positions)
        for node in graph.nodes:
            tag = node.meta.get("custom")
            if tag and tag.get("phase") == "backward" and tag.get("seq_nr") in ends:
                node.meta["custom"] = {**tag, "seq_nr": ends[tag["seq_nr"]]}
        for add, share in adds:
            _deliver_early(add, share)
        return _renamed(graph, deaths)

    def notes(self) -> list[str]:
        """``Trace.notes`` lines: which blocks were replayed from which, and which were refused and why."""
        out = []
        for t in self._all():
            paths = [c.path for c in self.calls if c.template is t]
            if paths:
                out.append(f"block reuse: {len(paths)} calls replayed from {t.path} "
                           f"({type(self._module(t.path)).__name__}): {', '.join(paths)}{_unread(t)}")
        for why in sorted(set(self.refusals.values()) - {_SMALL}):
            paths = [p for p, w in self.refusals.items() if w == why]
            out.append(f"block reuse refused for {', '.join(paths[:6])}{' …' if len(paths) > 6 else ''}: {why}")
        return out

    def _all(self) -> list[_Template]:
        return [t for ts in self.templates.values() for t in ts]

    def _module(self, path: str) -> torch.nn.Module:
        return self.model.get_submodule(path)


def _matching(templates: Any, mod: torch.nn.Module) -> _Template | None:
    """The template whose module read, of the attributes that differ among twins, the values ``mod`` has."""
    values = None
    for t in templates:
        if not t.reads:
            return t
        values = values or _module_state(mod)[1]
        if all(values.get(k) == v for k, v in t.reads.items()):
            return t
    return None


def _unread(t: _Template) -> str:
    """What the note says of the attributes the copies may differ in that the template's code did not read."""
    names = sorted({f"{sub + '.' if sub else ''}{name}" for sub, ns in t.differ.items() for name in ns
                    if (sub, name) not in t.reads})
    return f" (they differ in {', '.join(names)}, which its code does not read)" if names else ""


def _after(graph: torch.fx.Graph, tail: torch.fx.Node | None) -> list[torch.fx.Node]:
    """The nodes recorded after ``tail`` (all of them when ``tail`` is None)."""
    out, node = [], (tail.next if tail is not None else next(iter(graph.nodes), None))
    while node is not None and node.op != "root":
        out.append(node)
        node = node.next
    return out


def _stretch(t: _Template, graph: torch.fx.Graph, order: dict, deaths: dict[str, str]) -> tuple[list, int | None]:
    """The template's backward nodes and the tag seq its backward leaves; :class:`ReuseFallback` unless
    they are one uninterrupted stretch right after its output's gradient, reading only the block's."""
    first, end = t.seqs
    mine = [n for n in graph.nodes if (n.meta.get("custom") or {}).get("phase") == "backward"
            and isinstance(n.meta["custom"].get("seq_nr"), int) and first <= n.meta["custom"]["seq_nr"] < end]
    if not t.out_probe.fired:
        if mine:
            raise ReuseFallback(f"{t.path}'s backward runs without its output's gradient", t.static)
        return [], None
    start = order[t.out_probe.tail] + 1 if t.out_probe.tail is not None else 0
    if mine and (order[mine[0]] != start or order[mine[-1]] - start + 1 != len(mine)):
        raise ReuseFallback(f"{t.path}'s backward interleaves with other work", t.static)
    if any(n.meta["custom"].get("recompute") for n in mine):
        raise ReuseFallback(f"{t.path}'s backward recomputes its forward", t.static)
    fired = [p for p in t.in_probes.values() if p.fired]
    if mine and any(p.tail not in set(mine) and p.tail is not t.out_probe.tail for p in fired):
        raise ReuseFallback(f"{t.path}'s inputs get gradient outside its backward", t.static)
    last = max(fired, key=lambda p: order[p.tail]) if fired else None
    if last is not None:  # the tag the block's backward leaves: the engine's next add has it
        end_seq = (last.tag or {}).get("seq_nr")
    else:
        end_seq = mine[-1].meta["custom"]["seq_nr"] if mine else None
    if mine and not (end_seq is not None and first <= end_seq < end):
        raise ReuseFallback(f"{t.path}'s backward ends outside the block", t.static)
    mine = _engine_adds(t, mine, order)
    _check_reads(t, mine, deaths)
    return mine, end_seq


_ADDS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
#: An input read twice in the block and also outside: eager sums its gradient ((outside + first) + second).
_ORDER = "{} reads an input twice that is also read outside it: its gradient would be summed in another order"


def _engine_adds(t: _Template, mine: list, order: dict) -> list:
    """``mine`` up to the last input boundary's backward; what follows there is the engine adding the
    block's share of an input's gradient to what another reader gave (each replay's engine does too)."""
    fired = [p for p in t.in_probes.values() if p.fired]
    if not fired or not mine:
        return mine
    cut = max(order[p.tail] for p in fired)
    body = [n for n in mine if order[n] <= cut]
    sums = {p.grad for p in fired}
    multi = {t.in_probes[i].grad for i in t.multi}
    for add in mine[len(body):]:
        shares = [a for a in add.all_input_nodes if a in sums]
        if add.target not in _ADDS or len(shares) != 1:
            raise ReuseFallback(f"{t.path}'s backward goes on after its inputs got their gradients", t.static)
        if shares[0] in multi:
            raise ReuseFallback(_ORDER.format(t.path), t.static)
        t.engine_adds.append((add, shares[0]))
        sums.add(add)
    return body


def _refused_adds(templates: list[_Template]) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """(the engine's add, the share it adds) where a refused template's input boundary handed a share on:
    the boundary's own autograd node ran later than the op that made the share (other nodes between,
    by sequence number), so the add landed after them, with their tag. :class:`ReuseFallback` where
    a share is added elsewhere (several readers' shares summed in another order): traced again
    without those templates' boundaries."""
    out, unplaced = [], set()
    for t in templates:
        if t.refused is None:
            continue
        for p in t.in_probes.values():
            if not p.fired or p.grad is None:
                continue
            after = p.tail.next if p.tail is not None else None
            adds = [u for u in p.grad.users if u.target in _ADDS]
            if after is not None and after in adds and len(adds) == 1:
                out.append((after, p.grad))
            elif adds:
                unplaced.add(t.static)
    if unplaced:
        raise ReuseFallback("a block traced normally hands an input's gradient share to an add the boundary "
                            "moved", *unplaced)
    return out


def _deliver_early(add: torch.fx.Node, share: torch.fx.Node) -> None:
    """Put the engine's add of a block's gradient share for an input right after the autograd node that
    made the share, with its tag: where a full trace routes it (a boundary or a replay hands it on at
    the block's end, after the block's other work)."""
    seq = (share.meta.get("custom") or {}).get("seq_nr")
    last = share
    while last.next.op != "root" and last.next is not add and (last.next.meta.get("custom") or {}).get("seq_nr") == seq:
        last = last.next
    if last.next is not add:
        last.append(add)
    add.meta["custom"] = {**add.meta["custom"], "seq_nr": seq}


def _check_reads(t: _Template, stretch: list, deaths: dict[str, str]) -> None:
    """The stretch reads only the block's nodes and its output's gradient; only the gradients and the
    outputs are read elsewhere; every death of the block's own nodes falls inside the block."""
    fwd, back = set(t.fwd), set(stretch)
    grads = {p.grad for p in t.in_probes.values() if p.fired} | set(t.param_grads.values())
    grads |= {p.owner for p in t.in_probes.values() if p.fired} | set(t.grad_owners.values())
    known = fwd | back | set(t.external) | {t.out_probe.grad}
    for node in stretch:
        if any(src not in known for src in node.all_input_nodes):
            raise ReuseFallback(f"{t.path}'s backward reads a tensor from outside the block", t.static)
        if node not in grads and any(u not in back for u in node.users):
            raise ReuseFallback(f"{t.path}'s backward hands on a tensor other than its gradients", t.static)
    for node in t.fwd:
        if node not in t.out_nodes and any(u not in fwd and u not in back for u in node.users):
            raise ReuseFallback(f"{t.path}'s forward hands on a tensor other than its output", t.static)
    names = {n.name for n in fwd | back}
    for node in fwd | back:
        if node not in grads | set(t.out_nodes) | set(t.out_owners) and deaths.get(node.name, "") not in names | {""}:
            raise ReuseFallback(f"{t.path} holds a tensor past its own ops", t.static)


def _splice(call: _Call, graph: torch.fx.Graph, stretch: list, deaths: dict[str, str],
            replaced: dict[torch.fx.Node, torch.fx.Node], order: dict) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """Copies of the template's backward stretch in place of ``call``'s marker, its gradients bound to
    them (``replaced`` gets each gradient item and its copy: a template's incoming gradient may be one);
    returns the engine's adds of an input's share, with the share, for :func:`_deliver_early`."""
    t = call.template
    m = dict(call.map)
    marker = call.marker
    if (marker is None) != (not stretch and t.out_probe.grad is None):
        raise ReuseFallback(f"{call.path}'s backward differs from {t.path}'s", t.static)
    if marker is None:
        return []
    incoming = [a for a, g in zip(marker.args, t.out_grad) if g]
    outside = [*t.external]
    if t.out_probe.grad is not None:
        if not incoming or incoming[0] is None:
            raise ReuseFallback(f"{call.path} gets no gradient where {t.path} does", t.static)
        outside.append(replaced.get(t.out_probe.grad, t.out_probe.grad))
        m[outside[-1]] = incoming[0]
    with graph.inserting_before(marker):
        for node in stretch:
            copy_ = graph.node_copy(node, m.__getitem__)
            tag = node.meta["custom"]
            copy_.meta["custom"] = {**tag, "seq_nr": call.seq(tag["seq_nr"], call.seq_base)}
            m[node] = copy_
    sources = {("leaf", i): p.grad for i, p in t.in_probes.items()}
    sources.update({("param", k): g for k, g in t.param_grads.items()})
    owners = {**{("leaf", i): p.owner for i, p in t.in_probes.items()}, **t.grad_owners}
    _copy_deaths(call, stretch, m, deaths, outside, set(sources.values()) | set(owners.values()), order)
    adds = []
    for what, item in call.grad_nodes:
        if sources.get(what) not in m:
            raise ReuseFallback(f"{t.path} gives no gradient for its {what[0]} {what[1]}", t.static)
        target = m[sources[what]]
        if what[0] == "leaf" and sources[what] in stretch:
            mine = [(u, target) for u in item.users if u.target in _ADDS
                    and (u.meta.get("custom") or {}).get("seq_nr") == call.end_seq]
            if mine and what[1] in t.multi:
                raise ReuseFallback(_ORDER.format(call.path), t.static)
            adds += mine
        item.replace_all_uses_with(target)
        replaced[item] = target
        if item.name in deaths:  # the stand-in's storage stands for the owner's
            deaths[m.get(owners.get(what), target).name] = deaths.pop(item.name)
        graph.erase_node(item)
    graph.erase_node(marker)
    return adds


def _copy_deaths(call: _Call, stretch: list, m: dict, deaths: dict[str, str], outside: list,
                 grads: set, order: dict) -> None:
    """Storage deaths of the copies as the template's, moved to the copies; an outside tensor the
    block's backward releases (a saved input, the incoming gradient) dies where the template's did
    (``order``: position by node name, before the splices)."""
    t, marker = call.template, call.marker
    by_name = {n.name: n for n in (*t.fwd, *stretch)}
    for node in (*t.fwd, *stretch):
        if node.name in deaths and node not in grads and node not in t.out_nodes and node not in t.out_owners:
            deaths[m[node].name] = m[by_name[deaths[node.name]]].name
    for node in outside:
        if deaths.get(node.name) not in by_name:
            continue
        mine, now = m[node].name, deaths.get(m[node].name)
        if now is not None and (now == marker.name or (now in order and order[now] < order[marker.name])):
            deaths[mine] = m[by_name[deaths[node.name]]].name
    end = m[stretch[-1]].name if stretch else marker.prev.name
    for name, last in deaths.items():
        if last == marker.name:
            deaths[name] = end


def _candidate(node: torch.fx.Node) -> str | None:
    """The name the recorder first asked for (fx numbers repeats): the op's family, a placeholder's own."""
    if node.op == "placeholder":
        return node.target
    target = node.target
    if target is torch.ops.aten.lift_fresh_copy.default:
        return "lift_fresh"
    return target.overloadpacket.__name__ if is_op(target) else None


def _renamed(graph: torch.fx.Graph, deaths: dict[str, str]) -> tuple[torch.fx.Graph, dict[str, str]]:
    """``graph`` renamed in program order, so every node has the name a full trace gives it."""
    names = rename_in_order(graph, _candidate)
    return graph, {names[k]: names[v] for k, v in deaths.items() if k in names and v in names}


def op_multiset(trace: Any) -> Counter:
    """(op, target, output shapes at the trace's example sizes) of every node: what a concrete
    trace at those sizes must have too, node for node, when the replayed blocks are right."""
    def shapes(value: Any) -> Any:
        if isinstance(value, TensorMeta):
            return tuple(int(trace.expr(s).xreplace(trace.hints)) for s in value.shape), value.dtype
        if isinstance(value, (tuple, list)):
            return tuple(shapes(v) for v in value)
        return None
    return Counter((n.op, str(n.target) if n.op != "placeholder" else "", shapes(n.meta.get("val")))
                   for n in trace.graph.nodes if n.op != "output")
