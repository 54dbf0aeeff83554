"""The server's end of the downlink: what each client gets, and a mirror of its copy.

Framework-free: the simulator drives it with client indices, Flower's
:class:`fedpress.flower.CompressedStrategy` with node ids.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..adaptive import AUTO
from ..errors import ConfigError
from ..update import UpdateDecoder, UpdateEncoder
from .deltas import State, apply_changes, changes, raw_bytes, zeros_like
from .ends import Message, keeps_sender_state, make_decoder, make_encoder, warm_codecs


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
    ``count_initial=True`` (update mode) adds the initial model's raw bytes to a
    client's first message: what it takes to give the client that shared start.
    """

    def __init__(self, plan: Any, options: Mapping[str, Any], clients: int,
                 send: str = "weights", initial: State | None = None,
                 track: bool = False, count_initial: bool = False) -> None:
        if plan == AUTO:
            raise ConfigError("plan 'auto' adapts a sender's plan to its own link; the "
                              "downlink takes a fixed plan")
        warm_codecs(plan, options)
        self.plan, self.options, self.send_mode = plan, options, send
        probe = make_encoder(plan, options, peer="server")
        if probe is not None and probe.residual_feedback:
            raise ConfigError("residual_feedback is for a sender's stream of its own tensors; "
                              "the downlink cannot use it (update mode already re-sends what "
                              "was dropped)")
        self.broadcast = probe is None or not probe.plan.stateful
        if send == "update" and probe is not None and keeps_sender_state(probe.plan):
            raise ConfigError(f"downlink plan {plan!r} keeps state (error feedback or a "
                              "residual), but downlink updates already re-send what was "
                              "dropped (the server mirrors each client's copy): use its "
                              "stateless form, e.g. 'topk' for 'ef:topk', 'ternary' for "
                              "'stc', 'signsgd' for 'efsignsgd'")
        self.decoder = make_decoder(plan, options) or UpdateDecoder()
        self.track = track or send == "update"
        self.initial = initial
        self.count_initial = count_initial and send == "update" and initial is not None
        self.started: set[Any] = set()  # clients that got a first message
        # per client (any hashable key; clients not seen yet start from ``initial``):
        self.encoders: dict[Any, UpdateEncoder] = {}
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
        self.started.discard(k)
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
        if self.count_initial:
            assert self.initial is not None
            for k in chosen:
                if k not in self.started:
                    sizes[k] += raw_bytes(self.initial)
                    self.started.add(k)
        return messages, sizes, seconds
