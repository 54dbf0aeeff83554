"""What the gradient compressors share: the lossy-codec base, finite-input checks,
seeded randomness, and the sparse payload (indices + values).

Gradient compressors are lossy without an error bound: they keep what matters for
descent (the largest entries, the signs, an unbiased estimate) and rely on error
feedback (:mod:`fedpress.grad.ef`) or unbiasedness for convergence. They take
floating tensors only and refuse NaN/Inf with a :class:`fedpress.ConfigError`
(a diverged client must be noticed, not averaged in).

Sparse payload layout (``topk``, ``threshold``, ``dgc``)::

    varint  k          number of kept entries (at most the codec's cap: ceil(ratio n)
                       for topk, n for threshold, the first warm-up round's for dgc)
    ...     indices    :mod:`fedpress.grad.indices` (cheapest of four codings)
    k x     values     the kept entries, little-endian, in the tensor's dtype

With ``values="fpz"`` (``topk``, ``threshold``) the values are instead the payload
of ``fpz`` (:mod:`fedpress.eblc.fpz`, relative bound ``values_eb``) of the ``k`` kept
entries as a 1-D array of the tensor's dtype, to the end of the payload: fpz decodes
exactly ``k`` values (its envelope carries no count of its own; ``k`` is read and
capped first), and the bound ``values_eb * (max - min)`` of the kept values holds on
the tensor's dtype.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import Codec, Scope, StatefulCodec, TensorSpec
from ..dtypes import le_bytes
from ..eblc.base import ErrorBoundedCodec
from ..errors import ConfigError, FormatError
from ..registry import get_codec
from .indices import read_indices, read_peak_bytes, write_indices

#: how the kept values of a sparse payload travel: raw, or coded by ``fpz``
VALUE_CODINGS = ("raw", "fpz")
#: the relative bound of ``values="fpz"`` when ``values_eb`` names none
DEFAULT_VALUES_EB = 1e-2


def check_ratio(codec_id: str, ratio: Any) -> float:
    """A density in (0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ConfigError(f"codec {codec_id!r}: ratio must be a number in (0, 1], got {ratio!r}")
    return float(ratio)


def check_seed(codec_id: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"codec {codec_id!r}: seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def check_values(codec_id: str, values: Any, values_eb: Any) -> tuple[str, float | None]:
    """``(values, values_eb)`` checked: ``values`` in :data:`VALUE_CODINGS`;
    ``values_eb`` a finite number in (0, 1) for ``"fpz"`` (None: :data:`DEFAULT_VALUES_EB`),
    None for ``"raw"`` (raw values are exact)."""
    if not isinstance(values, str) or values not in VALUE_CODINGS:
        raise ConfigError(f"codec {codec_id!r}: values must be one of {list(VALUE_CODINGS)}, "
                          f"got {values!r}")
    if values == "raw":
        if values_eb is not None:
            raise ConfigError(f"codec {codec_id!r}: values_eb applies to values='fpz' only "
                              "(raw values are sent exactly)")
        return values, None
    eb = DEFAULT_VALUES_EB if values_eb is None else values_eb
    if isinstance(eb, bool) or not isinstance(eb, (int, float)) or not math.isfinite(eb) \
            or not 0 < eb < 1:
        raise ConfigError(f"codec {codec_id!r}: values_eb must be a finite number in (0, 1) "
                          f"(relative to the kept values' range), got {values_eb!r}")
    return values, float(eb)


def value_coder(values: str, values_eb: float | None) -> ErrorBoundedCodec | None:
    """The codec of the kept values: None for raw values, else ``fpz`` under the
    relative bound ``values_eb``."""
    if values == "raw":
        return None
    coder = get_codec("fpz", mode="rel", eb=values_eb)
    assert isinstance(coder, ErrorBoundedCodec)
    return coder


def keep_count(n: int, ratio: float) -> int:
    """Entries kept at density ``ratio``: ``ceil(ratio * n)``, at least 1 (0 if n is 0)."""
    return min(n, max(1, int(np.ceil(ratio * n)))) if n else 0


def data_rng(seed: int, x: np.ndarray) -> np.random.Generator:
    """A generator seeded by ``seed`` and the tensor's bytes: reproducible for the same
    input, different from tensor to tensor and round to round."""
    return np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(x).view(np.uint8))])


def require_finite(codec_id: str, x: np.ndarray) -> None:
    """ConfigError if ``x`` holds NaN or Inf."""
    with np.errstate(invalid="ignore"):  # signalling NaNs of float16
        finite = bool(np.isfinite(x).all()) if x.size else True
    if not finite:
        raise ConfigError(f"codec {codec_id!r}: the tensor holds NaN or Inf; gradient "
                          "compressors need finite values")


class StatefulGradientCodec(StatefulCodec):
    """Base of the stateful gradient compressors (``dgc``, ``stc``, ``powersgd``):
    lossy, floating tensors only, finite values, state on the sender's side only."""

    lossy = True
    error_bounded = False
    scope = Scope.SENDER

    def check_input(self, x: np.ndarray) -> None:
        super().check_input(x)
        require_finite(self.codec_id, x)


class GradientCodec(Codec):
    """Base of the gradient compressors: lossy, floating tensors only, finite values."""

    lossy = True
    error_bounded = False
    config_keys: ClassVar[tuple[str, ...]] = ()

    def check_input(self, x: np.ndarray) -> None:
        super().check_input(x)
        require_finite(self.codec_id, x)

    def encode(self, x: np.ndarray) -> bytes:
        return self.encode_with_recon(x)[0]

    def encode_with_recon(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The payload and what the decoder will return (error feedback needs it)."""
        self.check_input(x)
        payload, recon = self._encode(np.ascontiguousarray(x).reshape(x.shape))  # 0-d stays
        return payload, recon.reshape(x.shape)

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        raise NotImplementedError

    def decode(self, payload: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
        rd = Reader(payload, f"{self.codec_id} payload")
        out = self._decode(rd, spec)
        rd.expect_end()
        return out

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        raise NotImplementedError


def write_sparse(w: Writer, idx: np.ndarray, values: np.ndarray, n: int,
                 coder: ErrorBoundedCodec | None = None) -> np.ndarray:
    """The sparse payload: count, indices, values (in ``values``' dtype, or coded by
    ``coder``, an error-bounded codec such as ``fpz``).

    Returns the values the decoder will read: ``values`` themselves, or ``coder``'s
    reconstruction of them.
    """
    w.varint(int(idx.size))
    write_indices(w, idx, n)
    if coder is None:
        w.raw(le_bytes(values))
        return values
    payload, sent = coder.encode_with_output(values)
    w.raw(payload)
    return np.asarray(sent)


def read_sparse(rd: Reader, spec: TensorSpec, cap: int | None = None,
                what: str = "sparse payload", coder: ErrorBoundedCodec | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of a sparse payload for a tensor of ``spec``; at most ``cap``
    entries (default: the tensor's size). With ``coder`` the values are its payload,
    to the end of ``rd``, decoded as ``k`` values of the tensor's dtype."""
    n = spec.size
    k = rd.varint(cap=n if cap is None else cap, name="kept entries")
    idx = read_indices(rd, k, n)
    if coder is None:
        values = rd.array(spec.dtype, k)
    else:
        values = coder.decode(rd.rest(), TensorSpec((k,), np.dtype(spec.dtype)))
    return idx, finite_values(values, what)


def sparse_peak_bytes(spec: TensorSpec, k: int, values_bytes: int | None = None) -> int:
    """The most decoding a sparse payload of at most ``k`` entries for a tensor of
    ``spec`` allocates, the output included.

    Three steps, one after the other: the indices (:func:`read_indices`, before the
    output exists); the values beside the ``k`` int64 positions, ``values_bytes`` being
    what reading them takes at its peak, their array included (default: a copy of ``k``
    raw values), and the finite check's mask; then the output beside the positions and
    the values. With every entry kept that is 24 bytes an entry (6x a float32 tensor),
    at density 0.01 about the output alone.
    """
    n, size = spec.size, spec.dtype.itemsize
    values = size * k if values_bytes is None else max(values_bytes, size * k)
    return max(read_peak_bytes(n, k), 8 * k + values + k, spec.nbytes + (8 + size) * k)


def finite_values(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` if all finite, else FormatError (no NaN/Inf from the wire)."""
    with np.errstate(invalid="ignore"):  # signalling NaNs of float16
        finite = bool(np.isfinite(values).all()) if values.size else True
    if not finite:
        raise FormatError(f"{what}: non-finite values")
    return values


def scatter(idx: np.ndarray, values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """A dense tensor of ``spec`` with ``values`` at ``idx`` and zeros elsewhere."""
    out = np.zeros(spec.size, dtype=spec.dtype)
    out[idx] = values
    return out.reshape(spec.shape)


def sparse_payload(idx: np.ndarray, values: np.ndarray, x: np.ndarray,
                   coder: ErrorBoundedCodec | None = None) -> tuple[bytes, np.ndarray]:
    """Payload and reconstruction of keeping ``values`` at ``idx`` of ``x`` (coded by
    ``coder`` if given: the reconstruction holds the values the decoder will read)."""
    w = Writer()
    sent = write_sparse(w, idx, values, x.size, coder)
    return w.getvalue(), scatter(idx, sent, TensorSpec.of(x))


def require_format(cond: bool, message: str) -> None:
    if not cond:
        raise FormatError(message)
