"""HGC's value coding: the values at a mask, and float32 aggregates, as bytes.

The coders HGC's messages and the single-stream ``hgc`` codec share (HGC: Hu, Jiang &
He, IJCAI-24): values at a mask travel raw (float32) or as equal-count group means
plus all the codes in one stream, XOR the prediction's codes when that is smaller;
symbol streams are radix-packed or rANS coded, whichever is smaller; an aggregate's
float32 values are zstd coded or a table of its few distinct values plus a symbol per
value. The round protocol that sends them is :mod:`fedpress.exchange.hgc`. Every
reader checks what it reads (:class:`fedpress.FormatError`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._bytes import Reader, Writer
from ..errors import FormatError
from ..stages import radix, rans
from ..stages.lossless import ZSTD
from . import equalcount as ec

VALUES_RAW, VALUES_CODES = 0, 1
CODES_PLAIN, CODES_XOR = 0, 1
SYMBOLS_PACKED, SYMBOLS_RANS = 0, 1
FLOATS_ZSTD, FLOATS_TABLE = 0, 1
MAX_TABLE = 1 << 16


def write_symbols(w: Writer, symbols: np.ndarray, alphabet: int) -> None:
    """Symbols in ``[0, alphabet)``, the smaller of radix-packed and rANS coded (a
    method byte, then a length-prefixed blob). Short streams pack smaller: a rANS
    stream's tables cost tens of bytes."""
    options = {SYMBOLS_PACKED: radix.pack(symbols, alphabet)}
    if symbols.size:
        coded = Writer()
        rans.encode(np.asarray(symbols, np.int64), coded)
        options[SYMBOLS_RANS] = coded.getvalue()
    w.smallest(options)


def read_symbols(rd: Reader, count: int, alphabet: int) -> np.ndarray:
    """The ``count`` symbols :func:`write_symbols` wrote (int64, checked in range)."""
    method = rd.u8()
    data = rd.blob(cap=rd.remaining, name="hgc symbols")
    if method == SYMBOLS_PACKED:
        return radix.unpack(data, count, alphabet)
    if method != SYMBOLS_RANS or not count:
        raise FormatError(f"hgc message: unknown symbol coding {method}")
    sub = Reader(data, "hgc symbols")
    symbols = rans.decode(sub, count)
    sub.expect_end()
    if int(symbols.min()) < 0 or int(symbols.max()) >= alphabet:
        raise FormatError("hgc message: symbol out of range")
    return symbols


def write_values(w: Writer, values: Sequence[np.ndarray], levels: int, quantize: bool,
                 predicted: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """Some tensors' values at the mask: raw float32, or per tensor the equal-count
    group means, then all the codes in one stream. With ``predicted`` (the
    prediction's codes, per tensor) the codes go XOR the prediction when that makes
    the stream smaller (a flag says which). Returns what the receiver will decode."""
    vals = [np.asarray(v, np.float32).reshape(-1) for v in values]
    if not quantize:
        w.u8(VALUES_RAW)
        for v in vals:
            w.raw(v.astype("<f4").tobytes())
        return vals
    quantized = [ec.quantize(v, levels) for v in vals]
    w.u8(VALUES_CODES)
    for _, means in quantized:
        w.raw(means.astype("<f4").tobytes())
    codes = np.concatenate([c for c, _ in quantized]) if quantized else np.zeros(0, np.uint8)
    options = {CODES_PLAIN: (codes, levels)}
    if predicted is not None:
        residues = ec.xor_codes(codes, np.concatenate(predicted) if predicted else codes)
        options[CODES_XOR] = (residues, ec.residue_alphabet(levels))
    blobs = {}
    for flag, (symbols, alphabet) in options.items():
        sub = Writer()
        write_symbols(sub, symbols, alphabet)
        blobs[flag] = sub.getvalue()
    flag = min(blobs, key=lambda f: (len(blobs[f]), f))
    w.u8(flag)
    w.raw(blobs[flag])
    return [ec.dequantize(c, means, levels) for c, means in quantized]


def read_values(rd: Reader, counts: Sequence[int], levels: int, quantize: bool,
                predicted: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The values :func:`write_values` wrote, ``counts[i]`` for tensor ``i`` (float32);
    FormatError on bad bytes."""
    mode = rd.u8()
    if mode == VALUES_RAW and not quantize:
        out = [rd.array("<f4", k).astype(np.float32) for k in counts]
    elif mode == VALUES_CODES and quantize:  # raw values are refused in a quantized round
        means = [rd.array("<f4", levels - 1).astype(np.float32) for _ in counts]
        flag = rd.u8()
        if flag == CODES_PLAIN:
            codes = read_symbols(rd, sum(counts), levels)
        elif flag == CODES_XOR and predicted is not None:
            residues = read_symbols(rd, sum(counts), ec.residue_alphabet(levels))
            codes = ec.xor_codes(residues, np.concatenate(predicted)
                                 if predicted else residues)
        else:
            raise FormatError(f"hgc message: codes flag {flag} not valid here")
        if codes.size and int(codes.max()) >= levels:
            raise FormatError("hgc message: code out of range")
        parts = np.split(codes.astype(np.uint8), np.cumsum(counts)[:-1]) if counts else []
        out = [ec.dequantize(c, m, levels) for c, m in zip(parts, means, strict=True)]
    else:
        raise FormatError(f"hgc message: unknown values mode {mode}")
    for v in out:
        if not np.isfinite(v).all():
            raise FormatError("hgc message: NaN or Inf among the values")
    return out


def write_floats(w: Writer, vals: np.ndarray) -> None:
    """float32 values losslessly, the smaller of zstd and a table of the distinct
    values plus one symbol per value (an average of few clients' quantized values
    takes few distinct values)."""
    vals = np.ascontiguousarray(vals, np.float32)
    options = {FLOATS_ZSTD: ZSTD.encode_array(vals)}
    table, inverse = np.unique(vals.view(np.uint32), return_inverse=True)
    if 0 < table.size <= MAX_TABLE:
        sub = Writer()
        sub.varint(int(table.size))
        sub.raw(table.astype("<u4").tobytes())
        write_symbols(sub, inverse.reshape(-1), max(2, int(table.size)))
        options[FLOATS_TABLE] = sub.getvalue()
    w.smallest(options)


def read_floats(rd: Reader, count: int) -> np.ndarray:
    """The ``count`` float32 values :func:`write_floats` wrote (finite, else FormatError)."""
    method = rd.u8()
    sub = Reader(rd.blob(cap=rd.remaining, name="hgc aggregate"), "hgc aggregate")
    if method == FLOATS_ZSTD:
        vals = ZSTD.decode_array(sub.rest(), count, np.float32)
    elif method == FLOATS_TABLE:
        size = sub.varint(cap=min(MAX_TABLE, max(count, 1)), name="hgc value table")
        table = sub.array("<u4", size).astype(np.uint32)
        symbols = read_symbols(sub, count, max(2, size))
        sub.expect_end()
        if symbols.size and int(symbols.max()) >= size:
            raise FormatError("hgc message: value index out of range")
        vals = table[symbols].view(np.float32) if size else np.zeros(count, np.float32)
    else:
        raise FormatError(f"hgc message: unknown aggregate coding {method}")
    if not np.isfinite(vals).all():
        raise FormatError("hgc message: NaN or Inf in the aggregate")
    return np.asarray(vals, np.float32)
