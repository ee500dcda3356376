"""Pins for ``symcx._torch``, the one module that reaches into private torch.

Each name in ``symcx._torch.__all__`` is checked for the behaviour symcx relies on, not only
for existing, so a torch upgrade that changes one fails here first, with the name in the
test's name. ``test_every_name_is_pinned`` keeps the list complete: a name added to
``__all__`` without a pin here fails it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import operator
import re
from typing import Any

import pytest
import sympy
import torch

from symcx import _torch
from symcx._torch import (
    PRIVATE_APIS,
    DimDynamic,
    FakeTensorMode,
    unset_fake_temporarily,
    OpOverload,
    OpOverloadPacket,
    ProfilerEventType,
    ShapeEnv,
    StatelessSymbolicContext,
    TorchDispatchMode,
    WeakTensorKeyDictionary,
    autograd_would_have_decomposed,
    conv_layout_unguarded,
    SymNode,
    symnode_ops_memoized,
    current_sequence_nr,
    module_attributes,
    eager_dropout_kernels,
    eager_lstm_kernels,
    enable_python_dispatcher,
    fake_process_group,
    allocation_events,
    is_op,
    make_fx,
    op_names,
    op_schema,
    packet_name,
    reparametrize_module,
    rename_in_order,
    sequence_nr,
    torch_sympy_functions,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_unflatten,
)

aten = torch.ops.aten

#: Which test below pins each name of ``symcx._torch.__all__``.
PINS = {
    "PRIVATE_APIS": "test_private_apis_each_resolve",
    "FakeTensorMode": "test_fake_mode_makes_symbolic_sizes_from_a_context",
    "unset_fake_temporarily": "test_unset_fake_temporarily_leaves_the_fake_mode_and_other_modes_in_place",
    "ShapeEnv": "test_shape_env_keeps_equal_sizes_apart_and_records_guards",
    "DimDynamic": "test_fake_mode_makes_symbolic_sizes_from_a_context",
    "StatelessSymbolicContext": "test_fake_mode_makes_symbolic_sizes_from_a_context",
    "enable_python_dispatcher": "test_python_dispatcher_runs_python_decompositions",
    "reparametrize_module": "test_reparametrize_module_swaps_tied_tensors_and_restores",
    "rename_in_order": "test_rename_in_order_names_nodes_as_a_graph_built_in_order",
    "autograd_would_have_decomposed": "test_autograd_would_have_decomposed",
    "TorchDispatchMode": "test_dispatch_mode_sees_each_aten_call",
    "WeakTensorKeyDictionary": "test_weak_tensor_key_dictionary_keys_by_identity_weakly",
    "OpOverload": "test_op_types",
    "OpOverloadPacket": "test_op_types",
    "tree_flatten": "test_pytree",
    "tree_leaves": "test_pytree",
    "tree_map": "test_pytree",
    "tree_unflatten": "test_pytree",
    "torch_sympy_functions": "test_torch_sympy_functions_symbols_translates",
    "is_op": "test_op_types",
    "op_names": "test_op_names",
    "op_schema": "test_op_schema_names_arguments_and_aliasing",
    "packet_name": "test_op_names",
    "sequence_nr": "test_sequence_numbers_tie_backward_nodes_to_forward_ops",
    "current_sequence_nr": "test_sequence_numbers_tie_backward_nodes_to_forward_ops",
    "module_attributes": "test_module_attributes_are_a_modules_own_state_and_none_with_hooks",
    "eager_lstm_kernels": "test_eager_lstm_kernels_picks_onednn_and_restores",
    "eager_dropout_kernels": "test_eager_dropout_kernels_draw_a_float_mask_on_the_cpu_and_restore",
    "conv_layout_unguarded": "test_conv_layout_unguarded_drops_only_the_backend_guard_and_restores",
    "symnode_ops_memoized": "test_symnode_ops_memoized_answers_repeats_once_keeps_guards_and_restores",
    "SymNode": "test_symnode_ops_memoized_answers_repeats_once_keeps_guards_and_restores",
    "make_fx": "test_make_fx_traces_aten_calls_with_symbolic_sizes",
    "ProfilerEventType": "test_profiler_event_type_tags_allocations",
    "fake_process_group": "test_fake_process_group_shards_with_fully_shard",
    "allocation_events": "test_allocation_events_see_a_storage_resize",
}


def test_every_name_is_pinned():
    assert sorted(PINS) == sorted(_torch.__all__)
    missing = sorted({test for test in PINS.values() if test not in globals()})
    assert not missing, f"PINS names tests that do not exist: {missing}"


def _resolve(dotted: str) -> Any:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _paths(entry: str) -> list[str]:
    """Dotted paths of a ``PRIVATE_APIS`` line: ``"a.b.C / D (why)"`` → ``["a.b.C", "a.b.D"]``."""
    head = entry.split(" (")[0].split(":")[0]
    parts = [p.strip() for p in head.split(" / ")]
    parent = parts[0].rsplit(".", 1)[0]
    return [p if "." in p else f"{parent}.{p}" for p in parts]


@pytest.mark.parametrize("entry", PRIVATE_APIS)
def test_private_apis_each_resolve(entry):
    for path in _paths(entry):
        _resolve(path)  # raises ImportError / AttributeError when torch moved it


def test_private_apis_paths_are_read_as_written():
    assert _paths("torch.x.A / B / torch.y.C (note: a, b)") == ["torch.x.A", "torch.x.B", "torch.y.C"]
    with pytest.raises(AttributeError):
        _resolve("torch.utils.no_such_name")


def _fake_mode() -> FakeTensorMode:
    return FakeTensorMode(shape_env=ShapeEnv(duck_shape=False), allow_non_fake_inputs=False)


def _symbolic(mode: FakeTensorMode, shape: tuple[int, ...], dynamic: set[int]) -> torch.Tensor:
    sizes = [DimDynamic.DYNAMIC if d in dynamic else DimDynamic.STATIC for d in range(len(shape))]
    return mode.from_tensor(torch.randn(shape), symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))


def test_unset_fake_temporarily_leaves_the_fake_mode_and_other_modes_in_place():
    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    mode = _fake_mode()
    with mode, Log():
        with unset_fake_temporarily():
            inner = torch.empty(2, 3, device="meta") + 1
        outer = torch.empty(2, 3) + 1
    assert inner.device.type == "meta" and not mode.is_our_fake(inner)
    assert mode.is_our_fake(outer)
    assert seen.count("aten.add.Tensor") == 2  # the mode above the fake one still sees both


def test_rename_in_order_names_nodes_as_a_graph_built_in_order():
    import operator

    g = torch.fx.Graph()
    x = g.placeholder("x")
    last = g.call_function(torch.ops.aten.relu.default, (x,), name="relu")
    g.output(last)
    with g.inserting_before(last):  # made later, runs first: fx numbers it relu_1
        first = g.call_function(torch.ops.aten.relu.default, (x,), name="relu")
        item = g.call_function(operator.getitem, ((first,), 0))
    last.args = (item,)
    assert [n.name for n in g.nodes] == ["x", "relu_1", "getitem", "relu", "output"]

    def candidate(node):
        return "relu" if node.target is torch.ops.aten.relu.default else node.target if node.op == "placeholder" else None

    fresh, env = torch.fx.Graph(), {}
    for node in g.nodes:
        env[node] = fresh.create_node(node.op, node.target, torch.fx.map_arg(node.args, env.__getitem__),
                                      name=candidate(node))
    names = rename_in_order(g, candidate)
    assert [n.name for n in g.nodes] == [n.name for n in fresh.nodes] == ["x", "relu", "getitem", "relu_1", "output"]
    assert names == {"x": "x", "relu_1": "relu", "getitem": "getitem", "relu": "relu_1", "output": "output"}
    added = g.call_function(torch.ops.aten.relu.default, (x,), name="relu")  # the namespace is the new one
    assert added.name == "relu_2"
    g.lint()


def test_fake_mode_makes_symbolic_sizes_from_a_context():
    mode = _fake_mode()
    x = _symbolic(mode, (4, 3), {0})
    assert isinstance(x.shape[0], torch.SymInt) and type(x.shape[1]) is int and x.shape[1] == 3
    assert x.device.type == "cpu" and x.dtype == torch.float32
    real = torch.ones(1, 3)
    with mode:
        assert type((x * 2).shape[0]) is torch.SymInt
        with pytest.raises(Exception, match="(?i)fake"):  # allow_non_fake_inputs=False refuses a real tensor
            x + real


def test_shape_env_keeps_equal_sizes_apart_and_records_guards():
    mode = _fake_mode()
    env = mode.shape_env
    x, y = _symbolic(mode, (4, 3), {0}), _symbolic(mode, (4, 3), {0})
    sx, sy = x.shape[0].node.expr, y.shape[0].node.expr
    assert isinstance(sx, sympy.Symbol) and sx != sy  # duck_shape=False: equal sizes, two symbols
    values = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
    assert values[sx] == 4 and values[sy] == 4  # the hints symcx reads
    assert env.guards == []
    with mode:
        x + y  # broadcasting equal sizes unifies the two symbols
    assert env.replace(sy) == sx or env.replace(sx) == sy
    assert bool(x.shape[0] > 2)
    assert [str(g.expr) for g in env.guards if g.expr.free_symbols == {sx}]  # the comparison left a guard


def _lstm_ops(*, python_dispatcher: bool, eager: bool) -> set[str]:
    """Op families an ``nn.LSTM`` step (input needing grad) records under a fake mode."""
    lstm = torch.nn.LSTM(3, 5)
    mode = _fake_mode()
    rec = _Recorder()
    with contextlib.ExitStack() as stack:
        if eager:
            stack.enter_context(eager_lstm_kernels())
        stack.enter_context(reparametrize_module(lstm, {k: mode.from_tensor(v) for k, v in lstm.named_parameters()}))
        stack.enter_context(mode)
        if python_dispatcher:
            stack.enter_context(enable_python_dispatcher())
        stack.enter_context(rec)
        lstm(torch.randn(7, 2, 3, requires_grad=True))
    return {op_names(f)[1] for f in rec.calls}


def test_python_dispatcher_runs_python_decompositions():
    # with it, torch's Python LSTM decomposition runs (unrolled cells: addmm, sigmoid, tanh)
    assert {"aten.addmm", "aten.sigmoid"} <= _lstm_ops(python_dispatcher=True, eager=False)
    # without it, the C++ composite runs: one oneDNN layer, no addmm (torch 2.13, measured)
    without = _lstm_ops(python_dispatcher=False, eager=False)
    assert "aten.addmm" not in without and "aten.mkldnn_rnn_layer" in without


def test_eager_lstm_kernels_picks_onednn_and_restores():
    ops = _lstm_ops(python_dispatcher=True, eager=True)
    assert "aten.mkldnn_rnn_layer" in ops and "aten.addmm" not in ops
    # the patch is undone on exit: the decomposition unrolls cells again
    assert "aten.addmm" in _lstm_ops(python_dispatcher=True, eager=False)


def _dropout_ops(*, eager: bool) -> list[str]:
    """Op families a CPU dropout step records under a fake mode with the python dispatcher on."""
    mode = _fake_mode()
    rec = _Recorder()
    with contextlib.ExitStack() as stack:
        if eager:
            stack.enter_context(eager_dropout_kernels())
        stack.enter_context(mode)
        stack.enter_context(enable_python_dispatcher())
        stack.enter_context(rec)
        torch.nn.functional.dropout(torch.randn(4, 5, requires_grad=True), 0.1, True)
    return [op_names(f)[1] for f in rec.calls]


def test_eager_dropout_kernels_draw_a_float_mask_on_the_cpu_and_restore():
    # eager CPU dropout (Dropout.cpp's _dropout): a mask of the input's dtype, then a multiply
    assert {"aten.bernoulli_", "aten.div_", "aten.mul"} <= set(_dropout_ops(eager=True))
    assert "aten.native_dropout" not in _dropout_ops(eager=True)
    # the decomposition is back on exit: native_dropout with a bool mask
    assert "aten.native_dropout" in _dropout_ops(eager=False)


def _conv_guards(*, unguarded: bool, channels_last: bool = False) -> list[str]:
    """Guards a 1×1 convolution's fake kernel leaves on a symbolic batch of 4 (torch's backend choice
    reads ``input.size(0) >= 16`` there), and the output's strides."""
    mode = _fake_mode()
    conv = torch.nn.Conv2d(8, 16, 1)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    x = _symbolic(mode, (4, 8, 8, 8), {0})
    with contextlib.ExitStack() as stack:
        if unguarded:
            stack.enter_context(conv_layout_unguarded())
        params = {k: mode.from_tensor(v, static_shapes=True) for k, v in conv.named_parameters()}
        stack.enter_context(reparametrize_module(conv, params))
        stack.enter_context(mode)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = conv(x)
    return sorted(str(g.expr) for g in mode.shape_env.guards), out.is_contiguous()


def test_conv_layout_unguarded_drops_only_the_backend_guard_and_restores():
    guards, contiguous = _conv_guards(unguarded=False)
    assert any("16" in g for g in guards) and contiguous  # torch alone: the batch is bounded (s0 < 16)
    guards, contiguous = _conv_guards(unguarded=True)
    assert not any("16" in g for g in guards) and contiguous  # every backend: a contiguous output
    assert any("16" in g for g in _conv_guards(unguarded=False)[0])  # restored on exit: torch's choice guards again
    # a channels-last input: oneDNN keeps channels-last, the slow kernel would not, so the guard stays
    guards, _ = _conv_guards(unguarded=True, channels_last=True)
    assert guards == _conv_guards(unguarded=False, channels_last=True)[0]


def _sizes_and_guards(memo: bool) -> tuple[list, list, bool]:
    """A [t, 8] tensor's products and comparisons, twice each, on a fresh ShapeEnv."""
    mode = _fake_mode()
    x = _symbolic(mode, (4, 8), {0})
    t = x.shape[0]
    with symnode_ops_memoized() if memo else contextlib.nullcontext():
        first, again = t * 8 + 1, t * 8 + 1
        same = first.node is again.node
        big = bool(t * 8 > 16)  # a guard: t > 2
        with mode:
            y = (x * 2).reshape(-1)
    def named(expr: Any) -> str:  # symbols are numbered across ShapeEnvs: s0 here
        return re.sub(r"\bs\d+\b", "s0", str(expr))
    guards = sorted(named(g.expr) for g in mode.shape_env.guards)
    return [named(first.node.expr), named(y.shape[0].node.expr), big], guards, same


def test_symnode_ops_memoized_answers_repeats_once_keeps_guards_and_restores():
    names = [*_torch._binary_symnode_methods(), "wrap_int"]
    assert {"_mul", "_add", "_lt", "_and_"} <= set(names)
    before = {name: getattr(SymNode, name) for name in names}
    plain, plain_guards, plain_same = _sizes_and_guards(memo=False)
    memo, memo_guards, memo_same = _sizes_and_guards(memo=True)
    assert plain == memo == ["8*s0 + 1", "8*s0", True]  # the same expressions and the guard's answer
    assert memo_guards == plain_guards and any("s0" in g for g in memo_guards)  # guards still recorded
    assert memo_same and not plain_same  # a repeated operation is answered from the table
    assert {name: getattr(SymNode, name) for name in names} == before  # restored


def test_reparametrize_module_swaps_tied_tensors_and_restores():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].weight = model[0].weight
    original = model[0].weight
    w = torch.zeros(2, 2)
    with reparametrize_module(model, {"0.weight": w}):
        assert model[0].weight is w and model[1].weight is w  # tie_weights=True
        assert model(torch.ones(1, 2)).shape == (1, 2)
    assert model[0].weight is original and model[1].weight is original
    assert isinstance(original, torch.nn.Parameter)


def test_autograd_would_have_decomposed():
    x = torch.ones(2, 2, requires_grad=True)
    assert autograd_would_have_decomposed(aten.mm.default, [x]) is False  # has its own autograd kernel
    assert autograd_would_have_decomposed(aten.linear.default, [x]) is True  # CompositeImplicitAutograd


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(func)
        return func(*args, **(kwargs or {}))


def test_dispatch_mode_sees_each_aten_call():
    x = torch.ones(2, 3)
    rec = _Recorder()
    with rec:
        y = (x * 2).sum()
    assert rec.calls == [aten.mul.Tensor, aten.sum.default]
    assert y.item() == 12.0  # the mode ran each op: 2·6 = 12
    rec.calls.clear()
    x * 2
    assert rec.calls == []  # inactive once the block exits


@pytest.mark.slow
def test_weak_tensor_key_dictionary_keys_by_identity_weakly():
    d = WeakTensorKeyDictionary()
    a, b = torch.ones(2), torch.ones(2)
    d[a], d[b] = "a", "b"
    assert d[a] == "a" and d[b] == "b" and len(d) == 2  # equal values, two keys
    del a
    gc.collect()
    assert len(d) == 1 and d.get(b) == "b"


def test_op_types():
    assert isinstance(aten.mm.default, OpOverload) and not isinstance(aten.mm, OpOverload)
    assert isinstance(aten.mm, OpOverloadPacket) and not isinstance(aten.mm.default, OpOverloadPacket)
    assert is_op(aten.mm.default) and is_op(torch.ops.prim.device.default)
    assert not is_op(aten.mm) and not is_op(operator.getitem) and not is_op(torch.mm)


@pytest.mark.parametrize("target, names", [
    (aten.mm.default, ("aten.mm.default", "aten.mm")),
    (aten.add.Tensor, ("aten.add.Tensor", "aten.add")),
    (aten._softmax.default, ("aten._softmax.default", "aten._softmax")),
    (torch.ops.prim.device.default, ("prim.device.default", "prim.device")),
    (operator.getitem, ("getitem", "getitem")),
])
def test_op_names(target, names):
    assert op_names(target) == names
    if is_op(target):
        assert packet_name(target.overloadpacket) == names[1]


def test_op_schema_names_arguments_and_aliasing():
    addmm = op_schema(aten.addmm.default)
    assert [(a.name, a.kwarg_only, a.has_default_value()) for a in addmm.arguments] == [
        ("self", False, False), ("mat1", False, False), ("mat2", False, False),
        ("beta", True, True), ("alpha", True, True),
    ]
    assert addmm.arguments[3].default_value == 1 and addmm.returns[0].alias_info is None
    view = op_schema(aten.view.default)  # a view's return aliases self, read-only
    assert view.returns[0].alias_info.before_set & view.arguments[0].alias_info.before_set
    assert view.returns[0].alias_info.is_write is False
    add_ = op_schema(aten.add_.Tensor)  # in place: self is written and returned
    assert add_.arguments[0].alias_info.is_write is True
    assert add_.returns[0].alias_info.before_set == add_.arguments[0].alias_info.before_set
    assert op_schema(operator.getitem) is None and op_schema(aten.mm) is None


def test_module_attributes_are_a_modules_own_state_and_none_with_hooks():
    lin = torch.nn.Linear(3, 2)
    lin.layer_idx = 4
    assert module_attributes(lin) == {"training": True, "in_features": 3, "out_features": 2, "layer_idx": 4}
    handle = lin.register_forward_pre_hook(lambda mod, args: None)
    assert module_attributes(lin) is None
    handle.remove()
    lin.register_full_backward_hook(lambda mod, gin, gout: None)
    assert module_attributes(lin) is None


def test_sequence_numbers_tie_backward_nodes_to_forward_ops():
    x = torch.ones(2, requires_grad=True)
    y = x * 2
    after_mul = current_sequence_nr()
    z = y.sum()
    after_sum = current_sequence_nr()
    assert sequence_nr(y.grad_fn) == after_mul
    assert sequence_nr(z.grad_fn) == after_sum == after_mul + 1


def test_pytree():
    tree = ({"a": 1, "b": [2, 3]}, (4,))
    leaves, spec = tree_flatten(tree)
    assert leaves == [1, 2, 3, 4] and tree_leaves(tree) == leaves
    assert tree_unflatten([5, 6, 7, 8], spec) == ({"a": 5, "b": [6, 7]}, (8,))
    assert tree_map(lambda v: v * 10, tree) == ({"a": 10, "b": [20, 30]}, (40,))


def test_torch_sympy_functions_symbols_translates():
    f = torch_sympy_functions
    # the classes symcx.symbols maps to plain sympy (its _translations table)
    for name in ("FloorDiv", "CeilDiv", "PythonMod", "Mod", "FloorToInt", "CeilToInt", "PowByNatural", "Identity"):
        assert isinstance(getattr(f, name), type) and issubclass(getattr(f, name), sympy.Basic), name
    assert f.FloorDiv(7, 2) == 3 and f.CeilDiv(7, 2) == 4 and f.PythonMod(-7, 3) == 2
    s = sympy.Symbol("s", integer=True, positive=True)
    assert type(f.FloorDiv(s, 2)).__name__ == "FloorDiv"  # stays unevaluated on a symbol


def test_make_fx_traces_aten_calls_with_symbolic_sizes():
    # the oracle of tests/test_trace.py: torch's own tracer, on the same step as symcx's recorder
    g = make_fx(lambda x: (x * 2).sum(), tracing_mode="symbolic")(torch.ones(3, 4))
    assert [n.target for n in g.graph.nodes if n.op == "call_function"] == [aten.mul.Tensor, aten.sum.default]
    (x,) = [n for n in g.graph.nodes if n.op == "placeholder"]
    assert all(isinstance(size, torch.SymInt) for size in x.meta["val"].shape)  # every size symbolic


def test_profiler_event_type_tags_allocations():
    # the allocator-peak oracle of tests/test_memory.py walks the profiler's event tree
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        x = torch.empty(1000)  # 1000·4 = 4000 bytes allocated, then freed
        del x
    sizes, todo = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while todo:
        event = todo.pop()
        todo.extend(event.children)
        if event.tag == ProfilerEventType.Allocation:
            sizes.append(event.extra_fields.alloc_size)
    assert sorted(sizes) == [-4000, 4000]  # a free is an allocation event of negative size


def test_fake_process_group_shards_with_fully_shard():
    # symcx.capture.distributed reads FSDP2's shard sizes under torch's fake backend
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    with fake_process_group(3):
        assert dist.get_world_size() == 3 and dist.get_rank() == 0
        with torch.device("meta"):
            lin = torch.nn.Linear(4, 5)
        fully_shard(lin)
        assert lin.weight.to_local().shape == (2, 4)  # rank 0's chunk: ceil(5/3) = 2 rows of 4
    assert not dist.is_initialized()


def test_allocation_events_see_a_storage_resize():
    # symcx.validation.distributed measures FSDP2 ranks with it: a resize_ is an allocation too
    from torch.profiler import ProfilerActivity, profile

    x = torch.empty(10)
    storage = x.untyped_storage()
    storage.resize_(0)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        storage.resize_(4000)  # 4000 bytes, then 0 again
        storage.resize_(0)
    assert [size for _, size, _ in allocation_events(prof)] == [4000, -4000]
