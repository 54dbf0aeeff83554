"""The single-message exchange: one frame (or raw state) each way per round.

The server sends each client its :class:`~fedpress.exchange.downlink.Downlink`
message; the client decodes it (applying it to its copy when the downlink sends
updates), trains, and replies with one frame of the uplink plan, coded against the
model it started from when ``reference`` is set. The server aggregates the decoded
replies with a weighted mean (``aggregate="mean"``) or signSGD's majority vote
(``aggregate="vote"``).
"""

from __future__ import annotations

from typing import Any

from ..adaptive import AdaptiveEncoder
from .deltas import State, apply_changes, raw_bytes
from .ends import make_decoder, make_encoder
from .protocol import ClientEnd, RoundProtocol, ServerEnd, Settings, register_exchange


class SingleServer(ServerEnd):
    """The server's side: the downlink's messages, nothing after the replies."""

    def downlink(self, chosen: list[Any], state: State, down: Any,
                 ) -> tuple[dict[Any, Any], dict[Any, int], float]:
        return down.send(chosen, state)


class SingleClient(ClientEnd):
    """A client's side: the downlink decoder, the uplink encoder, the held copy."""

    def __init__(self, settings: Settings, peer: str, encode: bool = True) -> None:
        super().__init__()
        self.encoder = make_encoder(settings.plan, settings.plan_options, peer=peer) \
            if encode else None
        self.decoder = make_decoder(settings.downlink_plan, settings.downlink_options)
        self.updates = settings.downlink_send == "update"
        self.reference = bool(settings.reference)
        self.decodes, self.encodes = self.decoder is not None, self.encoder is not None
        #: this round's uplink (Mbps, latency ms), set by the runtime for adaptive plans
        self.link: tuple[float | None, float] = (None, 0.0)
        #: this round's deadline for the uplink (seconds), set by a runtime that runs
        #: an adaptive plan's round-level view (``auto(round=deadline)``)
        self.deadline_s: float | None = None

    def receive(self, message: Any) -> State:
        if isinstance(message, dict):
            got = message
        else:
            assert self.decoder is not None
            got = self.decoder.decode(message, peer="server")
        if self.updates:  # the change since the copy it holds
            assert self.held is not None
            got = self.held = apply_changes(self.held, got)
        return got

    def reply(self, trained: State, start: State, params: frozenset[str]) -> tuple[Any, int]:
        if self.encoder is None:
            return trained, raw_bytes(trained)
        reference = start if self.reference else None
        if isinstance(self.encoder, AdaptiveEncoder):  # the plan for this link
            mbps, latency_ms = self.link
            blob = self.encoder.encode(trained, reference=reference, uplink_mbps=mbps,
                                       latency_ms=latency_ms, deadline_s=self.deadline_s)
        else:  # sender-state schedules (DGC's warm-up) follow the federation's rounds
            blob = self.encoder.encode(trained, reference=reference,
                                       step=self.round - 1 if self.round else None)
        return blob, len(blob)


@register_exchange
class SingleExchange(RoundProtocol):
    """One message each way; the replies are averaged or voted on."""

    name = "single"
    title = "single message"
    aggregates = ("mean", "vote")

    def server(self, state: State, params: frozenset[str]) -> ServerEnd:
        return SingleServer()

    def client(self, peer: str) -> ClientEnd:
        return SingleClient(self.settings, peer)
