"""The traced joint graph, executed on real tensors, computes what eager PyTorch computes."""

from __future__ import annotations

import copy

import pytest
import torch

import symcx
from symcx.capture import trace_training_step
from symcx.step import build_step
from symcx.validation.execute import compare_with_eager, layer_seconds, run_traced_step
from symcx.zoo import MnistCNN
from symcx.zoo.models import GPT, ResNet18


def _image(channels: int, side: int):
    return lambda batch: torch.randn(batch, channels, side, side)


CASES = {
    "seed": (MnistCNN, _image(1, 28)),
    "resnet18": (ResNet18, _image(3, 64)),
    "gpt": (GPT, lambda batch: torch.randint(0, 64, (batch, 16))),
}


@pytest.fixture(scope="module", params=list(CASES))
def traced(request):
    torch.manual_seed(0)
    build, make = CASES[request.param]
    model = build()
    return request.param, model, make, trace_training_step(model, make(2))


@pytest.mark.parametrize("batch", [1, 8, pytest.param(32, marks=pytest.mark.slow)])
def test_graph_equals_eager_outputs_and_gradients(traced, batch):
    name, model, make, trace = traced
    x = make(batch)
    check, run = compare_with_eager(trace, model, x, {"t": batch})
    assert check.ok, check.mismatches
    assert check.mismatches == () and check.max_abs_error < 1e-4
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(run.grads) == trainable and all(g is not None for g in run.grads.values())
    assert run.outputs[0].shape[0] == batch
    # dropout draws from the same generator in the same order as eager: named, and still equal
    draws = [n for n in check.random_nodes if n.startswith(("native_dropout", "bernoulli"))]
    assert bool(draws) == (name in ("seed", "gpt"))


def test_a_wrong_node_is_found_by_module():
    torch.manual_seed(0)
    model = MnistCNN()
    trace = trace_training_step(model, torch.randn(2, 1, 28, 28))
    broken = copy.copy(trace)
    broken.graph = copy.deepcopy(trace.graph)
    relu = next(n for n in broken.graph.nodes if n.name == "relu_1")  # F.relu after conv2, in forward()
    relu.target = torch.ops.aten.sigmoid.default
    check, _ = compare_with_eager(broken, model, torch.randn(4, 1, 28, 28), {"t": 4})
    assert not check.ok
    assert "output 0" in check.mismatches and "grad of fc2.weight" in check.mismatches
    # conv1 and conv2 still agree; the first module after the broken functional ReLU is dropout1,
    # named with its last forward node
    prefix = "first differing module: dropout1 (node "
    assert check.mismatches[-1].startswith(prefix)
    last = check.mismatches[-1][len(prefix):-1]
    node = next(n for n in broken.graph.nodes if n.name == last)
    assert node.meta["custom"]["module"] == "dropout1" and node.meta["custom"]["phase"] == "forward"


def test_node_times_add_up_per_layer():
    torch.manual_seed(0)
    model = MnistCNN()
    trace = trace_training_step(model, torch.randn(2, 1, 28, 28))
    run = run_traced_step(trace, model, torch.randn(8, 1, 28, 28), {"t": 8})
    per_layer = layer_seconds(build_step(trace), run)
    assert {"conv1", "conv2", "fc1", "fc2"} <= set(per_layer)
    assert sum(per_layer.values()) == pytest.approx(sum(run.node_seconds.values()))
    assert all(s >= 0 for s in run.node_seconds.values())


def test_a_size_left_unbound_is_refused():
    model = MnistCNN()
    trace = trace_training_step(model, torch.randn(2, 1, 28, 28))
    with pytest.raises(symcx.SymcxError, match="not a number"):
        run_traced_step(trace, model, torch.randn(8, 1, 28, 28), {})
