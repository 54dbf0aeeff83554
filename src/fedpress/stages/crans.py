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
(0, 1-2, 3 and more); the encoder tries those of ``ALL_MODELS``.

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

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np

from .._bytes import Reader, Writer
from ..errors import FormatError
from . import kernels, spread_chunks
from . import rans as _rans

USE_EXT = 0x80
SPATIAL: dict[int, np.ndarray] = {
    0: np.zeros(1, dtype=np.uint8),
    1: _rans.LUTS[1],
    2: (np.searchsorted(np.array([0, 1, 3]), np.arange(256), side="right") - 1).astype(np.uint8),
}
#: the candidate (ext used, spatial model) pairs: with ext, only the coarse spatial
#: part (ext x 12 spatial contexts makes tables as large as the data they save on)
ALL_MODELS: tuple[tuple[bool, int], ...] = ((False, 0), (False, 1), (True, 0), (True, 2))
#: long streams rank the models on this many chunks of this many symbols
SAMPLE_CHUNKS, SAMPLE_CHUNK = 16, 4096
_SAMPLE_CHUNKS, _SAMPLE_CHUNK = SAMPLE_CHUNKS, SAMPLE_CHUNK


@cache
def _kern() -> ModuleType:
    from . import _ctxkernels

    return _ctxkernels


def _nsp(spatial: int) -> int:
    return int(SPATIAL[spatial].max()) + 1


def estimates(zs: np.ndarray, es: np.ndarray, n_ext: int, n: int, k: int, pb: int,
              models: Sequence[tuple[bool, int]] = ALL_MODELS, chunk: int = 0,
              ) -> dict[tuple[bool, int], float]:
    """Estimated bytes of each model for a stream of ``n`` symbols, from a sample
    ``zs`` (contexts ``es``) of contiguous chunks of ``chunk`` symbols (0: one run)."""
    cut = chunk or zs.size
    bounds = np.arange(zs.size // cut + 1, dtype=np.int64) * cut
    scale = n / zs.size
    est = {}
    for m in models:
        model = _rans.build_model(_counts(zs, bounds, k, es, n_ext, m), pb, 0)
        est[m] = (model.est_bytes - len(model.table_blob)) * scale + len(model.table_blob)
    return est


def sample_saving(est: dict[tuple[bool, int], float]) -> float:
    """Estimated saving of the best model with ext over the best without."""
    with_ext = min(v for m, v in est.items() if m[0])
    plain = min(v for m, v in est.items() if not m[0])
    return 1.0 - with_ext / plain


def _candidates(z: np.ndarray, k: int, pb: int, ext: np.ndarray, n_ext: int,
                models: Sequence[tuple[bool, int]],
                ) -> tuple[list[tuple[bool, int]], dict[tuple[bool, int], float] | None]:
    """``models`` best first by estimated size, and the estimates, on long streams
    (from a sample of contiguous chunks; contexts restart at each chunk); short
    streams get ``(models, None)``: count them all."""
    if z.size < _SAMPLE_CHUNKS * _SAMPLE_CHUNK * 4:
        return list(models), None
    est = estimates(spread_chunks(z, _SAMPLE_CHUNKS, _SAMPLE_CHUNK),
                    spread_chunks(ext, _SAMPLE_CHUNKS, _SAMPLE_CHUNK), n_ext, z.size, k, pb,
                    models, _SAMPLE_CHUNK)
    return sorted(models, key=est.__getitem__), est


def _counts(z: np.ndarray, bounds: np.ndarray, k: int, ext: np.ndarray, n_ext: int,
            model: tuple[bool, int]) -> np.ndarray:
    use_ext, sp = model
    nctx = (n_ext if use_ext else 1) * _nsp(sp)
    ctx = ext if use_ext else np.zeros(z.size, np.uint8)
    return _kern().counts(z, bounds, k, ctx, SPATIAL[sp], _nsp(sp), nctx)


@dataclass
class Choice:
    """The model :func:`choose` picked for a stream, ready for :func:`write`."""

    use_ext: bool
    spatial: int
    model: _rans.Model
    k: int
    pb: int
    #: estimated saving of using ext (share of the bytes without it); 0 if unused
    saving: float


def choose(z: np.ndarray, hist: np.ndarray, ext: np.ndarray, n_ext: int,
           models: Sequence[tuple[bool, int]] = ALL_MODELS,
           est: dict[tuple[bool, int], float] | None = None) -> Choice:
    """The candidate model with the smallest estimated size for zigzag codes ``z``
    (histogram ``hist`` of ``min(z, rans.HIST_CAP)``) with contexts ``ext`` (uint8,
    ``< n_ext``): ideal code length plus table bytes.

    Short streams count every model exactly. Long ones rank the models on a sample
    (``est``, if the caller has it), count the best model with ``ext`` exactly (a
    sample underestimates the tables' bytes, which grow with the contexts) and
    compare it with the sample's estimate for the best one without (an underestimate
    too: the saving comes out low, never high); the model without ``ext`` is counted
    only if it wins.
    """
    k = _rans.escape_symbol(hist, z.size)
    pb = _rans.precision(k)
    bounds = _rans.lane_bounds(z.size)
    if est is None:
        ranked, est = _candidates(z, k, pb, ext, n_ext, models)
    else:
        ranked = sorted((m for m in models if m in est), key=est.__getitem__)
    best_ext = next((m for m in ranked if m[0]), None)
    best_plain = next((m for m in ranked if not m[0]), None)

    def build(m: tuple[bool, int]) -> _rans.Model:
        return _rans.build_model(_counts(z, bounds, k, ext, n_ext, m), pb,
                            m[1] | (USE_EXT if m[0] else 0))

    built = {m: build(m) for m in (best_ext,) if m is not None}
    if best_plain is not None:
        if est is None or best_ext is None:
            built[best_plain] = build(best_plain)
        if best_plain in built:
            plain_bytes = built[best_plain].est_bytes
        else:
            assert est is not None  # built above when there is no estimate
            plain_bytes = est[best_plain]
        if best_ext is None or built[best_ext].est_bytes >= plain_bytes:
            model = built.get(best_plain) or build(best_plain)
            return Choice(False, best_plain[1], model, k, pb, 0.0)
        saving = 1.0 - built[best_ext].est_bytes / plain_bytes
    else:
        saving = 1.0
    assert best_ext is not None
    return Choice(True, best_ext[1], built[best_ext], k, pb, saving)


def write(choice: Choice, z: np.ndarray, ext: np.ndarray, w: Writer) -> None:
    """Append the coding of ``z`` with the model of ``choice`` (see :func:`choose`)."""
    head = tables(choice)
    _rans.write_tables(w, head)
    write_body(head, z, ext, w)


def tables(choice: Choice) -> _rans.Tables:
    """The head :func:`write` writes for ``choice``: rans's, with crans's model byte
    (bit 7: ext used; bits 0-6: spatial model)."""
    m = choice.model
    return _rans.Tables(choice.k, choice.pb, m.ctx_model, m.freq, m.table_blob)


def write_body(head: _rans.Tables, z: np.ndarray, ext: np.ndarray, w: Writer) -> None:
    """After the head (:func:`tables`): the lanes of ``z`` coded with its tables."""
    use_ext, sp = bool(head.model & USE_EXT), head.model & ~USE_EXT
    bounds = _rans.lane_bounds(z.size)
    ctx = ext if use_ext else np.zeros(z.size, np.uint8)
    words, offsets = _kern().encode(z, bounds, head.k, ctx, SPATIAL[sp], _nsp(sp), head.freq,
                                    _rans.cumulative(head.freq), head.pb)
    _rans.write_body(w, z, head.k, bounds, words, offsets)


def encode(z: np.ndarray, hist: np.ndarray, ext: np.ndarray, n_ext: int, w: Writer,
           models: Sequence[tuple[bool, int]] = ALL_MODELS) -> Choice:
    """:func:`choose` then :func:`write`; returns the choice."""
    choice = choose(z, hist, ext, n_ext, models)
    write(choice, z, ext, w)
    return choice


def decode(rd: Reader, n: int, ext: np.ndarray, n_ext: int, *, step: float = 0.0,
           dtype: np.dtype | None = None) -> np.ndarray:
    """Read ``n`` residuals written by :func:`encode` given the same ``ext``.

    Returns int64 residuals, or with ``step > 0`` the residuals times ``step`` in
    ``dtype``.
    """
    return decode_body(rd, read_tables(rd, n_ext), n, ext, step=step, dtype=dtype)


def read_tables(rd: Reader, n_ext: int) -> _rans.Tables:
    """The head of a stream, checked (as :func:`rans.read_tables`); ``model`` is
    crans's model byte (bit 7: ext used; bits 0-6: spatial model)."""
    k, pb, model = _rans.read_head(rd, "crans")
    use_ext, sp = bool(model & USE_EXT), model & ~USE_EXT
    if sp not in SPATIAL:
        raise FormatError(f"crans: unknown spatial model {sp}")
    nctx = (n_ext if use_ext else 1) * _nsp(sp)
    freq, slots = _rans.read_freq(rd, nctx, k, pb, "crans")
    return _rans.Tables(k, pb, model, freq, slots=slots)


def decode_body(rd: Reader, tables: _rans.Tables, n: int, ext: np.ndarray, *,
                step: float = 0.0, dtype: np.dtype | None = None) -> np.ndarray:
    """The ``n`` residuals (or their values times ``step``) after the head ``tables``
    (of :func:`read_tables`), given the same ``ext`` as the encoder."""
    assert tables.slots is not None
    use_ext, sp = bool(tables.model & USE_EXT), tables.model & ~USE_EXT
    lanes = _rans.read_lanes(rd, n, tables.k, "crans")
    ctx = ext if use_ext else np.zeros(n, np.uint8)
    if ctx.size != n:
        raise ValueError("crans: one context per symbol")
    out = np.empty(n, dtype=(dtype or np.float64) if step > 0.0 else np.int64)
    status = _kern().decode(lanes.words, lanes.wbounds, lanes.bounds, lanes.ebounds, tables.k,
                            tables.slots, tables.pb, ctx, SPATIAL[sp], _nsp(sp), lanes.escapes,
                            float(step), out)
    if status:
        raise FormatError(f"crans: corrupt stream (status {status})")
    return out


__all__ = ["ALL_MODELS", "SPATIAL", "USE_EXT", "Choice", "choose", "decode", "decode_body",
           "encode", "estimates", "kernels", "read_tables", "sample_saving", "tables", "write",
           "write_body"]
