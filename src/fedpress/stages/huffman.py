"""Canonical Huffman coding of integer residuals (written here, numba kernels).

The same symbols as :mod:`fedpress.stages.rans` (zigzag codes, ``k`` the escape
symbol, escaped values beside the stream), coded with a canonical prefix code of
at most ``MAX_LEN`` bits: only the code lengths travel, so the header is smaller
than rANS's frequency tables (it can win on small tensors), while each symbol
costs a whole number of bits (it loses up to ~1 bit/value where one symbol
dominates, e.g. the zeros at REL 1e-2). ``fpz`` with ``coder="auto"`` keeps
whichever is smaller on small tensors.

Layout::

    varint  k            escape symbol (alphabet 0..k)
    blob    lengths      zstd frame of k + 1 uint8 code lengths (0 = unused)
    blob    escapes      as in rans
    varint  nbits        bits of the stream
    rest    stream       the codes, MSB first, zero-padded to whole bytes

The lengths must form a complete prefix code (Kraft sum exactly 1), so every table
slot decodes; the one exception is a single used symbol, coded with the 1-bit code
``0`` (the slot of ``1`` is an error).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._bytes import Reader, Writer
from ..errors import FormatError
from . import kernels, rans
from .lossless import ZSTD

MAX_LEN = 15


@dataclass(frozen=True)
class Code:
    """The head of a stream: escape symbol ``k`` and the code lengths of ``0..k``.

    The encoder's (:func:`fit`) also carry the symbol ``counts`` (for the bit count);
    the decoder's (:func:`read_code`) are checked to form a complete prefix code.
    """

    k: int
    lengths: np.ndarray  # uint8, k + 1
    counts: np.ndarray | None = None


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (uint8) of a histogram, none above ``max_len``.

    Too-long codes are avoided the way zlib does: scale the counts down (keeping
    them >= 1) and build again.
    """
    c = counts.astype(np.int64)
    used = np.flatnonzero(c)
    lengths = np.zeros(c.size, np.uint8)
    if used.size <= 1:
        lengths[used] = 1  # the code "0"; "1" stays unused
        return lengths
    while True:
        depth = kernels().huffman_depths(c[used])
        deepest = int(depth.max())
        if deepest <= max_len:
            lengths[used] = depth
            return lengths
        c[used] = np.maximum(c[used] >> max(1, deepest - max_len), 1)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (int64) of each symbol: by length, then by symbol."""
    codes = np.zeros(lengths.size, np.int64)
    code = 0
    prev = 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        prev = int(lengths[s])
        codes[s] = code
        code += 1
    return codes


def encode_symbols(z: np.ndarray, hist: np.ndarray, w: Writer) -> None:
    """Append the Huffman coding of zigzag codes ``z`` (histogram as rans wants it)."""
    code = fit(z, hist)
    write_code(w, code)
    encode_body(w, code, z)


def fit(z: np.ndarray, hist: np.ndarray) -> Code:
    """The code of zigzag codes ``z`` (histogram ``hist`` of ``min(z, rans.HIST_CAP)``).

    An empty stream gets the single-symbol code of symbol 0 (no symbol uses it).
    """
    k = rans.escape_symbol(hist, z.size)
    counts = np.append(hist[:k], hist[k:].sum())
    lengths = code_lengths(counts)
    if not lengths.any():
        lengths[0] = 1  # no symbol at all: still a code the decoder accepts
    return Code(k, lengths, counts)


def write_code(w: Writer, code: Code) -> None:
    """The head: ``varint k | blob zstd(lengths)``."""
    w.varint(code.k)
    w.blob(ZSTD.encode_array(code.lengths))


def encode_body(w: Writer, code: Code, z: np.ndarray) -> None:
    """After the head: the escapes, the bit count and the codes of ``z``."""
    assert code.counts is not None
    k, lengths = code.k, code.lengths
    codes = canonical_codes(lengths)
    nbits = int((code.counts * lengths).sum())
    rans.write_escapes(w, z[z >= k], k)
    w.varint(nbits)
    w.raw(kernels().huffman_encode(z, k, codes, lengths.astype(np.int64), nbits).tobytes())


def encode(r: np.ndarray, w: Writer) -> None:
    """Append the Huffman coding of int64 residuals ``r``."""
    encode_symbols(*rans.symbols(r), w)


def decode(rd: Reader, n: int, *, step: float = 0.0,
           dtype: np.dtype | None = None) -> np.ndarray:
    """Read ``n`` residuals written by :func:`encode` (or their values times ``step``)."""
    return decode_body(rd, read_code(rd), n, step=step, dtype=dtype)


def read_code(rd: Reader) -> Code:
    """The head of a stream, checked: lengths of at most ``MAX_LEN`` bits that form a
    complete prefix code (or the single-symbol code)."""
    k = rd.varint(cap=rans.MAX_K, name="huffman escape symbol")
    lengths = ZSTD.decode_array(rd.blob(cap=rd.remaining, name="huffman lengths"), k + 1,
                                np.uint8)
    used = np.flatnonzero(lengths)
    if used.size == 0 or int(lengths.max()) > MAX_LEN:
        raise FormatError("huffman: code lengths missing or longer than the format allows")
    kraft = sum(1 << (MAX_LEN - int(lengths[s])) for s in used)
    single = used.size == 1 and lengths[used[0]] == 1
    if kraft != 1 << MAX_LEN and not single:
        raise FormatError("huffman: code lengths do not form a complete prefix code")
    return Code(k, lengths)


def decode_body(rd: Reader, code: Code, n: int, *, step: float = 0.0,
                dtype: np.dtype | None = None) -> np.ndarray:
    """The ``n`` residuals (or their values times ``step``) after the head ``code``
    (of :func:`read_code`)."""
    k, lengths = code.k, code.lengths
    escapes = rans.read_escapes(rd, k, n)
    nbits = rd.varint(cap=8 * rd.remaining, name="huffman bits")
    data = np.frombuffer(rd.rest(), dtype=np.uint8)
    if data.size != (nbits + 7) // 8:
        raise FormatError("huffman: stream length does not match its bit count")
    out = np.empty(n, dtype=dtype if step > 0.0 else np.int64)
    maxlen = int(lengths.max())
    table = _table(lengths, maxlen)
    status = kernels().huffman_decode(data, nbits, n, k, table, maxlen, escapes, float(step), out)
    if status:
        raise FormatError(f"huffman: corrupt stream (status {status})")
    return out


def _table(lengths: np.ndarray, maxlen: int) -> np.ndarray:
    """Decoding table: for every ``maxlen``-bit prefix, ``symbol << 5 | length``
    (0 where no code starts: only the unused half of a single-symbol code)."""
    codes = canonical_codes(lengths)
    table = np.zeros(1 << maxlen, np.int64)
    for s in np.flatnonzero(lengths):
        ln = int(lengths[s])
        lo = int(codes[s]) << (maxlen - ln)
        table[lo : lo + (1 << (maxlen - ln))] = (int(s) << 5) | ln
    return table
