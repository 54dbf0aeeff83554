"""The Fashion-MNIST demo: its IDX reader (always) and a tiny end-to-end run (with the data)."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedpress import demo


def idx_bytes(arr: np.ndarray, type_byte: int) -> bytes:
    """An IDX file written independently of the reader: header, big-endian dims and values."""
    dtype = demo.IDX_TYPES[type_byte]
    head = bytes([0, 0, type_byte, arr.ndim])
    head += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(dtype).tobytes()


# ------------------------------------------------------------------ IDX reader
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_round_trips_uint8_images(tmp_path: Path, compressed: bool) -> None:
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(imgs, 0x08)
    path = tmp_path / ("x.idx3-ubyte.gz" if compressed else "x.idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    out = demo.read_idx(path)
    assert out.dtype == np.uint8
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, imgs)


@pytest.mark.parametrize("type_byte,values", [
    (0x09, [-128, -1, 0, 127]),
    (0x0B, [-32768, -2, 7, 32767]),
    (0x0C, [-(2**31), -5, 9, 2**31 - 1]),
    (0x0D, [-1.5, 0.0, 3.25, 1e30]),
    (0x0E, [-1e300, -0.5, 2.0, 1e-300]),
])
def test_read_idx_decodes_big_endian_types(tmp_path: Path, type_byte: int,
                                           values: list[float]) -> None:
    arr = np.array(values, dtype=demo.IDX_TYPES[type_byte])
    path = tmp_path / "v.idx1"
    path.write_bytes(idx_bytes(arr, type_byte))
    out = demo.read_idx(path)
    assert out.dtype.isnative
    assert out.shape == (4,)
    np.testing.assert_array_equal(out, np.array(values, dtype=out.dtype))


def test_labels_file_is_one_dimensional(tmp_path: Path) -> None:
    labels = np.array([9, 0, 0, 3, 0, 2], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels, 0x08)))
    np.testing.assert_array_equal(demo.read_idx(path), labels)


@pytest.mark.parametrize("raw,match", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "first two bytes"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type byte"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x01", "ends early"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "needs 11 bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "needs 9 bytes"),
])
def test_malformed_idx_raises_idx_format_error(raw: bytes, match: str) -> None:
    with pytest.raises(demo.IDXFormatError, match=match):
        demo.parse_idx(raw)
    assert issubclass(demo.IDXFormatError, ValueError)


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        demo.load_fashion_mnist(tmp_path)


# ------------------------------------------------------------------ end to end
HAVE_DATA = all((demo.DATA_DIR / name).is_file() for name in demo.FILES.values())


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not HAVE_DATA, reason=f"Fashion-MNIST not in {demo.DATA_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_demo_tiny_run_rows_are_consistent(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    result = demo.main(["--limit", "512", "--test-limit", "500", "--repeats", "1",
                        "--out", str(tmp_path)])
    meta, rows = result["meta"], result["rows"]
    assert meta["train_samples"] == 512 and meta["test_samples"] == 500
    assert 0.0 <= meta["test_acc"] <= 1.0
    assert meta["params"] == 421_642

    lossy = [r for r in rows if r["lossy"]]
    lossless = [r for r in rows if not r["lossy"]]
    assert meta["codecs"], "no lossy codec available"
    assert {r["lossy"] for r in lossy} == set(meta["codecs"])
    assert len(lossy) == 3 * len(meta["codecs"])
    assert [r["plan"] for r in lossless] == list(demo.LOSSLESS_PLANS)
    for r in rows:
        assert r["frame_bytes"] > 0 and r["raw_bytes"] == 421_642 * 4
        assert r["encode_ms"] > 0 and r["decode_ms"] > 0
        assert 0.0 <= r["test_acc"] <= 1.0
        assert math.isclose(r["acc_delta"], r["test_acc"] - meta["test_acc"])
    for r in lossy:
        assert r["cr"] > 1.0, r
        assert r["lossy_tensors"] == 3  # conv2/fc1/fc2 weights; conv1.weight has 288 elements
        assert 0.0 < r["max_err_over_eb"] <= 1.0, r
    for r in lossless:  # bit-exact: the decoded model is the trained one
        assert r["lossy_tensors"] == 0 and r["max_err_over_eb"] == 0.0
        assert r["test_acc"] == meta["test_acc"]
    # a looser bound never gives a smaller frame (same codec)
    for c in meta["codecs"]:
        sizes = [r["frame_bytes"] for r in lossy if r["lossy"] == c]
        assert sizes == sorted(sizes), (c, sizes)

    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    with open(tmp_path / "demo_results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["plan"] for t in table] == [r["plan"] for r in rows]
