"""Radix packing of small-alphabet symbols (the HGC messages' short code streams)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedpress
from fedpress.stages import radix


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 300), st.integers(0, 400), st.integers(0, 2**32 - 1))
def test_round_trip_and_size(alphabet: int, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, alphabet, count)
    if count:  # the extremes of every group's digits
        symbols[: count // 2] = alphabet - 1
    data = radix.pack(symbols, alphabet)
    assert len(data) == radix.packed_size(count, alphabet)
    # within one byte per 64-bit group of the information content
    groups = math.ceil(count / radix.group_size(alphabet)) if count else 0
    assert len(data) <= count * math.log2(alphabet) / 8 + groups + 1
    np.testing.assert_array_equal(radix.unpack(data, count, alphabet), symbols)


def test_ternary_costs_1_6_bits() -> None:
    assert radix.group_size(3) == 40 and radix.group_size(4) == 32 and radix.group_size(2) == 64
    assert radix.packed_size(4000, 3) == 800


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="lie in"):
        radix.pack(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="alphabet"):
        radix.group_size(1)
    good = radix.pack(np.array([2] * 45), 3)
    with pytest.raises(fedpress.FormatError, match="bytes"):
        radix.unpack(good[:-1], 45, 3)
    with pytest.raises(fedpress.FormatError, match="last group"):
        radix.unpack(good[:8] + b"\xff", 45, 3)  # 5 trits need one byte, < 243
    with pytest.raises(fedpress.FormatError, match="group out of range"):
        radix.unpack(b"\xff" * 8 + good[8:], 45, 3)
