#!/usr/bin/env python3
"""fpz version 3's extra measurements (beside ``bench_engine.py``): gaeb against fpz on
streams of FL tensors, and the first call after install.

``gaeb``: for each model and kind (client updates, last-minibatch gradients) every
round in ``--data`` is coded in order by one ``UpdateEncoder`` with gaeb on the
``weight`` tensors (zstd for the rest) and, interleaved, by one with fpz; bytes of all
the frames and process CPU seconds (best of ``--runs``), one thread.

``first``: in a fresh interpreter with an empty numba cache (``NUMBA_CACHE_DIR`` set
to a new directory: what a fresh install sees), ``import fedpress`` and the first
``compress`` of a 1M-value float32 tensor, then the first ``decompress``; process CPU
and wall seconds; then the same with the cache the first run left.

    python benchmarks/bench_v3_extras.py --sections gaeb,first
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

FIRST = r"""
import json, time
c0, w0 = time.process_time(), time.perf_counter()
import numpy as np
import fedpress
x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
blob = fedpress.compress(x)
c1, w1 = time.process_time(), time.perf_counter()
y = fedpress.decompress(blob)
c2, w2 = time.process_time(), time.perf_counter()
assert np.abs(y - x).max() <= 1e-2 * (x.max() - x.min())
print(json.dumps({"compress_cpu": c1 - c0, "compress_wall": w1 - w0,
                  "decompress_cpu": c2 - c1, "decompress_wall": w2 - w1}))
"""


def first_call(repeats: int) -> None:
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            for label in ("fresh cache", "warm cache"):
                out = subprocess.run([sys.executable, "-c", FIRST], env=env, check=True,
                                     capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                print(f"first {i} {label}: import + first compress {r['compress_cpu']:.2f} s CPU "
                      f"({r['compress_wall']:.2f} s wall); first decompress "
                      f"{r['decompress_cpu']:.2f} s CPU ({r['decompress_wall']:.2f} s wall)",
                      flush=True)


def gaeb_streams(data: list[str], models: list[str], rels: list[float], runs: int) -> None:
    import fedpress
    from fedpress.eblc.fpz import FpzCodec
    from fedpress.eblc.gaeb import GaebCodec

    for model in models:
        for kind in ("update", "grad"):
            files: list[str] = []
            for d in data:
                files = files or sorted(glob.glob(os.path.join(d, f"{model}_{kind}_r*.npz")))
            if len(files) < 2:
                continue
            sds = [dict(np.load(f).items()) for f in files]
            for rel in rels:
                best: dict[str, tuple[int, float]] = {}
                for _ in range(runs):
                    for name in ("fpz", "gaeb"):
                        codec = (FpzCodec("rel", rel, workers=1) if name == "fpz"
                                 else GaebCodec("rel", rel))
                        enc = fedpress.UpdateEncoder({"re:weight$": codec, "default": "zstd"},
                                                     "rel", rel, workers=1)
                        size, secs = 0, 0.0
                        for sd in sds:
                            t0 = time.process_time()
                            size += len(enc.encode(sd))
                            secs += time.process_time() - t0
                        prev = best.get(name, (size, secs))
                        best[name] = (size, min(secs, prev[1]))
                (fb, fs), (gb, gs) = best["fpz"], best["gaeb"]
                print(f"gaeb {model} {kind} rel={rel:g} rounds={len(sds)}: bytes gaeb/fpz "
                      f"{gb / fb:.4f}, encode speed gaeb/fpz {fs / gs:.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="gaeb,first")
    ap.add_argument("--data", default=".bench/data,.bench/holdout")
    ap.add_argument("--models", default="cnn,vggbn,resnarrow,resnet18")
    ap.add_argument("--rels", default="1e-2,1e-3")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--first-repeats", type=int, default=3)
    a = ap.parse_args()
    sections = a.sections.split(",")
    if "gaeb" in sections:
        gaeb_streams(a.data.split(","), a.models.split(","),
                     [float(r) for r in a.rels.split(",")], a.runs)
    if "first" in sections:
        first_call(a.first_repeats)


if __name__ == "__main__":
    main()
