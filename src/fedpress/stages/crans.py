"""Static rANS with external contexts: both ends know a context for every symbol.

:mod:`fedpress.stages.rans` conditions each symbol on the two symbols before it.
Here the context may also depend on ``ext[i]``, a small integer (below ``n_ext``)
that the encoder and the decoder compute from what they both hold before the
stream is read, e.g. the previous round's decoded tensor (``eblc.gaeb``). The
prediction then costs no side information: a bad one only makes the tables less
sharp, and the model is chosen per stream by estimated size among candidates that
include ignoring ``ext``.

Models: ``ext`` used or not, times a spatial part on ``s[i-1] + s[i-2]``:
``0`` none, ``1`` the 12 buckets of ``rans.LUTS[1]``, ``2`` three buckets
(0, 1-2, 3 and more).

Layout (as :mod:`.rans`, with another model byte)::

    varint  k                escape symbol (alphabet 0..k)
    u8      pb               table precision
    u8      model            bit 7: ext used; bits 0-6: spatial model
    blob    tables           zstd frame of C x (k + 1) uint32 frequencies,
                             C = (n_ext if ext used else 1) x spatial contexts
    lanes - 1 times:         varint words, varint escapes (as rans)
    blob    escapes          as rans
    rest    words            uint16 little-endian, lane after lane
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from functools import cache
from types import ModuleType

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..errors import FormatError
from . import kernels
from . import rans as _rans

USE_EXT = 0x80
SPATIAL: dict[int, np.ndarray] = {
    0: np.zeros(1, dtype=np.uint8),
    1: _rans.LUTS[1],
    2: (np.searchsorted(np.array([0, 1, 3]), np.arange(256), side="right") - 1).astype(np.uint8),
}
#: every (ext used, spatial model) pair
ALL_MODELS: tuple[tuple[bool, int], ...] = tuple(itertools.product((False, True), SPATIAL))


@cache
def _kern() -> ModuleType:
    from . import _ctxkernels

    return _ctxkernels


def _nsp(spatial: int) -> int:
    return int(SPATIAL[spatial].max()) + 1


def encode(z: np.ndarray, hist: np.ndarray, ext: np.ndarray, n_ext: int, w: Writer,
           models: Iterable[tuple[bool, int]] = ALL_MODELS) -> tuple[bool, int]:
    """Append the coding of zigzag codes ``z`` (histogram ``hist`` of
    ``min(z, rans.HIST_CAP)``) with contexts ``ext`` (uint8, ``< n_ext``) to ``w``.

    Takes the candidate model with the smallest estimated size (ideal code length
    plus table bytes) and returns it.
    """
    k = _rans._escape_symbol(hist, z.size)
    pb = _rans._precision(k)
    bounds = _rans.lane_bounds(z.size)
    zeros = np.zeros(z.size, np.uint8)
    best = None
    for use_ext, sp in models:
        nctx = (n_ext if use_ext else 1) * _nsp(sp)
        counts = _kern().counts(z, bounds, k, ext if use_ext else zeros, SPATIAL[sp], _nsp(sp),
                                nctx)
        cand = _rans._model(counts, pb, sp | (USE_EXT if use_ext else 0))
        if best is None or cand.est_bytes < best.est_bytes:
            best = cand
    assert best is not None
    use_ext, sp = bool(best.ctx_model & USE_EXT), best.ctx_model & ~USE_EXT
    cum = np.zeros_like(best.freq)
    np.cumsum(best.freq[:, :-1], axis=1, out=cum[:, 1:])
    words, offsets = _kern().encode(z, bounds, k, ext if use_ext else zeros, SPATIAL[sp],
                                    _nsp(sp), best.freq, cum, pb)
    is_esc = z >= k
    w.varint(k)
    w.u8(pb)
    w.u8(best.ctx_model)
    w.blob(best.table_blob)
    for j in range(bounds.size - 2):
        w.varint(int(offsets[j + 1] - offsets[j]))
        w.varint(int(np.count_nonzero(is_esc[bounds[j] : bounds[j + 1]])))
    _rans.write_escapes(w, z[is_esc], k)
    w.raw(words.astype("<u2").tobytes())
    return use_ext, sp


def decode(rd: Reader, n: int, ext: np.ndarray, n_ext: int, *, step: float = 0.0,
           dtype: np.dtype | None = None) -> np.ndarray:
    """Read ``n`` residuals written by :func:`encode` given the same ``ext``.

    Returns int64 residuals, or with ``step > 0`` the residuals times ``step`` in
    ``dtype``.
    """
    k = rd.varint(cap=_rans.MAX_K, name="crans escape symbol")
    pb = rd.u8()
    if not 1 <= pb <= 16 or (k + 1) > (1 << pb):
        raise FormatError(f"crans: bad table precision {pb} for alphabet {k + 1}")
    model = rd.u8()
    use_ext, sp = bool(model & USE_EXT), model & ~USE_EXT
    if sp not in SPATIAL:
        raise FormatError(f"crans: unknown spatial model {sp}")
    nctx = (n_ext if use_ext else 1) * _nsp(sp)
    raw = rd.blob(cap=rd.remaining, name="crans tables")
    freq = _rans._ZSTD.decode(raw, TensorSpec((nctx, k + 1), np.dtype(np.uint32)))
    table = _rans._decode_table(freq.astype(np.int64), pb, k)
    bounds = _rans.lane_bounds(n)
    lanes = bounds.size - 1
    nwords, nesc = [], []
    for _ in range(lanes - 1):
        nwords.append(rd.varint(cap=n + 2, name="crans lane words"))
        nesc.append(rd.varint(cap=n, name="crans lane escapes"))
    escapes = _rans.read_escapes(rd, k, n)
    words = rd.rest()
    if len(words) % 2 or len(words) > 2 * (n + 2 * lanes):
        raise FormatError("crans: bad stream length")
    wbounds = np.array([0, *itertools.accumulate(nwords), len(words) // 2], dtype=np.int64)
    ebounds = np.array([0, *itertools.accumulate(nesc), escapes.size], dtype=np.int64)
    if wbounds[-2] > wbounds[-1] or ebounds[-2] > ebounds[-1]:
        raise FormatError("crans: lane sizes exceed the stream")
    ctx = ext if use_ext else np.zeros(n, np.uint8)
    if ctx.size != n:
        raise ValueError("crans: one context per symbol")
    out = np.empty(n, dtype=(dtype or np.float64) if step > 0.0 else np.int64)
    status = _kern().decode(np.frombuffer(words, dtype="<u2"), wbounds, bounds, ebounds, k,
                            table, pb, ctx, SPATIAL[sp], _nsp(sp), escapes, float(step), out)
    if status:
        raise FormatError(f"crans: corrupt stream (status {status})")
    return out


__all__ = ["ALL_MODELS", "SPATIAL", "USE_EXT", "decode", "encode", "kernels"]
