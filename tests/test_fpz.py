"""fpz and its stages: quantizer, predictors, ANS coder; the encoder's reconstruction is
exactly what the decoder computes (the envelope trusts it instead of decoding)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Reader, Writer
from fedpress.eblc.fpz import FpzCodec
from fedpress.frame import unpack
from fedpress.stages import ans
from fedpress.stages.predict import PREDICTORS
from fedpress.stages.quantize import MAX_CODE, dequantize, quantize

from .common import assert_within_bound, check_error_bounded
from .make_golden import FPZ3, golden_inputs

codes = hnp.arrays(np.int64, st.integers(1, 3000), elements=st.integers(-5000, 5000))


@given(codes)
def test_ans_round_trip(sym: np.ndarray) -> None:
    w = Writer()
    ans.encode(sym, w)
    out = ans.decode(Reader(w.getvalue()), sym.size)
    assert np.array_equal(out, sym)


def test_ans_size_is_close_to_entropy(rng: np.random.Generator) -> None:
    sym = np.rint(rng.standard_normal(200_000) * 3).astype(np.int64)
    w = Writer()
    ans.encode(sym, w)
    ideal = ans.entropy_bits(np.bincount(sym - sym.min())) / 8
    assert len(w.getvalue()) < ideal * 1.01 + 200


def test_ans_rejects_bad_histograms() -> None:
    w = Writer()
    ans.encode(np.array([1, 2, 2, 3], np.int64), w)
    blob = w.getvalue()
    with pytest.raises(fedpress.FormatError):
        ans.decode(Reader(blob), 5)  # histogram sums to 4
    with pytest.raises(fedpress.FormatError):
        ans.decode(Reader(blob[:3]), 4)


@given(codes)
def test_predictors_invert_exactly(q: np.ndarray) -> None:
    cols = next(c for c in (7, 5, 3, 2, 1) if q.size % c == 0)
    for _name, fwd, inv in PREDICTORS.values():
        assert np.array_equal(inv(fwd(q, cols), cols), q)


def test_lorenzo2d_follows_the_natural_axes(rng: np.random.Generator) -> None:
    # smooth along both axes of a (rows, cols) matrix: 2-D Lorenzo (version 2) pays
    i, j = np.meshgrid(np.linspace(0, 3, 120), np.linspace(0, 4, 90), indexing="ij")
    x = (np.sin(i) * np.cos(j) + 1e-4 * rng.standard_normal(i.shape)).astype(np.float32)
    c = fedpress.get_codec("fpz", eb=1e-4, predictor="lorenzo2d")
    payload = c.encode(x)
    assert _fpz_header(payload)["version"] == 2 and _fpz_header(payload)["predictor"] == 2
    check_error_bounded(x, "fpz", "rel", 1e-4, predictor="lorenzo2d")
    for fixed in ("none", "lorenzo1d"):
        v2 = fedpress.get_codec("fpz", eb=1e-4, predictor=fixed, coder="rans").encode(x)
        assert len(payload) < len(v2)
    # the default (version 3) predicts such data from the previous value
    default = fedpress.get_codec("fpz", eb=1e-4).encode(x)
    assert _fpz_header(default)["version"] == 3 and _fpz_header(default)["predictor"] == 1
    # forced on a 1-D tensor it falls back to lorenzo1d
    flat = x.reshape(-1)
    one_d = fedpress.get_codec("fpz", eb=1e-4, predictor="lorenzo2d").encode(flat)
    assert _fpz_header(one_d)["predictor"] == 1
    check_error_bounded(flat, "fpz", "rel", 1e-4, predictor="lorenzo2d")
    with pytest.raises(ValueError, match="rows"):
        PREDICTORS[2][1](np.arange(10), 3)


def test_quantizer_bound_and_overflow(rng: np.random.Generator) -> None:
    x = rng.standard_normal(10_000) * 5
    q = quantize(x, 1e-3)
    assert q is not None
    assert np.abs(dequantize(q, 1e-3, np.dtype(np.float64)) - x).max() <= 1e-3 * (1 + 1e-12)
    assert quantize(np.array([1.0, -1.0]), 0.25 / MAX_CODE) is None  # codes 2 * MAX_CODE
    assert quantize(np.array([1.0, -1.0]), 1.0 / MAX_CODE) is not None  # codes MAX_CODE / 2


@pytest.mark.parametrize("predictor", ["auto", "none", "lorenzo1d", "lorenzo2d"])
@pytest.mark.parametrize("coder", ["auto", "acm", "rans", "huffman", "ans", "zstd"])
def test_every_stage_combination(predictor: str, coder: str, rng: np.random.Generator) -> None:
    smooth = np.sin(np.linspace(0, 30, 20_000)).astype(np.float32)
    noise = (0.02 * rng.standard_normal(20_000)).astype(np.float32)
    for x in (smooth, noise, smooth[:50]):
        for rel in (1e-2, 1e-4):
            check_error_bounded(x, "fpz", "rel", rel, predictor=predictor, coder=coder)


def test_auto_choices(rng: np.random.Generator) -> None:
    c = fedpress.get_codec("fpz")
    smooth = np.sin(np.linspace(0, 30, 50_000)).astype(np.float32)
    noise = rng.standard_normal(50_000).astype(np.float32)
    eb = 1e-3 * 2
    assert c._encode_core(smooth, eb)[2] == 1  # lorenzo1d on smooth data
    assert c._encode_core(noise, eb)[2] == 0  # no prediction on noise


def _sparse_gradient(rng: np.random.Generator, rows: int = 64, cols: int = 1000) -> np.ndarray:
    g = rng.laplace(0, 1, (rows, cols)) * rng.gamma(0.5, 1.0, (rows, 1))
    g[rng.random(rows) < 0.3] = 0.0  # dead neurons' rows
    return g.astype(np.float32)


def _fpz_header(payload: bytes) -> dict[str, int]:
    """Fields of an fpz payload (after the envelope, no patches expected)."""
    rd = Reader(payload)
    kind, _eb, patches = rd.u8(), rd.f64(), rd.varint()
    assert kind == 2 and patches == 0
    out = {"version": rd.u8(), "mode": rd.u8(), "predictor": rd.u8()}
    if out["version"] == 3:
        out["cols"] = rd.varint()
        out["block_bits"] = rd.u8()
        return out
    if out["predictor"] == 2:
        out["cols"] = rd.varint()
    out["flags"] = rd.u8()
    if out["flags"] & 1:
        rd.blob()
    out["coder"] = rd.u8()
    return out


@pytest.mark.parametrize("predictor", ["none", "lorenzo1d"])
def test_zero_blocks_are_skipped(predictor: str, rng: np.random.Generator) -> None:
    g = _sparse_gradient(rng)
    c = fedpress.get_codec("fpz", eb=1e-2, predictor=predictor, coder="rans")
    payload = c.encode(g)
    head = _fpz_header(payload)
    assert head["flags"] == 1 and head["version"] == 2 and head["coder"] == 2
    check_error_bounded(g, "fpz", "rel", 1e-2, predictor=predictor, coder="rans")
    # the dead rows cost (almost) nothing: the live rows alone are not much smaller
    live = g[np.abs(g).sum(1) > 0]
    assert len(payload) < 1.05 * len(c.encode(live)) + 64


@pytest.mark.parametrize("predictor", ["none", "lorenzo1d"])
def test_zero_rows_cost_almost_nothing(predictor: str, rng: np.random.Generator) -> None:
    g = _sparse_gradient(rng)
    c = fedpress.get_codec("fpz", eb=1e-2, predictor=predictor)
    payload = c.encode(g)
    assert _fpz_header(payload)["version"] == 3
    check_error_bounded(g, "fpz", "rel", 1e-2, predictor=predictor)
    live = g[np.abs(g).sum(1) > 0]
    # a dead row costs well under a byte: its flag only
    assert len(payload) < len(c.encode(live)) + (g.shape[0] - live.shape[0]) // 4 + 16
    # and version 3 is smaller than version 2 on such a gradient, predictor for predictor
    v2 = fedpress.get_codec("fpz", eb=1e-2, predictor=predictor, coder="rans").encode(g)
    assert len(payload) < len(v2)


def test_all_codes_zero_but_not_constant() -> None:
    x = np.zeros(1000, np.float32)
    x[::7] = 1e-4  # within the bound of 0, but the tensor is not constant
    y, _ = check_error_bounded(x, "fpz", "abs", 1e-3)
    assert not np.any(y)


def test_fpz_is_the_default_and_beats_sz3_on_a_gradient(rng: np.random.Generator) -> None:
    g = _sparse_gradient(rng, 128, 2000)
    assert fedpress.inspect(fedpress.compress(g))["tensors"][0]["codec"] == "fpz"
    if "sz3" in fedpress.list_codecs():
        assert len(fedpress.compress(g)) < len(fedpress.compress(g, codec="sz3"))


@given(hnp.arrays(np.float32, st.integers(1, 500),
                  elements=st.floats(-1e4, 1e4, width=32)),
       st.sampled_from([1e-1, 1e-3, 1e-6]))
def test_reconstruction_handed_to_envelope_is_what_decoder_computes(x: np.ndarray,
                                                                    rel: float) -> None:
    c = fedpress.get_codec("fpz", eb=rel)
    eb = c.bound_for(x)
    if eb == 0:
        return
    body, recon, over = c._encode_core_recon(x, eb)
    out = c._decode_core(memoryview(body), x.size, np.dtype(np.float32), eb)
    assert out.tobytes() == recon.tobytes()
    # a core that says "none over the bound" must be right
    exact = np.flatnonzero(~(np.abs(out.astype(np.float64) - x.astype(np.float64)) <= eb))
    if over is not None:
        assert np.array_equal(over, exact)


def test_reported_offenders_on_float32_rounding(rng: np.random.Generator) -> None:
    # a bound of 0.6 float32 ulps: q * step may round to the neighbour float, one ulp away
    x = (rng.uniform(1e3, 1e3 + 1, 20_000)).astype(np.float32)
    eb = 0.6 * float(np.spacing(np.float32(1e3)))
    c = fedpress.get_codec("fpz", mode="abs", eb=eb, predictor="none")
    _body, recon, over = c._encode_core_recon(x, eb)
    exact = np.flatnonzero(~(np.abs(recon.astype(np.float64) - x.astype(np.float64)) <= eb))
    assert exact.size > 0 and over is None  # the envelope must look for them itself
    y, _ = check_error_bounded(x, "fpz", "abs", eb)
    assert np.array_equal(y[exact], x[exact])  # stored exactly


def test_tiny_bound_goes_lossless() -> None:
    x = np.array([1e6, -1e6, 0.5] * 100, np.float32)
    y, _ = check_error_bounded(x, "fpz", "abs", 1e-9)
    assert np.array_equal(y, x)


def test_bad_options() -> None:
    with pytest.raises(fedpress.ConfigError):
        fedpress.get_codec("fpz", predictor="magic")
    with pytest.raises(fedpress.ConfigError):
        fedpress.get_codec("fpz", coder="lzw")


@pytest.mark.parametrize("which", ["noise", "sparse"])
def test_crafted_core_payloads_are_format_errors(which: str, rng: np.random.Generator) -> None:
    x = (rng.standard_normal(3000).astype(np.float32) if which == "noise"
         else _sparse_gradient(rng, 80, 1000))
    c = fedpress.get_codec("fpz", eb=1e-3)
    payload = c.encode(x)
    spec = fedpress.TensorSpec(x.shape, x.dtype)
    for i in range(400):
        bad = bytearray(payload)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(0, len(bad)))] = int(rng.integers(0, 256))
        if i % 3 == 0:
            bad = bad[: int(rng.integers(0, len(bad)))]
        try:
            out = c.decode(bytes(bad), spec)
        except fedpress.FormatError:
            continue
        assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("x, mode, eb", [
    (np.array([0.0, 1.0, 0.5, 0.25], np.float64), "abs", 1e308),
    (np.linspace(0, 1.7e308, 1000), "rel", 0.6),
])
def test_bounds_too_large_to_quantize_still_hold(x: np.ndarray, mode: str, eb: float) -> None:
    # 2 * eb overflows to inf: quantizing would give 0 * inf = NaN
    y, _ = check_error_bounded(x, "fpz", mode, eb)
    assert np.all(np.isfinite(y))


# -- version 3: golden frames, workers, memory ------------------------------------
GOLDEN_V3 = sorted((Path(__file__).parent / "data" / "golden_v1_fpz3").glob("*.fpz"))


def test_version3_golden_frames_exist() -> None:
    assert {p.stem for p in GOLDEN_V3} == {name for name, _, _ in FPZ3}


@pytest.mark.parametrize("name, source, opts", FPZ3, ids=[n for n, _, _ in FPZ3])
def test_version3_golden_frames_decode_and_are_reproduced(name: str, source: str,
                                                          opts: dict[str, Any]) -> None:
    path = Path(__file__).parent / "data" / "golden_v1_fpz3" / f"{name}.fpz"
    blob = path.read_bytes()
    x = golden_inputs()[source]
    y = fedpress.decompress(blob)
    with np.load(Path(__file__).parent / "data" / "golden_v1_expected.npz") as expected:
        assert y.tobytes() == expected[f"fpz3/{name}"].tobytes(), "decoder output changed"
    assert_within_bound(x, y, opts.get("mode", "rel"), opts["eb"])
    payload = unpack(blob).records[0].payload
    version = payload[payload_core_offset(payload)]
    coder = opts.get("coder", "auto")
    if coder == "best":  # the smaller of version 3 and version 2, whichever it was
        sizes = {v: len(unpack(fedpress.compress(x, codec=FpzCodec(
            opts.get("mode", "rel"), opts["eb"], coder="auto" if v == 3 else "rans"
        ))).records[0].payload) for v in (3, 2)}
        assert len(payload) == min(sizes.values()) and sizes[version] == len(payload)
    else:
        assert version == 3  # fpz payload version 3
    # this encoder writes the same bytes, whatever the number of workers
    for workers in (1, 2):
        codec = FpzCodec(opts.get("mode", "rel"), opts["eb"], coder=coder, workers=workers)
        assert fedpress.compress(x, codec=codec) == blob


def payload_core_offset(payload: bytes) -> int:
    """Where the core's bytes begin in an error-bounded envelope (after the patches)."""
    rd = Reader(payload)
    rd.u8()
    rd.f64()
    count = rd.varint()
    if count:
        width = rd.u8()
        rd.take(count * width)
        rd.take(count * 4)  # float32 golden tensors
    return rd.pos


def test_version3_workers_and_blocks(rng: np.random.Generator) -> None:
    g = _sparse_gradient(rng, 300, 2000)  # 600,000 values: ten blocks of rows
    blobs = {w: fedpress.compress(g, codec=FpzCodec(eb=1e-3, workers=w)) for w in (1, 2, 4)}
    assert blobs[1] == blobs[2] == blobs[4]
    for w in (1, 3):
        y = FpzCodec(eb=1e-3, workers=w).decode(unpack(blobs[1]).records[0].payload,
                                                fedpress.TensorSpec(g.shape, g.dtype))
        assert_within_bound(g, y, "rel", 1e-3)
    with pytest.raises(fedpress.ConfigError):
        FpzCodec(workers=0)
    with pytest.raises(fedpress.ConfigError):
        FpzCodec(coder="acm", version=2)
    # workers and version are not configuration: frames do not record them
    assert "workers" not in FpzCodec(workers=3).get_config()


def test_version3_declares_its_decoding_memory() -> None:
    spec = fedpress.TensorSpec((1 << 22,), np.float32)
    one = FpzCodec(workers=1).decode_peak_bytes(spec)
    assert spec.nbytes < one < 1.5 * spec.nbytes
    assert FpzCodec(workers=2).decode_peak_bytes(spec) > one


def test_version2_still_written_on_request(rng: np.random.Generator) -> None:
    x = rng.standard_normal((40, 300)).astype(np.float32)
    for codec in (FpzCodec(coder="rans"), FpzCodec(version=2), FpzCodec(predictor="lorenzo2d")):
        payload = codec.encode(x)
        assert _fpz_header(payload)["version"] == 2
        assert_within_bound(x, codec.decode(payload, fedpress.TensorSpec(x.shape, x.dtype)),
                            "rel", 1e-2)


def _best_input(kind: str, seed: int, rows: int, cols: int) -> np.ndarray:
    """Tensors on which either version may code smaller: white noise (version 2's
    static coder), smooth or sparse rows (version 3's model), tiny ones."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return (0.05 * rng.standard_normal((rows, cols))).astype(np.float32)
    if kind == "smooth":
        t = np.linspace(0, rows / 3, rows * cols) + rng.random()
        return np.sin(t).reshape(rows, cols).astype(np.float32)
    if kind == "sparse":
        live = rng.random((rows, 1)) < 0.3
        return (rng.laplace(0, 1e-3, (rows, cols)) * live).astype(np.float32)
    return rng.standard_normal(rows).astype(np.float64)  # tiny, 1-D, float64


@given(st.sampled_from(["noise", "smooth", "sparse", "tiny"]), st.integers(0, 2**32 - 1),
       st.integers(1, 300), st.integers(1, 400), st.sampled_from([1e-1, 1e-2, 1e-3, 1e-5]))
def test_best_is_never_larger_than_either_version(kind: str, seed: int, rows: int, cols: int,
                                                  rel: float) -> None:
    x = _best_input(kind, seed, rows, cols)
    spec = fedpress.TensorSpec(x.shape, x.dtype)
    best = FpzCodec(eb=rel, coder="best")
    payload, out = best.encode_with_output(x)
    alone = {v: FpzCodec(eb=rel, version=v).encode(x) for v in (2, 3)}
    assert len(payload) == min(len(b) for b in alone.values())  # same envelope for both
    y = best.decode(payload, spec)
    assert_within_bound(x, y, "rel", rel)
    assert y.tobytes() == out.tobytes()  # the output handed back is the kept payload's
    # the kept version alone gives the same payload core and values (the other may
    # store a small tensor losslessly where this one quantizes, or the reverse)
    kept = next(v for v in (3, 2) if alone[v] == payload)  # version 3 on a tie
    assert FpzCodec(eb=rel, version=kept).decode(alone[kept], spec).tobytes() == y.tobytes()


def test_best_keeps_each_version_where_it_is_smaller(rng: np.random.Generator) -> None:
    noise = (0.05 * rng.standard_normal((100, 1000))).astype(np.float32)
    smooth = _best_input("smooth", 1, 100, 200)
    for x, version in ((noise, 2), (smooth, 3)):
        payload = FpzCodec(eb=1e-2, coder="best").encode(x)
        assert _fpz_header(payload)["version"] == version
        assert len(payload) < len(FpzCodec(eb=1e-2, version=5 - version).encode(x))
        y, blob = check_error_bounded(x, "fpz", "rel", 1e-2, coder="best")
        assert unpack(blob).codecs[0]["coder"] == "best"
        # an ordinary payload: a codec with any other coder decodes it
        out = FpzCodec(coder="rans").decode(payload, fedpress.TensorSpec(x.shape, x.dtype))
        assert out.tobytes() == y.tobytes()
    with pytest.raises(fedpress.ConfigError):
        FpzCodec(coder="best", version=2)
    with pytest.raises(fedpress.ConfigError):
        FpzCodec(coder="best", predictor="lorenzo2d")


def test_best_in_a_plan_spec(rng: np.random.Generator) -> None:
    name, options = fedpress.Plan.parse("fpz(coder=best)")
    assert (name, options) == ("fpz", {"coder": "best"})
    plan = fedpress.Plan.build(name, eb=1e-3, **options)
    assert [r.codec.get_config()["coder"] for r in plan.rules] == ["best"]
    sd = {"w": (0.05 * rng.standard_normal((64, 500))).astype(np.float32),
          "b": rng.standard_normal(64).astype(np.float32)}
    frame = fedpress.UpdateEncoder(plan).encode(sd)
    out = fedpress.UpdateDecoder().decode(frame)
    assert_within_bound(sd["w"], out["w"], "rel", 1e-3)
    assert np.array_equal(sd["b"], out["b"])


def test_update_encoder_codes_fpz_tensors_side_by_side(rng: np.random.Generator) -> None:
    sd = {f"l{i}.weight": (rng.standard_normal((64, 40 * (i + 1))) * (i + 1)).astype(np.float32)
          for i in range(6)}
    sd["l0.bias"] = rng.standard_normal(64).astype(np.float32)
    sd["bn.num_batches_tracked"] = np.array(7, np.int64)
    ref = {k: (v * 0.9).astype(v.dtype) for k, v in sd.items() if k.endswith("weight")}
    frames = {w: fedpress.UpdateEncoder("fedsz", eb=1e-3, workers=w).encode(sd, reference=ref)
              for w in (1, 2, 5)}
    assert frames[1] == frames[2] == frames[5]
    out = fedpress.UpdateDecoder().decode(frames[2], reference=ref)
    for k, v in sd.items():
        if k.endswith("weight"):
            assert_within_bound(v, out[k], "rel", 1e-3)
        else:
            assert np.array_equal(v, out[k])
    with pytest.raises(fedpress.ConfigError):
        fedpress.UpdateEncoder("fedsz", workers=0)
