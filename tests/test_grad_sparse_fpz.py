"""Sparsifiers whose kept values are coded by fpz (``topk``/``threshold`` with
``values="fpz"``): the bound on the kept values, exact zeros elsewhere, the payload
size, error feedback of the quantization error, the frame's config, the golden frame,
and hostile payloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Writer
from fedpress.abc import TensorSpec
from fedpress.dtypes import BFLOAT16
from fedpress.grad.indices import write_indices
from fedpress.grad.topk import SparseCodec

from .make_golden import golden_inputs

DATA = Path(__file__).parent / "data"
RNG = np.random.default_rng(11)


def _kept(codec: Any, x: np.ndarray) -> np.ndarray:
    """The positions ``codec`` (``topk`` or ``threshold``) keeps of ``x`` (flat)."""
    if codec.codec_id == "topk":
        return codec.select(x)
    return np.flatnonzero(np.abs(x.reshape(-1)) >= codec.tau)


def _check_bound(codec: Any, x: np.ndarray, y: np.ndarray) -> None:
    """Kept entries within ``values_eb * (max - min)`` of the kept values (float64,
    on the output dtype), every other entry exactly zero."""
    idx = _kept(codec, x)
    flat_x = x.reshape(-1).astype(np.float64)
    flat_y = y.reshape(-1).astype(np.float64)
    rest = np.ones(x.size, dtype=bool)
    rest[idx] = False
    assert np.all(flat_y[rest] == 0)
    if idx.size:
        v = flat_x[idx]
        eb = codec.values_eb * float(v.max()) - codec.values_eb * float(v.min())
        assert np.abs(flat_y[idx] - v).max() <= eb


@given(hnp.arrays(st.sampled_from([np.float32, np.float64, np.float16]),
                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                  elements=st.floats(-1e4, 1e4, width=16)),
       st.sampled_from(["topk", "threshold"]),
       st.sampled_from([1e-3, 1e-2, 3e-2, 0.3]))
@settings(max_examples=80, deadline=None)
def test_round_trip_bound_and_zeros(x: np.ndarray, codec_id: str, eb: float) -> None:
    opts = {"ratio": 0.05} if codec_id == "topk" else {"tau": 100.0}
    codec = fedpress.get_codec(codec_id, values="fpz", values_eb=eb, **opts)
    assert isinstance(codec, SparseCodec)
    payload, recon = codec.encode_with_recon(x)
    got = codec.decode(payload, TensorSpec.of(x))
    assert got.dtype == x.dtype and got.shape == x.shape
    assert got.tobytes() == recon.tobytes()  # what error feedback subtracts
    _check_bound(codec, x, got)


@given(hnp.arrays(np.float32, st.integers(1, 3000),
                  elements=st.floats(-2.0**100, 2.0**100, width=32)),
       st.floats(1e-4, 0.5))
@settings(max_examples=40, deadline=None)
def test_wide_float32_values_keep_the_bound(x: np.ndarray, eb: float) -> None:
    codec = fedpress.get_codec("topk", ratio=0.1, values="fpz", values_eb=eb)
    y = fedpress.decompress(fedpress.compress(x, codec=codec))
    assert y.dtype == x.dtype and y.shape == x.shape
    _check_bound(codec, x, y)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_float_dtypes_are_coded_in_their_own_dtype(dtype: str) -> None:
    dt = BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
    x = RNG.laplace(0, 1, (30, 200)).astype(dt)
    codec = fedpress.get_codec("topk", ratio=0.05, values="fpz", values_eb=1e-2)
    y = fedpress.decompress(fedpress.compress(x, codec=codec))
    assert y.dtype == x.dtype and y.shape == x.shape
    _check_bound(codec, x, y)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (), (1,), (7,)])
def test_empty_scalar_and_one_value_tensors(shape: tuple[int, ...]) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    for codec in (fedpress.get_codec("topk", ratio=0.01, values="fpz"),
                  fedpress.get_codec("threshold", tau=0.0, values="fpz")):
        y = fedpress.decompress(fedpress.compress(x, codec=codec))
        assert y.shape == x.shape and y.dtype == x.dtype
        _check_bound(codec, x, y)
    # all kept values equal (a constant to fpz): sent exactly
    ones = np.ones(50, np.float32)
    y = fedpress.decompress(fedpress.compress(ones, codec="threshold", tau=0.5, values="fpz"))
    assert np.array_equal(y, ones)


def test_payload_is_smaller_than_raw_values() -> None:
    x = RNG.standard_normal(100_000).astype(np.float32)
    raw = fedpress.get_codec("topk", ratio=0.01).encode(x)
    fpz = fedpress.get_codec("topk", ratio=0.01, values="fpz", values_eb=1e-2).encode(x)
    loose = fedpress.get_codec("topk", ratio=0.01, values="fpz", values_eb=3e-2).encode(x)
    # raw: about 5.0 kB (4 bytes a value, about 1 for its index); fpz: about 1.6 kB
    assert len(fpz) < 0.4 * len(raw)
    assert len(loose) < len(fpz)


def test_options_are_checked() -> None:
    for codec_id, opts in (("topk", {}), ("threshold", {"tau": 1.0})):
        for bad in ({"values": "zstd"}, {"values": 1}, {"values": None},
                    {"values": "fpz", "values_eb": 0}, {"values": "fpz", "values_eb": 1},
                    {"values": "fpz", "values_eb": -0.1}, {"values": "fpz", "values_eb": 1.5},
                    {"values": "fpz", "values_eb": float("nan")},
                    {"values": "fpz", "values_eb": float("inf")},
                    {"values": "fpz", "values_eb": True},
                    {"values": "fpz", "values_eb": "0.01"},
                    {"values_eb": 1e-2}, {"values": "raw", "values_eb": 1e-2}):
            with pytest.raises(fedpress.ConfigError, match="values"):
                fedpress.get_codec(codec_id, **opts, **bad)


def test_config_names_the_layout_and_raw_configs_are_unchanged() -> None:
    raw = fedpress.get_codec("topk", ratio=0.01)
    assert raw.get_config() == {"id": "topk", "ratio": 0.01, "approx": False,
                                "sample": 0.01, "seed": 0}
    assert fedpress.get_codec("threshold", tau=2.0).get_config() == {"id": "threshold",
                                                                      "tau": 2.0}
    assert fedpress.get_codec("topk", values="raw") == fedpress.get_codec("topk")
    coded = fedpress.get_codec("topk", ratio=0.01, values="fpz")
    cfg = coded.get_config()
    assert cfg["values"] == "fpz" and cfg["values_eb"] == 1e-2
    assert fedpress.codec_from_config(cfg) == coded
    assert [c.codec_id for c in coded.tree()] == ["topk", "fpz"]
    assert coded.tree()[1].get_config() == {"id": "fpz", "mode": "rel", "eb": 1e-2,
                                            "predictor": "auto", "coder": "auto"}
    # a frame says which layout it holds
    x = RNG.standard_normal(1000).astype(np.float32)
    frame = fedpress.frame.unpack(fedpress.compress(x, codec=coded))
    assert frame.codecs == [cfg]


def test_golden_frame_decodes_and_is_reproduced() -> None:
    grad = golden_inputs()["grad"]
    blob = (DATA / "golden_v1_grad_topk_fpz.fpz").read_bytes()
    codec = fedpress.get_codec("topk", ratio=0.01, values="fpz", values_eb=1e-2)
    assert fedpress.compress(grad, codec=codec) == blob
    with np.load(DATA / "golden_v1_expected.npz") as expected:
        want = expected["grad_topk_fpz"]
    y = fedpress.decompress(blob)
    assert y.tobytes() == want.tobytes() and y.dtype == want.dtype and y.shape == grad.shape
    _check_bound(codec, grad, y)
    # raw values: the frame written before the option existed, byte for byte
    raw = (DATA / "golden_v1_grad_topk.fpz").read_bytes()
    assert fedpress.compress(grad, codec="topk", ratio=0.01) == raw


def test_allow_list_and_memory_limits_reach_the_value_coder() -> None:
    x = RNG.standard_normal(5000).astype(np.float32)
    blob = fedpress.compress(x, codec="topk", ratio=0.1, values="fpz")
    with pytest.raises(fedpress.FormatError, match="'fpz' is not accepted"):
        fedpress.decompress(blob, fedpress.Limits(codecs=frozenset({"topk"})))
    y = fedpress.decompress(blob, fedpress.Limits(codecs=frozenset({"topk", "fpz"})))
    assert y.shape == x.shape
    codec = fedpress.get_codec("topk", ratio=0.1, values="fpz")
    peak = codec.decode_peak_bytes(TensorSpec.of(x))
    assert peak > x.nbytes + 8 * 500
    with pytest.raises(fedpress.FormatError, match="limit"):
        fedpress.decompress(blob, fedpress.Limits(max_total_bytes=peak - 1))
    assert fedpress.decompress(blob, fedpress.Limits(max_total_bytes=peak)).shape == x.shape


def _payload(k: int, n: int, values_payload: bytes) -> bytes:
    """A sparse payload by hand: ``k``, the first ``k`` positions, then ``values_payload``."""
    w = Writer()
    w.varint(k)
    write_indices(w, np.arange(k, dtype=np.int64), n)
    w.raw(values_payload)
    return w.getvalue()


def test_hostile_payloads_are_format_errors() -> None:
    n = 3000
    spec = TensorSpec((n,), np.dtype(np.float32))
    codec = fedpress.get_codec("topk", ratio=0.01, values="fpz")
    fpz = fedpress.get_codec("fpz", eb=1e-2)
    good = fpz.encode(RNG.standard_normal(30).astype(np.float32))
    assert codec.decode(_payload(30, n, good), spec).shape == (n,)
    # more kept entries than the ratio allows: refused before the indices are read
    with pytest.raises(fedpress.FormatError, match="kept entries"):
        codec.decode(_payload(31, n, fpz.encode(np.ones(31, np.float32))), spec)
    # an fpz payload of another count than k
    for m in (29, 31):
        with pytest.raises(fedpress.FormatError):
            codec.decode(_payload(30, n, fpz.encode(
                RNG.standard_normal(m).astype(np.float32))), spec)
    # NaN or Inf from the wire (fpz stores them exactly, as patches)
    for bad in (np.nan, np.inf):
        v = RNG.standard_normal(30).astype(np.float32)
        v[4] = bad
        with pytest.raises(fedpress.FormatError, match="non-finite"):
            codec.decode(_payload(30, n, fpz.encode(v)), spec)
    # a bound so large that the decoded values overflow float32
    huge = bytearray(good)
    huge[1:9] = np.float64(1e300).tobytes()
    with pytest.raises(fedpress.FormatError):
        codec.decode(_payload(30, n, bytes(huge)), spec)
    # raw values where fpz's payload is expected, trailing bytes, nothing at all
    raw = RNG.standard_normal(30).astype("<f4").tobytes()
    for tail in (raw, good + b"\0", b""):
        with pytest.raises(fedpress.FormatError):
            codec.decode(_payload(30, n, tail), spec)


def test_truncated_and_corrupted_payloads() -> None:
    x = RNG.standard_normal((60, 50)).astype(np.float32)
    rng = np.random.default_rng(3)
    for codec in (fedpress.get_codec("topk", ratio=0.02, values="fpz"),
                  fedpress.get_codec("threshold", tau=2.0, values="fpz", values_eb=3e-2)):
        payload = codec.encode(x)
        spec = TensorSpec.of(x)
        for cut in range(len(payload)):
            with pytest.raises(fedpress.FormatError):
                codec.decode(payload[:cut], spec)
        for _ in range(300):
            bad = bytearray(payload)
            for _ in range(int(rng.integers(1, 4))):
                bad[rng.integers(len(bad))] = int(rng.integers(256))
            try:
                y = codec.decode(bytes(bad), spec)
            except fedpress.FormatError:
                continue
            assert y.shape == x.shape and y.dtype == x.dtype and np.isfinite(y).all()
