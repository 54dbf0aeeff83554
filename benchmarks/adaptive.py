#!/usr/bin/env python3
"""Adaptive plans against fixed ones on a heterogeneous federation, several seeds.

A federation like ``examples/heterogeneous.toml`` but wider: log-normal uplinks
around ``--up-median`` Mbps (sigma ``--sigma``, i.e. roughly 1 to 1000 Mbps), downlinks
5x faster, latencies 10-150 ms, links that change every round (``--drift``), half the
clients per round, Dirichlet label skew. Plans: raw (``none``), the fixed candidates
(``raw``, ``zstd``, ``fpz`` at ``max_eb/10`` and ``max_eb``) and ``auto`` with the link
measured by each client (``auto-measured``) or given (``auto-configured``), and the
round-level view (``auto-round``: given links, ``round=deadline``: each client takes
the tightest bound that fits the round's slowest expected client). For each
plan and seed: final accuracy and the simulated time until the test accuracy first
reaches the target (raw FedAvg's final accuracy on that seed minus ``--target-drop``
points);
the report compares ``auto`` with the best fixed plan seed by seed (each seed is its
own federation: split, links, target).

Resumable (one directory per plan and seed, skipped when its ``summary.json``
exists); ``--workers`` processes, one thread each.

Usage (from the project root)::

    python benchmarks/adaptive.py --seeds 0,1,2 --out .bench/adaptive
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _env import machine  # benchmarks/ is on the path when run as a script
from _table import markdown_table


def plans(max_eb: float) -> dict[str, str]:
    """label -> uplink plan spec."""
    return {"none": "none", "raw": "raw", "zstd": "zstd",
            f"fpz-{max_eb / 10:g}": f"fpz(eb={max_eb / 10:g})",
            f"fpz-{max_eb:g}": f"fpz(eb={max_eb:g})",
            "auto-measured": f"auto(max_eb={max_eb:g}, link=measured)",
            "auto-configured": f"auto(max_eb={max_eb:g}, link=configured)",
            "auto-round": f"auto(max_eb={max_eb:g}, link=configured, round=deadline)"}


def settings(args: argparse.Namespace, spec: str, seed: int) -> dict[str, Any]:
    latency = [10 + 140 * i / max(1, args.clients - 1) for i in range(args.clients)]
    return {"dataset": "fashion-mnist", "model": args.model, "clients": args.clients,
            "fraction": 0.5, "rounds": args.rounds, "local_steps": args.local_steps,
            "lr": 0.05, "partition": "dirichlet", "alpha": 0.5, "plan": spec,
            "uplink_mbps": {"median": args.up_median, "sigma": args.sigma},
            "downlink_mbps": {"median": 5 * args.up_median, "sigma": args.sigma},
            "latency_ms": latency, "bandwidth_drift": args.drift, "seed": seed,
            "test_limit": 5000, "threads": 1, "workers": 1}


def _run(config: dict[str, Any], out: str) -> str:
    from fedpress.sim.run import run

    run(config, out, progress=False)
    return out


def _time_to(rows: list[dict[str, str]], target: float) -> float:
    total = 0.0
    for r in rows:
        total += float(r["round_s"])
        if float(r["accuracy"]) >= target:
            return total
    return math.inf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--up-median", type=float, default=20.0)
    ap.add_argument("--sigma", type=float, default=1.5)
    ap.add_argument("--drift", type=float, default=0.5)
    ap.add_argument("--max-eb", type=float, default=1e-2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--plans", help="labels to run (default: all)")
    ap.add_argument("--report-only", action="store_true", help="report the runs there")
    ap.add_argument("--target-drop", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=".bench/adaptive")
    args = ap.parse_args(argv)
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    specs = plans(args.max_eb)
    if args.plans:
        unknown = set(args.plans.split(",")) - set(specs)
        if unknown:
            ap.error(f"unknown plans: {', '.join(sorted(unknown))}; choose from "
                     f"{', '.join(specs)}")
        specs = {k: v for k, v in specs.items() if k in args.plans.split(",")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    todo = [] if args.report_only else [
        (label, k) for k in seeds for label in specs
        if not (out / label / f"seed{k}" / "summary.json").exists()]
    with ProcessPoolExecutor(args.workers) as pool:
        jobs = {pool.submit(_run, settings(args, specs[label], k),
                            str(out / label / f"seed{k}")): (label, k) for label, k in todo}
        for i, job in enumerate(as_completed(jobs), 1):
            label, k = jobs[job]
            try:
                job.result()
                print(f"[{i}/{len(todo)}] {label} seed {k} done", file=sys.stderr, flush=True)
            except Exception as e:  # one failed run must not stop the rest
                print(f"[{i}/{len(todo)}] {label} seed {k}: FAILED: {e}", file=sys.stderr)
    runs: dict[str, list[tuple[dict, list[dict]]]] = {}
    for label in specs:
        for k in seeds:
            d = out / label / f"seed{k}"
            if (d / "summary.json").exists():
                with open(d / "metrics.csv", newline="") as f:
                    runs.setdefault(label, []).append(
                        (json.loads((d / "summary.json").read_text()), list(csv.DictReader(f))))
    if "none" not in runs:
        return 0
    # each seed is its own federation (split, links): its target is raw FedAvg's final
    # accuracy on that seed minus the drop, and plans are compared seed by seed
    base = {s["config"]["seed"]: s["final_accuracy"] for s, _ in runs["none"]}
    times: dict[str, dict[int, float]] = {}
    table = []
    for label, rs in runs.items():
        acc = [s["final_accuracy"] for s, _ in rs]
        times[label] = {s["config"]["seed"]: _time_to(rows, base[s["config"]["seed"]]
                                                      - args.target_drop / 100)
                        for s, rows in rs if s["config"]["seed"] in base}
        tta = list(times[label].values())
        table.append({"plan": label, "spec": specs[label], "seeds": len(rs),
                      "accuracy": statistics.fmean(acc),
                      "spread": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                      "MB up": statistics.fmean(s["bytes_up"] for s, _ in rs) / 1e6,
                      "round s": statistics.fmean(s["round_s"] for s, _ in rs) / args.rounds,
                      "s to target": (statistics.fmean(tta) if tta and all(map(math.isfinite,
                                                                               tta))
                                      else math.inf)})
    fixed = [r for r in table if not r["plan"].startswith("auto") and r["plan"] != "none"]
    best = min(fixed, key=lambda r: r["s to target"]) if fixed else None
    lines = [f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit "
             f"{commit}; {machine()}; torch {version('torch')}. {args.model}, {args.clients} "
             f"clients (half per round), {args.rounds} rounds of {args.local_steps} steps, "
             f"Dirichlet 0.5; uplinks log-normal around {args.up_median:g} Mbps (sigma "
             f"{args.sigma:g}), downlinks 5x, latencies 10-150 ms, drift {args.drift:g}; "
             f"target accuracy per seed: raw's final accuracy on that seed - "
             f"{args.target_drop:g} pt; 's to target' is the mean over seeds of the "
             "simulated time until the test accuracy first reaches it.", ""]
    fmt = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}
           for r in table]
    lines.append(markdown_table(fmt, list(table[0])))
    if best is not None:
        for r in table:
            if not r["plan"].startswith("auto"):
                continue
            ratios = [times[best["plan"]][k] / t for k, t in times[r["plan"]].items()
                      if k in times[best["plan"]] and math.isfinite(t)
                      and math.isfinite(times[best["plan"]][k])]
            if ratios:
                gm = math.exp(statistics.fmean(math.log(x) for x in ratios))
                lines.append(f"{r['plan']}: {gm:.2f}x the best fixed plan ({best['plan']}) "
                             f"in time to target (geometric mean over {len(ratios)} seeds: "
                             f"{', '.join(f'{x:.2f}' for x in ratios)})")
    (out / "adaptive.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
