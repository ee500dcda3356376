"""Run the traced joint graph itself on real tensors: the graph symcx counted is the computation.

The symbolic trace of a step (:func:`symcx.capture.trace_training_step`) is an fx graph whose
size arguments are sympy expressions in the ShapeEnv's symbols. :func:`run_traced_step` binds
those sizes to a batch, feeds the model's real parameters, buffers and an input, and executes
the graph node by node (timing each one); :func:`compare_with_eager` checks that its outputs
and every gradient equal eager PyTorch's on the same seed, and names the first node where a
mismatch shows up. Random ops (dropout's masks) draw from the same generator in the same order
as eager CPU does, so a seeded run matches; the nodes that are random are listed all the same.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from collections.abc import Callable, Mapping
from typing import Any

import sympy
import torch

from .._torch import tree_leaves, tree_map
from ..capture import Trace, default_loss
from ..errors import SymcxError, TraceError
from ..step import Step

__all__ = ["TracedRun", "EagerCheck", "run_traced_step", "compare_with_eager", "layer_seconds", "RANDOM_OPS"]

#: Op families that draw random numbers: their outputs equal eager's only on the same seed.
RANDOM_OPS = frozenset({"native_dropout", "bernoulli", "bernoulli_", "rand", "rand_like", "randn", "randn_like",
                        "randint", "randint_like", "normal", "normal_", "uniform", "uniform_", "randperm"})


@dataclasses.dataclass(frozen=True)
class TracedRun:
    """One execution of the traced step: the model's outputs, the gradients (in parameter order),
    each node's wall time in seconds, and the random nodes."""

    outputs: tuple[torch.Tensor, ...]
    grads: dict[str, torch.Tensor | None]
    node_seconds: dict[str, float]
    random_nodes: tuple[str, ...]
    values: dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class EagerCheck:
    """Whether the traced graph computes what eager PyTorch computes (``ok``), and where it does not."""

    ok: bool
    max_abs_error: float
    mismatches: tuple[str, ...]
    random_nodes: tuple[str, ...]


def _sizes(trace: Trace, batch: Mapping[str, int]) -> Callable[[Any], Any]:
    """A function binding a ShapeEnv size expression to an int at the given user-symbol values (memoised)."""
    at = {trace.user_symbols[k]: v for k, v in batch.items() if k in trace.user_symbols}
    done: dict[sympy.Expr, int] = {}

    def bind(value: Any) -> Any:
        if isinstance(value, sympy.Expr):
            if value not in done:
                out = trace.expr(value).subs(at)
                if not out.is_Integer:
                    raise SymcxError(f"size {out} is not a number at {dict(batch)}: name every symbol's value")
                done[value] = int(out)
            return done[value]
        return value

    return bind


def _inputs(trace: Trace, model: torch.nn.Module, example: Any, device: torch.device) -> dict[str, Any]:
    """Placeholder name → the real tensor it stands for (parameters, buffers, input leaves)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    env: dict[str, Any] = {}
    env.update({node: params[name].detach().to(device, copy=True) for node, name in trace.param_nodes.items()})
    env.update({node: buffers[name].to(device, copy=True) for node, name in trace.buffer_nodes.items()})
    leaves = [x for x in tree_leaves(example) if isinstance(x, torch.Tensor)]
    if len(leaves) != len(trace.input_nodes):
        raise SymcxError(f"the traced step takes {len(trace.input_nodes)} input tensors, not {len(leaves)}")
    env.update({node: x.to(device) for node, x in zip(trace.input_nodes, leaves)})
    return env


def _arguments(node: torch.fx.Node, env: Mapping[str, Any], bind: Callable[[Any], Any],
               device: torch.device) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The node's arguments as real values: tensors from ``env``, sizes bound, devices replaced."""
    def arg(value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            return env[value.name]
        if isinstance(value, torch.device):
            return device
        return bind(value)

    args = torch.fx.node.map_aggregate(node.args, arg)
    kwargs = {k: torch.fx.node.map_aggregate(v, arg) for k, v in node.kwargs.items()}
    if "device" in kwargs and kwargs["device"] is not None:
        kwargs["device"] = device
    return args, kwargs


def run_traced_step(
    trace: Trace, model: torch.nn.Module, example: Any, batch: Mapping[str, int], *, device: str = "cpu",
) -> TracedRun:
    """Execute ``trace.graph`` on real tensors at ``batch`` (e.g. ``{"t": 8}``), timing every node.

    A node's time covers the op call only: its arguments (tensors looked up, symbolic sizes
    bound to ints) are prepared before the clock starts, so the interpreter's own work is not
    charged to the op.

    ``example`` must have the sizes ``batch`` names (its batch dim of size ``batch["t"]``). The
    model's parameters and buffers are read, not changed (in-place buffer updates such as
    BatchNorm's running statistics apply to copies).
    """
    dev = torch.device(device)
    env = _inputs(trace, model, example, dev)
    bind = _sizes(trace, batch)
    seconds: dict[str, float] = {}
    random: list[str] = []
    result: Any = None
    with torch.no_grad():
        for node in trace.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                result = torch.fx.node.map_aggregate(node.args[0], lambda v: env[v.name] if isinstance(v, torch.fx.Node) else v)
                break
            if node.op != "call_function":
                raise TraceError(f"cannot run node {node.name} ({node.op}): the trace kept no value for it")
            if node.target is not operator.getitem and node.target.overloadpacket.__name__ in RANDOM_OPS:
                random.append(node.name)
            args, kwargs = _arguments(node, env, bind, dev)
            _sync(dev)
            start = time.perf_counter_ns()
            env[node.name] = node.target(*args, **kwargs)
            _sync(dev)
            seconds[node.name] = (time.perf_counter_ns() - start) / 1e9
    outs, grads = result
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return TracedRun(tuple(outs), dict(zip(names, grads)) if grads else {}, seconds, tuple(random), env)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for comparing one computation done in two op orders, by dtype."""
    return {torch.float16: (1e-2, 1e-2), torch.bfloat16: (2e-2, 2e-2), torch.float64: (1e-9, 1e-9)}.get(
        dtype, (1e-4, 1e-5))


def _module_outputs(model: torch.nn.Module, run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """The first tensor output of every module's first call during ``run()``, by module path."""
    seen: dict[str, torch.Tensor] = {}
    paths = {id(m): name for name, m in model.named_modules()}

    def hook(mod, args, out):
        path = paths.get(id(mod))
        first = next((x for x in tree_leaves(out) if isinstance(x, torch.Tensor)), None)
        if path is not None and path not in seen and first is not None:
            seen[path] = first.detach().clone()

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen


def _last_node_of(trace: Trace, module: str) -> list[torch.fx.Node]:
    """Forward nodes of ``module`` (and its children), last first."""
    nodes = [n for n in trace.graph.nodes if n.op == "call_function"
             and (n.meta.get("custom") or {}).get("phase") == "forward"
             and ((n.meta.get("custom") or {}).get("module", "") + ".").startswith(module + ".")]
    return nodes[::-1]


def _first_mismatch(trace: Trace, run: TracedRun, eager: Mapping[str, torch.Tensor]) -> str | None:
    """``module (node)`` of the first module, in forward order, whose output the graph gets wrong."""
    for module, expected in eager.items():
        for node in _last_node_of(trace, module):
            got = run.values.get(node.name)
            if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype:
                rtol, atol = _tolerance(expected.dtype)
                if not torch.allclose(got.to(expected.device), expected, rtol=rtol, atol=atol):
                    return f"{module or '<model>'} (node {node.name})"
                break
    return None


def compare_with_eager(
    trace: Trace, model: torch.nn.Module, example: Any, batch: Mapping[str, int], *,
    device: str = "cpu", seed: int = 0, loss: Callable[[Any], torch.Tensor] | None = None,
) -> tuple[EagerCheck, TracedRun]:
    """Run the traced step and eager PyTorch on the same seed; compare outputs and every gradient.

    Returns the check (``ok``, the largest absolute error, what differs: ``output 0``,
    ``grad of fc1.weight``, and the first module whose output differs) and the traced run.
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    run = run_traced_step(trace, model, example, batch, device=device)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    args = tree_map(lambda x: x.to(dev) if isinstance(x, torch.Tensor) else x, example)
    holder: dict[str, Any] = {}

    def forward() -> None:
        holder["out"] = model(*args) if isinstance(args, tuple) else (model(**args) if isinstance(args, dict) else model(args))

    torch.manual_seed(seed)
    saved = {name: b.clone() for name, b in model.named_buffers()}  # BatchNorm's running stats move
    try:
        modules = _module_outputs(model, forward)
        outs = [x for x in tree_leaves(holder["out"]) if isinstance(x, torch.Tensor)]
        grads = torch.autograd.grad((loss or default_loss)(holder["out"]), [p for _, p in trainable], allow_unused=True)
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(saved[name])
    pairs = [(f"output {k}", a, b) for k, (a, b) in enumerate(zip(run.outputs, outs))]
    pairs += [(f"grad of {name}", run.grads.get(name), g) for (name, _), g in zip(trainable, grads)]
    worst, bad = 0.0, []
    for what, got, expected in pairs:
        if got is None or expected is None:
            if (got is None) != (expected is None):
                bad.append(what)
            continue
        rtol, atol = _tolerance(expected.dtype)
        expected = expected.detach()
        worst = max(worst, float((got - expected).abs().max()) if got.numel() else 0.0)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=rtol, atol=atol):
            bad.append(what)
    if bad:
        first = _first_mismatch(trace, run, modules)
        bad.append(f"first differing module: {first}" if first else "every module's output agrees; the backward differs")
    return EagerCheck(not bad, worst, tuple(bad), run.random_nodes), run


def layer_seconds(step: Step, run: TracedRun) -> dict[str, float]:
    """Measured seconds per layer row (forward and backward nodes together), in forward order.

    ``step`` is the analysis' step of the same trace (``Analysis.step``): its nodes carry the
    fx node names and the layer each one belongs to.
    """
    out: dict[str, float] = {}
    for node in step.nodes:
        if node.name in run.node_seconds:
            out[node.layer] = out.get(node.layer, 0.0) + run.node_seconds[node.name]
    return out
