"""``fpz``: fedpress's own error-bounded compressor, assembled from stages.

Pipeline per tensor (flattened, finite, float32 or float64 core):

1. **quantize** the values (``stages.quantize``: ``q = rint(x / 2eb)``);
2. **predict** on the integer codes (``stages.predict``: ``none`` or
   ``lorenzo1d``), chosen per tensor by the order-0 entropy of the residuals
   on a sample of contiguous chunks, unless fixed by the ``predictor`` option;
3. **entropy-code** the residuals: range-ANS with the exact histogram
   (``stages.ans``), or zstd over the narrowest integer type when the
   histogram header would cost more (large alphabets on small tensors);
   ``coder="auto"`` compares estimated sizes.

The reconstruction is ``q * 2eb`` whatever the predictor (dual quantization),
and the encoder hands it to the envelope, which checks the bound on the output
dtype and stores the rare float rounding offenders exactly. Values whose codes
would overflow (``max|x| / 2eb > 2**30``) make the tensor go to zstd losslessly.

Payload (after the envelope)::

    u8 version (1) | u8 mode (0 quantized, 1 lossless)
    mode 0: u8 predictor id | u8 coder id (0 ans, 1 zstd) | coder body
    mode 1: zstd frame of the raw values
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..backends.lossless import ZstdCodec
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..stages import ans
from ..stages.predict import BY_NAME, PREDICTORS, predictor
from ..stages.quantize import dequantize, quantize
from .base import ErrorBoundedCodec

VERSION = 1
MODE_QUANT, MODE_LOSSLESS = 0, 1
CODER_ANS, CODER_ZSTD = 0, 1
_CODERS = {"ans": CODER_ANS, "zstd": CODER_ZSTD}
_SAMPLE_CHUNKS, _CHUNK = 32, 2048
_ZSTD = ZstdCodec(level=3)  # lossless mode and the zstd residual coder


def _sample(q: np.ndarray) -> np.ndarray:
    """Contiguous chunks spread over ``q`` (all of it when small), for estimates."""
    if q.size <= _SAMPLE_CHUNKS * _CHUNK * 2:
        return q
    starts = np.linspace(0, q.size - _CHUNK, _SAMPLE_CHUNKS).astype(np.int64)
    return np.concatenate([q[s : s + _CHUNK] for s in starts])


def _narrow(r: np.ndarray) -> np.ndarray:
    """``r`` in the narrowest signed integer type that holds it."""
    lo, hi = int(r.min()), int(r.max())
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return r.astype(dt)
    return r.astype(np.int64)


@register_codec
class FpzCodec(ErrorBoundedCodec):
    """fedpress's quantize / predict / entropy-code compressor (see the module docs).

    Parameters
    ----------
    mode, eb : str, float
        Error bound (see :mod:`fedpress.bounds`).
    predictor : {"auto", "none", "lorenzo1d"}
        Prediction on the codes; ``auto`` picks per tensor.
    coder : {"auto", "ans", "zstd"}
        Entropy coder; ``auto`` picks per tensor.
    """

    codec_id = "fpz"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "predictor", "coder")
    core_float64 = True

    def __init__(self, mode: str = "rel", eb: float = 1e-2, predictor: str = "auto",
                 coder: str = "auto") -> None:
        super().__init__(mode, eb)
        if predictor != "auto" and predictor not in BY_NAME:
            raise ConfigError(f"fpz: predictor must be 'auto' or one of {sorted(BY_NAME)}")
        if coder != "auto" and coder not in _CODERS:
            raise ConfigError(f"fpz: coder must be 'auto' or one of {sorted(_CODERS)}")
        self.predictor = predictor
        self.coder = coder

    def _choose_predictor(self, q: np.ndarray) -> int:
        if self.predictor != "auto":
            return BY_NAME[self.predictor]
        s = _sample(q)
        best, best_bits = 0, float("inf")
        for pid, (_, fwd, _) in PREDICTORS.items():
            r = fwd(s)
            bits = ans.entropy_bits(np.bincount(r - r.min()))
            if bits < best_bits:
                best, best_bits = pid, bits
        return best

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        return self._encode_core_recon(x, eb_abs)[0]

    def _encode_core_recon(self, x: np.ndarray, eb_abs: float) -> tuple[bytes, np.ndarray]:
        w = Writer()
        w.u8(VERSION)
        q = quantize(x, eb_abs)
        if q is None:
            w.u8(MODE_LOSSLESS)
            w.raw(_ZSTD.encode(x))
            return w.getvalue(), x
        pid = self._choose_predictor(q)
        r = predictor(pid)[1](q)
        w.u8(MODE_QUANT)
        w.u8(pid)
        w.raw(self._code(r))
        return w.getvalue(), dequantize(q, eb_abs, x.dtype)

    def _code(self, r: np.ndarray) -> bytes:
        """Coder id byte + body, for residual symbols ``r``."""
        def with_ans() -> bytes | None:
            if int(r.max()) - int(r.min()) + 1 > ans.MAX_ALPHABET:
                return None
            w = Writer()
            w.u8(CODER_ANS)
            ans.encode(r, w)
            return w.getvalue()

        def with_zstd() -> bytes:
            narrow = _narrow(r)
            return bytes([CODER_ZSTD, narrow.dtype.itemsize]) + _ZSTD.encode(narrow)

        if self.coder == "zstd":
            return with_zstd()
        if self.coder == "ans":
            out = with_ans()
            if out is None:
                raise ConfigError("fpz: alphabet too large for coder='ans' at this bound")
            return out
        # auto: ANS unless its histogram header dominates (large alphabet vs few values)
        nsym = int(r.max()) - int(r.min()) + 1
        if nsym * 4 < r.size:
            out = with_ans()
            if out is not None:
                return out
        a = with_ans()
        z = with_zstd()
        return z if a is None or len(z) < len(a) else a

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        rd = Reader(data, "fpz payload")
        if rd.u8() != VERSION:
            raise FormatError("fpz payload: unknown version")
        mode = rd.u8()
        if mode == MODE_LOSSLESS:
            return _ZSTD.decode(rd.rest(), TensorSpec((n,), dtype))
        if mode != MODE_QUANT:
            raise FormatError(f"fpz payload: unknown mode {mode}")
        _, _, inverse = predictor(rd.u8())
        coder = rd.u8()
        if coder == CODER_ANS:
            r = ans.decode(rd, n)
        elif coder == CODER_ZSTD:
            width = rd.u8()
            if width not in (1, 2, 4, 8):
                raise FormatError(f"fpz payload: bad integer width {width}")
            ints = np.dtype(f"i{width}")
            r = _ZSTD.decode(rd.rest(), TensorSpec((n,), ints)).astype(np.int64)
        else:
            raise FormatError(f"fpz payload: unknown coder {coder}")
        q = inverse(r)
        return dequantize(q, eb_abs, dtype)
