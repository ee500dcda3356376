"""Calibrate symcx's step-time model on one model and predict the others' step times.

Each model's training step is traced once with a symbolic batch, then the traced graph itself is
executed on the CPU at several batch sizes (``symcx.validation.execute.run_traced_step``, best of
``--repeats`` runs, after a warm-up); the per-node times of the calibration model fit the model
(``symcx.validation.timing.calibrate``), and its formula in t predicts every other model's step.
Also times the eager training step (forward + backward) beside the traced graph.

    python benchmarks/step_time.py                      # calibrate on each model in turn
    python benchmarks/step_time.py --calibrate-on seed --threads 1 --json out.json

Exits 1 when the median |error| over the predicted models exceeds 10% or the worst 25% for
the calibration named by ``--floor-on`` (default: seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from symcx import t
from symcx.capture import default_loss, trace_training_step
from symcx.rules import annotate_costs
from symcx.step import build_step
from symcx.validation.execute import run_traced_step
from symcx.validation.timing import calibrate, predict_step_seconds
from symcx.zoo import MLP, MnistCNN
from symcx.zoo.models import GPT, ResNet18

MODELS = {
    "mlp": (MLP, lambda b: torch.randn(b, 784)),
    "seed": (MnistCNN, lambda b: torch.randn(b, 1, 28, 28)),
    "resnet18": (ResNet18, lambda b: torch.randn(b, 3, 32, 32)),
    "gpt": (GPT, lambda b: torch.randint(0, 64, (b, 16))),
}


def _best_run(trace, model, x, batch, repeats):
    run_traced_step(trace, model, x, {"t": batch})  # warm-up
    runs = [run_traced_step(trace, model, x, {"t": batch}).node_seconds for _ in range(repeats)]
    return min(runs, key=lambda r: sum(r.values()))


def _eager_seconds(model, x, repeats):
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        default_loss(model(x)).backward()
        best = min(best, time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="2,8,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibrate-on", default=None, help="one model name (default: each in turn)")
    p.add_argument("--floor-on", default="seed")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    measured = {}
    for name, (build, make) in MODELS.items():
        model = build()
        trace = trace_training_step(model, make(2))
        step = build_step(trace)
        annotate_costs(step.nodes)
        runs = {b: _best_run(trace, model, make(b), b, args.repeats) for b in batches}
        eager = {b: _eager_seconds(model, make(b), args.repeats) for b in batches}
        measured[name] = (step, runs, eager)
    report, status = {}, 0
    for cal_on in [args.calibrate_on] if args.calibrate_on else list(MODELS):
        step, runs, _ = measured[cal_on]
        cal = calibrate([(step, {t: b}, runs[b]) for b in batches], f"cpu, {args.threads} thread(s)")
        rows, errors = [], []
        for name, (other, oruns, eager) in measured.items():
            if name == cal_on:
                continue
            formula = predict_step_seconds(other, cal)
            for b in batches:
                pred, meas = float(formula.subs(t, b)), sum(oruns[b].values())
                errors.append(abs(pred - meas) / meas)
                rows.append({"model": name, "t": b, "predicted_s": pred, "graph_s": meas, "eager_s": eager[b],
                             "error": (pred - meas) / meas})
        med, worst = statistics.median(errors), max(errors)
        print(f"calibrated on {cal_on} (R² {cal.r2:.3f}): median |error| {100 * med:.1f}%, worst {100 * worst:.1f}%")
        for r in rows:
            print(f"  {r['model']:9} t={r['t']:<3} predicted {1e3 * r['predicted_s']:8.2f} ms  graph "
                  f"{1e3 * r['graph_s']:8.2f} ms  eager {1e3 * r['eager_s']:8.2f} ms  {100 * r['error']:+6.1f}%")
        report[cal_on] = {"r2": cal.r2, "median_abs_error": med, "worst_abs_error": worst, "rows": rows,
                          "calibration": json.loads(cal.to_json())}
        if cal_on == args.floor_on and (med > 0.10 or worst > 0.25):
            status = 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
