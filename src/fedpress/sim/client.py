"""The client side of a simulated round: receive the downlink, train, reply.

A :class:`SimClient` holds one client's data and its end of the run's round protocol
(:class:`fedpress.exchange.ClientEnd`: the codecs, the copy it holds, the state of
HGC's or PowerSGD's exchange); a :class:`Trainer` holds the model that the clients of
one process take turns on. What crosses between server and client is a message of
the protocol: fedpress frame bytes, or the raw ``state_dict`` when a direction is
uncompressed, or the protocol's own messages. Nothing else is shared, so the client
loop can run in this process, in worker processes (:mod:`fedpress.sim.pool`), or be
replaced by another FL framework's clients.

Determinism: client ``k`` of round ``r`` draws its minibatches and its dropout masks
from generators seeded ``seed * 1_000_003 + r * 1_009 + k``, so a client's result does
not depend on which process ran it or on the order of the clients.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional

from ..adaptive import AdaptiveEncoder, Choice
from ..exchange import Message, State, raw_bytes
from ..exchange.single import SingleClient
from .models import build_model

if TYPE_CHECKING:
    from .fl import FLConfig
    from .network import Network


def state_of(model: torch.nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def normalise(x: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], standardised with the batch-independent
    constants 0.5 / 0.25 (the same for every client and the test set)."""
    return torch.from_numpy((x.astype(np.float32) / 255.0 - 0.5) / 0.25)


def client_seed(seed: int, rnd: int, client: int) -> int:
    return seed * 1_000_003 + rnd * 1_009 + client


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                gen: torch.Generator, anchor: Mapping[str, torch.Tensor] | None = None,
                rnd: int = 1, momentum: State | None = None) -> State | None:
    """SGD with momentum for ``local_steps`` minibatches or ``local_epochs`` epochs, at
    round ``rnd``'s learning rate and momentum; FedProx adds ``mu/2 ||w - anchor||^2``.

    ``momentum=None`` starts the optimizer afresh and returns None; a dict (parameter
    name -> buffer, empty at first) continues its momentum from an earlier round
    (``client_state="keep"``) and the buffers after training are returned."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_at(rnd), momentum=cfg.momentum_at(rnd))
    named = dict(model.named_parameters())
    for n, p in named.items():
        if momentum and n in momentum:
            opt.state[p]["momentum_buffer"] = torch.from_numpy(momentum[n].copy())
    model.train()
    _sgd_steps(model, opt, x, y, cfg, gen, anchor)
    if momentum is None:
        return None
    return {n: opt.state[p]["momentum_buffer"].detach().numpy().copy()
            for n, p in named.items()
            if opt.state.get(p, {}).get("momentum_buffer") is not None}


def _sgd_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, cfg: FLConfig, gen: torch.Generator,
               anchor: Mapping[str, torch.Tensor] | None) -> None:
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


def warm_up(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> None:
    """A few untimed SGD steps on a copy, so PyTorch's first-call costs (allocator,
    thread pool, kernels) are not counted in round 1; the global RNG is restored."""
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model).train()
        opt = torch.optim.SGD(probe.parameters(), lr=0.0)
        for _ in range(steps):
            opt.zero_grad()
            functional.cross_entropy(probe(x), y).backward()
            opt.step()


class Trainer:
    """The model the clients of one process train in turn (one copy per process)."""

    def __init__(self, cfg: FLConfig, input_shape: tuple[int, ...], classes: int) -> None:
        self.model = build_model(cfg.model, input_shape, classes, seed=cfg.seed)


@dataclass
class ClientResult:
    """What one client returns to the server after a round."""

    client: int
    message: Message | Quote
    nbytes: int  # on the wire: the frame length, or the raw tensors' bytes
    raw_bytes: int  # what the same content takes as raw tensors
    samples: int
    decode_s: float
    train_s: float
    encode_s: float
    #: an adaptive plan's choice for this reply
    choice: Choice | None = None


#: the phase that finishes a round-level adaptive reply: its payload is the deadline
DEADLINE = "fedpress-deadline"


@dataclass(frozen=True)
class Quote:
    """A client's first answer under ``auto(round=deadline)``: its least expected
    uplink seconds; the reply follows in phase :data:`DEADLINE`."""

    fastest_s: float


class SimClient:
    """One client: its data (uint8 images, labels) and its end of the round protocol."""

    def __init__(self, cid: int, x: np.ndarray, y: np.ndarray, cfg: FLConfig,
                 network: Network | None = None) -> None:
        self.cid, self.cfg, self.network = cid, cfg, network
        self.x, self.y = normalise(x), torch.from_numpy(np.asarray(y))
        self.end = cfg.protocol().client(str(cid))
        self.momentum: State = {}  # its optimizer's momentum (client_state="keep")
        self._pending: tuple[State, State, frozenset[str], Network | None] | None = None

    def round(self, rnd: int, message: Message | Any, trainer: Trainer) -> ClientResult:
        """Receive ``message`` (the round's first message), train, reply."""
        model, end = trainer.model, self.end
        end.round = rnd
        t0 = time.perf_counter()
        start = end.receive(message)
        t1 = time.perf_counter()
        local = self._train(model, start, rnd)
        t2 = time.perf_counter()
        params = frozenset(n for n, _ in model.named_parameters())
        adaptive = self._adaptive()
        link = self.network.at(rnd) if adaptive is not None and self.network is not None \
            else None
        if adaptive is not None:  # an adaptive plan: this round's link, or its estimate
            up = None if link is None or adaptive.link == "measured" \
                else float(link.up_mbps[self.cid])
            single = self._single()
            single.link = (up, 0.0 if link is None else float(link.latency_ms[self.cid]))
            if adaptive.round == "deadline":  # its expected times first, the reply later
                quote = adaptive.choose(local, *single.link)
                self._pending = (local, start, params, link)
                return ClientResult(self.cid, Quote(quote.fastest_s), 0, raw_bytes(local),
                                    len(self.y), t1 - t0 if end.decodes else 0.0, t2 - t1,
                                    time.perf_counter() - t2)
        return self._reply(local, start, params, link, t1 - t0 if end.decodes else 0.0,
                           t2 - t1)

    def _reply(self, local: State, start: State, params: frozenset[str],
               link: Network | None, decode_s: float, train_s: float) -> ClientResult:
        end, adaptive = self.end, self._adaptive()
        t2 = time.perf_counter()
        reply, nbytes = end.reply(local, start, params)
        t3 = time.perf_counter()
        if adaptive is not None and link is not None:  # the upload it then made
            adaptive.observe_transfer(nbytes, link.upload_s(self.cid, nbytes)
                                      - float(link.latency_ms[self.cid]) / 1e3)
        return ClientResult(self.cid, reply, nbytes, raw_bytes(local), len(self.y),
                            decode_s, train_s, t3 - t2 if end.encodes else 0.0,
                            None if adaptive is None else adaptive.last)

    def _single(self) -> SingleClient:
        """This client's end as the single exchange's (the one an adaptive plan runs)."""
        assert isinstance(self.end, SingleClient), "an adaptive plan runs the single exchange"
        return self.end

    def _adaptive(self) -> AdaptiveEncoder | None:
        encoder = getattr(self.end, "encoder", None)
        return encoder if isinstance(encoder, AdaptiveEncoder) else None

    def answer(self, phase: str, rnd: int, payload: Any) -> ClientResult:
        """A later phase of the round (HGC's mask and values, PowerSGD's ``Q_i``; the
        reply under a deadline, :data:`DEADLINE`)."""
        if phase == DEADLINE:
            assert self._pending is not None, "a deadline before the round's quote"
            held, self._pending = self._pending, None
            single = self._single()
            single.deadline_s = float(payload)
            try:
                return self._reply(*held, 0.0, 0.0)
            finally:
                single.deadline_s = None
        t0 = time.perf_counter()
        reply, nbytes = self.end.answer(phase, payload)
        return ClientResult(self.cid, reply, nbytes, nbytes, len(self.y), 0.0, 0.0,
                            time.perf_counter() - t0)

    def _train(self, model: torch.nn.Module, start: State, rnd: int) -> State:
        """Train from ``start`` (seeded by client and round) and return what ``send``
        says: the mean gradient, the weights, or the update (their change)."""
        cfg = self.cfg
        load_state(model, start)
        seed = client_seed(cfg.seed, rnd, self.cid)
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # dropout masks
            if cfg.send == "gradient":
                return mean_gradient(model, self.x, self.y, cfg, gen)
            anchor = ({n: p.detach().clone() for n, p in model.named_parameters()}
                      if cfg.algorithm == "fedprox" else None)
            kept = local_train(model, self.x, self.y, cfg, gen, anchor, rnd,
                               self.momentum if cfg.client_state == "keep" else None)
            if kept is not None:
                self.momentum = kept
        local = state_of(model)
        if cfg.send != "update":
            return local
        return {n: local[n] - start[n] if np.issubdtype(local[n].dtype, np.floating)
                else local[n] for n in local}
