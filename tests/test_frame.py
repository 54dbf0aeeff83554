"""Wire format: layout facts, caps, corruption, and golden frames of older versions."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

import fedpress
from fedpress.frame import MAGIC, VERSION, Frame, Record, pack, unpack

from .common import TRUSTED
from .make_golden import golden_inputs

DATA = Path(__file__).parent / "data"
GOLDEN = sorted(DATA.glob("golden_v1_*.fpz"))


def _refresh_crc(body: bytes) -> bytes:
    return body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")


def test_layout_prefix_and_checksum(rng: np.random.Generator) -> None:
    blob = fedpress.compress(rng.standard_normal(100).astype(np.float32), codec="zstd")
    assert blob[:4] == MAGIC and blob[4] == VERSION and blob[5] == ord("T") and blob[6] == 0
    assert int.from_bytes(blob[-4:], "little") == zlib.crc32(blob[:-4])


def test_golden_frames_exist() -> None:
    names = {p.stem.removeprefix("golden_v1_") for p in GOLDEN}
    assert {"sz3", "sz2", "zfp", "szx", "fpz", "fpz2_smooth", "fpz2_grad", "fpz2_lanes",
            "fpz2_lorenzo2d", "zstd", "blosc-lz", "lz4", "raw", "update_fedsz", "grad_topk",
            "grad_qsgd", "grad_terngrad", "grad_signsgd", "update_grad_dgc",
            "update_grad_stc", "update_grad_powersgd", "update_grad_ef_topk"} <= names


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_golden_frames_still_decode(path: Path) -> None:
    expected = np.load(DATA / "golden_v1_expected.npz")
    name = path.stem.removeprefix("golden_v1_")
    blob = path.read_bytes()
    inputs = golden_inputs()
    if name.startswith("update"):
        out = fedpress.decode_update(blob, TRUSTED)
        for k, v in out.items():
            assert v.tobytes() == expected[f"{name}/{k}"].tobytes()
        assert out["bn.num_batches_tracked"] == 3
    else:
        y = fedpress.decompress(blob, TRUSTED)
        assert y.tobytes() == expected[name].tobytes(), "decoder output changed"
        sources = {"fpz2_grad": "grad", "fpz2_lanes": "burst", "fpz2_lorenzo2d": "surface"}
        if name in ("sz3", "sz2", "zfp", "szx", "fpz", "fpz2_smooth", *sources):
            x = inputs[sources.get(name, "smooth")].astype(np.float64)
            fin = np.isfinite(x)
            rel = {"fpz2_grad": 1e-2, "fpz2_lorenzo2d": 1e-4}.get(name, 1e-3)
            eb = rel * (x[fin].max() - x[fin].min())
            assert np.abs(y.astype(np.float64)[fin] - x[fin]).max() <= eb
        elif name.startswith("grad_"):  # lossy without a bound: the bytes above decide
            assert y.shape == inputs["grad"].shape
        else:
            assert np.array_equal(y, inputs["ints"])


def test_truncations_and_bitflips_are_format_errors(rng: np.random.Generator) -> None:
    sd = {"a.weight": rng.standard_normal(3000).astype(np.float32),
          "b": np.arange(10, dtype=np.int32)}
    blob = fedpress.encode_update(sd, plan="sz3")
    for n in range(len(blob)):
        with pytest.raises(fedpress.FormatError):
            fedpress.decode_update(blob[:n], TRUSTED)
    for pos in range(0, len(blob), max(1, len(blob) // 300)):
        bad = bytearray(blob)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(fedpress.FormatError):
            fedpress.decode_update(bytes(bad), TRUSTED)
    with pytest.raises(fedpress.FormatError):
        fedpress.decode_update(blob + b"\0", TRUSTED)


def test_wrong_magic_version_kind_flags() -> None:
    blob = fedpress.compress(np.zeros(10, np.float32), codec="zstd")
    cases = {
        "magic": b"XXXX" + blob[4:],
        "version": blob[:4] + bytes([VERSION + 1]) + blob[5:],
        "kind": blob[:5] + b"Q" + blob[6:],
    }
    for what, bad in cases.items():
        with pytest.raises(fedpress.FormatError, match=what if what != "kind" else "kind"):
            fedpress.decompress(bad, TRUSTED)
    flagged = _refresh_crc(blob[:6] + b"\x01" + blob[7:-4])
    with pytest.raises(fedpress.FormatError, match="flags"):
        fedpress.decompress(flagged, TRUSTED)
    for junk in (b"", b"\x89FPZ", "text", None, 12):
        with pytest.raises(fedpress.FormatError):
            fedpress.decompress(junk, TRUSTED)  # type: ignore[arg-type]


def _frame_with(spec_shape: tuple[int, ...], payload: bytes = b"", codec: str = "zstd",
                dtype: np.dtype = np.dtype(np.float32)) -> bytes:  # noqa: B008
    rec = Record("", 0, fedpress.TensorSpec(spec_shape, dtype), payload)
    return pack(Frame(ord("T"), [{"id": codec, "level": 3}], [rec]))


def test_declared_sizes_checked_against_caps_before_allocating() -> None:
    # a 2**40-element tensor declared by a 60-byte frame: refused, nothing allocated
    with pytest.raises(fedpress.FormatError, match="limit"):
        fedpress.decompress(_frame_with((1 << 20, 1 << 20), b"\0" * 8), TRUSTED)
    small = fedpress.Limits(max_tensor_elements=100)
    blob = fedpress.compress(np.zeros(1000, np.float32), codec="sz3")
    with pytest.raises(fedpress.FormatError, match="limit"):
        fedpress.decompress(blob, limits=small)
    tiny_total = fedpress.Limits(max_total_bytes=1000)
    with pytest.raises(fedpress.FormatError, match="limit"):
        fedpress.decode_update(fedpress.encode_update(
            {"a": np.zeros(200, np.float32), "b": np.zeros(200, np.float32)}, plan="zstd"),
            limits=tiny_total)
    # a constant tensor is tiny on the wire but big decoded: caps apply to decoded size
    const = fedpress.compress(np.ones(5000, np.float32), codec="sz3")
    assert len(const) < 128
    with pytest.raises(fedpress.FormatError):
        fedpress.decompress(const, limits=fedpress.Limits(max_total_bytes=10_000))


def test_decompression_bomb_in_lossless_payload() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\0" * (1 << 24))
    with pytest.raises(fedpress.FormatError):
        fedpress.decompress(_frame_with((10,), bomb), TRUSTED)
    z = zlib.compress(b"\0" * (1 << 24))
    with pytest.raises(fedpress.FormatError):
        fedpress.decompress(_frame_with((10,), z, codec="zlib"), TRUSTED)


def test_codec_allow_list(rng: np.random.Generator) -> None:
    blob = fedpress.compress(rng.standard_normal(2000).astype(np.float32), codec="sz2")
    only = fedpress.Limits(codecs=frozenset({"sz3", "zstd"}))
    with pytest.raises(fedpress.FormatError, match="not accepted"):
        fedpress.decompress(blob, limits=only)
    ok = fedpress.compress(rng.standard_normal(2000).astype(np.float32), codec="sz3")
    assert fedpress.decompress(ok, limits=only).shape == (2000,)
    dec = fedpress.UpdateDecoder(limits=only)
    with pytest.raises(fedpress.FormatError, match="not accepted"):
        dec.decode(fedpress.encode_update({"w.weight": rng.standard_normal(2000)}))


def test_unknown_codec_and_bad_config_are_format_errors() -> None:
    with pytest.raises(fedpress.FormatError, match="not registered"):
        fedpress.decompress(pack(Frame(ord("T"), [{"id": "nope"}],
                                       [Record("", 0, fedpress.TensorSpec((1,), np.dtype("f4")),
                                               b"x")])), TRUSTED)
    with pytest.raises(fedpress.FormatError, match="invalid config"):
        fedpress.decompress(pack(Frame(ord("T"), [{"id": "sz3", "eb": -5}],
                                       [Record("", 0, fedpress.TensorSpec((1,), np.dtype("f4")),
                                               b"x")])), TRUSTED)


def test_duplicate_names_and_bad_json_rejected() -> None:
    spec = fedpress.TensorSpec((1,), np.dtype("f4"))
    raw = np.zeros(1, np.float32).tobytes()
    import lz4.block

    payload = lz4.block.compress(raw, store_size=False)
    dup = pack(Frame(ord("U"), [{"id": "lz4", "level": 0}],
                     [Record("a", 0, spec, payload), Record("a", 0, spec, payload)]))
    with pytest.raises(fedpress.FormatError, match="twice"):
        fedpress.decode_update(dup, TRUSTED)
    good = pack(Frame(ord("U"), [{"id": "lz4", "level": 0}], [Record("a", 0, spec, payload)]))
    assert fedpress.decode_update(good, TRUSTED)["a"].shape == (1,)
    i = good.index(b'{"id"')
    bad = good[:i] + b'[    "id"' + good[i + 9 : -4]
    with pytest.raises(fedpress.FormatError, match="JSON"):
        fedpress.decode_update(_refresh_crc(bad), TRUSTED)


def test_inspect_reports_sizes_and_bounds(rng: np.random.Generator) -> None:
    x = rng.standard_normal((100, 50)).astype(np.float32)
    blob = fedpress.compress(x, codec="sz3", eb=1e-3)
    info = fedpress.inspect(blob)
    assert info["kind"] == "tensor" and info["frame_bytes"] == len(blob)
    assert info["original_bytes"] == x.nbytes
    assert info["cr"] == pytest.approx(x.nbytes / len(blob))
    t = info["tensors"][0]
    assert t["shape"] == [100, 50] and t["dtype"] == "float32"
    assert t["eb_abs"] == pytest.approx(1e-3 * float(x.max() - x.min()))
    assert t["payload_bytes"] < len(blob)
    assert unpack(blob).records[0].spec.shape == (100, 50)
