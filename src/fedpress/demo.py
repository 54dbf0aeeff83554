"""Train a small CNN on Fashion-MNIST and compress its state dict with FedSZ.

Run ``python -m fedpress.demo [--epochs 1] [--out out/demo] [--limit N]``.

1. Loads Fashion-MNIST from the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/*-ubyte.gz``) with a small IDX reader.
2. Trains the small CNN of ``make_fl_data.py`` (2 conv 32/64 3x3 pad 1 + 2x2
   max-pool, FC 3136 -> 128 -> 10) for ``--epochs`` epochs (SGD lr 0.01,
   momentum 0.9, batch 64, fixed seed) and prints its test accuracy.
3. Encodes its ``state_dict`` with FedSZ (``fedpress.encode_update(sd,
   plan="fedsz", eb=rel, lossy=codec)``) for the codecs fpz, sz2, sz3, zfp and szx
   (those available) at rel 1e-2 / 1e-3 / 1e-4, plus the lossless-only plans
   ``blosc-lz`` and ``zstd``, and shows per row: frame bytes, CR, max error /
   eb over the lossy tensors, encode and decode ms, and the test accuracy of
   the model after loading the decoded state dict.
4. Writes the rows to ``--out`` as ``demo_results.json`` and ``demo_results.csv``.

Needs PyTorch (``pip install 'fedpress[torch]'``); the IDX reader does not.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import fedpress
from fedpress.io import replaced_atomically
from fedpress.registry import unavailable_reason
from fedpress.sim.data import DATA_DIR, load_fashion_mnist
from fedpress.verify import compare

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set statistics
BATCH, LR, MOMENTUM, SEED = 64, 0.01, 0.9, 1234
RELS = (1e-2, 1e-3, 1e-4)
LOSSY = ("fpz", "sz2", "sz3", "zfp", "szx")
LOSSLESS_PLANS = ("blosc-lz", "zstd")
FIELDS = ["plan", "lossy", "rel", "raw_bytes", "frame_bytes", "cr", "lossy_tensors",
          "max_err_over_eb", "patches", "encode_ms", "decode_ms", "test_acc", "acc_delta"]

# -------------------------------------------------------------------- model
def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise fedpress.MissingDependencyError(
            "the demo needs PyTorch: pip install 'fedpress[torch]' (torch==2.13.0, CPU build)"
        ) from exc
    return torch


def small_cnn() -> Any:
    """The small CNN of make_fl_data.py (421,642 parameters), freshly initialised."""
    _torch()  # a clear message if PyTorch is missing
    from .sim.models import build_model

    return build_model("cnn", (1, 28, 28), 10)


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[Any, Any]:
    """Normalised N x 1 x 28 x 28 float32 images and int64 labels as torch tensors."""
    torch = _torch()
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x[:, None]), torch.from_numpy(labels.astype(np.int64))


def train(model: Any, x: Any, y: Any, epochs: int, seed: int = SEED) -> float:
    """SGD (lr 0.01, momentum 0.9), batch 64, seeded shuffling; returns the last epoch's loss."""
    torch = _torch()
    functional = torch.nn.functional
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss_mean = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total, nb = 0.0, 0
        for start in range(0, len(x), BATCH):
            idx = perm[start:start + BATCH]
            opt.zero_grad()
            loss = functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.item())
            nb += 1
        loss_mean = total / max(nb, 1)
    return loss_mean


def evaluate(model: Any, x: Any, y: Any, batch: int = 1000) -> float:
    """Top-1 accuracy."""
    torch = _torch()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(len(x), 1)


# -------------------------------------------------------------- compression
def _median_ms(fn: Any, repeats: int) -> tuple[Any, float]:
    times, out = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, statistics.median(times)


def compress_row(sd: dict[str, np.ndarray], plan: str, lossy: str | None, rel: float | None,
                 repeats: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Encode ``sd`` with one plan; the row of measurements and the decoded state dict."""
    opts: dict[str, Any] = {"lossy": lossy} if lossy else {}
    eb = rel if rel is not None else 1e-2
    blob, enc_ms = _median_ms(lambda: fedpress.encode_update(sd, plan=plan, eb=eb, **opts),
                              repeats)
    limits = fedpress.trusting(plan, **opts)  # its own frames: sz2 decodes here too
    out, dec_ms = _median_ms(lambda: fedpress.decode_update(blob, limits), repeats)
    info = fedpress.inspect(blob)
    max_ratio, n_lossy, patches = 0.0, 0, 0
    for t in info["tensors"]:
        # error-bounded tensors against their eb_abs; lossless ones must be bit-exact
        check = compare(sd[t["name"]], out[t["name"]], t.get("eb_abs"))
        if "eb_abs" in t:
            n_lossy += 1
            patches += int(t.get("patches", 0))
            max_ratio = max(max_ratio, check.ratio)
        elif check.violations:
            max_ratio = float("inf")
    raw = sum(v.nbytes for v in sd.values())
    row = {"plan": plan if lossy is None else f"{plan}+{lossy}", "lossy": lossy or "",
           "rel": rel if rel is not None else "", "raw_bytes": raw, "frame_bytes": len(blob),
           "cr": raw / len(blob), "lossy_tensors": n_lossy, "max_err_over_eb": max_ratio,
           "patches": patches, "encode_ms": enc_ms, "decode_ms": dec_ms}
    return row, out


def run_compression(model: Any, xte: Any, yte: Any, base_acc: float, codecs: list[str],
                    rels: list[float], repeats: int) -> list[dict[str, Any]]:
    """One row per (lossy codec, rel) of FedSZ, then one per lossless-only plan."""
    torch = _torch()
    sd = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    probe = small_cnn()
    jobs: list[tuple[str, str | None, float | None]] = [
        ("fedsz", c, r) for c in codecs for r in rels]
    jobs += [(p, None, None) for p in LOSSLESS_PLANS]
    rows = []
    for plan, lossy, rel in jobs:
        row, out = compress_row(sd, plan, lossy, rel, repeats)
        probe.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in out.items()})
        row["test_acc"] = evaluate(probe, xte, yte)
        row["acc_delta"] = row["test_acc"] - base_acc
        rows.append(row)
    return rows


def show(rows: list[dict[str, Any]], base_acc: float, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col, just in (("plan", "left"), ("rel", "right"), ("frame bytes", "right"),
                      ("CR", "right"), ("max err / eb", "right"), ("patches", "right"),
                      ("encode ms", "right"), ("decode ms", "right"), ("test acc", "right"),
                      ("Δ acc (points)", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["plan"], "-" if r["rel"] == "" else f"{r['rel']:g}", f"{r['frame_bytes']:,}",
            f"{r['cr']:.2f}", "exact" if not r["lossy_tensors"] else f"{r['max_err_over_eb']:.4f}",
            str(r["patches"]), f"{r['encode_ms']:.1f}", f"{r['decode_ms']:.1f}",
            f"{r['test_acc']:.4f}", f"{100 * r['acc_delta']:+.2f}",
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)
    console.print(f"uncompressed state dict: {rows[0]['raw_bytes']:,} bytes; "
                  f"test accuracy before compression {base_acc:.4f}")


def write_outputs(out_dir: str | os.PathLike[str], meta: dict[str, Any],
                  rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, cpath = out / "demo_results.json", out / "demo_results.csv"
    with replaced_atomically(jpath) as tmp, open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with replaced_atomically(cpath) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in FIELDS})
    return jpath, cpath


# --------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns ``{"meta": {...}, "rows": [...]}`` (also written to ``--out``)."""
    ap = argparse.ArgumentParser(prog="python -m fedpress.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", default="out/demo", help="folder for demo_results.{json,csv}")
    ap.add_argument("--limit", type=int, default=0,
                    help="train on only N samples (a seeded random subset; 0 = all 60,000)")
    ap.add_argument("--test-limit", type=int, default=0,
                    help="evaluate on only the first N test samples (0 = all 10,000)")
    ap.add_argument("--data-dir", default=str(DATA_DIR))
    ap.add_argument("--codecs", default=",".join(LOSSY),
                    help="lossy codecs for FedSZ (unavailable ones are skipped)")
    ap.add_argument("--rels", default=",".join(f"{r:g}" for r in RELS))
    ap.add_argument("--repeats", type=int, default=3, help="timing: median of this many")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=SEED)
    a = ap.parse_args(argv)

    torch = _torch()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    xtr_np, ytr_np, xte_np, yte_np = load_fashion_mnist(a.data_dir)
    if a.limit:
        keep = np.random.default_rng(a.seed).permutation(len(xtr_np))[:a.limit]
        xtr_np, ytr_np = xtr_np[keep], ytr_np[keep]
    if a.test_limit:
        xte_np, yte_np = xte_np[:a.test_limit], yte_np[:a.test_limit]
    xtr, ytr = to_tensors(xtr_np, ytr_np)
    xte, yte = to_tensors(xte_np, yte_np)
    t_load = time.perf_counter() - t0

    model = small_cnn()
    t1 = time.perf_counter()
    loss = train(model, xtr, ytr, a.epochs, a.seed)
    t_train = time.perf_counter() - t1
    base_acc = evaluate(model, xte, yte)
    print(f"trained SmallCNN on {len(xtr)} samples for {a.epochs} epoch(s) in {t_train:.1f}s "
          f"(loss {loss:.4f}); test accuracy {base_acc:.4f} on {len(xte)} samples", flush=True)

    wanted = [c for c in a.codecs.split(",") if c]
    reasons = {c: unavailable_reason(c) for c in wanted}
    codecs = [c for c in wanted if reasons[c] is None]
    for c in wanted:
        if reasons[c] is not None:
            print(f"skipping codec {c}: {reasons[c]}", flush=True)
    rels = [float(r) for r in a.rels.split(",") if r]
    t2 = time.perf_counter()
    rows = run_compression(model, xte, yte, base_acc, codecs, rels, a.repeats)
    t_comp = time.perf_counter() - t2
    show(rows, base_acc, f"FedSZ on the SmallCNN state dict ({a.epochs} epoch(s), "
                         f"{len(xtr)} training samples)")
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "fedpress": fedpress.__version__, "torch": torch.__version__, "threads": a.threads,
        "epochs": a.epochs, "train_samples": len(xtr), "test_samples": len(xte),
        "seed": a.seed, "train_loss": loss, "test_acc": base_acc,
        "params": sum(p.numel() for p in model.parameters()),
        "codecs": codecs, "skipped_codecs": {c: r for c, r in reasons.items() if r},
        "rels": rels, "repeats": a.repeats,
        "seconds": {"load": t_load, "train": t_train, "compress_and_evaluate": t_comp},
    }
    jpath, cpath = write_outputs(a.out, meta, rows)
    print(f"wrote {jpath} and {cpath}", flush=True)
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
