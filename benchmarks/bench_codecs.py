#!/usr/bin/env python3
"""Benchmark every fedpress codec on real federated-learning tensors.

Data: the npz files that ``../shared/bench/make_fl_data.py`` writes
(``{cnn,resnet18}_{global_r10,update_r01,...,grad_r10}.npz`` in ``--data``).
The methodology is that of ``../shared/bench/peers.py``, so the numbers can be
set beside its reference figures:

* per data class (final weights, client updates at rounds 1/5/10, last-batch
  gradients at rounds 1/5/10), per model, per codec, per value-range-relative
  bound ``rel`` (error-bounded codecs; lossless codecs run once);
* every tensor with ``>= --min-elems`` elements, flattened to 1-D float32;
* ``eb_abs = rel * (max - min)`` computed here (exactly peers.py's bound) and
  given to ``fedpress.compress(x, codec=c, mode="abs", eb=eb_abs)``;
* CR = sum of original bytes / sum of full frame bytes (headers, codec config
  and checksum included); compress / decompress MB/s = original bytes / time,
  median of ``--runs`` (MB = 1e6 B); max |x - x'| / eb_abs in float64; tensors
  and elements over the bound; patches (values the encode-time check stored
  exactly, from ``fedpress.inspect``);
* single thread: OMP/BLAS/blosc thread counts are 1 and the process is pinned
  to one CPU (``--cpu``).

It also encodes each WHOLE state dict with FedSZ
(``fedpress.encode_update(sd, plan="fedsz-paper", eb=rel)``: SZ2 + blosc-lz,
and with ``lossy="sz3"``/``"fpz"``): CR of the update frame against the raw
float32 bytes of all tensors, encode and decode seconds.

Usage (from the project root)::

    python benchmarks/bench_codecs.py --runs 3 --out .bench/fedpress_codecs.csv \\
        --markdown .bench/fedpress_codecs.md
    python benchmarks/bench_codecs.py --models cnn --classes update_r05 --codecs sz3,zstd --runs 1
    python benchmarks/bench_codecs.py --from-csv .bench/fedpress_codecs.csv --markdown x.md

Progress goes to stderr, one line per (model, class, codec).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLOSC_NTHREADS",
           "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import fedpress  # noqa: E402
from fedpress.verify import compare  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import machine  # noqa: E402

DEFAULT_DATA = ".bench/data"
DEFAULT_OUT = ".bench/fedpress_codecs.csv"
DEFAULT_REF = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                           "shared", "bench", "results_peers.csv")
RELS = (1e-2, 1e-3, 1e-4)
CLASSES = {
    "weights_final": "global_r10",
    "update_r01": "update_r01",
    "update_r05": "update_r05",
    "update_r10": "update_r10",
    "grad_r01": "grad_r01",
    "grad_r05": "grad_r05",
    "grad_r10": "grad_r10",
}
EB_CODECS = ("fpz", "sz3", "sz2", "zfp", "szx")
LOSSLESS_CODECS = ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4")
#: codecs slow enough that fewer runs are taken (runs actually used go to the CSV)
SLOW_RUNS = {"xz": 1}
FEDSZ_LOSSY = ("sz2", "sz3", "fpz")
FIELDS = ["model", "data_class", "codec", "kind", "rel", "n_tensors", "n_elems", "orig_MB",
          "frame_bytes", "overhead_bytes", "cr", "bits_per_value", "comp_MBps", "decomp_MBps",
          "comp_s", "decomp_s", "max_err_over_eb", "violations", "viol_elems", "patches",
          "runs", "worst_tensor", "note"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ helpers
def eb_for(x: np.ndarray, rel: float) -> float:
    """peers.py's bound: rel * (max - min); constant tensors fall back to rel * |x0| (or rel)."""
    rng = float(x.max()) - float(x.min())
    if rng > 0:
        return rel * rng
    a = float(abs(x[0]))
    return rel * (a if a > 0 else 1.0)


def load_tensors(path: str, min_elems: int) -> tuple[list[tuple[str, np.ndarray]], int]:
    npz = np.load(path)
    out, small = [], 0
    for k in npz.files:
        a = np.ascontiguousarray(npz[k], dtype=np.float32).ravel()
        if a.size >= min_elems:
            out.append((k, a))
        else:
            small += a.size
    return out, small


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    npz = np.load(path)
    return {k: np.ascontiguousarray(npz[k]) for k in npz.files}


def codec_kind(cid: str) -> str:
    cls = fedpress.get_codec(cid).__class__
    if cls.error_bounded:
        return "eb"
    return "lossy" if cls.lossy else "lossless"


def measure(cid: str, kind: str, tensors: list[tuple[str, np.ndarray]], rel: float | None,
            runs: int, cell_budget: float) -> dict[str, Any]:
    """peers.py's measure() with fedpress.compress / decompress, plus patches and overhead."""
    ebs = [eb_for(x, rel) if rel is not None else 0.0 for _, x in tensors]
    orig = sum(x.nbytes for _, x in tensors)
    comp = payload = patches = 0
    ctimes: list[float] = []
    dtimes: list[float] = []
    max_ratio, viol, viol_elems, worst = 0.0, 0, 0, ""
    note = ""
    for r in range(runs):
        tc = td = 0.0
        for (name, x), eb in zip(tensors, ebs):
            t0 = time.perf_counter()
            if kind == "lossless":
                blob = fedpress.compress(x, codec=cid)
            else:
                blob = fedpress.compress(x, codec=cid, mode="abs", eb=eb)
            t1 = time.perf_counter()
            y = fedpress.decompress(blob, fedpress.trusting(cid))  # its own frames
            t2 = time.perf_counter()
            tc += t1 - t0
            td += t2 - t1
            if r == 0:
                comp += len(blob)
                info = fedpress.inspect(blob)
                t = info["tensors"][0]
                payload += t["payload_bytes"]
                patches += int(t.get("patches", 0))
                y = np.asarray(y, dtype=np.float32).ravel()
                if y.size != x.size:
                    raise RuntimeError(f"{name}: decoded {y.size} != {x.size} elements")
                e = np.abs(y.astype(np.float64) - x.astype(np.float64))
                err = float(e.max())
                if kind == "lossless":
                    ratio = 0.0 if err == 0.0 else math.inf
                    bad = int(np.count_nonzero(e))
                else:
                    ratio = err / eb
                    bad = int(np.count_nonzero(e > eb))
                viol += bad > 0
                viol_elems += bad
                if ratio > max_ratio:
                    max_ratio, worst = ratio, name
        ctimes.append(tc)
        dtimes.append(td)
        if r == 0 and runs > 1 and (tc + td) * (runs - 1) > cell_budget:
            note = (f"runs=1: first run took {tc + td:.1f}s, more would exceed "
                    f"--cell-budget {cell_budget:g}s")
            break
    tc, td = statistics.median(ctimes), statistics.median(dtimes)
    return {"frame_bytes": comp, "overhead_bytes": comp - payload, "cr": orig / comp,
            "bits_per_value": 32.0 * comp / orig, "comp_MBps": orig / tc / 1e6,
            "decomp_MBps": orig / td / 1e6, "comp_s": tc, "decomp_s": td,
            "max_err_over_eb": max_ratio, "violations": viol, "viol_elems": viol_elems,
            "patches": patches, "runs": len(ctimes), "worst_tensor": worst, "note": note}


def measure_fedsz(sd: dict[str, np.ndarray], lossy: str, rel: float, runs: int,
                  ) -> dict[str, Any]:
    """FedSZ on a whole state dict: one update frame, CR vs raw bytes, encode/decode time."""
    orig = sum(v.nbytes for v in sd.values())
    etimes: list[float] = []
    dtimes: list[float] = []
    res: dict[str, Any] = {}
    for r in range(runs):
        t0 = time.perf_counter()
        blob = fedpress.encode_update(sd, plan="fedsz-paper", eb=rel, lossy=lossy)
        t1 = time.perf_counter()
        out = fedpress.decode_update(blob, fedpress.trusting("fedsz-paper", lossy=lossy))
        t2 = time.perf_counter()
        etimes.append(t1 - t0)
        dtimes.append(t2 - t1)
        if r == 0:
            info = fedpress.inspect(blob)
            max_ratio, viol, viol_elems, patches, worst, n_lossy = 0.0, 0, 0, 0, "", 0
            payload = 0
            for t in info["tensors"]:
                payload += t["payload_bytes"]
                name = t["name"]
                # error-bounded tensors against their eb_abs; the lossless part bit-exact
                check = compare(sd[name], out[name], t.get("eb_abs"))
                bad, ratio = check.violations, check.ratio
                if "eb_abs" in t:
                    n_lossy += 1
                    patches += int(t.get("patches", 0))
                viol += bad > 0
                viol_elems += bad
                if ratio > max_ratio:
                    max_ratio, worst = ratio, name
            res = {"frame_bytes": len(blob), "overhead_bytes": len(blob) - payload,
                   "max_err_over_eb": max_ratio, "violations": viol, "viol_elems": viol_elems,
                   "patches": patches, "worst_tensor": worst,
                   "note": (f"whole state dict, {n_lossy} tensors via {lossy} (rel {rel:g}), "
                            f"{len(info['tensors']) - n_lossy} via blosc-lz; CR vs raw float32 "
                            "bytes of every tensor; comp_s/decomp_s = encode_update/decode_update")}
    te, td = statistics.median(etimes), statistics.median(dtimes)
    res.update({"cr": orig / res["frame_bytes"], "bits_per_value": 32.0 * res["frame_bytes"] / orig,
                "comp_MBps": orig / te / 1e6, "decomp_MBps": orig / td / 1e6,
                "comp_s": te, "decomp_s": td, "runs": runs})
    return res


def warm_up(cid: str, kind: str) -> None:
    """One small round trip per codec so imports and first-call set-up are not timed."""
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    if kind == "lossless":
        fedpress.decompress(fedpress.compress(x, codec=cid), fedpress.trusting(cid))
    else:
        fedpress.decompress(fedpress.compress(x, codec=cid, mode="abs", eb=1e-2),
                            fedpress.trusting(cid))


# --------------------------------------------------------------- metadata
def versions() -> dict[str, str]:
    v = {"python": platform.python_version()}
    for m in ("numpy", "fedpress", "numba", "pysz", "zfpy", "h5py", "hdf5plugin", "blosc2",
              "zstandard", "lz4"):
        try:
            v[m] = version(m)
        except PackageNotFoundError:
            v[m] = "n/a"
    try:
        import h5py

        v["hdf5"] = h5py.version.hdf5_version
    except Exception:
        pass
    try:
        import zstandard

        v["libzstd"] = ".".join(map(str, zstandard.ZSTD_VERSION))
    except Exception:
        pass
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        v["fedpress_commit"] = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            check=True, timeout=10).stdout.strip()
    except Exception:
        pass
    return v


def fmt(v: Any, digits: int = 4) -> Any:
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    return v


# --------------------------------------------------------------- markdown
def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _rel_key(v: Any) -> float | None:
    f = _num(v)
    return None if f is None else float(f"{f:.6g}")


def read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    with open(path) as f:
        lines = f.readlines()
    head = [ln.rstrip("\n") for ln in lines if ln.startswith("#")]
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    return head, rows


def markdown(rows: list[dict[str, Any]], header: list[str], ref_rows: list[dict[str, str]],
             ) -> str:
    """Summary tables: CR per codec (one table per rel), lossless CR, FedSZ rows, speed."""
    out: list[str] = ["# fedpress codecs on FL tensors", ""]
    out += [f"    {h.lstrip('# ')}" for h in header]
    out.append("")
    ok = [r for r in rows if _num(r.get("cr")) is not None]
    keys: list[tuple[str, str]] = []
    for r in ok:
        k = (r["model"], r["data_class"])
        if k not in keys:
            keys.append(k)
    eb = [c for c in dict.fromkeys(r["codec"] for r in ok if r["kind"] in ("eb", "lossy"))]
    ll = [c for c in dict.fromkeys(r["codec"] for r in ok if r["kind"] == "lossless")]
    fz = [c for c in dict.fromkeys(r["codec"] for r in ok if r["kind"] == "update")]
    cr: dict[tuple[str, str, str, float | None], float] = {}
    for r in ok:
        cr[(r["model"], r["data_class"], r["codec"], _rel_key(r.get("rel")))] = float(r["cr"])
    ref: dict[tuple[str, str, float | None], float] = {}
    for r in ref_rows:
        if r.get("codec") == "sz3_pysz" and _num(r.get("cr")) is not None:
            ref[(r["model"], r["data_class"], _rel_key(r["rel"]))] = float(r["cr"])
    rel_set: set[float] = set()
    for r in ok:
        rk = _rel_key(r.get("rel"))
        if r["kind"] != "lossless" and rk is not None:
            rel_set.add(rk)
    rels: list[float | None] = [*sorted(rel_set, reverse=True)]

    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.3g}" if v < 100 else f"{v:.0f}"

    for rel in rels:
        out += [f"## CR at rel {rel:g} (per-tensor frames, tensors >= 1000 elements)", ""]
        cols = [*eb]
        hdr = ["model / class", *cols]
        vs_sz3 = "fpz" in cols and "sz3" in cols
        if vs_sz3:
            hdr.append("fpz / sz3")
        if ref:
            hdr += ["SZ3 ref (pysz, results_peers.csv)", "sz3 / ref"]
        hdr += [f"FedSZ {c.split('+')[0].replace('fedsz_', '')} (whole sd)" for c in fz]
        out += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for m, c in keys:
            vals = [cell(cr.get((m, c, k, rel))) for k in cols]
            if vs_sz3:
                a, b = cr.get((m, c, "fpz", rel)), cr.get((m, c, "sz3", rel))
                vals.append(f"{a / b:.3f}" if a and b else "")
            if ref:
                rv = ref.get((m, c, rel))
                mine = cr.get((m, c, "sz3", rel))
                vals += [cell(rv), f"{mine / rv:.3f}" if rv and mine else ""]
            vals += [cell(cr.get((m, c, k, rel))) for k in fz]
            out.append(f"| {m} / {c} | " + " | ".join(vals) + " |")
        out.append("")
    pairs = [cr[(m, c, "fpz", rel)] / cr[(m, c, "sz3", rel)] for m, c in keys for rel in rels
             if cr.get((m, c, "fpz", rel)) and cr.get((m, c, "sz3", rel))]
    if pairs:
        g = float(np.exp(np.mean(np.log(pairs))))
        out += [f"**fpz / sz3 CR over {len(pairs)} (model, class, rel) cells: geometric mean "
                f"{g:.3f}, min {min(pairs):.3f}, max {max(pairs):.3f}**", ""]
    if ll:
        out += ["## CR of the lossless codecs (per-tensor frames)", "",
                "| model / class | " + " | ".join(ll) + " |", "|" + "---|" * (len(ll) + 1)]
        for m, c in keys:
            out.append(f"| {m} / {c} | "
                       + " | ".join(cell(cr.get((m, c, k, None))) for k in ll) + " |")
        out.append("")
    # speed: per model, total original bytes / total median time over all classes
    agg: dict[tuple[str, str, float | None], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    worst: dict[tuple[str, float | None], float] = defaultdict(float)
    viol: dict[tuple[str, float | None], int] = defaultdict(int)
    patches: dict[tuple[str, float | None], int] = defaultdict(int)
    models = list(dict.fromkeys(m for m, _ in keys))
    for r in ok:
        if _num(r.get("comp_s")) is None:
            continue
        acc = agg[(r["model"], r["codec"], _rel_key(r.get("rel")))]
        acc[0] += float(r["orig_MB"])
        acc[1] += float(r["comp_s"])
        acc[2] += float(r["decomp_s"])
        kk = (r["codec"], _rel_key(r.get("rel")))
        worst[kk] = max(worst[kk], _num(r.get("max_err_over_eb")) or 0.0)
        viol[kk] += int(float(r.get("violations") or 0))
        patches[kk] += int(float(r.get("patches") or 0))
    out += ["## Speed (single thread, MB/s = original MB / median seconds, summed over all "
            "classes of the model) and bound check over all classes", "",
            "| codec | rel | " + " | ".join(f"{m} C MB/s | {m} D MB/s" for m in models)
            + " | max err/eb | tensors over eb | patches |",
            "|" + "---|" * (2 + 2 * len(models) + 3)]
    for codec in [*eb, *ll, *fz]:
        for rel in ([None] if codec in ll else rels):
            if not any((m, codec, rel) in agg for m in models):
                continue
            speeds: list[str] = []
            for m in models:
                tot = agg.get((m, codec, rel))
                speeds += ([f"{tot[0] / tot[1]:.0f}", f"{tot[0] / tot[2]:.0f}"] if tot
                           else ["", ""])
            w = worst[(codec, rel)]
            ws = "exact" if codec in ll and w == 0.0 else f"{w:.10g}"
            out.append(f"| {codec} | {'-' if rel is None else f'{rel:g}'} | " + " | ".join(speeds)
                       + f" | {ws} | {viol[(codec, rel)]} | {patches[(codec, rel)]} |")
    out.append("")
    notes = sorted({f"{r['codec']}: {r['note']}" for r in rows
                    if r.get("note") and (r["note"].startswith("runs=") or "ERROR" in r["note"])})
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--markdown", default="", help="also write a markdown summary to this file")
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--codecs", default="all",
                    help="comma list of fedpress codec ids, or 'all' "
                         f"({','.join(EB_CODECS + LOSSLESS_CODECS)})")
    ap.add_argument("--rels", default=",".join(str(r) for r in RELS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-elems", type=int, default=1000)
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: no pinning)")
    ap.add_argument("--cell-budget", type=float, default=60.0,
                    help="if one run of a (codec, rel, class) cell takes so long that the "
                         "remaining runs would exceed this many seconds, take one run only")
    ap.add_argument("--fedsz-lossy", default=",".join(FEDSZ_LOSSY),
                    help="lossy codecs for the whole-state-dict FedSZ rows ('' = none)")
    ap.add_argument("--ref", default=DEFAULT_REF,
                    help="peers.py CSV whose sz3_pysz CRs the markdown shows beside fedpress's")
    ap.add_argument("--from-csv", default="",
                    help="do not measure: only write --markdown from this CSV")
    a = ap.parse_args(argv)

    ref_rows: list[dict[str, str]] = []
    if a.ref and os.path.exists(a.ref):
        ref_rows = read_csv(a.ref)[1]
    if a.from_csv:
        head, rows_s = read_csv(a.from_csv)
        if not a.markdown:
            ap.error("--from-csv needs --markdown")
        with open(a.markdown, "w") as f:
            f.write(markdown(list(rows_s), head, ref_rows))
        log(f"wrote {a.markdown}")
        return 0

    have = set(fedpress.list_codecs())
    wanted = list(EB_CODECS + LOSSLESS_CODECS) if a.codecs == "all" else a.codecs.split(",")
    unavailable = {c: "not registered in this fedpress (list_codecs())"
                   for c in wanted if c not in have}
    codecs: list[tuple[str, str]] = []
    for c in wanted:
        if c in unavailable:
            log(f"!! codec {c} unavailable: {unavailable[c]}")
            continue
        try:
            kind = codec_kind(c)
            warm_up(c, kind)
        except Exception as e:
            unavailable[c] = f"{type(e).__name__}: {e}"
            log(f"!! codec {c} unavailable: {unavailable[c]}")
            continue
        codecs.append((c, kind))
    fedsz_lossy = [c for c in a.fedsz_lossy.split(",") if c]
    for c in list(fedsz_lossy):
        if c not in have:
            fedsz_lossy.remove(c)
            unavailable[f"fedsz+{c}"] = "lossy codec not registered"
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    rels = [float(r) for r in a.rels.split(",")]
    rows: list[dict[str, Any]] = []
    t_start = time.time()
    for model in a.models.split(","):
        for cls in a.classes.split(","):
            path = os.path.join(a.data, f"{model}_{CLASSES[cls]}.npz")
            if not os.path.exists(path):
                log(f"!! missing {path}")
                continue
            tensors, small = load_tensors(path, a.min_elems)
            n = sum(x.size for _, x in tensors)
            base = {"model": model, "data_class": cls, "n_tensors": len(tensors), "n_elems": n,
                    "orig_MB": n * 4 / 1e6}
            log(f"== {model} {cls}: {len(tensors)} tensors, {n} elems ({n * 4 / 1e6:.2f} MB); "
                f"{small} elems in smaller tensors not compressed  [{time.time() - t_start:.0f}s]")
            for cid, kind in codecs:
                t_c = time.time()
                runs = min(a.runs, SLOW_RUNS.get(cid, a.runs))
                parts = []
                for rel in (rels if kind != "lossless" else [None]):
                    try:
                        res = measure(cid, kind, tensors, rel, runs, a.cell_budget)
                        if runs < a.runs and not res["note"]:
                            res["note"] = f"runs={runs} (slow codec; --runs {a.runs} elsewhere)"
                        row = dict(base, codec=cid, kind=kind,
                                   rel=rel if rel is not None else "", **res)
                        flag = "!VIOL" if res["violations"] and kind != "lossy" else ""
                        parts.append(f"{'-' if rel is None else f'{rel:g}'}: CR {res['cr']:.3f} "
                                     f"C {res['comp_MBps']:.0f} D {res['decomp_MBps']:.0f} MB/s "
                                     f"err/eb {res['max_err_over_eb']:.4f} "
                                     f"patch {res['patches']}{flag}")
                    except Exception as e:
                        row = dict(base, codec=cid, kind=kind,
                                   rel=rel if rel is not None else "",
                                   note=f"ERROR {type(e).__name__}: {e}")
                        parts.append(f"ERROR {type(e).__name__}: {e}")
                    rows.append(row)
                log(f"   {model} {cls} {cid:10s} ({time.time() - t_c:5.1f}s) " + " | ".join(parts))
            if fedsz_lossy:
                sd = load_state_dict(path)
                n_all = sum(v.size for v in sd.values())
                fbase = {"model": model, "data_class": cls, "n_tensors": len(sd),
                         "n_elems": n_all, "orig_MB": sum(v.nbytes for v in sd.values()) / 1e6}
                for lossy in fedsz_lossy:
                    t_c = time.time()
                    name = f"fedsz_{lossy}+blosc-lz"
                    parts = []
                    for rel in rels:
                        try:
                            res = measure_fedsz(sd, lossy, rel, a.runs)
                            row = dict(fbase, codec=name, kind="update", rel=rel, **res)
                            parts.append(f"{rel:g}: CR {res['cr']:.3f} enc {res['comp_s']:.3f}s "
                                         f"dec {res['decomp_s']:.3f}s "
                                         f"err/eb {res['max_err_over_eb']:.4f}")
                        except Exception as e:
                            row = dict(fbase, codec=name, kind="update", rel=rel,
                                       note=f"ERROR {type(e).__name__}: {e}")
                            parts.append(f"ERROR {type(e).__name__}: {e}")
                        rows.append(row)
                    log(f"   {model} {cls} {name} ({time.time() - t_c:5.1f}s) "
                        + " | ".join(parts))
    runtime = time.time() - t_start
    v = versions()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    header = [
        f"# bench_codecs.py results; machine: {machine()}",
        f"# date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"runtime {runtime:.0f}s; runs={a.runs} (median; fewer where the note says); "
        f"single thread pinned to cpu {a.cpu}; MB = 1e6 bytes",
        "# versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"# eb_abs = rel * (max - min) per tensor (computed by the benchmark, passed as "
        f"mode='abs'); tensors >= {a.min_elems} elems, flattened 1-D float32; data: {a.data}; "
        "frame_bytes = full fedpress frames; overhead_bytes = frame bytes minus codec payloads",
    ]
    header += [f"# unavailable codec {c}: {why}" for c, why in unavailable.items()]
    with open(a.out, "w", newline="") as f:
        for h in header:
            f.write(h + "\n")
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: fmt(r.get(k, ""), 10 if k == "max_err_over_eb" else 4)
                        for k in FIELDS})
    log(f"wrote {a.out} ({len(rows)} rows) in {runtime:.0f}s")
    if a.markdown:
        _, rows_s = read_csv(a.out)
        with open(a.markdown, "w") as f:
            f.write(markdown(list(rows_s), header, ref_rows))
        log(f"wrote {a.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
