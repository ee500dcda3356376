"""A step-time model: per op class, a launch floor and a cost per FLOP and per byte, fitted on a device.

Every node of a step falls in one class (:func:`op_class`): ``gemm`` (matmul-like), ``conv``,
``attention``, ``compute`` (elementwise, norms, reductions, pooling, softmax: what
FlopCounterMode ignores), ``movement`` (copies, concatenation, creation, in-place fills such as
dropout's ``bernoulli_``: bytes, no FLOPs) and ``free`` (views, which touch no data: a launch floor
only). GEMM, convolution and attention nodes of the backward are fitted apart
(:func:`fit_key`: ``conv_backward`` …): their kernels (weight gradients, reductions over the
batch) run at other rates than the forward's; ``compute`` and ``movement`` nodes are fitted per
op family where the calibration has enough of them (``compute:aten.max_pool2d_with_indices``: a
max-pool, a ReLU gradient and a random fill move a byte at very different rates). A node of key
*k* is predicted to take ``launch_k + flops·s_per_flop_k + bytes·s_per_byte_k`` seconds, FLOPs
counting both of symcx's counts and bytes those read (tensor arguments) and written (new
storage). :func:`calibrate` fits the three by non-negative least squares on per-node times of
traced runs (:func:`symcx.validation.execute.run_traced_step`), each node weighted by
1/√time; :func:`predict_step_seconds` sums the model
over a step, a formula in ``t``. :data:`DEVICE_PROFILES` gives a roofline for named GPUs from
their vendors' datasheets (dense figures, never the 2:4-sparse ones), to predict before a GPU is
at hand.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sympy
import torch

from ..errors import SymcxError
from ..opsets import ALIAS_OPS
from ..step import Node, Step, traffic

__all__ = [
    "CLASSES",
    "ClassFit",
    "Calibration",
    "DeviceProfile",
    "DEVICE_PROFILES",
    "KEYS",
    "op_class",
    "fit_key",
    "class_of_key",
    "node_features",
    "calibrate",
    "predict_step_seconds",
    "roofline_seconds",
    "profile_named",
    "node_seconds",
]

CLASSES = ("gemm", "conv", "attention", "compute", "movement", "free")
_SPLIT = ("gemm", "conv", "attention")
#: Fitted keys always present: every class, and the backward nodes of the compute-bound ones apart.
KEYS = CLASSES + tuple(f"{c}_backward" for c in _SPLIT)
#: Classes also fitted per op family where the calibration has enough nodes of it.
_BY_OP = ("compute", "movement")
_CONV = frozenset({"aten.convolution", "aten._convolution", "aten.convolution_backward"})
ZERO = sympy.Integer(0)


def op_class(node: Node) -> str:
    """The class of a costed call node (see the module docstring)."""
    if "attention" in node.packet:
        return "attention"
    if node.packet in _CONV:
        return "conv"
    if node.packet in ALIAS_OPS:
        return "free"
    cost = node.cost
    if cost is not None and cost.flops != 0:
        return "gemm"
    if cost is not None and cost.other_flops != 0:
        return "compute"
    return "movement"


def fit_key(node: Node) -> str:
    """The key a node's time is fitted under: ``_backward`` apart for backward GEMM, conv and
    attention; ``compute:<op>`` / ``movement:<op>`` per op family (a max-pool, a random fill and a
    ReLU gradient run at very different rates per byte); a key with too few nodes takes its class's fit."""
    c = op_class(node)
    if c in _SPLIT:
        return f"{c}_backward" if node.phase == "backward" else c
    return f"{c}:{node.packet}" if c in _BY_OP else c


def class_of_key(key: str) -> str:
    """The op class a fitted key belongs to (``conv_backward`` → ``conv``, ``compute:aten.relu`` → ``compute``)."""
    return key.split(":", 1)[0].removesuffix("_backward")


def node_features(node: Node) -> tuple[sympy.Expr, sympy.Expr]:
    """(FLOPs, bytes read and written) of a call node, as sympy expressions; (0, 0) for a view."""
    if node.packet in ALIAS_OPS:
        return ZERO, ZERO
    flops = ZERO if node.cost is None else node.cost.flops + node.cost.other_flops
    return flops, traffic(node)


@dataclasses.dataclass(frozen=True)
class ClassFit:
    """Seconds per node (``launch``), per FLOP and per byte of one op class."""

    launch: float = 0.0
    s_per_flop: float = 0.0
    s_per_byte: float = 0.0

    def seconds(self, flops: Any, nbytes: Any) -> Any:
        """The predicted time of one node (numbers or sympy expressions)."""
        return self.launch + self.s_per_flop * flops + self.s_per_byte * nbytes


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted step-time model for one device: one :class:`ClassFit` per op class."""

    device: str
    classes: Mapping[str, ClassFit]
    r2: float

    def to_json(self) -> str:
        """The calibration as JSON, reusable with :meth:`from_json`."""
        return json.dumps({"schema": "symcx.calibration/1", "device": self.device, "r2": self.r2,
                           "classes": {c: dataclasses.asdict(f) for c, f in self.classes.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        """Read a calibration written by :meth:`to_json`."""
        doc = json.loads(text)
        if doc.get("schema") != "symcx.calibration/1":
            raise SymcxError(f"not a symcx calibration (schema {doc.get('schema')!r})")
        return cls(doc["device"], {c: ClassFit(**f) for c, f in doc["classes"].items()}, doc["r2"])


def _nnls(rows: Sequence[Sequence[float]], times: Sequence[float]) -> list[float]:
    """Least squares with every coefficient ≥ 0: features with a negative fit are dropped and the rest refitted."""
    active = list(range(len(rows[0])))
    A, b = torch.tensor(rows, dtype=torch.float64), torch.tensor(times, dtype=torch.float64).unsqueeze(1)
    while active:
        # scale columns so that seconds-per-FLOP and seconds-per-node are solved alike
        scale = A[:, active].abs().max(dim=0).values.clamp(min=1e-30)
        sol = torch.linalg.lstsq(A[:, active] / scale, b).solution.squeeze(1) / scale
        if (sol >= 0).all():
            out = [0.0] * len(rows[0])
            for k, v in zip(active, sol.tolist()):
                out[k] = v
            return out
        active = [k for k, v in zip(active, sol.tolist()) if v >= 0] if (sol >= 0).any() else []
    return [0.0] * len(rows[0])


#: A class needs this many measured nodes, at this many distinct (FLOPs, bytes) points, for a fit of its own;
#: otherwise it takes the fit pooled over every class (one movement node cannot fix a bandwidth).
MIN_SAMPLES, MIN_DISTINCT = 12, 4


def _enough(rows: Sequence[Sequence[float]]) -> bool:
    return len(rows) >= MIN_SAMPLES and len({tuple(r) for r in rows}) >= MIN_DISTINCT


def _fit(rows: Sequence[Sequence[float]], times: Sequence[float]) -> ClassFit:
    """Launch floor, per-FLOP and per-byte costs by NNLS, each node weighted by 1/√time: between
    absolute least squares (which the largest nodes own, leaving small ones a floor far off) and
    relative least squares (which every tiny node pulls as hard as the slowest)."""
    w = [1.0 / max(x, 1e-12) ** 0.5 for x in times]
    launch, per_flop, per_byte = _nnls([[v * wi for v in r] for r, wi in zip(rows, w)],
                                       [x * wi for x, wi in zip(times, w)])
    return ClassFit(launch, per_flop, per_byte)


def _floor(rows: Sequence[Sequence[float]], times: Sequence[float]) -> ClassFit | None:
    """A launch floor alone (the median time) for a class whose nodes have no FLOPs or bytes (views)."""
    if len(rows) >= MIN_SAMPLES and all(r[1] == r[2] == 0 for r in rows):
        return ClassFit(statistics.median(times))
    return None


def _class_fits(rows: Mapping[str, list[list[float]]], times: Mapping[str, list[float]],
                pooled: ClassFit) -> dict[str, ClassFit]:
    """Each class's fit (all its keys pooled), then each key's own where it has enough nodes."""
    fits: dict[str, ClassFit] = {}
    for c in CLASSES:
        group = [k for k in rows if class_of_key(k) == c]
        both = [r for k in group for r in rows[k]]
        floor = _floor(rows.get(c, []), times.get(c, []))
        fits[c] = floor or (_fit(both, [x for k in group for x in times[k]]) if _enough(both) else pooled)
        fits.update({k: _fit(rows[k], times[k]) for k in group if k != c and _enough(rows[k])})
        if c in _SPLIT:
            fits.setdefault(f"{c}_backward", fits[c])
            if _enough(rows.get(c, [])):
                fits[c] = _fit(rows[c], times[c])
    return fits


def calibrate(samples: Iterable[tuple[Step, Mapping[sympy.Symbol, int], Mapping[str, float]]], device: str) -> Calibration:
    """Fit the model on ``(step, values, node_seconds)`` samples: a step, the symbol values it ran
    at, and each node's measured seconds (``TracedRun.node_seconds``).

    A key with too few measured nodes takes its class's fit (its keys pooled), and a class with
    too few the fit pooled over every node. Op-family keys appear only where they have a fit of their own.
    """
    rows: dict[str, list[list[float]]] = {}
    times: dict[str, list[float]] = {}
    for step, values, seconds in samples:
        for node in step.calls():
            if node.name in seconds:
                flops, nbytes = (float(sympy.sympify(e).xreplace(values)) for e in node_features(node))
                rows.setdefault(fit_key(node), []).append([1.0, flops, nbytes])
                times.setdefault(fit_key(node), []).append(seconds[node.name])
    if not rows:
        raise SymcxError("no measured node to calibrate on")
    measured = [x for k in rows for x in times[k]]
    fits = _class_fits(rows, times, _fit([r for k in rows for r in rows[k]], measured))
    predicted = [fits.get(k, fits[class_of_key(k)]).seconds(r[1], r[2]) for k in rows for r in rows[k]]
    mean = sum(measured) / len(measured)
    ss_res = sum((m - p) ** 2 for m, p in zip(measured, predicted))
    ss_tot = sum((m - mean) ** 2 for m in measured) or 1.0
    return Calibration(device, fits, 1.0 - ss_res / ss_tot)


def _fit_of(model: "Calibration", node: Node) -> ClassFit:
    """The node's fit: its key's, else its class's (a calibration saved before keys were split)."""
    return model.classes.get(fit_key(node)) or model.classes.get(op_class(node), ClassFit())


def node_seconds(node: Node, model: "Calibration | DeviceProfile", *, dtype: str = "fp32",
                 launch: float = 5e-6) -> sympy.Expr:
    """Predicted seconds of one call node: the calibration's fit of its class, or, for a
    :class:`DeviceProfile`, the roofline (``dtype``'s dense peak, the bandwidth, ``launch`` per costed node)."""
    flops, nbytes = node_features(node)
    if isinstance(model, DeviceProfile):
        if op_class(node) == "free":
            return ZERO
        return sympy.Max(flops / sympy.Float(model.flops[dtype]), nbytes / sympy.Float(model.bandwidth)) \
            + sympy.Float(launch)
    fit = _fit_of(model, node)
    return sympy.Float(fit.launch) + sympy.Float(fit.s_per_flop) * flops + sympy.Float(fit.s_per_byte) * nbytes


def predict_step_seconds(step: Step, calibration: Calibration) -> sympy.Expr:
    """Predicted seconds of one traced step: the calibrated model summed over its nodes, in ``t``."""
    count: dict[str, int] = {}
    flops: dict[str, list[sympy.Expr]] = {}
    nbytes: dict[str, list[sympy.Expr]] = {}
    for node in step.calls():
        c = fit_key(node)
        f, b = node_features(node)
        count[c] = count.get(c, 0) + 1
        flops.setdefault(c, []).append(f)
        nbytes.setdefault(c, []).append(b)
    total = []
    for c, k in count.items():
        fit = calibration.classes.get(c) or calibration.classes.get(class_of_key(c), ClassFit())
        total.append(sympy.Float(fit.launch) * k + sympy.Float(fit.s_per_flop) * sympy.Add(*flops[c])
                     + sympy.Float(fit.s_per_byte) * sympy.Add(*nbytes[c]))
    return sympy.Add(*total)


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Dense peaks (FLOP/s by dtype) and memory bandwidth (bytes/s) of a named accelerator."""

    name: str
    flops: Mapping[str, float]
    bandwidth: float
    source: str


#: Vendors' datasheet figures, dense (no 2:4 sparsity): NVIDIA A100 (40/80 GB SXM), H100 SXM5 and
#: PCIe, H200 SXM and L4 datasheets. ``tf32`` is what fp32 matmuls get with TF32 allowed.
DEVICE_PROFILES: dict[str, DeviceProfile] = {
    p.name: p for p in (
        DeviceProfile("a100-40gb", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}, 1555e9,
                      "NVIDIA A100 Tensor Core GPU datasheet (SXM, 40 GB HBM2)"),
        DeviceProfile("a100-80gb", {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12}, 2039e9,
                      "NVIDIA A100 Tensor Core GPU datasheet (SXM, 80 GB HBM2e)"),
        DeviceProfile("h100-sxm", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}, 3.35e12,
                      "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"),
        DeviceProfile("h100-pcie", {"fp32": 51e12, "tf32": 378e12, "bf16": 756e12, "fp16": 756e12}, 2.0e12,
                      "NVIDIA H100 Tensor Core GPU datasheet (PCIe)"),
        DeviceProfile("h200", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12}, 4.8e12,
                      "NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
        DeviceProfile("l4", {"fp32": 30.3e12, "tf32": 60e12, "bf16": 121e12, "fp16": 121e12}, 300e9,
                      "NVIDIA L4 Tensor Core GPU datasheet"),
    )
}


def roofline_seconds(step: Step, profile: str | DeviceProfile, *, dtype: str = "bf16",
                     launch: float = 5e-6) -> sympy.Expr:
    """A lower bound on the step time on a named device: per node, the larger of its FLOPs at the
    dtype's dense peak and its bytes at the memory bandwidth, plus ``launch`` seconds per costed node.

    Raises
    ------
    SymcxError
        For an unknown profile or dtype.
    """
    found = profile_named(profile, dtype)
    return sympy.Add(*(node_seconds(node, found, dtype=dtype, launch=launch) for node in step.calls()))


def profile_named(profile: str | DeviceProfile, dtype: str) -> DeviceProfile:
    """The profile ``profile`` names (or is), checked to have a ``dtype`` peak.

    Raises
    ------
    SymcxError
        For an unknown profile or dtype.
    """
    if isinstance(profile, str):
        if profile not in DEVICE_PROFILES:
            raise SymcxError(f"unknown device profile {profile!r}; known: {', '.join(DEVICE_PROFILES)}")
        profile = DEVICE_PROFILES[profile]
    if dtype not in profile.flops:
        raise SymcxError(f"{profile.name} has no {dtype!r} peak; known: {', '.join(profile.flops)}")
    return profile
