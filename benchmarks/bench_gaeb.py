#!/usr/bin/env python3
"""gaeb against sz3 / sz2 / fpz on streams of tensors, round after round.

Each codec instance runs through a whole stream in order with ONE
``fedpress.UpdateEncoder`` and ONE ``fedpress.UpdateDecoder`` (gaeb is stateful:
mirrored history per tensor name), every frame is decoded and every tensor checked
against its bound. Streams, per model (``cnn``, ``resnet18``; data from
``../shared/bench/make_fl_data.py`` in ``--data``):

``grad-iter``
    consecutive-iteration gradients: the round-5 global model
    (``{model}_global_r05.npz``) loaded into ``fedpress.sim.models``' network,
    10 consecutive SGD steps on Fashion-MNIST (``fedpress.sim.data``;
    batch 64, lr 0.01, momentum 0.9, seed 1234, images standardised with
    make_fl_data.py's mean 0.2860 / std 0.3530, train mode), the gradient of each
    step before its update. Cached in ``--streams-dir`` as
    ``{model}_griter_{i:02d}.npz``, regenerated only if missing.
``update``
    client 0's per-round updates ``update_r01..``.
``weights+ref``
    client 0's per-round weights ``w_r = global_r{r-1} + update_r``; gaeb codes
    them with ``reference = global_r{r-1}`` (the model the client started from),
    sz3 / sz2 / fpz code the same ``w_r`` WITHOUT a reference (the target
    comparison), and the rows ``sz3-ref`` / ``fpz-ref`` code it with the reference.

Only float tensors whose name contains ``weight`` with >= 1024 elements are in the
encoded dicts (plan ``{"default": "zstd", "re:.*weight": <codec config>}``), for all
codecs alike; the raw bytes are their float32 bytes.

Per (model, stream, codec, rel): per-round frame bytes, CR (raw / frame bytes),
encode and decode seconds (``UpdateEncoder.encode`` / ``UpdateDecoder.decode`` of
the whole frame, one pass: the stream is stateful); summaries over rounds 2..N
(round 1 has no history): geometric mean of the per-round CRs, geometric mean of
the per-round ratios to sz3 and to fpz (the baselines WITHOUT reference), the
smallest per-round ratio to fpz, encode / decode MB/s (total raw bytes / total
seconds), and encode / decode speed relative to raw SZ3 (pysz, ABS mode, OpenMP
off, each tensor flattened to 1-D, as ``peers.py``) on the same tensors (for
weights+ref: ``w_r``). Bound check: ``eb_abs = rel * (max - min)`` of the tensor
itself, ``|x - x'|`` in float64; violations = (round, tensor) pairs over it.
Single thread (thread env vars 1 before numpy; pinned to ``--cpu``).

Usage (from the project root)::

    python benchmarks/bench_gaeb.py                       # full run
    python benchmarks/bench_gaeb.py --quick --cpu 1       # smoke run (cnn, 4 rounds, 1e-2)
    python benchmarks/bench_gaeb.py --models resnet18 --streams update --rels 1e-3 \\
        --no-ablations --out /tmp/g.csv --markdown /tmp/g.md
    python benchmarks/bench_gaeb.py --from-csv .bench/gaeb.csv --markdown .bench/gaeb.md

Progress goes to stderr, one line per (model, stream, codec, rel).
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
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import fedpress  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import machine  # noqa: E402
from _table import markdown_table  # noqa: E402

DEFAULT_DATA = ".bench/data"
DEFAULT_STREAMS_DIR = ".bench/gaeb_streams"
STREAMS = ("grad-iter", "update", "weights+ref")
RELS = (1e-2, 1e-3, 1e-4)
MIN_ELEMS = 1024
# generation of grad-iter (make_fl_data.py's training settings)
GEN_GLOBAL_ROUND = 5
GEN_BATCH, GEN_LR, GEN_MOMENTUM, GEN_SEED = 64, 0.01, 0.9, 1234
GEN_STEPS = 10  # always this many (one cache whatever --rounds is)
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530

#: label -> (codec config, uses the stream's reference if it has one, only on streams
#: with a reference)
MAIN: dict[str, tuple[dict[str, Any], bool, bool]] = {
    "sz3": ({"id": "sz3"}, False, False),
    "sz2": ({"id": "sz2"}, False, False),
    "fpz": ({"id": "fpz"}, False, False),
    "sz3-ref": ({"id": "sz3"}, True, True),
    "fpz-ref": ({"id": "fpz"}, True, True),
    "gaeb": ({"id": "gaeb"}, True, False),
    "gaeb-paper": ({"id": "gaeb", "predictor": "paper"}, True, False),
    "gaeb-none": ({"id": "gaeb", "predictor": "none"}, True, False),
}
ABLATIONS: dict[str, tuple[dict[str, Any], bool, bool]] = {
    "gaeb-mag": ({"id": "gaeb", "features": "magnitude"}, True, False),
    "gaeb-sign": ({"id": "gaeb", "features": "sign"}, True, False),
    "gaeb-a0.07": ({"id": "gaeb", "alpha": 0.07}, True, False),
    "gaeb-a0.15": ({"id": "gaeb", "alpha": 0.15}, True, False),
    "gaeb-a0.6": ({"id": "gaeb", "alpha": 0.6}, True, False),
    "gaeb-a1.0": ({"id": "gaeb", "alpha": 1.0}, True, False),
}
CODECS = {**MAIN, **ABLATIONS}
RAW_SZ3 = "sz3 raw (pysz)"
#: the ablation table's rows (gaeb itself is features magnitude+sign, alpha 0.3)
ABLATION_ROWS = ("gaeb", "gaeb-mag", "gaeb-sign", "gaeb-a0.07", "gaeb-a0.15", "gaeb-a0.6",
                 "gaeb-a1.0", "gaeb-none", "gaeb-paper")
FIELDS = ["model", "stream", "codec", "config", "reference", "ablation", "rel", "rounds",
          "n_tensors", "n_elems", "raw_bytes_round", "cr_geo", "x_sz3", "x_fpz", "min_x_fpz",
          "enc_MBps", "dec_MBps", "enc_x_raw_sz3", "dec_x_raw_sz3", "violations",
          "viol_elems", "max_err_over_eb", "frame_bytes", "cr_rounds", "enc_s", "dec_s",
          "cell_s", "note"]
LIST_FIELDS = ("frame_bytes", "cr_rounds", "enc_s", "dec_s")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ streams
def lossy_names(sd: dict[str, np.ndarray]) -> list[str]:
    return [k for k, v in sd.items()
            if "weight" in k and np.issubdtype(v.dtype, np.floating) and v.size >= MIN_ELEMS]


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}  # (ascontiguousarray would make 0-d arrays 1-d)


def make_grad_iter(model: str, data_dir: str, out_dir: str, n: int) -> list[str]:
    """The ``n`` consecutive-step gradient files of ``model`` (generated if any is missing)."""
    paths = [os.path.join(out_dir, f"{model}_griter_{i:02d}.npz") for i in range(1, n + 1)]
    if all(os.path.exists(p) for p in paths):
        return paths
    import torch
    from torch.nn import functional

    from fedpress.sim.data import load_dataset
    from fedpress.sim.models import build_model

    t0 = time.time()
    torch.set_num_threads(2)
    ds = load_dataset("fashion-mnist")
    net = build_model(model, ds.input_shape, ds.num_classes)
    gpath = os.path.join(data_dir, f"{model}_global_r{GEN_GLOBAL_ROUND:02d}.npz")
    g = load_npz(gpath)
    sd = net.state_dict()
    if set(sd) != set(g) or any(tuple(sd[k].shape) != g[k].shape for k in sd):
        raise RuntimeError(f"{gpath}: keys/shapes differ from fedpress.sim.models' {model}: "
                           f"missing {sorted(set(sd) - set(g))[:5]}, extra "
                           f"{sorted(set(g) - set(sd))[:5]}")
    net.load_state_dict({k: torch.from_numpy(g[k]).to(sd[k].dtype) for k in sd})
    net.train()
    torch.manual_seed(GEN_SEED)
    idx = np.random.default_rng(GEN_SEED).permutation(len(ds.y_train))[:n * GEN_BATCH]
    x = torch.from_numpy((ds.x_train[idx].astype(np.float32) / 255.0 - FMNIST_MEAN)
                         / FMNIST_STD)
    y = torch.from_numpy(ds.y_train[idx])
    opt = torch.optim.SGD(net.parameters(), lr=GEN_LR, momentum=GEN_MOMENTUM)
    os.makedirs(out_dir, exist_ok=True)
    losses = []
    for i, path in enumerate(paths):
        opt.zero_grad(set_to_none=False)
        loss = functional.cross_entropy(net(x[i * GEN_BATCH:(i + 1) * GEN_BATCH]),
                                        y[i * GEN_BATCH:(i + 1) * GEN_BATCH])
        loss.backward()
        grads = {name: p.grad.detach().numpy().astype(np.float32).copy()
                 for name, p in net.named_parameters()}
        tmp = path[:-4] + ".tmp.npz"
        np.savez(tmp, **grads)
        os.replace(tmp, path)
        opt.step()
        losses.append(float(loss.item()))
    with open(os.path.join(out_dir, f"{model}_griter.json"), "w") as f:
        json.dump({"model": model, "start": gpath, "steps": n, "batch": GEN_BATCH,
                   "lr": GEN_LR, "momentum": GEN_MOMENTUM, "seed": GEN_SEED,
                   "normalise": [FMNIST_MEAN, FMNIST_STD], "losses": losses,
                   "torch": torch.__version__}, f, indent=1)
    log(f"   generated {n} grad-iter steps of {model} in {time.time() - t0:.1f}s "
        f"(losses {' '.join(f'{v:.3f}' for v in losses)})")
    return paths


class Stream:
    """Per round: the dict of lossy tensors, the reference dict (or None) and the
    per-tensor value ranges (for the bounds)."""

    def __init__(self, frames: list[dict[str, np.ndarray]],
                 refs: list[dict[str, np.ndarray]] | None) -> None:
        self.frames = frames
        self.refs = refs
        self.ranges = [{k: float(v.max()) - float(v.min()) for k, v in sd.items()}
                       for sd in frames]
        self.raw = [sum(v.nbytes for v in sd.values()) for sd in frames]
        self.n_tensors = len(frames[0])
        self.n_elems = sum(v.size for v in frames[0].values())


def load_stream(model: str, stream: str, rounds: int, data_dir: str, streams_dir: str
                ) -> Stream:
    def pick(sd: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(sd[k], dtype=np.float32) for k in names}

    if stream == "grad-iter":
        paths = make_grad_iter(model, data_dir, streams_dir, GEN_STEPS)[:rounds]
        sds = [load_npz(p) for p in paths]
        names = lossy_names(sds[0])
        return Stream([pick(sd, names) for sd in sds], None)
    if stream == "update":
        sds = [load_npz(os.path.join(data_dir, f"{model}_update_r{r:02d}.npz"))
               for r in range(1, rounds + 1)]
        names = lossy_names(sds[0])
        return Stream([pick(sd, names) for sd in sds], None)
    if stream == "weights+ref":
        frames, refs = [], []
        for r in range(1, rounds + 1):
            g = load_npz(os.path.join(data_dir, f"{model}_global_r{r - 1:02d}.npz"))
            u = load_npz(os.path.join(data_dir, f"{model}_update_r{r:02d}.npz"))
            names = lossy_names(g)
            ref = pick(g, names)
            refs.append(ref)
            frames.append({k: ref[k] + u[k].astype(np.float32) for k in names})
        return Stream(frames, refs)
    raise ValueError(f"unknown stream {stream!r}")


# ---------------------------------------------------------------- measuring
def plan_for(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"default": "zstd", "re:.*weight": dict(cfg)}


def run_codec(st: Stream, cfg: dict[str, Any], use_ref: bool, rel: float, rounds: int
              ) -> dict[str, Any]:
    """One encoder and one decoder through the first ``rounds`` frames of the stream."""
    enc = fedpress.UpdateEncoder(plan_for(cfg), "rel", rel)
    dec = fedpress.UpdateDecoder()
    sizes, etimes, dtimes = [], [], []
    viol = viol_elems = 0
    worst = 0.0
    for r in range(rounds):
        sd = st.frames[r]
        ref = st.refs[r] if (use_ref and st.refs is not None) else None
        t0 = time.perf_counter()
        blob = enc.encode(sd, reference=ref)
        t1 = time.perf_counter()
        out = dec.decode(blob, reference=ref)
        t2 = time.perf_counter()
        sizes.append(len(blob))
        etimes.append(t1 - t0)
        dtimes.append(t2 - t1)
        for k, x in sd.items():
            y = np.asarray(out[k])
            if y.shape != x.shape:
                raise RuntimeError(f"round {r + 1} {k}: decoded shape {y.shape} != {x.shape}")
            eb = rel * st.ranges[r][k]
            e = np.abs(np.subtract(y, x, dtype=np.float64))
            bad = int(np.count_nonzero(e > eb))
            viol += bad > 0
            viol_elems += bad
            m = float(e.max())
            worst = max(worst, m / eb if eb > 0 else (math.inf if m > 0 else 0.0))
    return {"frame_bytes": sizes, "enc_s": etimes, "dec_s": dtimes, "violations": viol,
            "viol_elems": viol_elems, "max_err_over_eb": worst}


_PYSZ: Any = None


def raw_sz3_pair() -> tuple[Any, Any]:
    """peers.py's sz3_pysz: ABS mode, default algorithm, OpenMP off, 1-D."""
    import pysz

    def c(x: np.ndarray, eb: float) -> Any:
        cfg = pysz.szConfig((x.size,))
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = float(eb)
        cfg.openmp = False
        out, _ = pysz.sz.compress(x, cfg)
        return out

    def d(blob: Any, n: int) -> np.ndarray:
        out, _ = pysz.sz.decompress(np.frombuffer(blob, dtype=np.uint8), np.float32, (n,))
        return out

    return c, d


def run_raw_sz3(st: Stream, rel: float, rounds: int) -> dict[str, Any]:
    c, d = raw_sz3_pair()
    sizes, etimes, dtimes = [], [], []
    viol = viol_elems = 0
    worst = 0.0
    for r in range(rounds):
        size = 0
        te = td = 0.0
        for k, x in st.frames[r].items():
            flat = x.reshape(-1)
            eb = rel * st.ranges[r][k]
            t0 = time.perf_counter()
            blob = c(flat, eb)
            t1 = time.perf_counter()
            y = d(blob, flat.size)
            t2 = time.perf_counter()
            te += t1 - t0
            td += t2 - t1
            size += len(blob)
            e = np.abs(np.subtract(np.asarray(y).reshape(-1), flat, dtype=np.float64))
            bad = int(np.count_nonzero(e > eb))
            viol += bad > 0
            viol_elems += bad
            worst = max(worst, float(e.max()) / eb if eb > 0 else 0.0)
        sizes.append(size)
        etimes.append(te)
        dtimes.append(td)
    return {"frame_bytes": sizes, "enc_s": etimes, "dec_s": dtimes, "violations": viol,
            "viol_elems": viol_elems, "max_err_over_eb": worst}


def warm_up(cfg: dict[str, Any], use_ref: bool) -> None:
    """Three rounds on small tensors so imports and JIT compilation are not timed."""
    rng = np.random.default_rng(0)
    base = {"a.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
            "b.weight": rng.standard_normal((64, 40)).astype(np.float32)}
    enc = fedpress.UpdateEncoder(plan_for(cfg), "rel", 1e-2)
    dec = fedpress.UpdateDecoder()
    for r in range(3):
        sd = {k: (v * (1 + 0.1 * r) + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
              for k, v in base.items()}
        ref = base if use_ref else None
        dec.decode(enc.encode(sd, reference=ref), reference=ref)


# ----------------------------------------------------------- summarising
def geomean(v: list[float]) -> float:
    return float(np.exp(np.mean(np.log(v)))) if v else math.nan


def summarise(rows: list[dict[str, Any]], raw_bytes: dict[tuple[str, str], list[int]]
              ) -> None:
    """Fill in the summary columns of every measured row (rounds 2..N)."""
    index = {(r["model"], r["stream"], r["codec"], float(r["rel"])): r
             for r in rows if r.get("frame_bytes")}
    for r in rows:
        if not r.get("frame_bytes"):
            continue
        raw = raw_bytes[(r["model"], r["stream"])]
        n = len(r["frame_bytes"])
        cr = [raw[i] / r["frame_bytes"][i] for i in range(n)]
        r["cr_rounds"] = cr
        later = range(1, n) if n > 1 else range(n)
        r["cr_geo"] = geomean([cr[i] for i in later])
        raw_later = sum(raw[i] for i in later)
        r["enc_MBps"] = raw_later / sum(r["enc_s"][i] for i in later) / 1e6
        r["dec_MBps"] = raw_later / sum(r["dec_s"][i] for i in later) / 1e6
        key = (r["model"], r["stream"])
        rel = float(r["rel"])
        for base, col in (("sz3", "x_sz3"), ("fpz", "x_fpz")):
            b = index.get((*key, base, rel))
            if b is None or len(b["frame_bytes"]) < n:
                r[col] = math.nan
                if col == "x_fpz":
                    r["min_x_fpz"] = math.nan
                continue
            ratios = [b["frame_bytes"][i] / r["frame_bytes"][i] for i in later]
            r[col] = geomean(ratios)
            if col == "x_fpz":
                r["min_x_fpz"] = min(ratios)
        s = index.get((*key, RAW_SZ3, rel))
        if s is not None and len(s["enc_s"]) >= n:
            r["enc_x_raw_sz3"] = (sum(s["enc_s"][i] for i in later)
                                  / sum(r["enc_s"][i] for i in later))
            r["dec_x_raw_sz3"] = (sum(s["dec_s"][i] for i in later)
                                  / sum(r["dec_s"][i] for i in later))
        else:
            r["enc_x_raw_sz3"] = r["dec_x_raw_sz3"] = math.nan


# --------------------------------------------------------------- metadata
def versions() -> dict[str, str]:
    v = {"python": platform.python_version()}
    for m in ("fedpress", "numpy", "pysz", "hdf5plugin", "numba", "torch"):
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


# ------------------------------------------------------------------- output
def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    if isinstance(v, list):
        return ";".join(fmt(x, 6) for x in v)
    return str(v)


def write_csv(path: str, header: list[str], rows: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        for h in header:
            f.write(h + "\n")
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: fmt(r.get(k, ""), 10 if k == "max_err_over_eb" else 5)
                        for k in FIELDS})
    os.replace(tmp, path)


def read_csv(path: str) -> tuple[list[str], list[dict[str, Any]]]:
    with open(path) as f:
        lines = f.readlines()
    head = [ln.rstrip("\n") for ln in lines if ln.startswith("#")]
    rows: list[dict[str, Any]] = []
    for r in csv.DictReader(ln for ln in lines if not ln.startswith("#")):
        row: dict[str, Any] = dict(r)
        for k in LIST_FIELDS:
            row[k] = [float(x) for x in r[k].split(";")] if r.get(k) else []
        rows.append(row)
    return head, rows


def _cell(v: Any, kind: str) -> str:
    f = _num(v)
    if math.isnan(f):
        return "-" if kind != "int" else str(v)
    if kind == "cr":
        return f"{f:.3g}" if f < 100 else f"{f:.0f}"
    if kind == "ratio":
        return f"{f:.3f}"
    if kind == "speed":
        return f"{f:.0f}" if f >= 10 else f"{f:.1f}"
    return f"{int(f)}"


def markdown(rows: list[dict[str, Any]], header: list[str]) -> str:
    out = ["# gaeb on streams of FL tensors, round after round", ""]
    out += [f"    {h.lstrip('# ')}" for h in header] + [""]
    ok = [r for r in rows if r.get("frame_bytes")]
    keys = list(dict.fromkeys((r["stream"], r["model"]) for r in ok))
    cols = ["codec", "REL", "CR geomean r2-N", "x sz3", "x fpz", "min x fpz", "enc MB/s",
            "dec MB/s", "enc x raw SZ3", "violations"]
    gaeb_min: list[tuple[float, str]] = []
    for stream, model in keys:
        sel = [r for r in ok if r["stream"] == stream and r["model"] == model
               and str(r.get("ablation")) in ("0", "False", "")]
        if not sel:
            continue
        n = max(len(r["frame_bytes"]) for r in sel)
        out += [f"## {stream} / {model} ({sel[0]['n_tensors']} tensors, {sel[0]['n_elems']} "
                f"values, rounds 2-{n})", ""]
        table = []
        for r in sorted(sel, key=lambda r: -float(r["rel"])):
            ref = " (ref)" if str(r.get("reference")) in ("1", "True") else ""
            table.append({
                "codec": r["codec"] + ref, "REL": f"{float(r['rel']):g}",
                "CR geomean r2-N": _cell(r.get("cr_geo"), "cr"),
                "x sz3": _cell(r.get("x_sz3"), "ratio"), "x fpz": _cell(r.get("x_fpz"), "ratio"),
                "min x fpz": _cell(r.get("min_x_fpz"), "ratio"),
                "enc MB/s": _cell(r.get("enc_MBps"), "speed"),
                "dec MB/s": _cell(r.get("dec_MBps"), "speed"),
                "enc x raw SZ3": _cell(r.get("enc_x_raw_sz3"), "ratio"),
                "violations": _cell(r.get("violations"), "int")})
        out += [markdown_table(table, cols).replace("r2-N", f"r2-{n}")]
    for r in ok:  # main and ablation rows
        if r["codec"].startswith("gaeb") and not math.isnan(_num(r.get("min_x_fpz"))):
            gaeb_min.append((float(r["min_x_fpz"]),
                             f"{r['stream']}/{r['model']}/{r['codec']}/{float(r['rel']):g}"))
    # ablations: CR geomean (x fpz) per stream/model, at the rels the ablations ran
    abl = [r for r in ok if r["codec"] in ABLATIONS]
    if abl:
        arels = sorted({float(r["rel"]) for r in abl}, reverse=True)
        out += ["## Ablations: CR geomean rounds 2-N (x fpz, geomean of per-round ratios)",
                "", "gaeb = context predictor, features magnitude+sign, alpha 0.3; -mag / "
                "-sign: one feature only; -aX: alpha X; gaeb-none / gaeb-paper for scale. "
                "weights+ref: all with the reference.", ""]
        for rel in arels:
            table = []
            ncols = []
            for stream, model in keys:
                rr = {r["codec"]: r for r in ok if r["stream"] == stream and r["model"] == model
                      and float(r["rel"]) == rel}
                if not any(c in rr for c in ABLATIONS):
                    continue
                n = max(len(r["frame_bytes"]) for r in rr.values() if r["codec"] in ABLATIONS)
                ncols.append((f"{model} {stream} (r2-{n})", rr))
            for codec in ABLATION_ROWS:
                row = {"variant": codec, "REL": f"{rel:g}"}
                for name, rr in ncols:
                    hit = rr.get(codec)
                    row[name] = ("-" if hit is None else f"{_cell(hit.get('cr_geo'), 'cr')} "
                                 f"({_cell(hit.get('x_fpz'), 'ratio')})")
                table.append(row)
            out += [markdown_table(table, ["variant", "REL", *[c for c, _ in ncols]])]
        out += ["(Ablation rows may cover fewer rounds than the main tables, see --ablation-rounds "
                "in the header; their x fpz is over the same rounds.)", ""]
    if gaeb_min:
        lo = min(gaeb_min)
        below = [s for v, s in sorted(gaeb_min) if v < 1.0]
        out += [f"**Smallest per-round CR ratio gaeb* / fpz over all gaeb rows: {lo[0]:.4f} "
                f"({lo[1]}); rows with a round below fpz: {len(below)}"
                + (f" ({', '.join(below[:12])}{', ...' if len(below) > 12 else ''})" if below
                   else "") + "**", ""]
    viol = [(r["stream"], r["model"], r["codec"], r["rel"]) for r in ok
            if _num(r.get("violations")) > 0]
    out += [f"Bound violations: {len(viol)} rows" + (f": {viol}" if viol else " (none)"), ""]
    errs = [f"{r['stream']}/{r['model']}/{r['codec']}/{r['rel']}: {r['note']}" for r in rows
            if str(r.get("note", "")).startswith("ERROR")]
    if errs:
        out += ["Errors:", ""] + [f"- {e}" for e in errs] + [""]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--streams-dir", default=DEFAULT_STREAMS_DIR,
                    help="where the grad-iter gradients are cached")
    ap.add_argument("--out", default=".bench/gaeb.csv")
    ap.add_argument("--markdown", default=".bench/gaeb.md")
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--streams", default=",".join(STREAMS))
    ap.add_argument("--codecs", default=",".join(MAIN),
                    help=f"comma list of main rows ({','.join(MAIN)}); sz3 and fpz are the "
                         "baselines of the ratio columns; raw SZ3 always runs")
    ap.add_argument("--rels", default=",".join(f"{r:g}" for r in RELS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--ablations", default=",".join(ABLATIONS),
                    help=f"ablation rows ({','.join(ABLATIONS)}); '' = none")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--ablation-rels", default="1e-3",
                    help="bounds the ablations run at ('all' = --rels)")
    ap.add_argument("--ablation-rounds", type=int, default=0,
                    help="rounds for the ablation rows (0 = --rounds)")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: no pinning)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: cnn only, 4 rounds, REL 1e-2 (ablations at 1e-2 too)")
    ap.add_argument("--from-csv", default="", help="do not measure: re-render --markdown")
    a = ap.parse_args(argv)

    if a.from_csv:
        head, rows_s = read_csv(a.from_csv)
        with open(a.markdown, "w") as f:
            f.write(markdown(rows_s, head))
        log(f"wrote {a.markdown}")
        return 0
    if a.quick:
        a.models, a.rounds, a.rels, a.ablation_rels = "cnn", 4, "1e-2", "1e-2"
    if not 1 <= a.rounds <= 10:
        ap.error("--rounds must be 1..10 (the bench data has 10 rounds)")
    rels = [float(r) for r in a.rels.split(",") if r]
    arels = rels if a.ablation_rels == "all" else [float(r) for r in a.ablation_rels.split(",")
                                                   if r]
    arounds = a.ablation_rounds or a.rounds
    if not 1 <= arounds <= a.rounds:
        ap.error("--ablation-rounds must be 1..--rounds")
    main_codecs = [c for c in a.codecs.split(",") if c]
    abl_codecs = [] if a.no_ablations else [c for c in a.ablations.split(",") if c]
    for c in main_codecs:
        if c not in MAIN:
            ap.error(f"unknown codec {c!r}; choose from {', '.join(MAIN)}")
    for c in abl_codecs:
        if c not in ABLATIONS:
            ap.error(f"unknown ablation {c!r}; choose from {', '.join(ABLATIONS)}")
    streams = [s for s in a.streams.split(",") if s]
    for s in streams:
        if s not in STREAMS:
            ap.error(f"unknown stream {s!r}; choose from {', '.join(STREAMS)}")
    models = [m for m in a.models.split(",") if m]

    commit = git_commit()
    date = datetime.datetime.now(datetime.UTC)
    v = versions()
    mach = machine()
    log(f"# bench_gaeb.py, commit {commit}, {date:%Y-%m-%d %H:%M} UTC")
    log("# versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    log(f"# machine: {mach}")

    t_start = time.time()
    # generate the grad-iter streams first (torch, 2 threads), then pin and time
    if "grad-iter" in streams:
        for m in models:
            make_grad_iter(m, a.data, a.streams_dir, GEN_STEPS)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    for c in dict.fromkeys(main_codecs + abl_codecs):
        cfg, use_ref, _ = CODECS[c]
        warm_up(cfg, False)
        if use_ref:
            warm_up(cfg, True)
    c_raw, d_raw = raw_sz3_pair()
    d_raw(c_raw(np.random.default_rng(0).standard_normal(4096).astype(np.float32), 1e-2), 4096)

    rows: list[dict[str, Any]] = []
    raw_bytes: dict[tuple[str, str], list[int]] = {}

    def header(runtime: float) -> list[str]:
        return [
            f"# bench_gaeb.py; date {date:%Y-%m-%d %H:%M} UTC; commit {commit}; runtime "
            f"{runtime:.0f}s; single thread pinned to cpu {a.cpu}; MB = 1e6 bytes",
            "# versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"# machine: {mach}",
            f"# models {','.join(models)}; streams {','.join(streams)}; rels "
            f"{','.join(f'{r:g}' for r in rels)}; rounds {a.rounds}; ablations "
            f"{','.join(abl_codecs) or 'none'} at rels {','.join(f'{r:g}' for r in arels)} "
            f"over {arounds} rounds",
            "# each codec: one UpdateEncoder + one UpdateDecoder through the stream in order "
            "(stateful), plan {default: zstd, re:.*weight: codec}, only float tensors named "
            f"*weight* with >= {MIN_ELEMS} values encoded; CR = their raw float32 bytes / frame "
            "bytes; summaries over rounds 2..N: CR geomean, x sz3 / x fpz = geomean of "
            "per-round CR ratios to sz3 / fpz WITHOUT reference, min x fpz = smallest per-round "
            "ratio; MB/s = raw bytes / seconds of UpdateEncoder.encode / UpdateDecoder.decode "
            "(one pass), enc x raw SZ3 = raw SZ3 seconds / codec seconds (pysz, ABS, 1-D, same "
            "tensors); violations = (round, tensor) pairs with |x - x'| > rel * (max - min) of x "
            "(float64)",
            f"# streams: grad-iter = {GEN_STEPS} consecutive SGD-step gradients from the round-5 "
            f"global model (fedpress.sim.models, Fashion-MNIST via fedpress.sim.data standardised "
            f"with mean {FMNIST_MEAN} std {FMNIST_STD}, batch {GEN_BATCH}, lr {GEN_LR}, momentum "
            f"{GEN_MOMENTUM}, seed {GEN_SEED}, cached in {a.streams_dir}); "
            "update = client 0's update_r01..; weights+ref = global_r{r-1} + update_r, gaeb* and "
            "*-ref rows with reference global_r{r-1}, sz3/sz2/fpz without",
        ]

    def flush() -> None:
        summarise(rows, raw_bytes)
        head = header(time.time() - t_start)
        write_csv(a.out, head, rows)
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write(markdown(rows, head))

    for model in models:
        for stream in streams:
            t_load = time.time()
            st = load_stream(model, stream, a.rounds, a.data, a.streams_dir)
            raw_bytes[(model, stream)] = st.raw
            log(f"== {model} {stream}: {st.n_tensors} tensors, {st.n_elems} values "
                f"({st.raw[0] / 1e6:.2f} MB per round), {a.rounds} rounds, loaded in "
                f"{time.time() - t_load:.1f}s  [{time.time() - t_start:.0f}s]")
            base = {"model": model, "stream": stream, "n_tensors": st.n_tensors,
                    "n_elems": st.n_elems, "raw_bytes_round": st.raw[0]}
            cells: list[tuple[str, bool, float, int]] = []
            for rel in rels:
                cells.append((RAW_SZ3, False, rel, a.rounds))
                cells += [(c, False, rel, a.rounds) for c in main_codecs]
            for rel in arels:
                cells += [(c, True, rel, arounds) for c in abl_codecs]
            for codec, is_abl, rel, n in cells:
                if codec in CODECS:
                    cfg, use_ref, ref_only = CODECS[codec]
                    if ref_only and st.refs is None:
                        continue
                    use_ref = use_ref and st.refs is not None
                else:
                    cfg, use_ref = {"id": "pysz"}, False
                t_c = time.time()
                row = dict(base, codec=codec, config=json.dumps(cfg, sort_keys=True),
                           reference=int(use_ref), ablation=int(is_abl), rel=rel, rounds=n)
                try:
                    res = (run_raw_sz3(st, rel, n) if codec == RAW_SZ3
                           else run_codec(st, cfg, use_ref, rel, n))
                    row.update(res, note="")
                except Exception as e:
                    row["note"] = f"ERROR {type(e).__name__}: {e}"
                row["cell_s"] = time.time() - t_c
                rows.append(row)
                summarise(rows, raw_bytes)
                if row.get("frame_bytes"):
                    msg = (f"CR {row['cr_geo']:.3f} x sz3 {fmt(row['x_sz3'])} x fpz "
                           f"{fmt(row['x_fpz'])} min x fpz {fmt(row['min_x_fpz'])} enc "
                           f"{row['enc_MBps']:.1f} dec {row['dec_MBps']:.1f} MB/s viol "
                           f"{row['violations']} err/eb {row['max_err_over_eb']:.4f}")
                else:
                    msg = row["note"]
                log(f"   [{time.time() - t_start:6.0f}s] {model} {stream} {codec:12s} "
                    f"rel={rel:g}{' ref' if use_ref else ''} ({row['cell_s']:.1f}s): {msg}")
            del st
            flush()
    flush()
    log(f"wrote {a.out} ({len(rows)} rows) and {a.markdown} in {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
