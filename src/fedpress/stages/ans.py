"""Order-0 range-ANS coding of integer symbols with ``constriction``.

The model is the exact symbol histogram of the tensor, sent in the header, so
encoder and decoder build the same quantized distribution. Layout::

    varint  zigzag(lo)         smallest symbol
    varint  nsym               alphabet size (symbols lo .. lo + nsym - 1)
    blob    counts             zstd frame of nsym uint32 counts (sum = n)
    rest    ANS words          uint32, little-endian

A single-symbol alphabet needs no words. Decoding checks every count and
length against ``n`` and the bytes present, and that the words decode to symbols
of exactly the header's histogram and leave the coder in its initial state (a
truncated stream, or one with words left over, is refused).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._bytes import Reader, Writer
from .._deps import require
from ..errors import FormatError
from .lossless import ZSTD

#: largest alphabet coded with ANS (the histogram header grows with it)
MAX_ALPHABET = 1 << 22
#: largest ``|lo|`` a stream may declare (its zigzag code is capped at 2**62)
MAX_LO = 1 << 61


@dataclass(frozen=True)
class Histogram:
    """The head of a stream: the smallest symbol and the exact symbol counts."""

    lo: int
    counts: np.ndarray  # uint32, one per symbol lo .. lo + counts.size - 1


def zigzag(v: int) -> int:
    return (v << 1) if v >= 0 else ((-v << 1) - 1)


def unzigzag(u: int) -> int:
    return (u >> 1) if not u & 1 else -((u + 1) >> 1)


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy (total bits) of symbols with histogram ``counts``."""
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(-(c * np.log2(c / n)).sum()) if n else 0.0


def encode(sym: np.ndarray, w: Writer) -> None:
    """Append the ANS coding of int64 symbols ``sym`` to ``w``."""
    hist = fit(sym)
    write_histogram(w, hist)
    encode_body(w, hist, sym)


def fit(sym: np.ndarray) -> Histogram:
    """The histogram of int64 symbols ``sym`` (an empty array: one unused symbol 0).

    Raises ValueError for an alphabet over ``MAX_ALPHABET`` or symbols beyond
    ``+-MAX_LO`` (a decoder would refuse the stream).
    """
    if sym.size == 0:
        return Histogram(0, np.zeros(1, np.uint32))
    lo, hi = int(sym.min()), int(sym.max())
    if hi - lo + 1 > MAX_ALPHABET:
        raise ValueError("alphabet too large for ANS")
    if not -MAX_LO <= lo <= MAX_LO:
        raise ValueError(f"ans: symbols must lie within +-2**61, got {lo}")
    counts = np.bincount((sym - lo).astype(np.int32)).astype(np.uint32)
    return Histogram(lo, counts)


def write_histogram(w: Writer, hist: Histogram) -> None:
    """The head: ``varint zigzag(lo) | varint nsym | blob zstd(counts)``."""
    w.varint(zigzag(hist.lo))
    w.varint(hist.counts.size)
    w.blob(ZSTD.encode_array(hist.counts))


def encode_body(w: Writer, hist: Histogram, sym: np.ndarray) -> None:
    """After the head: the ANS words (none for a single-symbol alphabet)."""
    if hist.counts.size > 1:
        constriction = require("constriction", codec="fpz")
        model = constriction.stream.model.Categorical(hist.counts.astype(np.float64),
                                                      perfect=False)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse((sym - hist.lo).astype(np.int32), model)
        w.raw(coder.get_compressed().astype("<u4").tobytes())


def decode(r: Reader, n: int) -> np.ndarray:
    """Read ``n`` int64 symbols written by :func:`encode`."""
    return decode_body(r, read_histogram(r, n), n)


def read_histogram(r: Reader, n: int) -> Histogram:
    """The head of a stream of ``n`` symbols, checked: an alphabet of 1 to
    ``MAX_ALPHABET`` symbols whose counts add up to ``n``."""
    lo = unzigzag(r.varint(cap=1 << 62, name="ans lo"))
    nsym = r.varint(cap=MAX_ALPHABET, name="ans alphabet")
    if nsym < 1:
        raise FormatError("ans: empty alphabet")
    raw = r.blob(cap=r.remaining, name="ans counts")
    counts = ZSTD.decode_array(raw, nsym, np.uint32)
    if int(counts.sum(dtype=np.uint64)) != n:
        raise FormatError("ans: histogram does not add up to the tensor size")
    return Histogram(lo, counts)


def decode_body(r: Reader, hist: Histogram, n: int) -> np.ndarray:
    """The ``n`` symbols after the head ``hist`` (of :func:`read_histogram`)."""
    lo, counts = hist.lo, hist.counts
    if counts.size == 1:
        r.expect_end()
        return np.full(n, lo, dtype=np.int64)
    words = r.rest()
    if len(words) % 4:
        raise FormatError("ans: payload is not whole 32-bit words")
    constriction = require("constriction", codec="fpz")
    try:
        model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
        compressed = np.frombuffer(words, dtype="<u4").astype(np.uint32)
        coder = constriction.stream.stack.AnsCoder(compressed)
        s = coder.decode(model, n)
        empty = coder.is_empty()
    except Exception as exc:
        raise FormatError(f"ans: cannot decode: {exc}") from exc
    # an encoder's words decode to exactly its symbols (whose histogram is the header's)
    # and leave the coder in its initial state
    if not empty:
        raise FormatError("ans: the words do not end with the coder's initial state "
                          "(truncated or trailing data)")
    s = np.asarray(s).astype(np.int64)
    if s.size != n or not np.array_equal(np.bincount(s, minlength=counts.size), counts):
        raise FormatError("ans: the decoded symbols do not match the histogram")
    return s + lo
