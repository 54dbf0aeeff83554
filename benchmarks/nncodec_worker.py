#!/usr/bin/env python3
"""NNCodec as an error-bounded peer: a worker process for ``bench_engine.py``.

Runs under the Python of the NNCodec virtual environment (built by
``scripts/nncodec_env.sh``), never under fedpress's: NNCodec 2.1.3 (the reference
implementation of MPEG NNC, ISO/IEC 15938-17, with the DeepCABAC entropy coder)
needs ``numpy < 2`` and is not a dependency of fedpress.

Protocol: one JSON object per line on stdin, one JSON object per line on stdout
(nothing else is written to stdout; NNCodec's own prints go to stderr). Tensors
travel as ``.npy`` files (read with ``allow_pickle=False``), never pickled.

``{"op": "hello"}``
    -> ``{"ok": true, "versions": {...}, "pid": ...}``.
``{"op": "run", "tensors": [{"name": str, "path": str, "eb": float}, ...],
"runs": int, "out_dir": str | null, "clock": "cpu" | "wall"}``
    Compresses all the tensors (each flattened to 1-D float32) with ONE
    ``nnc.compress`` call (one bitstream, one quantization step per tensor, see
    :func:`qp_for_bound`), ``runs`` times, and decompresses the bitstream as many
    times, timed in process CPU seconds (``"cpu"``) or wall seconds (``"wall"``,
    the default). -> ``{"ok": true, "bytes": int, "comp_s": [...], "decomp_s": [...],
    "tensors": [{"name", "qp", "step", "max_err", "over"}]}``:
    wall seconds of each run (the caller takes the best), the maximum absolute
    error of each tensor in float64 and the count of its values over ``eb``.
    With ``out_dir``, the decoded tensors of the first run are also written there
    as ``<name>.npy`` so the caller can check the bound itself.
``{"op": "quit"}``
    -> ``{"ok": true}`` and exit.

Errors are answered as ``{"ok": false, "error": "..."}`` and the worker goes on.

Settings that keep ``max|x - x'| <= eb`` (checked, not assumed): uniform
reconstruction quantization with plain rounding (``use_dq=False``; dependent
/trellis-coded quantization moves values to the other quantizer and breaks the bound),
``lambda_scale=0`` (no rate-distortion decision), ``qp_density=7`` (128 steps per
octave) and, per tensor, the largest ``qp`` whose step is at most ``2 * eb`` less the
float32 rounding of NNCodec's quantizer (which scales by ``float32(1/step)`` and
reconstructs ``float32(step * level)``).

``python nncodec_worker.py --self-test`` runs one small round trip and exits 0 if
the bound holds.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

#: quantization-parameter density: 2**QP_DENSITY steps per octave of step size
QP_DENSITY = 7
_U32 = 2.0 ** -24  # unit roundoff of float32


def _stub_framework() -> None:
    """Put a stand-in for ``nncodec.framework`` into ``sys.modules``.

    ``nncodec.nnc`` imports the package ``nncodec.framework`` (its PyTorch /
    TensorFlow training front end, which pulls torchvision, OpenCV, pandas,
    scikit-learn, ...). Compressing a plain dict of numpy arrays never calls into
    it, so three empty modules whose model tests answer False let the codec core
    load without those packages.
    """
    if "nncodec.framework" in sys.modules:
        return
    pkg = types.ModuleType("nncodec.framework")
    pkg.__path__ = []  # a package, so "from nncodec.framework import x" looks here
    for sub in ("tensorflow_model", "pytorch_model", "use_case_init"):
        mod = types.ModuleType(f"nncodec.framework.{sub}")
        mod.is_tef_model = lambda *_a, **_k: False  # type: ignore[attr-defined]
        mod.is_pyt_model = lambda *_a, **_k: False  # type: ignore[attr-defined]
        mod.use_cases = {}  # type: ignore[attr-defined]
        setattr(pkg, sub, mod)
        sys.modules[mod.__name__] = mod
    sys.modules[pkg.__name__] = pkg


def load_nnc() -> Any:
    """Import ``nncodec.nnc`` with the framework stub in place."""
    _stub_framework()
    from nncodec import nnc

    return nnc


def step_of_qp(qp: int, density: int = QP_DENSITY) -> float:
    """The quantization step NNCodec derives from ``qp`` at ``density``.

    ``qp = shift * 2**d + m`` with ``0 <= m < 2**d`` (floor division, also for
    negative ``qp``) gives ``step = (2**d + m) * 2**(shift - d)``: a mantissa with
    ``d`` fractional bits times a power of two, exact in float32.
    """
    k = 1 << density
    return float((k + (qp & (k - 1))) * 2.0 ** ((qp >> density) - density))


def qp_for_bound(x: np.ndarray, eb: float, density: int = QP_DENSITY) -> int:
    """Largest ``qp`` whose step keeps ``max|x - x'| <= eb`` under plain rounding.

    With ``s`` the step, NNCodec computes ``level = round(float32(float32(1/s) * x))``
    and ``x' = float32(s * level)``; the rounding of those float32 operations adds
    at most about ``3u|x| + u*s`` (``u = 2**-24``) to the ideal ``s/2``, so the
    target step is ``(eb - 3u max|x|) / (0.5 + u)``, a little under ``2 * eb``.
    """
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    target = (eb - 4.0 * _U32 * amax) / (0.5 + 2.0 * _U32)
    if not target > 0.0:
        raise ValueError(f"bound {eb!r} too tight for float32 values up to {amax!r}")
    k = 1 << density
    e = math.floor(math.log2(target))
    qp = e * k + math.floor((target / 2.0 ** e - 1.0) * k)
    while step_of_qp(qp, density) > target:  # guard the float log2 / floor
        qp -= 1
    while step_of_qp(qp + 1, density) <= target:
        qp += 1
    return int(qp)


def versions() -> dict[str, str]:
    """Versions of Python, numpy and NNCodec in this environment."""
    v = {"python": platform.python_version()}
    for m in ("numpy", "nncodec"):
        try:
            v[m] = version(m)
        except PackageNotFoundError:
            v[m] = "n/a"
    return v


def run(nnc: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Answer one ``run`` request (see the module docstring)."""
    specs = req["tensors"]
    runs = max(1, int(req.get("runs", 1)))
    clock = time.process_time if req.get("clock", "wall") == "cpu" else time.perf_counter
    out_dir = req.get("out_dir")
    arrays: dict[str, np.ndarray] = {}
    ebs: dict[str, float] = {}
    for t in specs:
        a = np.load(t["path"], allow_pickle=False)
        arrays[t["name"]] = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
        ebs[t["name"]] = float(t["eb"])
    qps = {n: qp_for_bound(a, ebs[n]) for n, a in arrays.items()}
    comp_s: list[float] = []
    decomp_s: list[float] = []
    bitstream: bytes = b""
    decoded: dict[str, np.ndarray] = {}
    for r in range(runs):
        params = dict(arrays)  # nnc.compress may rebind entries; the arrays stay ours
        with contextlib.redirect_stdout(sys.stderr):
            t0 = clock()
            bs = nnc.compress(params, bitstream_path=None, qp_density=QP_DENSITY,
                              qp_per_tensor=qps, use_dq=False, lambda_scale=0,
                              opt_qp=False, return_bitstream=True, verbose=False)
            t1 = clock()
            out = nnc.decompress(bytearray(bs), verbose=False)
            t2 = clock()
        comp_s.append(t1 - t0)
        decomp_s.append(t2 - t1)
        if r == 0:
            bitstream, decoded = bytes(bs), out
    rows = []
    for n, a in arrays.items():
        y = np.asarray(decoded[n], dtype=np.float32).reshape(-1)
        if y.size != a.size:
            raise RuntimeError(f"{n}: decoded {y.size} values, expected {a.size}")
        e = np.abs(y.astype(np.float64) - a.astype(np.float64))
        rows.append({"name": n, "qp": qps[n], "step": step_of_qp(qps[n]),
                     "max_err": float(e.max()) if e.size else 0.0,
                     "over": int(np.count_nonzero(e > ebs[n]))})
        if out_dir:
            np.save(os.path.join(out_dir, f"{n}.npy"), y, allow_pickle=False)
    return {"ok": True, "bytes": len(bitstream), "comp_s": comp_s, "decomp_s": decomp_s,
            "tensors": rows}


def serve() -> int:
    """The JSON-lines loop on stdin / stdout."""
    if hasattr(os, "sched_setaffinity") and os.environ.get("NNC_WORKER_CPU", "") != "":
        os.sched_setaffinity(0, {int(os.environ["NNC_WORKER_CPU"])})
    out = sys.stdout
    sys.stdout = sys.stderr  # any stray print from the codec must not corrupt the protocol
    nnc = load_nnc()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "hello":
                ans: dict[str, Any] = {"ok": True, "versions": versions(), "pid": os.getpid(),
                                       "qp_density": QP_DENSITY}
            elif op == "run":
                ans = run(nnc, req)
            elif op == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            else:
                ans = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # answer, do not die: the caller records the error
            ans = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(ans) + "\n")
        out.flush()
    return 0


def self_test() -> int:
    """Round-trip a few Laplace tensors at three bounds; 0 if the bound holds."""
    import tempfile

    nnc = load_nnc()
    rng = np.random.default_rng(0)
    bad = 0
    with tempfile.TemporaryDirectory() as d:
        specs = []
        for i, n in enumerate((1000, 4096, 50_000)):
            x = rng.laplace(0.0, 1e-3 * (i + 1), n).astype(np.float32)
            p = os.path.join(d, f"t{i}.npy")
            np.save(p, x, allow_pickle=False)
            specs.append((f"t{i}", p, x))
        for rel in (1e-2, 1e-3, 1e-4):
            tensors = [{"name": n, "path": p, "eb": rel * float(x.max() - x.min())}
                       for n, p, x in specs]
            ans = run(nnc, {"tensors": tensors, "runs": 1})
            worst = max(t["max_err"] / e["eb"] for t, e in zip(ans["tensors"], tensors))
            over = sum(t["over"] for t in ans["tensors"])
            bad += over
            print(f"rel {rel:g}: {ans['bytes']} bytes, max err / eb {worst:.6f}, over {over}",
                  file=sys.stderr)
    print("self-test " + ("FAILED" if bad else "ok"), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    if "--self-test" in sys.argv[1:]:
        sys.exit(self_test())
    sys.exit(serve())
