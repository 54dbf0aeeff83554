"""SZ3 through ``pysz`` (the SZ3 library's official Python binding).

The tensor is flattened to 1-D (as FedSZ does) and compressed in SZ3's ABS
mode with the absolute bound computed by the envelope. ``algorithm`` picks
SZ3's predictor: ``interp_lorenzo`` (SZ3's default), ``interp``,
``lorenzo_reg`` or ``nopred``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .._deps import require
from ..eblc.base import ErrorBoundedCodec
from ..errors import ConfigError
from ..registry import register_codec

_ALGOS = {
    "interp_lorenzo": "INTERP_LORENZO",
    "interp": "INTERP",
    "lorenzo_reg": "LORENZO_REG",
    "nopred": "NOPRED",
}


@register_codec
class SZ3Codec(ErrorBoundedCodec):
    """SZ3 (pysz), error-bounded, float32/float64 cores."""

    codec_id = "sz3"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "algorithm")
    core_float64 = True

    def __init__(self, mode: str = "rel", eb: float = 1e-2,
                 algorithm: str = "interp_lorenzo") -> None:
        super().__init__(mode, eb)
        if algorithm not in _ALGOS:
            raise ConfigError(f"sz3: algorithm must be one of {sorted(_ALGOS)}")
        self.algorithm = algorithm

    def _config(self, n: int, eb_abs: float):
        pysz = require("pysz", codec=self.codec_id)
        cfg = pysz.szConfig((n,))
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = float(eb_abs)
        cfg.cmprAlgo = getattr(pysz.szAlgorithm, _ALGOS[self.algorithm])
        cfg.openmp = False
        return pysz, cfg

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        pysz, cfg = self._config(x.size, eb_abs)
        out, _ = pysz.sz.compress(x, cfg)
        return np.asarray(out, dtype=np.uint8).tobytes()

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        pysz = require("pysz", codec=self.codec_id)
        arr = np.frombuffer(data, dtype=np.uint8)
        out, _ = pysz.sz.decompress(arr, dtype.type, (n,))
        return np.asarray(out)
