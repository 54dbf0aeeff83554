"""HGC's round exchange: one shared top-k mask, equal-count codes XOR a prediction.

HGC (Hu, Jiang & He, IJCAI-24; notes in ``docs/hgc_research.md``). In each round:

1. one client, the *master* (round-robin), adds its error-feedback residual to its
   update, picks the top-k positions of every tensor (``density``) and sends them in a
   **mask message** with its values;
2. the server forwards the mask message to the other clients, which send **values
   messages** at the same positions (no indices);
3. every values message holds, per tensor, the equal-count group means and the codes
   XOR the codes of the prediction (both ends quantize the same Adam-like prediction at
   the mask), rANS coded; each client keeps what it did not send as its residual
   (the sparsification and the quantization error);
4. the server decodes, averages and sends the **aggregate message** (the mean at the
   mask, float32); everyone, server included, advances the predictor from it, so
   predictions stay equal on all ends.

This module holds the two ends (:class:`HGCClient`, :class:`HGCServer`) and their
messages; the simulator's round protocol and the schedules (warm-up, corrections)
build on it. Messages start with a version byte, a kind byte and an 8-byte digest of
the tensor names and shapes, so peers configured for other models are told so; every malformed
message is a :class:`fedpress.FormatError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..backends.lossless import ZstdCodec
from ..errors import ConfigError, FormatError
from ..stages import rans
from . import equalcount as ec
from .base import check_ratio, keep_count
from .indices import read_indices, write_indices

VERSION = 1
MSG_MASK, MSG_VALUES, MSG_AGGREGATE = 1, 2, 3
VALUES_RAW, VALUES_CODES = 0, 1
_ZSTD = ZstdCodec(level=3)

Shapes = Mapping[str, tuple[int, ...]]
State = dict[str, np.ndarray]
Mask = dict[str, np.ndarray]


def schedule(rnd: int, density: float, warmup: int) -> tuple[float, bool]:
    """Round ``rnd``'s (0-based) density and whether values are compressed.

    HGC's warm-up: over the first ``warmup`` rounds the density falls exponentially
    from 0.25 to ``density`` (``0.25 * (density / 0.25) ** (rnd / (warmup - 1))``) and
    the values travel raw (no quantizer, no prediction); ``warmup=0`` disables it.
    """
    if warmup <= 0 or rnd >= warmup:
        return density, True
    if warmup == 1 or density >= 0.25:  # one warm-up round: already at the target
        return density, False
    return max(density, 0.25 * (density / 0.25) ** (rnd / (warmup - 1))), False


def correction(rnd: int, density: float, milestones: tuple[int, ...], window: int,
               corrected: float = 0.01) -> tuple[float, bool]:
    """HGC's compression-rate correction around learning-rate milestones.

    While round ``rnd`` (0-based) lies within ``window`` rounds of a milestone
    (1-based rounds, ``[m - 1 - window, m - 1 + window)``) the density is
    ``max(density, corrected)``; the first round after such a window says ``clear``:
    the clients drop their error-feedback residuals (the authors' code also resets the
    momentum, which the simulator rebuilds every round anyway). Returns
    ``(density, clear)``; ``window=0`` disables it.
    """
    if window <= 0:
        return density, False
    inside = any(m - 1 - window <= rnd < m - 1 + window for m in milestones)
    clear = any(rnd == m - 1 + window for m in milestones)
    return (max(density, corrected) if inside else density), clear and not inside


def _layout_digest(shapes: Shapes) -> bytes:
    h = hashlib.sha256()
    for name in sorted(shapes):
        h.update(name.encode() + b"\0" + repr(tuple(shapes[name])).encode())
    return h.digest()[:8]


class _End:
    """What both ends share: the layout, the quantizer and the predictor state."""

    def __init__(self, shapes: Shapes, density: float = 1e-3, levels: int = 3,
                 predict: bool = True, quantize: bool = True) -> None:
        self.shapes = {k: tuple(int(d) for d in v) for k, v in sorted(shapes.items())}
        self.density = check_ratio("hgc", density)
        self.levels = ec.check_levels(levels)
        if predict and not quantize:
            raise ConfigError("hgc: prediction works on the quantizer's codes: "
                              "predict=True needs quantize=True")
        self.predict, self.quantize = bool(predict), bool(quantize)
        self.digest = _layout_digest(self.shapes)
        self.configure(self.density, True)
        self.u = {k: np.zeros(int(np.prod(s)), np.float32) for k, s in self.shapes.items()}
        self.v = {k: np.zeros(int(np.prod(s)), np.float32) for k, s in self.shapes.items()}

    def configure(self, density: float, compressed: bool = True, clear: bool = False) -> None:
        """This round's mask density, and whether values are quantized (and predicted)
        or sent raw (HGC's warm-up stage); both ends must configure alike. ``clear``
        drops a client's error-feedback residual (the end of a correction window)."""
        self.active_density = check_ratio("hgc", density)
        self.active_quantize = self.quantize and compressed
        self.active_predict = self.predict and compressed
        if clear:
            for v in getattr(self, "residual", {}).values():
                v[:] = 0.0

    def _header(self, w: Writer, kind: int) -> None:
        w.u8(VERSION)
        w.u8(kind)
        w.raw(self.digest)

    def _read_header(self, blob: bytes | memoryview, kind: int) -> Reader:
        rd = Reader(memoryview(blob), "hgc message")
        version, got = rd.u8(), rd.u8()
        if version != VERSION or got != kind:
            raise FormatError(f"hgc message: version {version} kind {got}, expected "
                              f"version {VERSION} kind {kind}")
        if bytes(rd.take(8)) != self.digest:
            raise FormatError("hgc message: made for other tensors (names or shapes differ)")
        return rd

    def predicted_codes(self, name: str, idx: np.ndarray) -> np.ndarray:
        """The prediction's codes at ``idx`` (both ends compute the same)."""
        p = ec.predict(self.u[name][idx], self.v[name][idx])
        return ec.quantize(p, self.levels)[0]

    def advance(self, aggregate: State) -> None:
        """Advance the predictor from the dense aggregate (zeros off the mask)."""
        for name in self.shapes:
            self.u[name], self.v[name] = ec.advance(self.u[name], self.v[name],
                                                    aggregate[name].reshape(-1))

    def decode_aggregate(self, blob: bytes | memoryview, mask: Mask) -> State:
        """Dense tensors from an aggregate message (without advancing anything)."""
        rd = self._read_header(blob, MSG_AGGREGATE)
        out = {}
        for name, shape in self.shapes.items():
            idx = mask[name]
            raw = rd.blob(cap=rd.remaining, name="hgc aggregate")
            vals = _ZSTD.decode(raw, TensorSpec((idx.size,), np.dtype(np.float32)))
            if not np.isfinite(vals).all():
                raise FormatError("hgc message: NaN or Inf in the aggregate")
            dense = np.zeros(int(np.prod(shape)), np.float32)
            dense[idx] = vals
            out[name] = dense.reshape(shape)
        rd.expect_end()
        return out

    # -- messages -----------------------------------------------------------------
    def encode_mask(self, mask: Mask) -> bytes:
        w = Writer()
        self._header(w, MSG_MASK)
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            w.varint(int(mask[name].size))
            write_indices(w, mask[name], n)
        return w.getvalue()

    def decode_mask(self, blob: bytes | memoryview) -> Mask:
        rd = self._read_header(blob, MSG_MASK)
        mask = {}
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            k = rd.varint(cap=n, name="hgc mask size")
            mask[name] = read_indices(rd, k, n)
        rd.expect_end()
        return mask

    def _encode_values(self, values: State, mask: Mask) -> tuple[bytes, State]:
        """The values message and what its receiver will decode (per tensor, at the mask)."""
        w = Writer()
        self._header(w, MSG_VALUES)
        sent = {}
        for name in self.shapes:
            predicted = self.predicted_codes(name, mask[name]) if self.active_predict else None
            sent[name] = write_values(w, values[name], self.levels, self.active_quantize,
                                      predicted)
        return w.getvalue(), sent

    def decode_values(self, blob: bytes | memoryview, mask: Mask) -> State:
        """Dense tensors (float32, zeros off the mask) from a values message."""
        rd = self._read_header(blob, MSG_VALUES)
        out = {}
        for name, shape in self.shapes.items():
            idx = mask[name]
            predicted = self.predicted_codes(name, idx) if self.active_predict else None
            dense = np.zeros(int(np.prod(shape)), np.float32)
            dense[idx] = read_values(rd, idx.size, self.levels, self.active_quantize, predicted)
            out[name] = dense.reshape(shape)
        rd.expect_end()
        return out


def write_values(w: Writer, values: np.ndarray, levels: int, quantize: bool,
                 predicted: np.ndarray | None) -> np.ndarray:
    """One tensor's values at the mask: raw float32, or the equal-count group means and
    the codes (XOR ``predicted``, the prediction's codes, if given) rANS coded. Returns
    what the receiver will decode."""
    vals = np.asarray(values, np.float32)
    if not quantize:
        w.u8(VALUES_RAW)
        w.raw(vals.astype("<f4").tobytes())
        return vals
    codes, means = ec.quantize(vals, levels)
    symbols = codes if predicted is None else ec.xor_codes(codes, predicted)
    w.u8(VALUES_CODES)
    w.raw(means.astype("<f4").tobytes())
    stream = Writer()  # a rANS stream runs to its end: length-prefixed here
    if vals.size:
        rans.encode(symbols.astype(np.int64), stream)
    w.blob(stream.getvalue())
    return ec.dequantize(codes, means, levels)


def read_values(rd: Reader, k: int, levels: int, quantize: bool,
                predicted: np.ndarray | None) -> np.ndarray:
    """The ``k`` values :func:`write_values` wrote (float32); FormatError on bad bytes."""
    mode = rd.u8()
    if mode == VALUES_RAW and not quantize:
        vals = rd.array("<f4", k).astype(np.float32)
    elif mode == VALUES_CODES and quantize:  # raw values are refused in a quantized round
        means = rd.array("<f4", levels - 1).astype(np.float32)
        sub = Reader(rd.blob(cap=rd.remaining, name="hgc codes"), "hgc codes")
        symbols = rans.decode(sub, k) if k else np.zeros(0, np.int64)
        sub.expect_end()
        if symbols.size and (int(symbols.min()) < 0
                             or int(symbols.max()) >= ec.residue_alphabet(levels)):
            raise FormatError("hgc message: symbol out of range")
        codes = symbols.astype(np.uint8)
        if predicted is not None:
            codes = ec.xor_codes(codes, predicted)
        if codes.size and int(codes.max()) >= levels:
            raise FormatError("hgc message: code out of range")
        vals = ec.dequantize(codes, means, levels)
    else:
        raise FormatError(f"hgc message: unknown values mode {mode}")
    if not np.isfinite(vals).all():
        raise FormatError("hgc message: NaN or Inf among the values")
    return vals


class HGCClient(_End):
    """A client's end: error-feedback residual (sender state) and the mirrored predictor.

    Parameters
    ----------
    shapes : mapping of name -> shape
        The tensors exchanged (the same on every end).
    density : float
        Share of each tensor's values the mask keeps (``k = max(1, ceil(density * n))``).
    levels : int
        Equal-count quantizer levels (odd; 3: ternary with a mean per sign).
    predict, quantize : bool
        Switch the predictive coding and the quantizer off (ablations; without the
        quantizer the values travel as float32).
    """

    def __init__(self, shapes: Shapes, density: float = 1e-3, levels: int = 3,
                 predict: bool = True, quantize: bool = True) -> None:
        super().__init__(shapes, density, levels, predict, quantize)
        self.residual = {k: np.zeros(int(np.prod(s)), np.float32) for k, s in self.shapes.items()}

    def _with_residual(self, update: Mapping[str, np.ndarray]) -> State:
        out = {}
        for name, shape in self.shapes.items():
            x = np.asarray(update[name], np.float32)
            if x.shape != shape:
                raise ConfigError(f"hgc: tensor {name!r} has shape {x.shape}, expected {shape}")
            if not np.isfinite(x).all():
                raise ConfigError(f"hgc: tensor {name!r} holds NaN or Inf")
            out[name] = x.reshape(-1) + self.residual[name]
        return out

    def select_mask(self, update: Mapping[str, np.ndarray]) -> Mask:
        """The master's mask: the top-k positions (sorted) of update + residual."""
        acc = self._with_residual(update)
        mask = {}
        for name, a in acc.items():
            k = keep_count(a.size, self.active_density)
            idx = np.argpartition(np.abs(a), a.size - k)[a.size - k:] if k < a.size \
                else np.arange(a.size)
            mask[name] = np.sort(idx).astype(np.int64)
        return mask

    def encode_update(self, update: Mapping[str, np.ndarray], mask: Mask) -> bytes:
        """The values message for ``update`` at ``mask``; keeps the rest as residual."""
        acc = self._with_residual(update)
        blob, sent = self._encode_values({k: acc[k][mask[k]] for k in self.shapes}, mask)
        for name in self.shapes:
            res = acc[name]
            res[mask[name]] -= sent[name]
            self.residual[name] = res
        return blob

    def receive_aggregate(self, blob: bytes | memoryview, mask: Mask) -> State:
        """The server's aggregate (dense float32); advances the predictor."""
        agg = self.decode_aggregate(blob, mask)
        self.advance(agg)
        return agg


class HGCServer(_End):
    """The server's end: decodes values messages, averages, mirrors the predictor."""

    def aggregate(self, decoded: list[State], weights: list[float] | None = None,
                  mask: Mask | None = None) -> tuple[bytes, State]:
        """The aggregate message and the dense mean of ``decoded`` (advances the predictor)."""
        if not decoded or mask is None:
            raise ConfigError("hgc: aggregate needs decoded updates and the round's mask")
        wts = np.asarray(weights if weights is not None else [1.0] * len(decoded), np.float64)
        wts = wts / wts.sum()
        agg = {}
        w = Writer()
        self._header(w, MSG_AGGREGATE)
        for name, shape in self.shapes.items():
            mean = sum(wt * d[name].reshape(-1).astype(np.float64)
                       for wt, d in zip(wts, decoded, strict=True)).astype(np.float32)
            vals = mean[mask[name]]
            w.blob(_ZSTD.encode(vals))
            dense = np.zeros_like(mean)
            dense[mask[name]] = vals
            agg[name] = dense.reshape(shape)
        self.advance(agg)
        return w.getvalue(), agg
