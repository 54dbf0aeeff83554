"""The comparison every report uses: bound checks and bit-exactness."""

from __future__ import annotations

import math

import numpy as np

from fedpress.verify import compare


def test_within_and_over_the_bound() -> None:
    x = np.array([0.0, 1.0, 2.0, np.nan], np.float32)
    ok = compare(x, x + np.float32(0.05), 0.1)
    assert ok.violations == 0 and math.isclose(ok.ratio, 0.5, rel_tol=1e-6)
    y = x.copy()
    y[1] += 0.2
    bad = compare(x, y, 0.1)
    assert bad.violations == 1 and bad.ratio > 1


def test_nonfinite_values_must_survive_exactly() -> None:
    x = np.array([np.inf, 1.0], np.float32)
    assert compare(x, np.array([1e30, 1.0], np.float32), 1.0).violations == 1
    assert compare(x, x.copy(), 1.0).violations == 0


def test_lossless_is_bitwise() -> None:
    x = np.array([0.0, 1.0], np.float32)
    y = np.array([-0.0, 1.0], np.float32)  # equal as numbers, different bits
    assert compare(x, y, None).violations == 1
    assert compare(x, x.copy(), None).ratio == 0.0
    b = np.array([True, False])
    assert compare(b, b.copy(), None).violations == 0
