#!/usr/bin/env python3
"""Derive the initial counts of fpz v3's contexts (``stages._acmkernels.PRIOR``).

Runs the coder's context model (the same features, buckets and shift as
``_acmkernels.encode_block``) over FL tensors at REL 1e-2/1e-3/1e-4 and sums, per
context, how often each of the 16 symbols occurs; each context's row is then scaled
to a total of ``--weight`` symbols (every symbol at least 1/16 of one), which is
what a context starts from before it has seen its own symbols. The table printed is
pasted into ``_acmkernels.py``: it is part of the format (both ends start from it).

Trained on the project's CNN and ResNet-18 tensors (``.bench/data``); check on
tensors it has not seen (``benchmarks/make_holdout_data.py``)::

    python benchmarks/make_acm_prior.py --data .bench/data --models cnn,resnet18
"""

from __future__ import annotations

import argparse
import glob
import os

import numpy as np
from numba import njit

from fedpress.stages import _acmkernels as K


@njit(cache=True)
def _histograms(q, rows, cols, hist):  # pragma: no cover - compiled
    block = 1 << 18
    per = max(1, block // cols)
    for r0 in range(0, rows, per):
        ema = 0
        has_up = False
        up = np.zeros(cols, np.int64)
        cur = np.zeros(cols + 2, np.int64)
        for r in range(r0, min(rows, r0 + per)):
            base = r * cols
            nz = 0
            for j in range(cols):
                cur[j + 1] = q[base + j]
                nz |= q[base + j]
            if nz == 0:
                has_up = False
                continue
            a = 0
            b = 0
            for j in range(cols):
                m = abs(cur[j + 1])
                e = 2 * a + b + (up[j] >> 2) if has_up else 6 * a + b
                ctx, sh = K._context(e, ema)
                mm = m >> sh
                s = K._symbol(mm) if mm < K.ESC_AT else K.ESC
                hist[ctx, s] += 1
                ema += ((m << 8) - ema) >> K.EMA_SHIFT
                b = a
                a = m
            for j in range(cols):
                v = cur[j + 1]
                up[j] = (2 * abs(v) + abs(cur[j]) + abs(cur[j + 2])) << 2
            has_up = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=".bench/data")
    ap.add_argument("--models", default="cnn,resnet18")
    ap.add_argument("--weight", type=float, default=8.0)
    a = ap.parse_args()
    hist = np.zeros((K.NCTX, K.NSYM), np.int64)
    files = [f for m in a.models.split(",")
             for f in sorted(glob.glob(os.path.join(a.data, f"{m}_*_r*.npz")))]
    for path in files:
        d = np.load(path)
        for k in d.files:
            x = np.asarray(d[k], dtype=np.float64)
            if x.size < 1000:
                continue
            rows = x.shape[0] if x.ndim >= 2 else 1
            for rel in (1e-2, 1e-3, 1e-4):
                eb = rel * float(x.max() - x.min())
                if eb <= 0:
                    continue
                q = np.rint(x.reshape(-1) / (2 * eb)).astype(np.int64)
                one = np.zeros_like(hist)
                _histograms(q, rows, q.size // rows, one)
                # each tensor and bound weighs the same, whatever its size
                hist += (one * 1_000_000) // max(1, q.size)
    prior = np.zeros_like(hist)
    for c in range(K.NCTX):
        tot = hist[c].sum()
        if tot == 0:
            prior[c] = 1
            continue
        p = hist[c] / tot
        prior[c] = np.maximum(1, np.rint(p * a.weight * K.INC)).astype(np.int64)
    print(f"# {len(files)} files; rows: contexts (be' * {K.T + 1} + bq'), columns: symbols")
    print("PRIOR = np.array([")
    for c in range(K.NCTX):
        print("    [" + ", ".join(str(int(v)) for v in prior[c]) + "],")
    print("], np.int32)")


if __name__ == "__main__":
    main()
