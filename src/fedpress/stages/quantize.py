"""Linear-scale error-bounded quantizer.

``q = rint(x / (2 eb))`` and ``x' = q * 2 eb``, so ``|x - x'| <= eb`` up to the
rounding of the final cast (which the error-bound envelope checks and patches).
Quantizing the values themselves and predicting on the integer codes (dual
quantization, as in cuSZ) makes every predictor reconstruct exactly the same
values and lets prediction vectorise.
"""

from __future__ import annotations

import math

import numpy as np

#: codes are kept within int32 (and exactly representable in float64)
MAX_CODE = (1 << 30) - 1


def usable_step(step: float) -> bool:
    """Whether a quantization step ``2 eb`` works: positive and finite (a bound above
    half the largest double would make every value ``0 * inf = NaN``)."""
    return 0.0 < step < math.inf


def quantize(x: np.ndarray, eb: float) -> np.ndarray | None:
    """Integer codes (int64) of ``x`` for bound ``eb > 0``; None if they would overflow.

    ``x`` must be finite. None means the bound is too small for the value
    range (``max|x| / (2 eb) > 2**30``) or too large to quantize with (see
    :func:`usable_step`); the caller then stores ``x`` losslessly.
    """
    step = 2.0 * float(eb)
    amax = float(np.max(np.abs(x))) if x.size else 0.0
    if not usable_step(step) or amax / step >= MAX_CODE:
        return None
    return np.rint(x.astype(np.float64) / step).astype(np.int64)


def dequantize(q: np.ndarray, eb: float, dtype: np.dtype) -> np.ndarray:
    """Values of codes ``q`` in ``dtype`` (the exact inverse the decoder runs)."""
    return (q.astype(np.float64) * (2.0 * float(eb))).astype(dtype)


def quantize_values(x: np.ndarray, eb: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``(codes, values)``: :func:`quantize` and :func:`dequantize` in one compiled pass.

    ``values`` has ``x``'s dtype and is bit for bit what :func:`dequantize` gives;
    None when a code would overflow (as :func:`quantize`).
    """
    from . import kernels

    step = 2.0 * float(eb)
    if not usable_step(step):
        return None
    y = np.empty_like(x)
    q, ok = kernels().quantize(x, step, MAX_CODE, y)
    return (q, y) if ok else None
