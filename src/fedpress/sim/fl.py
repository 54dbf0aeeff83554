"""The federated-learning loop: FedAvg, FedProx and FedAvgM with compressed traffic.

One round: the server encodes the global weights for the downlink (``downlink_plan``;
``None`` sends raw float32), each sampled client decodes them, trains locally and
encodes what it sends (``send``: its ``weights``, its ``update`` = local - start, or a
``gradient`` = the mean gradient of ``local_steps`` minibatches at the start weights,
FedSGD style) with its own :class:`fedpress.UpdateEncoder` (``plan``; ``None`` = raw),
the server decodes every reply (one :class:`fedpress.UpdateDecoder`, state per
client) and aggregates, weighted by the clients' sample counts.

Bytes are the real frame lengths (raw: the tensors' bytes). Encode, decode, training
and aggregation times are measured; transfer times come from the
:class:`~fedpress.sim.network.Network`. Round time = the slowest sampled client's
download + decode + training + encode + upload, plus the server's decode,
aggregation and encode.

Determinism: client ``k`` of round ``r`` shuffles its data with a torch generator
seeded ``seed * 1_000_003 + r * 1_009 + k``; with raw traffic and FedAvg the result
equals a plain PyTorch loop doing the same (see the tests).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional

import fedpress

from ..errors import ConfigError
from .data import Dataset, partition
from .models import build_model
from .network import Network

ALGORITHMS = ("fedavg", "fedprox", "fedavgm")
SENDS = ("weights", "update", "gradient")


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
    seed: int = 0

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; choose one of "
                              f"{', '.join(ALGORITHMS)}")
        if self.send not in SENDS:
            raise ConfigError(f"unknown send {self.send!r}; choose one of {', '.join(SENDS)}")
        for name in ("clients", "rounds", "batch_size", "local_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.local_steps is not None and self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {self.local_steps}")
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


State = dict[str, np.ndarray]


def state_of(model: torch.nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def raw_bytes(state: Mapping[str, np.ndarray]) -> int:
    return int(sum(v.nbytes for v in state.values()))


def normalise(x: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], standardised with the batch-independent
    constants 0.5 / 0.25 (the same for every client and the test set)."""
    return torch.from_numpy((x.astype(np.float32) / 255.0 - 0.5) / 0.25)


def client_generator(seed: int, rnd: int, client: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + rnd * 1_009 + client)


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                gen: torch.Generator, anchor: Mapping[str, torch.Tensor] | None = None) -> None:
    """SGD with momentum for ``local_steps`` minibatches or ``local_epochs`` epochs;
    FedProx adds ``mu/2 ||w - anchor||^2``."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    steps = 0
    while True:
        for idx in torch.randperm(len(y), generator=gen).split(cfg.batch_size):
            opt.zero_grad()
            loss = functional.cross_entropy(model(x[idx]), y[idx])
            if anchor is not None:
                prox = sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
                loss = loss + 0.5 * cfg.mu * prox
            loss.backward()
            opt.step()
            steps += 1
            if cfg.local_steps is not None and steps >= cfg.local_steps:
                return
        if cfg.local_steps is None and steps >= cfg.local_epochs * -(-len(y) // cfg.batch_size):
            return


def mean_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                  gen: torch.Generator) -> State:
    """Mean gradient of ``local_steps`` (default 1) minibatches at the current weights."""
    model.train()
    model.zero_grad()
    steps = cfg.local_steps or 1
    batches = torch.randperm(len(y), generator=gen).split(cfg.batch_size)
    for i in range(steps):
        idx = batches[i % len(batches)]
        (functional.cross_entropy(model(x[idx]), y[idx]) / steps).backward()
    out = state_of(model)  # buffers (BatchNorm statistics) travel as they are
    for n, p in model.named_parameters():
        out[n] = p.grad.detach().numpy().copy()
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


class Link:
    """One direction's codec: raw float32 bytes (``plan=None``) or fedpress frames."""

    def __init__(self, plan: str | Mapping[str, Any] | None, options: Mapping[str, Any],
                 peers: int) -> None:
        self.plan = plan
        self.encoders = ([fedpress.UpdateEncoder(plan, **options) for _ in range(peers)]
                         if plan is not None else [])
        self.decoder = fedpress.UpdateDecoder() if plan is not None else None
        if plan is not None:  # load the codecs' compiled kernels before anything is timed
            probe = {"probe.weight": np.random.default_rng(0).standard_normal(8192, np.float32)}
            fedpress.decode_update(fedpress.UpdateEncoder(plan, **options).encode(probe))

    def send(self, peer: int, state: State) -> tuple[State, int, float, float]:
        """(what the receiver gets, bytes on the wire, encode s, decode s)."""
        if self.plan is None:
            return {k: v.copy() for k, v in state.items()}, raw_bytes(state), 0.0, 0.0
        t0 = time.perf_counter()
        blob = self.encoders[peer].encode(state)
        t1 = time.perf_counter()
        assert self.decoder is not None
        got = self.decoder.decode(blob, peer=str(peer))
        t2 = time.perf_counter()
        return got, len(blob), t1 - t0, t2 - t1


def simulate(ds: Dataset, cfg: FLConfig, network: Network | None = None,
             on_round: Callable[[RoundMetrics], None] | None = None,
             test_limit: int | None = None) -> tuple[list[RoundMetrics], torch.nn.Module]:
    """Run ``cfg.rounds`` rounds; returns the metrics and the final global model."""
    cfg.check()
    network = network or Network.build(cfg.clients)
    if network.up_mbps.size != cfg.clients:
        raise ConfigError(f"the network has {network.up_mbps.size} clients, the run "
                          f"{cfg.clients}")
    parts = partition(ds.y_train, cfg.clients, cfg.partition, alpha=cfg.alpha, seed=cfg.seed)
    xs = [normalise(ds.x_train[p]) for p in parts]
    ys = [torch.from_numpy(ds.y_train[p]) for p in parts]
    n_test = len(ds.y_test) if test_limit is None else min(test_limit, len(ds.y_test))
    x_test, y_test = normalise(ds.x_test[:n_test]), torch.from_numpy(ds.y_test[:n_test])

    model = build_model(cfg.model, ds.input_shape, ds.num_classes, seed=cfg.seed)
    global_state = state_of(model)
    params = frozenset(n for n, _ in model.named_parameters())
    up = Link(cfg.plan, cfg.plan_options, cfg.clients)
    down = Link(cfg.downlink_plan, cfg.downlink_options, cfg.clients)
    _warm_up(model, xs[0][:cfg.batch_size], ys[0][:cfg.batch_size])
    velocity: State | None = None
    rng = np.random.default_rng(cfg.seed)
    per_round = max(1, round(cfg.fraction * cfg.clients))
    history: list[RoundMetrics] = []
    for rnd in range(1, cfg.rounds + 1):
        wall0 = time.perf_counter()
        chosen = sorted(rng.choice(cfg.clients, per_round, replace=False).tolist())
        replies, weights = [], []
        bytes_up = bytes_down = raw_up = raw_down = 0
        enc_s = dec_s = train_s = slowest = comm_s = server_s = 0.0
        for k in chosen:
            start, nb_down, e_s, d_s = down.send(k, global_state)
            bytes_down += nb_down
            raw_down += raw_bytes(global_state)
            load_state(model, start)
            gen = client_generator(cfg.seed, rnd, k)
            t0 = time.perf_counter()
            if cfg.send == "gradient":
                local = mean_gradient(model, xs[k], ys[k], cfg, gen)
            else:
                anchor = ({n: p.detach().clone() for n, p in model.named_parameters()}
                          if cfg.algorithm == "fedprox" else None)
                local_train(model, xs[k], ys[k], cfg, gen, anchor)
                local = state_of(model)
                if cfg.send == "update":
                    local = {n: local[n] - start[n] if np.issubdtype(local[n].dtype, np.floating)
                             else local[n] for n in local}
            t_train = time.perf_counter() - t0
            got, nb_up, e2, d2 = up.send(k, local)
            replies.append(got)
            weights.append(len(ys[k]))
            bytes_up += nb_up
            raw_up += raw_bytes(local)
            enc_s += e_s + e2
            dec_s += d_s + d2
            train_s += t_train
            transfer = network.download_s(k, nb_down) + network.upload_s(k, nb_up)
            comm_s = max(comm_s, transfer)
            slowest = max(slowest, transfer + d_s + t_train + e2)  # the client's own path
            server_s += e_s + d2  # the server encodes the downlink, decodes the reply
        t0 = time.perf_counter()
        global_state, velocity = _aggregate(global_state, replies, weights, cfg, velocity,
                                            params)
        server_s += time.perf_counter() - t0
        load_state(model, global_state)
        acc, loss = evaluate(model, x_test, y_test)
        m = RoundMetrics(rnd, acc, loss, bytes_up, bytes_down, raw_up, raw_down, enc_s, dec_s,
                         train_s, comm_s, slowest + server_s, time.perf_counter() - wall0,
                         chosen)
        history.append(m)
        if on_round is not None:
            on_round(m)
    return history, model


def _warm_up(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> None:
    """A few untimed SGD steps on a copy, so PyTorch's first-call costs (allocator,
    thread pool, kernels) are not counted in round 1; the global RNG (dropout) is
    restored, so results do not change."""
    rng_state = torch.get_rng_state()
    probe = copy.deepcopy(model).train()
    opt = torch.optim.SGD(probe.parameters(), lr=0.0)
    for _ in range(steps):
        opt.zero_grad()
        functional.cross_entropy(probe(x), y).backward()
        opt.step()
    torch.set_rng_state(rng_state)


def _aggregate(global_state: State, replies: list[State], weights: list[float], cfg: FLConfig,
               velocity: State | None, params: frozenset[str]) -> tuple[State, State | None]:
    """The new global state (and FedAvgM's velocity) from the decoded replies.

    Gradients move the parameters only; with ``send="gradient"`` the buffers
    (BatchNorm statistics) take the clients' mean, like integer buffers always do.
    """
    mean = weighted_mean(replies, weights)
    floats = [k for k, v in global_state.items() if np.issubdtype(v.dtype, np.floating)
              and (cfg.send != "gradient" or k in params)]
    if cfg.send == "weights" and cfg.algorithm != "fedavgm" and cfg.server_lr == 1.0:
        return mean, velocity  # plain FedAvg / FedProx on weights
    # a pseudo-gradient: what the clients want the global model to move by
    if cfg.send == "weights":
        step = {k: mean[k].astype(np.float64) - global_state[k] for k in floats}
    elif cfg.send == "update":
        step = {k: mean[k].astype(np.float64) for k in floats}
    else:  # gradient
        step = {k: -cfg.lr * mean[k].astype(np.float64) for k in floats}
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
