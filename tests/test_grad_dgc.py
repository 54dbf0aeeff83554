"""dgc (Deep Gradient Compression): momentum correction, accumulation, momentum factor
masking, sparsity warm-up, clipping; sender-only state; robust decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedpress
from fedpress._bytes import Writer
from fedpress.abc import TensorSpec
from fedpress.dtypes import BFLOAT16
from fedpress.grad.dgc import l2_norm
from fedpress.grad.indices import write_indices
from fedpress.state import TensorState

from .common import check_edited_update_frame


def _dgc(**options: object) -> fedpress.Codec:
    return fedpress.get_codec("dgc", **options)


def _zeros_like_state(st: TensorState, key: str, x: np.ndarray) -> np.ndarray:
    return st[key] if key in st else np.zeros_like(x)


def test_round_trip_through_update_codecs(rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan="dgc", ratio=0.01, warmup=0)
    dec = fedpress.UpdateDecoder()
    x = {"fc.weight": rng.standard_normal((100, 50)).astype(np.float32),
         "fc.bias": rng.standard_normal(50).astype(np.float32),  # under threshold: lossless
         "steps": np.arange(3, dtype=np.int64)}
    for _ in range(3):
        v_prev = enc.store.get("default", "fc.weight")
        blob = enc.encode(x)
        out = dec.decode(blob)
        assert out["fc.bias"].tobytes() == x["fc.bias"].tobytes()
        assert np.array_equal(out["steps"], x["steps"])
        y = out["fc.weight"]
        assert y.shape == (100, 50) and y.dtype == np.float32
        sent = y != 0
        assert 0 < sent.sum() <= 50  # approx=True: at most k = ceil(0.01 * 5000)
        st = enc.store.get("default", "fc.weight")
        assert st.round == v_prev.round + 1
        # what came through is exactly the accumulated v at the sent positions
        g = x["fc.weight"]
        u_prev = _zeros_like_state(v_prev, "u", g)
        v_before = _zeros_like_state(v_prev, "v", g) + (u_prev * np.float32(0.9) + g)
        assert np.array_equal(y[sent], v_before[sent])
        info = fedpress.inspect(blob)["tensors"][0]
        assert info["codec"] == "dgc" and info["kept"] == int(sent.sum())
        assert info["index_coding"] in ("rice", "gamma", "rans", "bitmap")
    assert dec.store.keys() == []  # sender scope: the decoder keeps nothing
    # a dgc frame decodes without any state (a fresh decoder, or decode_update)
    assert np.array_equal(fedpress.decode_update(blob)["fc.weight"], y)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, BFLOAT16])
def test_other_float_dtypes(dtype: np.dtype, rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan="dgc", ratio=0.05, threshold=0)
    dec = fedpress.UpdateDecoder()
    x = {"w": rng.standard_normal(400).astype(dtype)}
    for _ in range(3):
        y = dec.decode(enc.encode(x))["w"]
        assert y.dtype == np.dtype(dtype) and y.shape == (400,)
        assert np.count_nonzero(y.astype(np.float64)) > 0


def test_empty_and_scalar_tensors() -> None:
    c = _dgc(ratio=0.5)
    for x in (np.zeros(0, np.float32), np.zeros((3, 0), np.float32), np.float32(2.5)[()]):
        x = np.asarray(x)
        st = TensorState()
        y = c.decode(c.encode(x, st), TensorSpec.of(x))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert np.array_equal(y, x)  # density 0.25 keeps at least one entry: all of these
        assert st["u"].shape == st["v"].shape == x.shape


def test_density_schedule_formula() -> None:
    c = _dgc(ratio=0.001)  # warmup 4: 0.25, 0.0625, 0.015625, 0.00390625, then ratio
    assert [c.density(t) for t in range(7)] == [0.25, 0.0625, 0.015625, 0.00390625,
                                                0.001, 0.001, 0.001]
    # never below ratio; ratio above the start keeps ratio; warmup=0 is off
    assert [_dgc(ratio=0.01).density(t) for t in range(5)] == [0.25, 0.0625, 0.015625,
                                                               0.01, 0.01]
    assert [_dgc(ratio=0.5).density(t) for t in range(5)] == [0.5] * 5
    assert [_dgc(ratio=0.001, warmup=0).density(t) for t in range(3)] == [0.001] * 3
    assert [_dgc(ratio=0.001, warmup=2).density(t) for t in range(3)] == [0.25, 0.015625,
                                                                          0.001]
    # longer warm-ups hold each stage for warmup / 4 rounds
    assert [_dgc(ratio=0.001, warmup=8).density(t) for t in range(9)] == [
        0.25, 0.25, 0.0625, 0.0625, 0.015625, 0.015625, 0.00390625, 0.00390625, 0.001]


def test_warmup_counts_at_each_boundary_round(rng: np.random.Generator) -> None:
    n = 10_000
    enc = fedpress.UpdateEncoder(plan="dgc", ratio=0.001, warmup=4, approx=False)
    dec = fedpress.UpdateDecoder()
    counts = []
    for _ in range(7):
        g = {"w": rng.standard_normal(n).astype(np.float32)}
        counts.append(int(np.count_nonzero(dec.decode(enc.encode(g))["w"])))
    # ceil(d * n): 2500, 625, ceil(156.25), ceil(39.0625), then ceil(10) from round 4 on
    assert counts == [2500, 625, 157, 40, 10, 10, 10]


def test_approx_sends_at_most_k_and_close_to_it(rng: np.random.Generator) -> None:
    n = 200_000
    c = _dgc(ratio=0.01, warmup=0, sample=0.05, seed=3)
    g = rng.standard_normal(n).astype(np.float32)
    st = TensorState()
    y = c.decode(c.encode(g, st), TensorSpec.of(g))
    kept = np.count_nonzero(y)
    assert 0.7 * 2000 <= kept <= 2000
    # the smallest sent magnitude beats (nearly) everything left behind
    assert np.abs(y[y != 0]).min() >= np.quantile(np.abs(g), 0.985)


def test_accumulation_invariant_and_masking(rng: np.random.Generator) -> None:
    """sent + v_t == v_{t-1} + (m * u_{t-1} + g_t) bit for bit (the supports of the sent
    values and of the new v are disjoint, and the codec does the same float32
    operations in the same order); u and v are zero where something was sent and
    u keeps the corrected momentum elsewhere."""
    m = 0.8
    c = _dgc(ratio=0.05, momentum=m, warmup=2, approx=False)
    m32 = np.float32(m)
    st = TensorState()
    for t in range(8):
        g = rng.standard_normal((20, 30)).astype(np.float32)
        u_prev = _zeros_like_state(st, "u", g).copy()
        v_prev = _zeros_like_state(st, "v", g).copy()
        sent = c.decode(c.encode(g, st), TensorSpec.of(g))
        u_pre = u_prev * m32 + g
        assert np.array_equal(sent + st["v"], v_prev + u_pre)
        mask = sent != 0
        assert mask.sum() == math.ceil(c.density(t) * g.size)
        assert not st["u"][mask].any() and not st["v"][mask].any()  # factor masking
        assert np.array_equal(st["u"][~mask], u_pre[~mask])
        assert np.array_equal(st["v"][~mask], (v_prev + u_pre)[~mask])
        # the sent entries are the largest of |v_{t-1} + u_t|
        assert np.abs(sent[mask]).min() >= np.abs(st["v"]).max()
        st.round += 1


def test_clipping_caps_the_norm(rng: np.random.Generator) -> None:
    g = (100 * rng.standard_normal(5000)).astype(np.float32)
    c = _dgc(ratio=0.01, momentum=0.0, clip=2.0, warmup=0, approx=False)
    st = TensorState()
    sent = c.decode(c.encode(g, st), TensorSpec.of(g))
    clipped = sent + st["v"]  # with momentum 0, round 0: exactly the clipped gradient
    norm = float(np.linalg.norm(clipped.astype(np.float64)))
    assert norm <= 2.0 * (1 + 4 * np.finfo(np.float32).eps)
    assert norm >= 2.0 * (1 - 4 * np.finfo(np.float32).eps)
    assert np.allclose(clipped, g * (2.0 / np.linalg.norm(g.astype(np.float64))), rtol=1e-6)
    # a gradient within the cap goes through untouched
    small = (g / np.float32(10_000)).astype(np.float32)
    assert l2_norm(small) < 2.0
    st = TensorState()
    sent = c.decode(c.encode(small, st), TensorSpec.of(small))
    assert np.array_equal(sent + st["v"], small)
    # the norm does not overflow for huge float64 values
    assert l2_norm(np.full(4, 1e200)) == pytest.approx(2e200)


def test_constant_gradient_is_eventually_all_sent(rng: np.random.Generator) -> None:
    n, rounds = 500, 300  # 10 a round: each coordinate has its turn every ~40-80 rounds
    g = (rng.uniform(0.5, 1.0, n) * rng.choice([-1.0, 1.0], n)).astype(np.float32)
    for m in (0.0, 0.9):
        enc = fedpress.UpdateEncoder(plan="dgc", ratio=0.02, momentum=m, warmup=0,
                                     approx=False, threshold=0)
        dec = fedpress.UpdateDecoder()
        total = np.zeros(n)
        ever = np.zeros(n, bool)
        for _ in range(rounds):
            y = dec.decode(enc.encode({"g": g}))["g"]
            total += y
            ever |= y != 0
        assert ever.all()  # every coordinate got through, the small ones too
        assert np.all(np.sign(total) == np.sign(g))
        if m == 0.0:  # plain accumulation conserves mass: sent + v == rounds * g
            v = enc.store.get("default", "g")["v"]
            assert np.allclose(total + v, rounds * g.astype(np.float64), rtol=1e-5, atol=1e-4)


def test_shape_or_dtype_change_is_a_config_error(rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan="dgc", threshold=0)
    enc.encode({"w": rng.standard_normal(100).astype(np.float32)})
    with pytest.raises(fedpress.ConfigError, match="changed"):
        enc.encode({"w": rng.standard_normal(101).astype(np.float32)})
    with pytest.raises(fedpress.ConfigError, match="changed"):
        enc.encode({"w": rng.standard_normal(100).astype(np.float64)})
    enc.encode({"w": rng.standard_normal(100).astype(np.float32)})  # state is intact


def test_non_finite_input_and_overflow_are_config_errors() -> None:
    enc = fedpress.UpdateEncoder(plan="dgc", threshold=0)
    for bad in (np.nan, np.inf):
        x = np.ones(50, np.float32)
        x[3] = bad
        with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
            enc.encode({"w": x})
    with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
        _dgc().encode(np.array([1.0, np.nan]), TensorState())
    c = _dgc(ratio=0.25, warmup=0, approx=False)
    st = TensorState()
    big = np.full(4, 60000, np.float16)
    c.encode(big, st)
    before = {k: v.copy() for k, v in st.items()}
    with pytest.raises(fedpress.ConfigError, match="overflowed"):
        c.encode(big, st)
    assert all(np.array_equal(st[k], before[k]) for k in before)  # state untouched
    with pytest.raises(fedpress.ConfigError, match="int64"):
        _dgc().check_input(np.arange(5, dtype=np.int64))


@pytest.mark.parametrize("options,match", [
    ({"ratio": 0}, "ratio"), ({"ratio": 1.5}, "ratio"), ({"ratio": True}, "ratio"),
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"),
    ({"momentum": "0.9"}, "momentum"), ({"clip": 0}, "clip"), ({"clip": -1.0}, "clip"),
    ({"clip": float("inf")}, "clip"), ({"clip": True}, "clip"), ({"warmup": -1}, "warmup"),
    ({"warmup": 2.0}, "warmup"), ({"warmup": True}, "warmup"), ({"approx": 1}, "approx"),
    ({"sample": 0}, "ratio"), ({"seed": -1}, "seed"), ({"bogus": 1}, "unknown"),
])
def test_bad_options(options: dict, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        fedpress.get_codec("dgc", **options)


def test_config_round_trip_and_compress_refuses(rng: np.random.Generator) -> None:
    from fedpress.registry import codec_from_config

    c = _dgc(ratio=0.002, momentum=0.5, clip=3.0, warmup=1, approx=False, sample=0.1, seed=9)
    cfg = c.get_config()
    assert cfg == {"id": "dgc", "ratio": 0.002, "momentum": 0.5, "clip": 3.0, "warmup": 1,
                   "approx": False, "sample": 0.1, "seed": 9}
    assert codec_from_config(cfg) == c
    with pytest.raises(fedpress.ConfigError, match="UpdateEncoder"):
        fedpress.compress(rng.standard_normal(10), codec="dgc")


# -- robustness -----------------------------------------------------------------------------

def _payload(rng: np.random.Generator) -> tuple[fedpress.Codec, bytes, TensorSpec]:
    c = _dgc(ratio=0.05, warmup=0, approx=False)
    x = rng.standard_normal(300).astype(np.float32)
    return c, c.encode(x, TensorState()), TensorSpec.of(x)


def test_crafted_payloads_are_format_errors(rng: np.random.Generator) -> None:
    c, payload, spec = _payload(rng)
    assert np.count_nonzero(c.decode(payload, spec)) == 15
    bad = [payload[:-1], payload + b"\x00", b"", payload[:1]]

    def sparse(k: int, idx: np.ndarray, values: np.ndarray, method: int | None = None) -> bytes:
        w = Writer()
        w.varint(k)
        if method is None:
            write_indices(w, idx, spec.size)
        else:
            w.u8(method)
            w.blob(b"\x00")
        w.raw(values.astype("<f4").tobytes())
        return w.getvalue()

    idx = np.arange(16)
    bad.append(sparse(16, idx, np.ones(16)))  # more than ceil(0.05 * 300) = 15 at ratio 0.05
    bad.append(sparse(301, idx, np.ones(16)))
    bad.append(sparse(3, np.arange(3), np.array([1.0, np.nan, 2.0])))  # never encoded
    bad.append(sparse(3, np.arange(3), np.array([1.0, np.inf, 2.0])))
    bad.append(sparse(2, np.arange(2), np.ones(2), method=9))  # unknown index coding
    for blob in bad:
        with pytest.raises(fedpress.FormatError):
            c.decode(blob, spec)


@settings(max_examples=200)
@given(st.data())
def test_mutated_payloads_decode_or_raise_format_error(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    c, payload, spec = _payload(rng)
    blob = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        out = c.decode(bytes(blob), spec)
    except fedpress.FormatError:
        return
    assert out.shape == spec.shape and out.dtype == spec.dtype
    assert np.isfinite(out).all() and np.count_nonzero(out) <= 15


@settings(max_examples=150)
@given(st.data())
def test_fuzzed_frames_are_format_errors(data: st.DataObject) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    frame = fedpress.UpdateEncoder(plan="dgc", ratio=0.05, threshold=0).encode(
        {"w": rng.standard_normal(300).astype(np.float32)})
    check_edited_update_frame(frame, data.draw(st.integers(0, len(frame) - 1)),
                              data.draw(st.integers(1, 255)))
