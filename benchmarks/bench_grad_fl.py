#!/usr/bin/env python3
"""The gradient compressors in the simulator: accuracy, CR, bytes and time, same seed.

FedSGD-style runs on Fashion-MNIST (``send=gradient``: each sampled client sends
the mean gradient of ``--local-steps`` minibatches at the global weights; the
server steps with its learning rate and momentum). Every plan gets the same data,
seed, clients, rounds and network (``--mbps`` both ways), with these exceptions,
written in the output table:

* ``dgc`` does its momentum correction on the clients, so its server steps
  without momentum (``algorithm=fedavg``), as in the paper (the workers' momentum
  replaces the optimizer's);
* ``powersgd2`` / ``powersgd4`` run PowerSGD's two-phase exchange
  (``aggregate=powersgd``: P up, orthogonalised P down, Q up; Q and P travel on the
  downlink, so its CR drops below 1);
* ``signsgd-sgd`` / ``efsignsgd-sgd``: the server steps without momentum at ten
  times the learning rate (the same step size in the long run), to separate error
  feedback from its interplay with momentum;
* ``signsgd`` is aggregated by majority vote (``aggregate=vote``); ``signsgd-mean``
  is the same codec averaged like the other plans.

The downlink sends the global weights raw (CR 1), so the uplink columns carry the
comparison. Writes one directory per plan (metrics.csv, summary.json, plots),
``grad_fl.csv`` and ``grad_fl.md`` (with the date, commit and versions).

Usage (from the project root)::

    python benchmarks/bench_grad_fl.py --model cnn --rounds 200 --out .bench/grad_fl_cnn
    python benchmarks/bench_grad_fl.py --model resnet18 --rounds 30 \\
        --plans none,ef:topk,dgc,efsignsgd,stc,powersgd2 --out .bench/grad_fl_resnet18
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

# label -> (plan spec, settings overrides)
PLANS: dict[str, tuple[str, dict[str, Any]]] = {
    "none": ("none", {}),
    "topk": ("topk(ratio=0.01)", {}),
    "ef:topk": ("ef:topk(ratio=0.01)", {}),
    "ef:randk": ("ef:randk(ratio=0.01)", {}),
    "ef:threshold": ("ef:threshold(tau=0.007)", {}),
    "dgc": ("dgc(ratio=0.001, warmup=40)", {"algorithm": "fedavg"}),
    "dgc-w8": ("dgc(ratio=0.001, warmup=8)", {"algorithm": "fedavg"}),
    "signsgd": ("signsgd", {"aggregate": "vote"}),
    "signsgd-mean": ("signsgd", {}),
    "efsignsgd": ("efsignsgd", {}),
    "signsgd-sgd": ("signsgd", {"algorithm": "fedavg", "lr": 0.5}),
    "efsignsgd-sgd": ("efsignsgd", {"algorithm": "fedavg", "lr": 0.5}),
    "qsgd": ("qsgd(levels=16)", {}),
    "terngrad": ("terngrad", {}),
    "stc": ("stc(ratio=0.01)", {}),
    "stc-both": ("stc(ratio=0.01)", {"downlink_plan": "ternary(ratio=0.01)",
                                     "downlink_send": "update"}),
    "powersgd2": ("powersgd(rank=2)", {"aggregate": "powersgd"}),
    "powersgd4": ("powersgd(rank=4)", {"aggregate": "powersgd"}),
}
COLUMNS = ["label", "plan", "overrides", "final_accuracy", "best_accuracy", "cr_up",
           "cr_down", "mb_up", "mb_down", "encode_s", "decode_s", "comm_s", "round_s",
           "wall_s"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--plans", default=",".join(PLANS))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--server-momentum", type=float, default=0.9)
    ap.add_argument("--mbps", type=float, default=10.0)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".bench/grad_fl")
    args = ap.parse_args(argv)

    from fedpress.sim.data import load_dataset
    from fedpress.sim.run import run

    ds = load_dataset("fashion-mnist")
    base = {"dataset": "fashion-mnist", "model": args.model, "clients": args.clients,
            "rounds": args.rounds, "local_steps": args.local_steps,
            "batch_size": args.batch_size, "lr": args.lr, "send": "gradient",
            "algorithm": "fedavgm", "server_momentum": args.server_momentum,
            "uplink_mbps": args.mbps, "downlink_mbps": args.mbps,
            "test_limit": args.test_limit, "threads": args.threads, "seed": args.seed}
    out = Path(args.out)
    rows = []
    t0 = time.time()
    args.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, check=False).stdout.strip()  # the code measured
    for label in args.plans.split(","):
        spec, overrides = PLANS[label]
        settings = base | {"plan": spec} | overrides
        r = run(settings, out / label.replace(":", "_"), progress=sys.stderr.isatty(),
                label=label, dataset=ds)
        row = {"label": label, "plan": spec,
               "overrides": " ".join(f"{k}={v}" for k, v in overrides.items()),
               "final_accuracy": r["final_accuracy"], "best_accuracy": r["best_accuracy"],
               "cr_up": r["cr_up"], "cr_down": r["cr_down"], "mb_up": r["bytes_up"] / 1e6,
               "mb_down": r["bytes_down"] / 1e6, "encode_s": r["encode_s"],
               "decode_s": r["decode_s"], "comm_s": r["comm_s"], "round_s": r["round_s"],
               "wall_s": r["wall_s"]}
        rows.append(row)
        print(" ".join(f"{k}={_fmt(v)}" for k, v in row.items()), file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grad_fl.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "grad_fl.md").write_text(markdown(rows, args, time.time() - t0))
    return 0


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.4g}"
    return str(v)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    head = (f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC "
            f"({seconds / 60:.0f} min), commit {args.commit} (at the start), "
            f"{os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, torch {version('torch')}, numpy "
            f"{version('numpy')}. Fashion-MNIST, {args.model}, {args.clients} IID clients, "
            f"{args.rounds} rounds of FedSGD ({args.local_steps} minibatch(es) of "
            f"{args.batch_size} per client per round), server SGD lr {args.lr} momentum "
            f"{args.server_momentum}, {args.mbps:g} Mbps both ways, raw downlink, "
            f"accuracy on the first {args.test_limit} test images.\n\n")
    cols = ["label", "plan", "overrides", "final_accuracy", "best_accuracy", "cr_up",
            "mb_up", "comm_s", "encode_s", "decode_s"]
    return head + markdown_table(rows, cols, _fmt)


if __name__ == "__main__":
    sys.exit(main())
