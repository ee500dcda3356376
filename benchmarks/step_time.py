"""Calibrate symcx's step-time model on one model and predict the others' step times.

Each model's training step is traced once with a symbolic batch; the traced graph itself is then
executed on the CPU at each batch size (``symcx.validation.execute.run_traced_step``; the sum
over nodes of each one's fastest time in ``--repeats`` runs after a warm-up, as ``symcx validate
--run graph`` measures). The calibration model is timed at ``--calibration-sizes`` with
``symcx.validation.calibrate_device`` (the code behind ``symcx calibrate``); its fit predicts
every *other* model's step (``symcx.validation.predict_time``) at ``--batches``. ``--rounds``
repeats the whole measurement, to see how much a shared machine moves it.

    python benchmarks/step_time.py                                 # calibrate on the calibration net
    python benchmarks/step_time.py --calibrate-on all --rounds 3 --json out.json
    python benchmarks/step_time.py --in-sample     # also: the best the model's form can do on these models

Exits 1 when, for the calibration named by ``--floor-on`` (default: the calibration net), the
median |error| over the seed net, ResNet-18 and the GPT exceeds 10% or the worst 25% in any round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from symcx import t
from symcx.capture import trace_training_step
from symcx.rules import annotate_costs
from symcx.step import build_step
from symcx.validation import calibrate_device, predict_time
from symcx.validation.timing import calibrate
from symcx.validation.execute import run_traced_step
from symcx.validation.workload import CalibrationNet
from symcx.zoo import MLP, MnistCNN
from symcx.zoo.models import GPT, ResNet18

MODELS = {
    "calibration-net": (CalibrationNet, lambda b: (torch.randn(b, 3, 24, 24), torch.randint(0, 300, (b, 12)))),
    "mlp": (MLP, lambda b: torch.randn(b, 784)),
    "seed": (MnistCNN, lambda b: torch.randn(b, 1, 28, 28)),
    "resnet18": (ResNet18, lambda b: torch.randn(b, 3, 32, 32)),
    "gpt": (GPT, lambda b: torch.randint(0, 64, (b, 16))),
}
TARGETS = ("seed", "resnet18", "gpt")


def _graph_seconds(trace, model, x, batch, repeats):
    """The traced graph's step time at ``batch`` as validate measures it: the sum over nodes of each
    one's fastest time in ``repeats`` runs after one warm-up."""
    run_traced_step(trace, model, x, {"t": batch})
    runs = [run_traced_step(trace, model, x, {"t": batch}).node_seconds for _ in range(repeats)]
    return sum(min(r[name] for r in runs) for name in runs[0])


def _node_seconds(trace, model, x, batch, repeats):
    """Each node's fastest time in ``repeats`` runs of the traced graph at ``batch``, after one warm-up."""
    run_traced_step(trace, model, x, {"t": batch})
    runs = [run_traced_step(trace, model, x, {"t": batch}).node_seconds for _ in range(repeats)]
    return {name: min(r[name] for r in runs) for name in runs[0]}


def _in_sample(built, args):
    """The model form's ceiling: one fit on the three models' own node times at --batches (pooled),
    predicting each of them back. No calibration on another model can beat this."""
    batches = [int(b) for b in args.batches.split(",")]
    samples, measured = [], {}
    for name in TARGETS:
        model, trace, step = built[name]
        for b in batches:
            seconds = _node_seconds(trace, model, MODELS[name][1](b), b, args.repeats)
            samples.append((step, {step.user_symbols["t"]: b}, seconds))
            measured[name, b] = sum(seconds.values())
    cal = calibrate(samples, "in-sample")
    rows = []
    for name in TARGETS:
        formula = predict_time(built[name][2], cal)
        for b in batches:
            pred = float(formula.subs(t, b))
            rows.append({"model": name, "t": b, "predicted_s": pred, "graph_s": measured[name, b],
                         "error": (pred - measured[name, b]) / measured[name, b]})
    errors = [abs(r["error"]) for r in rows]
    return {"in-sample (seed + resnet18 + gpt)": {
        "r2": cal.r2, "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors), "rows": rows,
        "calibration": json.loads(cal.to_json())}}


def _round(built, names, args):
    """One measurement: every model's graph time at --batches, every calibration, every prediction."""
    batches = [int(b) for b in args.batches.split(",")]
    sizes = [int(b) for b in args.calibration_sizes.split(",")]
    measured = {name: {b: _graph_seconds(built[name][1], built[name][0], MODELS[name][1](b), b, args.repeats)
                       for b in batches} for name in TARGETS}
    out = {}
    for cal_on in names:
        model = built[cal_on][0]
        cal = calibrate_device(model, MODELS[cal_on][1](2), batch_sizes=sizes, repeats=args.repeats)
        rows = []
        for name in TARGETS:
            if name == cal_on:
                continue
            formula = predict_time(built[name][2], cal)
            for b in batches:
                pred, meas = float(formula.subs(t, b)), measured[name][b]
                rows.append({"model": name, "t": b, "predicted_s": pred, "graph_s": meas,
                             "error": (pred - meas) / meas})
        errors = [abs(r["error"]) for r in rows]
        out[cal_on] = {"r2": cal.r2, "median_abs_error": statistics.median(errors), "worst_abs_error": max(errors),
                       "rows": rows, "calibration": json.loads(cal.to_json())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--calibration-sizes", default="1,2,4,8,16,32,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibrate-on", default="calibration-net", help="a model name, or 'all' (each in turn)")
    p.add_argument("--floor-on", default="calibration-net")
    p.add_argument("--in-sample", action="store_true",
                   help="also fit on the three predicted models' own node times and predict them back (the ceiling)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = list(MODELS) if args.calibrate_on == "all" else [args.calibrate_on]
    built = {}
    for name in set(names) | set(TARGETS):
        model = MODELS[name][0]()
        trace = trace_training_step(model, MODELS[name][1](2))
        step = build_step(trace)
        annotate_costs(step.nodes)
        built[name] = (model, trace, step)
    rounds, status = [], 0
    for k in range(args.rounds):
        result = _round(built, names, args)
        if args.in_sample:
            result.update(_in_sample(built, args))
        rounds.append(result)
        for cal_on, r in result.items():
            print(f"round {k + 1}: calibrated on {cal_on} (R² {r['r2']:.3f}): median |error| "
                  f"{100 * r['median_abs_error']:.1f}%, worst {100 * r['worst_abs_error']:.1f}%")
            for row in r["rows"]:
                print(f"  {row['model']:9} t={row['t']:<3} predicted {1e3 * row['predicted_s']:8.2f} ms  graph "
                      f"{1e3 * row['graph_s']:8.2f} ms  {100 * row['error']:+6.1f}%")
            if cal_on == args.floor_on and (r["median_abs_error"] > 0.10 or r["worst_abs_error"] > 0.25):
                status = 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "rounds": rounds}, f, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
