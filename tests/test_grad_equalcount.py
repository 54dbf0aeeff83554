"""HGC's equal-count quantizer and the XOR coding of its codes against a prediction."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress.grad import equalcount as ec


@pytest.mark.parametrize("levels", [3, 5, 9])
def test_groups_have_equal_counts_and_their_means(levels: int) -> None:
    rng = np.random.default_rng(levels)
    x = rng.standard_normal(1000).astype(np.float32)
    x[:10] = 0.0
    codes, means = ec.quantize(x, levels)
    h = (levels - 1) // 2
    assert codes.dtype == np.uint8 and means.shape == (levels - 1,)
    assert np.all(codes[x == 0] == h)
    for side, first in ((x < 0, 0), (x > 0, h + 1)):
        counts = np.bincount(codes[side] - first, minlength=h)
        assert counts.max() - counts.min() <= 1  # equal counts, up to one
        assert counts.sum() == side.sum()
    y = ec.dequantize(codes, means, levels)
    for c in range(levels):
        if c != h and np.any(codes == c):
            assert np.isclose(y[codes == c][0], x[codes == c].mean(), rtol=1e-5)
    # groups are ordered: every value of a lower code is <= every value of a higher one
    for c in range(levels - 1):
        lo, hi = x[codes == c], x[codes == c + 1]
        if lo.size and hi.size:
            assert lo.max() <= hi.min()


def test_three_levels_is_ternary_with_a_mean_per_sign() -> None:
    x = np.array([-4.0, -2.0, 0.0, 1.0, 3.0, 5.0], np.float32)
    codes, means = ec.quantize(x, 3)
    assert codes.tolist() == [0, 0, 1, 2, 2, 2]
    assert means.tolist() == [-3.0, 3.0]
    assert ec.dequantize(codes, means).tolist() == [-3.0, -3.0, 0.0, 3.0, 3.0, 3.0]


def test_empty_groups_have_mean_zero_and_bad_input_is_refused() -> None:
    codes, means = ec.quantize(np.array([2.0, 1.0], np.float32), 7)  # 3 groups, 2 values
    assert codes.tolist() == [5, 4]  # positives sorted: 1.0 in group 0, 2.0 in group 1
    assert means[:3].tolist() == [0.0, 0.0, 0.0] and np.count_nonzero(means[3:]) == 2
    for bad in (2, 4, 1, 257, True, 3.0):
        with pytest.raises(fedpress.ConfigError, match="levels"):
            ec.quantize(np.ones(4, np.float32), bad)  # type: ignore[arg-type]
    with pytest.raises(fedpress.ConfigError, match="NaN"):
        ec.quantize(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="out of range"):
        ec.dequantize(np.array([3], np.uint8), np.zeros(2, np.float32), 3)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, st.integers(0, 300),
                  elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)),
       st.sampled_from([3, 5, 7]))
def test_xor_with_the_prediction_round_trips(x: np.ndarray, levels: int) -> None:
    codes, _ = ec.quantize(x, levels)
    pred, _ = ec.quantize(np.roll(x, 1) * 0.5, levels)
    res = ec.xor_codes(codes, pred)
    assert np.array_equal(ec.xor_codes(res, pred), codes)
    assert res.size == 0 or int(res.max()) < ec.residue_alphabet(levels)


def test_a_good_prediction_makes_residues_zero() -> None:
    """Gradients that keep their sign and rank: the predicted codes match, XOR is 0."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal(4000).astype(np.float32)
    u = np.zeros_like(g)
    v = np.zeros_like(g)
    for _ in range(5):
        u, v = ec.advance(u, v, g)
    codes, _ = ec.quantize(g, 3)
    predicted, _ = ec.quantize(ec.predict(u, v), 3)
    assert np.mean(ec.xor_codes(codes, predicted) == 0) > 0.99
    unrelated, _ = ec.quantize(rng.standard_normal(4000).astype(np.float32), 3)
    assert np.mean(ec.xor_codes(codes, unrelated) == 0) < 0.6


def test_predictor_state_is_the_same_on_both_ends() -> None:
    """The moving averages are plain float32 arithmetic: two copies fed the same
    aggregates stay equal bit for bit, and start from zero."""
    rng = np.random.default_rng(1)
    a = [np.zeros(50, np.float32)] * 2
    b = [np.zeros(50, np.float32)] * 2
    for _ in range(20):
        g = rng.standard_normal(50).astype(np.float32)
        a = list(ec.advance(*a, g))
        b = list(ec.advance(*b, g.copy()))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert ec.predict(*a).dtype == np.float32
    u, v = ec.advance(np.zeros(1, np.float32), np.zeros(1, np.float32), np.ones(1))
    assert u[0] == np.float32(1) - np.float32(0.8) and v[0] == np.float32(1) - np.float32(0.9)
