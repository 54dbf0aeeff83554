"""Order-0 range-ANS coding of integer symbols with ``constriction``.

The model is the exact symbol histogram of the tensor, sent in the header, so
encoder and decoder build the same quantized distribution. Layout::

    varint  zigzag(lo)         smallest symbol
    varint  nsym               alphabet size (symbols lo .. lo + nsym - 1)
    blob    counts             zstd frame of nsym uint32 counts (sum = n)
    rest    ANS words          uint32, little-endian

A single-symbol alphabet needs no words. Decoding checks every count and
length against ``n`` and the bytes present.
"""

from __future__ import annotations

import numpy as np

from .._bytes import Reader, Writer
from .._deps import require
from ..abc import TensorSpec
from ..backends.lossless import ZstdCodec
from ..errors import FormatError

#: largest alphabet coded with ANS (the histogram header grows with it)
MAX_ALPHABET = 1 << 22
_ZSTD = ZstdCodec(level=3)  # the histogram header's coder


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
    lo = int(sym.min())
    s = (sym - lo).astype(np.int32)
    counts = np.bincount(s).astype(np.uint32)
    nsym = counts.size
    if nsym > MAX_ALPHABET:
        raise ValueError("alphabet too large for ANS")
    w.varint(zigzag(lo))
    w.varint(nsym)
    w.blob(_ZSTD.encode(counts))
    if nsym > 1:
        constriction = require("constriction", codec="fpz")
        model = constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(s, model)
        w.raw(coder.get_compressed().astype("<u4").tobytes())


def decode(r: Reader, n: int) -> np.ndarray:
    """Read ``n`` int64 symbols written by :func:`encode`."""
    lo = unzigzag(r.varint(cap=1 << 62, name="ans lo"))
    nsym = r.varint(cap=MAX_ALPHABET, name="ans alphabet")
    if nsym < 1:
        raise FormatError("ans: empty alphabet")
    raw = r.blob(cap=r.remaining, name="ans counts")
    counts = _ZSTD.decode(raw, TensorSpec((nsym,), np.dtype(np.uint32)))
    if int(counts.sum(dtype=np.uint64)) != n:
        raise FormatError("ans: histogram does not add up to the tensor size")
    if nsym == 1:
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
    except Exception as exc:
        raise FormatError(f"ans: cannot decode: {exc}") from exc
    return s.astype(np.int64) + lo
