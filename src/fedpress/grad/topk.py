"""Sparsifiers: ``topk``, ``randk`` and ``threshold``.

- ``topk`` keeps the ``k = ceil(ratio * n)`` entries of largest magnitude
  (Aji & Heafield, "Sparse Communication for Distributed Gradient Descent",
  EMNLP 2017; Stich et al., "Sparsified SGD with Memory", NeurIPS 2018). With
  ``approx=True`` the threshold is the top-``ratio`` quantile of a random sample of
  ``sample`` of the magnitudes, as in DGC (Lin et al., "Deep Gradient Compression",
  ICLR 2018): the entries over it are kept, trimmed to the ``k`` largest when the
  sample's guess lets more than ``k`` through, so ``k`` is an upper bound (on
  Gaussian data about 0.85-0.9 ``k`` are kept on average; a larger ``sample``
  tightens it).
- ``randk`` keeps ``k`` positions drawn from a seed (Stich et al. 2018); the
  payload carries the 8-byte seed instead of the indices, and both ends draw the
  same positions. ``scale=True`` multiplies by ``n / k``, which makes it unbiased.
- ``threshold`` keeps every entry with ``|x| >= tau`` (Strom, "Scalable
  distributed DNN training using commodity GPU cloud computing", Interspeech 2015).

All three are stateless; wrap them in error feedback with ``plan="ef:topk"``.

``topk`` and ``threshold`` send the kept values raw (``values="raw"``, the default)
or coded by ``fpz`` under the relative bound ``values_eb`` (``values="fpz"``; payload
in :mod:`fedpress.grad.base`): each decoded kept value lies within ``values_eb *
(max - min)`` of the kept values of the true one (the bound holds on the tensor's
dtype, any float dtype), the other entries are exactly zero. The reconstruction
handed to error feedback is the decoded one, so ``ef:topk(values="fpz")`` feeds
back the quantization error with the dropped entries. The ``fpz`` codec is part of
the codec's tree (:meth:`fedpress.abc.Codec.children`): a decoder's allow-list must
accept it too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import Codec, TensorSpec
from ..dtypes import le_bytes
from ..eblc.base import ErrorBoundedCodec
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from .base import (
    GradientCodec,
    check_ratio,
    check_seed,
    check_values,
    data_rng,
    finite_values,
    keep_count,
    read_sparse,
    scatter,
    sparse_payload,
    sparse_peak_bytes,
    value_coder,
)

#: bytes per position :func:`draw_positions` allocates at its peak (the ``2 k`` drawn
#: words, their sort with ``np.unique``'s copies and permutation, the positions kept):
#: 116 measured at most, at small densities (102 at ``k = n / 2``)
DRAW_BYTES_PER_POSITION = 120
#: the fewest positions :func:`draw_positions` is charged for (it draws 16 at least)
DRAW_MIN_POSITIONS = 64


def top_indices(a: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the ``k`` largest entries of ``a`` (1-D, non-negative)."""
    if k >= a.size:
        return np.arange(a.size, dtype=np.int64)
    return np.sort(np.argpartition(a, a.size - k)[a.size - k:]).astype(np.int64)


def approx_top_indices(a: np.ndarray, k: int, sample: float,
                       rng: np.random.Generator) -> np.ndarray:
    """DGC's sampled threshold: positions of ``a`` over the sample's top quantile,
    at most ``k`` of them (trimmed exactly when the guess lets too many through)."""
    m = max(1, min(a.size, int(np.ceil(sample * a.size))))
    if m >= a.size or k >= a.size:
        return top_indices(a, k)
    picks = a[rng.integers(0, a.size, m)]
    kk = max(1, round(k * m / a.size))
    thr = np.partition(picks, m - kk)[m - kk]
    idx = np.flatnonzero(a >= thr).astype(np.int64)
    if idx.size > k:  # too many: an exact top-k among the candidates
        idx = np.sort(idx[top_indices(a[idx], k)])
    return idx


def draw_positions(draw: int, n: int, k: int) -> np.ndarray:
    """``k`` distinct sorted positions in ``[0, n)`` from the seed ``draw``.

    Part of the ``randk`` format, so it uses only what NumPy keeps stable across
    versions (NEP 19: a bit generator's raw stream): the 64-bit words of
    ``PCG64(draw)`` taken modulo ``n`` in stream order, keeping the first ``k``
    distinct ones (for ``k > n / 2``: every position but the first ``n - k``
    distinct ones). Memory is O(k) (:func:`draw_peak_bytes`); the modulo bias is below
    ``n / 2**64``.
    """
    if k > n // 2:
        keep = np.ones(n, dtype=bool)
        keep[draw_positions(draw, n, n - k)] = False
        return np.flatnonzero(keep).astype(np.int64)
    bits = np.random.PCG64(draw)
    cand = np.zeros(0, dtype=np.uint64)
    while True:
        uniq, first = np.unique(cand, return_index=True)
        if uniq.size >= k:
            return np.sort(cand[np.sort(first)[:k]]).astype(np.int64)
        more = bits.random_raw(max(16, 2 * (k - uniq.size))) % np.uint64(n)
        cand = np.concatenate([cand, more])


def draw_peak_bytes(n: int, k: int) -> int:
    """The most :func:`draw_positions` allocates for ``k`` of ``n`` positions, the
    positions it returns included: for ``k > n / 2`` a mask of ``n`` bytes beside the
    ``n - k`` positions left out, then the ``k`` positions (twice)."""
    if k > n // 2:
        return n + max(draw_peak_bytes(n, n - k), 16 * k)
    return DRAW_BYTES_PER_POSITION * max(k, DRAW_MIN_POSITIONS)


class SparseCodec(GradientCodec):
    """Base of ``topk`` and ``threshold``: the sparse payload, its kept values raw or
    coded by ``fpz`` (options ``values`` and ``values_eb``)."""

    values: str = "raw"
    values_eb: float | None = None
    _coder: ErrorBoundedCodec | None = None

    def _set_values(self, values: str, values_eb: float | None) -> None:
        self.values, self.values_eb = check_values(self.codec_id, values, values_eb)
        self._coder = value_coder(self.values, self.values_eb)

    def max_kept(self, n: int) -> int:
        """The most entries a payload for ``n`` values may keep."""
        return n

    def get_config(self) -> dict[str, Any]:
        """The configuration; ``values`` and ``values_eb`` only when the values are coded
        (a raw-values codec's config, hence its frames, is what it was before them)."""
        cfg = super().get_config()
        if self._coder is None:
            cfg.pop("values", None)
            cfg.pop("values_eb", None)
        return cfg

    def children(self) -> tuple[Codec, ...]:
        return () if self._coder is None else (self._coder,)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """What reading the most entries a payload may keep takes, the output included
        (:func:`fedpress.grad.base.sparse_peak_bytes`: 24 bytes an entry for the indices,
        before the output), with coded values ``fpz``'s peak on them."""
        k = self.max_kept(spec.size)
        inner = None if self._coder is None else \
            self._coder.decode_peak_bytes(TensorSpec((k,), np.dtype(spec.dtype)))
        return sparse_peak_bytes(spec, k, inner)

    def _sparse(self, idx: np.ndarray, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        """Payload and reconstruction of keeping the entries of ``x`` at ``idx``."""
        return sparse_payload(idx, x.reshape(-1)[idx], x, self._coder)

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        cap = self.max_kept(spec.size)  # what decode_peak_bytes counts on
        return scatter(*read_sparse(rd, spec, cap, coder=self._coder), spec)


@register_codec
class TopK(SparseCodec):
    """Keep the ``ratio`` share of entries of largest magnitude.

    Parameters
    ----------
    ratio : float
        Share of the entries kept, in (0, 1]: ``k = ceil(ratio * n)``, at least 1.
    approx : bool
        Select with DGC's sampled threshold (at most ``k`` kept).
    sample : float
        Share of the magnitudes the sampled threshold looks at.
    seed : int
        Seed of the sample (mixed with the tensor's bytes).
    values : {"raw", "fpz"}
        How the kept values travel: raw in the tensor's dtype, or coded by ``fpz``.
    values_eb : float, optional
        ``values="fpz"`` only: the relative bound, in (0, 1), on the kept values'
        range (default 1e-2).
    """

    codec_id = "topk"
    config_keys: ClassVar[tuple[str, ...]] = ("ratio", "approx", "sample", "seed", "values",
                                              "values_eb")

    def __init__(self, ratio: float = 0.01, approx: bool = False, sample: float = 0.01,
                 seed: int = 0, values: str = "raw", values_eb: float | None = None) -> None:
        self.ratio = check_ratio(self.codec_id, ratio)
        if not isinstance(approx, bool):
            raise ConfigError(f"codec 'topk': approx must be true or false, got {approx!r}")
        self.approx = approx
        self.sample = check_ratio(self.codec_id, sample)
        self.seed = check_seed(self.codec_id, seed)
        self._set_values(values, values_eb)

    def max_kept(self, n: int) -> int:
        return keep_count(n, self.ratio)

    def select(self, x: np.ndarray) -> np.ndarray:
        flat = np.abs(x.reshape(-1))
        k = keep_count(x.size, self.ratio)
        if self.approx:
            return approx_top_indices(flat, k, self.sample, data_rng(self.seed, x))
        return top_indices(flat, k)

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        return self._sparse(self.select(x), x)


@register_codec
class Threshold(SparseCodec):
    """Keep the entries with ``|x| >= tau``.

    Parameters
    ----------
    tau : float
        The magnitude threshold, finite and >= 0.
    values, values_eb
        As for :class:`TopK`.
    """

    codec_id = "threshold"
    config_keys: ClassVar[tuple[str, ...]] = ("tau", "values", "values_eb")

    def __init__(self, tau: float = 1e-3, values: str = "raw",
                 values_eb: float | None = None) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0 \
                or not np.isfinite(tau):
            raise ConfigError(f"codec 'threshold': tau must be a finite number >= 0, got "
                              f"{tau!r}")
        self.tau = float(tau)
        self._set_values(values, values_eb)

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        flat = x.reshape(-1)
        return self._sparse(np.flatnonzero(np.abs(flat) >= self.tau).astype(np.int64), x)


@register_codec
class RandK(GradientCodec):
    """Keep ``ratio`` of the entries at positions drawn from a seed sent in the payload.

    Layout: ``u64`` draw seed, then the ``k`` values (little-endian, tensor dtype).
    """

    codec_id = "randk"
    config_keys: ClassVar[tuple[str, ...]] = ("ratio", "seed", "scale")

    def __init__(self, ratio: float = 0.01, seed: int = 0, scale: bool = False) -> None:
        self.ratio = check_ratio(self.codec_id, ratio)
        self.seed = check_seed(self.codec_id, seed)
        if not isinstance(scale, bool):
            raise ConfigError(f"codec 'randk': scale must be true or false, got {scale!r}")
        self.scale = scale

    @staticmethod
    def positions(draw: int, n: int, k: int) -> np.ndarray:
        """The ``k`` sorted positions both ends draw from ``draw`` (:func:`draw_positions`)."""
        return draw_positions(draw, n, k)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The values read, the positions drawn beside them (:func:`draw_peak_bytes`:
        about 120 bytes a position up to ``k = n / 2``), then the output beside both."""
        n, size = spec.size, spec.dtype.itemsize
        k = keep_count(n, self.ratio)
        return max(size * k + draw_peak_bytes(n, k), spec.nbytes + (8 + size) * k)

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        k = keep_count(x.size, self.ratio)
        draw = int(data_rng(self.seed, x).integers(0, 2**63))
        idx = self.positions(draw, x.size, k)
        values = x.reshape(-1)[idx]
        if self.scale and k:
            with np.errstate(over="ignore"):
                values = (values.astype(np.float64) * (x.size / k)).astype(x.dtype)
            if not np.isfinite(values).all():
                raise ConfigError(f"codec 'randk': scaling by n/k overflows {x.dtype}; use "
                                  "scale=false or a wider dtype")
        w = Writer()
        w.raw(np.uint64(draw).astype("<u8").tobytes())
        w.raw(le_bytes(values))
        return w.getvalue(), scatter(idx, values, TensorSpec.of(x))

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        draw = int(rd.array(np.uint64, 1)[0])
        if draw >= 2**63:
            raise FormatError("randk payload: bad draw seed")
        k = keep_count(spec.size, self.ratio)
        values = finite_values(rd.array(spec.dtype, k), "randk payload")
        return scatter(self.positions(draw, spec.size, k), values, spec)
