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
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.nn import functional

from ..errors import ConfigError
from ..exchange import (
    Downlink,
    RoundProtocol,
    State,
    exchange_for,
    gradient_compressor,
    majority_vote,
    make_decoder,
    raw_bytes,
    warm_codecs,
    weighted_mean,
)
from .client import DEADLINE, ClientResult, Quote, load_state, normalise, state_of
from .data import Dataset, partition
from .models import build_model
from .network import Network
from .pool import ClientPool, make_pool

ALGORITHMS = ("fedavg", "fedprox", "fedavgm")
SENDS = ("weights", "update", "gradient")
AGGREGATES = ("mean", "vote", "powersgd", "hgc")
DOWNLINK_SENDS = ("weights", "update")
CLIENT_STATES = ("reset", "keep")
FIRST_DOWNLOADS = ("seeded", "sent", "coded")


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
    #: "reset": each round's local optimizer starts afresh (momentum at zero); "keep":
    #: a client keeps its momentum buffers between the rounds it takes part in (DGC,
    #: HGC and error-feedback methods assume it)
    client_state: str = "reset"
    #: "seeded": both ends start from the seeded initial model, which is not counted;
    #: "sent": a client's first download of an update-mode downlink also counts the
    #: initial model, raw (a weights downlink and HGC's send the whole model anyway);
    #: "coded": an update-mode downlink with a plan codes the initial model like any
    #: update (the client starts from nothing and holds what it decoded), otherwise
    #: as "sent"
    first_download: str = "seeded"
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

    @property
    def codes_first_download(self) -> bool:
        """Whether a client's first download is the initial model coded by the
        downlink plan as an update from nothing (``first_download="coded"``). A
        protocol that sends its own downlink (HGC) refuses a downlink plan."""
        return (self.first_download == "coded" and self.downlink_send == "update"
                and self.downlink_plan is not None)

    def protocol(self) -> RoundProtocol:
        """The round protocol ``aggregate`` selects, checked against these settings."""
        return exchange_for(self, self.aggregate)

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; choose one of "
                              f"{', '.join(ALGORITHMS)}")
        if self.send not in SENDS:
            raise ConfigError(f"unknown send {self.send!r}; choose one of {', '.join(SENDS)}")
        if self.downlink_send not in DOWNLINK_SENDS:
            raise ConfigError(f"unknown downlink_send {self.downlink_send!r}; choose one of "
                              f"{', '.join(DOWNLINK_SENDS)}")
        for name, options in (("client_state", CLIENT_STATES),
                              ("first_download", FIRST_DOWNLOADS)):
            if getattr(self, name) not in options:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choose one of "
                                  f"{', '.join(options)}")
        self.protocol()  # the round protocol checks its own settings
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
        if self.algorithm == "fedavgm" and has_sender_feedback(self.plan):
            warnings.warn(f"plan {self.plan!r} feeds its error back on the clients and the "
                          "server steps with momentum (fedavgm): measured together they lose "
                          "several points where each alone loses under one (docs/frontier.md, "
                          "error feedback and server momentum); pick one", UserWarning,
                          stacklevel=2)


def has_sender_feedback(plan: Any) -> bool:
    """Whether an uplink plan keeps an error-feedback residual on the sender
    (``ef:<codec>``, ``efsignsgd``, ``stc``)."""
    return isinstance(plan, str) and (plan.startswith("ef:") or plan in ("efsignsgd", "stc"))


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
    #: an adaptive plan's choices, one row per client (report: ``choices.csv``)
    choices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cr_up(self) -> float:
        return self.raw_up / self.bytes_up

    @property
    def cr_down(self) -> float:
        return self.raw_down / self.bytes_down

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("clients", "choices")}
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
    protocol = cfg.protocol()
    uplink = protocol.uplink_plan
    for plan, options, sends, what in ((uplink, cfg.plan_options, cfg.send, "send"),
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
                    cfg.downlink_send, None if cfg.codes_first_download else global_state,
                    track=cfg.reference, count_initial=cfg.first_download != "seeded")
    up_decoder = make_decoder(uplink, cfg.plan_options)
    warm_codecs(uplink, cfg.plan_options)
    if threads is None:
        threads = max(1, torch.get_num_threads() // max(1, workers))
    server = protocol.server(global_state, params)
    pool = make_pool(cfg, [(ds.x_train[p], ds.y_train[p]) for p in parts], ds.input_shape,
                     ds.num_classes, workers, threads, network)
    try:
        velocity: State | None = None
        rng = np.random.default_rng(cfg.seed)
        per_round = max(1, round(cfg.fraction * cfg.clients))
        history: list[RoundMetrics] = []
        for rnd in range(1, cfg.rounds + 1):
            wall0 = time.perf_counter()
            chosen = sorted(rng.choice(cfg.clients, per_round, replace=False).tolist())
            net = network.at(rnd)  # this round's links
            messages, down_bytes, server_s = server.downlink(chosen, global_state, down)
            results = pool.run(rnd, messages)
            if any(isinstance(r.message, Quote) for r in results):  # auto(round=deadline)
                results = _by_deadline(results, pool, rnd, net, down_bytes)
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
                transfer = (net.download_s(r.client, down_bytes[r.client])
                            + net.upload_s(r.client, r.nbytes))
                comm_s = max(comm_s, transfer)
                slowest = max(slowest, transfer + r.decode_s + r.train_s + r.encode_s)
                server_s += d_up
            extra = server.exchange(chosen, replies, weights,
                                    lambda phase, msgs, rnd=rnd: pool.call(phase, rnd, msgs),
                                    net, down_bytes)
            factored: State = {}
            if extra is not None:  # the protocol's later phases (HGC's mask, PowerSGD's Q)
                factored = extra.aggregate
                bytes_up += extra.bytes_up
                enc_s += extra.encode_s
                dec_s += extra.decode_s
                server_s += extra.server_s
                comm_s += extra.comm_s
                slowest += extra.slowest
                if extra.dropped:  # left out of the average, as the Flower runtime does
                    kept = [i for i, r in enumerate(results) if r.client not in extra.dropped]
                    replies, weights = [replies[i] for i in kept], [weights[i] for i in kept]
            t0 = time.perf_counter()
            if replies:  # else no aggregate this round: the model stays as it is
                global_state, velocity = _aggregate(global_state, replies, weights, cfg,
                                                    velocity, params, factored, cfg.lr_at(rnd))
            server_s += time.perf_counter() - t0
            load_state(model, global_state)
            acc, loss = evaluate(model, x_test, y_test)
            m = RoundMetrics(rnd, acc, loss, bytes_up, sum(down_bytes.values()), raw_up,
                             raw_bytes(global_state) * len(chosen), enc_s, dec_s, train_s,
                             comm_s, slowest + server_s, time.perf_counter() - wall0, chosen,
                             [_choice_row(rnd, r) for r in results if r.choice is not None])
            history.append(m)
            if on_round is not None:
                on_round(m)
    finally:
        pool.close()
    return history, model


def _by_deadline(results: list[ClientResult], pool: ClientPool, rnd: int, net: Network,
                 down_bytes: Mapping[int, int]) -> list[ClientResult]:
    """The round-level view of an adaptive plan (``auto(round=deadline)``): the
    clients have trained and quoted their least expected uplink time; the round would
    end at the latest ``download + decode + training + that time``, so each client's
    deadline for its uplink is that end minus its own download, decode and training,
    and it replies with the tightest-bound candidate expected to fit (see
    :meth:`fedpress.AdaptiveEncoder.choose`)."""
    before, end = {}, 0.0
    for r in results:
        quote = r.message
        assert isinstance(quote, Quote), "every client of a deadline round quotes"
        before[r.client] = net.download_s(r.client, down_bytes[r.client]) + r.decode_s \
            + r.train_s
        end = max(end, before[r.client] + quote.fastest_s)
    sent = pool.call(DEADLINE, rnd, {k: end - b for k, b in before.items()})
    return [replace(r, message=s.message, nbytes=s.nbytes, encode_s=r.encode_s + s.encode_s,
                    choice=s.choice) for r, s in zip(results, sent, strict=True)]


def _choice_row(rnd: int, r: ClientResult) -> dict[str, Any]:
    c = r.choice
    assert c is not None
    return {"round": rnd, "client": r.client, "spec": c.spec, "mbps": c.mbps,
            "expected_s": c.expected_s[c.spec], "fastest_s": c.fastest_s,
            "deadline_s": "" if c.deadline_s is None else c.deadline_s, "bytes": r.nbytes}


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
