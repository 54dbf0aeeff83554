"""Sparsifiers and what they share: bit codes, index coding, topk / randk /
threshold, and the error-feedback wrapper."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Reader, Writer
from fedpress.abc import TensorSpec
from fedpress.grad import indices
from fedpress.grad.topk import approx_top_indices, top_indices
from fedpress.stages import golomb

RNG = np.random.default_rng(7)


@given(hnp.arrays(np.int64, st.integers(0, 300), elements=st.integers(0, 5000)),
       st.integers(0, 14))
@settings(max_examples=60, deadline=None)
def test_rice_and_gamma_round_trip(v: np.ndarray, b: int) -> None:
    assert np.array_equal(golomb.rice_unpack(golomb.rice_pack(v, b), v.size, b, 5000), v)
    assert len(golomb.rice_pack(v, b)) == golomb.rice_size(v, b)
    assert np.array_equal(golomb.gamma_unpack(golomb.gamma_pack(v + 1), v.size, 5001), v + 1)


def test_bit_codes_refuse_bad_streams() -> None:
    v = RNG.integers(0, 100, 50)
    data = golomb.rice_pack(v, 4)
    with pytest.raises(fedpress.FormatError, match="ends early"):
        golomb.rice_unpack(data[:-3], 50, 4, 1000)
    with pytest.raises(fedpress.FormatError, match="exceeds"):
        golomb.rice_unpack(data, 50, 4, 10)
    with pytest.raises(fedpress.FormatError, match="cannot fit"):
        golomb.gamma_unpack(b"\x00", 9, 10)
    with pytest.raises(fedpress.FormatError):
        golomb.gamma_unpack(b"\x00" * 10, 1, 1 << 62)  # 80 zero bits: no code
    with pytest.raises(ValueError):
        golomb.gamma_pack(np.array([0]))
    # one stream, one encoding: no trailing byte, no set padding bit
    with pytest.raises(fedpress.FormatError, match="trailing"):
        golomb.rice_unpack(data + b"\x00", 50, 4, 1000)
    tail = golomb.gamma_pack(np.array([1]))  # one bit: "1", seven padding bits
    with pytest.raises(fedpress.FormatError, match="padding"):
        golomb.gamma_unpack(bytes([tail[0] | 1]), 1, 10)


def test_best_rice_parameter_is_near_the_entropy_of_geometric_gaps() -> None:
    p = 0.01
    gaps = RNG.geometric(p, 200_000) - 1
    b = golomb.best_rice_parameter(gaps)
    entropy = (-(1 - p) * np.log2(1 - p) - p * np.log2(p)) / p  # bits per geometric gap
    assert 8 * golomb.rice_size(gaps, b) / gaps.size < entropy * 1.01
    assert all(golomb.rice_size(gaps, b) <= golomb.rice_size(gaps, c) for c in range(12))


@pytest.mark.parametrize("n,k,method", [(100_000, 100, indices.RICE),
                                        (100_000, 50_000, None),
                                        (1000, 1000, indices.RANS)])
def test_index_coding_picks_the_cheapest(n: int, k: int, method: int | None) -> None:
    idx = np.sort(RNG.choice(n, k, replace=False))
    w = Writer()
    used = indices.write_indices(w, idx, n)
    blob = w.getvalue()
    sizes = {m: len(b) for m, b in indices.candidates(idx, n).items()}
    assert used == (method if method is not None else min(sizes, key=sizes.__getitem__))
    assert len(blob) <= min(sizes.values()) + 4 and len(blob) <= (n + 7) // 8 + 4
    assert np.array_equal(indices.read_indices(Reader(blob), k, n), idx)


def test_clustered_indices_use_a_gap_coder_that_fits_them() -> None:
    runs = np.concatenate([np.arange(s, s + 40) for s in range(0, 400_000, 4000)])
    w = Writer()
    method = indices.write_indices(w, runs, 400_000)
    assert method in (indices.RANS, indices.GAMMA) and len(w.getvalue()) < runs.size / 2


def test_index_decoding_refuses_bad_input() -> None:
    idx = np.array([3, 9, 10])
    w = Writer()
    indices.write_indices(w, idx, 20)
    blob = w.getvalue()
    with pytest.raises(fedpress.FormatError):
        indices.read_indices(Reader(blob), 3, 10)  # beyond the tensor
    with pytest.raises(fedpress.FormatError):
        indices.read_indices(Reader(bytes([9]) + blob[1:]), 3, 20)  # unknown method
    with pytest.raises(fedpress.FormatError):
        indices.read_indices(Reader(blob), 30, 20)
    mask = b"\xff\xff\xff"  # 24 bits for 20 positions
    bad = Writer()
    bad.u8(indices.BITMAP)
    bad.blob(mask)  # padding bits set
    with pytest.raises(fedpress.FormatError, match="padding"):
        indices.read_indices(Reader(bad.getvalue()), 20, 20)
    with pytest.raises(ValueError):
        indices.write_indices(Writer(), np.array([4, 4]), 10)


def test_topk_keeps_exactly_the_k_largest() -> None:
    x = RNG.standard_normal((64, 300)).astype(np.float32)
    y = fedpress.decompress(fedpress.compress(x, codec="topk", ratio=0.01))
    k = int(np.ceil(0.01 * x.size))
    kept = np.flatnonzero(y)
    assert kept.size == k and np.array_equal(y.reshape(-1)[kept], x.reshape(-1)[kept])
    assert np.abs(x).reshape(-1)[kept].min() >= np.sort(np.abs(x).reshape(-1))[-k]
    assert y.dtype == x.dtype and y.shape == x.shape


def test_approximate_topk_is_close_and_never_over_k() -> None:
    a = np.abs(RNG.standard_normal(500_000))
    k = 500
    exact = set(top_indices(a, k).tolist())
    approx = approx_top_indices(a, k, 0.01, np.random.default_rng(0))
    assert approx.size <= k and np.all(np.diff(approx) > 0)
    assert len(exact & set(approx.tolist())) > 0.6 * k


def test_randk_sends_no_indices_and_can_be_unbiased() -> None:
    x = RNG.standard_normal(10_000).astype(np.float32)
    blob = fedpress.compress(x, codec="randk", ratio=0.01)
    topk = fedpress.compress(x, codec="topk", ratio=0.01)
    assert len(blob) < len(topk)
    y = fedpress.decompress(blob)
    kept = np.flatnonzero(y)
    assert kept.size == 100 and np.array_equal(y[kept], x[kept])
    # unbiased with scale=True: the mean over draws approaches x
    small = RNG.standard_normal(20)
    draws = [fedpress.decompress(fedpress.compress(small, codec="randk", ratio=0.25, seed=s,
                                                   scale=True)) for s in range(4000)]
    mean = np.mean(draws, axis=0)
    se = np.std(draws, axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - small) < 5 * se + 1e-12)


def test_threshold_keeps_what_is_over_tau() -> None:
    x = RNG.standard_normal(5000)
    y = fedpress.decompress(fedpress.compress(x, codec="threshold", tau=2.0))
    assert np.array_equal(y, np.where(np.abs(x) >= 2.0, x, 0.0))


@given(hnp.arrays(st.sampled_from([np.float32, np.float64]),
                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                  elements=st.floats(-1e6, 1e6, width=32)),
       st.sampled_from(["topk", "randk", "threshold"]))
@settings(max_examples=60, deadline=None)
def test_sparsifiers_round_trip(x: np.ndarray, codec: str) -> None:
    c = fedpress.get_codec(codec)
    payload, recon = c.encode_with_recon(x)
    got = c.decode(payload, TensorSpec.of(x))
    assert got.dtype == x.dtype and got.shape == x.shape
    assert np.array_equal(got, recon)
    kept = got != 0
    assert np.array_equal(got[kept], x[kept])


def test_gradient_codecs_refuse_non_finite_and_bad_options() -> None:
    x = np.ones(10, dtype=np.float32)
    x[3] = np.nan
    with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
        fedpress.compress(x, codec="topk")
    for codec, opts in (("topk", {"ratio": 0}), ("topk", {"ratio": 2}),
                        ("randk", {"seed": -1}), ("threshold", {"tau": -1.0}),
                        ("topk", {"approx": "yes"})):
        with pytest.raises(fedpress.ConfigError):
            fedpress.get_codec(codec, **opts)
    with pytest.raises(fedpress.ConfigError, match="lossless"):
        fedpress.get_codec("ef", inner="zstd")


@pytest.mark.parametrize("values", [{}, {"values": "fpz", "values_eb": 3e-2}],
                         ids=["raw", "fpz"])
def test_error_feedback_keeps_what_compression_lost(values: dict) -> None:
    """Dropped entries and, with error-bounded values, the kept ones' quantization
    error stay in the residual."""
    enc = fedpress.UpdateEncoder("ef:topk", ratio=0.05, **values)
    dec = fedpress.UpdateDecoder()
    prev = np.zeros((50, 40), dtype=np.float32)
    total_in = np.zeros((50, 40), dtype=np.float64)
    total_sent = np.zeros((50, 40), dtype=np.float64)
    for _ in range(30):
        g = RNG.standard_normal((50, 40)).astype(np.float32)
        sent = dec.decode(enc.encode({"fc.weight": g}))["fc.weight"]
        res = enc.store.get("default", "fc.weight")["residual"]
        # the invariant, in the tensor's float32 arithmetic: residual = corrected - sent
        assert np.array_equal(res, (g + prev) - sent)
        assert np.allclose(sent + res, g + prev, atol=1e-5)
        kept = sent != 0
        assert np.array_equal(res[~kept], (g + prev)[~kept])
        assert np.any(res[kept] != 0) == bool(values)  # quantization error kept
        prev = res
        total_in += g
        total_sent += sent
    # nothing is lost for good: what was not sent is exactly the residual
    assert np.allclose(total_in - total_sent, prev, atol=1e-3)


def test_error_feedback_plans_and_configs() -> None:
    codec = fedpress.make_codec("ef:fpz", "rel", 1e-2)
    assert codec.get_config()["inner"]["id"] == "fpz"
    again = fedpress.codec_from_config(codec.get_config())
    assert again == codec
    x = RNG.standard_normal(5000).astype(np.float32)
    blob = fedpress.encode_update({"a.weight": x}, plan="ef:topk", ratio=0.1)
    assert np.count_nonzero(fedpress.decode_update(blob)["a.weight"]) == 500
    enc = fedpress.UpdateEncoder("ef:topk", ratio=0.1)
    enc.encode({"a.weight": x})
    with pytest.raises(fedpress.ConfigError, match="changed"):
        enc.encode({"a.weight": x[:2000]})


def test_sparse_payloads_fuzzed_are_format_errors() -> None:
    x = RNG.standard_normal(3000).astype(np.float32)
    rng = np.random.default_rng(1)
    for codec, opts in (("topk", {"ratio": 0.02}), ("randk", {"ratio": 0.02}),
                        ("threshold", {"tau": 1.5})):
        blob = bytearray(fedpress.compress(x, codec=codec, **opts))
        for cut in range(0, len(blob), max(1, len(blob) // 40)):
            with pytest.raises(fedpress.FormatError):
                fedpress.decompress(bytes(blob[:cut]))
        for _ in range(100):
            bad = bytearray(blob)
            bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
            try:
                fedpress.decompress(bytes(bad))
            except fedpress.FormatError:
                pass


def test_a_decoders_codec_allowlist_reaches_inside_error_feedback() -> None:
    x = RNG.standard_normal(5000).astype(np.float32)
    blob = fedpress.encode_update({"a.weight": x}, plan="ef:topk", ratio=0.1)
    only_ef = fedpress.Limits(codecs=frozenset({"ef", "blosc-lz"}))
    with pytest.raises(fedpress.FormatError, match="'topk' is not accepted"):
        fedpress.UpdateDecoder(limits=only_ef).decode(blob)
    both = fedpress.Limits(codecs=frozenset({"ef", "topk", "blosc-lz"}))
    assert fedpress.UpdateDecoder(limits=both).decode(blob)["a.weight"].shape == (5000,)


def test_non_finite_values_never_come_off_the_wire_or_out_of_an_overflow() -> None:
    x = RNG.standard_normal(3000).astype(np.float32)
    spec = TensorSpec.of(x)
    for codec in (fedpress.get_codec("topk", ratio=0.01), fedpress.get_codec("randk")):
        payload = bytearray(codec.encode(x))
        payload[-4:] = np.float32(np.nan).tobytes()  # the last value sent
        with pytest.raises(fedpress.FormatError, match="non-finite"):
            codec.decode(bytes(payload), spec)
    psgd = fedpress.get_codec("powersgd")
    m = RNG.standard_normal((40, 30)).astype(np.float32)
    payload = bytearray(psgd.encode(m))
    payload[-4:] = np.float32(np.inf).tobytes()
    with pytest.raises(fedpress.FormatError, match="non-finite"):
        psgd.decode(bytes(payload), TensorSpec.of(m))
    with pytest.raises(fedpress.ConfigError, match="overflows"):
        fedpress.compress(np.full(2000, 1000, np.float16), codec="randk", ratio=0.01,
                          scale=True)
    with pytest.raises(fedpress.ConfigError, match="overflow"):
        fedpress.encode_update({"w.weight": np.full((100, 100), 30000, np.float16)},
                               plan="powersgd")
