"""numba kernels of the stages (rANS, quantizer), imported lazily: numba is heavy.

rANS with a 32-bit state in ``[2**16, 2**32)``, 16-bit renormalisation words and
probability tables of ``2**pb`` slots (``pb <= 16``), so every coding step moves
at most one word. The encoder runs backwards and fills its output from the end;
the decoder runs forwards. Symbols are ``s = min(z, k)`` of the zigzag codes
``z`` (``k`` is the escape symbol). The context of symbol ``i`` is a function of
the two previous symbols, computed the same way on both sides:
``ctx = lut[min(s[i-1] + s[i-2], len(lut) - 1)]``.

Decoder errors (words or escapes running out, an empty context, a state that does
not end where the encoder started) come back as a negative status, never as an
out-of-bounds access.
"""

from __future__ import annotations

import numpy as np
from numba import njit

STATE_LO = 1 << 16

ERR_WORDS, ERR_CONTEXT, ERR_ESCAPES, ERR_STATE = -1, -2, -3, -4


@njit(cache=True, nogil=True)
def quantize(x, step, max_code, y):  # pragma: no cover - compiled
    """Codes ``rint(x / step)`` (int64) and their values ``q * step`` into ``y``.

    Returns ``(q, ok)``; ``ok`` is False as soon as a code would reach ``max_code``.
    """
    n = x.size
    q = np.empty(n, np.int64)
    lim = np.float64(max_code)
    for i in range(n):
        v = np.rint(np.float64(x[i]) / step)
        if not abs(v) < lim:
            return q, False
        c = np.int64(v)
        q[i] = c
        y[i] = np.float64(c) * step
    return q, True


@njit(cache=True, nogil=True)
def quantize_symbols(x, step, max_code, y, cap, block_bits):  # pragma: no cover - compiled
    """Fused quantizer for the no-prediction path, one pass over ``x``.

    Writes ``q * step`` into ``y`` and returns ``(z, hist, nonzero, ok)``: the
    zigzag codes (uint32; codes stay below ``max_code <= 2**30``), the histogram
    of ``min(z, cap)``, which blocks of ``2**block_bits`` codes hold a non-zero one, and
    False as soon as a code would reach ``max_code``.
    """
    n = x.size
    z = np.empty(n, np.uint32)
    hist = np.zeros(cap + 1, np.int64)
    nonzero = np.zeros((n + (1 << block_bits) - 1) >> block_bits, np.uint8)
    lim = np.float64(max_code)
    for i in range(n):
        v = np.rint(np.float64(x[i]) / step)
        if not abs(v) < lim:
            return z, hist, nonzero.view(np.bool_), False
        c = np.int64(v)
        y[i] = np.float64(c) * step
        u = (c << 1) ^ (c >> 63)
        z[i] = u
        hist[u if u < cap else cap] += 1
        nonzero[i >> block_bits] |= u != 0
    return z, hist, nonzero.view(np.bool_), True


@njit(cache=True, nogil=True)
def symbols(r, cap):  # pragma: no cover - compiled
    """Zigzag codes of ``r`` and the histogram of ``min(z, cap)``."""
    n = r.size
    z = np.empty(n, np.int64)
    # four histograms, so runs of one symbol do not wait on their own increments
    hist = np.zeros((4, cap + 1), np.int64)
    for i in range(n):
        v = r[i]
        u = (v << 1) ^ (v >> 63)
        z[i] = u
        hist[i & 3, u if u < cap else cap] += 1
    return z, hist.sum(axis=0)


@njit(cache=True, nogil=True)
def context_counts(z, bounds, k, lut):  # pragma: no cover - compiled
    """Histograms of ``s = min(z, k)`` per context of ``lut``: shape (contexts, k + 1).

    Contexts restart at each lane start ``bounds[j]``, as the coder's do.
    """
    nctx = 0
    for j in range(lut.size):
        if lut[j] + 1 > nctx:
            nctx = lut[j] + 1
    counts = np.zeros((nctx, k + 1), np.int64)
    top = lut.size - 1
    for j in range(bounds.size - 1):
        p1 = 0
        p2 = 0
        for i in range(bounds[j], bounds[j + 1]):
            m = p1 + p2
            v = z[i]
            s = v if v < k else k
            counts[lut[m if m < top else top], s] += 1
            p2 = p1
            p1 = s
    return counts


@njit(cache=True, nogil=True)
def encode(z, bounds, k, lut, freq, cum, pb):  # pragma: no cover - compiled
    """rANS words (uint16) of ``s = min(z, k)`` per lane, the lanes one after the other.

    Lane ``j`` codes ``z[bounds[j]:bounds[j+1]]`` with its own state (contexts
    restart at the lane's start). Returns the words and ``(lanes + 1)`` word
    offsets.
    """
    lanes = bounds.size - 1
    buf = np.empty(z.size + 2 * lanes, np.uint16)
    pos = np.empty(lanes, np.int64)
    x = np.full(lanes, STATE_LO, np.int64)
    for j in range(lanes):
        pos[j] = bounds[j + 1] + 2 * (j + 1)  # lane j fills buf[.. pos[j]) backwards
    rcp = np.empty(freq.shape, np.float64)
    for c in range(freq.shape[0]):
        for v in range(freq.shape[1]):
            rcp[c, v] = 1.0 / freq[c, v] if freq[c, v] > 0 else 0.0
    shift = 32 - pb
    top = lut.size - 1
    for j in range(lanes):
        lo = bounds[j]
        xj = x[j]
        p = pos[j]
        for i in range(bounds[j + 1] - 1, lo - 1, -1):
            m = 0
            if i - 1 >= lo:
                a = z[i - 1]
                m += a if a < k else k
                if i - 2 >= lo:
                    b = z[i - 2]
                    m += b if b < k else k
            c = lut[m if m < top else top]
            v = z[i]
            s = v if v < k else k
            f = freq[c, s]
            if f <= 0:
                raise ValueError("rans: a coded symbol has no frequency in its context")
            # renormalise without a branch: the word is written either way and
            # kept only if the state is too large for this symbol
            out_ = xj >= (f << shift)
            buf[p - 1] = xj & 0xFFFF
            p -= out_
            xj >>= 16 * out_
            # xj // f through a float reciprocal, corrected to the exact quotient
            d = np.int64(np.float64(xj) * rcp[c, s])
            r = xj - d * f
            if r < 0:
                d -= 1
                r += f
            elif r >= f:
                d += 1
                r -= f
            xj = (d << pb) + r + cum[c, s]
        x[j] = xj
        pos[j] = p
    offsets = np.empty(lanes + 1, np.int64)
    total = 0
    for j in range(lanes):
        pos[j] -= 1
        buf[pos[j]] = x[j] & 0xFFFF
        pos[j] -= 1
        buf[pos[j]] = x[j] >> 16
        offsets[j] = total
        total += bounds[j + 1] + 2 * (j + 1) - pos[j]
    offsets[lanes] = total
    out = np.empty(total, np.uint16)
    for j in range(lanes):
        out[offsets[j]:offsets[j + 1]] = buf[pos[j]:bounds[j + 1] + 2 * (j + 1)]
    return out, offsets


@njit(cache=True, nogil=True)
def decode(words, wbounds, bounds, ebounds, k, table, pb, lut, escapes, step,
           out):  # pragma: no cover - compiled
    """Decode the symbols of every lane into ``out``. Returns a status (0 = fine).

    Lane ``j`` holds symbols ``bounds[j]:bounds[j+1]``, coded with its own state
    in ``words[wbounds[j]:wbounds[j+1]]``, its escaped values in
    ``escapes[ebounds[j]:ebounds[j+1]]``; lanes are decoded side by side, which
    hides the latency of one state's dependency chain behind the others.
    ``table[c, slot]`` packs ``symbol | freq << 16 | (slot - cum) << 40`` (symbol
    ``k + 1`` marks an empty context). The value written is the residual
    ``unzigzag(z)`` when ``step == 0``, else the residual times ``step`` in
    ``out``'s dtype (dequantization fused into the loop).
    """
    lanes = bounds.size - 1
    x = np.empty(lanes, np.int64)
    pos = np.empty(lanes, np.int64)
    p1 = np.zeros(lanes, np.int64)
    p2 = np.zeros(lanes, np.int64)
    e = np.empty(lanes, np.int64)
    longest = 0
    for j in range(lanes):
        w0 = wbounds[j]
        if wbounds[j + 1] - w0 < 2:
            return ERR_WORDS
        x[j] = (np.int64(words[w0]) << 16) | np.int64(words[w0 + 1])
        pos[j] = w0 + 2
        e[j] = ebounds[j]
        longest = max(longest, bounds[j + 1] - bounds[j])
    mask = (np.int64(1) << pb) - 1
    top = lut.size - 1
    for i in range(longest):
        for j in range(lanes):
            at = bounds[j] + i
            if at >= bounds[j + 1]:
                continue
            xj = x[j]
            m = p1[j] + p2[j]
            t = table[lut[m if m < top else top], xj & mask]
            s = t & 0xFFFF
            if s > k:
                return ERR_CONTEXT
            xj = ((t >> 16) & 0xFFFFFF) * (xj >> pb) + (t >> 40)
            if xj < STATE_LO:
                if pos[j] >= wbounds[j + 1]:
                    return ERR_WORDS
                xj = (xj << 16) | np.int64(words[pos[j]])
                pos[j] += 1
            x[j] = xj
            p2[j] = p1[j]
            p1[j] = s
            u = s
            if s == k:
                if e[j] >= ebounds[j + 1]:
                    return ERR_ESCAPES
                u = escapes[e[j]]
                e[j] += 1
            r = (u >> 1) ^ -(u & 1)
            if step == 0.0:
                out[at] = r
            else:
                out[at] = np.float64(r) * step
    for j in range(lanes):
        if x[j] != STATE_LO or pos[j] != wbounds[j + 1] or e[j] != ebounds[j + 1]:
            return ERR_STATE
    return 0
