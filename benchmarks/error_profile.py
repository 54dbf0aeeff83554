#!/usr/bin/env python3
"""What the coding error of each error-bounded codec looks like on real FL tensors.

Data: the npz files of ``../shared/bench/make_fl_data.py`` in ``--data``
(``{model}_global_r10.npz``: final global weights; ``{model}_update_rNN.npz``:
client 0's update of round NN; ``{model}_grad_r05.npz``: client 0's last-minibatch
gradient of round 5). Every float tensor with ``>= --min-elems`` elements, in its
own shape and float32, is compressed on its own with ``fedpress.compress(x,
codec=spec, mode="rel", eb=rel)`` (``eb_abs = rel * (max - min)`` of the tensor)
and profiled with ``fedpress.analysis.error_profile``: the error ``e = x - x'``,
its Laplace / Gaussian / uniform maximum-likelihood fits and their
Kolmogorov-Smirnov distances, ``max |e|`` against the declared bound, the
correlation of ``e`` with ``x`` and its lag-1 autocorrelation (C order); also the share
of values decoded exactly and the share of non-zero values decoded as 0 (whose error
is the value itself).

Codecs (each where its back end imports): ``fpz`` (predictor chosen per tensor),
``fpz-nopred`` (``predictor="none"``: a uniform quantizer without prediction),
``fpz-lorenzo1d``, ``sz3`` (interpolation + Lorenzo, the default),
``sz3-lorenzo`` (``algorithm="lorenzo_reg"``), ``sz3-nopred``, ``sz2``, ``zfp``
(fixed accuracy) and ``szx``. Also, per class, the whole state dict through the ``fedsz`` plan
(``--pooled`` lossy codecs for the weights over 1000 elements, zstd for the rest)
with the errors of all its tensors pooled into one profile: the histogram of the
whole model's ``x - x'``, where each tensor has its own bound.

Usage (from the project root)::

    python ../shared/bench/make_fl_data.py --models cnn --out .bench/data   # once, ~6 min
    python benchmarks/error_profile.py --data .bench/data \\
        --out benchmarks/results/error_profile_cnn.csv --markdown .bench/error_profile.md
    python benchmarks/error_profile.py --from-csv benchmarks/results/error_profile_cnn.csv \\
        --markdown .bench/error_profile.md

Progress goes to stderr, one line per (class, codec).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS",
           "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import fedpress  # noqa: E402
from fedpress.analysis import error_profile, profile_arrays  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import machine  # noqa: E402
from _table import markdown_table  # noqa: E402

DEFAULT_DATA = ".bench/data"
DEFAULT_OUT = os.path.join("benchmarks", "results", "error_profile_cnn.csv")
RELS = (1e-2, 1e-3)
CLASSES = {
    "weights_final": "global_r10",
    "update_r01": "update_r01",
    "update_r05": "update_r05",
    "update_r10": "update_r10",
    "grad_r05": "grad_r05",
}
#: label -> codec config given to fedpress.compress
CODECS: dict[str, dict[str, Any]] = {
    "fpz": {"id": "fpz"},
    "fpz-nopred": {"id": "fpz", "predictor": "none"},
    "fpz-lorenzo1d": {"id": "fpz", "predictor": "lorenzo1d"},
    "sz3": {"id": "sz3"},
    "sz3-lorenzo": {"id": "sz3", "algorithm": "lorenzo_reg"},
    "sz3-nopred": {"id": "sz3", "algorithm": "nopred"},
    "sz2": {"id": "sz2"},
    "zfp": {"id": "zfp"},
    "szx": {"id": "szx"},
}
#: lossy codecs of the fedsz plan for the whole-state-dict rows
POOLED = ("sz2", "fpz")
FIELDS = ["model", "data_class", "tensor", "shape", "n", "codec", "rel", "eb_abs",
          "frame_bytes", "cr", "max_over_eb", "within_bound", "mean_over_eb", "laplace_b_over_eb",
          "gauss_sigma_over_eb", "uniform_h_over_eb", "ks_laplace", "ks_gauss", "ks_uniform",
          "best_fit", "corr_x", "lag1", "exact_share", "zeroed_share", "note"]
#: our own frames: every registered codec decodes in this process
TRUSTED = fedpress.Limits(codecs=frozenset(fedpress.list_codecs()))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ measuring
def load_tensors(path: str, min_elems: int) -> list[tuple[str, np.ndarray]]:
    """The float tensors of an npz with at least ``min_elems`` elements, float32."""
    with np.load(path) as npz:
        return [(k, np.ascontiguousarray(npz[k], dtype=np.float32)) for k in npz.files
                if npz[k].dtype.kind == "f" and npz[k].size >= min_elems]


def profile_row(x: np.ndarray, spec: dict[str, Any], rel: float) -> dict[str, Any]:
    """Compress ``x`` with ``spec`` at ``rel``, decode it, and profile the error."""
    blob = fedpress.compress(x, codec=dict(spec), mode="rel", eb=rel)
    p = error_profile(x, blob, limits=TRUSTED)
    eb = p.bound or math.nan
    y = fedpress.decompress(blob, TRUSTED)
    return {
        "n": p.count, "eb_abs": p.bound, "frame_bytes": len(blob), "cr": x.nbytes / len(blob),
        "max_over_eb": p.max_abs / eb, "within_bound": p.within_bound,
        "mean_over_eb": p.mean / eb, "laplace_b_over_eb": p.laplace.scale / eb,
        "gauss_sigma_over_eb": p.gaussian.scale / eb, "uniform_h_over_eb": p.uniform.scale / eb,
        "ks_laplace": p.laplace.ks, "ks_gauss": p.gaussian.ks, "ks_uniform": p.uniform.ks,
        "best_fit": p.best_fit or "", "corr_x": p.corr_x, "lag1": p.lag1,
        "exact_share": float(np.mean(x == y)),
        "zeroed_share": float(np.mean((y == 0) & (x != 0))),
    }


def pooled_row(sd: dict[str, np.ndarray], lossy: str, rel: float) -> dict[str, Any]:
    """Encode the whole state dict with the ``fedsz`` plan (``lossy`` for the weights
    over the threshold, zstd for the rest) and profile the errors of all its tensors
    pooled: the histogram one gets from the whole model's ``x - x'``."""
    blob = fedpress.encode_update(sd, "fedsz", eb=rel, lossy=lossy)
    per_tensor = error_profile(sd, blob, limits=TRUSTED)
    back = fedpress.decode_update(blob, TRUSTED)
    x = np.concatenate([sd[n].astype(np.float64).ravel() for n in sd])
    y = np.concatenate([back[n].astype(np.float64).ravel() for n in sd])
    p = profile_arrays(x, y)
    bounded = [q for q in per_tensor.values() if q.bound]
    return {
        "n": p.count, "frame_bytes": len(blob),
        "cr": sum(v.nbytes for v in sd.values()) / len(blob),
        "max_over_eb": max(q.max_abs / q.bound for q in bounded) if bounded else math.nan,
        "within_bound": all(q.within_bound is not False for q in per_tensor.values()),
        "ks_laplace": p.laplace.ks, "ks_gauss": p.gaussian.ks, "ks_uniform": p.uniform.ks,
        "best_fit": p.best_fit or "", "corr_x": p.corr_x, "lag1": p.lag1,
        "exact_share": float(np.mean(x == y)),
        "zeroed_share": float(np.mean((y == 0) & (x != 0))),
    }


def available(labels: list[str]) -> tuple[list[str], dict[str, str]]:
    """The codecs that compress here, and why the others do not."""
    ok, missing = [], {}
    probe = np.linspace(-1, 1, 4096, dtype=np.float32)
    for label in labels:
        try:
            profile_row(probe, CODECS[label], 1e-2)
            ok.append(label)
        except Exception as exc:
            missing[label] = f"{type(exc).__name__}: {exc}"
            log(f"!! {label} unavailable: {missing[label]}")
    return ok, missing


# ------------------------------------------------------------------ metadata
def versions() -> dict[str, str]:
    v = {"python": platform.python_version()}
    for m in ("numpy", "fedpress", "numba", "pysz", "zfpy", "h5py", "hdf5plugin"):
        try:
            v[m] = version(m)
        except PackageNotFoundError:
            v[m] = "n/a"
    return v


def git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
        return commit + (" (src/ modified)" if dirty else "")
    except Exception:
        return "unknown"


# ------------------------------------------------------------------ summary
def _f(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _median(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}" if abs(v) < 10 else f"{v:.3g}"
    return str(v)


def _best(rows: list[dict[str, str]]) -> str:
    counts = Counter(r["best_fit"] for r in rows if r["best_fit"])
    return ", ".join(f"{fam} {counts[fam]}" for fam in ("uniform", "laplace", "gaussian")
                     if counts[fam]) or "-"


def summary(rows: list[dict[str, str]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Medians over the tensors of each group of ``keys``."""
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in rows:
        if r["note"]:
            continue
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        out.append({
            **dict(zip(keys, key)), "tensors": len(rs), "closest fit": _best(rs),
            "KS Laplace": _median([_f(r["ks_laplace"]) for r in rs]),
            "KS Gauss": _median([_f(r["ks_gauss"]) for r in rs]),
            "KS uniform": _median([_f(r["ks_uniform"]) for r in rs]),
            "b/eb": _median([_f(r["laplace_b_over_eb"]) for r in rs]),
            "sigma/eb": _median([_f(r["gauss_sigma_over_eb"]) for r in rs]),
            "max/eb": max(_f(r["max_over_eb"]) for r in rs),
            "exact": _median([_f(r["exact_share"]) for r in rs]),
            "zeroed": _median([_f(r["zeroed_share"]) for r in rs]),
            "corr(e,x)": _median([_f(r["corr_x"]) for r in rs]),
            "lag-1": _median([_f(r["lag1"]) for r in rs]),
        })
    return out


def markdown(rows: list[dict[str, str]], header: list[str]) -> str:
    cols = ["tensors", "closest fit", "KS Laplace", "KS Gauss", "KS uniform", "b/eb",
            "sigma/eb", "max/eb", "exact", "zeroed", "corr(e,x)", "lag-1"]
    out = ["# Error profiles of the error-bounded codecs", ""]
    out += [f"    {h.lstrip('# ')}" for h in header] + [""]
    single = [r for r in rows if r["tensor"] != "(all, pooled)"]
    pooled = [r for r in rows if r["tensor"] == "(all, pooled)"]
    out += ["## All classes (medians over tensors; max/eb: the largest)", ""]
    out.append(markdown_table(summary(single, ("codec", "rel")), ["codec", "rel", *cols], _fmt))
    if pooled:
        out += ["", "## Whole state dicts, fedsz plan, errors of all tensors pooled", ""]
        out.append(markdown_table(summary(pooled, ("data_class", "codec", "rel")),
                                  ["data_class", "codec", "rel", *cols], _fmt))
    for cls in dict.fromkeys(r["data_class"] for r in single):
        sel = [r for r in single if r["data_class"] == cls]
        out += ["", f"## {cls}", ""]
        out.append(markdown_table(summary(sel, ("codec", "rel")), ["codec", "rel", *cols],
                                  _fmt))
    return "\n".join(out)


def read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path) as f:
        lines = f.readlines()
    head = [ln.rstrip("\n") for ln in lines if ln.startswith("#")]
    return head, list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--markdown", default="", help="also write the summary tables here")
    ap.add_argument("--models", default="cnn")
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--rels", default=",".join(str(r) for r in RELS))
    ap.add_argument("--min-elems", type=int, default=1000)
    ap.add_argument("--pooled", default=",".join(POOLED),
                    help="lossy codecs of the whole-state-dict fedsz rows ('' = none)")
    ap.add_argument("--from-csv", default="", help="do not measure: only write --markdown")
    a = ap.parse_args(argv)

    if a.from_csv:
        if not a.markdown:
            ap.error("--from-csv needs --markdown")
        head, rows_s = read_csv(a.from_csv)
        with open(a.markdown, "w") as f:
            f.write(markdown(rows_s, head))
        log(f"wrote {a.markdown}")
        return 0

    unknown = [c for c in a.codecs.split(",") if c not in CODECS]
    if unknown:
        ap.error(f"unknown codec labels {unknown}; known: {','.join(CODECS)}")
    codecs, missing = available(a.codecs.split(","))
    rels = [float(r) for r in a.rels.split(",")]
    rows: list[dict[str, Any]] = []
    t_start = time.time()
    accuracy = {}
    for model in a.models.split(","):
        log_path = os.path.join(a.data, f"{model}_log.json")
        if os.path.exists(log_path):
            with open(log_path) as f:
                accuracy[model] = json.load(f)["rounds"][-1]["test_acc"]
        for cls in a.classes.split(","):
            path = os.path.join(a.data, f"{model}_{CLASSES[cls]}.npz")
            if not os.path.exists(path):
                log(f"!! missing {path}")
                continue
            tensors = load_tensors(path, a.min_elems)
            log(f"== {model} {cls}: {len(tensors)} tensors  [{time.time() - t_start:.0f}s]")
            for label in codecs:
                parts = []
                for rel in rels:
                    for name, x in tensors:
                        base = {"model": model, "data_class": cls, "tensor": name,
                                "shape": "x".join(map(str, x.shape)), "codec": label, "rel": rel}
                        try:
                            row = {**base, **profile_row(x, CODECS[label], rel), "note": ""}
                        except Exception as exc:
                            row = {**base, "note": f"ERROR {type(exc).__name__}: {exc}"}
                        rows.append(row)
                        parts.append(f"{rel:g} {name}: {row.get('best_fit', '?')} "
                                     f"KS-U {row.get('ks_uniform', math.nan):.3f} "
                                     f"KS-L {row.get('ks_laplace', math.nan):.3f}")
                log(f"   {label:13s} " + " | ".join(parts))
            with np.load(path) as npz:
                sd = {k: npz[k] for k in npz.files}
            for lossy in a.pooled.split(",") if a.pooled else ():
                for rel in rels:
                    base = {"model": model, "data_class": cls, "tensor": "(all, pooled)",
                            "shape": "", "codec": f"fedsz+{lossy}", "rel": rel}
                    try:
                        row = {**base, **pooled_row(sd, lossy, rel), "note": ""}
                    except Exception as exc:
                        row = {**base, "note": f"ERROR {type(exc).__name__}: {exc}"}
                    rows.append(row)
                    log(f"   fedsz+{lossy} {rel:g} pooled: {row.get('best_fit', '?')} "
                        f"KS-U {row.get('ks_uniform', math.nan):.3f} "
                        f"KS-L {row.get('ks_laplace', math.nan):.3f}")
    runtime = time.time() - t_start
    v = versions()
    header = [
        f"# error_profile.py results; machine: {machine()}",
        f"# date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"runtime {runtime:.0f}s; commit {git_commit()}",
        "# versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"# data: {a.data} from make_fl_data.py (FedAvg, Fashion-MNIST, 4 IID clients); final "
        "test accuracy " + ", ".join(f"{m} {acc:.4f}" for m, acc in accuracy.items()),
        f"# each float tensor >= {a.min_elems} elems, own shape, float32, compressed alone: "
        "fedpress.compress(x, codec, mode='rel', eb=rel); e = x - x' in float64; "
        "*_over_eb: divided by the frame's eb_abs; ks_*: Kolmogorov-Smirnov distance to the "
        "ML fit; corr_x: Pearson corr(e, x); lag1: lag-1 autocorrelation of e in C order; "
        "exact_share: share of values decoded exactly; zeroed_share: share of values x != 0 "
        "decoded as 0 (their error is the value itself)",
        "# codecs: " + "; ".join(f"{k} {json.dumps(CODECS[k])}" for k in codecs),
    ]
    header += [f"# unavailable codec {c}: {why}" for c, why in missing.items()]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", newline="") as f:
        for h in header:
            f.write(h + "\n")
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k, ""))
                        for k in FIELDS})
    log(f"wrote {a.out} ({len(rows)} rows) in {runtime:.0f}s")
    if a.markdown:
        head, rows_s = read_csv(a.out)
        with open(a.markdown, "w") as f:
            f.write(markdown(rows_s, head))
        log(f"wrote {a.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
