"""Bit-level codes for non-negative integers: Rice (Golomb with a power-of-two
divisor) and Elias gamma, as used for the gaps between sparse indices (STC, HGC)
and QSGD's levels.

A Rice code with parameter ``b`` writes ``v >> b`` in unary (one-bits closed by a
zero-bit) and then the ``b`` low bits of ``v``; for geometric gaps of density
``p`` the best ``b`` is about ``log2(ln 2 / p)`` (STC's choice,
``1 + floor(log2(ln(phi - 1) / ln(1 - p)))``, is the same rule). fedpress picks
``b`` by exact size instead. Elias gamma writes ``v >= 1`` as ``floor(log2 v)``
zero-bits and then ``v`` in binary: no parameter, good when values span orders of
magnitude.

The ``*_pack`` functions return whole bytes (the last one zero-padded); the
``*_unpack`` functions take the count and a cap on the values and raise
:class:`fedpress.FormatError` on streams that run out, exceed the cap, or leave
bytes or non-zero padding bits after the last code (one stream, one encoding).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from ..errors import FormatError

MAX_RICE_B = 62


def _bits() -> ModuleType:
    from . import _bitkernels

    return _bitkernels


def _as_int64(v: np.ndarray, low: int) -> np.ndarray:
    v = np.ascontiguousarray(v, dtype=np.int64)
    if v.size and int(v.min()) < low:
        raise ValueError(f"values must be >= {low}")
    return v


def rice_size(v: np.ndarray, b: int) -> int:
    """Bytes :func:`rice_pack` takes for ``v`` with parameter ``b``."""
    return (int(_bits().rice_bits(_as_int64(v, 0), b)) + 7) // 8


def best_rice_parameter(v: np.ndarray) -> int:
    """The Rice parameter with the fewest bits for ``v`` (searched near log2 of the mean)."""
    v = _as_int64(v, 0)
    if v.size == 0:
        return 0
    guess = max(0, int(np.log2(max(float(v.mean()), 1.0) * np.log(2) + 1e-12)))
    kern = _bits()
    best_b, best_bits = guess, kern.rice_bits(v, guess)
    for b in (guess - 2, guess - 1, guess + 1, guess + 2):
        if 0 <= b <= MAX_RICE_B:
            bits = kern.rice_bits(v, b)
            if bits < best_bits:
                best_b, best_bits = b, bits
    return best_b


def rice_pack(v: np.ndarray, b: int) -> bytes:
    """Rice codes of ``v`` (int >= 0) with parameter ``b`` (0..62)."""
    if not 0 <= b <= MAX_RICE_B:
        raise ValueError(f"rice parameter must be in [0, {MAX_RICE_B}], got {b}")
    v = _as_int64(v, 0)
    kern = _bits()
    out = np.zeros((int(kern.rice_bits(v, b)) + 7) // 8, dtype=np.uint8)
    kern.rice_encode(v, b, out)
    return out.tobytes()


def rice_unpack(data: bytes | memoryview, n: int, b: int, cap: int) -> np.ndarray:
    """``n`` values from :func:`rice_pack` bytes; FormatError if the stream runs out
    or a value exceeds ``cap``."""
    if not 0 <= b <= MAX_RICE_B:
        raise FormatError(f"rice: bad parameter {b}")
    if n > 8 * len(data):  # every code takes at least one bit
        raise FormatError(f"rice: {n} codes cannot fit in {len(data)} bytes")
    out = np.empty(n, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    status = _bits().rice_decode(buf, n, b, cap, out)
    if status < 0:
        raise FormatError("rice: stream ends early" if status == _bits().ERR_BITS
                          else f"rice: value exceeds {cap}")
    check_end(buf, int(status), "rice")
    return out


def check_end(buf: np.ndarray, bits: int, what: str) -> None:
    """The codes must fill the bytes exactly: no extra byte, zero padding bits."""
    if (bits + 7) // 8 != buf.size:
        raise FormatError(f"{what}: {buf.size - (bits + 7) // 8} unexpected trailing bytes")
    if bits % 8 and int(buf[-1]) & (0xFF >> (bits % 8)):
        raise FormatError(f"{what}: padding bits are not zero")


def gamma_size(v: np.ndarray) -> int:
    """Bytes :func:`gamma_pack` takes for ``v`` (int >= 1)."""
    return (int(_bits().gamma_bits(_as_int64(v, 1))) + 7) // 8


def gamma_pack(v: np.ndarray) -> bytes:
    """Elias gamma codes of ``v`` (int >= 1)."""
    v = _as_int64(v, 1)
    kern = _bits()
    out = np.zeros((int(kern.gamma_bits(v)) + 7) // 8, dtype=np.uint8)
    kern.gamma_encode(v, out)
    return out.tobytes()


def gamma_unpack(data: bytes | memoryview, n: int, cap: int) -> np.ndarray:
    """``n`` values from :func:`gamma_pack` bytes; FormatError if the stream runs out
    or a value exceeds ``cap``."""
    if n > 8 * len(data):
        raise FormatError(f"gamma: {n} codes cannot fit in {len(data)} bytes")
    out = np.empty(n, dtype=np.int64)
    buf = np.frombuffer(data, dtype=np.uint8)
    status = _bits().gamma_decode(buf, n, cap, out)
    if status < 0:
        raise FormatError("gamma: stream ends early" if status == _bits().ERR_BITS
                          else f"gamma: value exceeds {cap}")
    check_end(buf, int(status), "gamma")
    return out
