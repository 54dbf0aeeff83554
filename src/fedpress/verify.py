"""Checking a decoded tensor against its original: the one comparison that the CLI's
``bench``, the demo and the benchmarks all report."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Check:
    """How a decoded tensor compares with its original.

    ``max_error`` is max|x - y| over the finite values of x (inf if a NaN/Inf
    was not kept exactly); ``ratio`` is ``max_error / eb_abs`` for
    error-bounded tensors and 0 or inf (exact or not) for lossless ones;
    ``violations`` counts the elements over the bound (lossless: differing bits).
    """

    max_error: float
    ratio: float
    violations: int


def compare(x: np.ndarray, y: np.ndarray, eb_abs: float | None) -> Check:
    """Compare original ``x`` with decoded ``y``; ``eb_abs=None`` means it must be bit-exact."""
    x = np.asarray(x)
    y = np.asarray(y)
    if eb_abs is None:
        xb = x.reshape(-1).view(np.uint8).reshape(x.size, -1) if x.size else x.reshape(0, 1)
        yb = y.reshape(-1).view(np.uint8).reshape(y.size, -1) if y.size else y.reshape(0, 1)
        bad = int(np.count_nonzero((xb != yb).any(axis=1))) if x.size else 0
        err = _max_error(x, y)
        return Check(err, 0.0 if bad == 0 else math.inf, bad)
    err = _max_error(x, y)
    x64 = x.astype(np.float64).reshape(-1)
    y64 = y.astype(np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        over = np.abs(x64 - y64) > eb_abs
        nonfinite_changed = ~np.isfinite(x64) & (x64.view(np.uint64) != y64.view(np.uint64))
    bad = int(np.count_nonzero((over & np.isfinite(x64)) | nonfinite_changed))
    ratio = err / eb_abs if eb_abs > 0 else (0.0 if err == 0 else math.inf)
    return Check(err, ratio, bad)


def _max_error(x: np.ndarray, y: np.ndarray) -> float:
    x64 = x.astype(np.float64).reshape(-1)
    y64 = y.astype(np.float64).reshape(-1)
    finite = np.isfinite(x64)
    if not finite.all() and not np.array_equal(x64[~finite], y64[~finite], equal_nan=True):
        return math.inf
    if not finite.any():
        return 0.0
    with np.errstate(invalid="ignore"):
        d = np.abs(x64[finite] - y64[finite])
    return float(d.max()) if np.all(np.isfinite(d)) else math.inf
