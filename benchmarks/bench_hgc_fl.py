#!/usr/bin/env python3
"""HGC in the simulator, with its ablations and the sparsifying peers, same seed.

FedAvg on Fashion-MNIST with several local steps per round (``send=update``): every
client trains ``--local-steps`` minibatches from the model it holds and sends its
update. Plans (label -> plan spec; each run gets the same data, seed, clients, rounds,
learning-rate milestones and momentum steps):

* ``none``: raw float32 both ways;
* ``hgc``: HGC (shared mask, equal-count quantizer, predictive XOR coding, error
  feedback, warm-up, corrections); ``hgc-nopred`` / ``hgc-noquant`` /
  ``hgc-nowarm`` / ``hgc-nocorr``: one part switched off;
* ``dgc``, ``stc``, ``efsignsgd``: the peers on the same updates (``ef``/state of their
  own; the downlink sends the global model raw, as the simulator does for them).

For every plan: final and best accuracy, uplink and downlink CR and MB, simulated
communication seconds at ``--mbps``; for HGC, the paper's worst-case CRs beside the
measured ones (uplink ``32 M N / ((N q + 32) k)``, downlink ``M / (2 k)``; ``M``
parameters, ``N`` clients, ``q`` bits per code, ``k`` kept values). Writes one directory
per plan, ``hgc_fl.csv`` and ``hgc_fl.md`` (date, commit, versions); CRs over the
whole run, over the rounds after the warm-up and in the last round. ``--report-only``
rebuilds the tables from the plans' ``metrics.csv`` into ``hgc_fl_report.*`` (the
measured ``hgc_fl.md`` keeps the run's date and commit).

Usage (from the project root)::

    python benchmarks/bench_hgc_fl.py --model cnn --rounds 60 --local-steps 20 \\
        --milestones 40 --out .bench/hgc_fl_cnn
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from _table import markdown_table  # benchmarks/ is on the path when run as a script


def plans(density: float, warmup: int, window: int) -> dict[str, str]:
    """label -> plan spec for the run's density, warm-up and correction window."""
    hgc = f"hgc(density={density}, warmup={warmup}, correction={window}"
    return {
        "none": "none",
        "hgc": hgc + ")",
        "hgc-nopred": hgc + ", predict=false)",
        "hgc-noquant": hgc + ", quantize=false, predict=false)",
        "hgc-nowarm": f"hgc(density={density}, warmup=0, correction={window})",
        "hgc-nocorr": f"hgc(density={density}, warmup={warmup}, correction=0)",
        "dgc": f"dgc(ratio={density}, warmup={warmup})",
        "stc": f"stc(ratio={density})",
        "efsignsgd": "efsignsgd",
    }


def row_of(label: str, spec: str, metrics: Path, warmup: int) -> dict:
    """One plan's figures from its per-round ``metrics.csv``: accuracy (final, best),
    CRs over the run, over the rounds after the warm-up, and in the last round, MB and
    simulated communication seconds."""
    with open(metrics, newline="") as f:
        rounds = list(csv.DictReader(f))

    def cr(rows: list[dict], key: str) -> float:
        return sum(float(r[f"raw_{key}"]) for r in rows) / max(
            1.0, sum(float(r[f"bytes_{key}"]) for r in rows))

    after = rounds[warmup:] or rounds
    return {"plan": label, "spec": spec, "final_accuracy": float(rounds[-1]["accuracy"]),
            "best_accuracy": max(float(r["accuracy"]) for r in rounds),
            "cr_up": cr(rounds, "up"), "cr_up_after_warmup": cr(after, "up"),
            "cr_up_last": cr(rounds[-1:], "up"), "cr_down": cr(rounds, "down"),
            "cr_down_after_warmup": cr(after, "down"), "cr_down_last": cr(rounds[-1:], "down"),
            "mb_up": sum(float(r["bytes_up"]) for r in rounds) / 1e6,
            "mb_down": sum(float(r["bytes_down"]) for r in rounds) / 1e6,
            "comm_s": sum(float(r["comm_s"]) for r in rounds)}


def worst_case(params: int, clients: int, levels: int, density: float) -> tuple[float, float]:
    """HGC's worst-case uplink and downlink CR (IJCAI-24, Sec. 4.3)."""
    k = max(1, math.ceil(density * params))
    q = max(1, math.ceil(math.log2(levels - 1)))
    return 32 * params * clients / ((clients * q + 32) * k), params / (2 * k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--plans", default="none,hgc,hgc-nopred,hgc-noquant,hgc-nowarm,"
                                       "hgc-nocorr,dgc,stc,efsignsgd")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--milestones", default="", help="rounds where the lr drops 10x")
    ap.add_argument("--momentum-steps", default="", help="e.g. 1:0.3,10:0.6,20:0.9")
    ap.add_argument("--density", type=float, default=0.001)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--correction", type=int, default=2)
    ap.add_argument("--mbps", type=float, default=10.0)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=".bench/hgc_fl")
    ap.add_argument("--report-only", action="store_true",
                    help="rebuild the tables from the plans' metrics.csv in --out")
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # the code measured
    start = datetime.datetime.now(datetime.UTC)

    from fedpress.sim.data import load_dataset
    from fedpress.sim.run import run

    ds = load_dataset("fashion-mnist")
    specs = plans(args.density, args.warmup, args.correction)
    base = {"dataset": "fashion-mnist", "model": args.model, "clients": args.clients,
            "rounds": args.rounds, "local_steps": args.local_steps, "lr": args.lr,
            "send": "update", "lr_milestones": args.milestones,
            "momentum_steps": args.momentum_steps, "uplink_mbps": args.mbps,
            "downlink_mbps": args.mbps, "test_limit": args.test_limit,
            "threads": args.threads, "seed": args.seed}
    out = Path(args.out)
    rows = []
    t0 = time.time()
    for label in args.plans.split(","):
        if not args.report_only:
            run(base | {"plan": specs[label]}, out / label, progress=sys.stderr.isatty(),
                label=label, dataset=ds)
        rows.append(row_of(label, specs[label], out / label / "metrics.csv", args.warmup))
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    name = "hgc_fl_report" if args.report_only else "hgc_fl"  # keep the measured report
    with open(out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from fedpress.sim.models import build_model

    n_params = sum(p.numel() for p in build_model(args.model, ds.input_shape,
                                                  ds.num_classes).parameters())
    up, down = worst_case(n_params, args.clients, 3, args.density)
    when = (f"Rebuilt {start:%Y-%m-%d %H:%M} UTC at commit {commit} from the plans' "
            f"metrics.csv in {out} (its hgc_fl.md says when and at which commit they ran)"
            if args.report_only else f"Measured {start:%Y-%m-%d %H:%M} UTC "
            f"({(time.time() - t0) / 60:.0f} min), commit {commit}")
    head = (f"{when}, {os.cpu_count()} CPUs, Python {platform.python_version()}, torch "
            f"{version('torch')}, numpy {version('numpy')}. Fashion-MNIST, {args.model} "
            f"({n_params} parameters), {args.clients} IID clients, {args.rounds} rounds of "
            f"{args.local_steps} local steps (lr {args.lr}, milestones "
            f"'{args.milestones}', momentum steps '{args.momentum_steps}'), density "
            f"{args.density}, warm-up {args.warmup}, correction window {args.correction}, "
            f"{args.mbps:g} Mbps, accuracy on {args.test_limit} test images. HGC's "
            f"worst-case CR at this density (3 levels): uplink {up:.0f}, downlink "
            f"{down:.0f}.\n\n")
    fmt_rows = [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}
                for r in rows]
    (out / f"{name}.md").write_text(head + markdown_table(fmt_rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
