"""ZFP through ``zfpy``, fixed-accuracy mode (tolerance = the absolute bound).

ZFP's fixed-accuracy mode bounds the error by the tolerance for almost every
value; the envelope stores the rare exceptions exactly. The tensor is
flattened to 1-D, like the other back ends.
"""

from __future__ import annotations

import numpy as np

from .._deps import require
from ..eblc.base import ErrorBoundedCodec
from ..errors import FormatError
from ..registry import register_codec

_HEADER_MIN = 12  # zfp's full header is at least 96 bits


@register_codec
class ZFPCodec(ErrorBoundedCodec):
    """ZFP (zfpy) fixed-accuracy, float32/float64 cores."""

    codec_id = "zfp"
    core_float64 = True

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        zfpy = require("zfpy", codec=self.codec_id)
        return bytes(zfpy.compress_numpy(x, tolerance=float(eb_abs)))

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        zfpy = require("zfpy", codec=self.codec_id)
        raw = bytes(data)
        if len(raw) < _HEADER_MIN:
            raise FormatError("zfp payload: shorter than a zfp header")
        # zfpy allocates the array its header declares; check that header first.
        shape, ztype = _header(zfpy, raw)
        if shape != (n,) or ztype != dtype:
            raise FormatError(f"zfp payload: header says {shape} {ztype}, expected ({n},) {dtype}")
        # zfp reads its stream without bounds checks: a truncated stream would make it
        # read past the end of the buffer (seen: a segfault). Give it a zero-padded
        # buffer as long as the largest stream n values can need (about 66 bits per
        # float32 and 131 per float64 value in 1-D blocks of 4, plus headers), so it
        # only ever reads zeros past the payload. np.zeros pages are mapped lazily.
        room = _max_stream_bytes(n, dtype)
        if len(raw) > room:
            raise FormatError("zfp payload: longer than any zfp stream of this size")
        buf = np.zeros(room, dtype=np.uint8)
        buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        return np.asarray(zfpy.decompress_numpy(buf))


def _max_stream_bytes(n: int, dtype: np.dtype) -> int:
    """Upper bound of a 1-D zfp stream's size: 17 bits per bit of the value, plus slack."""
    blocks = (n + 3) // 4
    bits_per_block = 12 + 4 * dtype.itemsize * 8 * 2 + 64
    return blocks * bits_per_block // 8 + 4096


def _header(zfpy, raw: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype declared by a zfp stream header (read with ``zfpy.header``)."""
    try:
        hdr = zfpy.header(raw)
    except Exception as exc:
        raise FormatError(f"zfp payload: bad header: {exc}") from exc
    dims = tuple(int(hdr[k]) for k in ("nx", "ny", "nz", "nw") if int(hdr[k]) > 0)
    return dims, np.dtype(hdr["type"])
