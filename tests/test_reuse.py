"""Block reuse (``analyze(..., reuse=True)``, ``symcx/capture/reuse.py``): every figure equals the full trace's.

The oracle is the full trace of the same model (``reuse=False``), an independent recording of every
block; one model also gets its FLOPs by hand. A reuse that cannot be shown right must fall back
(to tracing the block, or the step, in full) and say so in the notes.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import sympy
import torch
from torch import nn

import symcx
from symcx.zoo import MnistCNN
from symcx.capture import Iteration, optimizer_factory, trace_training_step
from symcx.capture import reuse
from symcx.capture.replay_check import replay_mismatch
from symcx.capture.reuse import op_multiset, too_little_to_reuse

t = sympy.Symbol("t", positive=True, integer=True)


class MLPBlock(nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


def mlp(depth: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, 32), *[MLPBlock() for _ in range(depth)])


def _figures(model: nn.Module, x, reuse: bool, **kw) -> dict:
    a = symcx.analyze(model, x, reuse=reuse, **kw)
    m = a.memory()
    return {
        "forward": a.forward_flops, "backward": a.backward_flops, "step": a.step_flops,
        "peak": m.peak, "peak_node": m.peak_node, "peak_layer": m.peak_layer, "activations": m.activations,
        "layers": list(a.layers),
        "nodes": [(v.name, v.op, v.phase, v.module, v.layer, v.seq_nr is None, str(v.out)) for v in a.step.nodes],
        "notes": a.step.notes, "route_note": a.route_note,
    }


def _pair(model: nn.Module, x, **kw) -> tuple[dict, dict]:
    return _figures(model, x, False, **kw), _figures(model, x, True, **kw)


def _assert_same(full: dict, reused: dict) -> None:
    for key in ("forward", "backward", "step", "peak", "peak_node", "peak_layer", "activations", "layers"):
        assert reused[key] == full[key], key
    assert len(reused["nodes"]) == len(full["nodes"])
    assert Counter((n[1], n[6]) for n in reused["nodes"]) == Counter((n[1], n[6]) for n in full["nodes"])
    assert reused["nodes"] == full["nodes"]  # names, order, phase, module and layer of every node


def _replayed(notes) -> int:
    return sum(int(n.split(" calls replayed")[0].rsplit(" ", 1)[1]) for n in notes if " calls replayed from " in n)


@pytest.fixture(scope="module")
def mlp8():
    torch.manual_seed(0)
    model = mlp(8)
    return _pair(model, torch.randn(4, 16))


def test_mlp_of_identical_blocks_is_the_full_trace(mlp8):
    full, reused = mlp8
    _assert_same(full, reused)
    # module "1" (the first block) gets the stem's output; "2".."8" replay it
    assert any(n.startswith("block reuse: 7 calls replayed from 1 (MLPBlock): 2, 3") for n in reused["notes"])
    assert "block reuse: 7 calls replayed from 1" in reused["route_note"]
    assert not any("block reuse" in n for n in full["notes"])


def test_mlp_flops_by_hand(mlp8):
    _, reused = mlp8
    # a Linear(i, o) on t rows: 2*t*i*o forward (the matmul); backward: 2*t*i*o for the weight's gradient,
    # and 2*t*i*o for the input's except on the first layer, whose input needs none
    linears = [(16, 32)] + [(32, 128), (128, 32)] * 8
    assert reused["forward"] == sum(2 * t * i * o for i, o in linears)
    assert reused["backward"] == sum(4 * t * i * o for i, o in linears) - 2 * t * 16 * 32


@pytest.fixture(scope="module")
def zoo_gpt():
    from symcx.zoo.models import GPT
    torch.manual_seed(0)
    model = GPT(n_layer=3)
    return _pair(model, model.example_input(), dims={"L": 1})


def test_zoo_gpt_is_the_full_trace(zoo_gpt):
    full, reused = zoo_gpt
    _assert_same(full, reused)
    assert _replayed(reused["notes"]) == 2  # blocks.1 and blocks.2 from blocks.0


class Counted(nn.Module):
    """Blocks whose ops depend on a counter the key cannot see (an object, compared by identity):
    every other call doubles its input."""

    def __init__(self, calls: SimpleNamespace) -> None:
        super().__init__()
        self.lin, self.calls = nn.Linear(8, 8), calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.n += 1
        y = self.lin(x)
        return y * 2 if self.calls.n % 2 == 0 else torch.relu(y)


class CountedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        calls = SimpleNamespace(n=0)
        self.calls = calls
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Counted(calls) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.n = 0
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


def test_a_hidden_code_path_fails_the_check_and_is_traced_normally():
    model = CountedNet()
    reused = trace_training_step(model, torch.randn(3, 4), reuse=True)
    full = trace_training_step(model, torch.randn(3, 4))
    assert "block reuse refused after the step: blocks.1 runs other ops than blocks.0" in reused.notes
    assert _replayed(reused.notes) == 0
    assert op_multiset(reused) == op_multiset(full)
    assert [n.name for n in reused.graph.nodes] == [n.name for n in full.graph.nodes]


class WithState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, cfg: object) -> torch.Tensor:
        return torch.tanh(self.lin(torch.relu(self.lin(x)))) * 2


class ObjectArgs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(WithState() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, object())
        return x


def test_an_object_argument_is_refused_and_said():
    trace = trace_training_step(ObjectArgs(), torch.randn(3, 8), reuse=True)
    refused = [n for n in trace.notes if n.startswith("block reuse refused for blocks.0, blocks.1, blocks.2")]
    assert refused and "an argument of type object" in refused[0]
    assert _replayed(trace.notes) == 0


class Norm(nn.Module):
    """An RMS norm: reads its input twice."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class PreNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.norms = nn.ModuleList(Norm() for _ in range(3))
        self.lins = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for norm, lin in zip(self.norms, self.lins):
            x = x + lin(norm(x))  # the residual reads the norm's input too
        return x


def test_an_input_read_inside_twice_and_outside_is_refused_after_the_backward():
    model = PreNorm()
    reused = trace_training_step(model, torch.randn(3, 4), reuse=True)
    full = trace_training_step(model, torch.randn(3, 4))
    why = "block reuse refused after the step: norms.0 reads an input twice"
    assert any(n.startswith(why) for n in reused.notes)
    assert [(n.name, n.meta.get("custom", {}).get("module")) for n in reused.graph.nodes] == [
        (n.name, n.meta.get("custom", {}).get("module")) for n in full.graph.nodes]


def test_analyze_reuses_by_default_the_tracer_does_not_and_accumulation_never():
    model = mlp(3)
    assert _replayed(symcx.analyze(model, torch.randn(3, 16)).step.notes) == 2
    assert not any("block reuse" in n for n in symcx.analyze(model, torch.randn(3, 16), reuse=False).step.notes)
    assert not any("block reuse" in n for n in trace_training_step(model, torch.randn(3, 16)).notes)
    two = Iteration(optimizer_factory("sgd"), micro_steps=2)
    trace = trace_training_step(model, torch.randn(3, 16), reuse=True, iteration=two)
    assert "block reuse is off for gradient accumulation, held gradients and autocast" in trace.notes


def test_resnet18_is_not_reused_by_default_its_one_repeat_is_too_little():
    from symcx.zoo.models import ResNet18
    # leaf modules: stem conv, bn, relu, maxpool, avgpool, fc (6) + 8 blocks × (conv, bn, relu, conv, bn)
    # + 3 downsamples × (conv, bn) = 52; only layer1.1 repeats a block (layer1.0): 5 of 52, under 20 %
    why = too_little_to_reuse(ResNet18(num_classes=10))
    assert why is not None and "hold 5 of the model's 52 leaf modules" in why
    assert too_little_to_reuse(mlp(3)) is None  # 2 repeated blocks × 2 Linears: 4 of 1 + 3 × 2 = 7 leaves
    seed = symcx.analyze(MnistCNN(), torch.randn(2, 1, 28, 28))  # no block repeats: skipped, nothing said
    assert too_little_to_reuse(MnistCNN()) == "" and "block reuse" not in seed.route_note


@pytest.mark.slow
def test_resnet18_is_the_full_trace(monkeypatch):
    from symcx.zoo.models import ResNet18
    monkeypatch.setattr(reuse, "MIN_REPEATED_SHARE", 0.0)  # replayed although it saves too little
    torch.manual_seed(0)
    model = ResNet18(num_classes=10)
    full, reused = _pair(model, model.example_input(32))
    _assert_same(full, reused)
    basic = "block reuse: 1 calls replayed from layer1.0 (BasicBlock): layer1.1"
    assert any(n.startswith(basic) for n in reused["notes"])
    # a block's ReLU runs twice, and no ReLU was replayed: traced normally, the step not traced again
    assert any("layer2.0.relu" in n and "called more than once" in n for n in reused["notes"])
    assert not any("after the step" in n or "fell back" in n for n in reused["notes"])


@pytest.mark.slow
def test_gpt2_small_is_the_full_trace():
    from symcx.zoo.models import gpt2_small
    torch.manual_seed(0)
    model = gpt2_small()
    full, reused = _pair(model, model.example_input(), dims={"L": 1})
    _assert_same(full, reused)
    assert _replayed(reused["notes"]) == 11


def _replays(notes) -> dict[str, set[str]]:
    """Template path -> the paths replayed from it, read off the notes."""
    out = {}
    for n in notes:
        if " calls replayed from " in n:
            template = n.split(" calls replayed from ")[1].split(" (")[0]
            out[template] = set(n.split("): ", 1)[1].split(" (they differ")[0].split(", "))
    return out


@pytest.mark.slow
def test_gemma2_layers_are_replayed_from_a_layer_of_their_own_attention_kind():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Gemma2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=4, max_position_embeddings=64,
        attn_implementation="eager", use_cache=False)
    assert cfg.layer_types[:2] == ["sliding_attention", "full_attention"]  # sliding and global alternate
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(cfg)
    full, reused = _pair(model, {"input_ids": torch.randint(0, 128, (2, 8))}, dims={"L": 1})
    _assert_same(full, reused)
    # sliding layers (0, 2) differ from global ones (1, 3) in their window: never copied across kinds;
    # within a kind they differ only in layer_idx, which Gemma-2's code reads only to update a cache
    replays = _replays(reused["notes"])
    assert replays["model.layers.0"] == {"model.layers.2"} and replays["model.layers.1"] == {"model.layers.3"}
    assert any("differ in self_attn.layer_idx, which its code does not read" in n for n in reused["notes"])


@pytest.mark.slow
def test_hf_gpt2_is_the_full_trace():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=4, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    full, reused = _pair(model, {"input_ids": torch.randint(0, 128, (2, 8))}, dims={"L": 1})
    _assert_same(full, reused)
    # with the config's use_cache the blocks get a DynamicCache, whose update a replay would miss
    assert not any("(GPT2Block)" in n for n in reused["notes"])
    assert any("DynamicCache" in n for n in reused["notes"])
    model.config.use_cache = False
    full, reused = _pair(model, {"input_ids": torch.randint(0, 128, (2, 8))}, dims={"L": 1})
    _assert_same(full, reused)
    assert _replays(reused["notes"])["transformer.h.0"] == {f"transformer.h.{k}" for k in (1, 2, 3)}


class SmallResidual(nn.Module):
    """Three ops (too small to replay) reading their input twice: ``x + lin(x)``."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


def test_a_refused_block_whose_input_is_read_outside_too_is_the_full_trace():
    # each Linear inside is a template refused as too small; its input is also the residual's, so the
    # engine adds the two gradient shares: right after the Linear's backward, as in the full trace,
    # not after the boundary's own autograd node (which runs later, by sequence number)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), *[SmallResidual() for _ in range(3)])
    full, reused = _pair(model, torch.randn(3, 8))
    _assert_same(full, reused)  # per-layer rows too: the add stays in its layer
    assert not any("after the step" in n or "fell back" in n for n in reused["notes"])


class Scaled(nn.Module):
    """A block whose code path reads a flag (``gate``) and whose index it never reads (``index``)."""

    def __init__(self, index: int, gate: bool, d: int = 8) -> None:
        super().__init__()
        self.index, self.gate = index, gate
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return x + (torch.sigmoid(y) * y if self.gate else torch.tanh(y).exp())


class ByVars(Scaled):
    """The same, reading its state through ``vars(self)`` (every attribute counts as read)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return x + (y.exp().exp() if vars(self)["index"] % 2 else y.sin().cos())


@pytest.mark.parametrize("cls", [Scaled, ByVars])
def test_differing_attributes_are_replayed_only_where_their_code_does_not_read_them(cls):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), *[cls(k, gate=k % 2 == 0) for k in range(6)])
    full, reused = _pair(model, torch.randn(3, 8))
    _assert_same(full, reused)
    replays = _replays(reused["notes"])
    if cls is Scaled:  # gate is read: a template per value of it; index is not
        assert replays == {"1": {"3", "5"}, "2": {"4", "6"}}
        assert any("differ in index, which its code does not read" in n for n in reused["notes"])
    else:  # vars(self) reads everything: each block is its own template
        assert replays == {}


class Twice(nn.Module):
    """Identical blocks, one of them run twice (its weight's gradient sums both calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MLPBlock(8) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in (0, 1, 0, 2):
            x = self.blocks[k](x)
        return x


def test_a_module_called_twice_is_not_replayed():
    model = Twice()
    reused = trace_training_step(model, torch.randn(3, 8, requires_grad=True), reuse=True)
    full = trace_training_step(model, torch.randn(3, 8, requires_grad=True))
    assert any("blocks.0 is called more than once" in n or "for blocks.0: a module of its kind is called more than once" in n
               for n in reused.notes)
    assert [n.name for n in reused.graph.nodes] == [n.name for n in full.graph.nodes]


def test_where_meta_cannot_run_the_model_concrete_traces_check(monkeypatch):
    import symcx.capture.trace as trace_module

    def no_meta(*args, **kwargs):
        raise NotImplementedError("no meta kernel")

    monkeypatch.setattr(trace_module, "replay_mismatch", no_meta)
    model = CountedNet()
    reused = trace_training_step(model, torch.randn(3, 4), reuse=True)
    assert any("differ from a full trace's at the example sizes" in n for n in reused.notes)
    ok = trace_training_step(mlp(3), torch.randn(3, 16), reuse=True)
    assert _replayed(ok.notes) == 2 and not any("refused" in n for n in ok.notes)


class NotOnMeta(nn.Module):
    """Runs on fake tensors but not on meta outside its blocks (as Hugging Face's masks read a value
    unless they see a fake tensor); its blocks are ``Counted`` (hidden path) or ``MLPBlock``."""

    def __init__(self, counted: bool) -> None:
        super().__init__()
        self.calls = SimpleNamespace(n=0)
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Counted(self.calls) if counted else MLPBlock(8) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        self.calls.n = 0
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


@pytest.mark.parametrize("counted", [False, True])
def test_where_only_the_blocks_run_on_meta_they_are_checked_there(monkeypatch, counted):
    import symcx.capture.trace as trace_module

    runs = []

    def spy(model, args, kwargs, pairs, cast=None, fake=None, blocks_on_meta=False):
        where = "meta" if fake is None else "blocks on meta" if blocks_on_meta else "fake"
        try:
            got = replay_mismatch(model, args, kwargs, pairs, cast, fake, blocks_on_meta)
        except RuntimeError:
            runs.append((where, "raised"))
            raise
        runs.append((where, got))
        return got

    monkeypatch.setattr(trace_module, "replay_mismatch", spy)
    model = NotOnMeta(counted)
    reused = trace_training_step(model, torch.randn(3, 4), reuse=True)
    full = trace_training_step(model, torch.randn(3, 4))
    assert runs[0] == ("meta", "raised") and runs[1][0] == "blocks on meta"
    if counted:  # blocks.1 doubles where blocks.0 applies relu: found with the blocks on meta
        assert runs[1][1] == ("blocks.1", "blocks.0")
        assert "block reuse refused after the step: blocks.1 runs other ops than blocks.0" in reused.notes
    else:
        assert runs[1][1] is None and _replayed(reused.notes) == 3
    assert op_multiset(reused) == op_multiset(full)


def test_where_no_check_can_run_the_step_is_traced_in_full(monkeypatch):
    import symcx.capture.trace as trace_module

    def cannot(*args, **kwargs):
        raise RuntimeError("cannot run here")

    monkeypatch.setattr(trace_module, "replay_mismatch", cannot)
    monkeypatch.setattr(trace_module, "op_multiset", cannot)
    model = mlp(3)
    a = symcx.analyze(model, torch.randn(3, 16))
    assert any("the replays could not be checked (RuntimeError)" in n for n in a.step.notes)
    assert _replayed(a.step.notes) == 0
    assert a.forward_flops == symcx.analyze(model, torch.randn(3, 16), reuse=False).forward_flops


class Counting(nn.Module):
    """A block that counts its calls in an attribute and reads the count (a replay would not count)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.calls, self.lin = 0, nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        y = self.lin(x)
        return x + (y.exp().sin() if self.calls % 2 else y.cos().tanh())


def test_a_block_that_changes_its_own_attributes_is_not_replayed():
    def model() -> nn.Module:  # a fresh one per trace: each trace counts the calls up
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), *[Counting() for _ in range(3)])

    x = torch.randn(3, 8)
    full, reused = _figures(model(), x, False), _figures(model(), x, True)
    _assert_same(full, reused)
    assert _replayed(reused["notes"]) == 0
    assert any("changes its own attributes" in n for n in reused["notes"])


@pytest.mark.slow
def test_hf_llama_layers_are_replayed_and_their_norms_die_as_in_full():
    # LlamaRMSNorm's `variance` is a local that dies when its forward returns to nn.Module's call;
    # under a template that call goes through block reuse's frames, which must not hide the death
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    full, reused = _pair(model, {"input_ids": torch.randint(0, 100, (2, 8))}, dims={"L": 1})
    _assert_same(full, reused)
    assert _replays(reused["notes"])["model.layers.0"] == {"model.layers.1", "model.layers.2"}


def test_the_checks_op_log_answers_a_repeated_functional_meta_op_from_memory():
    from symcx.capture.replay_check import _OpLog

    log = _OpLog()
    x = torch.empty(4, 6, device="meta").t()  # a transposed layout: the output keeps it
    with log:
        first = torch.exp(x)
        again = torch.exp(x)
        other = torch.exp(torch.empty(3, 5, device="meta"))
        added = x.clone().add_(1)  # in place: run, never remembered
        view = x.view(-1, 4) if x.is_contiguous() else x.reshape(-1)  # an alias or a copy, run by torch
        on_cpu = torch.arange(5)  # values a model may read: never remembered
    remembered = Counter(str(key[0]) for key in log.known)
    assert remembered["aten.exp.default"] == 2  # two layouts; the repeat answered from memory
    assert not {"aten.add_.Tensor", "aten.arange.default", "aten._unsafe_view.default"} & set(remembered)
    assert (again.shape, again.stride(), again.dtype) == (first.shape, first.stride(), first.dtype) == ((6, 4), (1, 6),
                                                                                                       torch.float32)
    assert again is not first and other.shape == (3, 5) and added.shape == (6, 4) and view.numel() == 24
    assert on_cpu.tolist() == [0, 1, 2, 3, 4]
