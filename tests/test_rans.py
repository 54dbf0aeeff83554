"""The rANS stage and the compiled kernels behind fpz: exact round trips, sizes near
the entropy, escapes, context models, lanes, the fused dequantization, and corrupt
streams that come back as FormatError (never a crash or a wrong array)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Reader, Writer
from fedpress.stages import ans, rans
from fedpress.stages.quantize import MAX_CODE, dequantize, quantize, quantize_values

from .common import check_mutated_residual_stream

residuals = hnp.arrays(np.int64, st.integers(1, 3000),
                       elements=st.one_of(st.integers(-4, 4), st.integers(-(2**31), 2**31)))


def _encode(r: np.ndarray, ctx_model: int | None = None) -> bytes:
    w = Writer()
    rans.encode(r, w, ctx_model)
    return w.getvalue()


def _header(blob: bytes) -> dict[str, int]:
    rd = Reader(blob)
    k, pb, ctx = rd.varint(), rd.u8(), rd.u8()
    return {"k": k, "pb": pb, "ctx_model": ctx}


@given(residuals, st.sampled_from([None, 0, 1]))
def test_round_trip(r: np.ndarray, ctx_model: int | None) -> None:
    blob = _encode(r, ctx_model)
    assert np.array_equal(rans.decode(Reader(blob), r.size), r)


@pytest.mark.parametrize("n", [1, 2, 3, rans.LANES * rans.MIN_LANE - 1,
                               rans.LANES * rans.MIN_LANE, 300_001])
def test_round_trip_sizes_and_lanes(n: int, rng: np.random.Generator) -> None:
    r = np.rint(rng.laplace(0, 2, n)).astype(np.int64)
    r[:: 997] = 10**6  # escapes in every lane
    blob = _encode(r)
    assert np.array_equal(rans.decode(Reader(blob), n), r)
    assert rans.lane_bounds(n).size - 1 == (rans.LANES if n >= rans.LANES * rans.MIN_LANE else 1)


def test_contexts_restart_at_every_lane() -> None:
    # a symbol seen only at lane starts, right after large values: its context is
    # the "quiet" one only if the tables restart their contexts where the lanes do
    n = rans.LANES * rans.MIN_LANE * 2
    r = np.zeros(n, np.int64)
    for at in range(1000, n - 1000, 500):  # 3 always follows 5, 5: never a quiet context
        r[at : at + 3] = (5, 5, 3)
    for b in rans.lane_bounds(n)[1:-1]:
        r[b - 2 : b + 1] = (5, 5, 3)
    blob = _encode(r, 1)
    assert _header(blob)["k"] > 6  # 3 (zigzag 6) is in the tables, not escaped
    assert np.array_equal(rans.decode(Reader(blob), n), r)


def test_size_is_close_to_the_entropy(rng: np.random.Generator) -> None:
    r = np.rint(rng.standard_normal(400_000) * 3).astype(np.int64)
    ideal = ans.entropy_bits(np.bincount(r - r.min())) / 8
    assert len(_encode(r, 0)) < ideal * 1.01 + 600


def test_magnitude_context_pays_on_bursts(rng: np.random.Generator) -> None:
    # magnitudes come in bursts (as in gradients): the context model must see it
    scale = np.repeat(rng.choice([0.05, 4.0], 2000), 100)
    r = np.rint(rng.laplace(0, 1, scale.size) * scale).astype(np.int64)
    plain, ctx, auto = _encode(r, 0), _encode(r, 1), _encode(r)
    assert len(ctx) < 0.9 * len(plain)
    assert _header(auto)["ctx_model"] == 1 and len(auto) == len(ctx)
    # and on white noise the chooser keeps the single table
    noise = np.rint(rng.standard_normal(200_000) * 3).astype(np.int64)
    assert _header(_encode(noise))["ctx_model"] == 0


def test_rare_outliers_are_escaped(rng: np.random.Generator) -> None:
    r = np.rint(rng.laplace(0, 1, 100_000)).astype(np.int64)
    r[rng.choice(r.size, 20, replace=False)] = rng.integers(-(2**31), 2**31, 20)
    blob = _encode(r)
    assert _header(blob)["k"] < 64  # the table stays small
    assert np.array_equal(rans.decode(Reader(blob), r.size), r)


def test_fused_dequantization_matches_numpy(rng: np.random.Generator) -> None:
    r = np.rint(rng.laplace(0, 5, 100_000)).astype(np.int64)
    blob = _encode(r)
    for dtype in (np.float32, np.float64):
        got = rans.decode(Reader(blob), r.size, step=0.37, dtype=np.dtype(dtype))
        assert got.dtype == dtype
        assert got.tobytes() == dequantize(r, 0.37 / 2, np.dtype(dtype)).tobytes()


@given(hnp.arrays(np.float32, st.integers(1, 2000),
                  elements=st.floats(-1e6, 1e6, width=32)),
       st.floats(1e-6, 10.0))
def test_compiled_quantizer_matches_numpy(x: np.ndarray, eb: float) -> None:
    ref = quantize(x, eb)
    got = quantize_values(x, eb)
    if ref is None or got is None:
        return  # overflow: both paths store the tensor losslessly
    q, values = got
    assert np.array_equal(q, ref)
    assert values.tobytes() == dequantize(ref, eb, x.dtype).tobytes()


def test_compiled_quantizer_refuses_overflow() -> None:
    assert quantize_values(np.array([1.0, -1.0]), 0.25 / MAX_CODE) is None


@pytest.mark.parametrize("cut", [0, 1, 3, 5, 9, -7, -2, -1])
def test_truncated_streams_are_format_errors(cut: int, rng: np.random.Generator) -> None:
    r = np.rint(rng.laplace(0, 3, 70_000)).astype(np.int64)
    r[::1001] = 5000
    blob = _encode(r)
    with pytest.raises(fedpress.FormatError):
        rans.decode(Reader(blob[:cut]), r.size)


def test_wrong_counts_are_format_errors(rng: np.random.Generator) -> None:
    r = np.rint(rng.laplace(0, 3, 70_000)).astype(np.int64)
    blob = _encode(r)
    for n in (r.size - 1, r.size + 1, 10):
        with pytest.raises(fedpress.FormatError):
            rans.decode(Reader(blob), n)


@given(st.data())
def test_mutated_streams_never_crash(data: st.DataObject) -> None:
    check_mutated_residual_stream(data, _encode, lambda b, n: rans.decode(Reader(b), n), 80000)


@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 2048)),
                  elements=st.one_of(st.just(0), st.integers(0, 10**9))),
       st.integers(11, 14))
def test_normalized_tables_are_valid(counts: np.ndarray, pb: int) -> None:
    freq = rans.normalize(counts, pb)
    sums = freq.sum(axis=1)
    assert np.all((sums == 1 << pb) | (counts.sum(axis=1) == 0))
    assert np.array_equal(freq > 0, counts > 0)  # every seen symbol stays codable


def test_residuals_beyond_the_zigzag_range_are_refused() -> None:
    w = Writer()
    with pytest.raises(ValueError, match="2\\*\\*62"):
        rans.encode(np.array([0, 1, 2**62, -(2**62), 3] * 10, np.int64), w)
    r = np.array([0, 2**62 - 1, -(2**62), 2**53 + 1, 5] * 10, np.int64)  # just inside
    assert np.array_equal(rans.decode(Reader(_encode(r)), r.size), r)  # exact, not via floats


def test_normalize_refuses_more_symbols_than_slots_and_keeps_the_mode() -> None:
    with pytest.raises(ValueError, match="slots"):
        rans.normalize(np.ones((1, 5), np.int64), 2)
    # a wide alphabet (every symbol seen once) beside one frequent symbol: the
    # minimum of one slot each is paid by all in proportion, not by the mode alone
    counts = np.ones((1, 3000), np.int64)
    counts[0, 0] = 100_000
    f = rans.normalize(counts, 12)
    assert f.sum() == 4096 and f.min() == 1
    assert f[0, 0] >= 1000  # its share (97%) of the 1096 slots left after the minimums
