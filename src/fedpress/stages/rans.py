"""Static rANS coding of integer residuals, with an optional magnitude context.

Written here (kernels in :mod:`._kernels`, compiled by numba) because the
decode speed of a general-purpose ANS library is the bottleneck of ``fpz``.

Symbols are the zigzag codes of the residuals (0, -1, 1, -2, ... -> 0, 1, 2, 3,
...). Symbols ``>= k`` are *escaped*: coded as ``k`` in the rANS stream, their
value stored beside it (zstd over the narrowest unsigned type), so rare outliers
do not blow up the tables. Each tensor's tables are the exact symbol histograms
normalised to ``2**pb`` slots and sent in the header.

Context models, chosen per tensor by estimated size (the ideal code length under the
normalised tables plus the table bytes; on streams of 262,144 symbols or more, model 1
is only counted when a sample of 16 chunks predicts it saves at least 0.2%):

``0`` order-0: one table.
``1`` magnitude: 12 tables selected by ``s[i-1] + s[i-2]`` (the magnitude of the
    two previous symbols, bucketed on integer edges); pays on gradients and
    early updates, whose magnitudes come in bursts (dead neurons, active inputs).

Layout::

    varint  k                escape symbol (alphabet 0..k)
    u8      pb               table precision (slots = 2**pb)
    u8      context model    0 or 1
    blob    tables           zstd frame of C x (k + 1) uint32 frequencies
    lanes - 1 times:         (lanes: 4 if n >= 4 * 2**14, else 1)
      varint  words            rANS words of this lane
      varint  escapes          escaped symbols of this lane
    blob    escapes          u8 width (1, 2, 4, 8) + zstd frame of (value - k)
    rest    words            uint16 little-endian, the lanes' rANS streams one
                             after the other (the last lane takes what is left)

Lane ``j`` codes symbols ``n * j // lanes`` to ``n * (j + 1) // lanes`` with
a state of its own (contexts restart at each lane); the decoder runs the lanes
side by side.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import zstandard

from .._bytes import Reader, Writer
from ..errors import FormatError
from . import kernels, spread_chunks
from .ans import entropy_bits
from .lossless import ZSTD

#: largest escape symbol a stream may declare (decoder's limit)
MAX_K = (1 << 14) - 1
#: largest escape symbol the encoder uses: the alphabet fills at most a quarter of
#: the table (a fuller table squeezes the frequent symbols; wider tails are escaped)
ENCODE_MAX_K = (1 << 12) - 1
#: table precision cap: 2**14 slots of 8 bytes per context stay in L2 (2**16 slots
#: made decoding at REL 1e-4 1.5x slower for a 0.2% smaller stream)
MAX_PB = 14
#: streams of at least LANES * MIN_LANE symbols are cut into LANES lanes with
#: states of their own, decoded side by side
LANES, MIN_LANE = 4, 1 << 14
#: long streams try the context model only if a sample of this many chunks of this
#: many symbols says it saves this share of the bits
_CTX_SAMPLE_CHUNKS, _CTX_CHUNK, _CTX_MIN_GAIN = 16, 4096, 0.002
#: histograms handed to encode_symbols count min(z, HIST_CAP)
HIST_CAP = ENCODE_MAX_K + 1
#: share of symbols allowed to be escaped (the tail of the histogram)
ESCAPE_SHARE = 1.0 / 1024
#: residuals the coder takes: ``-2**62 <= r < 2**62`` (their zigzag codes fit in int64)
MIN_RESIDUAL, MAX_RESIDUAL = -(1 << 62), (1 << 62) - 1
_EDGES = np.array([0, 1, 2, 4, 6, 9, 14, 22, 34, 52, 80, 124], dtype=np.int64)
#: context model id -> lookup table of ``s[i-1] + s[i-2]`` (integer edges only,
#: so both ends build it bit for bit)
LUTS: dict[int, np.ndarray] = {
    0: np.zeros(1, dtype=np.uint8),
    1: (np.searchsorted(_EDGES, np.arange(256), side="right") - 1).astype(np.uint8),
}
_NO_ESCAPES = np.zeros(0, dtype=np.int64)


def zigzag(r: np.ndarray) -> np.ndarray:
    """Signed int64 -> unsigned codes as int64 (0, -1, 1, -2 -> 0, 1, 2, 3)."""
    return (r << 1) ^ (r >> 63)


def unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ -(z & 1)


def escape_symbol(hist: np.ndarray, n: int) -> int:
    """Smallest ``k`` with at most ``ESCAPE_SHARE`` of the ``n`` symbols ``>= k``.

    ``hist`` is the histogram of ``min(z, HIST_CAP)``.
    """
    allowed = int(n * ESCAPE_SHARE)
    tail = np.cumsum(hist[::-1])[::-1]  # tail[j] = #symbols >= j
    ok = np.flatnonzero(tail <= allowed)
    return min(int(ok[0]) if ok.size else ENCODE_MAX_K, ENCODE_MAX_K)


def precision(k: int) -> int:
    """Table precision (``pb``, slots = ``2**pb``) of an alphabet ``0..k``."""
    return int(min(MAX_PB, max(11, int(k + 1).bit_length() + 3)))


def normalize(counts: np.ndarray, pb: int) -> np.ndarray:
    """Frequencies summing to ``2**pb`` (rows of zeros stay zero), >= 1 where count > 0."""
    return kernels().normalize(np.ascontiguousarray(counts, dtype=np.int64), pb)


@dataclass
class Model:
    """Normalised tables of one candidate model and their cost."""

    #: the model byte written in the stream
    ctx_model: int
    #: (contexts, k + 1) int64 frequencies, each row summing to ``2**pb`` (or zero)
    freq: np.ndarray
    #: the tables as written: zstd frame of ``freq`` as uint32
    table_blob: bytes
    #: estimated stream bytes: ideal code length plus ``table_blob``
    est_bytes: float


def build_model(counts: np.ndarray, pb: int, ctx_model: int) -> Model:
    """The :class:`Model` of per-context histograms ``counts`` at precision ``pb``."""
    freq = normalize(counts, pb)
    used = counts > 0
    bits = float((counts[used] * (pb - np.log2(freq[used]))).sum())
    blob = ZSTD.encode_array(freq.astype(np.uint32))
    return Model(ctx_model, freq, blob, bits / 8 + len(blob))


@dataclass(frozen=True)
class Tables:
    """The head of a stream: escape symbol, precision, model byte, frequency tables.

    The encoder's (:func:`fit`) carry the frequencies and their frame ``blob``; the
    decoder's (:func:`read_tables`) the checked slot table ``slots`` the kernels
    decode with.
    """

    k: int
    pb: int
    model: int
    freq: np.ndarray
    blob: bytes = b""
    slots: np.ndarray | None = None


@dataclass(frozen=True)
class Lanes:
    """The body of a stream as :func:`read_lanes` checked it, ready for a kernel."""

    words: np.ndarray    # uint16 rANS words of all lanes
    wbounds: np.ndarray  # word ranges of the lanes
    bounds: np.ndarray   # symbol ranges of the lanes
    ebounds: np.ndarray  # escape ranges of the lanes
    escapes: np.ndarray  # escaped values (int64, ``>= k``)


def symbols(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag codes of int64 residuals ``r`` and the histogram :func:`encode_symbols` needs.

    Raises ValueError for residuals with ``|r| >= 2**62`` (their codes would overflow).
    """
    z, hist, ok = kernels().symbols(np.ascontiguousarray(r, dtype=np.int64), HIST_CAP)
    if not ok:
        raise ValueError("rans: residuals must lie within +-2**62")
    return z, hist


def encode(r: np.ndarray, w: Writer, ctx_model: int | None = None) -> None:
    """Append the rANS coding of int64 residuals ``r`` to ``w``.

    ``ctx_model`` None picks the context model with the smaller estimated size.
    """
    encode_symbols(*symbols(r), w, ctx_model)


def encode_symbols(z: np.ndarray, hist: np.ndarray, w: Writer,
                   ctx_model: int | None = None) -> None:
    """:func:`encode` from the zigzag codes ``z`` (uint32 or int64) and their
    histogram ``hist`` of ``min(z, HIST_CAP)`` (as :func:`symbols` gives)."""
    tables = fit(z, hist, ctx_model)
    write_tables(w, tables)
    encode_body(w, tables, z)


def fit(z: np.ndarray, hist: np.ndarray, ctx_model: int | None = None) -> Tables:
    """The tables for zigzag codes ``z`` (histogram ``hist`` of ``min(z, HIST_CAP)``):
    escape symbol, precision, and the context model (``ctx_model``, or with None the
    one of smaller estimated size)."""
    kern = kernels()
    k = escape_symbol(hist, z.size)
    pb = precision(k)
    models = [ctx_model] if ctx_model is not None else _promising_models(z, k)
    bounds = lane_bounds(z.size)
    best = None
    for m in models:
        if m == 0:
            counts = np.append(hist[:k], hist[k:].sum())[None, :]
        else:
            counts = kern.context_counts(z, bounds, k, LUTS[m])
        cand = build_model(counts, pb, m)
        if best is None or cand.est_bytes < best.est_bytes:
            best = cand
    assert best is not None
    return Tables(k, pb, best.ctx_model, best.freq, best.table_blob)


def cumulative(freq: np.ndarray) -> np.ndarray:
    """Per context, the cumulative frequency of each symbol (the encoder's tables)."""
    cum = np.zeros_like(freq)
    np.cumsum(freq[:, :-1], axis=1, out=cum[:, 1:])
    return cum


def encode_body(w: Writer, tables: Tables, z: np.ndarray) -> None:
    """Append the lanes of ``z`` coded with ``tables`` (of :func:`fit`)."""
    bounds = lane_bounds(z.size)
    words, offsets = kernels().encode(z, bounds, tables.k, LUTS[tables.model], tables.freq,
                                      cumulative(tables.freq), tables.pb)
    write_body(w, z, tables.k, bounds, words, offsets)


def write_stream(w: Writer, z: np.ndarray, k: int, pb: int, model: int, table_blob: bytes,
                 bounds: np.ndarray, words: np.ndarray, offsets: np.ndarray) -> None:
    """The layout of the module docs, from the coded ``words`` of each lane (``offsets``)."""
    write_head(w, k, pb, model, table_blob)
    write_body(w, z, k, bounds, words, offsets)


def write_tables(w: Writer, tables: Tables) -> None:
    """The head of the stream: escape symbol, precision, model byte, tables."""
    write_head(w, tables.k, tables.pb, tables.model, tables.blob)


def write_head(w: Writer, k: int, pb: int, model: int, table_blob: bytes) -> None:
    """``varint k | u8 pb | u8 model | blob tables``."""
    w.varint(k)
    w.u8(pb)
    w.u8(model)
    w.blob(table_blob)


def write_body(w: Writer, z: np.ndarray, k: int, bounds: np.ndarray, words: np.ndarray,
               offsets: np.ndarray) -> None:
    """After the head: the lanes' sizes, the escapes, the words of every lane."""
    is_esc = z >= k
    for j in range(bounds.size - 2):
        w.varint(int(offsets[j + 1] - offsets[j]))
        w.varint(int(np.count_nonzero(is_esc[bounds[j] : bounds[j + 1]])))
    write_escapes(w, z[is_esc], k)
    w.raw(words.astype("<u2").tobytes())


def write_escapes(w: Writer, escaped: np.ndarray, k: int) -> None:
    """The escape block: the values ``>= k`` of the escaped symbols, in order."""
    rest = (escaped - k).astype(np.uint64)
    width = _width(rest)
    w.blob(bytes([width]) + ZSTD.encode_array(rest.astype(f"<u{width}")))


def _promising_models(z: np.ndarray, k: int) -> list[int]:
    """Context models worth an exact count: on long streams, model 1 only if a
    sample of contiguous chunks says it saves at least ``_CTX_MIN_GAIN``."""
    if z.size < _CTX_SAMPLE_CHUNKS * _CTX_CHUNK * 4:
        return list(LUTS)
    sample = spread_chunks(z, _CTX_SAMPLE_CHUNKS, _CTX_CHUNK)
    chunks = np.arange(_CTX_SAMPLE_CHUNKS + 1, dtype=np.int64) * _CTX_CHUNK  # contexts restart
    bits = [sum(entropy_bits(row) for row in kernels().context_counts(sample, chunks, k, LUTS[m]))
            for m in LUTS]
    return list(LUTS) if bits[1] < (1 - _CTX_MIN_GAIN) * bits[0] else [0]


def lane_bounds(n: int) -> np.ndarray:
    """Symbol ranges of the lanes: ``LANES`` equal parts of long streams, else one."""
    lanes = LANES if n >= LANES * MIN_LANE else 1
    return np.array([n * j // lanes for j in range(lanes + 1)], dtype=np.int64)


def _width(v: np.ndarray) -> int:
    top = int(v.max()) if v.size else 0
    for width in (1, 2, 4):
        if top < 1 << (8 * width):
            return width
    return 8


def decode(rd: Reader, n: int, *, step: float = 0.0,
           dtype: np.dtype | None = None) -> np.ndarray:
    """Read ``n`` residuals written by :func:`encode`.

    By default returns the int64 residuals. With ``step > 0`` returns
    ``residual * step`` in ``dtype`` instead, computed in the decoding loop.
    """
    return decode_body(rd, read_tables(rd), n, step=step, dtype=dtype)


def read_tables(rd: Reader) -> Tables:
    """The head of a stream (:func:`write_tables`), checked: escape symbol, precision,
    context model, and tables whose rows add up to the precision."""
    k, pb, ctx_model = read_head(rd, "rans")
    if ctx_model not in LUTS:
        raise FormatError(f"rans: unknown context model {ctx_model}")
    nctx = int(LUTS[ctx_model].max()) + 1
    freq, slots = read_freq(rd, nctx, k, pb, "rans")
    return Tables(k, pb, ctx_model, freq, slots=slots)


def decode_body(rd: Reader, tables: Tables, n: int, *, step: float = 0.0,
                dtype: np.dtype | None = None) -> np.ndarray:
    """The ``n`` residuals (or their values times ``step``) after the head ``tables``
    (of :func:`read_tables`)."""
    assert tables.slots is not None
    lanes = read_lanes(rd, n, tables.k, "rans")
    if step > 0.0:
        out = np.empty(n, dtype=dtype if dtype is not None else np.float64)
    else:
        out = np.empty(n, dtype=np.int64)
    status = kernels().decode(lanes.words, lanes.wbounds, lanes.bounds, lanes.ebounds,
                              tables.k, tables.slots, tables.pb, LUTS[tables.model],
                              lanes.escapes, float(step), out)
    if status:
        raise FormatError(f"rans: corrupt stream (status {status})")
    return out


def read_head(rd: Reader, what: str) -> tuple[int, int, int]:
    """``(k, pb, model byte)`` of a stream's head, ``k`` and ``pb`` checked (the model
    byte is the caller's to check); ``what`` names the coder in messages."""
    k = rd.varint(cap=MAX_K, name=f"{what} escape symbol")
    pb = rd.u8()
    if not 1 <= pb <= 16 or (k + 1) > (1 << pb):
        raise FormatError(f"{what}: bad table precision {pb} for alphabet {k + 1}")
    return k, pb, rd.u8()


def read_freq(rd: Reader, nctx: int, k: int, pb: int, what: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """The ``nctx`` x ``(k + 1)`` frequency tables after the head and the slot table
    the kernels decode with; FormatError unless every row adds up to ``2**pb`` (or 0)."""
    raw = rd.blob(cap=rd.remaining, name=f"{what} tables")
    freq = ZSTD.decode_array(raw, (nctx, k + 1), np.uint32).astype(np.int64)
    return freq, _decode_table(freq, pb, k)


def read_lanes(rd: Reader, n: int, k: int, what: str) -> Lanes:
    """The body of a stream of ``n`` symbols with escape symbol ``k``: the lanes'
    sizes, the escapes and the words, each count checked against ``n`` and the
    bytes present."""
    bounds = lane_bounds(n)
    lanes = bounds.size - 1
    nwords, nesc = [], []
    for _ in range(lanes - 1):
        nwords.append(rd.varint(cap=n + 2, name=f"{what} lane words"))
        nesc.append(rd.varint(cap=n, name=f"{what} lane escapes"))
    escapes = read_escapes(rd, k, n)
    words = rd.rest()
    if len(words) % 2 or len(words) > 2 * (n + 2 * lanes):
        raise FormatError(f"{what}: bad stream length")
    wbounds = np.array([0, *itertools.accumulate(nwords), len(words) // 2], dtype=np.int64)
    ebounds = np.array([0, *itertools.accumulate(nesc), escapes.size], dtype=np.int64)
    if wbounds[-2] > wbounds[-1] or ebounds[-2] > ebounds[-1]:
        raise FormatError(f"{what}: lane sizes exceed the stream")
    return Lanes(np.frombuffer(words, dtype="<u2"), wbounds, bounds, ebounds, escapes)


def _decode_table(freq: np.ndarray, pb: int, k: int) -> np.ndarray:
    """Per context and slot: ``symbol | freq << 16 | (slot - cum) << 40`` (int64)."""
    sums = freq.sum(axis=1)
    if np.any((sums != 0) & (sums != 1 << pb)):
        raise FormatError("rans: a frequency table does not add up to its precision")
    return kernels().build_table(np.ascontiguousarray(freq), pb, k)


def read_escapes(rd: Reader, k: int, n: int) -> np.ndarray:
    """The escaped values written by :func:`write_escapes` (at most ``n``)."""
    raw = rd.blob(cap=rd.remaining, name="rans escapes")
    if not raw:
        raise FormatError("rans: missing escape block")
    width = raw[0]
    if width not in (1, 2, 4, 8):
        raise FormatError(f"rans: bad escape width {width}")
    body = bytes(raw[1:])
    try:
        size = zstandard.frame_content_size(body) if body else 0
    except zstandard.ZstdError as exc:
        raise FormatError(f"rans: bad escape block: {exc}") from None
    if size < 0 or size % width or size // width > n:
        raise FormatError("rans: bad escape block")
    if size == 0:
        return _NO_ESCAPES
    vals = ZSTD.decode_array(body, size // width, f"<u{width}")
    vals = vals.astype(np.uint64)
    if vals.size and int(vals.max()) > (1 << 63) - 1 - k:
        raise FormatError("rans: escape value out of range")
    return vals.astype(np.int64) + k
