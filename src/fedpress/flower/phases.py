"""The client's end of a round protocol, inside :func:`~fedpress.flower.compression_mod`.

With an uplink that runs a round protocol (HGC, PowerSGD; :mod:`.protocols`) every
train message a node gets is one of two kinds:

* the round's **first message** (no :data:`~fedpress.flower.link.KEY_PHASE`): the
  protocol's first message packed in its arrays (:mod:`.payload`). The mod hands it
  to the protocol's client end (``receive``), gives the app the model it returns,
  lets the app train, turns the trained weights into what the protocol replies with
  (``reply``; updates: trained minus received) and sends that back packed;
* a **later phase** (``KEY_PHASE`` names it: HGC's ``hgc_master``/``hgc_values``,
  PowerSGD's ``powersgd_second``): the mod answers it from the client end
  (``answer``) without calling the app.

A ClientApp may run in a new process for each message, so the end lives in
``Context.state`` between messages, exported to arrays (``ClientEnd.export``/``load``,
under :data:`~fedpress.flower.protocols.END_KEY`). A message with
:data:`~fedpress.flower.link.KEY_RESET` starts a new end (the server's restart). A
message the end cannot take (no state where the server expects one, a phase it does
not have, a malformed payload) gets a Flower error reply whose reason says why; the
server drops that node from the round and starts it afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode

from ..errors import FormatError
from ..exchange import ClientEnd, changes
from . import payload, wire
from .link import KEY_LAYOUT, KEY_PHASE, KEY_RESET, REPLY_KEY, Link, sleep_for
from .protocols import END_KEY, FIRST_PHASE, PAYLOAD_KEY, parameter_names, protocol_for

log = logging.getLogger("fedpress.flower")

App = Callable[[Message, Context], Message]


def exchange_mod(message: Message, context: Context, call_next: App, config: dict,
                 uplink: Link, downlink: Link) -> Message:
    """Answer a train message of a round protocol (see the module docs)."""
    phase = config.get(KEY_PHASE)
    what = FIRST_PHASE if phase is None else str(phase)
    try:
        end = protocol_for(uplink, downlink).client("self")
        stored = None if config.get(KEY_RESET) else context.state.array_records.get(END_KEY)
        if stored is not None:
            end.load(wire.state_of(stored))
        elif not config.get(KEY_RESET):
            raise FormatError("this node holds no exchange state where the server expects "
                              "one (it lost its Context.state, or restarted without it)")
        if phase is None:
            reply = _first(message, context, call_next, config, end, uplink)
        else:
            reply = _later(message, config, end, str(phase))
    except Exception as exc:  # a reason for the server, not a traceback on the node
        why = f"{type(exc).__name__}: {exc}"
        log.error("fedpress: exchange phase %s: %s", what, why)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             reason=f"fedpress exchange on this SuperNode, phase {what}: "
                                    f"{why}"), reply_to=message)
    if not reply.has_error():
        context.state[END_KEY] = wire.plain_record(end.export())
    return reply


def _first(message: Message, context: Context, call_next: App, config: dict,
           end: ClientEnd, uplink: Link) -> Message:
    """The round's first message: receive, train (the app), reply."""
    key = wire.array_key(message.content)
    if key is None:
        raise FormatError("the server's train message carries no arrays")
    got = payload.unpack(message.content.array_records[key], config.get(KEY_LAYOUT))
    sleep_for(config, payload.size(got), 1)
    start = end.receive(got)
    message.content = wire.with_arrays(message, key, wire.plain_record(start))
    reply = call_next(message, context)
    if reply.has_error():
        return reply
    rkey = wire.array_key(reply.content) if reply.has_content() else None
    if rkey is None:
        raise FormatError("the app's train reply carries no arrays")
    local = wire.state_of(reply.content.array_records[rkey])
    if set(local) != set(start):
        raise FormatError("the app's train reply holds other tensors than the model it "
                          f"was sent: {sorted(set(local) ^ set(start))[:5]}")
    trained = changes(start, local) if uplink.send == "update" else local
    out, nbytes = end.reply(trained, start, parameter_names(start))
    record, layout = payload.pack(out)
    sleep_for(config, nbytes, 0)
    content = wire.with_arrays(reply, rkey, record)
    content[REPLY_KEY] = ConfigRecord({"layout": layout, "phase": FIRST_PHASE})
    reply.content = content
    return reply


def _later(message: Message, config: dict, end: ClientEnd, phase: str) -> Message:
    """A later phase: the end answers; the app is not called."""
    records = message.content.array_records
    if PAYLOAD_KEY not in records:
        raise FormatError(f"the server's {phase} message carries no payload")
    got: Any = payload.unpack(records[PAYLOAD_KEY], config.get(KEY_LAYOUT))
    sleep_for(config, payload.size(got), 1)
    out, nbytes = end.answer(phase, got)
    record, layout = payload.pack(out)
    sleep_for(config, nbytes, 0)
    return Message(RecordDict({PAYLOAD_KEY: record,
                               REPLY_KEY: ConfigRecord({"layout": layout, "phase": phase})}),
                   reply_to=message)
