"""Sign compressors: ``signsgd`` and ``efsignsgd``.

- ``signsgd`` sends one bit per value, the sign, plus one scale, and decodes to
  ``scale * sign(x)`` (Bernstein et al., "signSGD: Compressed Optimisation for
  Non-Convex Problems", ICML 2018). ``scale="l1"`` (default) uses the mean
  magnitude ``||x||_1 / n``, the scaled sign of Karimireddy et al. 2019, which
  keeps the message's l1 norm and is the best single scale in l2
  (``||x - s sign(x)||`` is smallest at ``s = ||x||_1 / n``); ``scale="none"``
  sends the plain sign (``scale = 1``), to be used with a sign-sized learning rate.
  Zeros (``-0.0`` included) count as positive: they decode to ``+scale``.
- ``efsignsgd`` is the scaled sign inside error feedback (Karimireddy et al.,
  "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML
  2019): ``plan="efsignsgd"`` is ``plan="ef:signsgd"`` with ``scale="l1"`` fixed,
  under a name of its own and with no options. The residual is sender-scope state,
  so a frame of ``efsignsgd`` decodes without state, like one of ``signsgd``.
  The scaled sign is a contraction, so the residual stays bounded: each round
  ``||e||^2 = (1 - ||c||_1^2 / (n ||c||_2^2)) ||c||^2`` for the corrected tensor
  ``c``. The plain sign (``ef:signsgd`` with ``scale="none"``) is not: under
  gradients larger than 1 its residual grows round after round.
- The server side of signSGD with majority vote (Bernstein et al., "signSGD with
  Majority Vote is Communication Efficient and Fault Tolerant", ICLR 2019) is
  :func:`fedpress.exchange.majority_vote`: the sign of the (weighted) sum of the
  clients' signs, times the (weighted) mean of the clients' scales.

Payload layout (``signsgd``, hence also ``efsignsgd``)::

    f64              scale      little-endian; finite, >= 0 (not -0.0), exactly a value
                                of the tensor's dtype; 1.0 when scale="none"
    ceil(n/8) bytes  signs      bit i (C order) is bit i % 8 (least significant first,
                                np.packbits(bitorder="little")) of byte i // 8:
                                1 for x >= 0 (decodes to +scale), 0 for x < 0 (-scale);
                                the padding bits of the last byte are 0

so a tensor of n values costs ``8 + ceil(n / 8)`` bytes. The decoder refuses other
lengths, set padding bits and bad scales with a :class:`fedpress.FormatError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from .base import GradientCodec
from .ef import ErrorFeedback

SCALES = ("l1", "none")
#: bytes before the sign bits (the f64 scale)
HEADER_BYTES = 8


def payload_size(n: int) -> int:
    """Bytes of a ``signsgd`` payload for a tensor of ``n`` values."""
    return HEADER_BYTES + (n + 7) // 8


def mean_abs(x: np.ndarray) -> float:
    """``||x||_1 / n`` in float64 (0 for an empty tensor), never over ``max|x|``, finite
    for finite ``x`` (a float64 sum that overflows is redone on ``x / max|x|``)."""
    if x.size == 0:
        return 0.0
    a = np.abs(np.asarray(x).reshape(-1).astype(np.float64))
    top = float(a.max())
    with np.errstate(over="ignore"):
        s = float(a.mean())
    if not np.isfinite(s):
        s = top * float((a / top).mean())
    return min(s, top)


def _in_dtype(s: float, dtype: np.dtype) -> float:
    """``s`` rounded to ``dtype`` (as a Python float)."""
    with np.errstate(over="ignore"):
        return float(np.array(s, dtype=np.float64).astype(dtype))


def _expand(positive: np.ndarray, scale: float, spec: TensorSpec) -> np.ndarray:
    """``+scale`` where ``positive``, ``-scale`` elsewhere, in ``spec``'s dtype and shape
    (the encoder's reconstruction and the decoder's output, computed alike)."""
    values = np.array([-scale, scale], dtype=np.float64).astype(spec.dtype)
    return values[positive.astype(np.intp)].reshape(spec.shape)


@register_codec
class SignSGD(GradientCodec):
    """One bit per value (the sign) and one scale (``"l1"``: mean magnitude; ``"none"``: 1)."""

    codec_id = "signsgd"
    config_keys: ClassVar[tuple[str, ...]] = ("scale",)

    def __init__(self, scale: str = "l1") -> None:
        if not isinstance(scale, str) or scale not in SCALES:
            raise ConfigError(f"codec 'signsgd': scale must be one of {list(SCALES)}, "
                              f"got {scale!r}")
        self.scale = scale

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        s = _in_dtype(mean_abs(x), x.dtype) if self.scale == "l1" else 1.0
        positive = (x >= 0).reshape(-1)  # zeros and -0.0 count as positive
        w = Writer()
        w.f64(s)
        w.raw(np.packbits(positive, bitorder="little").tobytes())
        return w.getvalue(), _expand(positive, s, TensorSpec.of(x))

    def _read_scale(self, rd: Reader, spec: TensorSpec) -> float:
        s = rd.f64()
        if not np.isfinite(s) or np.signbit(s):
            raise FormatError(f"{rd.what}: scale {s!r} is not a finite number >= 0")
        if self.scale == "none" and s != 1.0:
            raise FormatError(f"{rd.what}: scale {s!r} with scale='none' (must be 1.0)")
        if _in_dtype(s, spec.dtype) != s:
            raise FormatError(f"{rd.what}: scale {s!r} is not a {spec.dtype} value")
        return s

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        n = spec.size
        if rd.remaining != payload_size(n):
            raise FormatError(f"{rd.what}: {rd.remaining} bytes, a tensor of {n} values "
                              f"takes {payload_size(n)}")
        s = self._read_scale(rd, spec)
        packed = np.frombuffer(rd.take((n + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(packed, bitorder="little")
        if bits[n:].any():
            raise FormatError(f"{rd.what}: padding bits of the last byte are set")
        return _expand(bits[:n], s, spec)

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        rd = Reader(payload, f"{self.codec_id} payload")
        return {"scale": self._read_scale(rd, spec)}


@register_codec
class EFSignSGD(ErrorFeedback):
    """Error feedback around the scaled sign (``signsgd`` with ``scale="l1"``); no options."""

    codec_id = "efsignsgd"
    config_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        super().__init__(SignSGD(scale="l1"))
