"""ZFP through ``zfpy``, fixed-accuracy mode (tolerance = the absolute bound).

ZFP's fixed-accuracy mode bounds the error by the tolerance for almost every
value; the envelope stores the rare exceptions exactly. The tensor is
flattened to 1-D, like the other back ends.

zfp reads its stream without bounds checks, and its header selects how many bits
each block takes: a crafted header in fixed-rate or expert mode makes it read far
past any buffer (seen: a segfault, and garbage values read from beyond the payload).
The decoder therefore parses the header itself and accepts exactly what
:meth:`ZFPCodec.encode` writes: zfp's magic and this library's codec version, a 1-D
float32/float64 field of the tensor's length, and fixed-accuracy parameters derived
from the payload's absolute bound the way ``zfp_stream_set_accuracy`` derives them.
In that mode a block can never take more than :func:`_max_block_bits` bits, so zfp
decodes from a zero-padded buffer of the worst-case stream size and never reads past
it.

zfp's header (a bit stream, least significant bit first, in 64-bit little-endian
words)::

    32 bits  magic: 'z', 'f', 'p', codec version
    52 bits  field: type - 1 (2 bits), dimensions - 1 (2 bits), nx - 1 (48 bits in 1-D)
    12 bits  mode, short form: < 2048 fixed rate, < 2176 fixed precision, 2176
             reversible, 2177..4094 fixed accuracy (minexp = mode - 2177 - 1074);
             4095 announces the long form, 52 more bits: minbits - 1 (15),
             maxbits - 1 (15), maxprec - 1 (7), minexp + 16495 (15)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .._deps import require
from ..abc import TensorSpec
from ..eblc.base import ErrorBoundedCodec
from ..errors import FormatError
from ..registry import register_codec

# zfp's constants (zfp.h)
_MIN_BITS, _MAX_BITS, _MAX_PREC, _MIN_EXP = 1, 16658, 64, -1074
_MAGIC_BITS, _META_BITS, _SHORT_BITS, _LONG_BITS = 32, 52, 12, 64
_HEADER_MAX_BITS = _MAGIC_BITS + _META_BITS + _LONG_BITS
_SHORT_ACCURACY_FIRST, _SHORT_MAX = 2048 + 128 + 1, 4094
_LONG_EXP_BIAS = 16495
_ZFP_TYPES = {3: np.dtype(np.float32), 4: np.dtype(np.float64)}  # zfp_type_float/_double
_EXP_BITS = {4: 8, 8: 11}  # bits of a block's common exponent, by item size
_WORD_BYTES = 8


@dataclass(frozen=True)
class ZfpHeader:
    """What a zfp stream header declares (as zfp itself would read it)."""

    version: int
    dtype: np.dtype | None
    ndim: int
    nx: int
    params: tuple[int, int, int, int]  # minbits, maxbits, maxprec, minexp
    bits: int  # length of the header


@register_codec
class ZFPCodec(ErrorBoundedCodec):
    """ZFP (zfpy) fixed-accuracy, float32/float64 cores."""

    codec_id = "zfp"
    core_float64 = True

    def check_available(self) -> None:
        require("zfpy", codec=self.codec_id)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        # the output, zfp's output in the core dtype and the zero-padded stream buffer
        # (its pages are mapped lazily, but they are address space all the same)
        n = spec.size
        if n == 0:
            return spec.nbytes
        core = self._core_dtype(np.dtype(spec.dtype))
        return spec.nbytes + n * core.itemsize + _max_stream_bytes(n, core)

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        zfpy = require("zfpy", codec=self.codec_id)
        return bytes(zfpy.compress_numpy(x, tolerance=float(eb_abs)))

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        zfpy = require("zfpy", codec=self.codec_id)
        raw = bytes(data)
        check_stream(raw, n, dtype, eb_abs, codec_version())
        # zfp reads without bounds checks: give it a zero-padded buffer as long as the
        # largest stream n values can take in the checked mode, so past the payload it
        # only ever reads zeros. np.zeros pages are mapped lazily.
        room = _max_stream_bytes(n, dtype)
        buf = np.zeros(room, dtype=np.uint8)
        buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        _cross_check(zfpy, buf, n, dtype)
        return np.asarray(zfpy.decompress_numpy(buf))


def check_stream(raw: bytes, n: int, dtype: np.dtype, eb_abs: float, version: int) -> ZfpHeader:
    """Check a zfp stream is one :class:`ZFPCodec` writes for ``n`` values of ``dtype``
    under ``eb_abs``; FormatError if not. Returns the parsed header."""
    hdr = parse_header(raw)
    if hdr.version != version:
        raise FormatError(f"zfp payload: codec version {hdr.version}, this zfp writes {version}")
    if hdr.ndim != 1 or hdr.nx != n or hdr.dtype != dtype:
        what = hdr.dtype if hdr.dtype is not None else "a non-float type"
        raise FormatError(f"zfp payload: header says {hdr.ndim}-D {what} of nx={hdr.nx}, "
                          f"expected ({n},) {dtype}")
    want = accuracy_params(eb_abs)
    if hdr.params != want:
        raise FormatError(
            "zfp payload: the header's mode (minbits, maxbits, maxprec, minexp) = "
            f"{hdr.params} is not fixed accuracy at this payload's bound {eb_abs!r} {want}")
    if len(raw) > _max_stream_bytes(n, dtype):
        raise FormatError("zfp payload: longer than any zfp stream of this size")
    return hdr


def parse_header(raw: bytes) -> ZfpHeader:
    """Read a zfp stream header the way ``zfp_read_header`` does; FormatError if the
    bytes cannot hold one."""
    if len(raw) < (_MAGIC_BITS + _META_BITS + _SHORT_BITS) // 8:
        raise FormatError("zfp payload: shorter than a zfp header")
    bits = int.from_bytes(raw[: (_HEADER_MAX_BITS + 7) // 8], "little")
    if raw[:3] != b"zfp":
        raise FormatError("zfp payload: bad magic bytes")
    meta = (bits >> _MAGIC_BITS) & ((1 << _META_BITS) - 1)
    zfp_type = (meta & 3) + 1
    ndim = ((meta >> 2) & 3) + 1
    nx = ((meta >> 4) & ((1 << 48) - 1)) + 1 if ndim == 1 else 0
    pos = _MAGIC_BITS + _META_BITS
    mode = (bits >> pos) & ((1 << _SHORT_BITS) - 1)
    if mode <= _SHORT_MAX:
        return ZfpHeader(raw[3], _ZFP_TYPES.get(zfp_type), ndim, nx, _short_params(mode),
                         pos + _SHORT_BITS)
    if len(raw) < (_HEADER_MAX_BITS + 7) // 8:
        raise FormatError("zfp payload: shorter than its long-form zfp header")
    mode = (bits >> pos) & ((1 << _LONG_BITS) - 1)
    mode >>= _SHORT_BITS
    minbits = (mode & 0x7FFF) + 1
    maxbits = ((mode >> 15) & 0x7FFF) + 1
    maxprec = ((mode >> 30) & 0x7F) + 1
    minexp = ((mode >> 37) & 0x7FFF) - _LONG_EXP_BIAS
    return ZfpHeader(raw[3], _ZFP_TYPES.get(zfp_type), ndim, nx,
                     (minbits, maxbits, maxprec, minexp), _HEADER_MAX_BITS)


def _short_params(mode: int) -> tuple[int, int, int, int]:
    """(minbits, maxbits, maxprec, minexp) of a 12-bit mode, as ``zfp_stream_set_mode``."""
    if mode < 2048:  # fixed rate: every block takes mode + 1 bits
        return mode + 1, mode + 1, _MAX_PREC, _MIN_EXP
    if mode < 2048 + 128:  # fixed precision
        return _MIN_BITS, _MAX_BITS, mode + 1 - 2048, _MIN_EXP
    if mode == 2048 + 128:  # reversible
        return _MIN_BITS, _MAX_BITS, _MAX_PREC, _MIN_EXP - 1
    return _MIN_BITS, _MAX_BITS, _MAX_PREC, mode + _MIN_EXP - _SHORT_ACCURACY_FIRST


def accuracy_params(tolerance: float) -> tuple[int, int, int, int]:
    """The parameters ``zfp_stream_set_accuracy(tolerance)`` sets (tolerance > 0):
    minexp is the exponent e with 2**e <= tolerance < 2**(e + 1)."""
    if not (tolerance > 0.0) or not math.isfinite(tolerance):
        raise FormatError(f"zfp payload: bound {tolerance!r} is not a zfp tolerance")
    _, exp = math.frexp(tolerance)
    return _MIN_BITS, _MAX_BITS, _MAX_PREC, exp - 1


def _max_block_bits(dtype: np.dtype) -> int:
    """The most bits zfp's decoder reads for one 1-D block of 4 values in the mode
    :func:`accuracy_params` gives (minbits 1, so no padding).

    A block is 1 bit (all zero?) plus the common exponent, then up to ``intprec`` bit
    planes (32 for float32, 64 for float64). A plane reads the bits of the ``k``
    coefficients already significant, then group tests: each 1 is followed by zeros
    (one per coefficient passed) and a 1, and a 0 ends the plane; so a plane reads at
    most ``k + 2 (4 - k) + 1 <= 9`` bits.
    """
    values = 4
    intprec = 8 * dtype.itemsize
    return 1 + _EXP_BITS[dtype.itemsize] + intprec * (2 * values + 1)


def _max_stream_bytes(n: int, dtype: np.dtype) -> int:
    """Bytes of the longest stream zfp can read for ``n`` values (header, every block
    at its worst, rounded up to whole words, plus two words zfp may fetch ahead)."""
    blocks = (n + 3) // 4
    bits = _HEADER_MAX_BITS + blocks * _max_block_bits(dtype)
    words = (bits + 63) // 64
    return (words + 2) * _WORD_BYTES


@lru_cache(maxsize=1)
def codec_version() -> int:
    """The zfp codec version this zfpy writes (the magic's fourth byte)."""
    zfpy = require("zfpy", codec="zfp")
    return int(bytes(zfpy.compress_numpy(np.zeros(4, np.float32), tolerance=1.0))[3])


def _cross_check(zfpy: Any, buf: np.ndarray, n: int, dtype: np.dtype) -> None:
    """zfpy's own reading of the header must agree with ours before it decodes."""
    try:
        hdr = zfpy.header(buf)
    except Exception as exc:
        raise FormatError(f"zfp payload: bad header: {exc}") from exc
    dims = tuple(int(hdr[k]) for k in ("nx", "ny", "nz", "nw") if int(hdr[k]) > 0)
    if dims != (n,) or np.dtype(hdr["type"]) != dtype:
        raise FormatError(f"zfp payload: zfp reads the header as {dims} {hdr['type']}")
