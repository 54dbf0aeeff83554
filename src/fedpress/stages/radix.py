"""Radix packing: small-alphabet symbols as base-``A`` digits of 64-bit words.

For short streams an entropy coder's tables cost more than they save (a rANS stream
of a few hundred ternary symbols is larger than the symbols packed at log2(3) bits).
Here ``g`` symbols (the most with ``A**g <= 2**64``) make one base-``A`` number, stored
as 8 little-endian bytes; the last, shorter group takes only the bytes its largest
value needs. Ternary symbols cost 1.6 bits, quaternary 2, binary 1.

Layout: the groups' bytes back to back (no header: the count and the alphabet are the
caller's).
"""

from __future__ import annotations

import numpy as np

from ..errors import FormatError


def group_size(alphabet: int) -> int:
    """How many base-``alphabet`` digits fit in 64 bits."""
    if not 2 <= alphabet <= 1 << 16:
        raise ValueError(f"radix packing needs an alphabet of 2..65536, got {alphabet}")
    g = 1
    while alphabet ** (g + 1) <= 1 << 64:
        g += 1
    return g


def _tail_bytes(alphabet: int, count: int) -> int:
    return ((alphabet**count - 1).bit_length() + 7) // 8


def packed_size(count: int, alphabet: int) -> int:
    """Bytes :func:`pack` writes for ``count`` symbols."""
    g = group_size(alphabet)
    return 8 * (count // g) + _tail_bytes(alphabet, count % g)


def pack(symbols: np.ndarray, alphabet: int) -> bytes:
    """The symbols (integers in ``[0, alphabet)``) packed as described above."""
    s = np.asarray(symbols).reshape(-1)
    if s.size and (int(s.min()) < 0 or int(s.max()) >= alphabet):
        raise ValueError(f"radix packing: symbols must lie in [0, {alphabet})")
    g = group_size(alphabet)
    full, rest = divmod(s.size, g)
    padded = np.zeros((full + (rest > 0)) * g, np.uint64)
    padded[: s.size] = s
    words = np.zeros(full + (rest > 0), np.uint64)
    base = np.uint64(alphabet)
    for col in padded.reshape(-1, g).T[::-1]:  # the first symbol is the lowest digit
        words = words * base + col
    out = words[:full].astype("<u8").tobytes()
    if rest:
        out += int(words[-1]).to_bytes(8, "little")[: _tail_bytes(alphabet, rest)]
    return out


def unpack(data: bytes | memoryview, count: int, alphabet: int) -> np.ndarray:
    """The ``count`` symbols (int64) :func:`pack` wrote; FormatError on bad bytes."""
    g = group_size(alphabet)
    full, rest = divmod(count, g)
    raw = bytes(data)
    if len(raw) != packed_size(count, alphabet):
        raise FormatError(f"radix packing: {len(raw)} bytes for {count} symbols of "
                          f"alphabet {alphabet}")
    words = np.frombuffer(raw[: 8 * full], "<u8").astype(np.uint64)
    limits = [(words, g)]
    if rest:
        tail = int.from_bytes(raw[8 * full:], "little")
        if tail >= alphabet**rest:
            raise FormatError("radix packing: last group out of range")
        limits.append((np.array([tail], np.uint64), rest))
    if alphabet**g < 1 << 64 and words.size and int(words.max()) >= alphabet**g:
        raise FormatError("radix packing: group out of range")
    out = np.empty(count, np.int64)
    pos = 0
    base = np.uint64(alphabet)
    for w, digits in limits:
        w = w.copy()
        block = np.empty((w.size, digits), np.int64)
        for j in range(digits):
            block[:, j] = (w % base).astype(np.int64)
            w //= base
        out[pos: pos + block.size] = block.reshape(-1)
        pos += block.size
    return out
