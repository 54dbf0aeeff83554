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

import heapq

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
def quantize_symbols(x, step, max_code, y, cap, block_bits, eb):  # pragma: no cover
    """Fused quantizer for the no-prediction path, one pass over ``x``.

    Writes ``q * step`` into ``y`` and returns ``(z, hist, nonzero, n_over, ok)``:
    the zigzag codes (uint32; codes stay below ``max_code <= 2**30``), the
    histogram of ``min(z, cap)``, which blocks of ``2**block_bits`` codes hold a
    non-zero one, how many values have ``|x - y| > eb`` exactly (in float64,
    after ``y``'s rounding: what the error-bound envelope would find; counting
    costs less than collecting), and False as soon as a code would reach
    ``max_code``.
    """
    n = x.size
    z = np.empty(n, np.uint32)
    b = 1 << block_bits
    nonzero = np.zeros((n + b - 1) >> block_bits, np.uint8)
    n_over = 0
    lim = np.float64(max_code)
    for blk in range(nonzero.size):
        # the block's flag stays in a register (a read-modify-write of one byte
        # per value would chain every value to the previous one)
        seen = np.int64(0)
        for i in range(blk * b, min(n, blk * b + b)):
            xi = np.float64(x[i])
            v = np.rint(xi / step)
            if not abs(v) < lim:
                return z, np.zeros(cap + 1, np.int64), nonzero.view(np.bool_), n_over, False
            c = np.int64(v)
            y[i] = np.float64(c) * step
            n_over += not abs(np.float64(y[i]) - xi) <= eb  # NaN counts as over
            u = (c << 1) ^ (c >> 63)
            z[i] = u
            seen |= u
        nonzero[blk] = seen != 0
    hist = histogram(z, cap)
    return z, hist, nonzero.view(np.bool_), n_over, True


@njit(cache=True, nogil=True)
def histogram(z, cap):  # pragma: no cover - compiled
    """Histogram of ``min(z, cap)``, in four interleaved copies (runs of one symbol
    would otherwise wait on their own increments)."""
    h = np.zeros((4, cap + 1), np.int64)
    for i in range(z.size):
        u = z[i]
        h[i & 3, u if u < cap else cap] += 1
    return h[0] + h[1] + h[2] + h[3]


@njit(cache=True, nogil=True)
def symbols(r, cap):  # pragma: no cover - compiled
    """Zigzag codes of ``r`` and the histogram of ``min(z, cap)``; ``ok`` is False
    (and nothing else meaningful) if some ``|r| >= 2**62`` (its code would overflow)."""
    z = np.empty(r.size, np.int64)
    lim = np.int64(1) << 62
    for i in range(r.size):
        v = r[i]
        if v >= lim or v < -lim:
            return z, np.zeros(cap + 1, np.int64), False
        z[i] = (v << 1) ^ (v >> 63)
    return z, histogram(z, cap), True


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


@njit(cache=True, nogil=True, inline="always")
def encode_step(buf, p, xj, f, start, shift, pb):  # pragma: no cover - compiled
    """One rANS step backwards: code a symbol of frequency ``f`` and cumulative
    frequency ``start`` into state ``xj``, writing into ``buf`` below ``p``; returns
    the new ``(p, xj)``."""
    # renormalise without a branch: the word is written either way and kept only if
    # the state is too large for this symbol
    out_ = xj >= (f << shift)
    buf[p - 1] = xj & 0xFFFF
    p -= out_
    xj >>= 16 * out_
    # the state fits 32 bits here: 32-bit division is much faster than 64-bit (and
    # than a float reciprocal with a correction)
    xu = np.uint32(xj)
    fu = np.uint32(f)
    return p, (np.int64(xu // fu) << pb) + np.int64(xu % fu) + start


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
            p, xj = encode_step(buf, p, xj, f, cum[c, s], shift, pb)
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


@njit(cache=True, nogil=True, inline="always")
def _put(out, at, u, step):  # pragma: no cover - compiled
    """``out[at]`` = the residual of zigzag code ``u`` (``step == 0``), else it times
    ``step``; two stores, so the integer never passes through a float."""
    r = (u >> 1) ^ -(u & 1)
    if step == 0.0:
        out[at] = r
    else:
        out[at] = np.float64(r) * step


@njit(cache=True, nogil=True)
def _decode_lane(words, wend, x, pos, p1, p2, e, eend, start, end, k, table, pb, lut,
                 escapes, step, out):  # pragma: no cover - compiled
    """Decode symbols ``start:end`` of one lane; returns ``(status, x, pos, p1, p2, e)``."""
    mask = (np.int64(1) << pb) - 1
    top = lut.size - 1
    for at in range(start, end):
        m = p1 + p2
        t = table[lut[m if m < top else top], x & mask]
        s = t & 0xFFFF
        if s > k:
            return ERR_CONTEXT, x, pos, p1, p2, e
        x = ((t >> 16) & 0xFFFFFF) * (x >> pb) + (t >> 40)
        if x < STATE_LO:
            if pos >= wend:
                return ERR_WORDS, x, pos, p1, p2, e
            x = (x << 16) | np.int64(words[pos])
            pos += 1
        p2 = p1
        p1 = s
        if s == k:
            if e >= eend:
                return ERR_ESCAPES, x, pos, p1, p2, e
            s = escapes[e]
            e += 1
        _put(out, at, s, step)
    return 0, x, pos, p1, p2, e


@njit(cache=True, nogil=True)
def decode(words, wbounds, bounds, ebounds, k, table, pb, lut, escapes, step,
           out):  # pragma: no cover - compiled
    """Decode the symbols of every lane into ``out``. Returns a status (0 = fine).

    Lane ``j`` holds symbols ``bounds[j]:bounds[j+1]``, coded with its own state
    in ``words[wbounds[j]:wbounds[j+1]]``, its escaped values in
    ``escapes[ebounds[j]:ebounds[j+1]]``. With 4 lanes the lanes are decoded side
    by side, written out lane by lane in scalar variables so each state stays in
    a register (one state's dependency chain hides behind the others': +50% over
    a loop over lane arrays). ``table[c, slot]`` packs
    ``symbol | freq << 16 | (slot - cum) << 40`` (symbol ``k + 1`` marks an empty
    context). The value written is the residual ``unzigzag(z)`` when ``step == 0``,
    else the residual times ``step`` in ``out``'s dtype (dequantization fused).
    """
    lanes = bounds.size - 1
    for j in range(lanes):
        if wbounds[j + 1] - wbounds[j] < 2:
            return ERR_WORDS
    x = np.empty(lanes, np.int64)
    pos = np.empty(lanes, np.int64)
    for j in range(lanes):
        x[j] = (np.int64(words[wbounds[j]]) << 16) | np.int64(words[wbounds[j] + 1])
        pos[j] = wbounds[j] + 2
    p1 = np.zeros(lanes, np.int64)
    p2 = np.zeros(lanes, np.int64)
    e = ebounds[:lanes].copy()
    done = 0
    if lanes == 4:
        done = bounds[1] - bounds[0]
        for j in range(1, 4):
            done = min(done, bounds[j + 1] - bounds[j])
        status = _decode4(words, wbounds, bounds, ebounds, k, table, pb, lut, escapes, step,
                          out, x, pos, p1, p2, e, done)
        if status:
            return status
    for j in range(lanes):
        status, x[j], pos[j], p1[j], p2[j], e[j] = _decode_lane(
            words, wbounds[j + 1], x[j], pos[j], p1[j], p2[j], e[j], ebounds[j + 1],
            bounds[j] + done, bounds[j + 1], k, table, pb, lut, escapes, step, out)
        if status:
            return status
    for j in range(lanes):
        if x[j] != STATE_LO or pos[j] != wbounds[j + 1] or e[j] != ebounds[j + 1]:
            return ERR_STATE
    return 0


@njit(cache=True, nogil=True)
def _decode4(words, wbounds, bounds, ebounds, k, table, pb, lut, escapes, step, out,
             x, pos, p1, p2, e, count):  # pragma: no cover - compiled
    """The first ``count`` symbols of each of 4 lanes; state in and out through the arrays."""
    mask = (np.int64(1) << pb) - 1
    top = lut.size - 1
    x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
    w0, w1, w2, w3 = pos[0], pos[1], pos[2], pos[3]
    a0, a1, a2, a3 = p1[0], p1[1], p1[2], p1[3]
    b0, b1, b2, b3 = p2[0], p2[1], p2[2], p2[3]
    e0, e1, e2, e3 = e[0], e[1], e[2], e[3]
    o0, o1, o2, o3 = bounds[0], bounds[1], bounds[2], bounds[3]
    for i in range(count):
        m = a0 + b0
        t = table[lut[m if m < top else top], x0 & mask]
        s0 = t & 0xFFFF
        x0 = ((t >> 16) & 0xFFFFFF) * (x0 >> pb) + (t >> 40)
        m = a1 + b1
        t = table[lut[m if m < top else top], x1 & mask]
        s1 = t & 0xFFFF
        x1 = ((t >> 16) & 0xFFFFFF) * (x1 >> pb) + (t >> 40)
        m = a2 + b2
        t = table[lut[m if m < top else top], x2 & mask]
        s2 = t & 0xFFFF
        x2 = ((t >> 16) & 0xFFFFFF) * (x2 >> pb) + (t >> 40)
        m = a3 + b3
        t = table[lut[m if m < top else top], x3 & mask]
        s3 = t & 0xFFFF
        x3 = ((t >> 16) & 0xFFFFFF) * (x3 >> pb) + (t >> 40)
        if max(max(s0, s1), max(s2, s3)) > k:
            return ERR_CONTEXT
        if x0 < STATE_LO:
            if w0 >= wbounds[1]:
                return ERR_WORDS
            x0 = (x0 << 16) | np.int64(words[w0])
            w0 += 1
        if x1 < STATE_LO:
            if w1 >= wbounds[2]:
                return ERR_WORDS
            x1 = (x1 << 16) | np.int64(words[w1])
            w1 += 1
        if x2 < STATE_LO:
            if w2 >= wbounds[3]:
                return ERR_WORDS
            x2 = (x2 << 16) | np.int64(words[w2])
            w2 += 1
        if x3 < STATE_LO:
            if w3 >= wbounds[4]:
                return ERR_WORDS
            x3 = (x3 << 16) | np.int64(words[w3])
            w3 += 1
        b0, a0, b1, a1, b2, a2, b3, a3 = a0, s0, a1, s1, a2, s2, a3, s3
        if s0 == k:
            if e0 >= ebounds[1]:
                return ERR_ESCAPES
            s0 = escapes[e0]
            e0 += 1
        if s1 == k:
            if e1 >= ebounds[2]:
                return ERR_ESCAPES
            s1 = escapes[e1]
            e1 += 1
        if s2 == k:
            if e2 >= ebounds[3]:
                return ERR_ESCAPES
            s2 = escapes[e2]
            e2 += 1
        if s3 == k:
            if e3 >= ebounds[4]:
                return ERR_ESCAPES
            s3 = escapes[e3]
            e3 += 1
        _put(out, o0 + i, s0, step)
        _put(out, o1 + i, s1, step)
        _put(out, o2 + i, s2, step)
        _put(out, o3 + i, s3, step)
    x[0], x[1], x[2], x[3] = x0, x1, x2, x3
    pos[0], pos[1], pos[2], pos[3] = w0, w1, w2, w3
    p1[0], p1[1], p1[2], p1[3] = a0, a1, a2, a3
    p2[0], p2[1], p2[2], p2[3] = b0, b1, b2, b3
    e[0], e[1], e[2], e[3] = e0, e1, e2, e3
    return 0


@njit(cache=True, nogil=True)
def build_table(freq, pb, k):  # pragma: no cover - compiled
    """The decoder's slot table (see :func:`decode`) from validated frequencies."""
    nctx = freq.shape[0]
    table = np.full((nctx, 1 << pb), k + 1, np.int64)
    for c in range(nctx):
        slot = 0
        for s in range(k + 1):
            f = freq[c, s]
            for j in range(f):
                table[c, slot] = s | (f << 16) | (j << 40)
                slot += 1
    return table


@njit(cache=True, nogil=True)
def gather_blocks(v, zero, block_bits):  # pragma: no cover - compiled
    """The values of ``v`` outside the blocks marked in ``zero`` (blocks of 2**block_bits)."""
    n = v.size
    b = 1 << block_bits
    keep = 0
    for i in range(zero.size):
        if not zero[i]:
            keep += min(b, n - i * b)
    out = np.empty(keep, v.dtype)
    at = 0
    for i in range(zero.size):
        if not zero[i]:
            lo = i * b
            hi = min(lo + b, n)
            out[at:at + hi - lo] = v[lo:hi]
            at += hi - lo
    return out


@njit(cache=True, nogil=True)
def scatter_blocks(kept, zero, block_bits, out):  # pragma: no cover - compiled
    """Inverse of :func:`gather_blocks` into ``out`` (zeros in the marked blocks)."""
    n = out.size
    b = 1 << block_bits
    at = 0
    for i in range(zero.size):
        lo = i * b
        hi = min(lo + b, n)
        if zero[i]:
            out[lo:hi] = 0
        else:
            out[lo:hi] = kept[at:at + hi - lo]
            at += hi - lo


@njit(cache=True, nogil=True)
def normalize(counts, pb):  # pragma: no cover - compiled
    """Frequencies summing to ``2**pb`` per row (rows of zeros stay zero), >= 1 where
    the count is > 0. Counts are scaled down; the slots the rare symbols' minimum of
    1 costs are taken from the others in proportion to their size, the rounding
    slack goes to the most frequent symbol. Raises ValueError if a row uses more
    symbols than there are slots."""
    total = 1 << pb
    out = np.zeros(counts.shape, np.int64)
    for row in range(counts.shape[0]):
        c = counts[row]
        n = c.sum()
        if n == 0:
            continue
        if np.count_nonzero(c) > total:
            raise ValueError("rans: more symbols in use than table slots")
        scale = total / n
        f = out[row]
        for s in range(c.size):
            v = np.int64(c[s] * scale)
            f[s] = 1 if (v == 0 and c[s] > 0) else v
        d = total - f.sum()
        if d < 0:
            spare = 0  # slots above the minimum of 1
            for s in range(c.size):
                if f[s] > 1:
                    spare += f[s] - 1
            for s in range(c.size):
                if f[s] > 1:
                    f[s] -= ((f[s] - 1) * -d) // spare
            d = total - f.sum()
            order = np.argsort(-f)  # what rounding left over: one slot each from the largest
            j = 0
            while d < 0:
                s = order[j % order.size]
                if f[s] > 1:
                    f[s] -= 1
                    d += 1
                j += 1
        if d > 0:
            f[np.argmax(c)] += d
    return out


@njit(cache=True, nogil=True)
def huffman_encode(z, k, codes, lengths, nbits):  # pragma: no cover - compiled
    """Bits (MSB first, whole bytes, zero-padded) of the codes of ``min(z, k)``."""
    out = np.zeros((nbits + 7) >> 3, np.uint8)
    acc = np.uint64(0)
    have = 0  # bits in acc
    pos = 0
    for i in range(z.size):
        v = z[i]
        s = v if v < k else k
        ln = lengths[s]
        acc = (acc << np.uint64(ln)) | np.uint64(codes[s])
        have += ln
        while have >= 8:
            have -= 8
            out[pos] = np.uint8((acc >> np.uint64(have)) & np.uint64(0xFF))
            pos += 1
    if have:
        out[pos] = np.uint8((acc << np.uint64(8 - have)) & np.uint64(0xFF))
    return out


@njit(cache=True, nogil=True)
def huffman_decode(data, nbits, n, k, table, maxlen, escapes, step, out):  # pragma: no cover
    """Decode ``n`` symbols with ``table[peek(maxlen)] = symbol << 5 | length``.

    Returns a status: 0, or ERR_WORDS (bits run out), ERR_CONTEXT (a prefix no code
    starts with), ERR_ESCAPES, ERR_STATE (not every bit used). Values as in
    :func:`decode` (the residual, or it times ``step``).
    """
    acc = np.uint64(0)
    have = 0
    pos = 0
    used = 0
    e = 0
    mask = (np.uint64(1) << np.uint64(maxlen)) - np.uint64(1)
    for i in range(n):
        while have < maxlen:  # refill (zero bits past the end)
            b = np.uint64(data[pos]) if pos < data.size else np.uint64(0)
            acc = ((acc << np.uint64(8)) | b) & np.uint64(0xFFFFFFFFFFFF)
            pos += 1
            have += 8
        t = table[np.int64((acc >> np.uint64(have - maxlen)) & mask)]
        ln = t & 31
        if ln == 0:
            return ERR_CONTEXT
        have -= ln
        used += ln
        if used > nbits:
            return ERR_WORDS
        s = np.int64(t >> 5)
        if s == k:
            if e >= escapes.size:
                return ERR_ESCAPES
            s = escapes[e]
            e += 1
        _put(out, i, s, step)
    if used != nbits or e != escapes.size:
        return ERR_STATE
    return 0


@njit(cache=True, nogil=True)
def huffman_depths(weights):  # pragma: no cover - compiled
    """Depth of each leaf in a Huffman tree of ``weights`` (int64, >= 2 leaves).

    Nodes get ids in creation order (leaves first) and remember their parent; the
    depths follow from the root down in reverse creation order.
    """
    n = weights.size
    parent = np.zeros(2 * n - 1, np.int64)
    heap = [(weights[i], np.int64(i)) for i in range(n)]
    heapq.heapify(heap)
    nxt = n
    while len(heap) > 1:
        wa, a = heapq.heappop(heap)
        wb, b = heapq.heappop(heap)
        parent[a] = nxt
        parent[b] = nxt
        heapq.heappush(heap, (wa + wb, np.int64(nxt)))
        nxt += 1
    depth = np.zeros(2 * n - 1, np.int64)
    for node in range(2 * n - 3, -1, -1):  # the root (2n - 2) has depth 0
        depth[node] = depth[parent[node]] + 1
    return depth[:n]
