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

This module holds the two ends (:class:`HGCClient`, :class:`HGCServer`), their
messages, the schedules (warm-up, corrections) and the round protocol built on them
(:class:`HGCExchange`, ``aggregate="hgc"``), which the simulator and Flower drive;
the value coders are :mod:`fedpress.grad.hgc_values`. Messages start with a version
byte (2; version 1 coded each tensor's codes as its own rANS stream, whose tables cost
more than the codes at HGC's densities), a kind byte and an 8-byte digest of the
tensor names and shapes, so peers configured for other models are told so; every
malformed message is a :class:`fedpress.FormatError`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._bytes import Reader, Writer
from ..errors import ConfigError, FormatError
from ..grad import equalcount as ec
from ..grad.base import check_ratio, keep_count
from ..grad.hgc_values import read_floats, read_values, write_floats, write_values
from ..grad.indices import read_indices, write_indices
from .aggregate import weighted_mean
from .buffers import KEY as BUFFERS_KEY
from .buffers import BufferCoder, ErrorFeedback, float_buffers
from .deltas import raw_bytes
from .protocol import (
    Call,
    ClientEnd,
    Links,
    PhaseCost,
    RoundProtocol,
    ServerEnd,
    Settings,
    register_exchange,
    state_parts,
)

VERSION = 2
MSG_MASK, MSG_VALUES, MSG_AGGREGATE = 1, 2, 3

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


# -- the round protocol -------------------------------------------------------------
#: the plan options HGC's exchange reads, and those every plan gets (ignored here)
OPTIONS = ("density", "warmup", "levels", "predict", "quantize", "correction",
           "correction_density", "buffers")
_GENERIC = ("mode", "eb", "lossy", "lossless", "threshold")


def hgc_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """HGC's options from a plan's options, checked, with their defaults."""
    unknown = set(options) - set(OPTIONS) - set(_GENERIC)
    if unknown:
        raise ConfigError(f"plan 'hgc': unknown options {sorted(unknown)}")
    for key in ("predict", "quantize"):
        if key in options and not isinstance(options[key], bool):
            raise ConfigError(f"plan 'hgc': {key} must be true or false, got {options[key]!r}")
    o = options
    out = {"density": float(o.get("density", 1e-3)), "warmup": int(o.get("warmup", 0)),
           "levels": int(o.get("levels", 3)), "predict": o.get("predict", True),
           "quantize": o.get("quantize", True), "correction": int(o.get("correction", 0)),
           "correction_density": float(o.get("correction_density", 0.01)),
           # the float buffers' coder: a stateless codec id under the run's bound, or raw
           "buffers": str(o.get("buffers", "fpz")), "buffers_eb": float(o.get("eb", 1e-2)),
           "buffers_mode": str(o.get("mode", "rel"))}
    if out["warmup"] < 0 or out["correction"] < 0:
        raise ConfigError("plan 'hgc': warmup and correction are rounds, >= 0")
    return out


def hgc_names(state: Mapping[str, np.ndarray], params: frozenset[str]) -> list[str]:
    """The tensors HGC's masks carry: the float parameters (the float buffers go
    through :func:`buffer_coder`, integer ones raw)."""
    return sorted(k for k in params if np.issubdtype(state[k].dtype, np.floating))


def buffer_coder(options: Mapping[str, Any]) -> BufferCoder:
    """The coder of the float buffers (BatchNorm statistics) both ways."""
    return BufferCoder(options["buffers"], options["buffers_eb"], options["buffers_mode"])


def round_plan(rnd: int, options: Mapping[str, Any], milestones: tuple[int, ...],
               ) -> tuple[float, bool, bool]:
    """Round ``rnd``'s (1-based) ``(density, compressed, clear)``: the warm-up, then
    the corrections around learning-rate milestones."""
    density, compressed = schedule(rnd - 1, options["density"], options["warmup"])
    clear = False
    if compressed:  # corrections start after the warm-up
        density, clear = correction(rnd - 1, density, milestones, options["correction"],
                                    options["correction_density"])
    return density, compressed, clear


class HGCRounds(ServerEnd):
    """The server's side over a run.

    Each round the clients train and reply with their buffers (BatchNorm statistics:
    the float ones' changes coded by :func:`buffer_coder`, integer ones raw); then the
    master (round-robin over the clients) sends its mask and values, the server
    forwards the mask to the others, they send values at it, and the server averages.
    The next round's downlink carries the aggregate at that mask and the buffers (the
    float ones' mean change coded, with error feedback on the server; integer ones
    raw); every client holds the global model exactly (same arithmetic, the decoded
    changes on both ends).

    A client whose answer is missing or malformed is left out of the average
    (:attr:`PhaseCost.dropped`); when it is the master, the next client in the
    round-robin order takes over. A client that starts afresh gets the model and the
    predictor's state (:meth:`restart`).
    """

    def __init__(self, options: Mapping[str, Any], milestones: tuple[int, ...],
                 state: Mapping[str, np.ndarray], params: frozenset[str]) -> None:
        self.options, self.milestones = dict(options), tuple(milestones)
        self.names = hgc_names(state, params)
        o = self.options
        self.server = HGCServer({k: state[k].shape for k in self.names}, o["density"],
                                o["levels"], o["predict"], o["quantize"])
        self.rnd = 0
        self.last: bytes | None = None  # the last aggregate message
        self.advanced = False  # whether an aggregate moved the predictor
        self.coder = buffer_coder(o)
        self.buffer_names = float_buffers(state, set(self.names)) if self.coder.codes else []
        self.like = {k: np.asarray(state[k]) for k in self.buffer_names}
        self.feedback = ErrorFeedback()
        self.last_buffers: np.ndarray | None = None  # the last coded mean change

    @property
    def exchanged(self) -> frozenset[str]:
        return frozenset(self.names) | frozenset(self.buffer_names)

    def downlink(self, chosen: list[Any], state: State, down: Any,
                 ) -> tuple[dict[Any, Any], dict[Any, int], float]:
        """Round 1: the initial model (raw; clients that start from the same seeded
        copy get ``None``, but its bytes are counted). Later: the last aggregate at
        the last mask, and the buffers (coded float changes, raw integers)."""
        self.rnd += 1
        buffers = {k: v for k, v in state.items() if k not in self.exchanged}
        if self.last_buffers is not None:
            buffers[BUFFERS_KEY] = self.last_buffers
        message = None if self.last is None else (self.last, buffers)
        size = raw_bytes(state) if self.last is None else len(self.last) + raw_bytes(buffers)
        return {k: message for k in chosen}, {k: size for k in chosen}, 0.0

    def restart(self, client: Any, state: State) -> tuple[Any, int]:
        """A new end's whole state (:meth:`HGCEnd.export`): the model and, once an
        aggregate moved it, the predictor (its residual starts at zero)."""
        message = {f"held/{k}": v for k, v in state.items()}
        if self.advanced:
            for k in self.names:
                message[f"u/{k}"] = self.server.u[k].copy()
                message[f"v/{k}"] = self.server.v[k].copy()
        return message, raw_bytes(message)

    def exchange(self, chosen: list[Any], replies: list[State], weights: list[float],
                 call: Call, links: Links, down_bytes: dict[Any, int]) -> PhaseCost:
        rnd = self.rnd
        density, compressed, clear = round_plan(rnd, self.options, self.milestones)
        self.server.configure(density, compressed)
        dropped: dict[Any, str] = {}
        decoded: dict[Any, State] = {}
        t0 = time.perf_counter()
        buffers = self._buffers(chosen, replies, dropped)
        decode_s, server_s = time.perf_counter() - t0, 0.0  # decode_s joins server_s below
        first: Any = None
        start = (rnd - 1) % len(chosen)
        for master in chosen[start:] + chosen[:start]:  # the next takes over from a failed one
            if master in dropped:
                continue
            got = [r for r in call("hgc_master", {master: (density, compressed, clear)})
                   if r.client == master]
            if not got:
                dropped[master] = "no answer to hgc_master"
                continue
            t0 = time.perf_counter()
            try:
                mask_msg, values = _messages(got[0].message, 2, "hgc_master")
                mask = self.server.decode_mask(mask_msg)
                t1 = time.perf_counter()
                decoded[master] = self.server.decode_values(values, mask)
            except FormatError as exc:
                dropped[master] = f"hgc_master: {exc}"
                continue
            server_s += t1 - t0
            decode_s += time.perf_counter() - t1
            first = got[0]
            break
        if first is None:  # no mask: no aggregate this round, every client out of step
            self.last = self.last_buffers = None
            return PhaseCost({}, dropped=dropped)
        master = first.client
        others = [k for k in chosen if k != master and k not in dropped]
        asked = (mask_msg, density, compressed, clear)
        results = {r.client: r for r in call("hgc_values", {k: asked for k in others})} \
            if others else {}
        t0 = time.perf_counter()
        for k in others:
            if k not in results:
                dropped[k] = "no answer to hgc_values"
                continue
            try:
                (blob,) = _messages(results[k].message, 1, "hgc_values")
                decoded[k] = self.server.decode_values(blob, mask)
            except FormatError as exc:
                dropped[k] = f"hgc_values: {exc}"
        decode_s += time.perf_counter() - t0
        server_s += decode_s
        weight = dict(zip(chosen, weights, strict=True))
        used = [k for k in chosen if k in decoded]
        t0 = time.perf_counter()
        self.last, aggregate = self.server.aggregate([decoded[k] for k in used],
                                                     [weight[k] for k in used], mask)
        self.advanced = True
        if self.buffer_names:  # their mean change, as every client will decode it
            mean = weighted_mean([buffers[k] for k in used], [weight[k] for k in used])
            self.last_buffers, moved = self.feedback.send(self.coder, mean)
            aggregate.update(moved)
        server_s += time.perf_counter() - t0
        up_master = links.upload_s(master, first.nbytes)
        phase = up_master + first.encode_s
        comm = up_master
        answered = [first]
        for k in others:
            down_bytes[k] += len(mask_msg)  # the mask, forwarded mid-round
            if k not in decoded:
                continue
            answered.append(results[k])
            t = links.download_s(k, len(mask_msg)) + links.upload_s(k, results[k].nbytes)
            comm = max(comm, up_master + t)
            phase = max(phase, up_master + first.encode_s + t + results[k].encode_s)
        return PhaseCost(aggregate, sum(r.nbytes for r in answered),
                         sum(r.encode_s for r in answered), decode_s, server_s, comm, phase,
                         dropped)

    def _buffers(self, chosen: list[Any], replies: list[State], dropped: dict[Any, str],
                 ) -> dict[Any, State]:
        """Each reply's float buffers, decoded (taken out of the reply); a client whose
        coded buffers are missing or do not decode is dropped."""
        out: dict[Any, State] = {}
        if not self.buffer_names:
            return out
        for k, reply in zip(chosen, replies, strict=True):
            try:
                if BUFFERS_KEY not in reply:
                    raise FormatError("the reply carries no coded buffers")
                out[k] = self.coder.decode(reply.pop(BUFFERS_KEY), self.like)
            except FormatError as exc:
                dropped[k] = f"buffers: {exc}"
        return out


def _messages(message: Any, count: int, what: str) -> tuple[Any, ...]:
    """A client's answer as ``count`` byte strings; FormatError if it is not that."""
    items = message if isinstance(message, tuple) else (message,)
    if len(items) != count or not all(isinstance(b, (bytes, bytearray, memoryview))
                                      for b in items):
        raise FormatError(f"hgc: the answer to {what} is not {count} message(s)")
    return items


#: the parts of an HGC client end's exported state (:meth:`HGCEnd.export`)
END_PARTS = ("held", "pending", "mask", "residual", "u", "v")


class HGCEnd(ClientEnd):
    """A client's side: applies the last aggregate to its copy, keeps its update for
    the mid-round phases, and replies with its buffers (float ones' changes coded by
    :func:`buffer_coder`, integer ones raw).

    A dict as the round's first message is a whole end state (:meth:`HGCRounds.restart`
    for a client that starts afresh): the end loads it.
    """

    decodes = True
    encodes = True  # the buffers

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__()
        self.options = dict(options)
        self.hgc: HGCClient | None = None  # made at the first reply
        self.mask: Mask | None = None  # the last round's mask
        self.pending: State = {}  # this round's update, waiting for the mask
        self.buffers = buffer_coder(self.options)

    def receive(self, message: Any) -> State:
        if isinstance(message, dict):  # a whole state: this end starts afresh
            self.load(message)
            if self.held is None:
                raise FormatError("hgc: a restart without the model")
            return self.held
        if self.held is None:
            raise FormatError("hgc: this end holds no model (it was not started)")
        if message is not None:  # the last round's aggregate, at the last mask
            agg_msg, buffers = message
            if self.hgc is None or self.mask is None:
                raise FormatError("hgc: an aggregate arrived before any round's mask")
            agg = self.hgc.receive_aggregate(agg_msg, self.mask)
            buffers = dict(buffers)
            coded = buffers.pop(BUFFERS_KEY, None)
            if coded is not None:  # the float buffers' mean change
                if not self.buffers.codes:
                    raise FormatError("hgc: coded buffers, but this end takes them raw")
                names = float_buffers(self.held, set(self.hgc.shapes))
                agg.update(self.buffers.decode(coded, {k: self.held[k] for k in names}))
            held = dict(self.held)
            for k, v in agg.items():  # the server's arithmetic (send=update, server_lr 1)
                held[k] = (held[k] + 1.0 * v.astype(np.float64)).astype(held[k].dtype)
            held.update(buffers)
            self.held = held
        return self.held

    def reply(self, trained: State, start: State, params: frozenset[str]) -> tuple[Any, int]:
        if self.hgc is None:
            names = hgc_names(start, params)
            o = self.options
            self.hgc = HGCClient({k: start[k].shape for k in names}, o["density"],
                                 o["levels"], o["predict"], o["quantize"])
        self.pending = {k: trained[k] for k in self.hgc.shapes}
        out = {k: v for k, v in trained.items() if k not in self.hgc.shapes}
        names = float_buffers(out, set()) if self.buffers.codes else []
        if names:
            out = {k: v for k, v in out.items() if k not in names}
            out[BUFFERS_KEY] = self.buffers.encode({k: trained[k] for k in names})
        return out, raw_bytes(out)

    def answer(self, phase: str, payload: Any) -> tuple[Any, int]:
        if phase not in ("hgc_master", "hgc_values"):
            return super().answer(phase, payload)
        if self.hgc is None:
            raise FormatError(f"hgc: phase {phase!r} before this client trained")
        if phase == "hgc_master":  # its mask message and values message
            self.hgc.configure(*payload)
            self.mask = self.hgc.select_mask(self.pending)
            mask_msg = self.hgc.encode_mask(self.mask)
            values = self.hgc.encode_update(self.pending, self.mask)
            return (mask_msg, values), len(mask_msg) + len(values)
        mask_msg, density, compressed, clear = payload  # hgc_values: at the master's mask
        self.hgc.configure(density, compressed, clear)
        self.mask = self.hgc.decode_mask(mask_msg)
        values = self.hgc.encode_update(self.pending, self.mask)
        return values, len(values)

    def export(self) -> State:
        """``held/``, ``pending/`` and ``mask/`` per tensor, and once the end has its
        coder (after its first reply) ``residual/``, ``u/``, ``v/`` per HGC tensor."""
        out: State = {}
        for part, arrays in (("held", self.held or {}), ("pending", self.pending),
                             ("mask", self.mask or {})):
            out.update({f"{part}/{k}": v for k, v in arrays.items()})
        if self.hgc is not None:
            for part in ("residual", "u", "v"):
                out.update({f"{part}/{k}": v for k, v in getattr(self.hgc, part).items()})
        return out

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace this end's state with an exported one (missing ``residual/``: zeros,
        missing ``u/``/``v/``: the coder is made at the next reply)."""
        parts = state_parts(state, END_PARTS, "hgc")
        self.held = dict(parts["held"]) or None
        self.pending = dict(parts["pending"])
        self.hgc, self.mask = None, None
        coder = set(parts["u"]) | set(parts["v"]) | set(parts["residual"])
        if coder:
            if self.held is None or not coder <= set(self.held) \
                    or set(parts["u"]) != set(parts["v"]) or not parts["u"]:
                raise FormatError("hgc state: the predictor's tensors do not match the model")
            o = self.options
            self.hgc = HGCClient({k: self.held[k].shape for k in parts["u"]}, o["density"],
                                 o["levels"], o["predict"], o["quantize"])
            for part in ("residual", "u", "v"):
                target = getattr(self.hgc, part)
                for k, v in parts[part].items():
                    if v.dtype != np.float32 or v.size != target[k].size:
                        raise FormatError(f"hgc state: {part} of {k!r} is {v.dtype}"
                                          f"{v.shape}, expected float32 of {target[k].size}")
                    target[k] = v.reshape(-1).copy()
        if parts["mask"]:
            if self.hgc is None or set(parts["mask"]) != set(self.hgc.shapes):
                raise FormatError("hgc state: a mask without the coder's tensors")
            self.mask = {}
            for k, idx in parts["mask"].items():
                n = self.hgc.u[k].size
                if idx.dtype != np.int64 or idx.ndim != 1 or (idx.size and (
                        idx.min() < 0 or idx.max() >= n)):
                    raise FormatError(f"hgc state: the mask of {k!r} is not positions in "
                                      f"0..{n - 1}")
                self.mask[k] = idx


@register_exchange
class HGCExchange(RoundProtocol):
    """HGC's shared-mask exchange (``aggregate="hgc"``, plan ``hgc``)."""

    name = "hgc"
    title = "HGC"
    aggregates = ("hgc",)
    exclusive_plans = ("hgc",)
    every_round = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.options = hgc_options(settings.plan_options)

    def check(self) -> None:
        s = self.settings
        if (s.plan != "hgc" or s.send != "update" or s.algorithm != "fedavg"
                or s.server_lr != 1.0 or s.fraction != 1.0 or s.downlink_plan is not None):
            raise ConfigError("aggregate='hgc' runs HGC's exchange (shared mask, aggregate "
                              "sent back at the mask): use plan='hgc' (options: density, "
                              "warmup, levels, predict, quantize, correction, "
                              "correction_density) with send='update', algorithm='fedavg', "
                              "server_lr=1, fraction=1 (every client every round, as HGC "
                              "requires) and no downlink plan")

    @property
    def uplink_plan(self) -> Any:
        return None  # HGC codes its own messages

    def server(self, state: State, params: frozenset[str]) -> ServerEnd:
        return HGCRounds(self.options, tuple(self.settings.lr_milestones), state, params)

    def client(self, peer: str) -> ClientEnd:
        return HGCEnd(self.options)
