#!/usr/bin/env python3
"""gaeb with a reference on the weights uplink, in the simulator: accuracy, bytes, time.

FedAvg on Fashion-MNIST (``send=weights``): every client trains ``--local-steps``
minibatches from the global model it received and sends its weights. Plans (same
data, seed, clients, rounds; the downlink sends the global model raw, so the uplink
columns carry the comparison):

* ``none``: raw float32;
* ``fedsz``: the FedSZ paper's plan (``fedsz-paper``: SZ2 on big weight tensors,
  blosc-lz on the rest);
* ``fpz``: every float tensor of 1000+ elements through fpz, the rest lossless;
* ``fpz-ref`` / ``gaeb-ref``: the same with ``reference=true``: each client codes its
  weights against the model it started from (which the server holds), under the
  bound computed from the weights themselves;
* ``gaeb``: gaeb on the weights without a reference (its history only);
* ``gaeb-ref-ef``: ``gaeb-ref`` with residual feedback (``residual_feedback=true``: what the
  bound dropped from a client's weights is added to its next weights).

Communication time at 10 / 100 / 1000 Mbps is FedSZ's Eq. 1 per client message:
``t_C + t_D + S' / B`` (encode and decode seconds as measured in the run, divided by
the clients per round; ``S'`` the mean uplink frame), raw ``S / B``, averaged over
rounds. Writes one directory per plan, ``gaeb_fl.csv`` and ``gaeb_fl.md`` (date,
commit, versions).

Usage (from the project root)::

    python benchmarks/bench_gaeb_fl.py --rounds 15 --local-steps 50 --out .bench/gaeb_fl
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _table import markdown_table  # benchmarks/ is on the path when run as a script

PLANS: dict[str, str] = {
    "none": "none",
    "fedsz": "fedsz-paper",
    "fpz": "fpz",
    "fpz-ref": "fpz(reference=true)",
    "gaeb": "gaeb",
    "gaeb-ref": "gaeb(reference=true)",
    "gaeb-ref-ef": "gaeb(reference=true, residual_feedback=true)",
}
BANDWIDTHS = (10.0, 100.0, 1000.0)


def uplink_seconds(metrics: list[dict[str, str]], mbps: float) -> float:
    """Mean over rounds of one client's uplink time, FedSZ's Eq. 1."""
    total = 0.0
    for m in metrics:
        n = len(m["clients"].split())
        size = float(m["bytes_up"]) / n
        codec = (float(m["encode_s"]) + float(m["decode_s"])) / n
        total += codec + size * 8 / (mbps * 1e6)
    return total / len(metrics)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--plans", default=",".join(PLANS))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--local-steps", type=int, default=50)
    ap.add_argument("--eb", type=float, default=1e-2)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".bench/gaeb_fl")
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # the code measured
    start = datetime.datetime.now(datetime.UTC)

    from fedpress.sim.data import load_dataset
    from fedpress.sim.run import run

    ds = load_dataset("fashion-mnist")
    base = {"dataset": "fashion-mnist", "model": args.model, "clients": args.clients,
            "rounds": args.rounds, "local_steps": args.local_steps, "eb": args.eb,
            "send": "weights", "test_limit": args.test_limit, "threads": args.threads,
            "seed": args.seed}
    out = Path(args.out)
    rows = []
    t0 = time.time()
    for label in args.plans.split(","):
        r = run(base | {"plan": PLANS[label]}, out / label, progress=sys.stderr.isatty(),
                label=label, dataset=ds)
        with open(out / label / "metrics.csv", newline="") as f:
            metrics = list(csv.DictReader(f))
        row: dict[str, Any] = {"plan": label, "spec": PLANS[label],
                               "final_accuracy": r["final_accuracy"], "cr_up": r["cr_up"],
                               "mb_up": r["bytes_up"] / 1e6, "encode_s": r["encode_s"],
                               "decode_s": r["decode_s"]}
        for mbps in BANDWIDTHS:
            row[f"up_s_{mbps:g}"] = uplink_seconds(metrics, mbps)
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr, flush=True)
    raw = next((r for r in rows if r["plan"] == "none"), None)
    for row in rows:
        row["acc_delta_pt"] = (100 * (row["final_accuracy"] - raw["final_accuracy"])
                               if raw else None)
        for mbps in BANDWIDTHS:
            key = f"up_s_{mbps:g}"
            row[f"saved_{mbps:g}"] = 1 - row[key] / raw[key] if raw else None
    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with open(out / "gaeb_fl.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    vers = {p: version(p) for p in ("numpy", "torch", "pysz", "hdf5plugin", "numba")}
    head = (f"Measured {start:%Y-%m-%d %H:%M} UTC, commit {commit}, {platform.machine()} "
            f"{os.cpu_count()} CPUs, {time.time() - t0:.0f} s; "
            + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".\n"
            f"{args.model} on Fashion-MNIST, {args.clients} clients, {args.rounds} rounds of "
            f"{args.local_steps} local steps (batch 64, lr 0.01, momentum 0.9), REL "
            f"{args.eb:g}, test on {args.test_limit} images; uplink time per client and "
            "round by FedSZ's Eq. 1 (t_C + t_D + S'/B).\n\n")
    table_rows = [{"plan": r["plan"], "accuracy": f"{r['final_accuracy']:.4f}",
                   "vs raw (pt)": f"{r['acc_delta_pt']:+.2f}", "uplink CR": f"{r['cr_up']:.1f}",
                   "uplink MB": f"{r['mb_up']:.2f}",
                   **{f"s @ {m:g} Mbps": f"{r[f'up_s_{m:g}']:.3f}" for m in BANDWIDTHS},
                   **{f"saved @ {m:g}": f"{100 * r[f'saved_{m:g}']:.0f}%" for m in BANDWIDTHS}}
                  for r in rows]
    (out / "gaeb_fl.md").write_text(head + markdown_table(table_rows, list(table_rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
