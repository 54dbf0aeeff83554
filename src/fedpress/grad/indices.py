"""Index coding for sparse payloads: each payload takes the cheapest of four.

The indices are strictly increasing positions in ``[0, n)``; the gaps between them
(``idx[0]``, then ``idx[i] - idx[i-1] - 1``) are coded, or the positions as a bitmap:

``0`` bitmap: ``n`` bits, one per position (cheapest when dense, above ~1/8);
``1`` Rice: the gaps as Rice codes with the best parameter (a ``u8`` first);
   geometric gaps, i.e. positions spread at random, as top-k of noise gives;
``2`` Elias gamma of ``gap + 1``: gaps spanning orders of magnitude;
``3`` rANS of the gaps (fedpress's static coder with its own tables): clustered
   positions whose gaps follow no single geometric law.

Methods 1-3 are the shared coders of :mod:`fedpress.stages.coders` (Rice: ``u8 b`` then
the codes; gamma of ``gap + 1``; rANS with one table), mapped from this format's method
bytes in :data:`GAP_CODERS`.

Layout: ``u8`` method, then the method's bytes as a length-prefixed blob. The count
``k`` and the length ``n`` are the caller's (written beside the values).

Memory: :func:`read_indices` allocates at most :func:`read_peak_bytes` (its result
included): 24 bytes an index for the gap codings (the int64 gaps, ``gaps + 1`` and
their cumulative sum; a rANS stream whose every gap is escaped peaks at the same), the
bitmap ``n`` bytes of bits and 16 bytes an index. Beyond that, a rANS stream's
frequency tables take a fixed amount that does not grow with ``k`` or ``n``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._bytes import Reader, Writer
from ..errors import FormatError
from ..stages import coders
from ..stages.coders import EntropyCoder

BITMAP, RICE, GAMMA, RANS = 0, 1, 2, 3
#: the method byte -> the shared coder of the gaps (the bitmap codes positions, no gaps)
GAP_CODERS: dict[int, EntropyCoder[Any]] = {
    RICE: coders.RICE, GAMMA: coders.GAMMA, RANS: coders.RansCoder(ctx_model=0)}
METHODS = {BITMAP: "bitmap", **{m: c.name for m, c in GAP_CODERS.items()}}
#: bytes per index :func:`read_indices` allocates at its peak with a gap coding (int64
#: gaps, ``gaps + 1`` and their cumulative sum): 24.0 measured with Rice, gamma, rANS
#: and a rANS stream whose every gap is an 8-byte escape
GAP_BYTES_PER_INDEX = 24
#: the bitmap's bytes per index beyond its ``n`` bytes of bits (the positions, twice)
BITMAP_BYTES_PER_INDEX = 16


def read_peak_bytes(n: int, k: int) -> int:
    """The most :func:`read_indices` allocates reading ``k`` indices in ``[0, n)``,
    the indices it returns included (whatever the method a payload picks)."""
    return max(GAP_BYTES_PER_INDEX * k, n + BITMAP_BYTES_PER_INDEX * k)


def gaps_of(idx: np.ndarray) -> np.ndarray:
    """Gaps of strictly increasing ``idx``: ``idx[0]``, then ``idx[i] - idx[i-1] - 1``."""
    idx = np.asarray(idx, dtype=np.int64)
    gaps = np.empty_like(idx)
    if idx.size:
        gaps[0] = idx[0]
        np.subtract(idx[1:], idx[:-1] + 1, out=gaps[1:])
    return gaps


def candidates(idx: np.ndarray, n: int) -> dict[int, bytes]:
    """Every method's bytes (the bitmap only when it can win)."""
    gaps = gaps_of(idx)
    out: dict[int, bytes] = {}
    for method, coder in GAP_CODERS.items():
        w = Writer()
        coder.encode(gaps, w)
        out[method] = w.getvalue()
    if (n + 7) // 8 < min(len(v) for v in out.values()):
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        out[BITMAP] = np.packbits(mask).tobytes()
    return out


def write_indices(w: Writer, idx: np.ndarray, n: int) -> int:
    """Append the cheapest coding of ``idx`` (strictly increasing, in ``[0, n)``);
    returns the method used."""
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0)):
        raise ValueError("indices must be strictly increasing and within [0, n)")
    return w.smallest(candidates(idx, n))


def read_indices(rd: Reader, k: int, n: int) -> np.ndarray:
    """Read ``k`` indices in ``[0, n)`` written by :func:`write_indices`."""
    method = rd.u8()
    data = rd.blob(cap=rd.remaining, name="sparse indices")
    if k > n:
        raise FormatError(f"sparse payload: {k} indices for {n} values")
    if method == BITMAP:
        if len(data) != (n + 7) // 8:
            raise FormatError("sparse payload: bitmap of the wrong size")
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        if bits[n:].any():
            raise FormatError("sparse payload: bitmap padding is not zero")
        idx = np.flatnonzero(bits[:n]).astype(np.int64)
        if idx.size != k:
            raise FormatError(f"sparse payload: bitmap holds {idx.size} positions, not {k}")
        return idx
    coder = GAP_CODERS.get(method)
    if coder is None:
        raise FormatError(f"sparse payload: unknown index method {method}")
    sub = Reader(data, "sparse indices")
    gaps = coder.decode(sub, k)
    sub.expect_end()
    if gaps.size and (int(gaps.min()) < 0 or int(gaps.max()) >= n):
        raise FormatError("sparse payload: index gap out of range")
    idx = np.cumsum(gaps + 1) - 1
    if idx.size and idx[-1] >= n:
        raise FormatError("sparse payload: index beyond the tensor")
    return idx
