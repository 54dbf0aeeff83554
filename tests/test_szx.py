"""Tests of the SZx codec (``fedpress.eblc.szx``)."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress import ConfigError, FormatError, TensorSpec
from fedpress.eblc import szx
from fedpress.eblc.szx import FORMAT_VERSION, SZxCodec, _pack_small, _unpack_small

RNG_SEED = 20220627


def _eb_abs(x: np.ndarray, mode: str, eb: float) -> float:
    """The absolute bound, computed independently of the codec (float64, finite values)."""
    if mode == "abs":
        return eb
    fin = np.asarray(x, dtype=np.float64)[np.isfinite(np.asarray(x, dtype=np.float64))]
    return eb * (float(fin.max()) - float(fin.min())) if fin.size else 0.0


def _max_err(x: np.ndarray, y: np.ndarray) -> float:
    x64 = np.asarray(x, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    fin = np.isfinite(x64)
    return float(np.max(np.abs(x64[fin] - y64[fin]))) if fin.any() else 0.0


def _roundtrip(x: np.ndarray, **kw: object) -> tuple[np.ndarray, bytes]:
    blob = fedpress.compress(x, codec="szx", **kw)
    y = fedpress.decompress(blob)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    return y, blob


def _patches(blob: bytes) -> int:
    return int(fedpress.inspect(blob)["tensors"][0]["patches"])


def _cr(x: np.ndarray, blob: bytes) -> float:
    return x.nbytes / len(blob)


def _data(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "uniform":
        x = rng.uniform(-3.0, 7.0, n)
    elif kind == "heavy":
        x = rng.standard_cauchy(n)
    elif kind == "offset":  # large offset + tiny noise: bound near float32 ulp
        x = 1.0e4 + 1.0e-3 * rng.standard_normal(n)
    elif kind == "huge":
        x = 1.0e30 * rng.standard_normal(n)
    elif kind == "tiny":
        x = 1.0e-30 * rng.standard_normal(n)
    elif kind == "mixed":  # 1e30 and 1e-30 side by side
        x = np.where(rng.random(n) < 0.5, 1.0e30, 1.0e-30) * rng.standard_normal(n)
    elif kind == "subnormal":
        x = 1.0e-43 * rng.standard_normal(n)
    elif kind == "extreme":
        x = rng.choice([3.4e38, -3.4e38, 1.0, 0.0, -1.0e-38], n)
    elif kind == "smooth":
        t = np.linspace(0.0, 1.0, n)
        x = np.sin(12.0 * np.pi * t) + 0.3 * np.cos(5.0 * np.pi * t**2)
    else:
        raise AssertionError(kind)
    return x.astype(np.float32)


KINDS = ["normal", "uniform", "heavy", "offset", "huge", "tiny", "mixed", "subnormal",
         "extreme", "smooth"]


# -- round trip and the bound --------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(1000,), (7, 13, 5), (3, 1, 64), (2,)])
def test_roundtrip_shape_dtype(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal(shape).astype(dtype)
    y, _ = _roundtrip(x, mode="rel", eb=1e-2)
    assert _max_err(x, y) <= _eb_abs(x, "rel", 1e-2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rel", [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
def test_bound_rel(kind: str, rel: float) -> None:
    rng = np.random.default_rng(RNG_SEED)
    x = _data(kind, 5003, rng)
    for block_size in (8, 37, 128, 1000):
        y, blob = _roundtrip(x, mode="rel", eb=rel, block_size=block_size)
        assert _max_err(x, y) <= _eb_abs(x, "rel", rel)
        # the core honours the bound on its own: float32 input leaves no patches
        assert _patches(blob) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("eb", [1e-40, 1e-6, 2.0**-10, 1e-2, 0.5, 1.0, 1e30])
def test_bound_abs(kind: str, eb: float) -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    x = _data(kind, 2049, rng)
    y, blob = _roundtrip(x, mode="abs", eb=eb, block_size=64)
    assert _max_err(x, y) <= eb
    assert _patches(blob) == 0


@pytest.mark.parametrize("n", [2, 7, 8, 9, 127, 128, 129, 1000, 4099])
@pytest.mark.parametrize("block_size", [8, 16, 128, 65536])
def test_lengths_and_block_sizes(n: int, block_size: int) -> None:
    rng = np.random.default_rng(n * 7 + block_size)
    x = rng.standard_normal(n).astype(np.float32)
    y, blob = _roundtrip(x, mode="rel", eb=1e-3, block_size=block_size)
    assert _max_err(x, y) <= _eb_abs(x, "rel", 1e-3)
    assert _patches(blob) == 0


def test_below_float32_precision_is_exact() -> None:
    """A bound below the values' float32 spacing makes the blocks lossless."""
    rng = np.random.default_rng(RNG_SEED)
    x = (1.0e4 + 1.0e-2 * rng.standard_normal(3000)).astype(np.float32)
    y, blob = _roundtrip(x, mode="abs", eb=1e-6)
    np.testing.assert_array_equal(y, x)
    assert _patches(blob) == 0


@pytest.mark.parametrize("slack", [-1, -2, -3, -8])
def test_safeguard_repairs_too_few_bits(monkeypatch: pytest.MonkeyPatch, slack: int) -> None:
    """Blocks given too few bits are caught, widened or stored losslessly."""
    x = np.random.default_rng(RNG_SEED).standard_normal(20_000).astype(np.float32)
    codec = SZxCodec(eb=1e-3, block_size=128)
    eb_abs = codec.bound_for(x)
    nb = -(-x.size // 128)
    header = 2  # version byte + varint(128)
    paper = np.frombuffer(codec._encode_core(x, eb_abs), np.uint8, nb, header)
    monkeypatch.setattr(szx, "_MANTISSA_SLACK", slack)
    core = codec._encode_core(x, eb_abs)
    y = codec._decode_core(memoryview(core), x.size, np.dtype(np.float32), eb_abs)
    assert np.max(np.abs(y.astype(np.float64) - x)) <= eb_abs
    codes = np.frombuffer(core, np.uint8, nb, header)
    mids = np.frombuffer(core, "<f4", nb, header + nb)
    if slack >= -szx._EXTRA_BITS:
        assert (codes <= paper).all()
        assert (mids != 0).all()
    else:  # beyond the retries: lossless blocks with mid 0
        lossless = codes == 32
        assert lossless.any()
        assert (mids[lossless] == 0).all()
        assert (codes[~lossless] <= paper[~lossless]).all()
    blob = fedpress.compress(x, codec="szx", eb=1e-3)
    assert _patches(blob) == 0
    assert _max_err(x, fedpress.decompress(blob)) <= eb_abs


def test_float64_beyond_float32_range() -> None:
    """float64 values that overflow the float32 core are patched, the rest is coded;
    when the patches would cost more than the raw values the tensor is stored exactly."""
    rng = np.random.default_rng(RNG_SEED)
    x = rng.standard_normal(1000)
    x[[3, 400, 901]] = [1e300, -1e300, 1e300]
    y, blob = _roundtrip(x, mode="abs", eb=1e-3)
    assert _max_err(x, y) <= 1e-3
    assert fedpress.inspect(blob)["tensors"][0]["storage"] == "core"
    assert _patches(blob) == 3
    x[::7] = 1e300
    x[500:700] = 1e300
    y, blob = _roundtrip(x, mode="abs", eb=1e-3)
    assert fedpress.inspect(blob)["tensors"][0]["storage"] == "lossless"
    assert y.tobytes() == x.tobytes()


float32_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=40),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    x=float32_arrays,
    mode_eb=st.sampled_from([("rel", 1e-1), ("rel", 1e-3), ("rel", 1e-6), ("abs", 1e-3),
                             ("abs", 1.0), ("abs", 1e-30)]),
    block_size=st.sampled_from([8, 9, 16, 128]),
)
def test_property_bound_and_specials(x: np.ndarray, mode_eb: tuple[str, float],
                                     block_size: int) -> None:
    mode, eb = mode_eb
    y, _ = _roundtrip(x, mode=mode, eb=eb, block_size=block_size)
    nan = np.isnan(x)
    np.testing.assert_array_equal(np.isnan(y), nan)
    inf = np.isinf(x)
    np.testing.assert_array_equal(y[inf], x[inf])
    assert not np.isinf(y[~inf]).any()
    assert _max_err(x, y) <= _eb_abs(x, mode, eb)


# -- compression behaviour -------------------------------------------------------
def test_constant_blocks_compress_much_better_than_noise() -> None:
    rng = np.random.default_rng(RNG_SEED)
    n = 128 * 400
    steps = np.repeat(rng.standard_normal(n // 256), 256).astype(np.float32)
    noise = rng.standard_normal(n).astype(np.float32)
    y, blob_steps = _roundtrip(steps, mode="rel", eb=1e-3, block_size=128)
    assert _max_err(steps, y) <= _eb_abs(steps, "rel", 1e-3)
    _, blob_noise = _roundtrip(noise, mode="rel", eb=1e-3, block_size=128)
    # a constant block costs its code byte and its float32 mid value only
    assert _cr(steps, blob_steps) > 50
    assert _cr(steps, blob_steps) > 10 * _cr(noise, blob_noise)


def test_ratio_grows_with_the_bound_on_smooth_data() -> None:
    x = _data("smooth", 200_000, np.random.default_rng(0))
    ratios = []
    for eb in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        y, blob = _roundtrip(x, mode="rel", eb=eb)
        assert _max_err(x, y) <= _eb_abs(x, "rel", eb)
        ratios.append(_cr(x, blob))
    assert ratios[0] > 1.0
    assert all(a < b for a, b in itertools.pairwise(ratios)), ratios


@pytest.mark.parametrize("rel", [1e-2, 1e-3, 1e-4, 1e-5, 1e-6])
def test_patches_rare_on_normal_data(rel: float) -> None:
    x = np.random.default_rng(RNG_SEED).standard_normal(100_000).astype(np.float32)
    y, blob = _roundtrip(x, mode="rel", eb=rel)
    assert _max_err(x, y) <= _eb_abs(x, "rel", rel)
    assert _patches(blob) < x.size // 1000
    assert _cr(x, blob) > 1.0


def test_deterministic() -> None:
    x = np.random.default_rng(1).standard_normal(3000).astype(np.float32)
    codec = fedpress.get_codec("szx", eb=1e-3)
    assert codec.encode(x) == codec.encode(x.copy())


# -- configuration -----------------------------------------------------------------
def test_config_roundtrip() -> None:
    codec = fedpress.get_codec("szx", mode="abs", eb=1e-3, block_size=64)
    assert isinstance(codec, SZxCodec)
    cfg = codec.get_config()
    assert cfg == {"id": "szx", "mode": "abs", "eb": 1e-3, "block_size": 64}
    again = fedpress.codec_from_config(cfg)
    assert again == codec
    assert again.get_config() == cfg
    assert SZxCodec.from_config(cfg) == codec
    assert "szx" in fedpress.list_codecs()
    default = fedpress.get_codec("szx")
    assert default.get_config() == {"id": "szx", "mode": "rel", "eb": 1e-2, "block_size": 128}


def test_frame_carries_block_size() -> None:
    x = np.random.default_rng(2).standard_normal(500).astype(np.float32)
    blob = fedpress.compress(x, codec="szx", eb=1e-2, block_size=32)
    assert fedpress.inspect(blob)["tensors"][0]["config"]["block_size"] == 32


@pytest.mark.parametrize("bad", [0, 7, 65537, -128, 12.5, True, "128", None])
def test_bad_block_size(bad: object) -> None:
    with pytest.raises(ConfigError):
        fedpress.get_codec("szx", block_size=bad)
    with pytest.raises(ConfigError):
        SZxCodec(block_size=bad)  # type: ignore[arg-type]


def test_bad_bound_is_config_error() -> None:
    with pytest.raises(ConfigError):
        fedpress.get_codec("szx", mode="pointwise")
    with pytest.raises(ConfigError):
        fedpress.get_codec("szx", eb=-1.0)


# -- malformed input -------------------------------------------------------------
def _fuzz_inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    mixed = np.concatenate([np.repeat(rng.standard_normal(4), 100),
                            1e3 * rng.standard_normal(300), rng.standard_normal(333)])
    return [rng.standard_normal(1000).astype(np.float32), mixed.astype(np.float32)]


def _mutations(payload: bytes, rng: np.random.Generator, count: int) -> list[bytes]:
    out = [payload[:k] for k in range(0, len(payload), max(1, len(payload) // 40))]
    while len(out) < count:
        b = bytearray(payload)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(len(b)))
            if rng.random() < 0.5:
                b[pos] ^= 1 << int(rng.integers(8))
            else:
                b[pos] = int(rng.integers(256))
        if rng.random() < 0.2:
            b = b[: int(rng.integers(len(b)))]
        out.append(bytes(b))
    return out


@pytest.mark.filterwarnings("error")
def test_fuzz_payload() -> None:
    rng = np.random.default_rng(RNG_SEED)
    codec = fedpress.get_codec("szx", eb=1e-3)
    for x in _fuzz_inputs():
        spec = TensorSpec(x.shape, x.dtype)
        payload = codec.encode(x)
        np.testing.assert_allclose(codec.decode(payload, spec), x, atol=codec.bound_for(x))
        for bad in _mutations(payload, rng, 200):
            try:
                y = codec.decode(bad, spec)
            except FormatError:
                continue
            assert y.shape == x.shape


@pytest.mark.filterwarnings("error")
def test_fuzz_core_raises_only_format_error() -> None:
    """The core itself (not only the envelope) rejects bad bytes with FormatError."""
    rng = np.random.default_rng(RNG_SEED + 1)
    for block_size in (8, 100):
        codec = SZxCodec(eb=1e-3, block_size=block_size)
        for x in _fuzz_inputs():
            eb_abs = codec.bound_for(x)
            core = codec._encode_core(x, eb_abs)
            assert core[0] == FORMAT_VERSION
            for bad in _mutations(core, rng, 150):
                try:
                    y = codec._decode_core(memoryview(bad), x.size, np.dtype(np.float32), eb_abs)
                except FormatError:
                    continue
                assert y.shape == (x.size,)
                assert y.dtype == np.float32


def test_core_rejects_version_trailing_and_truncation() -> None:
    x = np.random.default_rng(3).standard_normal(777).astype(np.float32)
    codec = SZxCodec(eb=1e-2)
    eb_abs = codec.bound_for(x)
    core = codec._encode_core(x, eb_abs)
    f32 = np.dtype(np.float32)
    y = codec._decode_core(memoryview(core), x.size, f32, eb_abs)
    assert np.max(np.abs(y.astype(np.float64) - x)) <= eb_abs
    with pytest.raises(FormatError):
        codec._decode_core(memoryview(bytes([FORMAT_VERSION + 1]) + core[1:]), x.size, f32, eb_abs)
    with pytest.raises(FormatError):
        codec._decode_core(memoryview(core + b"\0"), x.size, f32, eb_abs)
    with pytest.raises(FormatError):
        codec._decode_core(memoryview(core[:-1]), x.size, f32, eb_abs)
    with pytest.raises(FormatError):
        codec._decode_core(memoryview(core), x.size + 1000, f32, eb_abs)
    with pytest.raises(FormatError):
        codec._decode_core(memoryview(b""), x.size, f32, eb_abs)


def test_wrong_length_in_frame_is_format_error() -> None:
    x = np.random.default_rng(4).standard_normal(300).astype(np.float32)
    codec = fedpress.get_codec("szx", eb=1e-2)
    payload = codec.encode(x)
    with pytest.raises(FormatError):
        codec.decode(payload, TensorSpec((301,), np.dtype(np.float32)))


# -- helpers -----------------------------------------------------------------------
@pytest.mark.parametrize("bits", range(1, 8))
def test_bit_packing_matches_packbits(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for count in (1, 7, 8, 9, 100, 1001):
        vals = rng.integers(0, 1 << bits, count).astype(np.uint8)
        packed = _pack_small(vals, bits)
        ref = np.packbits(np.unpackbits(vals).reshape(-1, 8)[:, 8 - bits:].reshape(-1))
        assert packed == ref.tobytes()
        np.testing.assert_array_equal(_unpack_small(memoryview(packed), count, bits), vals)
