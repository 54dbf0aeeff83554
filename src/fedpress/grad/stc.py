"""Sparse Ternary Compression (``stc``): top-k, then one shared magnitude and the
signs, with the residual (error accumulation) built in.

Sattler, Wiedemann, Müller & Samek, "Robust and Communication-Efficient Federated
Learning from Non-IID Data", IEEE TNNLS 2019. Per round, for the tensor ``x`` and
the residual ``r`` kept from the previous round (zeros at first)::

    a   = x + r
    idx = top-k of |a|              k = ceil(ratio * n), at least 1 (exactly k)
    mu  = mean |a[idx]|
    send mu, idx, sign(a[idx])      the decoder returns mu * sign(a[idx]) at idx, 0 elsewhere
    r   = a - reconstruction

so ``sent + r_t == x_t + r_{t-1}`` up to one rounding of the tensor's dtype at the
``k`` sent positions (and exactly elsewhere). The residual is sender-scope state
(array ``"residual"`` of the tensor's :class:`fedpress.state.TensorState`); the
decoder holds none.

Both directions, as in the paper: a client's :class:`fedpress.UpdateEncoder`
keeps each client's residual; for the server's downlink of the global update the
simulator's ``downlink_send="update"`` mirrors what each client holds, which is the
downlink residual already, so it takes the stateless ``ternary`` codec (this
module: the same compression step and payload, no residual) instead of ``stc``.

Payload layout::

    1 x  mu         the tensor's dtype, little-endian; finite, >= 0 (not -0.0)
    varint k        exactly ceil(ratio * n) (at least 1; 0 for an empty tensor)
    ...  positions  :mod:`fedpress.grad.indices` (u8 method + blob): Rice codes of
                    the gaps for random positions, else bitmap / gamma / rANS if cheaper
    ceil(k/8) bytes the k sign bits in position order, most significant bit first,
                    1 = negative; the padding bits are zero

The paper codes the gaps with a Golomb code of parameter ``2 ** b*``,

    b* = 1 + floor(log2(log(phi - 1) / log(1 - p))),   phi = (1 + sqrt 5) / 2,

``p = k / n`` (:func:`golomb_parameter`; e.g. ``b* = 6`` at ``p = 0.01``, ``9`` at
``0.001``), averaging ``b* + 1 / (1 - (1 - p) ** (2 ** b*))`` bits a position
(:func:`golomb_bits_per_position`). fedpress's Rice coder is the same code with the
exponent picked by exact size instead, which lands on ``b*`` or next to it for the
geometric gaps of top-k positions; the whole payload is then about
``k * (golomb bits + 1)`` bits plus a few bytes.

``fedpress.compress(x, codec="stc")`` refuses, like every stateful codec (the
residual has to live between rounds): use :class:`fedpress.UpdateEncoder`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..dtypes import le_bytes
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..state import TensorState
from .base import (
    GradientCodec,
    StatefulGradientCodec,
    check_ratio,
    keep_count,
    scatter,
    sparse_peak_bytes,
)
from .ef import residual_of
from .indices import METHODS, read_indices, write_indices
from .topk import top_indices

PHI = (1 + math.sqrt(5)) / 2


def golomb_parameter(p: float) -> int:
    """The paper's Golomb exponent ``b*`` for positions of density ``p`` in (0, 1):
    ``1 + floor(log2(log(phi - 1) / log(1 - p)))``, at least 0."""
    if not 0 < p < 1:
        raise ValueError(f"density must be in (0, 1), got {p!r}")
    return max(0, 1 + math.floor(math.log2(math.log(PHI - 1) / math.log1p(-p))))


def golomb_bits_per_position(p: float) -> float:
    """The paper's average code length of one position at density ``p``:
    ``b* + 1 / (1 - (1 - p) ** (2 ** b*))``."""
    b = golomb_parameter(p)
    return b + 1 / (1 - (1 - p) ** (2**b))


def ternary_peak_bytes(spec: TensorSpec, ratio: float) -> int:
    """What decoding an ``stc`` / ``ternary`` payload takes at its peak, the output
    included: the ``k`` indices, then the sign bits, their mask and the values."""
    k = keep_count(spec.size, ratio)
    return sparse_peak_bytes(spec, k, (spec.dtype.itemsize + 2) * k)


def sparse_ternary(a: np.ndarray, ratio: float) -> tuple[bytes, np.ndarray, np.ndarray]:
    """STC's compression step on ``a``: (payload, kept positions, their values)."""
    dt = a.dtype
    flat = a.reshape(-1)
    k = keep_count(a.size, ratio)
    idx = top_indices(np.abs(flat), k)
    vals = flat[idx]
    mu = np.asarray(np.abs(vals.astype(np.float64)).mean() if k else 0.0, dtype=dt)
    neg = vals < 0
    recon = np.where(neg, -mu, mu).astype(dt, copy=False)
    w = Writer()
    w.raw(le_bytes(mu.reshape(1)))
    w.varint(k)
    write_indices(w, idx, a.size)
    w.raw(np.packbits(neg).tobytes())
    return w.getvalue(), idx, recon


@register_codec
class STC(StatefulGradientCodec):
    """Sparse Ternary Compression with built-in error accumulation (sender state)."""

    codec_id = "stc"
    config_keys: ClassVar[tuple[str, ...]] = ("ratio",)

    def __init__(self, ratio: float = 0.01) -> None:
        self.ratio = check_ratio(self.codec_id, ratio)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        return ternary_peak_bytes(spec, self.ratio)

    def encode(self, x: np.ndarray, state: TensorState | None = None) -> bytes:
        self.check_input(x)
        if state is None:
            state = TensorState()
        x = np.ascontiguousarray(x).reshape(np.shape(x))  # a 0-d tensor stays 0-d
        dt = x.dtype
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
            a = x + residual_of(state, x, self.codec_id)  # a new array
        if a.size and not np.isfinite(a).all():
            raise ConfigError(f"codec 'stc': tensor plus residual overflowed {dt}; scale "
                              "the tensor down")
        payload, idx, recon = sparse_ternary(a, self.ratio)
        flat = a.reshape(-1)
        flat[idx] -= recon  # the residual: a - reconstruction
        state["residual"] = a
        return payload

    def _read(self, rd: Reader, spec: TensorSpec) -> tuple[np.ndarray, np.ndarray]:
        n = spec.size
        mu = rd.array(spec.dtype, 1)
        with np.errstate(invalid="ignore"):  # signalling NaNs of float16
            good = bool(np.isfinite(mu).all()) and not np.signbit(mu).any()
        if not good:
            raise FormatError(f"stc payload: magnitude {mu[0]!r} is not a finite number >= 0")
        want = keep_count(n, self.ratio)
        k = rd.varint(cap=n, name="kept entries")
        if k != want:
            raise FormatError(f"stc payload: {k} kept entries, ratio {self.ratio} of {n} "
                              f"values keeps {want}")
        idx = read_indices(rd, k, n)
        raw = np.frombuffer(rd.take((k + 7) // 8), dtype=np.uint8)
        bits = np.unpackbits(raw)
        if bits[k:].any():
            raise FormatError("stc payload: sign padding bits are not zero")
        neg = bits[:k].astype(bool)
        values = np.where(neg, -mu[0], mu[0]).astype(spec.dtype, copy=False)
        return idx, values

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,
               state: TensorState | None = None) -> np.ndarray:
        rd = Reader(payload, "stc payload")
        idx, values = self._read(rd, spec)
        rd.expect_end()
        return scatter(idx, values, spec)

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        rd = Reader(payload, "stc payload")
        mu = float(rd.array(spec.dtype, 1).astype(np.float64)[0])
        k = rd.varint(cap=spec.size, name="kept entries")
        method = rd.u8()
        return {"kept": k, "mu": mu, "index_coding": METHODS.get(method, f"unknown ({method})")}


@register_codec
class SparseTernary(GradientCodec):
    """STC's compression step without the residual (stateless), same payload as
    ``stc``: for a server's downlink in ``downlink_send="update"`` mode, where the
    server's mirror of each client's copy already re-sends what was dropped."""

    codec_id = "ternary"
    config_keys: ClassVar[tuple[str, ...]] = ("ratio",)

    def __init__(self, ratio: float = 0.01) -> None:
        self.ratio = check_ratio(self.codec_id, ratio)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        return ternary_peak_bytes(spec, self.ratio)

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        payload, idx, recon = sparse_ternary(x, self.ratio)
        return payload, scatter(idx, recon, TensorSpec.of(x))

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        return scatter(*STC(self.ratio)._read(rd, spec), spec)
