"""Datasets and client partitions of the federated-learning simulator.

Loaders (all return a :class:`Dataset` of uint8/float images in N x C x H x W and
int64 labels; none downloads anything):

``fashion-mnist``
    the IDX files of the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``), read by a small IDX reader.
``digits``
    scikit-learn's bundled 8x8 digits (1,797 images; needs nothing else: the
    quick choice for tests).
``cifar10``
    the binary version of CIFAR-10 (``data_batch_1.bin`` .. ``data_batch_5.bin``,
    ``test_batch.bin``: records of one label byte and 3,072 pixel bytes) from a
    directory the user points at.

Partitions (seeded; each returns one index array per client, disjoint, covering
every sample): ``iid``, ``dirichlet`` (label skew with concentration ``alpha``)
and ``shards`` (sorted by label, cut into ``shards_per_client`` shards each).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
#: IDX type byte -> big-endian numpy dtype
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXFormatError(ValueError):
    """A file that is not a well-formed IDX file."""


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse the bytes of an IDX file (the MNIST format) into a native-endian array.

    Layout: two zero bytes, a type byte (``IDX_TYPES``), the number of
    dimensions, then one big-endian uint32 per dimension, then the values
    (big-endian, C order).
    """
    if len(raw) < 4:
        raise IDXFormatError(f"IDX data too short for a header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError("not an IDX file: the first two bytes must be zero")
    dtype = IDX_TYPES.get(raw[2])
    if dtype is None:
        raise IDXFormatError(f"unknown IDX type byte {raw[2]:#04x}")
    ndim = raw[3]
    if ndim == 0:
        raise IDXFormatError("IDX file declares 0 dimensions")
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise IDXFormatError(f"IDX header declares {ndim} dimensions but the data ends early")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dt = np.dtype(dtype)
    count = 1
    for d in dims:
        count *= d
    expected = head + count * dt.itemsize
    if len(raw) != expected:
        raise IDXFormatError(f"IDX file of shape {dims} and type {dt} needs {expected} bytes, "
                             f"has {len(raw)}")
    arr = np.frombuffer(raw, dtype=dt, count=count, offset=head).reshape(dims)
    return arr.astype(dt.newbyteorder("="))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed (detected by its magic bytes) or not."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return parse_idx(raw)


def load_fashion_mnist(data_dir: str | os.PathLike[str] = DATA_DIR,
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train images, train labels, test images, test labels (images N x 28 x 28 uint8)."""
    root = Path(data_dir)
    missing = [name for name in FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (missing: {', '.join(missing)}). "
            "Install the Debian package: apt-get install dataset-fashion-mnist "
            "(after apt-get update), or pass --data-dir."
        )
    arrs = [read_idx(root / FILES[k]) for k in
            ("train_images", "train_labels", "test_images", "test_labels")]
    xtr, ytr, xte, yte = arrs
    if xtr.shape[1:] != (28, 28) or xte.shape[1:] != (28, 28) or len(xtr) != len(ytr) \
            or len(xte) != len(yte):
        raise IDXFormatError(f"unexpected Fashion-MNIST shapes {[a.shape for a in arrs]}")
    return xtr, ytr, xte, yte


# ------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class Dataset:
    """Train and test splits: images N x C x H x W (uint8 or float32), labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST (1 x 28 x 28, 10 classes) from the Debian package's IDX files."""
    xtr, ytr, xte, yte = load_fashion_mnist(DATA_DIR if data_dir is None else data_dir)
    return Dataset("fashion-mnist", xtr[:, None], ytr.astype(np.int64), xte[:, None],
                   yte.astype(np.int64), 10)


def digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1 x 8 x 8, values 0..16 scaled to 0..255 uint8),
    split by a seeded shuffle."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("dataset 'digits' needs scikit-learn: pip install scikit-learn"
                          ) from None
    bunch = load_digits()
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = len(y) - round(test_fraction * len(y))
    tr, te = order[:cut], order[cut:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10)


CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = ("test_batch.bin",)
_CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 3 x 32 x 32 uint8) and labels of one CIFAR-10 binary batch file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD:
        raise ConfigError(f"{path}: not a CIFAR-10 binary batch ({raw.size} bytes is not a "
                          f"positive multiple of the {_CIFAR_RECORD}-byte record)")
    rec = raw.reshape(-1, _CIFAR_RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ConfigError(f"{path}: label {int(labels.max())} out of range 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def cifar10(data_dir: str | os.PathLike[str]) -> Dataset:
    """CIFAR-10 from a directory holding its binary batches (the 'binary version')."""
    root = Path(data_dir)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    missing = [n for n in CIFAR_TRAIN + CIFAR_TEST if not (root / n).is_file()]
    if missing:
        raise ConfigError(f"CIFAR-10 not found in {root} (missing: {', '.join(missing)}); "
                          "point --data-dir at the extracted 'CIFAR-10 binary version' "
                          "(cifar-10-batches-bin)")
    train = [read_cifar_batch(root / n) for n in CIFAR_TRAIN]
    xte, yte = read_cifar_batch(root / CIFAR_TEST[0])
    return Dataset("cifar10", np.concatenate([t[0] for t in train]),
                   np.concatenate([t[1] for t in train]), xte, yte, 10)


DATASETS = ("fashion-mnist", "digits", "cifar10")


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """A dataset by name (see ``DATASETS``); ``data_dir`` overrides where it is read."""
    if name == "fashion-mnist":
        try:
            return fashion_mnist(data_dir)
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    if name == "digits":
        return digits()
    if name == "cifar10":
        if data_dir is None:
            raise ConfigError("dataset 'cifar10' needs --data-dir: the directory of its "
                              "binary batches (nothing is downloaded)")
        return cifar10(data_dir)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


# ---------------------------------------------------------------- partitions
PARTITIONS = ("iid", "dirichlet", "shards")


def partition(labels: np.ndarray, clients: int, how: str = "iid", *, alpha: float = 0.5,
              shards_per_client: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Split sample indices among ``clients``: disjoint, covering, sorted per client.

    ``iid``: a seeded shuffle cut into near-equal parts. ``dirichlet``: for each
    class, proportions drawn from Dirichlet(``alpha``) over the clients (small
    ``alpha``: strong label skew). ``shards``: samples sorted by label, cut into
    ``clients * shards_per_client`` shards, each client gets that many at random.
    """
    n = len(labels)
    if clients < 1:
        raise ConfigError(f"clients must be >= 1, got {clients}")
    if n < clients:
        raise ConfigError(f"{n} samples cannot be split among {clients} clients")
    rng = np.random.default_rng(seed)
    if how == "iid":
        parts = np.array_split(rng.permutation(n), clients)
    elif how == "dirichlet":
        if not alpha > 0:
            raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
        parts = _dirichlet(np.asarray(labels), clients, alpha, rng)
    elif how == "shards":
        if shards_per_client < 1 or clients * shards_per_client > n:
            raise ConfigError(f"cannot cut {n} samples into {clients} x {shards_per_client} "
                              "shards")
        order = np.argsort(np.asarray(labels), kind="stable")
        shards = np.array_split(order, clients * shards_per_client)
        pick = rng.permutation(len(shards)).reshape(clients, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in pick]
    else:
        raise ConfigError(f"unknown partition {how!r}; choose one of {', '.join(PARTITIONS)}")
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(labels: np.ndarray, clients: int, alpha: float,
               rng: np.random.Generator) -> list[np.ndarray]:
    """Label-skewed split; redrawn (up to 100 times) until every client has a sample."""
    for _ in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            share = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(share)[:-1] * idx.size).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.concatenate(p) for p in parts]
        if min(p.size for p in out) > 0:
            return out
    raise ConfigError(f"dirichlet alpha={alpha} left a client without samples 100 times; "
                      "use fewer clients or a larger alpha")
