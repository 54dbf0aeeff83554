"""The federated-learning loop: FedAvg, FedProx and FedAvgM with compressed traffic.

One round: the server encodes the global weights for the downlink (``downlink_plan``;
``None`` sends raw float32; a stateless plan is encoded once and broadcast, a stateful
one per client), each sampled client (:mod:`fedpress.sim.client`) decodes them, trains
locally and encodes what it sends (``send``: its ``weights``, its ``update`` = local -
start, or a ``gradient`` = the mean gradient of ``local_steps`` minibatches at the
start weights, FedSGD style) with its own :class:`fedpress.UpdateEncoder` (``plan``;
``None`` = raw), the server decodes every reply (one :class:`fedpress.UpdateDecoder`,
state per client) and aggregates, weighted by the clients' sample counts. Clients run
in this process or in worker processes (:mod:`fedpress.sim.pool`); only messages
(frames or raw state dicts) pass between them and the server.

Bytes are the real frame lengths (raw: the tensors' bytes). Encode, decode, training
and aggregation times are measured; transfer times come from the
:class:`~fedpress.sim.network.Network`. Round time = the slowest sampled client's
download + decode + training + encode + upload, plus the server's decode,
aggregation and encode; PowerSGD's exchange (``aggregate="powersgd"``) adds its
second phase (the slowest client's download of ``P^``, its ``Q_i`` and upload).

Determinism: client ``k`` of round ``r`` shuffles its data (and draws its dropout
masks) with torch generators seeded ``seed * 1_000_003 + r * 1_009 + k``; with raw
traffic and FedAvg the result equals a plain PyTorch loop doing the same (see the
tests), whichever pool runs the clients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional

import fedpress

from ..errors import ConfigError
from ..exchange import changes, zeros_like
from ..grad.powersgd_exchange import PowerSGDServer, low_rank_names
from .client import (
    P_PREFIX,
    Message,
    State,
    apply_changes,
    hgc_names,
    hgc_options,
    load_state,
    make_decoder,
    make_encoder,
    normalise,
    raw_bytes,
    state_of,
    warm_codecs,
)
from .data import Dataset, partition
from .models import build_model
from .network import Network
from .pool import make_pool

ALGORITHMS = ("fedavg", "fedprox", "fedavgm")
SENDS = ("weights", "update", "gradient")
AGGREGATES = ("mean", "vote", "powersgd", "hgc")
DOWNLINK_SENDS = ("weights", "update")


@dataclass
class FLConfig:
    """What to simulate (see the module docs)."""

    model: str = "cnn"
    clients: int = 4
    rounds: int = 5
    fraction: float = 1.0
    local_epochs: int = 1
    local_steps: int | None = None  # overrides local_epochs when set
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    algorithm: str = "fedavg"
    mu: float = 0.01  # FedProx
    server_lr: float = 1.0
    server_momentum: float = 0.9  # FedAvgM
    send: str = "weights"
    partition: str = "iid"
    alpha: float = 0.5
    plan: str | Mapping[str, Any] | None = None
    plan_options: dict[str, Any] = field(default_factory=dict)
    downlink_plan: str | Mapping[str, Any] | None = None
    downlink_options: dict[str, Any] = field(default_factory=dict)
    downlink_send: str = "weights"  # or "update": the change since each client's copy
    aggregate: str = "mean"  # "vote": signSGD's vote; "powersgd"/"hgc": their exchanges
    #: weights uplink coded against the model each client started from (both ends hold it)
    reference: bool = False
    #: rounds from which the learning rate is multiplied by ``lr_gamma`` (step schedule)
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    #: (round, momentum) steps: the clients' momentum from that round on
    momentum_steps: tuple[tuple[int, float], ...] = ()
    seed: int = 0

    def lr_at(self, rnd: int) -> float:
        """The learning rate of round ``rnd`` (1-based) under the step schedule."""
        return self.lr * self.lr_gamma ** sum(1 for m in self.lr_milestones if rnd >= m)

    def momentum_at(self, rnd: int) -> float:
        """The clients' momentum in round ``rnd``: the last step at or before it."""
        value = self.momentum
        for start, m in sorted(self.momentum_steps):
            if rnd >= start:
                value = m
        return value

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; choose one of "
                              f"{', '.join(ALGORITHMS)}")
        if self.send not in SENDS:
            raise ConfigError(f"unknown send {self.send!r}; choose one of {', '.join(SENDS)}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"unknown aggregate {self.aggregate!r}; choose one of "
                              f"{', '.join(AGGREGATES)}")
        if self.downlink_send not in DOWNLINK_SENDS:
            raise ConfigError(f"unknown downlink_send {self.downlink_send!r}; choose one of "
                              f"{', '.join(DOWNLINK_SENDS)}")
        if self.aggregate == "powersgd" and (self.plan != "powersgd"
                                             or self.send == "weights"):
            raise ConfigError("aggregate='powersgd' runs PowerSGD's two-phase exchange: "
                              "use plan='powersgd' (options: rank, seed, error_feedback) "
                              "with send='gradient' or 'update'")
        if self.aggregate == "hgc" and (self.plan != "hgc" or self.send != "update"
                                        or self.algorithm != "fedavg"
                                        or self.server_lr != 1.0 or self.fraction != 1.0
                                        or self.downlink_plan is not None):
            raise ConfigError("aggregate='hgc' runs HGC's exchange (shared mask, aggregate "
                              "sent back at the mask): use plan='hgc' (options: density, "
                              "warmup, levels, predict, quantize, correction, "
                              "correction_density) with send='update', algorithm='fedavg', "
                              "server_lr=1, fraction=1 (every client every round, as HGC "
                              "requires) and no downlink plan")
        if self.plan == "hgc" and self.aggregate != "hgc":
            raise ConfigError("in the simulator, plan 'hgc' runs HGC's exchange: set "
                              "aggregate='hgc' (the 'hgc' codec, one sender's stream, is "
                              "for UpdateEncoder)")
        if self.aggregate == "hgc":
            hgc_options(self)  # its options, checked before anything runs
        if self.reference and (self.send != "weights" or self.plan is None):
            raise ConfigError("reference=true codes the weights a client sends against the "
                              "model it started from: it needs send='weights' and an "
                              "uplink plan")
        if self.aggregate == "vote" and self.send == "weights":
            raise ConfigError("aggregate='vote' takes signs of gradients or updates; use "
                              "send='gradient' or 'update'")
        if any(int(m) < 1 for m in self.lr_milestones) or not 0 < self.lr_gamma <= 1:
            raise ConfigError("lr_milestones are rounds >= 1 and lr_gamma is in (0, 1]")
        if any(not 0 <= m < 1 or r < 1 for r, m in self.momentum_steps):
            raise ConfigError("momentum_steps are (round >= 1, momentum in [0, 1)) pairs")
        for name in ("clients", "rounds", "batch_size", "local_epochs", "local_steps", "seed"):
            value = getattr(self, name)
            if name == "local_steps" and value is None:
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
                    or value < (0 if name == "seed" else 1):
                raise ConfigError(f"{name} must be >= {0 if name == 'seed' else 1} (an "
                                  f"integer), got {value!r}")
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if not self.lr > 0 or not self.server_lr > 0:
            raise ConfigError("lr and server_lr must be > 0")


@dataclass
class RoundMetrics:
    round: int
    accuracy: float
    loss: float
    bytes_up: int
    bytes_down: int
    raw_up: int
    raw_down: int
    encode_s: float
    decode_s: float
    train_s: float
    comm_s: float
    round_s: float
    wall_s: float
    clients: list[int]

    @property
    def cr_up(self) -> float:
        return self.raw_up / self.bytes_up

    @property
    def cr_down(self) -> float:
        return self.raw_down / self.bytes_down

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "clients"}
        out.update(cr_up=self.cr_up, cr_down=self.cr_down,
                   clients=" ".join(map(str, self.clients)))
        return out


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch: int = 1000) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(y), batch):
            out = model(x[i:i + batch])
            loss += float(functional.cross_entropy(out, y[i:i + batch], reduction="sum"))
            correct += int((out.argmax(1) == y[i:i + batch]).sum())
    return correct / len(y), loss / len(y)


def weighted_mean(states: list[State], weights: list[float]) -> State:
    """Weighted mean of float tensors (in float64, cast back); other dtypes: the
    rounded mean (e.g. BatchNorm's num_batches_tracked)."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    out: State = {}
    for k, ref in states[0].items():
        acc = sum(wi * s[k].astype(np.float64) for wi, s in zip(w, states))
        out[k] = (np.asarray(acc).astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating)
                  else np.rint(acc).astype(ref.dtype))
    return out


def simulate(ds: Dataset, cfg: FLConfig, network: Network | None = None,
             on_round: Callable[[RoundMetrics], None] | None = None,
             test_limit: int | None = None, workers: int = 1,
             threads: int | None = None) -> tuple[list[RoundMetrics], torch.nn.Module]:
    """Run ``cfg.rounds`` rounds; returns the metrics and the final global model.

    ``workers > 1`` runs the clients in that many processes with ``threads`` PyTorch
    threads each; ``threads`` defaults to this process's thread count shared out
    (with one worker, the clients train with ``threads`` threads here). Runs agree
    across pools at equal thread counts; see :mod:`fedpress.sim.pool`.
    """
    cfg.check()
    for plan, options, sends, what in ((codec_plan(cfg), cfg.plan_options, cfg.send, "send"),
                                       (cfg.downlink_plan, cfg.downlink_options,
                                        cfg.downlink_send, "downlink_send")):
        gradient_codec = gradient_compressor(plan, options)
        if gradient_codec is not None and sends == "weights":
            raise ConfigError(f"{gradient_codec!r} compresses gradients or updates, not "
                              f"weights (it would sparsify or sign the model itself): set "
                              f"{what} to 'update'" + (" or 'gradient'" if what == "send"
                                                      else ""))
    network = network or Network.build(cfg.clients)
    if network.up_mbps.size != cfg.clients:
        raise ConfigError(f"the network has {network.up_mbps.size} clients, the run "
                          f"{cfg.clients}")
    parts = partition(ds.y_train, cfg.clients, cfg.partition, alpha=cfg.alpha, seed=cfg.seed)
    n_test = len(ds.y_test) if test_limit is None else min(test_limit, len(ds.y_test))
    x_test, y_test = normalise(ds.x_test[:n_test]), torch.from_numpy(ds.y_test[:n_test])

    model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    global_state = state_of(model)
    params = frozenset(n for n, _ in model.named_parameters())
    down = Downlink(cfg.downlink_plan, cfg.downlink_options, cfg.clients,
                    cfg.downlink_send, global_state, track=cfg.reference)
    up_decoder = make_decoder(codec_plan(cfg), cfg.plan_options)
    warm_codecs(codec_plan(cfg), cfg.plan_options)
    if threads is None:
        threads = max(1, torch.get_num_threads() // max(1, workers))
    lowrank = powersgd_server(cfg, global_state, params)
    hgc = HGCRound(cfg, global_state, params) if cfg.aggregate == "hgc" else None
    pool = make_pool(cfg, [(ds.x_train[p], ds.y_train[p]) for p in parts], ds.input_shape,
                     ds.num_classes, workers, threads)
    try:
        velocity: State | None = None
        rng = np.random.default_rng(cfg.seed)
        per_round = max(1, round(cfg.fraction * cfg.clients))
        history: list[RoundMetrics] = []
        for rnd in range(1, cfg.rounds + 1):
            wall0 = time.perf_counter()
            chosen = sorted(rng.choice(cfg.clients, per_round, replace=False).tolist())
            if hgc is not None:  # the last aggregate at the last mask, and the buffers
                messages, down_bytes = hgc.downlink(chosen, global_state)
                server_s = 0.0
            else:
                messages, down_bytes, server_s = down.send(chosen, global_state)
            if lowrank is not None:  # the shared Q travels with the weights
                messages = {k: (m, lowrank.q) for k, m in messages.items()}  # type: ignore
                down_bytes = {k: b + raw_bytes(lowrank.q) for k, b in down_bytes.items()}
            results = pool.run(rnd, messages)
            replies, weights = [], []
            bytes_up = raw_up = 0
            enc_s, dec_s = server_s, 0.0
            train_s = slowest = comm_s = 0.0
            for r in results:
                if isinstance(r.message, dict):
                    got, d_up = r.message, 0.0
                else:
                    assert up_decoder is not None
                    t0 = time.perf_counter()
                    got = up_decoder.decode(r.message, peer=str(r.client),
                                            reference=down.held[r.client]
                                            if cfg.reference else None)
                    d_up = time.perf_counter() - t0
                replies.append(got)
                weights.append(r.samples)
                bytes_up += r.nbytes
                raw_up += r.raw_bytes
                enc_s += r.encode_s
                dec_s += r.decode_s + d_up
                train_s += r.train_s
                transfer = (network.download_s(r.client, down_bytes[r.client])
                            + network.upload_s(r.client, r.nbytes))
                comm_s = max(comm_s, transfer)
                slowest = max(slowest, transfer + r.decode_s + r.train_s + r.encode_s)
                server_s += d_up
            factored: State = {}
            if hgc is not None:  # the master's mask, then everyone's values at it
                exchange = hgc.exchange(pool, rnd, chosen, weights, network, down_bytes)
                factored = exchange.aggregate
                bytes_up += exchange.bytes_up
                enc_s += exchange.encode_s
                dec_s += exchange.decode_s
                server_s += exchange.server_s
                comm_s += exchange.comm_s
                slowest += exchange.slowest
            if lowrank is not None:  # phase 2: P^ down, Q_i up
                t0 = time.perf_counter()
                p_hat = lowrank.orthogonal_p([{k: rep.pop(P_PREFIX + k) for k in lowrank.names}
                                              for rep in replies], weights)
                server_s += time.perf_counter() - t0
                second = pool.call("powersgd_second", rnd, {k: p_hat for k in chosen})
                phase2 = comm2 = 0.0
                for r in second:
                    bytes_up += r.nbytes
                    down_bytes[r.client] += raw_bytes(p_hat)
                    enc_s += r.encode_s
                    transfer = (network.download_s(r.client, raw_bytes(p_hat))
                                + network.upload_s(r.client, r.nbytes))
                    comm2 = max(comm2, transfer)
                    phase2 = max(phase2, transfer + r.encode_s)
                comm_s += comm2
                slowest += phase2
                t0 = time.perf_counter()
                factored = lowrank.aggregate(p_hat, [r.message for r in second], weights)
                server_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            global_state, velocity = _aggregate(global_state, replies, weights, cfg, velocity,
                                                params, factored, cfg.lr_at(rnd))
            server_s += time.perf_counter() - t0
            load_state(model, global_state)
            acc, loss = evaluate(model, x_test, y_test)
            m = RoundMetrics(rnd, acc, loss, bytes_up, sum(down_bytes.values()), raw_up,
                             raw_bytes(global_state) * len(chosen), enc_s, dec_s, train_s,
                             comm_s, slowest + server_s, time.perf_counter() - wall0, chosen)
            history.append(m)
            if on_round is not None:
                on_round(m)
    finally:
        pool.close()
    return history, model


class Downlink:
    """The server's end of the downlink.

    ``send="weights"``: the global model, raw, or encoded once and broadcast
    (stateless plans), or encoded per client (stateful plans keep per-client state).
    ``send="update"``: each client gets the change from the model it holds to the
    global model; the server decodes its own frames to mirror what every client
    holds, so what a lossy downlink dropped is sent again later (error feedback
    for free). Clients that hold the same copy share one frame when the plan is
    stateless. Both ends start from ``initial`` (the simulator's seeded initial
    model; ``None``: nothing, so the first change is the whole model). Clients are
    keyed ``0 .. clients - 1``, and any other key names a new client.

    ``track=True`` (weights uplink with a reference) also keeps, in ``held``, the
    model each client decoded in weights mode: the server decodes its own frames.
    """

    def __init__(self, plan: Any, options: Mapping[str, Any], clients: int,
                 send: str = "weights", initial: State | None = None,
                 track: bool = False) -> None:
        warm_codecs(plan, options)
        self.plan, self.options, self.send_mode = plan, options, send
        probe = make_encoder(plan, options, peer="server")
        if probe is not None and probe.residual_feedback:
            raise ConfigError("residual_feedback is for a sender's stream of its own tensors; "
                              "the downlink cannot use it (update mode already re-sends what "
                              "was dropped)")
        self.broadcast = probe is None or not probe.plan.stateful
        if send == "update" and probe is not None and _keeps_sender_state(probe.plan):
            raise ConfigError(f"downlink plan {plan!r} keeps state (error feedback or a "
                              "residual), but downlink updates already re-send what was "
                              "dropped (the server mirrors each client's copy): use its "
                              "stateless form, e.g. 'topk' for 'ef:topk', 'ternary' for "
                              "'stc', 'signsgd' for 'efsignsgd'")
        self.decoder = make_decoder(plan, options) or fedpress.UpdateDecoder()
        self.track = track or send == "update"
        self.initial = initial
        # per client (any hashable key; clients not seen yet start from ``initial``):
        self.encoders: dict[Any, fedpress.UpdateEncoder] = {}
        self.held: dict[Any, State | None] = {}  # what it holds (update mode, or tracked)
        self.version: dict[Any, int] = {}  # equal versions: equal copies
        self._next_version = 1
        for k in range(clients):
            self._client(k)

    def _client(self, k: Any) -> None:
        """Start tracking client ``k`` (its copy: the initial model, version 0)."""
        if k not in self.version:
            self.held[k], self.version[k] = self.initial, 0
            encoder = make_encoder(self.plan, self.options, peer="server")
            if encoder is not None:
                self.encoders[k] = encoder

    def forget(self, k: Any) -> None:
        """Drop client ``k``'s copy and codec state: its next message starts afresh from
        ``initial`` (a client that failed, whose copy is no longer known)."""
        for table in (self.held, self.version, self.encoders):
            table.pop(k, None)
        self.decoder.reset(str(k))

    def send(self, chosen: list[Any], state: State,
             ) -> tuple[dict[Any, Message], dict[Any, int], float]:
        """({client: message}, {client: bytes on the wire}, the server's encode seconds)."""
        t0 = time.perf_counter()
        groups: dict[Any, list[Any]] = {}
        for k in chosen:
            self._client(k)
            key = (self.version[k] if self.send_mode == "update" else 0) if self.broadcast \
                else ("own", k)
            groups.setdefault(key, []).append(k)
        messages: dict[Any, Message] = {}
        for members in groups.values():
            first = members[0]
            held = self.held[first]
            content = state if self.send_mode == "weights" else \
                changes(held if held is not None else zeros_like(state), state)
            message: Message = content if self.plan is None else \
                self.encoders[first].encode(content)
            if self.track:
                got = content if isinstance(message, dict) else \
                    self.decoder.decode(message, peer=str(first))
                held = apply_changes(held if held is not None else zeros_like(state), got) \
                    if self.send_mode == "update" else got
                version, self._next_version = self._next_version, self._next_version + 1
                for k in members:
                    self.held[k], self.version[k] = held, version
            for k in members:
                messages[k] = message
        seconds = time.perf_counter() - t0 if self.plan is not None else 0.0
        sizes = {k: raw_bytes(m) if isinstance(m, dict) else len(m)
                 for k, m in messages.items()}
        return messages, sizes, seconds


def _keeps_sender_state(plan: Any) -> bool:
    """Whether a codec of ``plan`` keeps state only the sender holds (error feedback,
    residuals); mirrored state (``gaeb``'s history) is no such thing."""
    from ..abc import Scope, StatefulCodec

    return any(isinstance(c, StatefulCodec) and c.scope is Scope.SENDER
               for c in [r.codec for r in plan.rules] + [plan.default, plan.lossless])


def gradient_compressor(plan: Any, options: Mapping[str, Any]) -> str | None:
    """The id of a gradient compressor in ``plan`` (wrapped in ``ef`` or not), if any."""
    from ..grad.base import GradientCodec, StatefulGradientCodec
    from ..grad.ef import ErrorFeedback

    encoder = make_encoder(plan, options)
    if encoder is None:
        return None
    p = encoder.plan
    for codec in [r.codec for r in p.rules] + [p.default]:
        inner = codec.codec if isinstance(codec, ErrorFeedback) else codec
        if isinstance(inner, (GradientCodec, StatefulGradientCodec)):
            return codec.codec_id
    return None


def codec_plan(cfg: FLConfig) -> Any:
    """The uplink plan as an UpdateEncoder plan (None for raw traffic and for HGC's
    exchange, which is not one)."""
    return None if cfg.aggregate == "hgc" else cfg.plan


def powersgd_server(cfg: FLConfig, state: State, params: frozenset[str],
                    ) -> PowerSGDServer | None:
    """The server's side of PowerSGD's exchange when ``cfg.aggregate == "powersgd"``."""
    if cfg.aggregate != "powersgd":
        return None
    rank, seed = int(cfg.plan_options.get("rank", 2)), int(cfg.plan_options.get("seed", 0))
    names = low_rank_names(state, rank, int(cfg.plan_options.get("threshold", 1000)), params)
    return PowerSGDServer({k: state[k].shape for k in names}, names, rank, seed)


def _aggregate(global_state: State, replies: list[State], weights: list[float], cfg: FLConfig,
               velocity: State | None, params: frozenset[str],
               factored: State | None = None, lr: float | None = None,
               ) -> tuple[State, State | None]:
    """The new global state (and FedAvgM's velocity) from the decoded replies
    (``factored``: tensors already averaged by PowerSGD's exchange).

    Gradients move the parameters only; with ``send="gradient"`` the buffers
    (BatchNorm statistics) take the clients' mean, like integer buffers always do.
    """
    mean = weighted_mean(replies, weights) | dict(factored or {})
    floats = [k for k, v in global_state.items() if np.issubdtype(v.dtype, np.floating)
              and (cfg.send != "gradient" or k in params)]
    if cfg.aggregate == "vote":  # signSGD: the majority of the clients' signs
        from ..grad.sign import majority_vote

        for k in params:
            mean[k] = majority_vote([r[k] for r in replies], weights)
    if cfg.send == "weights" and cfg.algorithm != "fedavgm" and cfg.server_lr == 1.0:
        return mean, velocity  # plain FedAvg / FedProx on weights
    # a pseudo-gradient: what the clients want the global model to move by
    if cfg.send == "weights":
        step = {k: mean[k].astype(np.float64) - global_state[k] for k in floats}
    elif cfg.send == "update":
        step = {k: mean[k].astype(np.float64) for k in floats}
    else:  # gradient
        step = {k: -(cfg.lr if lr is None else lr) * mean[k].astype(np.float64)
                for k in floats}
    if cfg.algorithm == "fedavgm":
        velocity = {k: cfg.server_momentum * (velocity[k] if velocity else 0.0) + step[k]
                    for k in floats}
        step = velocity
    new = dict(global_state)
    for k in floats:
        new[k] = (global_state[k] + cfg.server_lr * step[k]).astype(global_state[k].dtype)
    for k, v in mean.items():  # the other buffers: the clients' mean
        if k not in floats:
            new[k] = v  # sent as values in every mode (never as differences)
    return new, velocity


@dataclass
class HGCExchange:
    """What HGC's mid-round exchange added to a round."""

    aggregate: State
    bytes_up: int
    encode_s: float
    decode_s: float
    server_s: float
    comm_s: float
    slowest: float


class HGCRound:
    """The server's side of HGC's rounds (see :mod:`fedpress.grad.hgc_exchange`).

    Each round the clients train and reply with their buffers (BatchNorm statistics)
    raw; then the master (round-robin over the clients) sends its mask and values,
    the server forwards the mask to the others, they send values at it, and the server
    averages. The next round's downlink carries the aggregate at that mask and the new
    buffers; every client holds the global model exactly (same arithmetic).
    """

    def __init__(self, cfg: FLConfig, state: State, params: frozenset[str]) -> None:
        from ..grad.hgc_exchange import HGCServer

        self.cfg = cfg
        self.options = hgc_options(cfg)
        self.names = hgc_names(state, params)
        o = self.options
        self.server = HGCServer({k: state[k].shape for k in self.names}, o["density"],
                                o["levels"], o["predict"], o["quantize"])
        self.last: bytes | None = None  # the last aggregate message

    def downlink(self, chosen: list[int], state: State) -> tuple[dict[int, Any], dict[int, int]]:
        """Round 1: the initial model (raw; the simulated clients start from the same
        seeded copy, so nothing is passed, but its bytes are counted). Later: the last
        aggregate at the last mask, and the buffers raw."""
        buffers = {k: v for k, v in state.items() if k not in self.names}
        message = None if self.last is None else (self.last, buffers)
        size = raw_bytes(state) if self.last is None else len(self.last) + raw_bytes(buffers)
        return {k: message for k in chosen}, {k: size for k in chosen}

    def exchange(self, pool: Any, rnd: int, chosen: list[int], weights: list[float],
                 network: Network, down_bytes: dict[int, int]) -> HGCExchange:
        from ..grad.hgc_exchange import correction, schedule

        o = self.options
        density, compressed = schedule(rnd - 1, o["density"], o["warmup"])
        if compressed:  # corrections start after the warm-up
            density, clear = correction(rnd - 1, density, self.cfg.lr_milestones,
                                        o["correction"], o["correction_density"])
        else:
            clear = False
        self.server.configure(density, compressed)
        master = chosen[(rnd - 1) % len(chosen)]
        (first,) = pool.call("hgc_master", rnd, {master: (density, compressed, clear)})
        mask_msg, values = first.message
        t0 = time.perf_counter()
        mask = self.server.decode_mask(mask_msg)
        server_s = time.perf_counter() - t0
        others = pool.call("hgc_values", rnd, {k: (mask_msg, density, compressed, clear)
                                               for k in chosen if k != master})
        results = {r.client: r for r in [first, *others]}
        t0 = time.perf_counter()
        decoded = [self.server.decode_values(values if k == master else results[k].message,
                                             mask) for k in chosen]
        decode_s = time.perf_counter() - t0
        server_s += decode_s
        t0 = time.perf_counter()
        self.last, aggregate = self.server.aggregate(decoded, weights, mask)
        server_s += time.perf_counter() - t0
        up_master = network.upload_s(master, first.nbytes)
        phase = up_master + first.encode_s
        comm = up_master
        for k in chosen:
            if k == master:
                continue
            down_bytes[k] += len(mask_msg)  # the mask, forwarded mid-round
            t = network.download_s(k, len(mask_msg)) + network.upload_s(k, results[k].nbytes)
            comm = max(comm, up_master + t)
            phase = max(phase, up_master + first.encode_s + t + results[k].encode_s)
        return HGCExchange(aggregate, sum(r.nbytes for r in results.values()),
                           sum(r.encode_s for r in results.values()), decode_s, server_s,
                           comm, phase)

