"""numba kernels of the bit-level integer codes (Rice/Golomb, Elias gamma).

Bits are written most significant first within each byte. Every decoder checks the
bit position against the stream length before reading and reports a running-out
stream as status ``ERR_BITS`` (never an out-of-bounds access).
"""

from __future__ import annotations

import numpy as np
from numba import njit

ERR_BITS, ERR_RANGE, ERR_BEYOND = -1, -2, -3


@njit(cache=True, nogil=True)
def rice_bits(v, b):  # pragma: no cover - compiled
    """Total bits of the Rice codes of ``v`` (non-negative int64) with parameter ``b``."""
    total = 0
    for i in range(v.size):
        total += (v[i] >> b) + 1 + b
    return total


@njit(cache=True, nogil=True)
def rice_encode(v, b, out):  # pragma: no cover - compiled
    """Rice codes of ``v`` into ``out`` (zeroed uint8, large enough): for each value
    ``q = v >> b`` one-bits, a zero-bit, then the ``b`` low bits."""
    pos = 0
    for i in range(v.size):
        q = v[i] >> b
        for _ in range(q):
            out[pos >> 3] |= np.uint8(0x80 >> (pos & 7))
            pos += 1
        pos += 1  # the terminating zero
        r = v[i]
        for j in range(b - 1, -1, -1):
            if (r >> j) & 1:
                out[pos >> 3] |= np.uint8(0x80 >> (pos & 7))
            pos += 1
    return pos


@njit(cache=True, nogil=True)
def rice_decode(buf, n, b, cap, out):  # pragma: no cover - compiled
    """Read ``n`` Rice codes (parameter ``b``) into ``out``; values above ``cap``
    give ``ERR_RANGE``. Returns the number of bits read, or a negative status."""
    nbits = buf.size * 8
    pos = 0
    for i in range(n):
        q = 0
        while True:
            if pos >= nbits:
                return ERR_BITS
            bit = (buf[pos >> 3] >> (7 - (pos & 7))) & 1
            pos += 1
            if bit == 0:
                break
            q += 1
            if (q << b) > cap:
                return ERR_RANGE
        if pos + b > nbits:
            return ERR_BITS
        r = 0
        for _ in range(b):
            r = (r << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1)
            pos += 1
        val = (q << b) | r
        if val > cap:
            return ERR_RANGE
        out[i] = val
    return pos


@njit(cache=True, nogil=True)
def gamma_bits(v):  # pragma: no cover - compiled
    """Total bits of the Elias gamma codes of ``v`` (int64 >= 1)."""
    total = 0
    for i in range(v.size):
        n = 0
        x = v[i]
        while x > 1:
            x >>= 1
            n += 1
        total += 2 * n + 1
    return total


@njit(cache=True, nogil=True)
def gamma_encode(v, out):  # pragma: no cover - compiled
    """Elias gamma codes of ``v`` (>= 1) into ``out`` (zeroed): ``floor(log2 v)``
    zero-bits, then ``v`` in binary (its leading one first)."""
    pos = 0
    for i in range(v.size):
        x = v[i]
        n = 0
        while (x >> n) > 1:
            n += 1
        pos += n
        for j in range(n, -1, -1):
            if (x >> j) & 1:
                out[pos >> 3] |= np.uint8(0x80 >> (pos & 7))
            pos += 1
    return pos


@njit(cache=True, nogil=True)
def gamma_read(buf, pos, nbits):  # pragma: no cover - compiled
    """One Elias gamma code at bit ``pos`` of ``buf`` (``nbits`` long): ``(value, next
    pos)``, or ``(ERR_BITS, pos)`` if the stream ends, ``(ERR_RANGE, pos)`` if the
    code is longer than 62 bits."""
    zeros = 0
    while True:
        if pos >= nbits:
            return ERR_BITS, pos
        if (buf[pos >> 3] >> (7 - (pos & 7))) & 1:
            break
        zeros += 1
        pos += 1
        if zeros > 62:
            return ERR_RANGE, pos
    if pos + zeros + 1 > nbits:
        return ERR_BITS, pos
    x = 0
    for _ in range(zeros + 1):
        x = (x << 1) | ((buf[pos >> 3] >> (7 - (pos & 7))) & 1)
        pos += 1
    return x, pos


@njit(cache=True, nogil=True)
def gamma_decode(buf, n, cap, out):  # pragma: no cover - compiled
    """Read ``n`` Elias gamma codes into ``out``; values above ``cap`` (or longer
    than 62 bits) give ``ERR_RANGE``. Returns the bits read or a negative status."""
    nbits = buf.size * 8
    pos = 0
    for i in range(n):
        x, pos = gamma_read(buf, pos, nbits)
        if x < 0:
            return x
        if x > cap:
            return ERR_RANGE
        out[i] = x
    return pos


@njit(cache=True, nogil=True)
def elias_levels(gaps, signs, mags, k, n, s, out):  # pragma: no cover - compiled
    """Decode ``k`` Elias triples into ``out`` (QSGD's sparse levels): a gamma gap (cap
    ``n``), a sign bit, a gamma magnitude (cap ``s``; none when ``s == 1``). ``s == 0``
    reads the gaps only (no sign, magnitude or write). Returns ``(status, value,
    bits)``: ``(0, 0, bits of the gaps)`` after the gaps-only pass, ``(0, 0, bits of
    the magnitudes)`` after the whole one, or an error status (``ERR_RANGE`` with the
    cap exceeded as value, ``ERR_BEYOND`` for a position past ``n``). Every read is
    checked against its stream's length."""
    gbits = gaps.size * 8
    mbits = mags.size * 8
    gp = 0
    mp = 0
    at = -1
    for i in range(k):
        gap, gp = gamma_read(gaps, gp, gbits)
        if gap == ERR_BITS:
            return ERR_BITS, 0, 0
        if gap == ERR_RANGE or gap > n:
            return ERR_RANGE, n, 0
        at += gap
        if at >= n:
            return ERR_BEYOND, 0, 0
        if s == 0:
            continue
        mag = 1
        if s > 1:
            mag, mp = gamma_read(mags, mp, mbits)
            if mag == ERR_BITS:
                return ERR_BITS, 0, 0
            if mag == ERR_RANGE or mag > s:
                return ERR_RANGE, s, 0
        if (signs[i >> 3] >> (7 - (i & 7))) & 1:
            out[at] = -mag
        else:
            out[at] = mag
    return 0, 0, gp if s == 0 else mp
