"""stc (Sparse Ternary Compression): ternary values, exact k, built-in error
accumulation, Golomb-sized payloads, sender-only state, robust decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Reader, Writer
from fedpress.abc import TensorSpec
from fedpress.dtypes import BFLOAT16
from fedpress.grad.indices import RICE, gaps_of, write_indices
from fedpress.grad.stc import golomb_bits_per_position, golomb_parameter
from fedpress.stages import golomb
from fedpress.state import TensorState

from .common import check_edited_update_frame


def _stc(ratio: float = 0.01) -> fedpress.Codec:
    return fedpress.get_codec("stc", ratio=ratio)


def _round(c: fedpress.Codec, x: np.ndarray, st_: TensorState) -> tuple[np.ndarray, np.ndarray]:
    """(the decoded tensor, a = x + previous residual as the codec computes it)."""
    a = x + (st_["residual"] if "residual" in st_ else np.zeros_like(x))
    y = c.decode(c.encode(x, st_), TensorSpec.of(x))
    st_.round += 1
    return y, a


def _check_invariant(sent: np.ndarray, residual: np.ndarray, a: np.ndarray) -> None:
    """``sent + residual == a`` (a = input + previous residual).

    Off the sent positions the residual is ``a`` itself: exact. At a sent position
    the residual is ``fl(a - s)`` with ``s = +-mu``, one rounding of the dtype:
    ``|fl(a - s) - (a - s)| <= (eps / 2) |fl(a - s)|`` (plus half the smallest
    subnormal near zero), so in float64 ``|s + r - a| <= eps * |r| + tiny``, with
    ``eps * 4 * |a|`` more for float64 tensors, whose sum below is rounded too.
    """
    fi = np.finfo(a.dtype)
    s64, r64, a64 = (v.astype(np.float64) for v in (sent, residual, a))
    off = sent == 0
    assert np.array_equal(residual[off], a[off])
    tol = float(fi.eps) * np.abs(r64) + float(fi.smallest_subnormal)
    if a.dtype == np.float64:
        tol = tol + 4 * float(fi.eps) * np.abs(a64)
    assert np.all(np.abs(s64 + r64 - a64) <= tol)


def test_ternary_values_exact_k_and_top_positions(rng: np.random.Generator) -> None:
    c = _stc(0.01)
    x = rng.standard_normal((100, 200)).astype(np.float32)
    st_ = TensorState()
    y, a = _round(c, x, st_)
    k = math.ceil(0.01 * x.size)
    nz = y != 0
    assert nz.sum() == k
    mu = np.float32(np.abs(a[nz].astype(np.float64)).mean())
    assert set(np.unique(y).tolist()) == {-float(mu), 0.0, float(mu)}
    assert np.array_equal(np.sign(y[nz]), np.sign(a[nz]))
    assert np.abs(a[nz]).min() >= np.abs(a[~nz]).max()  # the k largest magnitudes
    for _ in range(4):  # later rounds too
        y, a = _round(c, rng.standard_normal((100, 200)).astype(np.float32), st_)
        vals = np.unique(y)
        assert vals.size == 3 and vals[1] == 0 and vals[0] == -vals[2]
        assert np.count_nonzero(y) == k


def test_error_feedback_invariant_over_rounds(rng: np.random.Generator) -> None:
    c = _stc(0.05)
    st_ = TensorState()
    total_sent = np.zeros(1000)
    total_in = np.zeros(1000)
    for _ in range(30):
        x = rng.standard_normal(1000).astype(np.float32)
        y, a = _round(c, x, st_)
        _check_invariant(y, st_["residual"], a)
        total_sent += y
        total_in += x
    # mass is conserved over the rounds (each round's rounding is tiny)
    assert np.allclose(total_sent + st_["residual"], total_in, atol=1e-4)


finite32 = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False)


@given(st.sampled_from([np.float32, np.float64]),
       hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=25),
       st.floats(1e-3, 1.0), st.integers(0, 2**32 - 1), st.data())
def test_invariant_property(dtype: type, shape: tuple[int, ...], ratio: float, seed: int,
                            data: st.DataObject) -> None:
    c = _stc(ratio)
    st_ = TensorState()
    rng = np.random.default_rng(seed)
    first = data.draw(hnp.arrays(dtype, shape, elements=finite32))
    for x in (first, (rng.standard_normal(shape) * 10).astype(dtype), np.zeros(shape, dtype)):
        y, a = _round(c, x, st_)
        assert np.count_nonzero(y) <= math.ceil(ratio * x.size)
        assert np.unique(np.abs(y[y != 0])).size <= 1  # one magnitude
        _check_invariant(y, st_["residual"], a)


def test_round_trip_through_update_codecs_and_decoder_keeps_no_state(
        rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan="stc", ratio=0.02)
    dec = fedpress.UpdateDecoder()
    x = {"conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32),
         "bn.running_mean": rng.standard_normal(16).astype(np.float32),
         "bn.num_batches_tracked": np.array(5, np.int64)}
    for _ in range(3):
        blob = enc.encode(x)
        out = dec.decode(blob)
        assert out["bn.running_mean"].tobytes() == x["bn.running_mean"].tobytes()
        y = out["conv.weight"]
        assert y.shape == (16, 8, 3, 3) and np.count_nonzero(y) == math.ceil(0.02 * 1152)
    info = fedpress.inspect(blob)["tensors"][0]
    assert info["codec"] == "stc" and info["kept"] == 24 and info["mu"] > 0
    assert dec.store.keys() == []
    assert enc.store.get("default", "conv.weight").round == 3
    with pytest.raises(fedpress.ConfigError, match="UpdateEncoder"):
        fedpress.compress(x["conv.weight"], codec="stc", ratio=0.01)


def test_downlink_encoder_keeps_its_own_residual(rng: np.random.Generator) -> None:
    """The server compresses the global update with its own encoder: its residual is
    its own, apart from the clients'."""
    update = {"w": rng.standard_normal(5000).astype(np.float32)}
    server = fedpress.UpdateEncoder(plan="stc", ratio=0.01, peer="server")
    client = fedpress.UpdateEncoder(plan="stc", ratio=0.01)
    first = server.encode(update)
    assert server.encode(update) != first  # round 2 adds round 1's residual
    assert client.encode(update) == first  # a different store: starts from zero
    assert server.store.keys() == [("server", "w")]
    assert not np.array_equal(server.store.get("server", "w")["residual"],
                              client.store.get("default", "w")["residual"])


@pytest.mark.parametrize("dtype", [np.float64, np.float16, BFLOAT16])
def test_other_float_dtypes(dtype: np.dtype, rng: np.random.Generator) -> None:
    c = _stc(0.1)
    x = rng.standard_normal(300).astype(dtype)
    st_ = TensorState()
    for _ in range(3):
        y, _a = _round(c, x, st_)
        assert y.dtype == np.dtype(dtype) and np.count_nonzero(y.astype(np.float64)) == 30
        assert np.unique(np.abs(y.astype(np.float64))).size == 2
        assert st_["residual"].dtype == np.dtype(dtype)


def test_empty_and_scalar_tensors() -> None:
    c = _stc(0.5)
    for x in (np.zeros(0, np.float32), np.zeros((0, 4), np.float64), np.asarray(np.float32(-2))):
        st_ = TensorState()
        payload = c.encode(x, st_)
        y = c.decode(payload, TensorSpec.of(x))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert st_["residual"].shape == x.shape
        assert np.array_equal(y, x)
    zero = np.zeros(50, np.float32)  # all zero: mu = 0, the zeros are "sent"
    y = c.decode(c.encode(zero, TensorState()), TensorSpec.of(zero))
    assert not y.any() and not np.signbit(y).any()


def test_payload_size_is_golomb_positions_plus_sign_bits(rng: np.random.Generator) -> None:
    n = 1_000_000
    x = rng.standard_normal(n).astype(np.float32)
    for ratio in (0.01, 0.001):
        k = math.ceil(ratio * n)
        payload = _stc(ratio).encode(x, TensorState())
        assert len(payload) < k * (math.log2(n / k) + 3) / 8 + 32
        # the paper's Golomb estimate plus one sign bit, within a few bytes
        ideal = k * (golomb_bits_per_position(ratio) + 1) / 8
        assert abs(len(payload) - ideal) < 0.01 * ideal + 16


@pytest.mark.parametrize("p,b_star", [(0.001, 9), (0.005, 7), (0.01, 6), (0.05, 4), (0.1, 3)])
def test_rice_parameter_matches_the_papers_golomb_parameter(p: float, b_star: int) -> None:
    assert golomb_parameter(p) == b_star
    n = 400_000
    x = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    payload = _stc(p).encode(x, TensorState())
    rd = Reader(payload)
    rd.take(4)  # mu
    k = rd.varint()
    assert k == math.ceil(p * n)
    # the exact-size search of the Rice coder lands on b*
    idx = np.flatnonzero(_stc(p).decode(payload, TensorSpec.of(x)))
    assert golomb.best_rice_parameter(gaps_of(idx)) == b_star
    method = rd.u8()
    if p <= 0.05:  # Rice is what goes on the wire (denser, rANS of the gaps can win)
        assert method == RICE
        assert rd.blob()[0] == b_star


def test_golomb_parameter_edges() -> None:
    assert golomb_parameter(0.7) == 0  # never negative
    assert golomb_parameter(1e-6) == 19
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            golomb_parameter(bad)


def test_shape_change_non_finite_and_overflow_are_config_errors(
        rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan="stc", threshold=0)
    enc.encode({"w": rng.standard_normal(100).astype(np.float32)})
    with pytest.raises(fedpress.ConfigError, match="changed"):
        enc.encode({"w": rng.standard_normal((10, 11)).astype(np.float32)})
    x = rng.standard_normal(100).astype(np.float32)
    x[7] = np.inf
    with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
        enc.encode({"w": x})
    with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
        _stc().encode(np.array([np.nan, 1.0]))
    c = _stc(0.25)
    st_ = TensorState()
    big = np.array([60000, 50000, 50000, 50000], np.float16)
    c.encode(big, st_)
    before = st_["residual"].copy()
    with pytest.raises(fedpress.ConfigError, match="overflowed"):
        c.encode(big, st_)
    assert np.array_equal(st_["residual"], before)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.01, True, "0.01", None])
def test_bad_options(ratio: object) -> None:
    with pytest.raises(fedpress.ConfigError, match="ratio"):
        fedpress.get_codec("stc", ratio=ratio)
    with pytest.raises(fedpress.ConfigError, match="unknown"):
        fedpress.get_codec("stc", seed=1)


# -- robustness -----------------------------------------------------------------------------

N = 300
SPEC = TensorSpec((N,), np.dtype(np.float32))


def _payload(seed: int, ratio: float = 0.05) -> bytes:
    x = np.random.default_rng(seed).standard_normal(N).astype(np.float32)
    return _stc(ratio).encode(x, TensorState())


def _craft(mu: float, k: int, idx: np.ndarray, signs: bytes, method: int | None = None) -> bytes:
    w = Writer()
    w.raw(np.array([mu], "<f4").tobytes())
    w.varint(k)
    if method is None:
        write_indices(w, idx, N)
    else:
        w.u8(method)
        w.blob(b"\x00")
    w.raw(signs)
    return w.getvalue()


def test_crafted_payloads_are_format_errors() -> None:
    c = _stc(0.05)  # k = 15 of 300
    good = _payload(0)
    assert np.count_nonzero(c.decode(good, SPEC)) == 15
    idx = np.arange(0, 300, 20)  # 15 positions
    assert np.count_nonzero(c.decode(_craft(1.5, 15, idx, b"\xff\xfe"), SPEC)) == 15
    bad = [
        good[:-1], good + b"\x00", b"", good[:4],
        _craft(1.5, 15, idx, b"\xff\xff"),  # padding bit set
        _craft(1.5, 15, idx, b"\xff"),  # one sign byte short
        _craft(1.5, 15, idx, b"\xff\xfe\x00"),  # one too many
        _craft(-1.5, 15, idx, b"\xff\xfe"),  # negative magnitude
        _craft(-0.0, 15, idx, b"\xff\xfe"),
        _craft(float("nan"), 15, idx, b"\xff\xfe"),
        _craft(float("inf"), 15, idx, b"\xff\xfe"),
        _craft(1.5, 14, idx[:14], b"\xff\xfc"),  # not ceil(0.05 * 300)
        _craft(1.5, 16, np.arange(16), b"\xff\xff"),
        _craft(1.5, 301, idx, b""),  # more than n
        _craft(1.5, 15, idx, b"\xff\xfe", method=7),  # unknown index coding
    ]
    for blob in bad:
        with pytest.raises(fedpress.FormatError):
            c.decode(blob, SPEC)


@settings(max_examples=200)
@given(st.integers(0, 2**32 - 1), st.data())
def test_mutated_payloads_decode_or_raise_format_error(seed: int, data: st.DataObject) -> None:
    blob = bytearray(_payload(seed))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        out = _stc(0.05).decode(bytes(blob), SPEC)
    except fedpress.FormatError:
        return
    assert out.shape == SPEC.shape and out.dtype == SPEC.dtype
    assert np.isfinite(out).all() and np.count_nonzero(out) <= 15
    assert np.unique(np.abs(out[out != 0])).size <= 1


@settings(max_examples=150)
@given(st.integers(0, 2**32 - 1), st.data())
def test_fuzzed_frames_are_format_errors(seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    frame = fedpress.UpdateEncoder(plan="stc", ratio=0.05, threshold=0).encode(
        {"w": rng.standard_normal(N).astype(np.float32)})
    check_edited_update_frame(frame, data.draw(st.integers(0, len(frame) - 1)),
                              data.draw(st.integers(1, 255)))


def test_ternary_is_stc_without_the_residual() -> None:
    x = np.random.default_rng(5).standard_normal((40, 50)).astype(np.float32)
    blob = fedpress.compress(x, codec="ternary", ratio=0.05)
    y = fedpress.decompress(blob)
    stc_first = fedpress.decode_update(
        fedpress.encode_update({"w.weight": x}, plan="stc", ratio=0.05))["w.weight"]
    assert np.array_equal(y, stc_first)  # round 1 of stc: no residual yet
    assert len(np.unique(np.abs(y[y != 0]))) == 1 and np.count_nonzero(y) == 100
    assert not fedpress.Plan.build("ternary").stateful and fedpress.Plan.build("stc").stateful
