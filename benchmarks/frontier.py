#!/usr/bin/env python3
"""The accuracy-traffic frontier: plans x models x splits x seeds, whole trainings.

Every run is one ``fedpress simulate`` with the same data, clients, rounds, local
steps and learning rate; only the plan (and the run settings it needs) changes.
Traffic is counted whole: every round both ways, warm-ups included, and each
client's first download of the initial model (``first_download="sent"``, or
``"coded"`` through the downlink plan where it sends updates error-bounded). Links are
``--mbps`` both ways without latency, so that :mod:`fedpress.sim.frontier` can
rescale the transfer time to 10 and 100 Mbps exactly.

Resumable: each run writes ``<out>/<model>/<split>/<plan>/seed<k>/`` and is skipped
when its ``summary.json`` exists; runs go to ``--workers`` processes (one thread
each). The report (``frontier.csv``: one row per run; ``frontier_plans.csv`` and
``frontier.md``: mean and spread per plan; ``frontier_<model>_<split>.png``:
accuracy against total MB with the spread as error bars) is rebuilt from what is
there, also with ``--report-only``.

Usage (from the project root)::

    python benchmarks/frontier.py --models cnn --splits iid,dirichlet-0.3 \\
        --seeds 0,1,2 --out .bench/frontier
    python benchmarks/frontier.py --list          # the plans and their flags
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _env import machine  # benchmarks/ is on the path when run as a script
from _table import markdown_table

#: settings every run shares (per model: rounds, local steps, learning rate below)
BASE = {"dataset": "fashion-mnist", "clients": 4, "batch_size": 64, "momentum": 0.9,
        "uplink_mbps": 10.0, "downlink_mbps": 10.0, "latency_ms": 0.0,
        "first_download": "sent", "threads": 1, "workers": 1}
MODELS = {"cnn": {"rounds": 50, "local_steps": 20, "lr": 0.05},
          "mlp": {"rounds": 50, "local_steps": 20, "lr": 0.05},
          # the subset 2 cores allow: 15 rounds, accuracy on the first 5,000 test images
          "resnet18": {"rounds": 15, "local_steps": 10, "lr": 0.05, "test_limit": 5000}}
SPLITS = {"iid": {"partition": "iid"},
          "dirichlet-0.3": {"partition": "dirichlet", "alpha": 0.3}}


def _ref(codec: str, eb: float) -> dict[str, Any]:
    """Reference coding with residual feedback, both ways: the weights uplink coded
    against the model the client started from, the downlink as updates against each
    client's copy."""
    return {"plan": f"{codec}(reference=true, residual_feedback=true)", "eb": eb,
            "downlink_plan": codec, "downlink_send": "update", "first_download": "coded"}


#: label -> settings of the plans (each a complete description of what differs)
PLANS: dict[str, dict[str, Any]] = {
    "none": {"plan": "none"},
    "fedsz": {"plan": "fedsz", "eb": 1e-2},
    "fedsz-both": {"plan": "fedsz", "eb": 1e-2, "downlink_plan": "fedsz"},
    **{f"ref-{c}-{eb:g}": _ref(c, eb) for c in ("fpz", "gaeb") for eb in (1e-2, 3e-2, 1e-1)},
    # the downlink's error is re-sent by the next update (the server mirrors each copy),
    # so it may take a looser bound than the uplink's
    **{f"ref-fpz-0.03-down-{eb:g}": {**_ref("fpz", 3e-2), "downlink_plan": f"fpz(eb={eb:g})"}
       for eb in (5e-2, 1e-1)},
    "eftopk-0.01": {"plan": "ef:topk(ratio=0.01)", "send": "update",
                    "downlink_plan": "fpz", "eb": 1e-2, "downlink_send": "update",
                    "first_download": "coded"},
    # the same with the kept values error-bounded (fpz at REL 1e-2 of their range)
    "eftopk-0.01-fpz": {"plan": "ef:topk(ratio=0.01, values=fpz)", "send": "update",
                        "downlink_plan": "fpz", "eb": 1e-2, "downlink_send": "update",
                        "first_download": "coded"},
    "stc-0.01": {"plan": "stc(ratio=0.01)", "send": "update",
                 "downlink_plan": "ternary(ratio=0.01)", "downlink_send": "update"},
    "qsgd-4": {"plan": "qsgd(levels=4)", "send": "update", "downlink_plan": "fpz",
               "eb": 1e-2, "downlink_send": "update", "first_download": "coded"},
    "hgc-0.005": {"plan": "hgc(density=0.005, warmup=5)", "send": "update",
                  "aggregate": "hgc"},
    "hgc-0.001": {"plan": "hgc(density=0.001, warmup=5)", "send": "update",
                  "aggregate": "hgc"},
    # HGC's momentum correction assumes each client keeps its momentum between rounds
    "hgc-0.005-keep": {"plan": "hgc(density=0.005, warmup=5)", "send": "update",
                       "aggregate": "hgc", "client_state": "keep"},
    # error feedback against server momentum: top-k with and without EF, the server
    # plain (FedAvg) or with momentum 0.9 at a tenth of the step (FedAvgM, "-sm": the
    # same step in the long run)
    **{f"{label}{server}": {**settings, **server_settings}
       for label, settings in (("none", {"plan": "none"}),
                               ("topk-0.01", {"plan": "topk(ratio=0.01)", "send": "update"}),
                               ("eftopk-0.01-up", {"plan": "ef:topk(ratio=0.01)",
                                                   "send": "update"}))
       for server, server_settings in (("", {}), ("-sm", {
           "algorithm": "fedavgm", "server_lr": 0.1, "server_momentum": 0.9}))
       if (label, server) != ("none", "")},
}
#: the study of error feedback against server momentum (plans of ``PLANS``)
EF_MOMENTUM_PLANS = "none,none-sm,topk-0.01,topk-0.01-sm,eftopk-0.01-up,eftopk-0.01-up-sm"
DEFAULT_PLANS = ("none,fedsz,fedsz-both,ref-fpz-0.01,ref-fpz-0.03,ref-fpz-0.1,ref-gaeb-0.01,"
                 "ref-gaeb-0.03,ref-gaeb-0.1,eftopk-0.01,stc-0.01,qsgd-4,hgc-0.005,hgc-0.001")


def flags(settings: dict[str, Any]) -> str:
    """The ``fedpress simulate`` flags that give ``settings`` (beside the shared ones)."""
    out = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        else:
            out += [flag, shlex.quote(str(value))]
    return " ".join(out)


def settings_of(model: str, split: str, plan: str, seed: int) -> dict[str, Any]:
    return {**BASE, "model": model, **MODELS[model], **SPLITS[split], **PLANS[plan],
            "seed": seed}


def _run(model: str, split: str, plan: str, seed: int, out: str) -> tuple[str, float]:
    """One run in this (worker) process; returns its directory and wall seconds."""
    from fedpress.sim.run import run

    t0 = time.time()
    run(settings_of(model, split, plan, seed), out, progress=False, label=plan)
    return out, time.time() - t0


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip()


def report(out: Path, models: list[str], splits: list[str], plans: list[str],
           target_drop: float) -> list[dict[str, Any]]:
    """Rebuild frontier.csv, frontier_plans.csv, frontier.md and the plots from the runs
    there. The time-to-accuracy target of a run is raw FedAvg's final accuracy on the
    same model, split and seed (each seed its own data split and initial model; the
    mean over raw's seeds where it lacks that seed) minus ``target_drop`` points."""
    from fedpress.sim.frontier import COLUMNS, paired, run_row, summarize

    found: dict[tuple[str, str, str], list[tuple[dict, list[dict]]]] = {}
    for model in models:
        for split in splits:
            for plan in plans:
                for d in sorted((out / model / split / plan).glob("seed*")):
                    if (d / "summary.json").exists():
                        summary = json.loads((d / "summary.json").read_text())
                        with open(d / "metrics.csv", newline="") as f:
                            rounds = list(csv.DictReader(f))
                        found.setdefault((model, split, plan), []).append((summary, rounds))
    rows = []
    for (model, split, plan), runs in found.items():
        base = {s["config"]["seed"]: s["final_accuracy"]
                for s, _ in found.get((model, split, "none"), [])}
        mean = sum(base.values()) / len(base) if base else None
        for summary, rounds in runs:
            raw = base.get(summary["config"]["seed"], mean)
            target = None if raw is None else raw - target_drop / 100
            rows.append(run_row(model, split, plan, flags(PLANS[plan]), summary, rounds,
                                summary["config"].get("commit", ""), target))
    if not rows:
        return rows
    with open(out / "frontier.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    points = summarize(rows)
    diffs, tail = paired(rows), paired(rows, column="last5_accuracy")
    table = []
    for p in points:
        runs = [r for r in rows if (r["model"], r["split"], r["plan"]) == (p.model, p.split,
                                                                            p.plan)]
        d = [x for _, x in diffs.get((p.model, p.split, p.plan), [])]
        d5 = [x for _, x in tail.get((p.model, p.split, p.plan), [])]
        table.append({"model": p.model, "split": p.split, "plan": p.plan, "seeds": p.seeds,
                      "accuracy": f"{p.accuracy:.4f}", "spread": f"{p.spread:.4f}",
                      "vs none, points (per seed)": (
                          f"{sum(d) / len(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)})"
                          if d else ""),
                      "last 5 rounds vs none": f"{sum(d5) / len(d5):+.2f}" if d5 else "",
                      "MB up": f"{_mean_mb(runs, 'bytes_up'):.2f}",
                      "MB down": f"{_mean_mb(runs, 'bytes_down'):.2f}",
                      "MB total": f"{p.bytes_total / 1e6:.1f}",
                      "reduction": f"{p.reduction:.1f}",
                      "s to target @10 Mbps": _mean_seconds(runs, "tta_10_s"),
                      "@100 Mbps": _mean_seconds(runs, "tta_100_s")})
    with open(out / "frontier_plans.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "frontier.md").write_text(markdown_table(table, list(table[0])))
    _plots(out, points)
    return rows


def _mean_seconds(runs: list[dict[str, Any]], column: str) -> str:
    """The mean time to the target over the runs ("not reached" if one never did)."""
    t = [float(r[column]) for r in runs if r[column] != ""]
    return f"{sum(t) / len(t):.0f}" if t and all(map(math.isfinite, t)) else "not reached"


def _mean_mb(runs: list[dict[str, Any]], column: str) -> float:
    return sum(float(r[column]) for r in runs) / len(runs) / 1e6


def _plots(out: Path, points: list[Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    for model, split in sorted({(p.model, p.split) for p in points}):
        mine = [p for p in points if (p.model, p.split) == (model, split)]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for p in mine:
            ax.errorbar(p.bytes_total / 1e6, 100 * p.accuracy, yerr=100 * p.spread, fmt="o",
                        capsize=3)
            ax.annotate(p.plan, (p.bytes_total / 1e6, 100 * p.accuracy), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("MB over the whole run, up + down (log)")
        ax.set_ylabel("final test accuracy (%)")
        seeds = max(p.seeds for p in mine)
        ax.set_title(f"Fashion-MNIST, {model}, {split}: mean of up to {seeds} seeds "
                     "(bars: spread)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"frontier_{model}_{split}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="cnn")
    ap.add_argument("--splits", default="iid,dirichlet-0.3")
    ap.add_argument("--plans", default=DEFAULT_PLANS,
                    help="comma-separated labels of --list, or ef-momentum (the study of "
                    "error feedback against server momentum)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, help="override the model's rounds (smoke runs)")
    ap.add_argument("--local-steps", type=int, help="override the model's local steps")
    ap.add_argument("--target-drop", type=float, default=1.0,
                    help="time-to-accuracy target: raw FedAvg's final accuracy on the "
                    "same seed minus these points")
    ap.add_argument("--out", default=".bench/frontier")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--list", action="store_true", help="print the plans and their flags")
    args = ap.parse_args(argv)
    for model in MODELS.values():
        model.update({k: v for k, v in (("rounds", args.rounds),
                                        ("local_steps", args.local_steps)) if v})
    models, splits = args.models.split(","), args.splits.split(",")
    if args.plans == "ef-momentum":
        args.plans = EF_MOMENTUM_PLANS
    plans, seeds = args.plans.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = ([m for m in models if m not in MODELS] + [s for s in splits if s not in SPLITS]
               + [p for p in plans if p not in PLANS])
    if unknown:
        ap.error(f"unknown: {', '.join(unknown)}")
    if args.list:
        for label in plans:
            print(f"{label:14s} {flags(PLANS[label])}")
        return 0
    out = Path(args.out)
    commit, start = _commit(), datetime.datetime.now(datetime.UTC)
    todo = [(m, s, p, k) for k in seeds for m in models for s in splits for p in plans
            if not (out / m / s / p / f"seed{k}" / "summary.json").exists()]
    if todo and not args.report_only:
        print(f"{len(todo)} runs to do, {args.workers} at a time", file=sys.stderr, flush=True)
        with ProcessPoolExecutor(args.workers) as pool:
            jobs = {pool.submit(_run, m, s, p, k, str(out / m / s / p / f"seed{k}")): (m, s, p, k)
                    for m, s, p, k in todo}
            for i, job in enumerate(as_completed(jobs), 1):
                m, s, p, k = jobs[job]
                try:
                    where, seconds = job.result()
                except Exception as e:  # one failed run must not stop the rest
                    print(f"[{i}/{len(todo)}] {m} {s} {p} seed {k}: FAILED: {e}",
                          file=sys.stderr, flush=True)
                    continue
                summary = Path(where) / "summary.json"
                data = json.loads(summary.read_text())
                data["config"]["commit"] = commit  # the code that made this run
                summary.write_text(json.dumps(data, indent=1))
                print(f"[{i}/{len(todo)}] {m} {s} {p} seed {k}: "
                      f"acc {data['final_accuracy']:.4f}, {seconds / 60:.1f} min",
                      file=sys.stderr, flush=True)
    rows = report(out, models, splits, plans, args.target_drop)
    note = (f"Report {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC (runs started "
            f"{start:%Y-%m-%d %H:%M} at commit {commit}); {machine()}; torch "
            f"{version('torch')}, numpy {version('numpy')}; {len(rows)} runs\n")
    if rows:
        (out / "frontier_env.txt").write_text(note)
    print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
