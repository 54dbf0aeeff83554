#!/usr/bin/env python3
"""How far the simulator scales on this machine: rounds per minute by model,
clients and client processes.

Each cell runs ``fedpress.sim.fl.simulate`` on Fashion-MNIST (IID, every client
sampled every round, ``--local-steps`` minibatches of 64 per client, fpz at REL
1e-2 on the uplink, raw downlink, evaluation on the first ``--test-limit`` test
images) for ``--rounds`` rounds and records:

* ``start_s``: building the clients (and starting the worker processes);
* ``round_s``: the median measured wall time of a round (training, codecs,
  aggregation, evaluation), and ``rounds_per_min = 60 / round_s``;
* ``client_steps_per_s``: clients x local steps / round_s.

``workers = 1`` runs the clients in the main process with ``--threads`` PyTorch
threads; ``workers = W > 1`` runs them in W processes with ``threads // W``
threads each (at least one).

Usage (from the project root)::

    python benchmarks/bench_sim_scale.py --out .bench/sim_scale.csv --markdown .bench/sim_scale.md
    python benchmarks/bench_sim_scale.py --grid mlp:4,cnn:4 --workers 1,2 --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from _table import markdown_table  # benchmarks/ is on the path when run as a script

DEFAULT_GRID = "mlp:4,mlp:16,mlp:64,cnn:4,cnn:16,cnn:64,resnet18:4"
COLUMNS = ["model", "params", "clients", "workers", "threads", "local_steps", "start_s",
           "round_s", "rounds_per_min", "client_steps_per_s", "final_accuracy"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=DEFAULT_GRID, help="model:clients pairs")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--test-limit", type=int, default=1000)
    ap.add_argument("--out", default=".bench/sim_scale.csv")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)

    import torch

    from fedpress.sim import fl
    from fedpress.sim.data import load_dataset
    from fedpress.sim.models import build_model

    ds = load_dataset("fashion-mnist")
    rows = []
    for cell in args.grid.split(","):
        model, clients = cell.split(":")
        params = sum(p.numel() for p in build_model(model, ds.input_shape, 10).parameters())
        for workers in (int(w) for w in args.workers.split(",")):
            threads = max(1, args.threads // workers)
            torch.set_num_threads(args.threads if workers == 1 else 1)
            cfg = fl.FLConfig(model=model, clients=int(clients), rounds=args.rounds,
                              local_steps=args.local_steps, plan="fpz",
                              plan_options={"eb": 1e-2})
            t0 = time.perf_counter()
            history, _ = fl.simulate(ds, cfg, test_limit=args.test_limit, workers=workers,
                                     threads=threads)
            total = time.perf_counter() - t0
            walls = [m.wall_s for m in history]
            start = total - sum(walls)
            round_s = statistics.median(walls)
            row = {"model": model, "params": params, "clients": int(clients),
                   "workers": workers, "threads": threads, "local_steps": args.local_steps,
                   "start_s": start, "round_s": round_s, "rounds_per_min": 60 / round_s,
                   "client_steps_per_s": int(clients) * args.local_steps / round_s,
                   "final_accuracy": history[-1].accuracy}
            rows.append(row)
            print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()), file=sys.stderr,
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, args))
    return 0


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict[str, object]], args: argparse.Namespace) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    head = (f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit "
            f"{commit}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"Python {platform.python_version()}, torch {version('torch')}, numpy "
            f"{version('numpy')}; {args.rounds} rounds, {args.local_steps} local steps of 64 "
            f"per client, fpz REL 1e-2 uplink.\n\n")
    cols = ["model", "params", "clients", "workers", "threads", "start_s", "round_s",
            "rounds_per_min", "client_steps_per_s"]
    return head + markdown_table(rows, cols, _fmt)


if __name__ == "__main__":
    sys.exit(main())
