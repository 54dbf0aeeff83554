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
        return np.asarray(zfpy.decompress_numpy(raw))


def _header(zfpy, raw: bytes) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype declared by a zfp stream header (read with ``zfpy.header``)."""
    try:
        hdr = zfpy.header(raw)
    except Exception as exc:
        raise FormatError(f"zfp payload: bad header: {exc}") from exc
    dims = tuple(int(hdr[k]) for k in ("nx", "ny", "nz", "nw") if int(hdr[k]) > 0)
    return dims, np.dtype(hdr["type"])
