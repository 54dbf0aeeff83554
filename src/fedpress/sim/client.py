"""The client side of a simulated round: decode the downlink, train, encode the reply.

A :class:`SimClient` holds one client's data and codecs (its uplink
:class:`fedpress.UpdateEncoder`, its downlink :class:`fedpress.UpdateDecoder`);
a :class:`Trainer` holds the model that the clients of one process take turns on.
What crosses between server and client is a :data:`Message`: fedpress frame bytes,
or the raw ``state_dict`` when a direction is uncompressed. Nothing else is shared,
so the client loop can run in this process, in worker processes
(:mod:`fedpress.sim.pool`), or be replaced by another FL framework's clients.

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

import fedpress

from ..errors import ConfigError
from ..exchange import State, apply_changes, raw_bytes
from ..grad.hgc_exchange import HGCClient
from ..grad.powersgd_exchange import PowerSGDClient, low_rank_names
from ..update import trusting
from .models import build_model

P_PREFIX = "powersgd.P/"  # PowerSGD's phase-1 factors in a reply

if TYPE_CHECKING:
    from .fl import FLConfig

Message = bytes | State  # a fedpress frame, or the raw state dict


def state_of(model: torch.nn.Module) -> State:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})


def normalise(x: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], standardised with the batch-independent
    constants 0.5 / 0.25 (the same for every client and the test set)."""
    return torch.from_numpy((x.astype(np.float32) / 255.0 - 0.5) / 0.25)


def hgc_options(cfg: FLConfig) -> dict[str, Any]:
    """HGC's options from the plan options, checked, with their defaults."""
    o = cfg.plan_options
    generic = {"mode", "eb", "lossy", "lossless", "threshold"}  # every plan gets these
    known = {"density", "warmup", "levels", "predict", "quantize", "correction",
             "correction_density"}
    unknown = set(o) - known - generic
    if unknown:
        raise ConfigError(f"plan 'hgc': unknown options {sorted(unknown)}")
    for key in ("predict", "quantize"):
        if key in o and not isinstance(o[key], bool):
            raise ConfigError(f"plan 'hgc': {key} must be true or false, got {o[key]!r}")
    out = {"density": float(o.get("density", 1e-3)), "warmup": int(o.get("warmup", 0)),
           "levels": int(o.get("levels", 3)), "predict": o.get("predict", True),
           "quantize": o.get("quantize", True), "correction": int(o.get("correction", 0)),
           "correction_density": float(o.get("correction_density", 0.01))}
    if out["warmup"] < 0 or out["correction"] < 0:
        raise ConfigError("plan 'hgc': warmup and correction are rounds, >= 0")
    return out


def hgc_names(state: State, params: frozenset[str]) -> list[str]:
    """The tensors HGC's exchange carries: the float parameters (buffers go raw)."""
    return sorted(k for k in params if np.issubdtype(state[k].dtype, np.floating))


def client_seed(seed: int, rnd: int, client: int) -> int:
    return seed * 1_000_003 + rnd * 1_009 + client


def make_encoder(plan: Any, options: Mapping[str, Any],
                 peer: str = "default") -> fedpress.UpdateEncoder | None:
    """An encoder for ``plan`` (``None``: raw traffic, no encoder)."""
    return None if plan is None else fedpress.UpdateEncoder(plan, peer=peer, **options)


def make_decoder(plan: Any, options: Mapping[str, Any]) -> fedpress.UpdateDecoder | None:
    """A decoder of ``plan``'s frames (``None``: raw traffic). The simulator's peers are
    its own encoders, so it accepts every codec of the plan (``sz2`` too) in-process."""
    enc = make_encoder(plan, options)
    return None if enc is None else fedpress.UpdateDecoder(limits=trusting(enc.plan))


def warm_codecs(plan: Any, options: Mapping[str, Any]) -> None:
    """Encode and decode a probe once, so compiled kernels load before anything is timed."""
    enc, dec = make_encoder(plan, options), make_decoder(plan, options)
    if enc is not None and dec is not None:
        rng = np.random.default_rng(0)
        # a small tensor and one large enough for fpz's rANS coder (small ones use
        # Huffman); two messages, since stateful codecs use their history kernels from
        # the second on
        probe = {"probe.weight": rng.standard_normal(8192, np.float32),
                 "probe.large.weight": rng.standard_normal(1 << 15, np.float32)}
        for _ in range(2):
            dec.decode(enc.encode(probe))


def local_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                gen: torch.Generator, anchor: Mapping[str, torch.Tensor] | None = None,
                rnd: int = 1) -> None:
    """SGD with momentum for ``local_steps`` minibatches or ``local_epochs`` epochs, at
    round ``rnd``'s learning rate and momentum; FedProx adds ``mu/2 ||w - anchor||^2``."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr_at(rnd), momentum=cfg.momentum_at(rnd))
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
    message: Message
    nbytes: int  # on the wire: the frame length, or the raw tensors' bytes
    raw_bytes: int  # what the same content takes as raw tensors
    samples: int
    decode_s: float
    train_s: float
    encode_s: float


class SimClient:
    """One client: its data (uint8 images, labels) and its two codec ends."""

    def __init__(self, cid: int, x: np.ndarray, y: np.ndarray, cfg: FLConfig) -> None:
        self.cid, self.cfg = cid, cfg
        self.x, self.y = normalise(x), torch.from_numpy(np.asarray(y))
        hgc = cfg.aggregate == "hgc"
        self.encoder = None if hgc else make_encoder(cfg.plan, cfg.plan_options, peer=str(cid))
        self.decoder = make_decoder(cfg.downlink_plan, cfg.downlink_options)
        self.held: State | None = None  # the model it holds (downlink updates)
        self.lowrank = (PowerSGDClient(int(cfg.plan_options.get("rank", 2)),
                                       bool(cfg.plan_options.get("error_feedback", True)))
                        if cfg.aggregate == "powersgd" else None)
        self.threshold = int(cfg.plan_options.get("threshold", 1000))
        self.hgc: HGCClient | None = None  # HGC's end, made at the first round
        self.hgc_mask: dict[str, np.ndarray] | None = None  # the last round's mask
        self.pending: State = {}  # HGC: this round's update, waiting for the mask

    def round(self, rnd: int, message: Message | tuple[Message, State],
              trainer: Trainer) -> ClientResult:
        """Decode ``message`` (the global model), train, encode the reply.

        With PowerSGD's exchange the message also carries the shared ``Q`` and the
        reply holds the phase-1 factors (``P/<name>``) and the other tensors raw."""
        cfg, model = self.cfg, trainer.model
        if cfg.aggregate == "hgc":
            return self._hgc_round(rnd, message, trainer)
        shared_q: State = {}
        if isinstance(message, tuple):
            message, shared_q = message
        t0 = time.perf_counter()
        if isinstance(message, dict):
            got = message
        else:
            assert self.decoder is not None
            got = self.decoder.decode(message, peer="server")
        if cfg.downlink_send == "update":  # the change since the copy it holds
            assert self.held is not None
            got = self.held = apply_changes(self.held, got)
        start = got
        t1 = time.perf_counter()
        local = self._train(model, start, rnd)
        t2 = time.perf_counter()
        if self.lowrank is not None:
            params = frozenset(n for n, _ in model.named_parameters())
            names = low_rank_names(local, self.lowrank.rank, self.threshold, params)
            ps, rest = self.lowrank.first(local, names, shared_q)
            reply = rest | {P_PREFIX + k: v for k, v in ps.items()}
            nbytes = raw_bytes(reply)
            return ClientResult(self.cid, reply, nbytes, raw_bytes(local), len(self.y),
                                0.0 if self.decoder is None else t1 - t0, t2 - t1,
                                time.perf_counter() - t2)
        if self.encoder is None:
            reply: Message = local
            nbytes = raw_bytes(local)
        else:
            reply = self.encoder.encode(local, reference=start if cfg.reference else None)
            nbytes = len(reply)
        t3 = time.perf_counter()
        return ClientResult(self.cid, reply, nbytes, raw_bytes(local), len(self.y),
                            0.0 if self.decoder is None else t1 - t0, t2 - t1,
                            0.0 if self.encoder is None else t3 - t2)

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
            local_train(model, self.x, self.y, cfg, gen, anchor, rnd)
        local = state_of(model)
        if cfg.send != "update":
            return local
        return {n: local[n] - start[n] if np.issubdtype(local[n].dtype, np.floating)
                else local[n] for n in local}

    # -- HGC's exchange (fedpress.grad.hgc_exchange) -----------------------------------
    def _hgc_end(self, model: torch.nn.Module) -> HGCClient:
        if self.hgc is None:
            assert self.held is not None
            params = frozenset(n for n, _ in model.named_parameters())
            names = hgc_names(self.held, params)
            o = hgc_options(self.cfg)
            self.hgc = HGCClient({k: self.held[k].shape for k in names}, o["density"],
                                 o["levels"], o["predict"], o["quantize"])
        return self.hgc

    def _hgc_round(self, rnd: int, message: Any, trainer: Trainer) -> ClientResult:
        """Apply the last aggregate, train, keep the update for the exchange; reply with
        the buffers (raw)."""
        model = trainer.model
        end = self._hgc_end(model)
        assert self.held is not None
        t0 = time.perf_counter()
        if message is not None:  # the last round's aggregate, at the last mask
            agg_msg, buffers = message
            assert self.hgc_mask is not None
            agg = end.receive_aggregate(agg_msg, self.hgc_mask)
            held = dict(self.held)
            for k, v in agg.items():  # the server's arithmetic (send=update, server_lr 1)
                held[k] = (held[k] + 1.0 * v.astype(np.float64)).astype(held[k].dtype)
            held.update(buffers)
            self.held = held
        t1 = time.perf_counter()
        update = self._train(model, self.held, rnd)  # HGC runs with send="update"
        self.pending = {k: update[k] for k in end.shapes}
        reply = {k: v for k, v in update.items() if k not in end.shapes}
        t2 = time.perf_counter()
        return ClientResult(self.cid, reply, raw_bytes(reply), raw_bytes(update), len(self.y),
                            t1 - t0, t2 - t1, 0.0)

    def hgc_master(self, rnd: int, arg: tuple[float, bool, bool]) -> ClientResult:
        """The master's mask message and values message (its top-k of update + residual)."""
        assert self.hgc is not None
        t0 = time.perf_counter()
        self.hgc.configure(*arg)
        self.hgc_mask = self.hgc.select_mask(self.pending)
        mask_msg = self.hgc.encode_mask(self.hgc_mask)
        values = self.hgc.encode_update(self.pending, self.hgc_mask)
        return ClientResult(self.cid, (mask_msg, values), len(mask_msg) + len(values),
                            raw_bytes(self.pending), len(self.y), 0.0, 0.0,
                            time.perf_counter() - t0)

    def hgc_values(self, rnd: int, arg: tuple[bytes, float, bool, bool]) -> ClientResult:
        """A non-master's values message at the master's mask."""
        assert self.hgc is not None
        mask_msg, density, compressed, clear = arg
        t0 = time.perf_counter()
        self.hgc.configure(density, compressed, clear)
        self.hgc_mask = self.hgc.decode_mask(mask_msg)
        values = self.hgc.encode_update(self.pending, self.hgc_mask)
        return ClientResult(self.cid, values, len(values), raw_bytes(self.pending),
                            len(self.y), 0.0, 0.0, time.perf_counter() - t0)

    def powersgd_second(self, rnd: int, p_hat: State) -> ClientResult:
        """PowerSGD's phase 2: ``Q_i = M_i^T P^`` (and the client's new errors)."""
        assert self.lowrank is not None
        t0 = time.perf_counter()
        qs = self.lowrank.second(p_hat)
        nbytes = raw_bytes(qs)
        return ClientResult(self.cid, qs, nbytes, nbytes, len(self.y), 0.0, 0.0,
                            time.perf_counter() - t0)
