"""The result of a validation sweep: per-batch-size rows, fits, JSON and a rich table.

JSON schema ``symcx.validation/1`` (every key always present; ``null`` where not measured)::

    {"schema": "symcx.validation/1", "model", "device", "device_name", "torch", "symcx",
     "backward", "repeats", "warmup", "batch_dim", "input_shapes", "run",
     "formulas": {"forward_flops", "backward_flops", "fcm_forward_flops",
                  "fcm_backward_flops", "predicted_bytes", "baseline_bytes"},
     "memory_model", "memory_tracker", "deviations": [str],
     "partial": bool,
     "sizes": [{"batch_size", "status": "ok"|"oom"|"error"|"skipped"|"excluded", "error",
                "flops": [{"phase", "symcx", "expected", "measured", "ok"}],
                "predicted_flops", "times_s": [float], "time": {"median_s", "q1_s", "q3_s",
                "min_s", "max_s", "stdev_s"}, "flops_per_s",
                "predicted_bytes", "peak_bytes", "baseline_bytes",
                "predicted_baseline_bytes", "memory_rel_error",
                "graph_matches_eager": bool|null, "graph_mismatch", "graph_error",
                "predicted_time_s", "measured_time_s", "time_rel_error",
                "layers": [{"layer", "measured_s", "predicted_s"}]}],
     "fits": {"time": {"slope", "intercept", "r2", "n"}, "memory": {...}},
     "run_mode": "graph"|"model",
     "time_model": {"source": "calibration"|"device-profile"|"fitted", "detail", "r2", "formula",
                    "median_abs_error", "worst_abs_error"} | null,
     "failures": [str], "ok": bool}

Times in seconds, memory in bytes (above the baseline: parameters, buffers, input batch),
FLOPs as integers, formulas as sympy strings in ``t``; ``memory_rel_error`` is
``(peak_bytes - predicted_bytes) / predicted_bytes``. ``partial`` is true when the sweep was
interrupted (Ctrl-C): ``sizes`` then holds the sizes that finished, and no others.

With ``run_mode`` ``"graph"`` each size also ran the traced joint graph itself:
``graph_matches_eager`` (loss and every gradient equal eager's; ``graph_mismatch`` says what
differs and the first differing module and node; a mismatch is a failure), ``graph_error``
(why the graph did not run at that size), ``measured_time_s`` (the graph's step time: the sum over
its nodes of each one's fastest time in the timed runs, the time other processes disturbed
least), ``predicted_time_s`` (from ``time_model``), ``time_rel_error``
(``(predicted - measured) / measured``) and ``layers``, per layer row of the analysis, the
graph's measured seconds and the predicted ones. In ``"model"`` mode these are ``null`` / ``[]``
and ``time_model`` is ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from .fit import Fit
from .step_time import LayerTime, TimeModel
from .plot import plot_validation  # matplotlib itself is imported only when plotting

__all__ = ["SCHEMA", "FlopCheck", "SizeResult", "Validation", "format_bytes", "format_flops", "shapes_with_t"]

SCHEMA = "symcx.validation/1"


def format_bytes(n: float | None) -> str:
    """``1536 -> '1.50 KiB'``; binary units, as allocators count.

    >>> format_bytes(1536), format_bytes(3 * 2**20), format_bytes(12)
    ('1.50 KiB', '3.00 MiB', '12 B')
    """
    if n is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while abs(n) >= 1024 and k < len(units) - 1:
        n /= 1024
        k += 1
    return f"{n:.0f} B" if k == 0 else f"{n:.2f} {units[k]}"


def format_flops(n: float | None, unit: str = "FLOP") -> str:
    """``23984896 -> '23.98 MFLOP'``; decimal prefixes.

    >>> format_flops(23984896), format_flops(5.2e12, "FLOP/s")
    ('23.98 MFLOP', '5.20 TFLOP/s')
    """
    if n is None:
        return "-"
    prefixes = ("", "k", "M", "G", "T", "P")
    k = 0
    while abs(n) >= 1000 and k < len(prefixes) - 1:
        n /= 1000
        k += 1
    return f"{n:.0f} {unit}" if k == 0 else f"{n:.2f} {prefixes[k]}{unit}"


@dataclasses.dataclass(frozen=True)
class FlopCheck:
    """One phase's FLOPs at one batch size.

    ``symcx`` is symcx's own count; ``expected`` what FlopCounterMode should report (equal
    to ``symcx`` except where FlopCounterMode is known to be wrong); ``measured`` what it did
    report on the real run. The check passes when ``measured == expected``.
    """

    phase: str
    symcx: int
    expected: int
    measured: int | None

    @property
    def ok(self) -> bool | None:
        """``measured == expected``, or None when nothing was measured."""
        return None if self.measured is None else self.measured == self.expected


@dataclasses.dataclass(frozen=True)
class SizeResult:
    """Predicted and measured figures at one batch size.

    ``status`` is ``"ok"``, ``"oom"`` (out of memory, on CUDA or CPU; memory was freed and
    the sweep went on), ``"error"`` (the model raised; ``error`` holds the message),
    ``"skipped"`` (the predicted peak exceeds the device's free memory; ``error`` says by
    how much) or ``"excluded"`` (the analysis' assumptions, e.g. ``t <= 15``, exclude this size). Memory figures are
    bytes *above the baseline* (parameters, buffers and the input batch, live before the
    run): ``predicted_bytes`` from symcx's memory model, ``peak_bytes`` measured.
    """

    batch_size: int
    status: str
    error: str | None
    flops: tuple[FlopCheck, ...]
    predicted_flops: int
    predicted_bytes: int
    predicted_baseline_bytes: int
    times_s: tuple[float, ...] = ()
    time: Mapping[str, float] | None = None
    peak_bytes: int | None = None
    baseline_bytes: int | None = None
    graph_matches_eager: bool | None = None
    graph_mismatch: str | None = None
    graph_error: str | None = None
    measured_time_s: float | None = None
    predicted_time_s: float | None = None
    layers: tuple[LayerTime, ...] = ()

    @property
    def time_rel_error(self) -> float | None:
        """``(predicted - measured) / measured`` step time of the traced graph; None if either is missing."""
        if self.predicted_time_s is None or not self.measured_time_s:
            return None
        return (self.predicted_time_s - self.measured_time_s) / self.measured_time_s

    def worst_layers(self, k: int = 3) -> list[LayerTime]:
        """The ``k`` layers whose predicted time is furthest (in seconds) from the measured one."""
        known = [r for r in self.layers if r.predicted_s is not None]
        return sorted(known, key=lambda r: -abs(r.predicted_s - r.measured_s))[:k]

    @property
    def median_s(self) -> float | None:
        """Median wall time of one run, seconds."""
        return None if self.time is None else self.time["median_s"]

    @property
    def flops_per_s(self) -> float | None:
        """Achieved FLOP/s: symcx's predicted FLOPs over the median time."""
        m = self.median_s
        return None if not m else self.predicted_flops / m

    @property
    def memory_rel_error(self) -> float | None:
        """``(measured - predicted) / predicted`` peak bytes; positive = more than predicted."""
        if self.peak_bytes is None or not self.predicted_bytes:
            return None
        return (self.peak_bytes - self.predicted_bytes) / self.predicted_bytes

    @property
    def flops_ok(self) -> bool | None:
        """Every measured phase equals its FlopCounterMode-convention formula (None: unmeasured)."""
        checks = [c.ok for c in self.flops if c.ok is not None]
        return None if not checks else all(checks)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (schema ``symcx.validation/1``, one entry of ``sizes``)."""
        return {
            "batch_size": self.batch_size,
            "status": self.status,
            "error": self.error,
            "flops": [{**dataclasses.asdict(c), "ok": c.ok} for c in self.flops],
            "predicted_flops": self.predicted_flops,
            "times_s": list(self.times_s),
            "time": dict(self.time) if self.time is not None else None,
            "flops_per_s": self.flops_per_s,
            "predicted_bytes": self.predicted_bytes,
            "peak_bytes": self.peak_bytes,
            "baseline_bytes": self.baseline_bytes,
            "predicted_baseline_bytes": self.predicted_baseline_bytes,
            "memory_rel_error": self.memory_rel_error,
            "graph_matches_eager": self.graph_matches_eager,
            "graph_mismatch": self.graph_mismatch,
            "graph_error": self.graph_error,
            "predicted_time_s": self.predicted_time_s,
            "measured_time_s": self.measured_time_s,
            "time_rel_error": self.time_rel_error,
            "layers": [{"layer": r.layer, "measured_s": r.measured_s, "predicted_s": r.predicted_s}
                       for r in self.layers],
        }


@dataclasses.dataclass(frozen=True)
class Validation:
    """A sweep over batch sizes: what symcx predicted and what the device measured.

    ``sizes`` holds one :class:`SizeResult` per batch size (``result(t)`` finds one);
    ``time_fit`` is the least-squares line of median time against predicted FLOPs and
    ``memory_fit`` of measured against predicted peak bytes, over the sizes that ran.
    """

    model: str
    device: str
    device_name: str
    backward: bool
    repeats: int
    warmup: int
    batch_dim: int
    input_shapes: tuple[tuple[Any, ...], ...]
    run: str
    formulas: Mapping[str, str]
    memory_model: str
    memory_tracker: str
    deviations: tuple[str, ...]
    sizes: tuple[SizeResult, ...]
    time_fit: Fit | None
    memory_fit: Fit | None
    torch_version: str
    symcx_version: str
    partial: bool = False
    run_mode: str = "model"
    time_model: TimeModel | None = None

    def result(self, batch_size: int) -> SizeResult:
        """The row for ``batch_size``."""
        for row in self.sizes:
            if row.batch_size == batch_size:
                return row
        raise KeyError(f"batch size {batch_size} was not in the sweep {[r.batch_size for r in self.sizes]}")

    @property
    def failures(self) -> list[str]:
        """One line per FLOP count that differs from its FlopCounterMode-convention formula."""
        out = []
        for row in self.sizes:
            for c in row.flops:
                if c.ok is False:
                    out.append(
                        f"t={row.batch_size} {c.phase}: FlopCounterMode measured {c.measured:,} FLOPs, "
                        f"symcx's formula for it gives {c.expected:,} (difference {c.measured - c.expected:+,})"
                    )
            if row.graph_matches_eager is False:
                out.append(f"t={row.batch_size}: the traced graph differs from eager: {row.graph_mismatch}")
        return out

    def time_errors(self) -> list[float]:
        """``|predicted - measured| / measured`` step time, over the sizes where the graph ran and was predicted."""
        return [abs(e) for e in (r.time_rel_error for r in self.sizes) if e is not None]

    @property
    def ok(self) -> bool:
        """No FLOP count differs from its formula (OOM and errors are reported, not failures)."""
        return not self.failures

    @property
    def any_ok(self) -> bool:
        """At least one batch size ran (status ``"ok"``); False when every size failed or ran out of memory."""
        return any(row.status == "ok" for row in self.sizes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, schema ``symcx.validation/1``."""
        return {
            "schema": SCHEMA,
            "model": self.model,
            "device": self.device,
            "device_name": self.device_name,
            "torch": self.torch_version,
            "symcx": self.symcx_version,
            "backward": self.backward,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "batch_dim": self.batch_dim,
            "input_shapes": [list(s) for s in self.input_shapes],
            "run": self.run,
            "formulas": dict(self.formulas),
            "memory_model": self.memory_model,
            "memory_tracker": self.memory_tracker,
            "deviations": list(self.deviations),
            "partial": self.partial,
            "sizes": [row.to_dict() for row in self.sizes],
            "fits": {
                "time": self.time_fit.to_dict() if self.time_fit else None,
                "memory": self.memory_fit.to_dict() if self.memory_fit else None,
            },
            "run_mode": self.run_mode,
            "time_model": self._time_model_dict(),
            "failures": self.failures,
            "ok": self.ok,
        }

    def _time_model_dict(self) -> dict[str, Any] | None:
        if self.time_model is None:
            return None
        errors = self.time_errors()
        return {**self.time_model.to_dict(), "median_abs_error": statistics.median(errors) if errors else None,
                "worst_abs_error": max(errors) if errors else None}

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (schema ``symcx.validation/1``)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Validation":
        """Read a report written by :meth:`to_json` (e.g. to plot or tabulate it again).

        Raises
        ------
        ValueError
            The text is not a ``symcx.validation/1`` report.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"not a {SCHEMA} report (schema: {found!r})")
        fits = {k: Fit(**f) if f is not None else None for k, f in doc["fits"].items()}
        sizes = tuple(
            SizeResult(
                batch_size=e["batch_size"], status=e["status"], error=e["error"],
                flops=tuple(FlopCheck(c["phase"], c["symcx"], c["expected"], c["measured"]) for c in e["flops"]),
                predicted_flops=e["predicted_flops"], predicted_bytes=e["predicted_bytes"],
                predicted_baseline_bytes=e["predicted_baseline_bytes"], times_s=tuple(e["times_s"]),
                time=e["time"], peak_bytes=e["peak_bytes"], baseline_bytes=e["baseline_bytes"],
                graph_matches_eager=e.get("graph_matches_eager"), graph_mismatch=e.get("graph_mismatch"),
                graph_error=e.get("graph_error"), measured_time_s=e.get("measured_time_s"),
                predicted_time_s=e.get("predicted_time_s"),
                layers=tuple(LayerTime(r["layer"], r["measured_s"], r["predicted_s"]) for r in e.get("layers", ())),
            )
            for e in doc["sizes"]
        )
        return cls(
            model=doc["model"], device=doc["device"], device_name=doc["device_name"], backward=doc["backward"],
            repeats=doc["repeats"], warmup=doc["warmup"], batch_dim=doc["batch_dim"],
            input_shapes=tuple(tuple(s) for s in doc["input_shapes"]), run=doc["run"], formulas=doc["formulas"],
            memory_model=doc["memory_model"], memory_tracker=doc["memory_tracker"],
            deviations=tuple(doc["deviations"]), sizes=sizes, time_fit=fits["time"], memory_fit=fits["memory"],
            torch_version=doc["torch"], symcx_version=doc["symcx"], partial=doc.get("partial", False),
            run_mode=doc.get("run_mode", "model"), time_model=_time_model(doc.get("time_model")),
        )

    def rich_table(self) -> Table:
        """The report as a ``rich`` table, fits and failures in its caption."""
        phase = "forward+backward" if self.backward else "forward"
        partial = " (interrupted: the sizes that finished)" if self.partial else ""
        table = Table(
            title=f"symcx validate: {self.model} on {self.device_name}, {phase}{partial}",
            caption=self._caption(),
            caption_justify="left",
        )
        for name, justify in [
            ("t", "right"), ("status", "left"), ("FLOPs (symcx)", "right"),
            ("FlopCounterMode", "right"), ("time median [q1, q3]", "right"), ("FLOP/s", "right"),
            ("mem predicted", "right"), ("mem measured", "right"), ("mem error", "right"),
        ]:
            table.add_column(name, justify=justify)
        if self.run_mode == "graph":
            table.add_column("graph = eager", justify="left")
            table.add_column("step time predicted / graph measured", justify="right")
        for row in self.sizes:
            table.add_row(*self._cells(row), *(self._graph_cells(row) if self.run_mode == "graph" else ()))
        return table

    @staticmethod
    def _graph_cells(row: SizeResult) -> list[Any]:
        if row.graph_matches_eager is None:
            same = Text("-" if row.graph_error is None else "not run", "yellow" if row.graph_error else "")
        else:
            same = Text("yes", "green") if row.graph_matches_eager else Text("NO", "bold red")
        if row.measured_time_s is None:
            return [same, "-"]
        err = row.time_rel_error
        predicted = "-" if row.predicted_time_s is None else f"{row.predicted_time_s * 1e3:.2f} ms"
        return [same, f"{predicted} / {row.measured_time_s * 1e3:.2f} ms" + ("" if err is None else f" ({err:+.1%})")]

    def _cells(self, row: SizeResult) -> list[Any]:
        status = {"ok": Text("ok", "green"), "oom": Text("OOM", "yellow"), "skipped": Text("skipped", "yellow"),
                  "excluded": Text("excluded", "yellow")}.get(row.status, Text("error", "red"))
        if row.flops_ok is None:
            fcm = Text("-")
        elif row.flops_ok and any(c.symcx != c.expected for c in row.flops):
            fcm = Text("= formula (FCM known error, below)", "green")
        elif row.flops_ok:
            fcm = Text("= formula", "green")
        else:
            wrong = ", ".join(f"{c.measured:,}≠{c.expected:,}" for c in row.flops if c.ok is False)
            fcm = Text(f"FAIL {wrong}", "bold red")
        if row.time is None:
            time_cell = "-"
        else:
            ms = {k: v * 1e3 for k, v in row.time.items()}
            time_cell = f"{ms['median_s']:.2f} ms [{ms['q1_s']:.2f}, {ms['q3_s']:.2f}]"
        err = row.memory_rel_error
        return [
            str(row.batch_size), status, format_flops(row.predicted_flops), fcm, time_cell,
            format_flops(row.flops_per_s, "FLOP/s"), format_bytes(row.predicted_bytes),
            format_bytes(row.peak_bytes), "-" if err is None else f"{err:+.1%}",
        ]

    def _caption(self) -> str:
        def r2(f: Fit) -> str:
            return f"R² {'-' if f.r2 is None else f'{f.r2:.4f}'}, {f.n} sizes"

        def sign(x: float) -> str:
            return "+" if x >= 0 else "-"

        lines = []
        if self.time_fit is not None:
            f = self.time_fit
            marginal = format_flops(1 / f.slope, "FLOP/s") if f.slope > 0 else "-"
            lines.append(
                f"time ≈ {f.slope:.3e} s/FLOP · FLOPs {sign(f.intercept)} {abs(f.intercept) * 1e3:.3f} ms"
                f"  ({r2(f)}; {marginal} marginal)"
            )
        if self.memory_fit is not None:
            f = self.memory_fit
            lines.append(
                f"memory ≈ {f.slope:.4f} · predicted {sign(f.intercept)} {format_bytes(abs(f.intercept))}  ({r2(f)})"
            )
        lines.append(f"memory above baseline (params, buffers, input); predicted by {self.memory_model};"
                     f" measured by {self.memory_tracker}")
        for row in self.sizes:
            if row.status != "ok":
                lines.append(f"t={row.batch_size}: {row.status}: {row.error}")
            if row.graph_error is not None and row.graph_error != row.error:
                lines.append(f"t={row.batch_size}: traced graph not run: {row.graph_error}")
        lines.extend(self._time_lines())
        lines.extend(f"FlopCounterMode differs from symcx (expected): {d}" for d in self.deviations)
        lines.extend(f"FAILURE: {f}" for f in self.failures)
        return "\n".join(lines)

    def _time_lines(self) -> list[str]:
        """The step-time model, its errors, and the layers where prediction and measurement differ most."""
        if self.time_model is None:
            return []
        m = self._time_model_dict()
        r2 = "-" if m["r2"] is None else f"{m['r2']:.3f}"
        by = {"fitted": "a fit on this sweep", "calibration": "a calibration", "device-profile": "a device profile"}
        lines = [f"step time predicted by {by.get(m['source'], m['source'])} ({m['detail']}; per-node fit R² {r2})"]
        if m["median_abs_error"] is not None:
            lines.append(f"step time |error| median {m['median_abs_error']:.1%}, worst {m['worst_abs_error']:.1%} "
                         f"over {len(self.time_errors())} sizes")
        timed = [r for r in self.sizes if r.layers and r.predicted_time_s is not None]
        if timed:
            row = timed[-1]
            worst = ", ".join(f"{w.layer or '<model>'} {w.measured_s * 1e3:.2f} ms measured vs "
                              f"{w.predicted_s * 1e3:.2f} predicted" for w in row.worst_layers())
            lines.append(f"t={row.batch_size}: layers furthest from prediction: {worst}")
        return lines

    def plot(self, path: str) -> None:
        """Plot predicted vs measured time and memory against batch size, with fits, to ``path``.

        PNG by default; ``.pdf`` and ``.svg`` by extension (matplotlib, Agg canvas); see
        :func:`symcx.validation.plot.plot_validation`.
        """
        plot_validation(self, path)


def _time_model(doc: Mapping[str, Any] | None) -> TimeModel | None:
    if doc is None:
        return None
    return TimeModel(doc["source"], doc["detail"], doc["r2"], doc["formula"])


def shapes_with_t(shapes: Sequence[Sequence[int]], batch_dim: int) -> tuple[tuple[Any, ...], ...]:
    """Example shapes with the batch dimension written as ``"t"`` (for the report)."""
    out = []
    for shape in shapes:
        s: list[Any] = list(shape)
        if s:
            s[batch_dim % len(s)] = "t"
        out.append(tuple(s))
    return tuple(out)
