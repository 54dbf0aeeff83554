"""Reference coding: error-bounded tensors coded as their difference from a tensor both
ends hold (e.g. the global model a client started from), under the bound of the tensor
itself, with the reference's digest in the frame."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest

import fedpress
from fedpress.frame import KIND_UPDATE, Frame, Record, pack, reference_digest, unpack

from .common import EB_CODECS, TRUSTED, abs_bound, assert_within_bound, available, same_bits

REF_CODECS = available(("fpz", "sz3", "gaeb"))
ALL_EB = available((*EB_CODECS, "gaeb"))


def _plan(codec: str) -> dict[str, Any]:
    return {"default": "zstd", "re:weight$": codec}


def _model(seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"conv.weight": (0.1 * rng.standard_normal((16, 8, 3, 3))).astype(dtype),
            "fc.weight": (0.05 * rng.standard_normal((64, 50))).astype(dtype)}


def _updated(ref: dict[str, np.ndarray], scale: float = 1e-3,
             seed: int = 1) -> dict[str, np.ndarray]:
    """The model after a small local update."""
    rng = np.random.default_rng(seed)
    return {k: (v.astype(np.float64) + scale * rng.standard_normal(v.shape)).astype(v.dtype)
            for k, v in ref.items()}


# -- the bound and the digest ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize(("mode", "eb"), [("rel", 1e-3), ("abs", 1e-4)])
@pytest.mark.parametrize("codec", ALL_EB)
def test_bound_holds_on_x_itself(codec: str, mode: str, eb: float, dtype: Any) -> None:
    ref = _model(0, dtype)
    x = _updated(ref)
    enc = fedpress.UpdateEncoder(_plan(codec), mode, eb)
    blob = enc.encode(x, reference=ref)
    fr = unpack(blob)
    for rec in fr.records:
        assert rec.reference == reference_digest(ref[rec.name])
    info = {t["name"]: t for t in fedpress.inspect(blob)["tensors"]}
    out = fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference=ref)
    for name in x:
        assert_within_bound(x[name], out[name], mode, eb)
        # the bound is the one of x, not of the (much smaller) difference
        assert info[name]["eb_abs"] == pytest.approx(abs_bound(x[name], mode, eb), rel=1e-12)


@pytest.mark.parametrize("codec", REF_CODECS)
def test_small_updates_code_smaller_against_their_reference(codec: str) -> None:
    ref = _model(2)
    x = _updated(ref, scale=1e-3)
    plain = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(x)
    coded = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(x, reference=ref)
    assert len(coded) < 0.5 * len(plain), (len(coded), len(plain))
    out = fedpress.UpdateDecoder(limits=TRUSTED).decode(coded, reference=ref)
    for name in x:
        assert_within_bound(x[name], out[name], "rel", 1e-3)
    # x equal to its reference: next to nothing to send, still within the bound
    same = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(ref, reference=ref)
    assert len(same) < len(coded)
    out = fedpress.UpdateDecoder(limits=TRUSTED).decode(same, reference=ref)
    for name in ref:
        assert_within_bound(ref[name], out[name], "rel", 1e-3)


# -- the decoder needs the same reference ----------------------------------------------
@pytest.mark.parametrize("codec", REF_CODECS)
def test_decoding_needs_the_same_reference(codec: str) -> None:
    ref = _model(3)
    x = _updated(ref)
    blob = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(x, reference=ref)
    dec = fedpress.UpdateDecoder(limits=TRUSTED)
    modified = {k: v.copy() for k, v in ref.items()}
    modified["fc.weight"].flat[7] = np.nextafter(modified["fc.weight"].flat[7], np.float32(1))
    wrong = [
        None,  # no reference at all
        {"conv.weight": ref["conv.weight"]},  # one tensor missing
        modified,  # one value one ulp off
        {k: v.astype(np.float64) for k, v in ref.items()},  # same values, other dtype
        {k: v.reshape(-1) for k, v in ref.items()},  # same values, other shape
        _model(4),  # another model
    ]
    for bad in wrong:
        with pytest.raises(fedpress.ReferenceMismatchError) as err:
            dec.decode(blob, reference=bad)
        assert isinstance(err.value, fedpress.StateDesyncError)
    if codec == "gaeb":  # mirrored state did not move: the frame still decodes
        assert dec.store.get("default", "fc.weight").round == 0
    out = dec.decode(blob, reference=ref)
    for name in x:
        assert_within_bound(x[name], out[name], "rel", 1e-3)


@pytest.mark.parametrize("codec", REF_CODECS)
def test_bad_references_are_config_errors_at_encode(codec: str) -> None:
    ref = _model(5)
    x = _updated(ref)
    enc = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3)
    nan, inf = dict(ref), dict(ref)
    nan["fc.weight"] = ref["fc.weight"].copy()
    nan["fc.weight"][3, 4] = np.nan
    inf["fc.weight"] = ref["fc.weight"].copy()
    inf["fc.weight"][0, 0] = -np.inf
    bad = [
        {**ref, "fc.weight": ref["fc.weight"].T},  # other shape
        {**ref, "fc.weight": ref["fc.weight"][:10]},
        {**ref, "fc.weight": np.float32(0.5)},  # a scalar is no broadcast
        nan, inf,
        {**ref, "fc.weight": np.zeros((64, 50), dtype=bool)},  # not numeric
    ]
    for reference in bad:
        with pytest.raises(fedpress.ConfigError):
            enc.encode(x, reference=reference)
    assert enc.store.keys() == [] or all(
        enc.store.get(p, n).round == 0 for p, n in enc.store.keys())
    # the encoder still works, and its first frame is round 1
    blob = enc.encode(x, reference=ref)
    out = fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference=ref)
    for name in x:
        assert_within_bound(x[name], out[name], "rel", 1e-3)


def test_codec_level_reference_shape_is_checked_on_both_ends() -> None:
    codec = fedpress.get_codec("fpz", mode="rel", eb=1e-3)
    ref = _model(6)["fc.weight"]
    x = _updated({"w": ref})["w"]
    payload = codec.encode(x, reference=ref)
    spec = fedpress.TensorSpec.of(x)
    assert_within_bound(x, codec.decode(payload, spec, reference=ref), "rel", 1e-3)
    with pytest.raises(fedpress.ConfigError):
        codec.encode(x, reference=ref.T)
    with pytest.raises(fedpress.ConfigError):
        codec.decode(payload, spec, reference=ref[:, :10])
    # the same payload decoded without its reference is the difference only
    diff = codec.decode(payload, spec)
    assert np.abs(diff.astype(np.float64)).max() < 0.1 * np.abs(ref).max()


# -- which tensors take a reference -------------------------------------------------------
@pytest.mark.parametrize("codec", REF_CODECS)
def test_tensors_outside_the_reference_and_lossless_tensors_take_none(codec: str) -> None:
    rng = np.random.default_rng(7)
    ref = _model(8)
    x = {**_updated(ref),
         "new.weight": rng.standard_normal((20, 30)).astype(np.float32),  # not in ref
         "fc.bias": rng.standard_normal(64).astype(np.float32),  # zstd (plan default)
         "bn.num_batches_tracked": np.array(12, np.int64)}  # integer: lossless
    reference = {**ref, "fc.bias": np.zeros(64, np.float32),
                 # lossless tensors ignore their reference, even one of another shape
                 "bn.num_batches_tracked": np.zeros(3, np.int64)}
    blob = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(x, reference=reference)
    fr = unpack(blob)
    flags = {r.name: r.reference is not None for r in fr.records}
    assert flags == {"conv.weight": True, "fc.weight": True, "new.weight": False,
                     "fc.bias": False, "bn.num_batches_tracked": False}
    codecs = {t["name"]: t["codec"] for t in fedpress.inspect(blob)["tensors"]}
    assert codecs["fc.bias"] == "zstd" and codecs["new.weight"] == codec
    # the decoder needs references only for the tensors coded against one
    out = fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference={k: ref[k] for k in ref})
    for name in ("conv.weight", "fc.weight", "new.weight"):
        assert_within_bound(x[name], out[name], "rel", 1e-3)
    for name in ("fc.bias", "bn.num_batches_tracked"):
        assert same_bits(out[name], x[name])
    # a frame without reference-coded tensors decodes with or without a reference
    plain = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(
        {k: x[k] for k in ("new.weight", "fc.bias", "bn.num_batches_tracked")},
        reference=reference)
    assert all(r.reference is None for r in unpack(plain).records)
    a = fedpress.UpdateDecoder(limits=TRUSTED).decode(plain)
    b = fedpress.UpdateDecoder(limits=TRUSTED).decode(plain, reference=reference)
    assert all(same_bits(a[k], b[k]) for k in a)


def test_reference_flag_on_a_lossless_record_is_a_format_error() -> None:
    x = {"w.weight": np.linspace(0, 1, 2000, dtype=np.float32), "n": np.arange(4)}
    ref = {"w.weight": np.zeros(2000, np.float32), "n": np.zeros(4, np.int64)}
    fr = unpack(fedpress.UpdateEncoder(_plan("fpz"), "rel", 1e-3).encode(x, reference=ref))
    assert [r.reference is not None for r in fr.records] == [True, False]
    recs = [Record(r.name, r.codec_index, r.spec, r.payload, r.state,
                   reference_digest(ref["n"]) if r.name == "n" else r.reference)
            for r in fr.records]
    blob = pack(Frame(KIND_UPDATE, fr.codecs, recs, fr.meta))
    for reference in (ref, {"w.weight": ref["w.weight"]}):  # with or without one for n
        with pytest.raises(fedpress.FormatError, match="takes no reference"):
            fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference=reference)
    # and through the raw flags byte: set bit 1 on the lossless record
    body = bytearray(pack(Frame(KIND_UPDATE, fr.codecs, fr.records, fr.meta))[:-4])
    name_at = bytes(body).index(b"\x01n")  # name length 1, "n"
    flags_at = name_at + 2 + 1 + 1 + 1 + 1  # name, codec index, dtype, ndim, one dim
    assert body[flags_at] == 0
    body[flags_at] = 0x02
    body[flags_at + 1:flags_at + 1] = reference_digest(ref["n"])
    crafted = bytes(body) + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")
    with pytest.raises(fedpress.FormatError):
        fedpress.UpdateDecoder(limits=TRUSTED).decode(crafted, reference=ref)


# -- non-finite values, special tensors ------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("codec", REF_CODECS)
def test_nan_and_inf_with_a_reference_come_back_exactly(codec: str, dtype: Any) -> None:
    ref = _model(9, dtype)
    x = _updated(ref)
    x["fc.weight"][0, 0] = np.nan
    x["fc.weight"][5, 5] = np.inf
    x["fc.weight"][9, 1] = -np.inf
    x["conv.weight"][...] = np.nan  # nothing finite
    x["conv.weight"][0, 0, 0, 0] = 1.0
    blob = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(x, reference=ref)
    out = fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference=ref)
    for name in x:
        assert_within_bound(x[name], out[name], "rel", 1e-3)


@pytest.mark.parametrize("codec", REF_CODECS)
def test_constant_empty_and_far_tensors_with_a_reference(codec: str) -> None:
    rng = np.random.default_rng(10)
    x = {"const.weight": np.full((10, 10), 0.25, np.float32),
         "empty.weight": np.zeros((0, 4), np.float32),
         "far.weight": (1e4 + rng.standard_normal((30, 30))).astype(np.float32)}
    ref = {"const.weight": rng.standard_normal((10, 10)).astype(np.float32),
           "empty.weight": np.zeros((0, 4), np.float32),
           "far.weight": -(1e4 + rng.standard_normal((30, 30))).astype(np.float32)}
    for mode, eb in (("rel", 1e-3), ("abs", 1e-4)):
        blob = fedpress.UpdateEncoder(_plan(codec), mode, eb).encode(x, reference=ref)
        out = fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference=ref)
        for name in x:
            assert_within_bound(x[name], out[name], mode, eb)
        assert same_bits(out["const.weight"], x["const.weight"])


# -- gaeb: the history is the difference, round after round -------------------------------------
@pytest.mark.parametrize("predictor", ["context", "paper", "none"])
def test_gaeb_stream_against_a_moving_reference(predictor: str) -> None:
    """A federated run: each round the client codes its model against the global model
    of that round, which moves; encoder and decoder states stay equal."""
    enc = fedpress.UpdateEncoder(_plan({"id": "gaeb", "predictor": predictor}), "rel", 1e-2)
    dec = fedpress.UpdateDecoder(limits=TRUSTED)
    rng = np.random.default_rng(11)
    scale = {k: rng.lognormal(0, 1, v.shape) for k, v in _model(12).items()}
    glob = _model(12)
    sizes = []
    for _ in range(5):
        x = {k: (v + 1e-2 * scale[k] * rng.standard_normal(v.shape)).astype(np.float32)
             for k, v in glob.items()}
        blob = enc.encode(x, reference=glob)
        sizes.append(len(blob))
        out = dec.decode(blob, reference=glob)
        for name in x:
            assert_within_bound(x[name], out[name], "rel", 1e-2)
            a, b = enc.store.get("default", name), dec.store.get("default", name)
            assert a.round == b.round and a.digest() == b.digest()
            for key in a:
                assert same_bits(a[key], b[key])
        if predictor != "paper":  # the history is of the difference, not of x
            st_ = dec.store.get("default", "fc.weight")
            diff = out["fc.weight"].astype(np.float64) - glob["fc.weight"]
            assert np.array_equal(st_["sign"], np.sign(diff.astype(np.float32)).reshape(-1))
        with pytest.raises(fedpress.ReferenceMismatchError):
            fedpress.UpdateDecoder(limits=TRUSTED).decode(blob, reference=_model(13))
        glob = {k: (0.5 * (glob[k] + out[k])).astype(np.float32) for k in glob}
    plain = fedpress.UpdateEncoder(_plan({"id": "gaeb", "predictor": predictor}), "rel",
                                   1e-2).encode(x)
    assert sizes[-1] < len(plain)


# -- found in review ---------------------------------------------------------------------------
@pytest.mark.parametrize("codec", REF_CODECS)
def test_crafted_shape_against_the_reference_is_a_format_error(codec: str) -> None:
    """A record declaring another shape than the reference its digest matches."""
    ref = _model(14)["fc.weight"]
    x = _updated({"fc.weight": ref})
    blob = fedpress.UpdateEncoder(_plan(codec), "rel", 1e-3).encode(
        x, reference={"fc.weight": ref})
    fr = unpack(blob)
    rec = fr.records[0]
    crafted = pack(Frame(KIND_UPDATE, fr.codecs, [
        Record(rec.name, rec.codec_index, fedpress.TensorSpec((50, 64), rec.spec.dtype),
               rec.payload, rec.state, rec.reference)], fr.meta))
    with pytest.raises(fedpress.FormatError):
        fedpress.UpdateDecoder(limits=TRUSTED).decode(crafted, reference={"fc.weight": ref})
