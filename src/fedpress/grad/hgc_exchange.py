"""HGC's round exchange: one shared top-k mask, equal-count codes XOR a prediction.

HGC (Hu, Jiang & He, IJCAI-24; notes in ``docs/hgc_research.md``). In each round:

1. one client, the *master* (round-robin), adds its error-feedback residual to its
   update, picks the top-k positions of every tensor (``density``) and sends them in a
   **mask message** with its values;
2. the server forwards the mask message to the other clients, which send **values
   messages** at the same positions (no indices);
3. every values message holds, per tensor, the equal-count group means, then the
   codes of all tensors in one stream, XOR the codes of the prediction when that is
   smaller (both ends quantize the same Adam-like prediction at the mask; a flag says
   whether), radix-packed or rANS coded, whichever is smaller; each client keeps what
   it did not send as its residual (the sparsification and the quantization error);
4. the server decodes, averages and sends the **aggregate message** (the mean at the
   mask, float32, lossless: zstd, or a table of its few distinct values and an index
   per value); everyone, server included, advances the predictor from it, so
   predictions stay equal on all ends.

This module holds the two ends (:class:`HGCClient`, :class:`HGCServer`) and their
messages; the simulator's round protocol and the schedules (warm-up, corrections)
build on it. Messages start with a version byte (2; version 1 coded each tensor's
codes as its own rANS stream, whose tables cost more than the codes at HGC's
densities), a kind byte and an 8-byte digest of
the tensor names and shapes, so peers configured for other models are told so; every malformed
message is a :class:`fedpress.FormatError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..backends.lossless import ZstdCodec
from ..errors import ConfigError, FormatError
from ..stages import radix, rans
from . import equalcount as ec
from .base import check_ratio, keep_count
from .indices import read_indices, write_indices

VERSION = 2
MSG_MASK, MSG_VALUES, MSG_AGGREGATE = 1, 2, 3
VALUES_RAW, VALUES_CODES = 0, 1
CODES_PLAIN, CODES_XOR = 0, 1
SYMBOLS_PACKED, SYMBOLS_RANS = 0, 1
FLOATS_ZSTD, FLOATS_TABLE = 0, 1
MAX_TABLE = 1 << 16
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
        vals = read_floats(rd, sum(mask[name].size for name in self.shapes))
        rd.expect_end()
        return self._scatter(vals, mask)

    def _scatter(self, flat: np.ndarray, mask: Mask) -> State:
        """Dense tensors (float32, zeros off the mask) from the values at the mask, all
        tensors back to back in layout order."""
        out, pos = {}, 0
        for name, shape in self.shapes.items():
            idx = mask[name]
            dense = np.zeros(int(np.prod(shape)), np.float32)
            dense[idx] = flat[pos: pos + idx.size]
            pos += idx.size
            out[name] = dense.reshape(shape)
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

    def _predictions(self, mask: Mask) -> list[np.ndarray] | None:
        if not self.active_predict:
            return None
        return [self.predicted_codes(name, mask[name]) for name in self.shapes]

    def _encode_values(self, values: State, mask: Mask) -> tuple[bytes, State]:
        """The values message and what its receiver will decode (per tensor, at the mask)."""
        w = Writer()
        self._header(w, MSG_VALUES)
        sent = write_values(w, [values[name] for name in self.shapes], self.levels,
                            self.active_quantize, self._predictions(mask))
        return w.getvalue(), dict(zip(self.shapes, sent, strict=True))

    def decode_values(self, blob: bytes | memoryview, mask: Mask) -> State:
        """Dense tensors (float32, zeros off the mask) from a values message."""
        rd = self._read_header(blob, MSG_VALUES)
        vals = read_values(rd, [mask[name].size for name in self.shapes], self.levels,
                           self.active_quantize, self._predictions(mask))
        rd.expect_end()
        return self._scatter(np.concatenate(vals) if vals else np.zeros(0, np.float32), mask)


def write_symbols(w: Writer, symbols: np.ndarray, alphabet: int) -> None:
    """Symbols in ``[0, alphabet)``, the smaller of radix-packed and rANS coded (a
    method byte, then a length-prefixed blob). Short streams pack smaller: a rANS
    stream's tables cost tens of bytes."""
    options = {SYMBOLS_PACKED: radix.pack(symbols, alphabet)}
    if symbols.size:
        coded = Writer()
        rans.encode(np.asarray(symbols, np.int64), coded)
        options[SYMBOLS_RANS] = coded.getvalue()
    w.smallest(options)


def read_symbols(rd: Reader, count: int, alphabet: int) -> np.ndarray:
    """The ``count`` symbols :func:`write_symbols` wrote (int64, checked in range)."""
    method = rd.u8()
    data = rd.blob(cap=rd.remaining, name="hgc symbols")
    if method == SYMBOLS_PACKED:
        return radix.unpack(data, count, alphabet)
    if method != SYMBOLS_RANS or not count:
        raise FormatError(f"hgc message: unknown symbol coding {method}")
    sub = Reader(data, "hgc symbols")
    symbols = rans.decode(sub, count)
    sub.expect_end()
    if int(symbols.min()) < 0 or int(symbols.max()) >= alphabet:
        raise FormatError("hgc message: symbol out of range")
    return symbols


def write_values(w: Writer, values: Sequence[np.ndarray], levels: int, quantize: bool,
                 predicted: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """Some tensors' values at the mask: raw float32, or per tensor the equal-count
    group means, then all the codes in one stream. With ``predicted`` (the
    prediction's codes, per tensor) the codes go XOR the prediction when that makes
    the stream smaller (a flag says which). Returns what the receiver will decode."""
    vals = [np.asarray(v, np.float32).reshape(-1) for v in values]
    if not quantize:
        w.u8(VALUES_RAW)
        for v in vals:
            w.raw(v.astype("<f4").tobytes())
        return vals
    quantized = [ec.quantize(v, levels) for v in vals]
    w.u8(VALUES_CODES)
    for _, means in quantized:
        w.raw(means.astype("<f4").tobytes())
    codes = np.concatenate([c for c, _ in quantized]) if quantized else np.zeros(0, np.uint8)
    options = {CODES_PLAIN: (codes, levels)}
    if predicted is not None:
        residues = ec.xor_codes(codes, np.concatenate(predicted) if predicted else codes)
        options[CODES_XOR] = (residues, ec.residue_alphabet(levels))
    blobs = {}
    for flag, (symbols, alphabet) in options.items():
        sub = Writer()
        write_symbols(sub, symbols, alphabet)
        blobs[flag] = sub.getvalue()
    flag = min(blobs, key=lambda f: (len(blobs[f]), f))
    w.u8(flag)
    w.raw(blobs[flag])
    return [ec.dequantize(c, means, levels) for c, means in quantized]


def read_values(rd: Reader, counts: Sequence[int], levels: int, quantize: bool,
                predicted: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    """The values :func:`write_values` wrote, ``counts[i]`` for tensor ``i`` (float32);
    FormatError on bad bytes."""
    mode = rd.u8()
    if mode == VALUES_RAW and not quantize:
        out = [rd.array("<f4", k).astype(np.float32) for k in counts]
    elif mode == VALUES_CODES and quantize:  # raw values are refused in a quantized round
        means = [rd.array("<f4", levels - 1).astype(np.float32) for _ in counts]
        flag = rd.u8()
        if flag == CODES_PLAIN:
            codes = read_symbols(rd, sum(counts), levels)
        elif flag == CODES_XOR and predicted is not None:
            residues = read_symbols(rd, sum(counts), ec.residue_alphabet(levels))
            codes = ec.xor_codes(residues, np.concatenate(predicted)
                                 if predicted else residues)
        else:
            raise FormatError(f"hgc message: codes flag {flag} not valid here")
        if codes.size and int(codes.max()) >= levels:
            raise FormatError("hgc message: code out of range")
        parts = np.split(codes.astype(np.uint8), np.cumsum(counts)[:-1]) if counts else []
        out = [ec.dequantize(c, m, levels) for c, m in zip(parts, means, strict=True)]
    else:
        raise FormatError(f"hgc message: unknown values mode {mode}")
    for v in out:
        if not np.isfinite(v).all():
            raise FormatError("hgc message: NaN or Inf among the values")
    return out


def write_floats(w: Writer, vals: np.ndarray) -> None:
    """float32 values losslessly, the smaller of zstd and a table of the distinct
    values plus one symbol per value (an average of few clients' quantized values
    takes few distinct values)."""
    vals = np.ascontiguousarray(vals, np.float32)
    options = {FLOATS_ZSTD: _ZSTD.encode(vals)}
    table, inverse = np.unique(vals.view(np.uint32), return_inverse=True)
    if 0 < table.size <= MAX_TABLE:
        sub = Writer()
        sub.varint(int(table.size))
        sub.raw(table.astype("<u4").tobytes())
        write_symbols(sub, inverse.reshape(-1), max(2, int(table.size)))
        options[FLOATS_TABLE] = sub.getvalue()
    w.smallest(options)


def read_floats(rd: Reader, count: int) -> np.ndarray:
    """The ``count`` float32 values :func:`write_floats` wrote (finite, else FormatError)."""
    method = rd.u8()
    sub = Reader(rd.blob(cap=rd.remaining, name="hgc aggregate"), "hgc aggregate")
    if method == FLOATS_ZSTD:
        vals = _ZSTD.decode(sub.rest(), TensorSpec((count,), np.dtype(np.float32)))
    elif method == FLOATS_TABLE:
        size = sub.varint(cap=min(MAX_TABLE, max(count, 1)), name="hgc value table")
        table = sub.array("<u4", size).astype(np.uint32)
        symbols = read_symbols(sub, count, max(2, size))
        sub.expect_end()
        if symbols.size and int(symbols.max()) >= size:
            raise FormatError("hgc message: value index out of range")
        vals = table[symbols].view(np.float32) if size else np.zeros(count, np.float32)
    else:
        raise FormatError(f"hgc message: unknown aggregate coding {method}")
    if not np.isfinite(vals).all():
        raise FormatError("hgc message: NaN or Inf in the aggregate")
    return np.asarray(vals, np.float32)


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
        w = Writer()
        self._header(w, MSG_AGGREGATE)
        means = []
        for name in self.shapes:
            mean = sum(wt * d[name].reshape(-1).astype(np.float64)
                       for wt, d in zip(wts, decoded, strict=True)).astype(np.float32)
            means.append(mean[mask[name]])
        flat = np.concatenate(means) if means else np.zeros(0, np.float32)
        write_floats(w, flat)
        agg = self._scatter(flat, mask)
        self.advance(agg)
        return w.getvalue(), agg
