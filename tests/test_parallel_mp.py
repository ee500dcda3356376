"""FSDP2 mixed precision (``fully_shard(..., mp_policy=MixedPrecisionPolicy(...))``) against torch's own
trace, and the NCCL path's refusals (symcx.parallel, symcx.capture.sharded, symcx.validation.distributed)."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

import symcx
from symcx.capture.sharded import trace_fsdp_step
from symcx.cli import main
from symcx.errors import SymcxError
from symcx.parallel import mp_policy_of, parallel_memory
from symcx.validation.distributed import TOLERANCE, check_devices, validate_distributed
from symcx.zoo import MnistCNN

g, t = symcx.g, symcx.t


def test_linear_by_hand():
    # Linear(8, 6) fp32, the root the only unit, g = 2, per-GPU batch 4, Adam, MixedPrecisionPolicy(bf16, fp32).
    # Start of step (fp32, as without a policy): shards 27 floats (108 B), Adam 216 + 8 B, batch 4·8·4 = 128: 460 B.
    # Peak, at the reduce-scatter's output: the kept bf16 output 4·6·2 = 48, loss and seed 2 + 2, the bias's
    # bf16 gradient 6·2 = 12 (foreach_reduce's loop variable still holds it), the fp32 reduce-scatter input
    # g·27·4 = 216 and its fp32 output 27·4 = 108: 388 B (the bf16 input copy and weight gradient are freed).
    x = torch.randn(2, 8)
    r = trace_fsdp_step(torch.nn.Linear(8, 6), x, gpus=2, batch=4, mp_policy="bf16")
    assert (r.resident_bytes, r.peak_bytes) == (460, 388)
    a = symcx.analyze(torch.nn.Linear(8, 6), x, optimizer="adam", precision="bf16")
    m = a.memory(gpus=2, strategy="fsdp", mp_policy="bf16").subs({t: 4})
    assert (m.resident, m.peak - m.resident) == (460, 388)


@pytest.fixture(scope="module")
def cnn():
    return MnistCNN(), torch.randn(2, 1, 28, 28)


def check_fsdp_model(model, x, *, batch: int, mp_policy, **kw) -> list[dict]:
    """The step analysed at the policy's compute dtype, checked against fully_shard(..., mp_policy=...)."""
    a = symcx.analyze(model, x, optimizer="adam", precision=mp_policy_of(mp_policy).trace)
    return a.check_fsdp(batch=batch, mp_policy=mp_policy, **kw)


def _exact(rows: list[dict]) -> None:
    assert [r["gpus"] for r in rows] == [2, 3, 4, 8]
    for r in rows:
        assert (r["traced_peak_bytes"], r["traced_resident_bytes"]) == (r["predicted_peak_bytes"],
                                                                        r["predicted_resident_bytes"]), r


@pytest.mark.slow
def test_seed_cnn_bf16_equals_fully_shard(cnn):
    # the formula built once in g, against fully_shard(..., mp_policy=MixedPrecisionPolicy(bf16, fp32)) at 2, 3, 4, 8
    _exact(check_fsdp_model(*cnn, batch=2, mp_policy="bf16"))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["bf16", "bf16-reduce-bf16", "fp16"])
@pytest.mark.parametrize("reshard", [True, False])
def test_seed_cnn_policies_equal_fully_shard(cnn, policy, reshard):
    _exact(check_fsdp_model(*cnn, batch=2, mp_policy=policy, reshard_after_forward=reshard))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["bf16", "bf16-reduce-bf16"])
@pytest.mark.parametrize("reshard", [True, False])
def test_resnet18_and_gpt_policies_equal_fully_shard(policy, reshard):
    from symcx.zoo.models import GPT, ResNet18

    for model, x in ((ResNet18(), torch.randn(2, 3, 32, 32)), (GPT(), GPT().example_input())):
        _exact(check_fsdp_model(model, x, batch=2, mp_policy=policy, reshard_after_forward=reshard))


@pytest.mark.slow
def test_one_gpu_model_states_are_the_fp32_step(cnn):
    # at g = 1 the shards are whole: params, grads and Adam state of the bf16-traced step under the policy are
    # the fp32 step's own (traced separately, without any policy); the activations the bf16 step's
    model, x = cnn
    fp32 = symcx.analyze(model, x, optimizer="adam").memory(gpus=1, strategy="fsdp")
    bf16 = symcx.analyze(model, x, optimizer="adam", precision="bf16")
    mixed = bf16.memory(gpus=1, strategy="fsdp", mp_policy="bf16")
    assert (mixed.params, mixed.grads, mixed.optimizer) == (fp32.params, fp32.grads, fp32.optimizer)
    assert mixed.activations == bf16.memory(gpus=1, strategy="fsdp").activations  # as traced in bf16
    assert mixed.activations < fp32.activations  # (max-pool's int64 indices do not halve)


@pytest.mark.slow
def test_communication_dtypes(cnn):
    # all-gathers carry bf16 (half the fp32 bytes); reduce-scatters fp32 (bf16) or bf16 (bf16-reduce-bf16)
    model, x = cnn
    fp32 = symcx.analyze(model, x, optimizer="adam").communication(g, "fsdp")
    bf16 = symcx.analyze(model, x, optimizer="adam", precision="bf16")
    for policy, rs in (("bf16", 1), ("bf16-reduce-bf16", 2)):
        c = bf16.communication(g, "fsdp", mp_policy=policy)
        assert sympy_eq(c.all_gather * 2, fp32.all_gather) and sympy_eq(c.reduce_scatter * rs, fp32.reduce_scatter)


def sympy_eq(a, b) -> bool:
    """Equal at every g from 1 to 16 (the expressions hold ceilings)."""
    return all(a.subs(g, k) == b.subs(g, k) for k in range(1, 17))


@pytest.mark.slow
def test_policies_and_refusals(cnn):
    assert mp_policy_of(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)).name == "bf16"
    assert mp_policy_of(MixedPrecisionPolicy(param_dtype=torch.bfloat16)).name == "bf16-reduce-bf16"  # reduce as grads
    assert mp_policy_of(MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)).name == "fp16"
    with pytest.raises(SymcxError, match="not modelled"):
        mp_policy_of(MixedPrecisionPolicy(param_dtype=torch.bfloat16, output_dtype=torch.float32))
    with pytest.raises(SymcxError, match="mp_policy must be one of"):
        mp_policy_of("bf8")
    model, x = cnn
    fp32 = symcx.analyze(model, x, optimizer="adam")
    with pytest.raises(SymcxError, match="precision='bf16'"):
        fp32.memory(gpus=2, strategy="fsdp", mp_policy="bf16")
    bf16 = symcx.analyze(model, x, optimizer="adam", precision="bf16")
    with pytest.raises(SymcxError, match="strategy='fsdp'"):
        bf16.memory(gpus=2, strategy="ddp", mp_policy="bf16")
    with pytest.raises(SymcxError, match="give one"):
        bf16.memory(gpus=2, strategy="fsdp", mp_policy="bf16", precision="mixed")
    with pytest.raises(SymcxError, match="precision='fp16'"):
        bf16.memory(gpus=2, strategy="fsdp", mp_policy="fp16")
    with pytest.raises(SymcxError, match="its param_dtype"):  # a bf16 analysis is not the fp32 step's trace
        bf16.check_fsdp()


def test_cli_mp_policy(capsys):
    assert main(["analyze", "mnist-cnn", "--gpus", "2", "--strategy", "fsdp", "--mp-policy", "bf16",
                 "--optimizer", "adam", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # fc1 (128×9216 + 128) and the rest, fp32 shards on 2 GPUs: 1199882 params → 599941 floats
    assert out["mp_policy"] == "bf16" and out["params_bytes"] == str(599941 * 4)
    assert main(["analyze", "mnist-cnn", "--gpus", "2", "--strategy", "ddp", "--mp-policy", "bf16"]) == 2
    assert main(["analyze", "mnist-cnn", "--gpus", "2", "--strategy", "fsdp", "--mp-policy", "bf16",
                 "--precision", "fp16"]) == 2
    assert main(["validate", "mnist-cnn", "--backward", "--mp-policy", "bf16"]) == 2  # no --gpus


@pytest.mark.slow
def test_nccl_backend_counts_kernel_copies_not_gloo_copies():
    # the small GPT under DDP at t = 8: the allocator's peak on gloo ranks was measured at 1844360 B, the
    # sum loss's expanded gradient copied by the LM head's mm (docs/parallel.md); DDP has no gloo copies, so
    # the CUDA prediction (cuBLAS clones the expanded operand too) is the same figure
    from symcx.zoo.models import GPT

    torch.manual_seed(0)
    a = symcx.analyze(GPT(), torch.randint(0, 64, (2, 16)), optimizer="adam")
    m = parallel_memory(a.step, 2, "ddp", backend="nccl")
    assert (m.peak - m.resident).subs(t, 8) == 1844360
    plain = parallel_memory(a.step, 2, "ddp")
    assert (plain.peak - plain.resident).subs(t, 8) < 1844360
    with pytest.raises(SymcxError, match="backend must be"):
        parallel_memory(a.step, 2, "ddp", backend="mpi")


def test_cuda_refusals(monkeypatch):
    if not torch.cuda.is_available():
        with pytest.raises(SymcxError, match="CUDA is not available"):
            check_devices("cuda", 2)
        assert main(["validate", "mnist-cnn", "--backward", "--gpus", "2", "--strategy", "fsdp",
                     "--device", "cuda"]) == 2
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SymcxError, match="only 1 are visible"):
        check_devices("cuda", 2)
    with pytest.raises(SymcxError, match="only 1 are visible"):
        validate_distributed(MnistCNN(), torch.randn(2, 1, 28, 28), gpus=2, strategy="ddp", device="cuda")
    with pytest.raises(SymcxError, match="device must be"):
        check_devices("mps", 2)


@pytest.mark.slow
@pytest.mark.parametrize("name, policy", [("cnn", "bf16"), ("cnn", "bf16-reduce-bf16"), ("gpt", "bf16")])
def test_bf16_on_gloo_ranks(name, policy):
    # two real gloo ranks running fully_shard(..., mp_policy=MixedPrecisionPolicy(bf16, ...)) on the CPU; the
    # allocator's peak (gloo copies each collective's buffer) against backend="gloo"
    from symcx.zoo.models import GPT

    torch.manual_seed(0)
    model, x = (MnistCNN(), torch.randn(2, 1, 28, 28)) if name == "cnn" else (GPT(), torch.randint(0, 64, (2, 16)))
    report = validate_distributed(model, x, gpus=2, strategy="fsdp", batch_sizes=[2, 8], mp_policy=policy,
                                  timeout=400)
    assert report["mp_policy"] == policy and report["backend"] == "gloo"
    # on a CPU without AVX-512 (torch's AVX2 path) bf16 work allocates scratch beside its tensors: with the
    # seed CNN's bf16 reduce-scatter at t=8 the allocator's peak was 12.5 % above the prediction there, the
    # live tensors' peak the prediction to the byte; with AVX-512 the allocator's peak is the prediction
    scratch = torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2")
    for run in report["runs"]:
        for r in run["ranks"]:
            ok = abs(r["measured_peak_bytes"] / r["predicted_peak_bytes"] - 1) <= TOLERANCE
            if scratch and not ok:  # the allocator's extra is the kernels' scratch: the tensors must be exact
                ok = abs(r["live_tensor_peak_bytes"] / r["predicted_peak_bytes"] - 1) <= TOLERANCE
            assert ok, r


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL)")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_seed_cnn_on_nccl_ranks(strategy):
    report = validate_distributed(MnistCNN(), torch.randn(2, 1, 28, 28), gpus=2, strategy=strategy,
                                  batch_sizes=[2, 8], device="cuda", timeout=400)
    assert report["backend"] == "nccl" and report["device"] == "cuda"
    for run in report["runs"]:
        for r in run["ranks"]:
            assert abs(r["measured_peak_bytes"] / r["predicted_peak_bytes"] - 1) <= TOLERANCE, r


@pytest.mark.slow
def test_cli_check_trace_mp_policy(capsys):
    # --check-trace with --mp-policy traces the float32 model through fully_shard(..., mp_policy=...)
    assert main(["analyze", "mnist-cnn", "--gpus", "g", "--strategy", "fsdp", "--mp-policy", "bf16",
                 "--optimizer", "adam", "--check-trace"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fully_shard traced")]
    assert [line.split(":")[0] for line in lines] == [f"fully_shard traced at g={k}" for k in (2, 3, 4, 8)]
