#!/usr/bin/env python3
"""The fpz engine against its peers, side by side in one run: bytes, speed, bound.

Peers: SZ3 (pysz, ABS mode, each tensor flattened to 1-D, OpenMP off) and, when
its separate virtual environment exists (``scripts/nncodec_env.sh``), NNCodec
2.1.3, the reference implementation of MPEG NNC (ISO/IEC 15938-17, DeepCABAC),
driven through ``benchmarks/nncodec_worker.py`` in a subprocess with settings that
keep the error bound (plain rounding, no dependent quantization, ``qp_density=7``,
one step per tensor <= 2 eb_abs; see the worker). fedpress codecs: ``fpz`` and
``gaeb`` by default, any registered codec id with ``--codecs`` (stateless codecs
through ``fedpress.compress(x, codec, mode="abs", eb=eb_abs)``, one frame per
tensor; stateful ones such as ``gaeb`` through a fresh ``UpdateEncoder`` /
``UpdateDecoder`` per pass, one update frame for all the tensors, mode ``rel``,
which is the same ``rel * (max - min)`` bound per tensor). Reference: the order-0
entropy of fpz-style quantization codes ``q = rint(x / 2 eb_abs)`` per tensor
(``h0_codes``) and of the better of no prediction / 1-D Lorenzo per tensor
(``h0_pred``), as bytes.

Sections (``--sections``, all by default):

``classes``
    per model, data class and bound ``rel`` (``eb_abs = rel * (max - min)`` per
    tensor), every float tensor with ``>= --min-elems`` elements of the class's
    state dict, coded flat: total bytes of each codec, ratios to SZ3 and to
    NNCodec, max error / eb_abs and tensors / values over the bound, and the
    single-thread speed of compressing and decompressing the whole state dict as
    ratios to SZ3 (best of ``--runs``, passes interleaved, the order rotated
    each run).
``sizes``
    single-thread speed at ``--sizes`` elements (10^4 .. 10^7) on synthetic
    Laplace-like gradients and on real tensors (a class's tensors concatenated,
    tiled if short, cut to the size), as ratios to SZ3 in the same run
    (interleaved, best of ``--runs``; small sizes repeat each pass to >= 20 ms).
``workers``
    the whole ResNet-18 state dict with ``--workers`` threads (a thread pool over
    tensors, largest first) against one thread, per codec, interleaved, best of
    ``--runs``: the scaling that the engine's own release of the GIL allows.

Speed figures are ratios to a peer measured in the same process, interleaved,
never absolute numbers from another run (absolute MB/s are in the CSV for context).
Single-thread sections pin the process (and the NNCodec worker) to ``--cpu``, set
every thread-count variable (NUMBA_NUM_THREADS, OMP, BLAS, ...) to 1 and time in
process CPU seconds (``--clock cpu``, the default: on cores shared with other jobs,
wall time mostly measures the wait for a core; ``--clock wall`` on an idle machine).
The workers section is timed in wall seconds.

Data: ``../shared/bench/make_fl_data.py`` (``cnn``, ``resnet18``) and
``benchmarks/make_untuned_data.py`` (``vggbn``: a model no codec was tuned on) in
``--data``; a missing model is skipped with a note.

Usage (from the project root)::

    bash scripts/nncodec_env.sh /work/nnc-venv              # once, optional peer
    python benchmarks/bench_engine.py --nncodec-python /work/nnc-venv/bin/python \\
        --out .bench/engine.csv --markdown .bench/engine.md
    python benchmarks/bench_engine.py --models cnn --sections classes --rels 1e-3 --runs 1
    python benchmarks/bench_engine.py --codecs fpz,gaeb,NEWID ...   # a new engine's id
    python benchmarks/bench_engine.py --from-csv .bench/engine.csv --markdown engine.md

To measure a commit while the working tree holds uncommitted changes, export it into a
directory of your own and put it first on the path (the header then names the COMMIT)::

    EXPORT=$(mktemp -d)
    git archive HEAD src | tar -x -C "$EXPORT"
    git rev-parse HEAD > "$EXPORT/COMMIT"
    PYTHONPATH="$EXPORT/src" python benchmarks/bench_engine.py ...

Progress goes to stderr.
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
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import fedpress  # noqa: E402
from fedpress.errors import ConfigError  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _env import machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "nncodec_worker.py")
DEFAULT_NNC_PY = "/work/nnc-venv/bin/python"
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
CLASS_RE = re.compile(r"^(weights|update|grad)_r(\d\d)$")
SZ3, NNC = "sz3", "nncodec"
H0_CODES, H0_PRED = "h0_codes", "h0_pred"
#: a timed pass is repeated until it has taken at least this long (small sizes)
MIN_PASS_S = 0.02
FIELDS = ["section", "model", "data_class", "source", "size", "rel", "codec", "n_tensors",
          "n_elems", "orig_bytes", "comp_bytes", "cr", "bytes_vs_sz3", "bytes_vs_nncodec",
          "comp_s", "decomp_s", "comp_MBps", "decomp_MBps", "comp_vs_sz3", "decomp_vs_sz3",
          "workers", "comp_speedup", "decomp_speedup", "max_err_over_eb", "violations",
          "viol_elems", "runs", "note"]


#: the timer of every single-thread figure: process CPU seconds by default (a shared
#: machine's other load does not enter them), wall seconds with ``--clock wall``
_CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
_clock: Callable[[], float] = time.process_time
_CLOCK_NAME = ["cpu"]


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ data
def class_file(model: str, cls: str) -> str:
    """The npz name of a data class: ``CLASSES``, or ``weights_rXX`` / ``update_rXX`` /
    ``grad_rXX`` for any round (``weights`` = the global state dict after round XX)."""
    stem = CLASSES.get(cls)
    if stem is None:
        m = CLASS_RE.match(cls)
        if m is None:
            raise ValueError(f"unknown data class {cls!r}: one of {', '.join(CLASSES)} or "
                             "weights_rXX / update_rXX / grad_rXX")
        kind = "global" if m.group(1) == "weights" else m.group(1)
        stem = f"{kind}_r{m.group(2)}"
    return f"{model}_{stem}.npz"


def eb_for(x: np.ndarray, rel: float) -> float:
    """``rel * (max - min)``; a constant tensor falls back to ``rel * |x0|`` (or ``rel``)."""
    rng = float(x.max()) - float(x.min())
    if rng > 0:
        return rel * rng
    a = float(abs(x[0]))
    return rel * (a if a > 0 else 1.0)


def load_tensors(path: str, min_elems: int) -> list[tuple[str, np.ndarray]]:
    """Every float tensor of an npz with ``>= min_elems`` elements, as flat float32."""
    npz = np.load(path, allow_pickle=False)
    out = []
    for k in npz.files:
        a = npz[k]
        if a.dtype.kind == "f" and a.size >= min_elems:
            out.append((k, np.ascontiguousarray(a, dtype=np.float32).reshape(-1)))
    return out


def laplace_like(n: int, seed: int = 0) -> np.ndarray:
    """Synthetic gradient-like values: Laplace with a scale that varies by block.

    Blocks of 4096 values get a log-normal scale (sigma 0.7) around 1e-3, like the
    rows of different layers; 5% of the values are exact zeros (inactive units).
    """
    rng = np.random.default_rng(seed)
    blocks = -(-n // 4096)
    scale = 1e-3 * np.exp(0.7 * rng.standard_normal(blocks))
    x = rng.laplace(0.0, 1.0, n) * np.repeat(scale, 4096)[:n]
    x[rng.random(n) < 0.05] = 0.0
    return x.astype(np.float32)


def real_of_size(tensors: Sequence[tuple[str, np.ndarray]], n: int) -> np.ndarray:
    """The class's tensors concatenated (tiled if shorter than ``n``), cut to ``n``."""
    flat = np.concatenate([x for _, x in tensors])
    if flat.size < n:
        flat = np.tile(flat, -(-n // flat.size))
    return np.ascontiguousarray(flat[:n])


# ------------------------------------------------------------------ entropy
def _h0(codes: np.ndarray) -> float:
    """Order-0 Shannon entropy (bits per symbol) of an integer array."""
    lo, hi = int(codes.min()), int(codes.max())
    if hi - lo < 50_000_000:
        cnt = np.bincount(codes - lo)
        cnt = cnt[cnt > 0]
    else:
        _, cnt = np.unique(codes, return_counts=True)
    p = cnt / codes.size
    return float(-(p * np.log2(p)).sum())


def entropy_bytes(tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
                  ) -> tuple[float, float]:
    """Bytes at the order-0 entropy of ``rint(x / 2eb)`` (no prediction; best of none
    and 1-D Lorenzo), summed over tensors."""
    codes = pred = 0.0
    for (_, x), eb in zip(tensors, ebs):
        q = np.rint(x.astype(np.float64) / (2.0 * eb)).astype(np.int64)
        h_none = _h0(q)
        h_lor = _h0(np.diff(q, prepend=0))
        codes += h_none * x.size / 8.0
        pred += min(h_none, h_lor) * x.size / 8.0
    return codes, pred


# ------------------------------------------------------------------ codecs
@dataclass
class Pass:
    """One compress + decompress pass over a list of tensors."""

    comp_bytes: int
    comp_s: float
    decomp_s: float
    outputs: list[np.ndarray] | None = None  # decoded tensors, when asked for


class Codec:
    """A codec the benchmark drives: a pass over tensors with their bounds."""

    name = ""
    note = ""

    def run(self, tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
            rel: float, keep: bool) -> Pass:
        """Compress then decompress all ``tensors``; decoded outputs if ``keep``."""
        raise NotImplementedError

    def compress_one(self, x: np.ndarray, eb: float) -> Any:
        """One tensor's compressed form (for the workers section)."""
        raise NotImplementedError

    def decompress_one(self, blob: Any, n: int) -> np.ndarray:
        """One tensor back from :meth:`compress_one`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the codec holds (a subprocess)."""


class FedpressCodec(Codec):
    """A stateless fedpress codec, one frame per tensor."""

    def __init__(self, cid: str) -> None:
        self.name = cid
        self.trusted = fedpress.trusting(cid)
        self.note = f"fedpress.compress(x, {cid!r}, mode='abs', eb=eb_abs), one frame per tensor"

    def compress_one(self, x: np.ndarray, eb: float) -> bytes:
        return fedpress.compress(x, codec=self.name, mode="abs", eb=eb)

    def decompress_one(self, blob: Any, n: int) -> np.ndarray:
        return fedpress.decompress(blob, self.trusted)

    def run(self, tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
            rel: float, keep: bool) -> Pass:
        c = self.compress_one
        t0 = _clock()
        blobs = [c(x, eb) for (_, x), eb in zip(tensors, ebs)]
        t1 = _clock()
        d = self.decompress_one
        outs = [d(b, x.size) for b, (_, x) in zip(blobs, tensors)]
        t2 = _clock()
        return Pass(sum(len(b) for b in blobs), t1 - t0, t2 - t1, outs if keep else None)


class FedpressStateful(Codec):
    """A stateful fedpress codec (``gaeb``): one update frame, fresh state per pass."""

    def __init__(self, cid: str) -> None:
        self.name = cid
        self.note = (f"UpdateEncoder({{'default': {cid!r}}}, 'rel', rel), one update frame per "
                     "pass, first round (no history)")

    def run(self, tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
            rel: float, keep: bool) -> Pass:
        sd = {name: x for name, x in tensors}
        enc = fedpress.UpdateEncoder({"default": self.name}, "rel", rel)
        dec = fedpress.UpdateDecoder()
        t0 = _clock()
        blob = enc.encode(sd)
        t1 = _clock()
        out = dec.decode(blob)
        t2 = _clock()
        outs = [np.asarray(out[name]).reshape(-1) for name, _ in tensors] if keep else None
        return Pass(len(blob), t1 - t0, t2 - t1, outs)


class Sz3Codec(Codec):
    """SZ3 through pysz: ABS mode, 1-D, OpenMP off."""

    name = SZ3

    def __init__(self) -> None:
        import pysz

        self.pysz = pysz
        self.note = f"pysz {version('pysz')} ABS mode, 1-D, openmp off"

    def compress_one(self, x: np.ndarray, eb: float) -> np.ndarray:
        pysz = self.pysz
        cfg = pysz.szConfig((x.size,))
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = float(eb)
        cfg.openmp = False
        return pysz.sz.compress(x, cfg)[0]

    def decompress_one(self, blob: Any, n: int) -> np.ndarray:
        return self.pysz.sz.decompress(blob, np.float32, (n,))[0]

    def run(self, tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
            rel: float, keep: bool) -> Pass:
        c = self.compress_one
        t0 = _clock()
        blobs = [c(x, eb) for (_, x), eb in zip(tensors, ebs)]
        t1 = _clock()
        d = self.decompress_one
        outs = [d(b, x.size) for b, (_, x) in zip(blobs, tensors)]
        t2 = _clock()
        return Pass(sum(int(b.nbytes) for b in blobs), t1 - t0, t2 - t1,
                    outs if keep else None)


class NncodecCodec(Codec):
    """NNCodec in a subprocess of its own venv (``nncodec_worker.py``)."""

    name = NNC

    def __init__(self, python: str, cpu: int, tmp: str) -> None:
        env = dict(os.environ)
        env["NNC_WORKER_CPU"] = "" if cpu < 0 else str(cpu)
        self.tmp = tmp
        self.errlog = open(os.path.join(tmp, "nncodec_worker.log"), "w")
        self.proc = subprocess.Popen([python, WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errlog, text=True,
                                     env=env, bufsize=1)
        hello = self._ask({"op": "hello"})
        self.versions: dict[str, str] = hello["versions"]
        self.note = (f"NNCodec {self.versions.get('nncodec')} (numpy "
                     f"{self.versions.get('numpy')}): one nnc.compress call per pass, flat "
                     f"tensors, qp_density={hello['qp_density']}, use_dq=False, lambda_scale=0, "
                     "per-tensor qp: largest step <= 2 eb_abs less float32 rounding; times "
                     "measured inside the worker")
        self._written: dict[int, list[str]] = {}

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"NNCodec worker exited (see {self.errlog.name})")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise RuntimeError(f"NNCodec worker: {ans.get('error')}")
        return ans

    def _paths(self, tensors: Sequence[tuple[str, np.ndarray]]) -> list[str]:
        """The tensors as .npy files (written once per list of tensors)."""
        key = id(tensors)
        if key not in self._written:
            d = tempfile.mkdtemp(dir=self.tmp)
            paths = []
            for i, (_, x) in enumerate(tensors):
                p = os.path.join(d, f"in{i}.npy")
                np.save(p, x, allow_pickle=False)
                paths.append(p)
            self._written[key] = paths
        return self._written[key]

    def forget(self) -> None:
        """Delete the .npy files written so far."""
        for paths in self._written.values():
            if paths:
                shutil.rmtree(os.path.dirname(paths[0]), ignore_errors=True)
        self._written.clear()

    def run(self, tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
            rel: float, keep: bool) -> Pass:
        paths = self._paths(tensors)
        out_dir = tempfile.mkdtemp(dir=self.tmp) if keep else None
        req = {"op": "run", "runs": 1, "out_dir": out_dir, "clock": _CLOCK_NAME[0],
               "tensors": [{"name": f"t{i}", "path": p, "eb": float(eb)}
                           for i, (p, eb) in enumerate(zip(paths, ebs))]}
        ans = self._ask(req)
        outs = None
        if out_dir:
            outs = [np.load(os.path.join(out_dir, f"t{i}.npy"), allow_pickle=False)
                    for i in range(len(tensors))]
            shutil.rmtree(out_dir, ignore_errors=True)
        return Pass(int(ans["bytes"]), min(ans["comp_s"]), min(ans["decomp_s"]), outs)

    def close(self) -> None:
        try:
            self._ask({"op": "quit"})
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.errlog.close()
        self.forget()


def make_fedpress(cid: str) -> Codec:
    """The driver for a fedpress codec id (stateless or stateful)."""
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    try:
        c: Codec = FedpressCodec(cid)
        y = c.decompress_one(c.compress_one(x, 1e-2), x.size)
    except ConfigError as exc:
        if "state" not in str(exc):
            raise
        c = FedpressStateful(cid)
        y = c.run([("probe", x)], [eb_for(x, 1e-2)], 1e-2, True).outputs[0]  # type: ignore[index]
    if np.asarray(y).size != x.size:
        raise RuntimeError(f"{cid}: probe decoded {np.asarray(y).size} values")
    return c


# ------------------------------------------------------------------ measuring
def check(tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
          outs: Sequence[np.ndarray]) -> tuple[float, int, int]:
    """Max error / eb over the tensors (float64), tensors and values over the bound."""
    worst, viol, elems = 0.0, 0, 0
    for (name, x), eb, y in zip(tensors, ebs, outs):
        y = np.asarray(y).reshape(-1)
        if y.size != x.size:
            raise RuntimeError(f"{name}: decoded {y.size} values, expected {x.size}")
        e = np.abs(y.astype(np.float64) - x.astype(np.float64))
        bad = int(np.count_nonzero(~(e <= eb)))  # NaN counts as over
        worst = max(worst, float(np.max(e)) / eb if e.size else 0.0)
        viol += bad > 0
        elems += bad
    return worst, viol, elems


@dataclass
class Cell:
    """Best-of-N results of one codec on one list of tensors."""

    comp_bytes: int = 0
    comp_s: float = math.inf
    decomp_s: float = math.inf
    runs: int = 0
    max_err_over_eb: float = 0.0
    violations: int = 0
    viol_elems: int = 0
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def interleaved(codecs: Sequence[Codec], tensors: Sequence[tuple[str, np.ndarray]],
                ebs: Sequence[float], rel: float, runs: int, min_pass_s: float = 0.0,
                max_runs: dict[str, int] | None = None) -> dict[str, Cell]:
    """Every codec, ``runs`` rounds, the order rotated each round; best time per codec.

    The first round keeps the decoded tensors and checks them against the bound.
    With ``min_pass_s``, a pass faster than that is repeated (``reps`` times, the
    count fixed by the first round) and its time divided by ``reps``. ``max_runs``
    caps the rounds of some codecs (a slow peer whose speed is not a target).
    """
    cells = {c.name: Cell() for c in codecs}
    reps = {c.name: 1 for c in codecs}
    cap = max_runs or {}
    for r in range(runs):
        k = r % len(codecs)
        for c in list(codecs[k:]) + list(codecs[:k]):
            cell = cells[c.name]
            if cell.error or r >= cap.get(c.name, runs):
                continue
            try:
                if r == 0:
                    p = c.run(tensors, ebs, rel, True)
                    cell.comp_bytes = p.comp_bytes
                    assert p.outputs is not None
                    cell.max_err_over_eb, cell.violations, cell.viol_elems = check(
                        tensors, ebs, p.outputs)
                    if min_pass_s > 0:
                        reps[c.name] = max(1, math.ceil(min_pass_s / max(
                            1e-9, min(p.comp_s, p.decomp_s))))
                    if reps[c.name] > 1:
                        p = _repeated(c, tensors, ebs, rel, reps[c.name])
                else:
                    p = _repeated(c, tensors, ebs, rel, reps[c.name])
            except Exception as exc:  # one failing codec must not stop the others
                cell.error = f"ERROR {type(exc).__name__}: {exc}"
                continue
            cell.comp_s = min(cell.comp_s, p.comp_s)
            cell.decomp_s = min(cell.decomp_s, p.decomp_s)
            cell.runs += 1
            if reps[c.name] > 1:
                cell.extra["reps"] = reps[c.name]
    return cells


def _repeated(c: Codec, tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
              rel: float, reps: int) -> Pass:
    """``reps`` passes; the mean time of one (bytes of the last)."""
    tc = td = 0.0
    p = Pass(0, 0.0, 0.0)
    for _ in range(reps):
        p = c.run(tensors, ebs, rel, False)
        tc += p.comp_s
        td += p.decomp_s
    return Pass(p.comp_bytes, tc / reps, td / reps)


def rows_of(cells: dict[str, Cell], base: dict[str, Any], orig: int, notes: dict[str, str],
            ) -> list[dict[str, Any]]:
    """CSV rows of one interleaved cell set, with ratios to SZ3 and NNCodec."""
    sz3 = cells.get(SZ3)
    nnc = cells.get(NNC)
    out = []
    for name, c in cells.items():
        row = dict(base, codec=name, orig_bytes=orig, note=c.error or notes.get(name, ""))
        if c.error:
            out.append(row)
            continue
        row.update(comp_bytes=c.comp_bytes, cr=orig / c.comp_bytes if c.comp_bytes else math.inf,
                   comp_s=c.comp_s, decomp_s=c.decomp_s, comp_MBps=orig / c.comp_s / 1e6,
                   decomp_MBps=orig / c.decomp_s / 1e6, max_err_over_eb=c.max_err_over_eb,
                   violations=c.violations, viol_elems=c.viol_elems, runs=c.runs)
        if "reps" in c.extra:
            row["note"] = (row["note"] + "; " if row["note"] else "") + \
                f"each timed pass repeated {c.extra['reps']}x"
        if sz3 is not None and not sz3.error:
            row.update(bytes_vs_sz3=c.comp_bytes / sz3.comp_bytes,
                       comp_vs_sz3=sz3.comp_s / c.comp_s, decomp_vs_sz3=sz3.decomp_s / c.decomp_s)
        if nnc is not None and not nnc.error and nnc.comp_bytes:
            row["bytes_vs_nncodec"] = c.comp_bytes / nnc.comp_bytes
        out.append(row)
    return out


def h0_rows(tensors: Sequence[tuple[str, np.ndarray]], ebs: Sequence[float],
            base: dict[str, Any], orig: int, cells: dict[str, Cell]) -> list[dict[str, Any]]:
    """The entropy reference rows (bytes only)."""
    hc, hp = entropy_bytes(tensors, ebs)
    out = []
    for name, b, what in ((H0_CODES, hc, "order-0 entropy of q = rint(x / 2eb), no prediction"),
                          (H0_PRED, hp, "order-0 entropy, best of none / Lorenzo-1D per tensor")):
        row = dict(base, codec=name, orig_bytes=orig, comp_bytes=round(b), cr=orig / b,
                   note=what + " (reference, no headers)")
        sz3, nnc = cells.get(SZ3), cells.get(NNC)
        if sz3 is not None and not sz3.error:
            row["bytes_vs_sz3"] = b / sz3.comp_bytes
        if nnc is not None and not nnc.error and nnc.comp_bytes:
            row["bytes_vs_nncodec"] = b / nnc.comp_bytes
        out.append(row)
    return out


def pin(cpus: set[int] | None) -> None:
    """Pin the process to ``cpus`` (None: leave it)."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)


def workers_cell(codec: Codec, tensors: Sequence[tuple[str, np.ndarray]],
                 ebs: Sequence[float], workers: int, runs: int, pool: ThreadPoolExecutor,
                 ) -> tuple[list[float], list[float]]:
    """Best compress / decompress seconds with 1 and ``workers`` threads, interleaved."""
    order = sorted(range(len(tensors)), key=lambda i: -tensors[i][1].size)
    items = [(tensors[i][1], ebs[i]) for i in order]
    comp = [math.inf, math.inf]
    decomp = [math.inf, math.inf]

    def c1(item: tuple[np.ndarray, float]) -> Any:
        return codec.compress_one(item[0], item[1])

    for r in range(runs):
        for j in ((0, 1) if r % 2 == 0 else (1, 0)):
            mapper: Callable[..., Any] = map if j == 0 else pool.map
            t0 = time.perf_counter()  # wall: CPU time cannot show parallel speed-up
            blobs = list(mapper(c1, items))
            t1 = time.perf_counter()
            outs = list(mapper(codec.decompress_one, blobs, [x.size for x, _ in items]))
            t2 = time.perf_counter()
            comp[j] = min(comp[j], t1 - t0)
            decomp[j] = min(decomp[j], t2 - t1)
            if r == 0 and j == 1:
                worst, viol, _ = check([("", x) for x, _ in items], [e for _, e in items],
                                       outs)
                if viol:
                    raise RuntimeError(f"{viol} tensors over the bound with {workers} workers "
                                       f"(max err/eb {worst:.4g})")
    return comp, decomp


# ------------------------------------------------------------------ metadata
def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()


def fedpress_source() -> dict[str, str]:
    """Where the measured fedpress was imported from, and which commit that is.

    From the repository's ``src/``: HEAD and how many files under ``src/`` differ
    from it (uncommitted work is measured too). From elsewhere (an exported tree,
    see ``--help``): the hash in a ``COMMIT`` file beside its ``src/``, if any.
    """
    pkg = os.path.dirname(os.path.abspath(fedpress.__file__))
    src = os.path.dirname(pkg)
    out = {"fedpress_imported_from": pkg}
    try:
        if os.path.realpath(src) == os.path.realpath(os.path.join(ROOT, "src")):
            out["fedpress_commit"] = _git("rev-parse", "--short", "HEAD")
            dirty = [ln for ln in _git("status", "--porcelain", "--", "src").splitlines()
                     if ln.strip()]
            out["src_worktree"] = ("clean" if not dirty else
                                   f"{len(dirty)} files under src/ differ from the commit "
                                   "(measured as they are)")
        else:
            mark = os.path.join(os.path.dirname(src), "COMMIT")
            out["fedpress_commit"] = (Path(mark).read_text().strip()[:12] if os.path.exists(mark)
                                      else "unknown (exported tree without a COMMIT file)")
            out["repo_head"] = _git("rev-parse", "--short", "HEAD")
    except Exception:
        pass
    return out


def versions(nnc: NncodecCodec | None) -> dict[str, str]:
    """Versions of everything measured and the commit of the measured fedpress."""
    v = {"python": platform.python_version()}
    for m in ("numpy", "fedpress", "numba", "pysz"):
        try:
            v[m] = version(m)
        except PackageNotFoundError:
            v[m] = "n/a"
    if nnc is not None:
        v["nncodec"] = nnc.versions.get("nncodec", "?")
        v["nncodec_numpy"] = nnc.versions.get("numpy", "?")
        v["nncodec_python"] = nnc.versions.get("python", "?")
    v.update(fedpress_source())
    return v


def fmt(v: Any, digits: int = 4) -> Any:
    """A CSV cell: floats to ``digits`` significant digits."""
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    return v


# ------------------------------------------------------------------ markdown
def _f(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """The ``#`` header lines and the rows of a CSV this script wrote."""
    with open(path) as f:
        lines = f.readlines()
    head = [ln.rstrip("\n") for ln in lines if ln.startswith("#")]
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    return head, rows


def _gmean(xs: Sequence[float]) -> float:
    return float(np.exp(np.mean(np.log(xs)))) if xs else math.nan


def _kind(data_class: str) -> str:
    return data_class.split("_")[0]


def _r(v: float | None, d: int = 2) -> str:
    return "" if v is None else f"{v:.{d}f}"


def markdown(rows: list[dict[str, str]], header: list[str]) -> str:
    """Goal summary, bytes tables, speed tables and bound checks from the CSV rows."""
    out = ["# fpz engine benchmark", ""]
    out += [f"    {h.lstrip('# ')}" for h in header]
    out.append("")
    cls = [r for r in rows if r["section"] == "classes"]
    siz = [r for r in rows if r["section"] == "sizes"]
    wrk = [r for r in rows if r["section"] == "workers"]
    peers = {SZ3, NNC, H0_CODES, H0_PRED}
    engines = [c for c in dict.fromkeys(r["codec"] for r in rows) if c not in peers]
    have_nnc = any(r["codec"] == NNC and _f(r.get("comp_bytes")) for r in cls)

    # ---- goals
    out += ["## Goals (measured in this run)", "",
            "| codec | bytes <= NNCodec (cells; worst bytes/NNCodec) | geo-mean CR / SZ3 "
            "(cells) | lowest cell CR / SZ3 | weights / updates / grads CR / SZ3 (geo-mean) "
            "| min compress speed / SZ3 (sizes; state dicts) | min decompress speed / SZ3 "
            "(sizes; state dicts) | 2-worker speed-up (compress / decompress) "
            "| bound violations (tensors) |", "|" + "---|" * 9]
    for e in engines:
        er = [r for r in cls if r["codec"] == e and _f(r.get("comp_bytes"))]
        vs_nnc = [v for v in (_f(r.get("bytes_vs_nncodec")) for r in er) if v is not None]
        cr = [1.0 / v for v in (_f(r.get("bytes_vs_sz3")) for r in er) if v]
        by_kind = {}
        for kind in ("weights", "update", "grad"):
            ks = [1.0 / v for v in (_f(r.get("bytes_vs_sz3")) for r in er
                                    if _kind(r["data_class"]) == kind) if v]
            by_kind[kind] = _r(_gmean(ks)) if ks else "-"
        sc = [_f(r.get("comp_vs_sz3")) for r in siz if r["codec"] == e]
        sd = [_f(r.get("decomp_vs_sz3")) for r in siz if r["codec"] == e]
        cc = [_f(r.get("comp_vs_sz3")) for r in er]
        cd = [_f(r.get("decomp_vs_sz3")) for r in er]

        def mn(xs: list[float | None]) -> str:
            ys = [x for x in xs if x is not None]
            return _r(min(ys)) if ys else "-"

        w = [r for r in wrk if r["codec"] == e and _f(r.get("comp_speedup"))]
        ws = (f"{min(_f(r['comp_speedup']) or 0 for r in w):.2f} / "
              f"{min(_f(r['decomp_speedup']) or 0 for r in w):.2f}") if w else "-"
        viol = sum(int(_f(r.get("violations")) or 0) for r in rows
                   if r["codec"] == e and r["section"] in ("classes", "sizes"))
        nn = (f"{sum(v <= 1.0 for v in vs_nnc)}/{len(vs_nnc)}; {max(vs_nnc):.3f}"
              if vs_nnc else "no NNCodec")
        out.append(f"| {e} | {nn} | {_r(_gmean(cr), 3)} ({len(cr)}) | "
                   f"{_r(min(cr) if cr else None, 3)} | {by_kind['weights']} / "
                   f"{by_kind['update']} / {by_kind['grad']} | {mn(sc)}; {mn(cc)} | "
                   f"{mn(sd)}; {mn(cd)} | {ws} | {viol} |")
    out += ["", "Targets: bytes <= NNCodec in every cell; geo-mean CR >= 1.15x SZ3 and no cell "
            "below 1.02x; compress >= 1.5x and decompress >= 1.2x SZ3's speed at every size "
            "and on whole state dicts (single thread); 2 workers >= 1.8x one; 0 violations. "
            "A cell is one (model, data class, rel).", ""]

    # ---- bytes
    rels: list[float] = sorted({f for f in (_f(r.get("rel")) for r in cls) if f}, reverse=True)
    keys = list(dict.fromkeys((r["model"], r["data_class"]) for r in cls))
    by = {(r["model"], r["data_class"], _f(r["rel"]), r["codec"]): r for r in cls}
    for rel in rels:
        cols = [SZ3] + ([NNC] if have_nnc else []) + engines
        hdr = ["model / class", "elems"] + [f"{c} CR" for c in cols]
        hdr += [f"{e} bytes / SZ3" for e in engines]
        if have_nnc:
            hdr += [f"{e} bytes / NNCodec" for e in engines] + ["NNCodec bytes / SZ3"]
        hdr += ["H0 codes / SZ3", "H0 pred / SZ3"]
        out += [f"## Bytes at rel {rel:g} (per class: all tensors >= min elems, flat)", "",
                "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        for m, c in keys:
            g = {k[3]: v for k, v in by.items() if k[:3] == (m, c, rel)}
            if not g:
                continue
            n = next(iter(g.values())).get("n_elems", "")
            vals = [_r(_f(g[k]["cr"]) if k in g else None) for k in cols]
            vals += [_r(_f(g[e].get("bytes_vs_sz3")) if e in g else None, 3) for e in engines]
            if have_nnc:
                vals += [_r(_f(g[e].get("bytes_vs_nncodec")) if e in g else None, 3)
                         for e in engines]
                vals.append(_r(_f(g[NNC].get("bytes_vs_sz3")) if NNC in g else None, 3))
            vals += [_r(_f(g[h].get("bytes_vs_sz3")) if h in g else None, 3)
                     for h in (H0_CODES, H0_PRED)]
            out.append(f"| {m} / {c} | {n} | " + " | ".join(vals) + " |")
        out.append("")

    # ---- whole state dict speed
    spd = [c for c in engines + ([NNC] if have_nnc else [])]
    if cls:
        out += ["## Single-thread speed on whole state dicts (ratio to SZ3, same run; "
                "SZ3's MB/s for scale)", "",
                "| model / class | rel | SZ3 C MB/s | SZ3 D MB/s | "
                + " | ".join(f"{c} C / SZ3 | {c} D / SZ3" for c in spd) + " |",
                "|" + "---|" * (4 + 2 * len(spd))]
        for m, c in keys:
            for rel in rels:
                g = {k[3]: v for k, v in by.items() if k[:3] == (m, c, rel)}
                if SZ3 not in g or not _f(g[SZ3].get("comp_MBps")):
                    continue
                vals = [f"{_f(g[SZ3]['comp_MBps']):.0f}", f"{_f(g[SZ3]['decomp_MBps']):.0f}"]
                for k in spd:
                    vals += [_r(_f(g[k].get("comp_vs_sz3")) if k in g else None),
                             _r(_f(g[k].get("decomp_vs_sz3")) if k in g else None)]
                out.append(f"| {m} / {c} | {rel:g} | " + " | ".join(vals) + " |")
        out.append("")

    # ---- sizes
    if siz:
        out += ["## Single-thread speed by tensor size (ratio to SZ3, same run)", "",
                "| source | elements | rel | SZ3 C MB/s | SZ3 D MB/s | "
                + " | ".join(f"{c} C / SZ3 | {c} D / SZ3" for c in spd)
                + " | " + " | ".join(f"{c} bytes / SZ3" for c in spd) + " |",
                "|" + "---|" * (5 + 3 * len(spd))]
        sk = list(dict.fromkeys((r["source"], r["size"], r["rel"]) for r in siz))
        sby = {(r["source"], r["size"], r["rel"], r["codec"]): r for r in siz}
        for s, n, srel in sk:
            z = sby.get((s, n, srel, SZ3))
            if z is None or not _f(z.get("comp_MBps")):
                continue
            vals = [f"{_f(z['comp_MBps']):.0f}", f"{_f(z['decomp_MBps']):.0f}"]
            for k in spd:
                sr = sby.get((s, n, srel, k), {})
                vals += [_r(_f(sr.get("comp_vs_sz3"))), _r(_f(sr.get("decomp_vs_sz3")))]
            vals += [_r(_f(sby.get((s, n, srel, k), {}).get("bytes_vs_sz3")), 3) for k in spd]
            out.append(f"| {s} | {int(float(n)):.0e} | {float(srel):g} | " + " | ".join(vals)
                       + " |")
        out.append("")

    # ---- workers
    if wrk:
        out += ["## Threads on the whole ResNet-18 state dict (speed-up over one thread, "
                "same run)", "",
                "| class | rel | codec | workers | compress speed-up | decompress speed-up | "
                "1-thread C MB/s | 1-thread D MB/s | note |", "|" + "---|" * 9]
        for r in wrk:
            out.append(f"| {r['data_class']} | {_f(r['rel']):g} | {r['codec']} | {r['workers']} "
                       f"| {_r(_f(r.get('comp_speedup')))} | {_r(_f(r.get('decomp_speedup')))} "
                       f"| {_r(_f(r.get('comp_MBps')), 0)} | {_r(_f(r.get('decomp_MBps')), 0)} "
                       f"| {r.get('note', '')} |")
        out.append("")

    # ---- bound
    out += ["## Error bound (every codec, every section)", "",
            "| codec | max err / eb_abs | tensors over eb | values over eb |", "|---|---|---|---|"]
    for c in [SZ3, NNC, *engines]:
        cr_ = [r for r in rows if r["codec"] == c and _f(r.get("max_err_over_eb")) is not None]
        if not cr_:
            continue
        out.append(f"| {c} | {max(_f(r['max_err_over_eb']) or 0 for r in cr_):.6f} | "
                   f"{sum(int(_f(r.get('violations')) or 0) for r in cr_)} | "
                   f"{sum(int(_f(r.get('viol_elems')) or 0) for r in cr_)} |")
    out.append("")
    errs = sorted({f"{r['codec']} ({r['section']} {r['model'] or r['source']} "
                   f"{r['data_class'] or r['size']}): {r['note']}" for r in rows
                   if r.get("note", "").startswith("ERROR")})
    if errs:
        out += ["Errors:", ""] + [f"- {e}" for e in errs[:30]] + [""]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Run the sections and write the CSV (and markdown); see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".bench/data")
    ap.add_argument("--out", default=".bench/engine.csv")
    ap.add_argument("--markdown", default="", help="also write the markdown tables here")
    ap.add_argument("--models", default="cnn,resnet18,vggbn")
    ap.add_argument("--classes", default=",".join(CLASSES),
                    help="data classes: " + ", ".join(CLASSES) + ", or weights_rXX / "
                         "update_rXX / grad_rXX for any round; missing files are skipped")
    ap.add_argument("--rels", default=",".join(f"{r:g}" for r in RELS))
    ap.add_argument("--codecs", default="fpz,gaeb",
                    help="fedpress codec ids to measure (a new engine's id can be added)")
    ap.add_argument("--sections", default="classes,sizes,workers")
    ap.add_argument("--runs", type=int, default=3, help="best of this many interleaved runs")
    ap.add_argument("--min-elems", type=int, default=1000)
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7")
    ap.add_argument("--size-runs", type=int, default=5,
                    help="best of this many interleaved runs in the sizes section")
    ap.add_argument("--size-rels", default="", help="rels of the sizes section (default --rels)")
    ap.add_argument("--size-real", default="update_r05,grad_r05",
                    help="classes whose tensors make the real sources of the sizes section "
                         "(from resnet18, else the first model found)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workers-classes", default="weights_final,update_r05,grad_r05",
                    help="ResNet-18 classes of the workers section")
    ap.add_argument("--workers-rels", default="1e-3")
    ap.add_argument("--cpu", type=int, default=0,
                    help="pin single-thread sections to this CPU (-1: no pinning)")
    ap.add_argument("--nncodec-python",
                    default=os.environ.get("NNCODEC_PYTHON", DEFAULT_NNC_PY),
                    help="python of the NNCodec venv (scripts/nncodec_env.sh); '' = skip")
    ap.add_argument("--nncodec-max-size", type=float, default=1e7,
                    help="largest size of the sizes section NNCodec is run at")
    ap.add_argument("--nncodec-runs", type=int, default=0,
                    help="timed runs of NNCodec per cell (0: as many as the others); its "
                         "bytes and bound come from the first")
    ap.add_argument("--clock", choices=sorted(_CLOCKS), default="cpu",
                    help="timer of the single-thread sections: process CPU seconds (default; "
                         "robust when other jobs share the cores) or wall seconds")
    ap.add_argument("--from-csv", default="", help="only write --markdown from this CSV")
    a = ap.parse_args(argv)
    global _clock
    _clock = _CLOCKS[a.clock]
    _CLOCK_NAME[0] = a.clock

    if a.from_csv:
        if not a.markdown:
            ap.error("--from-csv needs --markdown")
        head, rows_s = read_csv(a.from_csv)
        with open(a.markdown, "w") as f:
            f.write(markdown(rows_s, head))
        log(f"wrote {a.markdown}")
        return 0

    t_start = time.time()
    load0 = os.getloadavg()
    sections = set(a.sections.split(","))
    rels = [float(r) for r in a.rels.split(",")]
    notes: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    codecs: list[Codec] = []
    for cid in [c for c in a.codecs.split(",") if c]:
        try:
            codecs.append(make_fedpress(cid))
        except Exception as exc:
            unavailable[cid] = f"{type(exc).__name__}: {exc}"
            log(f"!! codec {cid} unavailable: {unavailable[cid]}")
    sz3 = Sz3Codec()
    tmp = tempfile.mkdtemp(prefix="bench_engine_", dir="/dev/shm" if os.path.isdir("/dev/shm")
                           else None)
    nnc: NncodecCodec | None = None
    if a.nncodec_python and os.path.exists(a.nncodec_python):
        try:
            nnc = NncodecCodec(a.nncodec_python, a.cpu, tmp)
        except Exception as exc:
            unavailable[NNC] = f"{type(exc).__name__}: {exc}"
    else:
        unavailable[NNC] = (f"no NNCodec venv at {a.nncodec_python!r}: build it with "
                            "scripts/nncodec_env.sh (skipped)")
    if NNC in unavailable:
        log(f"!! {NNC} skipped: {unavailable[NNC]}")
    vers = versions(nnc)  # before measuring: the tree may change while this runs
    peers: list[Codec] = [sz3, *codecs] + ([nnc] if nnc else [])
    for c in peers:
        notes[c.name] = c.note
    single = {a.cpu} if a.cpu >= 0 else None
    nnc_cap = {NNC: a.nncodec_runs} if a.nncodec_runs > 0 else {}
    rows: list[dict[str, Any]] = []
    models = [m for m in a.models.split(",") if m]
    try:
        pin(single)
        # ---------------------------------------------------------- classes
        if "classes" in sections:
            for model in models:
                for cls in a.classes.split(","):
                    path = os.path.join(a.data, class_file(model, cls))
                    if not os.path.exists(path):
                        log(f"!! missing {path}")
                        unavailable[f"{model}/{cls}"] = f"missing {path}"
                        continue
                    try:
                        tensors = load_tensors(path, a.min_elems)
                    except Exception as exc:  # e.g. a file still being written
                        log(f"!! cannot read {path}: {type(exc).__name__}: {exc}")
                        unavailable[f"{model}/{cls}"] = f"cannot read {path}: {exc}"
                        continue
                    n = sum(x.size for _, x in tensors)
                    orig = 4 * n
                    for rel in rels:
                        ebs = [eb_for(x, rel) for _, x in tensors]
                        t0 = time.time()
                        cells = interleaved(peers, tensors, ebs, rel, a.runs, 0.0, nnc_cap)
                        base = {"section": "classes", "model": model, "data_class": cls,
                                "rel": rel, "n_tensors": len(tensors), "n_elems": n}
                        rows += rows_of(cells, base, orig, notes)
                        rows += h0_rows(tensors, ebs, base, orig, cells)
                        log(f"{model:8s} {cls:13s} {rel:g}: " + "  ".join(
                            f"{k} {orig / v.comp_bytes:.2f}x" if not v.error and v.comp_bytes
                            else f"{k} ERR" for k, v in cells.items())
                            + f"  [{time.time() - t0:.0f}s, total {time.time() - t_start:.0f}s]")
                        for k, v in cells.items():
                            if v.error:
                                log(f"   {k}: {v.error}")
                            elif v.violations:
                                log(f"   {k}: {v.violations} tensors over the bound "
                                    f"(max err/eb {v.max_err_over_eb:.6f})")
                    if nnc:
                        nnc.forget()
        # ---------------------------------------------------------- sizes
        if "sizes" in sections:
            sizes = [int(float(s)) for s in a.sizes.split(",") if s]
            srels = [float(r) for r in (a.size_rels or a.rels).split(",")]
            sources: list[tuple[str, Callable[[int], np.ndarray]]] = [
                ("laplace", laplace_like)]
            for c in [c for c in a.size_real.split(",") if c]:
                real_model = next((m for m in ["resnet18", *models] if os.path.exists(
                    os.path.join(a.data, class_file(m, c)))), None)
                if real_model is None:
                    log(f"!! sizes: no model has class {c}")
                    continue
                ts = load_tensors(os.path.join(a.data, class_file(real_model, c)),
                                  a.min_elems)
                sources.append((f"{real_model}/{c}",
                                lambda k, ts=ts: real_of_size(ts, k)))  # type: ignore[misc]
            for sname, make in sources:
                for size in sizes:
                    x = make(size)
                    tensors = [("x", x)]
                    use = [c for c in peers
                           if c.name != NNC or size <= a.nncodec_max_size]
                    for rel in srels:
                        ebs = [eb_for(x, rel)]
                        t0 = time.time()
                        cells = interleaved(use, tensors, ebs, rel, a.size_runs, MIN_PASS_S,
                                            nnc_cap)
                        base = {"section": "sizes", "source": sname, "size": size, "rel": rel,
                                "n_tensors": 1, "n_elems": size}
                        rows += rows_of(cells, base, 4 * size, notes)
                        z = cells[SZ3]
                        log(f"sizes {sname:20s} {size:>9d} {rel:g}: " + "  ".join(
                            f"{k} C {z.comp_s / v.comp_s:.2f} D {z.decomp_s / v.decomp_s:.2f}"
                            for k, v in cells.items() if k != SZ3 and not v.error)
                            + f"  [{time.time() - t0:.0f}s]")
                    if nnc:
                        nnc.forget()
        # ---------------------------------------------------------- workers
        if "workers" in sections and a.workers > 1:
            ncpu = os.cpu_count() or 1
            multi = ({(a.cpu + i) % ncpu for i in range(a.workers)} if a.cpu >= 0 else None)
            pin(multi)
            wcodecs = [c for c in peers if c.name != NNC
                       and not isinstance(c, FedpressStateful)]
            with ThreadPoolExecutor(a.workers) as pool:
                for cls in a.workers_classes.split(","):
                    path = os.path.join(a.data, class_file("resnet18", cls))
                    if not os.path.exists(path):
                        log(f"!! workers: missing {path}")
                        continue
                    tensors = load_tensors(path, a.min_elems)
                    n = sum(x.size for _, x in tensors)
                    for rel in [float(r) for r in a.workers_rels.split(",")]:
                        ebs = [eb_for(x, rel) for _, x in tensors]
                        for c in wcodecs:
                            base = {"section": "workers", "model": "resnet18", "data_class": cls,
                                    "rel": rel, "codec": c.name, "n_tensors": len(tensors),
                                    "n_elems": n, "orig_bytes": 4 * n, "workers": a.workers}
                            try:
                                comp, decomp = workers_cell(c, tensors, ebs, a.workers, a.runs,
                                                            pool)
                            except Exception as exc:
                                rows.append(dict(base, note=f"ERROR {type(exc).__name__}: {exc}"))
                                continue
                            rows.append(dict(
                                base, comp_s=comp[1], decomp_s=decomp[1],
                                comp_MBps=4 * n / comp[0] / 1e6,
                                decomp_MBps=4 * n / decomp[0] / 1e6,
                                comp_speedup=comp[0] / comp[1],
                                decomp_speedup=decomp[0] / decomp[1],
                                runs=a.runs,
                                note=("thread pool over tensors, pinned to cpus "
                                      f"{sorted(multi)}" if multi else "thread pool over tensors")))
                            log(f"workers {cls} {rel:g} {c.name}: compress "
                                f"x{comp[0] / comp[1]:.2f} decompress x{decomp[0] / decomp[1]:.2f}")
            pin(single)
    finally:
        if nnc:
            nnc.close()
        shutil.rmtree(tmp, ignore_errors=True)

    runtime = time.time() - t_start
    load1 = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    header = [
        f"# bench_engine.py results; machine: {machine()}",
        f"# date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"runtime {runtime:.0f}s; best of {a.runs} interleaved runs; single-thread sections "
        f"pinned to cpu {a.cpu}, timed in {a.clock} seconds (workers section: wall); "
        f"load average at start {load0[0]:.1f}, at end {load1[0]:.1f}",
        "# versions: " + ", ".join(f"{k} {val}" for k, val in vers.items()),
        "# command: " + " ".join(["python", "benchmarks/bench_engine.py", *(argv or sys.argv[1:])]),
        f"# eb_abs = rel * (max - min) per tensor; tensors >= {a.min_elems} elems, flat float32; "
        f"data: {a.data}; speed ratios = SZ3 seconds / codec seconds in the same run; "
        "bytes ratios = codec bytes / peer bytes (< 1: smaller)",
    ]
    header += [f"# {k}: {val}" for k, val in notes.items()]
    header += [f"# unavailable {k}: {why}" for k, why in unavailable.items()]
    with open(a.out, "w", newline="") as f:
        for h in header:
            f.write(h + "\n")
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: fmt(r.get(k, ""), 8 if k == "max_err_over_eb" else 5) for k in FIELDS})
    log(f"wrote {a.out} ({len(rows)} rows) in {runtime:.0f}s")
    if a.markdown:
        _, rows_s = read_csv(a.out)
        with open(a.markdown, "w") as f:
            f.write(markdown(rows_s, header))
        log(f"wrote {a.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
