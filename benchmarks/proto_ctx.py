#!/usr/bin/env python3
"""Prototype context models for fpz v3's quantization codes: ideal code lengths.

For each FL tensor (>= 1000 values) and bound (REL 1e-2/1e-3/1e-4, eb_abs = rel *
(max - min)), the codes q = rint(x / 2eb) are laid out as (rows, cols) = (shape[0],
the rest) and several adaptive models are run over them in row-major order; each
reports its ideal code length (sum of -log2 p, what an arithmetic / rANS coder
reaches within ~0.1%). Rows: bytes per class against SZ3 (pysz, same bound) and
fpz v2 (real frames). Written to choose fpz v3's design by measurement.

    python benchmarks/proto_ctx.py --data .bench/data --models cnn --rels 1e-2
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time

import numpy as np
from numba import njit

LOG2 = np.log2(np.arange(1, 65537, dtype=np.float64) / 65536.0)


# --------------------------------------------------------------- binary models
@njit(cache=True)
def _bit_cost(pa, pb, cnt, ctx, bit, sa, sb):
    """-log2 P(bit) under the two-speed estimator of context ctx, then update it.
    Probabilities are of bit == 1, 16 bits; count-based warm-up of each speed."""
    p = (pa[ctx] + pb[ctx]) >> 1
    if p < 32:
        p = 32
    elif p > 65536 - 32:
        p = 65536 - 32
    pr = p if bit else 65536 - p
    c = cnt[ctx]
    ra = min(sa, 1 + c)
    rb = min(sb, 1 + c)
    if c < 255:
        cnt[ctx] = c + 1
    if bit:
        pa[ctx] += (65536 - pa[ctx]) >> ra
        pb[ctx] += (65536 - pb[ctx]) >> rb
    else:
        pa[ctx] -= pa[ctx] >> ra
        pb[ctx] -= pb[ctx] >> rb
    return -math.log2(pr / 65536.0)


@njit(cache=True)
def _mclass(m):
    return 0 if m == 0 else (1 if m == 1 else (2 if m <= 3 else 3))


@njit(cache=True)
def cabac(q, rows, cols, ngtx, sa, sb, use_up, rowskip):
    """DeepCABAC-like: sig / sign / gt1..gtN flags with adaptive contexts, Exp-Golomb
    (order 0) remainder in bypass. Contexts: magnitude classes (0, 1, 2-3, 4+) of the
    left and left-left codes, and of the code above (previous row, same column) if
    ``use_up``; sign context: the left code's sign (and up's). Returns bits."""
    nctx = 4096
    pa = np.full(nctx, 32768, np.int64)
    pb = np.full(nctx, 32768, np.int64)
    cnt = np.zeros(nctx, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        if rowskip:
            allz = True
            for j in range(cols):
                if q[base + j] != 0:
                    allz = False
                    break
            bits += _bit_cost(pa, pb, cnt, 4000, 1 if allz else 0, sa, sb)
            if allz:
                continue
        a = 0
        b = 0
        sgn_a = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            c = 0
            sgn_c = 0
            if use_up and r > 0:
                u = q[base - cols + j]
                c = _mclass(abs(u))
                sgn_c = 0 if u == 0 else (1 if u > 0 else 2)
            ca = _mclass(a)
            cb = _mclass(b)
            ctx = (ca * 4 + cb) * 4 + c  # < 64
            bits += _bit_cost(pa, pb, cnt, ctx, 1 if m else 0, sa, sb)
            if m:
                sc = 64 + sgn_a * 3 + sgn_c
                bits += _bit_cost(pa, pb, cnt, sc, 1 if v < 0 else 0, sa, sb)
                # unary gtx flags: flag k says m > k
                k = 1
                stop = False
                while k <= ngtx:
                    g = 1 if m > k else 0
                    cg = 128 + ((k - 1) * 16 + min(ca + c, 6) * 2 + (1 if v < 0 else 0))
                    bits += _bit_cost(pa, pb, cnt, cg, g, sa, sb)
                    if not g:
                        stop = True
                        break
                    k += 1
                if not stop:
                    rem = m - ngtx - 1
                    bits += 2 * math.floor(math.log2(rem + 1)) + 1
                sgn_a = 1 if v > 0 else 2
            else:
                sgn_a = 0
            b = a
            a = m
    return bits


# --------------------------------------------------------------- multi-symbol models
NSYM = 32


@njit(cache=True)
def sym_of(m):
    """Class of a magnitude: 0..3 exact, then two classes per octave; returns
    (symbol, raw offset bits)."""
    if m < 4:
        return m, 0
    k = 63 - _clz(m)  # 2**k <= m < 2**(k+1), k >= 2
    half = (m >> (k - 1)) & 1
    s = 4 + 2 * (k - 2) + half
    return s, k - 1


@njit(cache=True)
def _clz(m):
    n = 0
    x = np.uint64(m)
    while x < np.uint64(1) << np.uint64(63):
        x <<= np.uint64(1)
        n += 1
    return n


@njit(cache=True)
def _cdf_cost_update(cdf, cnt, ctx, s, nsym, mode):
    """-log2 P(s) under an adaptive CDF (AV1-like: probabilities in 15 bits, each
    symbol at least 1/32768), then move it toward s."""
    lo = cdf[ctx, s]
    hi = cdf[ctx, s + 1]
    f = hi - lo
    cost = -math.log2(f / 32768.0)
    c = cnt[ctx]
    if mode == 0:
        rate = 4 + (1 if c > 15 else 0) + (1 if c > 31 else 0) + 1
    elif mode == 1:
        rate = min(2 + c, 7) if c < 64 else 7
    else:
        rate = min(1 + c, 5)
    if c < 1000000:
        cnt[ctx] = c + 1
    # target: all mass at or after s+1 for boundaries i > s; keep >= 1 per symbol
    for i in range(1, nsym):
        t = 32768 - (nsym - i) if i > s else i
        v = cdf[ctx, i]
        cdf[ctx, i] += (t - v) >> rate if t > v else -((v - t) >> rate)
    return cost


@njit(cache=True)
def _freq_cost_update(fr, tot, ctx, s, inc, limit):
    """Counts model: -log2 (f_s / total), then f_s += inc (halve all at limit)."""
    cost = -math.log2(fr[ctx, s] / tot[ctx])
    fr[ctx, s] += inc
    tot[ctx] += inc
    if tot[ctx] > limit:
        t = 0
        for i in range(fr.shape[1]):
            fr[ctx, i] = (fr[ctx, i] + 1) >> 1
            t += fr[ctx, i]
        tot[ctx] = t
    return cost


@njit(cache=True)
def _lbucket(e, nb):
    """Logarithmic bucket of a scaled local magnitude e (>= 0)."""
    if e == 0:
        return 0
    k = 64 - _clz(e)  # bit length
    return min(k, nb - 1)


@njit(cache=True)
def ms(q, rows, cols, model, wl, wu, nb, rowskip, sign_ctx, mant, inc, limit):
    """Multi-symbol: class of |q| (``sym_of``) under an adaptive model chosen by the
    bucket of a local magnitude estimate ``wl * (2|l| + |ll|) + wu * (2|u| + |ul| + |ur|)``
    (l/ll: left codes, u/ul/ur: previous row); the offset bits raw (``mant``: the top
    offset bit with an adaptive binary context per class); the sign with an adaptive
    binary context on the signs of left and up (``sign_ctx``) or raw.
    ``model`` 0/1/2: CDF adaptation modes, 3: counts."""
    nctx = nb + 1
    cdf = np.zeros((nctx, NSYM + 1), np.int64)
    for c in range(nctx):
        for i in range(NSYM + 1):
            cdf[c, i] = (32768 * i) // NSYM
    cnt = np.zeros(nctx, np.int64)
    fr = np.ones((nctx, NSYM), np.int64)
    tot = np.full(nctx, NSYM, np.int64)
    pa = np.full(256, 32768, np.int64)
    pb = np.full(256, 32768, np.int64)
    bc = np.zeros(256, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        if rowskip:
            allz = True
            for j in range(cols):
                if q[base + j] != 0:
                    allz = False
                    break
            bits += _bit_cost(pa, pb, bc, 255, 1 if allz else 0, 4, 7)
            if allz:
                continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = wl * (2 * a + b)
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += wu * (2 * abs(up) + ul + ur)
                su = 0 if up == 0 else (1 if up > 0 else 2)
            ctx = _lbucket(e, nb)
            s, nraw = sym_of(m)
            if model < 3:
                bits += _cdf_cost_update(cdf, cnt, ctx, s, NSYM, model)
            else:
                bits += _freq_cost_update(fr, tot, ctx, s, inc, limit)
            if nraw:
                if mant:
                    top = (m >> (nraw - 1)) & 1
                    bits += _bit_cost(pa, pb, bc, 16 + s, top, 4, 7) + (nraw - 1)
                else:
                    bits += nraw
            if m:
                if sign_ctx:
                    bits += _bit_cost(pa, pb, bc, 100 + sa * 3 + su, 1 if v < 0 else 0, 4, 7)
                else:
                    bits += 1.0
                sa = 1 if v > 0 else 2
            else:
                sa = 0
            b = a
            a = m
    return bits


# --------------------------------------------------------------- references
def h0_bits(q: np.ndarray) -> float:
    _, counts = np.unique(q, return_counts=True)
    p = counts / q.size
    return float(-(counts * np.log2(p)).sum())


def sz3_bytes(x: np.ndarray, eb: float) -> int:
    import pysz

    cfg = pysz.szConfig((x.size,))
    cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
    cfg.absErrorBound = float(eb)
    cfg.openmp = False
    out, _ = pysz.sz.compress(x, cfg)
    return int(out.nbytes)


def fpz_bytes(x: np.ndarray, eb: float, **kw: object) -> int:
    import fedpress

    return len(fedpress.compress(x, codec="fpz", mode="abs", eb=eb, **kw))


CLASSES = ("weights", "update_first", "update_mid", "update_last", "grad_first", "grad_mid",
           "grad_last")


def class_files(data: str, model: str) -> dict[str, str]:
    def rounds(kind: str) -> list[str]:
        return sorted(glob.glob(os.path.join(data, f"{model}_{kind}_r*.npz")))

    out: dict[str, str] = {}
    g = rounds("global")
    if g:
        out["weights"] = g[-1]
    for kind in ("update", "grad"):
        f = rounds(kind)
        if f:
            out[f"{kind}_first"], out[f"{kind}_mid"], out[f"{kind}_last"] = (
                f[0], f[len(f) // 2], f[-1])
    return out


def tensors(path: str, min_elems: int = 1000) -> list[tuple[str, np.ndarray]]:
    d = np.load(path)
    return [(k, np.ascontiguousarray(d[k], dtype=np.float32)) for k in d.files
            if d[k].size >= min_elems and np.issubdtype(d[k].dtype, np.floating)]


MODELS = {
    "cabac4": lambda q, r, c: cabac(q, r, c, 4, 4, 7, True, True),
    "cabac4_noup": lambda q, r, c: cabac(q, r, c, 4, 4, 7, False, True),
    "cabac10": lambda q, r, c: cabac(q, r, c, 10, 4, 7, True, True),
    "ms_av1": lambda q, r, c: ms(q, r, c, 0, 2, 1, 12, True, True, False, 0, 0),
    "ms_fast": lambda q, r, c: ms(q, r, c, 1, 2, 1, 12, True, True, False, 0, 0),
    "ms_cnt": lambda q, r, c: ms(q, r, c, 3, 2, 1, 12, True, True, False, 24, 1 << 13),
    "ms_cnt_mant": lambda q, r, c: ms(q, r, c, 3, 2, 1, 12, True, True, True, 24, 1 << 13),
    "ms_cnt_noup": lambda q, r, c: ms(q, r, c, 3, 2, 0, 12, True, True, False, 24, 1 << 13),
    "ms_cnt_nosign": lambda q, r, c: ms(q, r, c, 3, 2, 1, 12, True, False, False, 24, 1 << 13),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".bench/data")
    ap.add_argument("--models", default="cnn")
    ap.add_argument("--rels", default="1e-2,1e-3,1e-4")
    ap.add_argument("--classes", default=",".join(CLASSES))
    ap.add_argument("--coders", default=",".join(MODELS))
    ap.add_argument("--no-refs", action="store_true")
    a = ap.parse_args()
    coders = a.coders.split(",")
    print("model,class,rel,n,sz3,fpz,h0," + ",".join(coders))
    for model in a.models.split(","):
        files = class_files(a.data, model)
        for cls in a.classes.split(","):
            if cls not in files:
                continue
            ts = tensors(files[cls])
            for rel in (float(r) for r in a.rels.split(",")):
                tot = {k: 0.0 for k in ["n", "sz3", "fpz", "h0", *coders]}
                for _name, x in ts:
                    eb = rel * (float(x.max()) - float(x.min()))
                    if eb <= 0:
                        continue
                    q = np.rint(x.astype(np.float64) / (2 * eb)).astype(np.int64).reshape(-1)
                    rows = x.shape[0] if x.ndim >= 2 else 1
                    cols = q.size // rows
                    tot["n"] += q.size
                    if not a.no_refs:
                        tot["sz3"] += sz3_bytes(x.reshape(-1), eb)
                        tot["fpz"] += fpz_bytes(x, eb, coder="rans")
                    tot["h0"] += h0_bits(q) / 8
                    for cname in coders:
                        if cname == "v3":
                            tot[cname] += fpz_bytes(x, eb)
                            continue
                        tot[cname] += MODELS[cname](q, rows, cols) / 8
                ref = tot["sz3"] or tot["h0"]
                print(f"{model},{cls},{rel:g},{int(tot['n'])}," + ",".join(
                    f"{tot[k] / ref:.4f}" if k != "sz3" else f"{int(tot[k])}"
                    for k in ["sz3", "fpz", "h0", *coders]), flush=True)


@njit(cache=True)
def ms_static(q, rows, cols, wl, wu, nb, rowskip, sign_ctx, tabcost=1.0):
    """As ``ms`` with static tables (two passes): the conditional entropy of the
    classes per context, raw offset bits, signs by context; plus an estimate of the
    tables' cost (8 bits per used (context, symbol) pair + 8 per context)."""
    nctx = nb + 1
    h = np.zeros((nctx, NSYM), np.int64)
    hs = np.zeros((9, 2), np.int64)
    raw = 0.0
    rowbits = 0.0
    for r in range(rows):
        base = r * cols
        if rowskip:
            allz = True
            for j in range(cols):
                if q[base + j] != 0:
                    allz = False
                    break
            if allz:
                continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = wl * (2 * a + b)
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += wu * (2 * abs(up) + ul + ur)
                su = 0 if up == 0 else (1 if up > 0 else 2)
            ctx = _lbucket(e, nb)
            s, nraw = sym_of(m)
            h[ctx, s] += 1
            raw += nraw
            if m:
                hs[sa * 3 + su if sign_ctx else 0, 1 if v < 0 else 0] += 1
                sa = 1 if v > 0 else 2
            else:
                sa = 0
            b = a
            a = m
    if rowskip:
        rowbits = rows * 0.2 + 8
    bits = raw + rowbits
    table = 0.0
    for c in range(nctx):
        t = 0
        for s in range(NSYM):
            t += h[c, s]
        if t == 0:
            continue
        table += 8
        for s in range(NSYM):
            if h[c, s]:
                bits -= h[c, s] * math.log2(h[c, s] / t)
                table += 8
    for c in range(9):
        t = hs[c, 0] + hs[c, 1]
        for k in range(2):
            if hs[c, k]:
                bits -= hs[c, k] * math.log2(hs[c, k] / t)
    return bits + tabcost * table


MODELS["st_ctx"] = lambda q, r, c: ms_static(q, r, c, 2, 1, 12, True, True)
MODELS["st_ctx_noskip"] = lambda q, r, c: ms_static(q, r, c, 2, 1, 12, False, True)
MODELS["st_1ctx"] = lambda q, r, c: ms_static(q, r, c, 0, 0, 1, False, False)


@njit(cache=True)
def _b6(e, nb):
    """Bucket of a small magnitude sum: 0, 1, 2, 3-4, 5-8, 9-16, ... (nb buckets)."""
    if e < 3:
        return e if e < nb else nb - 1
    k = 64 - _clz(e - 1)  # e in (2**(k-1), 2**k]
    return min(k + 1, nb - 1)


@njit(cache=True)
def ms2(q, rows, cols, nl, nu, inc, limit, rowskip, sgn_mode, kern):
    """Multi-symbol counts model with a two-dimensional context: bucket of the left
    magnitudes (2|l| + |ll|) x bucket of the previous row's (2|u| + |ul| + |ur|);
    ``kern`` > 0 adds the code ``kern`` back in the row (same position of the
    previous kernel) to the left sum. Sign context: ``sgn_mode`` 0 raw, 1 signs of
    left and up, 2 also the sign of the previous kernel's code."""
    nctx = nl * nu
    fr = np.ones((nctx, NSYM), np.int64)
    tot = np.full(nctx, NSYM, np.int64)
    pa = np.full(256, 32768, np.int64)
    pb = np.full(256, 32768, np.int64)
    bc = np.zeros(256, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        if rowskip:
            allz = True
            for j in range(cols):
                if q[base + j] != 0:
                    allz = False
                    break
            bits += _bit_cost(pa, pb, bc, 255, 1 if allz else 0, 4, 7)
            if allz:
                continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            el = 2 * a + b
            sk = 0
            if kern and j >= kern:
                kv = q[base + j - kern]
                el += abs(kv)
                sk = 0 if kv == 0 else (1 if kv > 0 else 2)
            eu = 0
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                eu = 2 * abs(up) + ul + ur
                su = 0 if up == 0 else (1 if up > 0 else 2)
            ctx = _b6(el, nl) * nu + _b6(eu, nu)
            s, nraw = sym_of(m)
            bits += _freq_cost_update(fr, tot, ctx, s, inc, limit)
            bits += nraw
            if m:
                if sgn_mode == 0:
                    bits += 1.0
                else:
                    sc = sa * 3 + su
                    if sgn_mode == 2:
                        sc = sc * 3 + sk
                    bits += _bit_cost(pa, pb, bc, sc, 1 if v < 0 else 0, 4, 7)
                sa = 1 if v > 0 else 2
            else:
                sa = 0
            b = a
            a = m
    return bits


MODELS["ms2_66"] = lambda q, r, c: ms2(q, r, c, 6, 6, 24, 1 << 13, True, 1, 0)
MODELS["ms2_88"] = lambda q, r, c: ms2(q, r, c, 8, 8, 24, 1 << 13, True, 1, 0)
MODELS["ms2_66_fast"] = lambda q, r, c: ms2(q, r, c, 6, 6, 32, 1 << 12, True, 1, 0)
MODELS["ms2_66_slow"] = lambda q, r, c: ms2(q, r, c, 6, 6, 16, 1 << 14, True, 1, 0)
MODELS["ms2_66_k9"] = lambda q, r, c: ms2(q, r, c, 6, 6, 24, 1 << 13, True, 2, 9)


@njit(cache=True)
def _ss_cost_update(fr, tot, pf, ptot, since, ctx, s, inc, limit, minref, refshift):
    """Semi-static counts model: codes with the probabilities frozen at the last
    refresh (``pf / ptot``), counts as ``_freq_cost_update``; a context's frozen
    table is refreshed when the symbols since its last refresh reach
    max(minref, tot >> refshift)."""
    cost = -math.log2(pf[ctx, s] / ptot[ctx])
    fr[ctx, s] += inc
    tot[ctx] += inc
    if tot[ctx] > limit:
        t = 0
        for i in range(fr.shape[1]):
            fr[ctx, i] = (fr[ctx, i] + 1) >> 1
            t += fr[ctx, i]
        tot[ctx] = t
    since[ctx] += 1
    if since[ctx] * inc >= max(minref * inc, tot[ctx] >> refshift):
        since[ctx] = 0
        for i in range(fr.shape[1]):
            pf[ctx, i] = fr[ctx, i]
        ptot[ctx] = tot[ctx]
    return cost


@njit(cache=True)
def ms_ss(q, rows, cols, wl, wu, nb, inc, limit, minref, refshift, sgn_mode):
    """``ms`` (1-D context on a weighted local magnitude) with the semi-static model."""
    nctx = nb + 1
    fr = np.ones((nctx, NSYM), np.int64)
    tot = np.full(nctx, NSYM, np.int64)
    pf = np.ones((nctx, NSYM), np.int64)
    ptot = np.full(nctx, NSYM, np.int64)
    since = np.zeros(nctx, np.int64)
    pa = np.full(256, 32768, np.int64)
    pb = np.full(256, 32768, np.int64)
    bc = np.zeros(256, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 255, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = wl * (2 * a + b)
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += wu * (2 * abs(up) + ul + ur)
                su = 0 if up == 0 else (1 if up > 0 else 2)
            ctx = _lbucket(e, nb)
            s, nraw = sym_of(m)
            bits += _ss_cost_update(fr, tot, pf, ptot, since, ctx, s, inc, limit, minref,
                                    refshift)
            bits += nraw
            if m:
                if sgn_mode:
                    bits += _bit_cost(pa, pb, bc, sa * 3 + su, 1 if v < 0 else 0, 4, 7)
                else:
                    bits += 1
                sa = 1 if v > 0 else 2
            else:
                sa = 0
            b = a
            a = m
    return bits


MODELS["st_notab"] = lambda q, r, c: ms_static(q, r, c, 2, 1, 12, True, True, 0.0)
MODELS["ss_16_3"] = lambda q, r, c: ms_ss(q, r, c, 2, 1, 12, 24, 1 << 13, 16, 3, 1)
MODELS["ss_64_2"] = lambda q, r, c: ms_ss(q, r, c, 2, 1, 12, 24, 1 << 13, 64, 2, 1)
MODELS["ss_256_1"] = lambda q, r, c: ms_ss(q, r, c, 2, 1, 12, 24, 1 << 13, 256, 1, 1)
MODELS["ss_1024_0"] = lambda q, r, c: ms_ss(q, r, c, 2, 1, 12, 24, 1 << 16, 1024, 0, 1)


@njit(cache=True)
def ms_signed(q, rows, cols, wl, wu, nb, inc, limit, sctx, minref, refshift):
    """Signed classes in one alphabet (0, then +-class): one coding step per value.
    Context: magnitude bucket x sign context (``sctx`` 0 none, 1 left sign, 2 up
    sign, 3 both). Semi-static refresh if ``minref`` > 0, else per-symbol counts."""
    ns = 3 if sctx in (1, 2) else (9 if sctx == 3 else 1)
    nctx = (nb + 1) * ns
    nsym = 2 * NSYM
    fr = np.ones((nctx, nsym), np.int64)
    tot = np.full(nctx, nsym, np.int64)
    pf = np.ones((nctx, nsym), np.int64)
    ptot = np.full(nctx, nsym, np.int64)
    since = np.zeros(nctx, np.int64)
    pa = np.full(256, 32768, np.int64)
    pb = np.full(256, 32768, np.int64)
    bc = np.zeros(256, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 255, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = wl * (2 * a + b)
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += wu * (2 * abs(up) + ul + ur)
                su = 0 if up == 0 else (1 if up > 0 else 2)
            sc = 0
            if sctx == 1:
                sc = sa
            elif sctx == 2:
                sc = su
            elif sctx == 3:
                sc = sa * 3 + su
            ctx = _lbucket(e, nb) * ns + sc
            s, nraw = sym_of(m)
            sym = 0 if m == 0 else 2 * s - 1 + (1 if v < 0 else 0)
            if minref:
                bits += _ss_cost_update(fr, tot, pf, ptot, since, ctx, sym, inc, limit, minref,
                                        refshift)
            else:
                bits += _freq_cost_update(fr, tot, ctx, sym, inc, limit)
            bits += nraw
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            b = a
            a = m
    return bits


MODELS["sg0"] = lambda q, r, c: ms_signed(q, r, c, 2, 1, 12, 24, 1 << 13, 0, 0, 0)
MODELS["sg1"] = lambda q, r, c: ms_signed(q, r, c, 2, 1, 12, 24, 1 << 13, 1, 0, 0)
MODELS["sg2"] = lambda q, r, c: ms_signed(q, r, c, 2, 1, 12, 24, 1 << 13, 2, 0, 0)
MODELS["sg3"] = lambda q, r, c: ms_signed(q, r, c, 2, 1, 12, 24, 1 << 13, 3, 0, 0)
MODELS["sg3_ss"] = lambda q, r, c: ms_signed(q, r, c, 2, 1, 12, 24, 1 << 13, 3, 16, 3)


@njit(cache=True)
def nnc_proxy(q, rows, cols, ngtx, rowskip):
    """A DeepCABAC stand-in (NNCodec's binarization as its sources describe it): sig
    flag with the previous level's sign as context (3), sign flag likewise, gtx flags
    by (own sign, index), remainder as Exp-Golomb classes with an adaptive context per
    prefix bin and bypass suffix bits; optional all-zero row flags. Two-speed
    estimators (shifts 4 and 7). Returns bits."""
    pa = np.full(512, 32768, np.int64)
    pb = np.full(512, 32768, np.int64)
    cnt = np.zeros(512, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        if rowskip:
            allz = True
            for j in range(cols):
                if q[base + j] != 0:
                    allz = False
                    break
            bits += _bit_cost(pa, pb, cnt, 500, 1 if allz else 0, 4, 7)
            if allz:
                continue
        prev = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            pc = 0 if prev == 0 else (1 if prev < 0 else 2)
            bits += _bit_cost(pa, pb, cnt, pc, 1 if m else 0, 4, 7)
            if m:
                bits += _bit_cost(pa, pb, cnt, 3 + pc, 1 if v < 0 else 0, 4, 7)
                neg = 1 if v < 0 else 0
                rem = m - 1
                k = 0
                g = 1 if rem else 0
                bits += _bit_cost(pa, pb, cnt, 8 + 2 * k + neg, g, 4, 7)
                k = 1
                while g and k < ngtx:
                    rem -= 1
                    g = 1 if rem else 0
                    bits += _bit_cost(pa, pb, cnt, 8 + 2 * k + neg, g, 4, 7)
                    k += 1
                if g:
                    rem -= 1
                    # Exp-Golomb classes: class c covers [2**c - 1, 2**(c+1) - 1)
                    c = 0
                    ctx = 200
                    while rem >= (1 << (c + 1)) - 1:
                        bits += _bit_cost(pa, pb, cnt, ctx, 1, 4, 7)
                        ctx += 1
                        c += 1
                    bits += _bit_cost(pa, pb, cnt, ctx, 0, 4, 7) + c
            prev = v
    return bits


MODELS["nnc10"] = lambda q, r, c: nnc_proxy(q, r, c, 10, True)
MODELS["nnc4"] = lambda q, r, c: nnc_proxy(q, r, c, 4, True)


@njit(cache=True)
def hybrid(q, rows, cols, wl, wu, nb, inc, limit, variant):
    """variant 1: sig flag (binary; ctx magnitude bucket x left sign), sign (binary; ctx
    left x up sign), class of m - 1 (counts model; ctx bucket x own sign).
    variant 2: class of m (counts model; ctx bucket x left sign), then sign (binary; ctx
    left x up sign x (m == 1)).
    variant 3: as 1 with sig ctx bucket only, class ctx bucket only (no signs)."""
    nctx = (nb + 1) * 3
    fr = np.ones((nctx, NSYM), np.int64)
    tot = np.full(nctx, NSYM, np.int64)
    pa = np.full(512, 32768, np.int64)
    pb = np.full(512, 32768, np.int64)
    bc = np.zeros(512, np.int64)
    bits = 0.0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 511, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = wl * (2 * a + b)
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += wu * (2 * abs(up) + ul + ur)
                su = 0 if up == 0 else (1 if up > 0 else 2)
            bk = _lbucket(e, nb)
            neg = 1 if v < 0 else 0
            if variant == 1 or variant == 3:
                sctx = bk * 3 + sa if variant == 1 else bk
                bits += _bit_cost(pa, pb, bc, sctx, 1 if m else 0, 4, 7)
                if m:
                    bits += _bit_cost(pa, pb, bc, 100 + sa * 3 + su, neg, 4, 7)
                    s, nraw = sym_of(m - 1)
                    cctx = bk * 3 + neg if variant == 1 else bk * 3
                    bits += _freq_cost_update(fr, tot, cctx, s, inc, limit) + nraw
            else:
                s, nraw = sym_of(m)
                bits += _freq_cost_update(fr, tot, bk * 3 + sa, s, inc, limit) + nraw
                if m:
                    bits += _bit_cost(pa, pb, bc, 100 + (sa * 3 + su) * 2 + (1 if m == 1 else 0),
                                      neg, 4, 7)
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            b = a
            a = m
    return bits


MODELS["hy1"] = lambda q, r, c: hybrid(q, r, c, 2, 1, 12, 24, 1 << 13, 1)
MODELS["hy2"] = lambda q, r, c: hybrid(q, r, c, 2, 1, 12, 24, 1 << 13, 2)
MODELS["hy3"] = lambda q, r, c: hybrid(q, r, c, 2, 1, 12, 24, 1 << 13, 3)


MODELS["cnt_l1k"] = lambda q, r, c: ms(q, r, c, 3, 2, 1, 12, True, True, False, 32, 1 << 10)
MODELS["cnt_l2k"] = lambda q, r, c: ms(q, r, c, 3, 2, 1, 12, True, True, False, 32, 1 << 11)
MODELS["cnt_l4k"] = lambda q, r, c: ms(q, r, c, 3, 2, 1, 12, True, True, False, 32, 1 << 12)
MODELS["av1_r5"] = lambda q, r, c: ms(q, r, c, 2, 2, 1, 12, True, True, False, 0, 0)
MODELS["nnc_noskip"] = lambda q, r, c: nnc_proxy(q, r, c, 10, False)


@njit(cache=True)
def ms3(q, rows, cols, wl, we, wu, eshift, nb, inc, limit, sgn_mode, mode2d):
    """``ms`` with a row EMA of magnitudes: context bucket of
    wl * (2|l| + |ll|) + we * ema + wu * (2|u| + |ul| + |ur|), where ema is an
    exponential average (weight 2**-eshift, fixed point x16) of |q| along the row,
    carried over from the previous row's end. ``mode2d``: bucket(l-part) x
    bucket(ema) two-dimensional context instead of the sum.
    sgn_mode 1: sign ctx (left, up); 2: (left, up, sign of the row's running sum)."""
    nctx = (nb + 1) * ((nb + 1) if mode2d else 1)
    fr = np.ones((nctx, NSYM), np.int64)
    tot = np.full(nctx, NSYM, np.int64)
    pa = np.full(512, 32768, np.int64)
    pb = np.full(512, 32768, np.int64)
    bc = np.zeros(512, np.int64)
    bits = 0.0
    ema = 0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 511, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        rs = 0  # running signed EMA (x16) of the row
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            el = 2 * a + b
            eu = 0
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                eu = 2 * abs(up) + ul + ur
                su = 0 if up == 0 else (1 if up > 0 else 2)
            if mode2d:
                ctx = _lbucket(wl * el + wu * eu, nb) * (nb + 1) + _lbucket((we * ema) >> 4, nb)
            else:
                ctx = _lbucket(wl * el + wu * eu + ((we * ema) >> 4), nb)
            s, nraw = sym_of(m)
            bits += _freq_cost_update(fr, tot, ctx, s, inc, limit) + nraw
            if m:
                if sgn_mode == 1:
                    sc = sa * 3 + su
                else:
                    sc = (sa * 3 + su) * 3 + (0 if abs(rs) < 16 else (1 if rs > 0 else 2))
                bits += _bit_cost(pa, pb, bc, sc, 1 if v < 0 else 0, 4, 7)
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            ema += ((m << 4) * 4 - ema) >> eshift  # 4 * |q| scale, x16
            rs += ((v << 4) - rs) >> 3
            b = a
            a = m
    return bits


MODELS["e_sum4"] = lambda q, r, c: ms3(q, r, c, 2, 1, 1, 4, 12, 24, 1 << 13, 1, False)
MODELS["e_sum3"] = lambda q, r, c: ms3(q, r, c, 2, 1, 1, 3, 12, 24, 1 << 13, 1, False)
MODELS["e_sum5"] = lambda q, r, c: ms3(q, r, c, 2, 1, 1, 5, 12, 24, 1 << 13, 1, False)
MODELS["e_noup4"] = lambda q, r, c: ms3(q, r, c, 2, 1, 0, 4, 12, 24, 1 << 13, 1, False)
MODELS["e_2d4"] = lambda q, r, c: ms3(q, r, c, 2, 1, 1, 4, 8, 24, 1 << 13, 1, True)
MODELS["e_sum4_rs"] = lambda q, r, c: ms3(q, r, c, 2, 1, 1, 4, 12, 24, 1 << 13, 2, False)


@njit(cache=True)
def ms4(q, rows, cols, nb, eshift, inc, limit, variant, ctxsa, scls):
    """2-D context (bucket of 2|l| + |ll| + 2|u| + |ul| + |ur|) x (bucket of the row's
    magnitude EMA), optionally x the left sign (``ctxsa``).
    variant 0: class(m) then sign (ctx left x up sign, x min(class, scls) if scls).
    variant 1: sig flag (binary, ctx), sign (binary, left x up), class(m - 1) (ctx x own sign)."""
    ns = 3 if ctxsa else 1
    nctx = (nb + 1) * (nb + 1) * ns * 2
    fr = np.ones((nctx, NSYM), np.int64)
    tot = np.full(nctx, NSYM, np.int64)
    pa = np.full(4096, 32768, np.int64)
    pb = np.full(4096, 32768, np.int64)
    bc = np.zeros(4096, np.int64)
    bits = 0.0
    ema = 0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 4095, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = 2 * a + b
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += 2 * abs(up) + ul + ur
                su = 0 if up == 0 else (1 if up > 0 else 2)
            ctx = (_lbucket(e, nb) * (nb + 1) + _lbucket(ema >> 4, nb)) * ns + (sa if ctxsa else 0)
            neg = 1 if v < 0 else 0
            if variant == 0:
                s, nraw = sym_of(m)
                bits += _freq_cost_update(fr, tot, ctx, s, inc, limit) + nraw
                if m:
                    sc = sa * 3 + su
                    if scls:
                        sc = sc * (scls + 1) + min(s, scls)
                    bits += _bit_cost(pa, pb, bc, sc, neg, 4, 7)
            else:
                bits += _bit_cost(pa, pb, bc, 1000 + ctx, 1 if m else 0, 4, 7)
                if m:
                    bits += _bit_cost(pa, pb, bc, sa * 3 + su, neg, 4, 7)
                    s, nraw = sym_of(m - 1)
                    bits += _freq_cost_update(fr, tot, ctx * 2 + neg, s, inc, limit) + nraw
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            ema += ((m << 6) - ema) >> eshift
            b = a
            a = m
    return bits


MODELS["m4_base"] = lambda q, r, c: ms4(q, r, c, 8, 4, 24, 1 << 13, 0, False, 0)
MODELS["m4_sa"] = lambda q, r, c: ms4(q, r, c, 8, 4, 24, 1 << 13, 0, True, 0)
MODELS["m4_scls"] = lambda q, r, c: ms4(q, r, c, 8, 4, 24, 1 << 13, 0, False, 3)
MODELS["m4_sa_scls"] = lambda q, r, c: ms4(q, r, c, 8, 4, 24, 1 << 13, 0, True, 3)
MODELS["m4_hy"] = lambda q, r, c: ms4(q, r, c, 8, 4, 24, 1 << 13, 1, False, 0)
MODELS["m4_hy_sa"] = lambda q, r, c: ms4(q, r, c, 8, 4, 24, 1 << 13, 1, True, 0)


@njit(cache=True)
def st_rich(q, rows, cols, nb, ne, eshift, tabcost, shifted):
    """Static (two-pass) conditional entropy with the rich context: bucket of the
    neighbourhood (2|l| + |ll| + 2|u| + |ul| + |ur|) x bucket of the row's magnitude
    EMA; sign by (left, up) signs. ``tabcost`` bits per used (context, symbol) pair.
    ``shifted``: classes of m >> sh with sh = max(0, bucket - 4) (raw low bits)."""
    nctx = (nb + 1) * (ne + 1)
    h = np.zeros((nctx, NSYM), np.int64)
    hs = np.zeros((9, 2), np.int64)
    raw = 0.0
    ema = 0
    nrow = 0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        if allz:
            continue
        nrow += 1
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = 2 * a + b
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += 2 * abs(up) + ul + ur
                su = 0 if up == 0 else (1 if up > 0 else 2)
            be = _lbucket(e, 64)
            ctx = min(be, nb) * (ne + 1) + _lbucket(ema >> 4, ne + 1)
            if shifted:
                sh = max(0, be - 5)
                s, nraw = sym_of(m >> sh)
                nraw += sh
            else:
                s, nraw = sym_of(m)
            h[ctx, s] += 1
            raw += nraw
            if m:
                hs[sa * 3 + su, 1 if v < 0 else 0] += 1
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            ema += ((m << 6) - ema) >> eshift
            b = a
            a = m
    bits = raw + rows * 0.1
    table = 0.0
    for c in range(nctx):
        t = 0
        for s in range(NSYM):
            t += h[c, s]
        if t == 0:
            continue
        for s in range(NSYM):
            if h[c, s]:
                bits -= h[c, s] * math.log2(h[c, s] / t)
                table += tabcost
    for c in range(9):
        t = hs[c, 0] + hs[c, 1]
        for k in range(2):
            if hs[c, k]:
                bits -= hs[c, k] * math.log2(hs[c, k] / t)
    return bits + table


MODELS["st_rich0"] = lambda q, r, c: st_rich(q, r, c, 8, 8, 4, 0.0, False)
MODELS["st_rich0_16"] = lambda q, r, c: st_rich(q, r, c, 16, 8, 4, 0.0, False)
MODELS["st_rich6"] = lambda q, r, c: st_rich(q, r, c, 8, 8, 4, 6.0, False)
MODELS["st_rich0_sh"] = lambda q, r, c: st_rich(q, r, c, 16, 8, 4, 0.0, True)


@njit(cache=True)
def _bitlen(e):
    k = 0
    while e >> k:
        k += 1
    return k


@njit(cache=True)
def sym16(m):
    """16 classes: 0..3, two per octave up to 191, 15 = escape (>= 192): (symbol,
    raw bits) with the escape's Elias-gamma bits counted."""
    if m < 4:
        return m, 0
    if m >= 192:
        g = _bitlen(m - 192 + 1)
        return 15, 2 * g - 1
    k = _bitlen(m) - 1
    return 4 + 2 * (k - 2) + ((m >> (k - 1)) & 1), k - 1


@njit(cache=True)
def s16(q, rows, cols, T, eshift, rate_mode, sgn_mode, use_up, ew):
    """The v3 candidate: 16-symbol adaptive CDF (AV1-like), context (be', bE') from
    the neighbourhood sum e = 2|l| + |ll| + 2|u| + |ul| + |ur| and the row EMA
    (same scale), both relative to a shift sh = max(0, max(be, bE) - T) that scales
    the code down (m >> sh; sh raw low bits). Sign: adaptive binary, ctx (left, up).
    Row-zero flags."""
    nctx = (T + 1) * (T + 1)
    cdf = np.zeros((nctx, 17), np.int64)
    for c in range(nctx):
        for i in range(17):
            cdf[c, i] = (32768 * i) // 16
    cnt = np.zeros(nctx, np.int64)
    pa = np.full(64, 32768, np.int64)
    pb = np.full(64, 32768, np.int64)
    bc = np.zeros(64, np.int64)
    bits = 0.0
    ema = 0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 63, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = 2 * a + b
            su = 0
            if r > 0 and use_up:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += 2 * abs(up) + ul + ur
                su = 0 if up == 0 else (1 if up > 0 else 2)
            else:
                e += 4 * a
            be = _bitlen(e)
            bE = _bitlen((ema * ew) >> 8)
            sh = max(0, max(be, bE) - T)
            c = min(be - sh if be > sh else 0, T) * (T + 1) + min(bE - sh if bE > sh else 0, T)
            s, nraw = sym16(m >> sh)
            f = cdf[c, s + 1] - cdf[c, s]
            bits += -math.log2(f / 32768.0) + nraw + sh
            k = cnt[c]
            if rate_mode == 0:
                rate = 4 + (1 if k > 15 else 0) + (1 if k > 31 else 0)
            elif rate_mode == 1:
                rate = 5 + (1 if k > 15 else 0) + (1 if k > 31 else 0)
            elif rate_mode == 2:
                rate = min(1 + k, 5) if k < 31 else 5 + (1 if k > 63 else 0)
            else:
                rate = min(1 + _bitlen(k), rate_mode)
            cnt[c] = k + 1
            for i in range(1, 16):
                t = 32768 - 16 + i if i > s else i
                v = cdf[c, i]
                cdf[c, i] += (t - v) >> rate if t > v else -((v - t) >> rate)
            if m:
                if sgn_mode:
                    bits += _bit_cost(pa, pb, bc, sa * 3 + su, 1 if v < 0 else 0, 4, 7)
                else:
                    bits += 1
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            ema += ((m << 8) - ema) >> eshift
            b = a
            a = m
    return bits


MODELS["s16_T6"] = lambda q, r, c: s16(q, r, c, 6, 4, 0, 1, True, 7)
MODELS["s16_T5"] = lambda q, r, c: s16(q, r, c, 5, 4, 0, 1, True, 7)
MODELS["s16_T7"] = lambda q, r, c: s16(q, r, c, 7, 4, 0, 1, True, 7)
MODELS["s16_T6r1"] = lambda q, r, c: s16(q, r, c, 6, 4, 1, 1, True, 7)
MODELS["s16_T6r2"] = lambda q, r, c: s16(q, r, c, 6, 4, 2, 1, True, 7)
MODELS["s16_T6e3"] = lambda q, r, c: s16(q, r, c, 6, 3, 0, 1, True, 7)
MODELS["s16_R6"] = lambda q, r, c: s16(q, r, c, 6, 4, 6, 1, True, 7)
MODELS["s16_R7"] = lambda q, r, c: s16(q, r, c, 6, 4, 7, 1, True, 7)
MODELS["s16_R8"] = lambda q, r, c: s16(q, r, c, 6, 4, 8, 1, True, 7)
MODELS["s16_R9"] = lambda q, r, c: s16(q, r, c, 6, 4, 9, 1, True, 7)
MODELS["s16_T6e5"] = lambda q, r, c: s16(q, r, c, 6, 5, 0, 1, True, 7)


@njit(cache=True)
def s16ss(q, rows, cols, T, limit, minref, refshift, inc):
    """``s16`` with the semi-static counts model (tables frozen between refreshes;
    a context's table refreshes after max(minref, tot >> refshift) symbols)."""
    nctx = (T + 1) * (T + 1)
    fr = np.ones((nctx, 16), np.int64)
    tot = np.full(nctx, 16, np.int64)
    pf = np.ones((nctx, 16), np.int64)
    ptot = np.full(nctx, 16, np.int64)
    since = np.zeros(nctx, np.int64)
    pa = np.full(64, 32768, np.int64)
    pb = np.full(64, 32768, np.int64)
    bc = np.zeros(64, np.int64)
    bits = 0.0
    ema = 0
    for r in range(rows):
        base = r * cols
        allz = True
        for j in range(cols):
            if q[base + j] != 0:
                allz = False
                break
        bits += _bit_cost(pa, pb, bc, 63, 1 if allz else 0, 4, 7)
        if allz:
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            v = q[base + j]
            m = abs(v)
            e = 2 * a + b
            su = 0
            if r > 0:
                up = q[base - cols + j]
                ul = abs(q[base - cols + j - 1]) if j > 0 else 0
                ur = abs(q[base - cols + j + 1]) if j + 1 < cols else 0
                e += 2 * abs(up) + ul + ur
                su = 0 if up == 0 else (1 if up > 0 else 2)
            else:
                e += 4 * a
            be = _bitlen(e)
            bE = _bitlen((ema * 7) >> 8)
            sh = max(0, max(be, bE) - T)
            c = min(be - sh if be > sh else 0, T) * (T + 1) + min(bE - sh if bE > sh else 0, T)
            s, nraw = sym16(m >> sh)
            bits += _ss_cost_update(fr, tot, pf, ptot, since, c, s, inc, limit, minref,
                                    refshift) + nraw + sh
            if m:
                bits += _bit_cost(pa, pb, bc, sa * 3 + su, 1 if v < 0 else 0, 4, 7)
            sa = 0 if m == 0 else (1 if v > 0 else 2)
            ema += ((m << 8) - ema) >> 4
            b = a
            a = m
    return bits


MODELS["ss16_a"] = lambda q, r, c: s16ss(q, r, c, 6, 1 << 10, 16, 3, 16)
MODELS["ss16_b"] = lambda q, r, c: s16ss(q, r, c, 6, 1 << 12, 16, 3, 16)
MODELS["ss16_c"] = lambda q, r, c: s16ss(q, r, c, 6, 1 << 12, 32, 2, 16)
MODELS["ss16_d"] = lambda q, r, c: s16ss(q, r, c, 6, 1 << 13, 16, 3, 16)
MODELS["ss16_e"] = lambda q, r, c: s16ss(q, r, c, 6, 1 << 12, 8, 3, 16)


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"# {time.time() - t0:.0f}s", file=sys.stderr)
