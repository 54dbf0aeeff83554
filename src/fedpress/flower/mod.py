"""The client's end: a Flower ClientApp mod that decodes before and encodes after.

Add it to the ClientApp; the train/evaluate functions stay as they are::

    from fedpress.flower import compression_mod
    app = ClientApp(mods=[compression_mod])

On every message from the server it decodes the fedpress frame (if the downlink is
compressed) into plain arrays before the user's function runs; on a train reply it
encodes the arrays with the uplink the server named in the message's config
(:data:`~fedpress.flower.link.KEY_UPLINK`). With an uplink that runs a round protocol
(HGC, PowerSGD) the protocol's client end takes the train messages, and answers the
later phases itself (:mod:`.phases`). The codec state (error feedback,
mirrored histories, the model the client holds for update and reference modes) lives
in ``Context.state``, so stateful plans survive across rounds in simulation and
deployment alike; a message with :data:`~fedpress.flower.link.KEY_RESET` (the server
lost track of this client after a failure) drops it first. Messages without fedpress
keys pass through untouched.

A client that lacks a back end library of either link (the uplink it encodes, the
downlink it decodes; :data:`~fedpress.flower.link.KEY_DOWNLINK`) replies with a Flower
error (``Error(ErrorCode.MOD_FAILED_PRECONDITION, reason)``) whose reason names the
package to install, before its app trains; the server logs that reason. The downlink
is decoded with that link's codecs accepted in this process: the client trusts its
server, which chose them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.constant import ErrorCode

import fedpress

from ..errors import MissingDependencyError, StateDesyncError
from ..exchange import apply_changes, changes, raw_bytes, zeros_like
from ..frame import DEFAULT_LIMITS
from ..state import MemoryStateStore, TensorState
from . import wire
from .link import (
    KEY_BASE,
    KEY_DELAY,
    KEY_DOWNLINK,
    KEY_RESET,
    KEY_UPLINK,
    REPLY_KEY,
    Link,
    sleep_for,
)
from .phases import exchange_mod

log = logging.getLogger("fedpress.flower")

#: where the mod keeps its state in ``Context.state``
STATE_KEY = "fedpress-state"
__all__ = ["REPLY_KEY", "STATE_KEY", "compression_mod"]
_HELD = "\x00held"  # the store's peer name for the model the client holds


def _load(context: Context) -> MemoryStateStore:
    rec = context.state.config_records.get(STATE_KEY)
    return MemoryStateStore() if rec is None else MemoryStateStore.from_bytes(rec["blob"])


def _save(context: Context, store: MemoryStateStore) -> None:
    context.state[STATE_KEY] = ConfigRecord({"blob": store.to_bytes()})


def _held(store: MemoryStateStore) -> dict[str, np.ndarray] | None:
    names = [n for p, n in store.keys() if p == _HELD]
    return {n: store.get(_HELD, n)["value"] for n in names} or None


def _hold(store: MemoryStateStore, state: dict[str, np.ndarray]) -> None:
    store.clear(_HELD)
    for name, v in state.items():
        store.put(_HELD, name, TensorState({"value": v}))


def _uplink_mbps(context: Context, config: dict) -> float | None:
    """This node's uplink for an adaptive plan: its node config's
    ``fedpress-uplink-mbps``, else the simulated link the server set (``fedpress-delay``),
    else None (the encoder's default)."""
    value = context.node_config.get("fedpress-uplink-mbps")
    if value is None and config.get(KEY_DELAY):
        value = str(config[KEY_DELAY]).split(",")[0]
    try:
        mbps = None if value is None else float(value)
    except (TypeError, ValueError):
        raise fedpress.ConfigError(f"fedpress-uplink-mbps must be a number, got {value!r}"
                                   ) from None
    return mbps if mbps is None or mbps > 0 else None


def compression_mod(message: Message, context: Context,
                    call_next: Callable[[Message, Context], Message]) -> Message:
    """Decode the server's fedpress frames, call the app, encode the train reply.

    A missing back end library (of either link) makes the reply a Flower error whose
    reason names the package to install."""
    config = wire.config_of(message)
    if KEY_UPLINK not in config:  # not from a fedpress server: nothing to do
        return call_next(message, context)
    try:
        return _mod(message, context, call_next, config)
    except MissingDependencyError as exc:
        log.error("fedpress: %s", exc)
        return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION,
                             reason=f"fedpress on this SuperNode: {exc}"), reply_to=message)


def _mod(message: Message, context: Context,
         call_next: Callable[[Message, Context], Message], config: dict) -> Message:
    """:func:`compression_mod` for a message from a fedpress server."""
    link = Link.parse(config[KEY_UPLINK])
    down = Link.parse(config[KEY_DOWNLINK]) if KEY_DOWNLINK in config else None
    train = message.metadata.message_type.split(".")[0] == "train"
    if train and link.aggregate is not None:  # a round protocol's end answers
        return exchange_mod(message, context, call_next, config, link,
                            down if down is not None else Link.parse(None))
    if train:  # found before the app trains, not after
        link.check_available()
    key = wire.array_key(message.content) if message.has_content() else None
    # the server starts this client afresh after a failure (its copy is unknown)
    store = MemoryStateStore() if config.get(KEY_RESET) else _load(context)
    start = None
    if key is not None:
        record = message.content.array_records[key]
        frame = wire.frame_of(record)
        if frame is None:
            got = wire.state_of(record)
        else:
            limits = down.own_limits() if down is not None else DEFAULT_LIMITS
            got = fedpress.UpdateDecoder(store=store, limits=limits).decode(frame,
                                                                            peer="server")
        sleep_for(config, raw_bytes(got) if frame is None else len(frame), 1)
        if KEY_BASE in config:  # a change from the copy the server thinks we hold
            held = _held(store)
            mine = "" if held is None else wire.state_digest(held)
            if mine != config[KEY_BASE]:
                raise StateDesyncError(
                    f"fedpress: the downlink update applies to the copy {config[KEY_BASE]!r}, "
                    f"this client holds {mine!r} (a message was lost or the client restarted "
                    "without its state)")
            got = apply_changes(held if held is not None else zeros_like(got), got)
            _hold(store, got)
        start = got
        if frame is not None or KEY_BASE in config:
            message.content = wire.with_arrays(message, key, wire.plain_record(start))
    reply = call_next(message, context)
    rkey = wire.array_key(reply.content) if reply.has_content() else None
    if train and rkey is not None and link.plan is None:
        sleep_for(config, raw_bytes(wire.state_of(reply.content.array_records[rkey])), 0)
    if train and rkey is not None and link.plan is not None:
        local = wire.state_of(reply.content.array_records[rkey])
        if link.send == "update" or link.reference:
            if start is None or set(start) != set(local):
                raise fedpress.ConfigError(
                    "fedpress: update and reference uplinks need the reply to hold the "
                    "arrays the server sent (same names)")
        content = changes(start, local) if link.send == "update" else local
        encoder = link.encoder(peer="self")
        assert encoder is not None
        reference = start if link.reference else None
        if isinstance(encoder, fedpress.AdaptiveEncoder):  # the plan for this node's link
            frame = encoder.encode(content, reference=reference,
                                   uplink_mbps=_uplink_mbps(context, config))
        else:
            encoder.store = store
            frame = encoder.encode(content, reference=reference)
        sleep_for(config, len(frame), 0)
        out = wire.with_arrays(reply, rkey, wire.frame_record(frame))
        out[REPLY_KEY] = ConfigRecord(
            {"start": "" if start is None else wire.state_digest(start)})
        reply.content = out
    _save(context, store)
    return reply
