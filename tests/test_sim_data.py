"""Simulator data: the IDX reader, Fashion-MNIST / digits / CIFAR-10 loaders (CIFAR-10 on
small files written here) and the seeded client partitions."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import fedpress
from fedpress.sim import data


def idx_bytes(arr: np.ndarray, type_byte: int) -> bytes:
    """An IDX file written independently of the reader: header, big-endian dims and values."""
    dtype = data.IDX_TYPES[type_byte]
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
    out = data.read_idx(path)
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
    arr = np.array(values, dtype=data.IDX_TYPES[type_byte])
    path = tmp_path / "v.idx1"
    path.write_bytes(idx_bytes(arr, type_byte))
    out = data.read_idx(path)
    assert out.dtype.isnative
    assert out.shape == (4,)
    np.testing.assert_array_equal(out, np.array(values, dtype=out.dtype))


def test_labels_file_is_one_dimensional(tmp_path: Path) -> None:
    labels = np.array([9, 0, 0, 3, 0, 2], dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(labels, 0x08)))
    np.testing.assert_array_equal(data.read_idx(path), labels)


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
    with pytest.raises(data.IDXFormatError, match=match):
        data.parse_idx(raw)
    assert issubclass(data.IDXFormatError, ValueError)


def test_missing_dataset_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist(tmp_path)


# ------------------------------------------------------------------ datasets
def test_digits_loads_and_splits_reproducibly() -> None:
    pytest.importorskip("sklearn")
    d = data.load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797 and d.x_train.dtype == np.uint8
    assert d.x_train.max() == 255 and set(np.unique(d.y_train)) == set(range(10))
    again = data.digits()
    assert np.array_equal(again.y_test, d.y_test)


def _write_cifar(root: Path, per_batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    written = {}
    for name in (*data.CIFAR_TRAIN, *data.CIFAR_TEST):
        labels = rng.integers(0, 10, per_batch).astype(np.uint8)
        pixels = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        (root / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
        written[name] = pixels.reshape(-1, 3, 32, 32)
        written[name + ":labels"] = labels
    return written


def test_cifar10_binary_batches(tmp_path: Path, rng: np.random.Generator) -> None:
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    written = _write_cifar(root, 7, rng)
    d = data.load_dataset("cifar10", tmp_path)  # the parent directory works too
    assert d.x_train.shape == (35, 3, 32, 32) and d.x_test.shape == (7, 3, 32, 32)
    assert np.array_equal(d.x_train[7:14], written["data_batch_2.bin"])
    assert np.array_equal(d.y_test, written["test_batch.bin:labels"])


def test_cifar10_errors_name_the_fix(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(fedpress.ConfigError, match="--data-dir"):
        data.load_dataset("cifar10")
    with pytest.raises(fedpress.ConfigError, match=r"missing: data_batch_1\.bin"):
        data.load_dataset("cifar10", tmp_path)
    _write_cifar(tmp_path, 2, rng)
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(fedpress.ConfigError, match="3073-byte record"):
        data.load_dataset("cifar10", tmp_path)


def test_unknown_or_missing_datasets_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(fedpress.ConfigError, match="choose one of fashion-mnist, digits"):
        data.load_dataset("mnist-ish")
    with pytest.raises(fedpress.ConfigError, match="apt-get install dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist", tmp_path)


# ---------------------------------------------------------------- partitions
LABELS = np.repeat(np.arange(10), 100)


@pytest.mark.parametrize("how", data.PARTITIONS)
def test_partitions_are_disjoint_covering_and_seeded(how: str) -> None:
    parts = data.partition(LABELS, 7, how, alpha=0.3, seed=5)
    allidx = np.concatenate(parts)
    assert len(parts) == 7 and all(p.size for p in parts)
    assert np.array_equal(np.sort(allidx), np.arange(LABELS.size))
    again = data.partition(LABELS, 7, how, alpha=0.3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = data.partition(LABELS, 7, how, alpha=0.3, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def _classes_per_client(parts: list[np.ndarray]) -> float:
    return float(np.mean([np.unique(LABELS[p]).size for p in parts]))


def test_label_skew_follows_the_setting() -> None:
    iid = data.partition(LABELS, 10, "iid")
    assert max(abs(p.size - 100) for p in iid) <= 1 and _classes_per_client(iid) == 10
    assert _classes_per_client(data.partition(LABELS, 10, "shards", shards_per_client=2)) <= 2
    skewed = _classes_per_client(data.partition(LABELS, 10, "dirichlet", alpha=0.05, seed=1))
    mild = _classes_per_client(data.partition(LABELS, 10, "dirichlet", alpha=100.0, seed=1))
    assert skewed < 5 < mild


@pytest.mark.parametrize("kwargs,match", [
    ({"clients": 0}, "clients must be"),
    ({"clients": 2000}, "cannot be split"),
    ({"clients": 4, "how": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
    ({"clients": 4, "how": "shards", "shards_per_client": 0}, "shards"),
    ({"clients": 4, "how": "by-vibes"}, "choose one of iid, dirichlet, shards"),
])
def test_bad_partitions_are_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        data.partition(LABELS, **kwargs)
