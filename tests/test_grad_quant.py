"""Stochastic quantizers ``qsgd`` and ``terngrad``: unbiasedness, exact reconstruction
handed to error feedback, payload choices, and decoders that refuse bad bytes."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Writer
from fedpress.abc import TensorSpec
from fedpress.dtypes import BFLOAT16
from fedpress.grad import quant
from fedpress.stages import rans

from .common import same_bits

RNG = np.random.default_rng(11)
CODECS = [("qsgd", {}), ("qsgd", {"levels": 1}), ("qsgd", {"levels": 3, "bucket": 5}),
          ("qsgd", {"levels": 1000}), ("terngrad", {}), ("terngrad", {"clip": 2.5})]
FLOATS = [np.float32, np.float64, np.float16, BFLOAT16]


def _round_trip(x: np.ndarray, codec: str, **opts: object) -> np.ndarray:
    """Decode(encode(x)) through a frame; assert it equals the encoder's reconstruction."""
    c = fedpress.get_codec(codec, **opts)
    _payload, recon = c.encode_with_recon(x)
    y = fedpress.decompress(fedpress.compress(x, codec=codec, **opts))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert same_bits(y, recon), (codec, opts)
    assert np.all(np.isfinite(y.astype(np.float64)))
    return y


def _draws(x: np.ndarray, codec: str, n: int, **opts: object) -> np.ndarray:
    """``n`` decoded outputs of ``x``, one per seed."""
    return np.array([fedpress.decompress(fedpress.compress(x, codec=codec, seed=s, **opts))
                     for s in range(n)])


def _assert_unbiased(draws: np.ndarray, x: np.ndarray) -> None:
    """The mean of the draws lies within 5 standard errors of ``x`` for every entry.

    The standard error comes from the draws' own spread, so a deterministic (biased)
    quantizer, whose spread is 0, fails on any entry it moves.
    """
    mean = draws.mean(axis=0)
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    z = np.abs(mean - x) / np.maximum(se, 1e-300)
    assert np.all(np.abs(mean - x) <= 5 * se + 1e-12), f"z-scores {np.round(z, 1)}"


# ---------------------------------------------------------------------------- statistics

SMALL = np.array([0.9, -0.35, 0.05, 0.0, -1.4, 0.61, 0.2, -0.02])


@pytest.mark.parametrize("opts", [{"levels": 2}, {"levels": 5, "bucket": 3}])
def test_qsgd_is_unbiased(opts: dict) -> None:
    draws = _draws(SMALL, "qsgd", 2000, **opts)
    _assert_unbiased(draws, SMALL)
    s = opts["levels"]
    norm = np.linalg.norm(SMALL)
    if "bucket" not in opts:  # every value is norm * level / s
        lev = draws / norm * s
        assert np.allclose(lev, np.rint(lev)) and np.abs(lev).max() <= s + 1e-9
        assert np.all(np.sign(draws) * np.sign(SMALL) >= 0)


def test_terngrad_is_unbiased() -> None:
    draws = _draws(SMALL, "terngrad", 2000)
    _assert_unbiased(draws, SMALL)
    assert set(np.unique(np.abs(draws))) <= {0.0, 1.4}


def test_the_unbiasedness_check_catches_a_biased_quantizer(monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    """Rounding to nearest (deterministic) or a stochastic rounding with the wrong
    probability fail the check that the real quantizers pass."""
    def nearest(a, sign, norms, s, d, rng):  # type: ignore[no-untyped-def]
        per = np.repeat(norms, d)[: a.size]
        lev = np.rint(np.divide(a, per, out=np.zeros_like(a), where=per > 0) * s)
        lev = lev.astype(np.int64)
        return np.where(sign, -lev, lev)

    def coin(a, sign, norms, s, d, rng):  # type: ignore[no-untyped-def]
        per = np.repeat(norms, d)[: a.size]
        r = np.divide(a, per, out=np.zeros_like(a), where=per > 0) * s
        low = np.floor(r)
        lev = low.astype(np.int64) + (rng.random(a.size) < 0.5) * (r > low)
        return np.where(sign, -lev, lev)

    for fake in (nearest, coin):
        monkeypatch.setattr(quant, "qsgd_levels", fake)
        with pytest.raises(AssertionError, match="z-scores"):
            _assert_unbiased(_draws(SMALL, "qsgd", 2000, levels=2), SMALL)


def test_terngrad_clipping_lowers_the_scale() -> None:
    x = RNG.standard_normal(10_000)
    x[7] = 40.0  # an outlier
    y = _round_trip(x, "terngrad", clip=2.5)
    scale = np.abs(y).max()
    assert np.isclose(scale, 2.5 * x.std()) and scale < 40.0
    assert y[7] == scale  # clipped entries are sent with probability 1
    # zero spread: not clipped (it would send nothing)
    assert np.array_equal(_round_trip(np.full(5, 3.0), "terngrad", clip=1.0), np.full(5, 3.0))


def test_more_levels_give_less_error_and_more_bytes() -> None:
    x = RNG.standard_normal(100_000).astype(np.float32)
    errs, sizes = [], []
    for s in (1, 4, 16, 256):
        blob = fedpress.compress(x, codec="qsgd", levels=s, bucket=0)
        y = fedpress.decompress(blob)
        errs.append(float(np.linalg.norm(y - x)))
        sizes.append(len(blob))
    assert errs == sorted(errs, reverse=True) and sizes == sorted(sizes), (errs, sizes)
    # QSGD's variance bound: E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2
    for s, e in zip((1, 4, 16, 256), errs):
        assert e**2 <= 1.2 * min(x.size / s**2, np.sqrt(x.size) / s) * np.sum(x**2.0)
    # buckets lower the error at a few more bytes
    bucketed = fedpress.compress(x, codec="qsgd", levels=4)  # default: buckets of 512
    assert np.linalg.norm(fedpress.decompress(bucketed) - x) < errs[1]


def test_terngrad_sends_scaled_signs() -> None:
    x = RNG.standard_normal((300, 40)).astype(np.float32)
    y = _round_trip(x, "terngrad")
    scale = np.abs(x).max()
    assert set(np.unique(y).tolist()) <= {-scale, 0.0, scale}
    nz = y != 0
    assert np.all(np.sign(y[nz]) == np.sign(x[nz]))
    assert np.argmax(np.abs(x)) in np.flatnonzero(nz)  # kept with probability 1
    # about 2 bits a value or less
    assert len(fedpress.compress(x, codec="terngrad")) < x.size / 4 + 100


def test_same_seed_same_payload_other_seed_other_payload() -> None:
    x = RNG.standard_normal(1000).astype(np.float32)
    for codec in ("qsgd", "terngrad"):
        a = fedpress.compress(x, codec=codec, seed=1)
        assert fedpress.compress(x, codec=codec, seed=1) == a
        assert fedpress.compress(x, codec=codec, seed=2) != a


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec,opts", CODECS)
@pytest.mark.parametrize("dtype", FLOATS)
def test_round_trip_shapes_dtypes_empty_zeros(codec: str, opts: dict, dtype: np.dtype) -> None:
    for shape in [(0,), (3, 0), (), (1,), (17, 5), (2, 3, 4)]:
        x = RNG.standard_normal(shape).astype(dtype)
        _round_trip(x, codec, **opts)
        z = _round_trip(np.zeros(shape, dtype), codec, **opts)
        assert not z.astype(np.float64).any()
    one = np.array([-2.5], dtype)
    y = _round_trip(one, codec, **opts)
    if codec == "qsgd":  # norm 2.5: the level is s out of s
        assert y[0] == -2.5


def test_both_qsgd_codings_are_used_and_decode() -> None:
    small = RNG.standard_normal(300).astype(np.float32)
    big = RNG.standard_normal(200_000).astype(np.float32)
    c = fedpress.get_codec("qsgd", levels=2)
    assert c.encode(small)[0] == quant.ELIAS
    assert c.encode(big)[0] == quant.RANS
    assert fedpress.inspect(fedpress.compress(small, codec="qsgd"))["tensors"][0]["coding"] \
        == "elias"
    # either coding decodes to the same tensor
    levels = np.array([0, 3, -1, 0, 0, 2, 0, -3], dtype=np.int64)
    norms = np.array([5.0])
    spec = TensorSpec((8,), np.dtype(np.float64))
    c3 = fedpress.get_codec("qsgd", levels=3)
    outs = []
    for coding in (quant.ELIAS, quant.RANS):
        w = Writer()
        w.u8(coding)
        w.u8(8)
        w.raw(norms.astype("<f8").tobytes())
        if coding == quant.ELIAS:
            quant.write_elias(w, levels, 3)
        else:
            rans.encode(levels, w)
        outs.append(c3.decode(w.getvalue(), spec))
    assert np.array_equal(outs[0], outs[1])
    assert np.allclose(outs[0], levels * 5.0 / 3)


def test_terngrad_codings() -> None:
    c = fedpress.get_codec("terngrad")
    x = RNG.standard_normal(10).astype(np.float32)
    sym = np.array([1, -1, 0, 0, 1, 1, -1, 0, 0, 1])
    assert np.array_equal(quant.unpack2(quant.pack2(sym), sym.size), sym)
    assert c.encode(x)[0] in (quant.PACK2, quant.RANS)
    assert c.encode(np.zeros(10, np.float32))[0] == quant.ZERO
    big = RNG.standard_normal(100_000).astype(np.float32)
    assert c.encode(big)[0] == quant.RANS  # mostly zeros: under 2 bits a value
    assert len(c.encode(big)) < big.size / 4


def test_float16_saturates_instead_of_overflowing() -> None:
    x = np.array([60000, 60000, -60000, 1], np.float16)  # norm > float16's max
    for s in range(20):
        y = _round_trip(x, "qsgd", levels=1, seed=s)
        assert set(np.abs(y).tolist()) <= {0.0, 65504.0}


float_arrays = hnp.arrays(
    st.sampled_from([np.float32, np.float64]),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=30),
    elements=st.floats(-1e6, 1e6, width=32),
)
wild_arrays = st.sampled_from([16, 32, 64]).flatmap(lambda width: hnp.arrays(
    np.dtype(f"float{width}"), st.integers(0, 50),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=width)))


@settings(max_examples=60, deadline=None)
@given(float_arrays, st.sampled_from([1, 2, 16, 1000]), st.sampled_from([0, 1, 7, 64]),
       st.integers(0, 2**63 - 1))
def test_qsgd_round_trip_property(x: np.ndarray, levels: int, bucket: int, seed: int) -> None:
    y = _round_trip(x, "qsgd", levels=levels, bucket=bucket, seed=seed)
    nz = y != 0
    assert np.all(np.sign(y[nz]) == np.sign(x[nz]))
    if x.size and bucket == 0:  # |Q(v_i)| <= ||v||
        assert np.abs(y.astype(np.float64)).max() <= np.linalg.norm(x.astype(np.float64)) \
            * (1 + 1e-6)


@settings(max_examples=60, deadline=None)
@given(float_arrays, st.sampled_from([None, 0.5, 2.5]), st.integers(0, 2**63 - 1))
def test_terngrad_round_trip_property(x: np.ndarray, clip: float | None, seed: int) -> None:
    y = _round_trip(x, "terngrad", clip=clip, seed=seed)
    mags = np.unique(np.abs(y[y != 0]))
    assert mags.size <= 1  # one scale
    if mags.size:
        assert mags[0] <= np.abs(x).max()
        assert np.all(np.sign(y[y != 0]) == np.sign(x[y != 0]))
    if x.size and clip is None:  # the largest entry is always sent
        assert np.abs(y).max() == np.abs(x).max()


@settings(max_examples=40, deadline=None)
@given(wild_arrays, st.sampled_from(["qsgd", "terngrad"]), st.sampled_from([1, 4, 300]))
def test_extreme_magnitudes_stay_finite(x: np.ndarray, codec: str, levels: int) -> None:
    opts = {"levels": levels} if codec == "qsgd" else {"clip": 2.0}
    _round_trip(x, codec, **opts)


# ---------------------------------------------------------------------------- plans


@pytest.mark.parametrize("plan", ["qsgd", "ef:qsgd", "terngrad", "ef:terngrad"])
def test_in_plans_and_error_feedback(plan: str) -> None:
    opts = {"levels": 4} if "qsgd" in plan else {}
    enc = fedpress.UpdateEncoder(plan=plan, **opts)
    dec = fedpress.UpdateDecoder()
    prev = np.zeros((60, 50), np.float32)
    for _ in range(3):
        g = RNG.standard_normal((60, 50)).astype(np.float32)
        b = RNG.standard_normal(10).astype(np.float32)
        out = dec.decode(enc.encode({"fc.weight": g, "fc.bias": b}))
        assert np.array_equal(out["fc.bias"], b)  # small tensors go lossless
        sent = out["fc.weight"]
        assert sent.shape == g.shape and sent.dtype == g.dtype
        if plan.startswith("ef:"):
            res = enc.store.get("default", "fc.weight")["residual"]
            assert np.array_equal(res, (g + prev) - sent)
            prev = res
    blob = fedpress.encode_update({"w": RNG.standard_normal(5000)}, plan=plan, **opts)
    info = fedpress.inspect(blob)["tensors"][0]
    assert info["codec"] == plan.split(":")[0] and info["coding"] == "rans"
    if plan.startswith("ef:"):
        assert info["config"]["inner"]["id"] == plan[3:]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("codec,opts,match", [
    ("qsgd", {"levels": 0}, "levels"), ("qsgd", {"levels": -3}, "levels"),
    ("qsgd", {"levels": 2.5}, "levels"), ("qsgd", {"levels": True}, "levels"),
    ("qsgd", {"levels": 2**30}, "levels"), ("qsgd", {"levels": "16"}, "levels"),
    ("qsgd", {"bucket": -1}, "bucket"), ("qsgd", {"bucket": 1.5}, "bucket"),
    ("qsgd", {"seed": -1}, "seed"), ("qsgd", {"seed": "x"}, "seed"),
    ("qsgd", {"ratio": 0.1}, "unknown options"),
    ("terngrad", {"clip": 0}, "clip"), ("terngrad", {"clip": -1.0}, "clip"),
    ("terngrad", {"clip": np.nan}, "clip"), ("terngrad", {"clip": np.inf}, "clip"),
    ("terngrad", {"clip": True}, "clip"), ("terngrad", {"clip": "2"}, "clip"),
    ("terngrad", {"clip": 10**400}, "clip"), ("terngrad", {"seed": 2**63}, "seed"),
    ("terngrad", {"levels": 4}, "unknown options"),
])
def test_bad_options_are_config_errors(codec: str, opts: dict, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        fedpress.get_codec(codec, **opts)
    with pytest.raises(fedpress.ConfigError, match=match):
        fedpress.compress(np.ones(4), codec=codec, **opts)


def test_non_finite_and_integer_tensors_are_refused() -> None:
    for codec in ("qsgd", "terngrad"):
        with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
            fedpress.compress(np.array([1.0, np.inf]), codec=codec)
        with pytest.raises(fedpress.ConfigError, match="lossless"):
            fedpress.compress(np.arange(10), codec=codec)


def _fuzz_inputs() -> list[tuple[str, dict, np.ndarray]]:
    x = RNG.standard_normal(3000).astype(np.float32)
    small = RNG.standard_normal(200).astype(np.float64)
    return [("qsgd", {"levels": 2}, x), ("qsgd", {"levels": 2}, small),
            ("qsgd", {"levels": 64, "bucket": 100}, x), ("qsgd", {"levels": 1}, small),
            ("terngrad", {}, x), ("terngrad", {}, small[:9]),
            ("terngrad", {}, np.zeros(50, np.float32))]


@pytest.mark.parametrize("codec,opts,x", _fuzz_inputs())
def test_truncated_and_mutated_frames_are_format_errors(codec: str, opts: dict,
                                                        x: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    blob = fedpress.compress(x, codec=codec, **opts)
    for cut in range(0, len(blob), max(1, len(blob) // 60)):
        with pytest.raises(fedpress.FormatError):
            fedpress.decompress(blob[:cut])
    for _ in range(150):
        bad = bytearray(blob)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] ^= int(rng.integers(1, 256))
        if bytes(bad) == blob:  # two edits that cancel out
            continue
        with pytest.raises(fedpress.FormatError):
            fedpress.decompress(bytes(bad))


@pytest.mark.parametrize("codec,opts,x", _fuzz_inputs())
def test_crafted_payloads_are_format_errors_or_well_formed(codec: str, opts: dict,
                                                           x: np.ndarray) -> None:
    """Payloads mutated behind a valid checksum: FormatError or an array of the declared
    shape and dtype, never another exception."""
    rng = np.random.default_rng(4)
    c = fedpress.get_codec(codec, **opts)
    payload = c.encode(x)
    spec = TensorSpec.of(x)
    errors = 0
    for i in range(400):
        bad = bytearray(payload)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(len(bad)))] = int(rng.integers(0, 256))
        if i % 3 == 0:
            bad = bad[: int(rng.integers(0, len(bad) + 1))]
        try:
            out = c.decode(bytes(bad), spec)
        except fedpress.FormatError:
            errors += 1
            continue
        assert out.shape == x.shape and out.dtype == x.dtype
    assert errors > 0
    # the same through a whole frame with its checksum recomputed
    frame = fedpress.compress(x, codec=codec, **opts)
    body = bytearray(frame[:-4])
    body[-1] ^= 0x5A
    crafted = bytes(body) + zlib.crc32(bytes(body)).to_bytes(4, "little")
    try:
        out = fedpress.decompress(crafted)
    except fedpress.FormatError:
        return
    assert out.shape == x.shape and out.dtype == x.dtype


def test_decoders_check_what_they_read() -> None:
    spec = TensorSpec((8,), np.dtype(np.float64))
    q = fedpress.get_codec("qsgd", levels=3)
    t = fedpress.get_codec("terngrad")

    def qsgd_payload(coding: int, width: int, norm: float, body: bytes) -> bytes:
        w = Writer()
        w.u8(coding)
        w.u8(width)
        w.raw(np.array([norm], "<f8" if width == 8 else "<f4").tobytes())
        return w.getvalue() + body

    def rans_body(v: list[int]) -> bytes:
        w = Writer()
        rans.encode(np.array(v, np.int64), w)
        return w.getvalue()

    def elias_body(v: list[int], s: int = 3) -> bytes:
        w = Writer()
        quant.write_elias(w, np.array(v, np.int64), s)
        return w.getvalue()

    ok = [0, 1, -3, 0, 0, 2, 0, 0]
    assert np.allclose(q.decode(qsgd_payload(quant.RANS, 8, 3.0, rans_body(ok)), spec), ok)
    assert np.allclose(q.decode(qsgd_payload(quant.ELIAS, 8, 3.0, elias_body(ok)), spec), ok)
    for bad, why in [
        (qsgd_payload(7, 8, 3.0, rans_body(ok)), "unknown coding"),
        (qsgd_payload(quant.RANS, 5, 3.0, rans_body(ok)), "norm width"),
        (qsgd_payload(quant.RANS, 8, -3.0, rans_body(ok)), "norm"),
        (qsgd_payload(quant.RANS, 8, np.nan, rans_body(ok)), "norm"),
        (qsgd_payload(quant.RANS, 8, np.inf, rans_body(ok)), "norm"),
        (qsgd_payload(quant.RANS, 8, 3.0, rans_body([0, 4, 0, 0, 0, 0, 0, 0])), "exceeds 3"),
        (qsgd_payload(quant.ELIAS, 8, 3.0, elias_body([0, 4, 0, 0, 0, 0, 0, 0], 4)), "exceeds"),
        (qsgd_payload(quant.RANS, 8, 0.0, rans_body(ok)), "norm 0"),
        (qsgd_payload(quant.RANS, 8, 3.0, rans_body(ok[:5])), "rans"),  # 5 levels for 8
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\x09\x00"), "exceeds the limit"),  # k=9 > n
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\x08\x00"), "cannot fit"),  # 8 gaps in 0 bytes
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\x01\x01\x00"), "ends early"),  # 8 zero bits
        # one level at 0 (gap code 1), sign padding bit set, level 1
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\x01\x01\x80\x01\x80"), "padding"),
        # gaps 5 and 5: a level at position 9 of 8
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\x02\x02\x29\x40\x00\xc0"), "beyond"),
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\x01\x01\x12\x00\x80"), "exceeds 8"),  # gap 9
        (qsgd_payload(quant.ELIAS, 8, 3.0, b"\xff\xff\xff\xff\x0f\x00"), "exceeds"),  # huge k
    ]:
        with pytest.raises(fedpress.FormatError, match=why):
            q.decode(bad, spec)

    def tern_payload(coding: int, scale: float, body: bytes) -> bytes:
        return bytes([coding]) + np.array([scale], "<f8").tobytes() + body

    assert np.array_equal(t.decode(tern_payload(quant.PACK2, 2.0, bytes([0x64, 0x00])), spec),
                          [2, -2, 2, 0, 0, 0, 0, 0])
    for bad, why in [
        (tern_payload(5, 2.0, b""), "unknown coding"),
        (tern_payload(quant.PACK2, -2.0, b"\x00\x00"), "scale"),
        (tern_payload(quant.PACK2, np.inf, b"\x00\x00"), "scale"),
        (tern_payload(quant.PACK2, 0.0, b"\x00\x00"), "does not match"),
        (tern_payload(quant.ZERO, 1.0, b""), "does not match"),
        (tern_payload(quant.PACK2, 2.0, b"\xc0\x00"), "invalid 2-bit"),
        (tern_payload(quant.PACK2, 2.0, b"\x00"), "truncated"),
        (tern_payload(quant.PACK2, 2.0, b"\x00\x00\x00"), "trailing"),
        (tern_payload(quant.RANS, 2.0, rans_body([0, 1, 2, 0, 0, 0, 0, 0])), "not in"),
        (tern_payload(quant.ZERO, 0.0, b"\x00"), "trailing"),
    ]:
        with pytest.raises(fedpress.FormatError, match=why):
            t.decode(bad, spec)
    with pytest.raises(fedpress.FormatError, match="padding"):
        t.decode(tern_payload(quant.PACK2, 2.0, b"\x00\x01"), TensorSpec((7,), spec.dtype))
