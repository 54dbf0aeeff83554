"""PowerSGD's two-phase exchange between clients and a server (Vogels et al. 2019,
Algorithm 1 with the all-reduces done by the server).

Per round and per low-rank tensor (matrix view ``M``, first axis x the rest), with
each client's error ``e_i`` and the shared ``Q`` (seeded on the first round, then
the previous round's average: warm start)::

    client i:  M_i = g_i + e_i;  send P_i = M_i Q                    (phase 1, uplink)
    server:    P = weighted mean of P_i;  send P^ = orth(P)           (downlink)
    client i:  send Q_i = M_i^T P^;  e_i = M_i - P^ Q_i^T             (phase 2, uplink)
    server:    Q = weighted mean of Q_i;  aggregate = P^ Q^T          (Q goes out with
                                                                     the next round)

Because every client multiplies by the same ``Q`` and the same ``P^``, the factors
are aligned and averaging them is averaging the clients' matrices projected on one
subspace: ``P^ Q^T = P^ P^T mean(M_i)``, exactly what the paper's all-reduce gives.
Tensors that are not worth factoring (vectors, small or thin matrices, tensors under
``threshold`` elements: biases, BatchNorm's weights and statistics), the *rest*, go up
in phase 1 beside the ``P_i``: the float ones as one frame of a stateless codec
(``rest``, ``fpz`` under the run's bound by default, :class:`~.buffers.BufferCoder`)
with error feedback on each client, integer ones raw (``rest=raw`` sends them all
raw). The server decodes the frame and averages them.

:class:`PowerSGDClient` is a client's side (its errors and the matrices between the
phases); :class:`PowerSGDServer` the server's (``Q``, the averages). Both exchange
plain ``{name: array}`` dicts of float32 factors; their bytes are the traffic. Each
end checks the factors it receives (the tensor names, shapes ``n x r`` / ``m x r`` with
``r = min(rank, n, m)``, finite values; :class:`fedpress.FormatError` if not) and
multiplies them in float32 (float16/bfloat16 factors have no BLAS path in NumPy).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dtypes import is_float
from ..errors import ConfigError, FormatError
from ..grad.powersgd import matrix_shape, orthonormalize
from ..state import MemoryStateStore
from .aggregate import weighted_mean
from .buffers import KEY as REST_KEY
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
from .single import SingleClient

State = dict[str, np.ndarray]


def low_rank_names(state: Mapping[str, np.ndarray], rank: int, threshold: int,
                   names: frozenset[str] | None = None) -> list[str]:
    """Tensors worth factoring at ``rank``: floating, 2-D or more, at least
    ``threshold`` elements, and smaller as factors (``(n + m) r < n m``)."""
    out = []
    for k, v in state.items():
        if names is not None and k not in names:
            continue
        n, m = matrix_shape(v.shape)
        r = min(rank, n, m)
        if (np.issubdtype(v.dtype, np.floating) and v.ndim >= 2 and v.size >= threshold
                and (n + m) * r < n * m):
            out.append(k)
    return out


def factor_rank(shape: tuple[int, ...], rank: int) -> int:
    """The factors' column count for a tensor of ``shape``: ``min(rank, n, m)``."""
    n, m = matrix_shape(shape)
    return min(rank, n, m)


def received_factor(message: Mapping[str, np.ndarray], name: str, rows: int, rank: int,
                    what: str) -> np.ndarray:
    """A peer's factor ``message[name]`` as float32, checked: a finite floating array of
    shape ``(rows, rank)``; FormatError if not (missing, other shape or dtype, NaN/Inf)."""
    if name not in message:
        raise FormatError(f"powersgd {what}: no factor for tensor {name!r}")
    arr = np.asarray(message[name])
    if arr.shape != (rows, rank):
        raise FormatError(f"powersgd {what}: factor of {name!r} has shape {arr.shape}, "
                          f"expected {(rows, rank)}")
    if not is_float(arr.dtype):
        raise FormatError(f"powersgd {what}: factor of {name!r} is {arr.dtype}, not floating")
    out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise FormatError(f"powersgd {what}: factor of {name!r} holds NaN or Inf")
    return out


def initial_q(name: str, shape: tuple[int, ...], rank: int, seed: int) -> np.ndarray:
    """The first round's shared ``Q`` of tensor ``name`` (both ends draw it)."""
    n, m = matrix_shape(shape)
    r = min(rank, n, m)
    tag = int.from_bytes(name.encode()[:16].ljust(16, b"\0"), "little")
    return np.random.default_rng([seed, tag, n, m]).standard_normal((m, r)).astype(np.float32)


#: the parts of a PowerSGD client's exported state (:meth:`PowerSGDClient.export`)
CLIENT_PARTS = ("errors", "m")
#: the plan options PowerSGD's exchange reads, and those every plan gets (ignored here)
OPTIONS = ("rank", "seed", "error_feedback", "threshold", "rest")
_GENERIC = ("mode", "eb", "lossy", "lossless")


def powersgd_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """PowerSGD's exchange options from a plan's options, checked, with their defaults.

    ``rank`` (2), ``seed`` (0), ``error_feedback`` (true: the low-rank error feedback),
    ``threshold`` (1000: smaller tensors are not factored) and ``rest`` (``"fpz"``: the
    codec of the float tensors not factored, a stateless peer-safe codec id, or
    ``"raw"``), coded under the plan's ``eb`` and ``mode`` (1e-2, ``"rel"``).
    ConfigError for an unknown option or a non-boolean ``error_feedback``.
    """
    unknown = set(options) - set(OPTIONS) - set(_GENERIC)
    if unknown:
        raise ConfigError(f"plan 'powersgd': unknown options {sorted(unknown)} (options: "
                          f"{', '.join(OPTIONS)})")
    o = options
    if not isinstance(o.get("error_feedback", True), bool):
        raise ConfigError("plan 'powersgd': error_feedback must be true or false, got "
                          f"{o['error_feedback']!r}")
    return {"rank": int(o.get("rank", 2)), "seed": int(o.get("seed", 0)),
            "error_feedback": o.get("error_feedback", True),
            "threshold": int(o.get("threshold", 1000)), "rest": o.get("rest", "fpz"),
            "eb": float(o.get("eb", 1e-2)), "mode": str(o.get("mode", "rel"))}


def rest_coder(options: Mapping[str, Any]) -> BufferCoder:
    """The coder of the float tensors not factored, from :func:`powersgd_options`
    (ConfigError for a codec that keeps state or is not safe on a peer's bytes)."""
    try:
        return BufferCoder(options["rest"], options["eb"], options["mode"])
    except ConfigError as exc:
        raise ConfigError(f"plan 'powersgd': rest={options['rest']!r}: {exc}") from None


class PowerSGDClient:
    """One client's side: ``first`` (P), then ``second`` (Q)."""

    def __init__(self, rank: int = 2, error_feedback: bool = True) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigError(f"powersgd: rank must be an int >= 1, got {rank!r}")
        self.rank, self.error_feedback = rank, error_feedback
        self.errors: State = {}
        self._m: dict[str, np.ndarray] = {}

    def first(self, grads: Mapping[str, np.ndarray], names: Sequence[str],
              q: Mapping[str, np.ndarray]) -> tuple[State, State]:
        """({name: P_i} of the low-rank tensors, {name: tensor} of the others).
        FormatError if the server's ``Q`` is malformed or its product overflows."""
        ps: State = {}
        mats: dict[str, np.ndarray] = {}
        for k in names:
            g = grads[k]
            n, m = matrix_shape(g.shape)
            mat = g.reshape(n, m).astype(np.float32)
            e = self.errors.get(k)
            if e is not None:
                mat = mat + e
            mats[k] = mat
            qk = received_factor(q, k, m, factor_rank(g.shape, self.rank), "Q")
            ps[k] = finite_product(mat, qk, k, "M Q")
        self._m = mats
        rest = {k: v for k, v in grads.items() if k not in mats}
        return ps, rest

    def second(self, p_hat: Mapping[str, np.ndarray]) -> State:
        """{name: Q_i}; updates the errors with what rank ``r`` left out. FormatError
        (nothing updated) if the server's ``P^`` is malformed, not orthonormal (a
        column longer than 1) or its products overflow."""
        qs: State = {}
        errors: State = {}
        for k, mat in self._m.items():
            n, m = mat.shape
            ph = received_factor(p_hat, k, n, min(self.rank, n, m), "P^")
            # unit columns (or zero ones), up to bfloat16's rounding of a genuine P^
            if np.any(np.sqrt(np.square(ph.astype(np.float64)).sum(axis=0)) > 1 + 2**-6):
                raise FormatError(f"powersgd P^: factor of {k!r} is not orthonormal")
            qs[k] = finite_product(mat.T, ph, k, "M^T P^")
            if self.error_feedback:
                with np.errstate(over="ignore", invalid="ignore"):
                    errors[k] = mat - ph @ qs[k].T
                if not np.isfinite(errors[k]).all():
                    raise FormatError(f"powersgd P^: the error of {k!r} overflows float32")
        self.errors.update(errors)
        self._m = {}
        return qs

    def export(self) -> State:
        """``errors/`` (the error feedback) and ``m/`` (the matrices between the two
        phases) per tensor."""
        return {**{f"errors/{k}": v for k, v in self.errors.items()},
                **{f"m/{k}": v for k, v in self._m.items()}}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the errors and matrices with exported ones (FormatError unless each
        is a finite float32 matrix)."""
        parts = state_parts(state, CLIENT_PARTS, "powersgd")
        for part, arrays in parts.items():
            for k, v in arrays.items():
                if v.dtype != np.float32 or v.ndim != 2 or not np.isfinite(v).all():
                    raise FormatError(f"powersgd state: {part} of {k!r} is not a finite "
                                      "float32 matrix")
        self.errors = dict(parts["errors"])
        self._m = dict(parts["m"])


def finite_product(a: np.ndarray, b: np.ndarray, name: str, what: str) -> np.ndarray:
    """``a @ b`` in float32; FormatError if it overflows (finite factors, huge values)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = a @ b
    if not np.isfinite(out).all():
        raise FormatError(f"powersgd: {what} of {name!r} overflows float32")
    return out


class PowerSGDServer:
    """The server's side: the shared ``Q`` of each tensor and the two averages."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], names: Sequence[str],
                 rank: int = 2, seed: int = 0) -> None:
        self.names, self.shapes, self.rank = list(names), dict(shapes), rank
        self.q: State = {k: initial_q(k, self.shapes[k], rank, seed) for k in self.names}

    def orthogonal_p(self, ps: Sequence[Mapping[str, np.ndarray]],
                     weights: Sequence[float]) -> State:
        """``P^ = orth(weighted mean of the P_i)`` for each tensor."""
        w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        out: State = {}
        for k in self.names:
            rows, rank = matrix_shape(self.shapes[k])[0], factor_rank(self.shapes[k], self.rank)
            mean = sum(wi * received_factor(p, k, rows, rank, "P").astype(np.float64)
                       for wi, p in zip(w, ps))
            out[k] = orthonormalize(np.asarray(mean)).astype(np.float32)
        return out

    def aggregate(self, p_hat: Mapping[str, np.ndarray],
                  qs: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
        """``P^ Q^T`` with ``Q`` the weighted mean of the ``Q_i`` (kept for the next
        round), shaped like the tensors. FormatError (``Q`` unchanged) if a client's
        ``Q_i`` is malformed or the product overflows."""
        w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
        out: State = {}
        new_q: State = {}
        for k in self.names:
            cols, rank = matrix_shape(self.shapes[k])[1], factor_rank(self.shapes[k], self.rank)
            q = sum(wi * received_factor(qi, k, cols, rank, "Q").astype(np.float64)
                    for wi, qi in zip(w, qs))
            new_q[k] = np.asarray(q, dtype=np.float32)
            out[k] = finite_product(np.asarray(p_hat[k], np.float32), new_q[k].T, k,
                                    "P^ Q^T").reshape(self.shapes[k])
        self.q.update(new_q)
        return out


P_PREFIX = "powersgd.P/"  # PowerSGD's phase-1 factors in a client's first reply


class PowerSGDRounds(ServerEnd):
    """The server's side over a run: ``Q`` travels with the weights, the first
    replies carry the ``P_i`` (``P_PREFIX + name``) beside the rest (the float tensors
    as one frame under :data:`~.buffers.KEY`, unless ``rest=raw``; integer ones raw),
    the second phase sends ``P^`` and collects the ``Q_i``.

    The server decodes each reply's frame first, against the float tensors it expects
    (names, shapes and dtypes of the model's), and puts the decoded tensors in the
    reply in its place; a client whose frame is missing or does not decode is left out
    of the round (:attr:`PhaseCost.dropped`). With the rest coded, the exchange's
    aggregate holds the weighted mean of the decoded rest too (:attr:`exchanged`).
    """

    def __init__(self, options: Mapping[str, Any], state: Mapping[str, np.ndarray],
                 params: frozenset[str]) -> None:
        o = powersgd_options(options)
        names = low_rank_names(state, o["rank"], o["threshold"], params)
        self.server = PowerSGDServer({k: state[k].shape for k in names}, names, o["rank"],
                                     o["seed"])
        self.coder = rest_coder(o)
        #: the float tensors of the rest, coded as one frame (none when ``rest=raw``)
        self.rest_names = float_buffers(state, set(names)) if self.coder.codes else []
        self.like = {k: np.asarray(state[k]) for k in self.rest_names}

    def downlink(self, chosen: list[Any], state: State, down: Any,
                 ) -> tuple[dict[Any, Any], dict[Any, int], float]:
        messages, sizes, seconds = down.send(chosen, state)
        q = self.server.q  # the shared Q travels with the weights
        return ({k: (m, q) for k, m in messages.items()},
                {k: b + raw_bytes(q) for k, b in sizes.items()}, seconds)

    @property
    def exchanged(self) -> frozenset[str]:
        return frozenset(self.server.names) | frozenset(self.rest_names)

    def _factors(self, message: Any, which: str, axis: int) -> State:
        """A client's factors ``{name: array}`` (``which``: "P" or "Q", of shape
        ``(rows or cols, rank)``), checked; FormatError if they are not."""
        if not isinstance(message, Mapping):
            raise FormatError(f"powersgd {which}: the answer is not a state dict")
        out = {}
        for k in self.server.names:
            shape = self.server.shapes[k]
            out[k] = received_factor(message, k, matrix_shape(shape)[axis],
                                     factor_rank(shape, self.server.rank), which)
        return out

    def exchange(self, chosen: list[Any], replies: list[State], weights: list[float],
                 call: Call, links: Links, down_bytes: dict[Any, int]) -> PhaseCost:
        names = self.server.names
        cost = PhaseCost({})
        t0 = time.perf_counter()
        rests = self._rest(chosen, replies, cost.dropped)
        cost.decode_s = time.perf_counter() - t0
        server_s = cost.decode_s
        kept, ps, kept_w = [], [], []
        for k, rep, w in zip(chosen, replies, weights, strict=True):
            factors = {n: rep.pop(P_PREFIX + n) for n in names if P_PREFIX + n in rep}
            if k in cost.dropped:
                continue
            try:
                self._factors(factors, "P", 0)
            except FormatError as exc:
                cost.dropped[k] = str(exc)
                continue
            kept.append(k)
            ps.append(factors)
            kept_w.append(w)
        if not kept:
            cost.server_s = server_s
            return cost
        t0 = time.perf_counter()
        p_hat = self.server.orthogonal_p(ps, kept_w)
        server_s += time.perf_counter() - t0
        second = {r.client: r for r in call("powersgd_second", {k: p_hat for k in kept})}
        qs, used, used_w = [], [], []
        for k, w in zip(kept, kept_w):
            down_bytes[k] += raw_bytes(p_hat)
            r = second.get(k)
            if r is None:
                cost.dropped[k] = "no answer to powersgd_second"
                continue
            try:
                self._factors(r.message, "Q", 1)
            except FormatError as exc:
                cost.dropped[k] = str(exc)
                continue
            qs.append(r.message)
            used.append(k)
            used_w.append(w)
            cost.bytes_up += r.nbytes
            cost.encode_s += r.encode_s
            transfer = (links.download_s(r.client, raw_bytes(p_hat))
                        + links.upload_s(r.client, r.nbytes))
            cost.comm_s = max(cost.comm_s, transfer)
            cost.slowest = max(cost.slowest, transfer + r.encode_s)
        if not qs:
            cost.server_s = server_s
            return cost
        t0 = time.perf_counter()
        cost.aggregate = self.server.aggregate(p_hat, qs, used_w)
        if self.rest_names:  # the decoded rest of the clients that got through
            cost.aggregate.update(weighted_mean([rests[k] for k in used], used_w))
        cost.server_s = server_s + time.perf_counter() - t0
        return cost

    def _rest(self, chosen: list[Any], replies: list[State], dropped: dict[Any, str],
              ) -> dict[Any, State]:
        """Each reply's float rest, decoded from its frame, which the decoded tensors
        replace in the reply; a client whose frame is missing, not a byte array or
        does not decode as the tensors expected is dropped (its frame taken out)."""
        out: dict[Any, State] = {}
        if not self.rest_names:
            return out
        for k, reply in zip(chosen, replies, strict=True):
            try:
                if not isinstance(reply, Mapping) or REST_KEY not in reply:
                    raise FormatError("the reply carries no coded rest")
                out[k] = self.coder.decode(reply.pop(REST_KEY), self.like)
            except FormatError as exc:
                dropped[k] = f"powersgd rest: {exc}"
                continue
            reply.update(out[k])
        return out


class PowerSGDEnd(SingleClient):
    """A client's side: the downlink as in the single exchange, then ``P_i`` and the
    rest in the first reply (the float tensors of the rest as one frame of
    :func:`rest_coder` with error feedback: what the coder left out is added to the
    next round's; integer ones raw) and ``Q_i`` in the second phase."""

    def __init__(self, settings: Settings, peer: str) -> None:
        super().__init__(settings, peer, encode=False)
        o = powersgd_options(settings.plan_options)
        self.encodes = True
        self.lowrank = PowerSGDClient(o["rank"], o["error_feedback"])
        self.threshold = o["threshold"]
        self.q: State = {}
        self.coder = rest_coder(o)
        self.feedback = ErrorFeedback()  # the rest's, whatever error_feedback says

    def receive(self, message: Any) -> State:
        message, self.q = message
        return super().receive(message)

    def reply(self, trained: State, start: State, params: frozenset[str]) -> tuple[Any, int]:
        names = low_rank_names(trained, self.lowrank.rank, self.threshold, params)
        ps, rest = self.lowrank.first(trained, names, self.q)
        coded = float_buffers(rest, set()) if self.coder.codes else []
        if coded:
            tensors = {k: rest[k] for k in coded}
            for k, r in self.feedback.residual.items():
                if k not in tensors or r.shape != tensors[k].shape:
                    raise FormatError(f"powersgd state: the rest's residual of {k!r} does "
                                      "not match the tensors")
            blob, _ = self.feedback.send(self.coder, tensors)
            rest = {k: v for k, v in rest.items() if k not in tensors} | {REST_KEY: blob}
        out = rest | {P_PREFIX + k: v for k, v in ps.items()}
        return out, raw_bytes(out)

    def answer(self, phase: str, payload: Any) -> tuple[Any, int]:
        if phase != "powersgd_second":
            return super().answer(phase, payload)
        qs = self.lowrank.second(payload)
        return qs, raw_bytes(qs)

    def export(self) -> State:
        """The low-rank state (:meth:`PowerSGDClient.export`), the rest's error-feedback
        residual (``rest/``, float64), the held copy (``held/``, downlink updates) and
        the downlink decoder's codec state (``decoder``:
        :meth:`fedpress.MemoryStateStore.to_bytes`, when it holds any)."""
        out = self.lowrank.export()
        out.update({f"rest/{k}": v for k, v in self.feedback.residual.items()})
        if self.updates:  # the copy downlink updates apply to
            out.update({f"held/{k}": v for k, v in (self.held or {}).items()})
        store = getattr(self.decoder, "store", None)
        if isinstance(store, MemoryStateStore) and store.keys():
            out["decoder/store"] = np.frombuffer(store.to_bytes(), np.uint8).copy()
        return out

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        parts = state_parts(state, (*CLIENT_PARTS, "rest", "held", "decoder"), "powersgd")
        self.lowrank.load({f"{p}/{k}": v for p in CLIENT_PARTS for k, v in parts[p].items()})
        if parts["rest"] and not self.coder.codes:
            raise FormatError("powersgd state: a residual of the rest, which this end "
                              "sends raw")
        for k, v in parts["rest"].items():
            if not is_float(v.dtype) or not np.isfinite(v.astype(np.float64)).all():
                raise FormatError(f"powersgd state: rest of {k!r} is not a finite float "
                                  "array")
        self.feedback.residual = {k: v.astype(np.float64) for k, v in parts["rest"].items()}
        if self.updates:
            self.held = dict(parts["held"]) or None
        blob = parts["decoder"].get("store")
        if set(parts["decoder"]) - {"store"} or (blob is not None and self.decoder is None):
            raise FormatError("powersgd state: a decoder state this end has no decoder for")
        if blob is not None and self.decoder is not None:
            self.decoder.store = MemoryStateStore.from_bytes(blob.tobytes())


@register_exchange
class PowerSGDExchange(RoundProtocol):
    """PowerSGD's two-phase exchange (``aggregate="powersgd"``)."""

    name = "powersgd"
    title = "PowerSGD"
    aggregates = ("powersgd",)

    def check(self) -> None:
        s = self.settings
        if s.plan != "powersgd" or s.send == "weights":
            raise ConfigError("aggregate='powersgd' runs PowerSGD's two-phase exchange: "
                              "use plan='powersgd' (options: rank, seed, error_feedback, "
                              "threshold, rest) with send='gradient' or 'update'")
        rest_coder(powersgd_options(s.plan_options))

    @property
    def uplink_plan(self) -> Any:
        return None  # the exchange codes its own messages (the factors raw, the rest)

    def server(self, state: State, params: frozenset[str]) -> ServerEnd:
        return PowerSGDRounds(self.settings.plan_options, state, params)

    def client(self, peer: str) -> ClientEnd:
        return PowerSGDEnd(self.settings, peer)
