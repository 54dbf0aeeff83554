"""numba kernels of :mod:`fedpress.stages.crans`: rANS with per-symbol external contexts.

Same coder as :mod:`._kernels` (32-bit state in ``[2**16, 2**32)``, 16-bit words,
``2**pb``-slot tables, symbols ``s = min(z, k)``, lanes with states of their own),
but the context of symbol ``i`` also depends on a value ``ext[i]`` that both ends
compute from what they already hold (e.g. the previous round's decoded tensor):
``ctx = ext[i] * nsp + lut[min(s[i-1] + s[i-2], len(lut) - 1)]``, where the spatial
part restarts at each lane. Decoder errors come back as a negative status.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._kernels import (
    ERR_CONTEXT,
    ERR_ESCAPES,
    ERR_STATE,
    ERR_WORDS,
    STATE_LO,
    _put,
    encode_step,
)


@njit(cache=True, nogil=True, inline="always")
def _ctx(ext, i, nsp, lut, p1, p2):  # pragma: no cover - compiled
    m = p1 + p2
    top = lut.size - 1
    return ext[i] * nsp + lut[m if m < top else top]


@njit(cache=True, nogil=True)
def counts(z, bounds, k, ext, lut, nsp, nctx):  # pragma: no cover - compiled
    """Histograms of ``s = min(z, k)`` per context: shape ``(nctx, k + 1)``."""
    out = np.zeros((nctx, k + 1), np.int64)
    for j in range(bounds.size - 1):
        p1 = 0
        p2 = 0
        for i in range(bounds[j], bounds[j + 1]):
            v = z[i]
            s = v if v < k else k
            out[_ctx(ext, i, nsp, lut, p1, p2), s] += 1
            p2 = p1
            p1 = s
    return out


@njit(cache=True, nogil=True)
def encode(z, bounds, k, ext, lut, nsp, freq, cum, pb):  # pragma: no cover - compiled
    """rANS words of each lane (backwards, lanes one after the other) and the
    ``lanes + 1`` word offsets."""
    lanes = bounds.size - 1
    buf = np.empty(z.size + 2 * lanes, np.uint16)
    ends = np.empty(lanes, np.int64)
    starts = np.empty(lanes, np.int64)
    shift = 32 - pb
    for j in range(lanes):
        lo = bounds[j]
        end = bounds[j + 1] + 2 * (j + 1)
        p = end
        xj = np.int64(STATE_LO)
        for i in range(bounds[j + 1] - 1, lo - 1, -1):
            p1 = 0
            p2 = 0
            if i - 1 >= lo:
                a = z[i - 1]
                p1 = a if a < k else k
                if i - 2 >= lo:
                    b = z[i - 2]
                    p2 = b if b < k else k
            c = _ctx(ext, i, nsp, lut, p1, p2)
            v = z[i]
            s = v if v < k else k
            f = freq[c, s]
            if f <= 0:
                raise ValueError("crans: a coded symbol has no frequency in its context")
            p, xj = encode_step(buf, p, xj, f, cum[c, s], shift, pb)
        p -= 1
        buf[p] = xj & 0xFFFF
        p -= 1
        buf[p] = xj >> 16
        starts[j] = p
        ends[j] = end
    offsets = np.empty(lanes + 1, np.int64)
    total = 0
    for j in range(lanes):
        offsets[j] = total
        total += ends[j] - starts[j]
    offsets[lanes] = total
    out = np.empty(total, np.uint16)
    for j in range(lanes):
        out[offsets[j]:offsets[j + 1]] = buf[starts[j]:ends[j]]
    return out, offsets


@njit(cache=True, nogil=True)
def decode(words, wbounds, bounds, ebounds, k, table, pb, ext, lut, nsp, escapes, step,
           out):  # pragma: no cover - compiled
    """Decode every lane into ``out`` (residuals, or residuals times ``step``);
    returns a status (0 = fine). ``table`` as :func:`._kernels.build_table` makes it."""
    mask = (np.int64(1) << pb) - 1
    nctx = table.shape[0]
    for j in range(bounds.size - 1):
        w = wbounds[j]
        wend = wbounds[j + 1]
        if wend - w < 2:
            return ERR_WORDS
        x = (np.int64(words[w]) << 16) | np.int64(words[w + 1])
        w += 2
        e = ebounds[j]
        eend = ebounds[j + 1]
        p1 = 0
        p2 = 0
        for at in range(bounds[j], bounds[j + 1]):
            c = _ctx(ext, at, nsp, lut, p1, p2)
            if c >= nctx:
                return ERR_CONTEXT
            t = table[c, x & mask]
            s = t & 0xFFFF
            if s > k:
                return ERR_CONTEXT
            x = ((t >> 16) & 0xFFFFFF) * (x >> pb) + (t >> 40)
            if x < STATE_LO:
                if w >= wend:
                    return ERR_WORDS
                x = (x << 16) | np.int64(words[w])
                w += 1
            p2 = p1
            p1 = s
            if s == k:
                if e >= eend:
                    return ERR_ESCAPES
                s = escapes[e]
                e += 1
            _put(out, at, s, step)
        if x != STATE_LO or w != wend or e != eend:
            return ERR_STATE
    return 0


@njit(cache=True, nogil=True)
def magnitude_sign_contexts(mag, scale, lut, sign, nsign):  # pragma: no cover - compiled
    """``bucket(mag[i]) * nsign + sign_ctx(sign[i])`` as uint8.

    ``bucket`` is 0 for a zero magnitude, else ``1 + lut[min(int(mag * scale),
    len(lut) - 1)]`` (float32 arithmetic; an empty ``lut`` leaves the magnitude out);
    with ``nsign == 3`` the sign context is 0 for a zero, 1 for +, 2 for -, with
    ``nsign == 1`` it is left out. The same operations on both ends, bit for bit.
    """
    n = mag.size
    out = np.empty(n, np.uint8)
    top = lut.size - 1
    s32 = np.float32(scale)
    for i in range(n):
        b = 0
        m = mag[i]
        if top >= 0 and m > 0:
            q = m * s32
            j = int(q) if q < top else top  # NaN and inf go to the top
            b = 1 + lut[j]
        s = 0
        if nsign == 3:
            v = sign[i]
            s = (v > 0) + 2 * (v < 0)
        out[i] = b * nsign + s
    return out


@njit(cache=True, nogil=True)
def advance_magnitudes(out, ref, mag, alpha, has_old, new_mag, new_sign):  # pragma: no cover
    """One round of ``gaeb``'s history from the decoded tensor ``out`` (float32 or
    float64) minus the reference ``ref`` (float64; empty: none), ``d``, in float64
    (NaN/Inf count as 0, magnitudes are capped at float32's largest):
    ``new_mag = (1 - alpha) * mag + alpha * |d|`` in float32 (``|d|`` alone when
    ``has_old`` is false) and ``new_sign = sign(d)``."""
    a = np.float32(alpha)
    b = np.float32(1.0) - a
    with_ref = ref.size > 0
    for i in range(out.size):
        v = np.float64(out[i])
        if with_ref:
            v -= ref[i]
        if not np.isfinite(v):
            v = 0.0
        m = np.float32(min(abs(v), 3.4028234663852886e38))  # stays finite in float32
        new_mag[i] = b * mag[i] + a * m if has_old else m
        new_sign[i] = (v > 0) - (v < 0)
