"""Memory of a training step: parameters, gradients, optimizer state, saved activations, the peak.

The joint graph is the program autograd runs: the forward in order, then the backward in
reverse. :func:`step_memory` splits every op's outputs into storages (views, ``getitem`` and
in-place ops alias a storage, read from the op's schema), gives each storage a life from the
op that allocates it to its last reader, and walks the program adding allocations and
subtracting frees. A forward storage that a backward op reads is *saved for backward*; what
an autograd node's backward reads is released when that whole backward returns, as the
engine does. Gradients, the model's outputs, the loss and its seed gradient live to the end
of the step. Everything is a sympy expression in bytes; the peak is ``sympy.Max`` of the
program points no other point dominates. See docs/memory.md for the model and its limits.

:func:`symcx.validation.live_bytes.measure_peak_bytes` measures the same quantity on a real
run: the peak of live tensor bytes allocated while a function runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import sympy

from .cost import TensorInfo
from .errors import SymcxError
from .opsets import ALIAS_OPS, GRAD_SEEDS, UNMODELLED_MEMORY
from .budget import max_batch_size, parse_bytes
from .peak import Sum, max_of, peak_points
from .step import Step, storage_keys

__all__ = [
    "Memory",
    "LayerMemory",
    "MemoryModel",
    "TracedMemory",
    "MEMORY_FIELDS",
    "OPTIMIZER_COPIES",
    "STEP_TEMPORARY_COPIES",
    "step_memory",
    "step_layers",
    "kernel_copies",
    "memory_timeline",
    "max_batch_size",
    "parse_bytes",
]

#: Copies of the trainable parameters an optimizer keeps as state (SGD without momentum: none;
#: momentum: one buffer; Adam/AdamW: exp_avg and exp_avg_sq).
OPTIMIZER_COPIES = {"sgd": 0, "sgd-momentum": 1, "adam": 2, "adamw": 2}
#: Adam/AdamW also keep a float32 scalar ``step`` per parameter tensor.
_STEP_SCALAR_BYTES = {"adam": 4, "adamw": 4}
#: Copies of the trainable parameters ``optimizer.step()`` allocates as temporaries, in the
#: multi-tensor (foreach) implementation PyTorch picks on GPUs: Adam's ``sqrt(exp_avg_sq)``.
STEP_TEMPORARY_COPIES = {"sgd": 0, "sgd-momentum": 0, "adam": 1, "adamw": 1}
#: The program point after the backward, while ``optimizer.step()`` runs.
STEP_NODE = "optimizer.step"
_FLOAT_DTYPES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
#: The byte totals of a :class:`Memory`, in the order reports list them.
MEMORY_FIELDS = ("params", "buffers", "inputs", "grads", "optimizer", "activations", "peak", "inference_peak",
                 "optimizer_made", "held_grads")
_END = float("inf")
ZERO = sympy.Integer(0)


@dataclasses.dataclass(frozen=True)
class LayerMemory:
    """Memory attributed to one layer: its parameters and what its forward keeps for backward.

    ``saved`` lists the kept tensors as ``(value, bytes)``; a value is the producing fx node,
    with ``[i]`` for output ``i`` of a multi-output op (``max_pool2d_with_indices[1]`` is the
    indices).
    """

    name: str
    param_bytes: sympy.Expr
    grad_bytes: sympy.Expr
    saved_bytes: sympy.Expr
    saved: tuple[tuple[str, sympy.Expr], ...]


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes held by one training step, as sympy expressions (see :func:`step_memory`).

    ``peak`` is everything held at the step's peak: the resident bytes (parameters,
    buffers, the input batch, optimizer state) plus the largest sum of live activations,
    temporaries and gradients over the program, the forward, the backward and, last,
    ``optimizer.step()`` (node ``"optimizer.step"``, layer ``"optimizer"``: the gradients plus
    the step's temporaries). ``inference_peak`` is the same for the forward alone with nothing
    saved and no gradients. ``candidates`` are the program points whose totals no other point
    dominates for every size; ``peak`` is their ``Max``; ``peak_node`` is the largest at the
    trace's example sizes (or at the values substituted with ``Analysis.subs``).
    """

    optimizer_name: str
    dtype: str | None
    training: bool
    params: sympy.Expr
    buffers: sympy.Expr
    inputs: sympy.Expr
    grads: sympy.Expr
    optimizer: sympy.Expr
    activations: sympy.Expr
    peak: sympy.Expr
    inference_peak: sympy.Expr
    peak_node: str
    peak_layer: str
    inference_peak_node: str
    candidates: tuple[tuple[str, sympy.Expr], ...]
    by_layer: tuple[LayerMemory, ...]
    optimizer_made: sympy.Expr = sympy.Integer(0)
    not_modelled: tuple[str, ...] = ()
    held_grads: sympy.Expr = sympy.Integer(0)
    peak_by_dtype: tuple[tuple[str, sympy.Expr], ...] = ()  # bytes held at the peak node, by dtype

    def __repr__(self) -> str:
        return (
            f"<symcx.Memory {self.optimizer_name}{'' if self.training else ', inference'}: peak {self.peak} B "
            f"at {self.peak_node} ({self.peak_layer}); params {self.params} B, grads {self.grads} B, "
            f"optimizer {self.optimizer} B, activations {self.activations} B>"
        )

    def subs(self, values: Mapping[sympy.Symbol, Any]) -> "Memory":
        """This memory with ``values`` substituted in every total (the peak node stays)."""
        if not values:
            return self
        return dataclasses.replace(self, **{f: sympy.sympify(getattr(self, f)).subs(values) for f in MEMORY_FIELDS},
                                   peak_by_dtype=tuple((k, sympy.sympify(v).subs(values)) for k, v in self.peak_by_dtype))

    @property
    def resident(self) -> sympy.Expr:
        """Bytes held before the step starts: parameters, buffers, inputs, the optimizer state it
        finds (``optimizer`` less ``optimizer_made``, the state a traced first step makes itself)
        and the gradients ``zero_grad(set_to_none=False)`` kept (``held_grads``)."""
        return self.params + self.buffers + self.inputs + self.optimizer - self.optimizer_made + self.held_grads

    def max_batch_size(self, budget_bytes: int | str) -> int:
        """Largest batch ``t`` whose peak fits in ``budget_bytes`` (0 if not even ``t = 1``).

        ``budget_bytes`` is bytes or a string such as ``"16GiB"``; see :func:`parse_bytes`.

        >>> import torch, symcx
        >>> mem = symcx.analyze(torch.nn.Linear(4, 3), torch.randn(2, 4)).memory()
        >>> mem.peak  # params 60 + input 16t + output 12t + loss, seed 8 + grads 60
        28*t + 128
        >>> mem.max_batch_size(1024)
        32

        Raises
        ------
        SymcxError
            When ``not_modelled`` lists ops whose memory the peak leaves out (an RNN kernel's
            workspace): the answer would be too large.
        """
        if self.not_modelled:
            raise SymcxError("the peak leaves out memory that cannot be sized, so no batch size is safe: "
                             + "; ".join(self.not_modelled))
        return max_batch_size(self.peak, budget_bytes)


# --- storages and their lives -------------------------------------------------------------
@dataclasses.dataclass
class _Life:
    key: str
    node: str
    phase: str
    nbytes: sympy.Expr
    born: int
    last: float  # order of the last reader; _END when the step returns it
    saved: bool = False
    fwd_last: float = -1.0  # last reader among forward ops; _END for a model output


def _itemsize(info: TensorInfo, dtype: str | None) -> int:
    if dtype is not None and info.dtype in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[dtype]
    return info.itemsize


def _autograd_node_ends(step: Step) -> dict[int, int]:
    """Order of the last op of each autograd node's backward, by the forward op's seq_nr.

    The engine releases what a node's backward read (saved tensors, incoming gradient) when the
    whole backward returns. The ops of one node share its seq_nr, and so do the engine's own
    additions of its outputs into gradients already buffered (an ``aten.add`` of a value this
    node made and one an earlier node made), which run after the release: they are left out.
    """
    groups: dict[int, list[str]] = {}
    for v in step.nodes:
        if v.phase == "backward" and v.seq_nr is not None:
            groups.setdefault(v.seq_nr, []).append(v.name)
    ends = {}
    for seq, names in groups.items():
        mine = set(names)
        while len(names) > 1 and step.node(names[-1]).packet == "aten.add":
            sources = step.node(names[-1]).inputs
            if sum(v in mine for v in sources) != 1 or len(sources) != 2:
                break
            names = names[:-1]
        ends[seq] = step.node(names[-1]).order
    return ends


def _lives(step: Step, dtype: str | None) -> dict[str, _Life]:
    """Storages with their last reader (whole step and forward alone) and saved flag."""
    lives = {}
    for key, s in step.storages.items():
        owner = step.node(s.node)
        lives[key] = _Life(key, s.node, owner.phase, s.info.numel * _itemsize(s.info, dtype), owner.order, owner.order)
    node_end = _autograd_node_ends(step)
    for v in step.nodes:
        if v.kind not in ("call_function", "output") or v.packet == "getitem":
            continue
        when = _END if v.kind == "output" else v.order
        if v.phase == "backward" and not v.recompute:  # a recompute frees its inputs as eager does: at once
            when = max(when, node_end.get(v.seq_nr, when))
        if v.packet in GRAD_SEEDS and v.phase != "forward":  # backward() holds the loss and its seed until it returns
            for key in storage_keys(v.value):
                lives[key].last = _END
            when = _END
        for src in v.inputs:
            for key in storage_keys(step.node(src).value):
                life = lives[key]
                life.last = max(life.last, when)
                seed = life.phase != "forward" and step.node(life.node).packet in GRAD_SEEDS  # the initial gradient
                if v.phase == "backward" and life.phase in ("forward", "loss", "input") and not seed:
                    life.saved = True
                if v.phase == "forward":
                    life.fwd_last = max(life.fwd_last, when)
                elif v.phase in ("loss", "output") and life.phase == "forward":
                    life.fwd_last = _END
    for name, died in step.deaths.items():  # a tensor Python still held (a local of the model's code) lives on
        for key in storage_keys(step.node(name).value) if name in step else ():
            life = lives.get(key)
            if life is not None and life.last != _END:
                life.last = max(life.last, died)
    return lives


# --- the walk -----------------------------------------------------------------------------
def _walk(lives: Mapping[str, _Life], phases: tuple[str, ...], last: str,
          upper_only: bool = False) -> list[tuple[str, Sum]]:
    """(node, live bytes while it runs) at every op that allocates, in program order.

    The running sum is kept as {term: coefficient} (what ``sympy.Add`` collects), each point a
    :class:`~symcx.peak.Sum` whose expression is made only when asked: sympy's additions one by
    one, and the expressions of points the peak search drops, are what a long walk costs. With
    ``upper_only``, a point is left out when the next one exceeds it by positive terms alone
    (nothing died between them): it can never be the peak, and the peak search is spared it."""
    born: dict[int, list[_Life]] = {}
    dies: dict[float, list[_Life]] = {}
    for s in lives.values():
        if s.phase in phases:
            born.setdefault(s.born, []).append(s)
            dies.setdefault(max(getattr(s, last), s.born), []).append(s)
    terms: dict[sympy.Expr, dict[sympy.Expr, sympy.Expr]] = {}

    def add(into: dict, group: list[_Life], sign: int) -> None:
        for s in group:
            if s.nbytes not in terms:
                terms[s.nbytes] = sympy.sympify(s.nbytes).as_coefficients_dict()
            for term, coeff in terms[s.nbytes].items():
                into[term] = into.get(term, 0) + sign * coeff

    points: list[tuple[str, dict]] = []
    live: dict[sympy.Expr, sympy.Expr] = {}
    grew = False  # only positive terms added since the last point
    for order in sorted(set(born) | {k for k in dies if k != _END}):
        new: dict[sympy.Expr, sympy.Expr] = {}
        add(new, born.get(order, []), 1)
        if any(c != 0 for c in new.values()):
            if upper_only and grew and points and _positive(new):
                points.pop()
            add(live, born[order], 1)
            points.append((born[order][0].node, dict(live)))
            grew = True
        dead = dies.get(order, [])
        add(live, dead, -1)
        grew = grew and not dead
    return [(node, Sum(at)) for node, at in points]


def _positive(combination: Mapping[sympy.Expr, sympy.Expr]) -> bool:
    """Whether a {term: coefficient} sum is > 0 for all sizes: no negative coefficient, every
    term (a product of sizes) positive, one coefficient above 0."""
    return any(c > 0 for c in combination.values()) and all(
        c >= 0 and (k == 1 or k.is_positive) for k, c in combination.items())


# --- the public model ---------------------------------------------------------------------
def _dtype_name(dtype: Any) -> str | None:
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    if name not in _FLOAT_DTYPES:
        raise SymcxError(f"dtype must be one of {sorted(_FLOAT_DTYPES)} (or None for the traced dtypes), not {dtype!r}")
    return name


def _total(lives: Mapping[str, _Life], phase: str) -> sympy.Expr:
    return sympy.Add(*[s.nbytes for s in lives.values() if s.phase == phase])


def _optimizer_name(step: Step, optimizer: str | None) -> str:
    """The optimizer whose memory is meant: the traced one, else a modelled shorthand (default SGD)."""
    if step.optimizer is not None:
        if optimizer is not None and optimizer != step.optimizer:
            raise SymcxError(f"this step was traced with {step.optimizer}; its memory is that optimizer's "
                             f"(analyze again with optimizer={optimizer!r} for another)")
        return step.optimizer
    optimizer = "sgd" if optimizer is None else optimizer
    if optimizer not in OPTIMIZER_COPIES:
        raise SymcxError(f"optimizer must be one of {sorted(OPTIMIZER_COPIES)}, not {optimizer!r} "
                         f"(or trace any torch.optim optimizer with analyze(..., optimizer=...))")
    return optimizer


@dataclasses.dataclass(frozen=True)
class _Iteration:
    """The training iteration's walk: resident bytes, (node, phase, live bytes) points, gradients, state."""

    resident: sympy.Expr
    points: list[tuple[str, str, "sympy.Expr | Sum"]]
    grads: sympy.Expr
    state: sympy.Expr
    made: sympy.Expr = ZERO
    held: sympy.Expr = ZERO


def _iteration(step: Step, lives: Mapping[str, _Life], optimizer: str, upper_only: bool = False) -> _Iteration:
    """The walk of forward, loss, backward and the optimizer's step: traced when the step holds it
    (its state a placeholder or made in the step), else modelled (:data:`OPTIMIZER_COPIES`).
    ``upper_only``: leave out points the next one exceeds (see :func:`_walk`)."""
    trainable = [s for s in lives.values() if step.node(s.node).param in step.trainable and s.phase == "param"]
    grads = sympy.Add(*[s.nbytes for s in trainable])
    base = sum((_total(lives, p) for p in ("param", "buffer", "input")), ZERO)
    if step.optimizer is not None:
        phases = ("forward", "loss", "backward", "optimizer")
        made = sympy.Add(*[s.nbytes for s in lives.values() if s.phase == "optimizer" and s.last == _END])
        points = [(v, step.node(v).phase, e) for v, e in _walk(lives, phases, "last", upper_only)]
        held = _total(lives, "grad")
        return _Iteration(base + _total(lives, "state") + held, points, grads, _total(lives, "state") + made, made,
                          held)
    state = OPTIMIZER_COPIES[optimizer] * grads + _STEP_SCALAR_BYTES.get(optimizer, 0) * len(trainable)
    phases = ("forward", "loss", "backward")
    kept_to_end = sympy.Add(*[s.nbytes for s in lives.values() if s.last == _END and s.phase in phases])
    points = [(v, step.node(v).phase, e) for v, e in _walk(lives, phases, "last", upper_only)]
    points.append((STEP_NODE, "optimizer", kept_to_end + STEP_TEMPORARY_COPIES[optimizer] * grads))
    return _Iteration(base + state, points, grads, state)


def step_memory(
    step: Step,
    *,
    optimizer: str | None = None,
    dtype: Any = None,
    training: bool = True,
    values: Mapping[sympy.Symbol, Any] | None = None,
) -> Memory:
    """Memory of one training step of ``step`` (from :func:`symcx.step.build_step`).

    Parameters
    ----------
    step : Step
        The traced step (``Analysis.step``).
    optimizer : {None, "sgd", "sgd-momentum", "adam", "adamw"}
        A step traced with its optimizer (``analyze(..., optimizer=...)``) holds what that
        optimizer's traced step holds; None (the only value it takes) means that one. Otherwise
        a modelled optimizer (None: SGD): 0, 1 or 2 copies of the trainable parameters as state
        (Adam also keeps a 4-byte ``step`` per parameter tensor), and its ``step()`` adds
        temporaries: one copy of the parameters for Adam/AdamW (foreach), none for SGD.
    dtype : torch.dtype or str, optional
        Count every floating-point tensor at this dtype's size (the model cast with
        ``model.to(dtype)``; integer tensors such as pooling indices keep theirs). Default:
        the traced dtypes.
    training : bool
        False gives inference memory: no gradients, optimizer state or saved activations;
        ``peak`` is then ``inference_peak``.
    values : mapping, optional
        Symbol values to substitute (``Analysis.subs``); the peak node is chosen at these
        values, else at the trace's example sizes.

    Returns
    -------
    Memory

    Raises
    ------
    SymcxError
        For an unknown optimizer or dtype.

    Examples
    --------
    >>> import torch, symcx
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> mem = step_memory(symcx.analyze(mlp, torch.randn(5, 4)).step, optimizer="adam")
    >>> mem.params, mem.grads, mem.optimizer, mem.activations  # Adam: 2·92 + 4 steps·4 B; ReLU out 3t·4 B
    (92, 92, 200, 12*t)
    >>> mem.peak_node, mem.peak_layer  # the ReLU's backward, at the traced t = 8
    ('threshold_backward', '1')
    """
    dtype = _dtype_name(dtype)
    optimizer = _optimizer_name(step, optimizer)
    values = dict(values or {})
    lives = _lives(step, dtype)

    def ev(e: sympy.Expr) -> sympy.Expr:
        return sympy.sympify(e).subs(values) if values else sympy.sympify(e)

    params, buffers, inputs = (_total(lives, p) for p in ("param", "buffer", "input"))
    it = _iteration(step, lives, optimizer, upper_only=True) if training else None
    saved = [s for s in lives.values() if s.saved and s.phase in ("forward", "loss")]
    hints = {**step.hints, **{k: v for k, v in values.items() if isinstance(k, sympy.Symbol)}}
    inf_kept, inf_node = peak_points(_walk(lives, ("forward",), "fwd_last", upper_only=True), hints)
    inference_peak = ev(params + buffers + inputs + max_of(e for _, e in inf_kept))
    if it is not None:
        kept, peak_node = peak_points([(v, e) for v, _, e in it.points], hints)
        candidates = tuple((v, ev(it.resident + e)) for v, e in kept)
        peak = ev(it.resident + max_of(e for _, e in kept))
    else:
        candidates = tuple((v, ev(params + buffers + inputs + e)) for v, e in inf_kept)
        peak, peak_node = inference_peak, inf_node
    grads, state, made = (it.grads, it.state, it.made) if it is not None else (ZERO, ZERO, ZERO)
    return Memory(
        optimizer_name=optimizer, dtype=dtype, training=training, params=ev(params), buffers=ev(buffers),
        inputs=ev(inputs), grads=ev(grads), optimizer=ev(state),
        activations=ev(sympy.Add(*[s.nbytes for s in saved])) if training else ZERO,
        peak=peak, inference_peak=inference_peak, peak_node=peak_node,
        peak_layer=step.node(peak_node).layer if peak_node in step else ("optimizer" if peak_node else ""),
        inference_peak_node=inf_node, candidates=candidates,
        by_layer=_by_layer(step, lives, saved if training else [], training, ev), optimizer_made=ev(made),
        not_modelled=not_modelled(step), held_grads=ev(it.held if it is not None else ZERO),
        peak_by_dtype=_by_dtype(step, lives, peak_node, training, ev),
    )


def _by_dtype(step: Step, lives: Mapping[str, _Life], node: str, training: bool,
              ev: Callable[[sympy.Expr], sympy.Expr]) -> tuple[tuple[str, sympy.Expr], ...]:
    """Bytes held while ``node`` runs (resident ones included), by dtype: what a precision change moves.
    Empty for a modelled optimizer's step, which has no records."""
    if node not in step:
        return ()
    at, last = step.node(node).order, "last" if training else "fwd_last"
    totals: dict[str, sympy.Expr] = {}
    for s in lives.values():
        resident = s.phase in ("param", "buffer", "input", "state", "grad")
        if resident or s.born <= at <= max(getattr(s, last), s.born):
            dtype = step.storages[s.key].info.dtype
            totals[dtype] = totals.get(dtype, ZERO) + s.nbytes
    return tuple((k, ev(v)) for k, v in sorted(totals.items()))


def not_modelled(step: Step) -> tuple[str, ...]:
    """``op (layer): what`` for each op family of the step whose kernel allocates unsized memory."""
    seen: dict[str, str] = {}
    for node in step.nodes:
        if node.packet in UNMODELLED_MEMORY and node.packet not in seen:
            seen[node.packet] = f"{node.packet} ({node.layer}): {UNMODELLED_MEMORY[node.packet]}"
    return tuple(seen.values())


#: Matrix products whose kernels (CPU BLAS, cuBLAS) copy an operand with a zero stride into a
#: contiguous temporary while they run, and the index of the first matrix among the op's inputs
#: (``addmm``'s bias is broadcast into the output, not copied).
_BLAS_MATRICES = {"aten.mm": 0, "aten.addmm": 1}


def _broadcast(step: Step, name: str) -> bool:
    """Whether node ``name`` is a view of an ``expand`` that broadcast a size-1 dim (a zero stride)."""
    v = step.node(name)
    while v.packet in ALIAS_OPS and v.packet != "aten.expand" and v.inputs:
        v = step.node(v.inputs[0])
    return (v.packet == "aten.expand" and v.call is not None and bool(v.call.tensors)
            and sympy.simplify(v.out.numel - v.call.tensors[0].numel) != 0)


def kernel_copies(step: Step) -> list[tuple[str, sympy.Expr]]:
    """(node, bytes) of each copy a matrix kernel makes of a broadcast operand, held while it runs.

    An expanded tensor (the gradient of ``loss = out.sum()`` is one) has a zero stride, which BLAS
    cannot read, so ``mm``/``addmm`` clone it first (aten's ``addmm_impl_cpu_``, and cuBLAS's
    ``prepare_matrix_for_cublas``). The copy is the kernel's, not an aten output: torch's
    allocator holds it, the live-tensor tracker does not see it.
    """
    out = []
    for v in step.calls():
        first = _BLAS_MATRICES.get(v.packet)
        if first is None:
            continue
        for name in v.inputs[first:]:
            if _broadcast(step, name):
                out.append((v.name, step.node(name).out.nbytes))
    return out


def memory_timeline(
    step: Step,
    *,
    optimizer: str | None = None,
    dtype: Any = None,
    values: Mapping[sympy.Symbol, Any] | None = None,
) -> list[tuple[str, str, sympy.Expr]]:
    """Bytes held at every op of a training step that allocates: the curve whose top is the peak.

    The points are :func:`step_memory`'s own walk (forward, loss, backward, then
    ``optimizer.step()``), each plus the resident bytes (parameters, buffers, the input batch,
    optimizer state), so the largest point equals ``step_memory(...).peak`` at the same values.

    Parameters
    ----------
    step : Step
        The traced step (``Analysis.step``).
    optimizer, dtype
        As for :func:`step_memory`.
    values : mapping, optional
        Symbol values to substitute (``{t: 8}``); without them the bytes stay expressions.

    Returns
    -------
    list of (node, phase, bytes)
        In program order; ``phase`` is the node's (``"forward"``, ``"loss"``, ``"backward"``)
        or ``"optimizer"`` for the last point, node ``"optimizer.step"``.

    Examples
    --------
    >>> import torch, symcx
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> a = symcx.analyze(mlp, torch.randn(5, 4))
    >>> curve = memory_timeline(a.step, values={symcx.t: 8})
    >>> max(b for _, _, b in curve) == step_memory(a.step, values={symcx.t: 8}).peak
    True
    """
    lives = _lives(step, _dtype_name(dtype))
    it = _iteration(step, lives, _optimizer_name(step, optimizer))
    subs = dict(values or {})
    return [(v, phase, sympy.sympify(it.resident + (e.expr() if isinstance(e, Sum) else e)).subs(subs))
            for v, phase, e in it.points]

def _by_layer(
    step: Step, lives: Mapping[str, _Life], saved: list[_Life], training: bool, ev: Callable[[sympy.Expr], sympy.Expr]
) -> tuple[LayerMemory, ...]:
    rows: dict[str, dict[str, Any]] = {}
    saved_keys = {s.key for s in saved}
    for s in sorted(lives.values(), key=lambda s: (s.phase != "param", s.born)):
        v = step.node(s.node)
        if v.phase == "param":
            row = rows.setdefault(v.layer, {"p": [], "g": [], "s": []})
            row["p"].append(s.nbytes)
            if training and v.param in step.trainable:
                row["g"].append(s.nbytes)
        elif s.key in saved_keys:
            rows.setdefault(v.layer, {"p": [], "g": [], "s": []})["s"].append((s.key, s.nbytes))
    first: dict[str, int] = {}
    for v in step.nodes:
        if v.phase in ("forward", "loss"):
            first[v.layer] = min(first.get(v.layer, v.order), v.order)
    return tuple(
        LayerMemory(
            name=layer,
            param_bytes=ev(sympy.Add(*r["p"])),
            grad_bytes=ev(sympy.Add(*r["g"])),
            saved_bytes=ev(sympy.Add(*[b for _, b in r["s"]])),
            saved=tuple((k, ev(b)) for k, b in r["s"]),
        )
        for layer, r in sorted(rows.items(), key=lambda kv: first.get(kv[0], _END))
    )


def step_layers(step: Step) -> tuple[LayerMemory, ...]:
    """Parameter, gradient and saved bytes per layer of a training step, traced dtypes: what
    ``step_memory(step).by_layer`` holds, without the walks for the peak."""
    lives = _lives(step, None)
    saved = [s for s in lives.values() if s.saved and s.phase in ("forward", "loss")]
    return _by_layer(step, lives, saved, True, sympy.sympify)


class MemoryModel(Protocol):
    """What a route hands the analysis for memory: the step's memory, and the per-layer part."""

    def memory(self, *, optimizer: str | None, dtype: Any, training: bool,
               values: Mapping[sympy.Symbol, Any] | None, iteration: str = "steady") -> Memory: ...

    def layers(self) -> tuple[LayerMemory, ...]: ...


@dataclasses.dataclass
class TracedMemory:
    """The memory model of a traced step: :func:`step_memory` over its records.

    ``retrace(iteration, dtype)`` traces the step again for memory alone, once per request,
    when it is first asked for: the first iteration of a fresh optimizer (``"first"``, its state
    made in the step), the model at another float ``dtype`` (as ``model.to(dtype)`` makes it), and,
    with ``accumulate`` (``separate``), every iteration: its micro-steps traced in full.
    """

    step: Step
    retrace: Callable[[str, Any], Step] | None = None
    separate: bool = False
    _steps: dict[tuple[str, str], Step] = dataclasses.field(default_factory=dict, repr=False)

    def memory(self, *, optimizer: str | None = None, dtype: Any = None, training: bool = True,
               values: Mapping[sympy.Symbol, Any] | None = None, iteration: str = "steady") -> Memory:
        """:func:`step_memory` of the step (``iteration="first"``: of the first optimizer step; with
        ``dtype``, of the step traced again at that dtype)."""
        if iteration not in ("steady", "first"):
            raise SymcxError(f"iteration must be 'steady' or 'first', not {iteration!r}")
        if iteration == "first" and self.step.optimizer is None:
            raise SymcxError("the first step differs from the steady state only with a traced optimizer: "
                             "analyze(..., optimizer=...)")
        if dtype is not None:
            _dtype_name(dtype)  # an unknown dtype is refused before any trace
        step = self.step
        if iteration == "first" or dtype is not None or self.separate:
            if self.retrace is None:
                raise SymcxError("this analysis cannot trace its step again (memory(dtype=...) needs the model)")
            key = (iteration, str(dtype))
            if key not in self._steps:
                self._steps[key] = self.retrace(iteration, dtype)
            step = self._steps[key]
        mem = step_memory(step, optimizer=optimizer, training=training, values=values)
        return dataclasses.replace(mem, dtype=_dtype_name(dtype)) if dtype is not None else mem

    def layers(self) -> tuple[LayerMemory, ...]:
        """Parameter, gradient and saved bytes per layer (SGD, traced dtypes)."""
        return step_layers(self.step)
