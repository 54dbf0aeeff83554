"""The server's end of a round protocol: HGC's and PowerSGD's rounds over a Flower grid.

:class:`ExchangeRounds` is what :class:`~fedpress.flower.CompressedStrategy` runs when
its uplink names a round protocol (``aggregate=hgc``, ``aggregate=powersgd``). It
drives the protocol's server end (:class:`fedpress.exchange.ServerEnd`) the way the
simulator does:

1. ``configure_train``: the wrapped strategy picks the nodes; each gets the
   protocol's first message (``ServerEnd.downlink``) in place of the model, packed
   into its arrays (:mod:`.payload`). A node the server cannot assume in step (new,
   failed, or absent from a round of a protocol whose ends mirror every round) is
   started afresh: its message says so (``fedpress-reset``) and carries what a new
   end needs (``ServerEnd.restart``).
2. ``aggregate_train``: the first replies are unpacked and checked, then the later
   phases run (``ServerEnd.exchange``) as more train messages through the grid the
   strategy got in ``configure_train``, each naming its phase (``fedpress-phase``);
   the nodes' mods answer them (:mod:`.phases`).
3. The merge: the wrapped strategy aggregates complete models, one per node that
   took part in every phase: the global model moved by the node's update for the
   tensors the first replies carry, and by the exchange's aggregate for the tensors
   the exchange averaged. Those last are then set to exactly ``global + aggregate``
   (float32, as every client end computes it), whatever the wrapped strategy made of
   them.

A reply that is an error, is missing, does not unpack, holds other tensors than the
model, or answers another phase drops its node from the round, with the reason
logged; the protocol drops a node whose answer it cannot use (HGC hands the mask to
the next node when the master fails). Dropped nodes start afresh next time; a round
in which no node took part in every phase counts as failed
(:class:`~fedpress.flower.FailedRoundsError` after ``max_failed_rounds``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from ..errors import ConfigError, FedpressError, FormatError
from ..exchange import Downlink, PhaseCost, RoundProtocol, ServerEnd, apply_changes, raw_bytes
from . import payload, wire
from .link import KEY_LAYOUT, KEY_PHASE, KEY_RESET, REPLY_KEY
from .protocols import FIRST_PHASE, PAYLOAD_KEY, parameter_names
from .sizes import message_bytes

if TYPE_CHECKING:
    from .strategy import CompressedStrategy

log = logging.getLogger("fedpress.flower")

State = dict[str, np.ndarray]


@dataclass
class PhaseReply:
    """A node's answer to a later phase, as the protocol's ``call`` returns it."""

    client: int
    message: Any
    nbytes: int
    encode_s: float = 0.0


@dataclass
class _Round:
    """What the server keeps of the round under way."""

    number: int
    chosen: list[int]
    state: State
    down_bytes: dict[int, int]
    row: dict[str, Any]
    up_bytes: dict[int, int] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)  # in the later phases


class _Links:
    """Transfer seconds from the strategy's bandwidths (zero without them)."""

    def __init__(self, owner: CompressedStrategy) -> None:
        self.owner = owner
        self.known = None not in owner.mbps

    def upload_s(self, client: Any, nbytes: int) -> float:
        return self.owner._seconds(nbytes, 0) if self.known else 0.0

    def download_s(self, client: Any, nbytes: int) -> float:
        return self.owner._seconds(nbytes, 1) if self.known else 0.0


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FedpressError) else f"{type(exc).__name__}: {exc}"


class ExchangeRounds:
    """A round protocol's server end driven over Flower (see the module docs).

    Parameters
    ----------
    owner : CompressedStrategy
        The strategy wrapper: its wrapped strategy, links, history and failure
        counting.
    protocol : fedpress.exchange.RoundProtocol
        The protocol the uplink names.
    """

    def __init__(self, owner: CompressedStrategy, protocol: RoundProtocol) -> None:
        self.owner, self.protocol = owner, protocol
        d = owner.downlink
        options = {} if d.plan is None else {**d.options, "mode": d.mode, "eb": d.eb}
        self.down = Downlink(d.plan, options, 0, d.send, None)
        self.server: ServerEnd | None = None
        self.model: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.grid: Grid | None = None
        self.timeout: float | None = 3600.0  # Strategy.start's, once started
        self.in_step: set[int] = set()  # nodes whose end is in step with the server
        self.current: _Round | None = None

    # -- the first messages -------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        """The wrapped strategy's train messages, each carrying the protocol's first
        message for its node instead of the model."""
        self.grid = grid
        state = wire.state_of(arrays)
        if self.server is None:
            self.server = self.protocol.server(state, parameter_names(state))
            self.model = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
        by_node: dict[int, Message] = {}
        for m in self.owner.strategy.configure_train(server_round, arrays, config, grid):
            by_node.setdefault(m.metadata.dst_node_id, m)
        chosen = sorted(by_node)
        if self.protocol.every_round:
            everyone = set(grid.get_node_ids())
            if everyone - set(chosen):
                log.warning("fedpress: round %d: %s needs every node in every round; the "
                            "wrapped strategy chose %d of %d (the others start afresh when "
                            "chosen again)", server_round, self.protocol.title, len(chosen),
                            len(everyone))
            self.in_step &= set(chosen)
        restarted = {n for n in chosen if n not in self.in_step}
        for n in restarted:
            self.down.forget(n)
        messages, sizes, _ = self.server.downlink(chosen, state, self.down)
        for n in sorted(restarted):
            again = self.server.restart(n, state)
            if again is not None:
                messages[n], sizes[n] = again
        extra = self.owner._link_config()
        out = []
        for n in chosen:
            m = by_node[n]
            key = wire.array_key(m.content)
            if key is None:
                raise ConfigError("the wrapped strategy's train messages carry no model: "
                                  f"{self.protocol.title}'s exchange has nothing to start from")
            record, layout = payload.pack(messages[n])
            more = {KEY_LAYOUT: layout, **({KEY_RESET: True} if n in restarted else {})}
            m.content = wire.with_arrays(m, key, record, extra | more)
            out.append(m)
        row: dict[str, Any] = {
            "round": server_round, "phase": "train", "bytes_down": sum(sizes.values()),
            "raw_down": raw_bytes(state) * len(chosen),
            "flower_bytes_down": sum(message_bytes(m) for m in out),
            "restarted": len(restarted)}
        self.owner.history.append(row)
        self.current = _Round(server_round, chosen, state, sizes, row)
        return out

    # -- the replies, the later phases, the merge ---------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the exchange on the first replies, then merge (see the module docs)."""
        cur = self.current
        assert cur is not None and self.server is not None
        replies = list(replies)
        cur.row["flower_bytes_up"] = sum(message_bytes(r) for r in replies)
        failures: dict[int, str] = {}
        got: dict[int, tuple[State, float, Message]] = {}
        errors, dropped = [], 0
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in cur.chosen or node in got or node in failures:
                log.warning("fedpress: round %d: ignoring a train reply from node %s (not "
                            "asked, or a second one)", server_round, node)
                continue
            if reply.has_error():
                failures[node] = f"error reply: {reply.error.reason}"
                log.warning("fedpress: round %d: the train reply of node %s is an error: %s",
                            server_round, node, reply.error.reason)
                errors.append(reply)
                continue
            try:
                state, weight, nbytes = self._first(reply)
            except Exception as exc:  # a peer's bytes: whatever they make a reader raise
                dropped += 1
                failures[node] = f"dropped: {_why(exc)}"
                log.warning("fedpress: round %d: dropping the reply of node %s: %s",
                            server_round, node, _why(exc))
                continue
            got[node] = (state, weight, reply)
            cur.up_bytes[node] = nbytes
        for node in cur.chosen:
            if node not in got:
                failures.setdefault(node, "no reply")
        cost = self._exchange(sorted(got), got, failures)
        if cost is not None:
            for node, why in cost.dropped.items():
                failures[node] = cur.failures.get(node) or f"dropped by the exchange: {why}"
                dropped += 1
                log.warning("fedpress: round %d: node %s left out of %s's exchange: %s",
                            server_round, node, self.protocol.title, failures[node])
        survivors = [n for n in sorted(got) if n not in failures]
        arrays, metrics = self._merge(server_round, cur, got, survivors, errors,
                                      cost.aggregate if cost is not None else {})
        for node in cur.chosen:
            if node in survivors:
                self.in_step.add(node)
            else:
                self.in_step.discard(node)
                self.owner._forget(node, failures[node])
        ours = self._figures(cur, got, survivors, cost, dropped)
        cur.row.update({k.removeprefix("fedpress-").replace("-", "_"): v
                        for k, v in ours.items()})
        self.owner._count_failure(server_round, len(survivors), failures)
        merged = MetricRecord(dict(metrics) if metrics is not None else {})
        merged.update(ours)  # type: ignore[arg-type]
        return arrays, merged

    def _first(self, reply: Message) -> tuple[State, float, int]:
        """A first reply's tensors (checked against the model), its weight and bytes."""
        content = reply.content
        key = wire.array_key(content)
        if key is None:
            raise FormatError("the reply carries no arrays")
        info = content.config_records.get(REPLY_KEY)
        if info is None or "layout" not in info:
            raise FormatError("the reply has no exchange layout (is "
                              "fedpress.flower.compression_mod in the ClientApp's mods?)")
        if info.get("phase") != FIRST_PHASE:
            raise FormatError(f"the reply answers phase {info.get('phase')!r}, not the "
                              "round's train message")
        message = payload.unpack(content.array_records[key], info["layout"])
        if not isinstance(message, dict):
            raise FormatError("the reply is not a state dict")
        assert self.server is not None
        exchanged = self.server.exchanged
        for k, v in message.items():
            if k not in self.model:
                continue  # the protocol's own entries (PowerSGD's factors): it checks them
            if k in exchanged:
                raise FormatError(f"the reply carries {k!r}, which the exchange averages")
            shape, dtype = self.model[k]
            if (v.shape, v.dtype) != (shape, dtype):
                raise FormatError(f"the reply holds {k!r} as {v.dtype}{v.shape}, the "
                                  f"model's {dtype}{shape}")
        missing = [k for k in self.model if k not in exchanged and k not in message]
        if missing:
            raise FormatError(f"the reply lacks the model's {missing[:5]}")
        return message, self._weight(content), payload.size(message)

    def _weight(self, content: RecordDict) -> float:
        """The reply's weight: its metric the wrapped strategy weighs by."""
        name = getattr(self.owner.strategy, "weighted_by_key", "num-examples")
        for record in content.metric_records.values():
            value = record.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and np.isfinite(value) and value > 0:
                return float(value)
        raise FormatError(f"the reply has no metric {name!r} > 0 to weigh it by")

    def _exchange(self, used: list[int], got: Mapping[int, tuple[State, float, Message]],
                  failures: dict[int, str]) -> PhaseCost | None:
        """The protocol's later phases over the nodes whose first reply is usable;
        ``None`` when none is, or the exchange failed (every node then failed)."""
        cur, server = self.current, self.server
        assert cur is not None and server is not None
        if not used:
            return None
        try:
            return server.exchange(used, [dict(got[n][0]) for n in used],
                                   [got[n][1] for n in used], self._call, _Links(self.owner),
                                   cur.down_bytes)
        except Exception as exc:  # one exchange's failure, not the ServerApp's
            log.error("fedpress: round %d: %s's exchange failed: %s", cur.number,
                      self.protocol.title, _why(exc))
            for n in used:
                failures[n] = cur.failures.get(n) or f"the exchange failed: {_why(exc)}"
            return None

    def _call(self, phase: str, payloads: Mapping[Any, Any]) -> list[PhaseReply]:
        """One later phase: a train message per node naming ``phase``; the usable
        answers, in node order (the others are recorded as the round's failures)."""
        cur, grid = self.current, self.grid
        assert cur is not None and grid is not None
        extra = {**self.owner._link_config(), KEY_PHASE: phase, "server-round": cur.number}
        messages = []
        sent = 0
        for node in sorted(payloads):
            record, layout = payload.pack(payloads[node])
            sent += payload.size(payloads[node])
            messages.append(Message(RecordDict({
                PAYLOAD_KEY: record, "config": ConfigRecord({**extra, KEY_LAYOUT: layout})}),
                dst_node_id=node, message_type="train"))
        row: dict[str, Any] = {"round": cur.number, "phase": phase, "nodes": len(messages),
                               "bytes_down": sent, "bytes_up": 0,
                               "flower_bytes_down": sum(message_bytes(m) for m in messages)}
        replies = list(grid.send_and_receive(messages, timeout=self.timeout)) \
            if messages else []
        row["flower_bytes_up"] = sum(message_bytes(r) for r in replies)
        out: dict[int, PhaseReply] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in payloads or node in out or node in cur.failures:
                log.warning("fedpress: round %d: ignoring a %s reply from node %s (not "
                            "asked, or a second one)", cur.number, phase, node)
                continue
            if reply.has_error():
                cur.failures[node] = f"error reply to {phase}: {reply.error.reason}"
                continue
            try:
                message = self._answer(reply, phase)
            except Exception as exc:  # a peer's bytes
                cur.failures[node] = f"dropped {phase} reply: {_why(exc)}"
                continue
            nbytes = payload.size(message)
            out[node] = PhaseReply(node, message, nbytes)
            row["bytes_up"] += nbytes
            cur.up_bytes[node] = cur.up_bytes.get(node, 0) + nbytes
        for node in payloads:
            if node not in out:
                cur.failures.setdefault(node, f"no reply to {phase}")
        row["dropped"] = len(payloads) - len(out)
        cur.row["flower_bytes_down"] += row["flower_bytes_down"]
        cur.row["flower_bytes_up"] = cur.row.get("flower_bytes_up", 0) + row["flower_bytes_up"]
        self.owner.history.append(row)
        return [out[n] for n in sorted(out)]

    @staticmethod
    def _answer(reply: Message, phase: str) -> Any:
        """A later phase's answer, unpacked; FormatError if it answers another phase or
        does not unpack."""
        content = reply.content
        info = content.config_records.get(REPLY_KEY)
        if info is None or PAYLOAD_KEY not in content.array_records:
            raise FormatError(f"not an answer to {phase} (no exchange payload)")
        if info.get("phase") != phase:
            raise FormatError(f"it answers phase {info.get('phase')!r}, not {phase!r}")
        return payload.unpack(content.array_records[PAYLOAD_KEY], info.get("layout"))

    def _merge(self, server_round: int, cur: _Round,
               got: Mapping[int, tuple[State, float, Message]], survivors: list[int],
               errors: list[Message], aggregate: State,
               ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's model of the survivors' complete models, with the
        exchanged tensors at exactly ``global + aggregate``."""
        state = cur.state
        moved = {k: (state[k] + aggregate[k].astype(np.float64)).astype(state[k].dtype)
                 for k in aggregate}
        assert self.server is not None
        rest = [k for k in state if k not in self.server.exchanged]
        update = self.owner.uplink.send == "update"
        kept = []
        for node in survivors:
            reply_state, _, reply = got[node]
            mine = {k: reply_state[k] for k in rest}
            if update:
                mine = apply_changes({k: state[k] for k in rest}, mine)
            full = {k: moved[k] if k in moved else mine[k] if k in mine else state[k]
                    for k in state}
            key = wire.array_key(reply.content)
            content = wire.with_arrays(reply, key, wire.plain_record(full))
            if REPLY_KEY in content:
                del content[REPLY_KEY]
            reply.content = content
            kept.append(reply)
        arrays, metrics = self.owner.strategy.aggregate_train(server_round, kept + errors)
        if moved:  # the exchanged tensors as every client end computes them
            base = wire.state_of(arrays) if arrays is not None else dict(state)
            base.update(moved)
            arrays = wire.plain_record({k: base[k] for k in state})
        return arrays, metrics

    def _figures(self, cur: _Round, got: Mapping[int, Any], survivors: list[int],
                 cost: PhaseCost | None, dropped: int) -> dict[str, int | float]:
        """The round's ``fedpress-*`` metrics: every phase's bytes, the simulator's
        way (the first replies that unpacked, the answers the exchange used)."""
        first = sum(payload.size(got[n][0]) for n in got)
        up = first + (cost.bytes_up if cost is not None else 0)
        raw_up = raw_bytes(cur.state) * len(got)
        down = sum(cur.down_bytes.values())
        raw_down = cur.row["raw_down"]
        ours: dict[str, int | float] = {
            "fedpress-bytes-up": up, "fedpress-raw-up": raw_up,
            "fedpress-bytes-down": down, "fedpress-raw-down": raw_down,
            "fedpress-cr-up": raw_up / max(1, up), "fedpress-cr-down": raw_down / max(1, down),
            "fedpress-dropped": dropped,
            "fedpress-flower-bytes-up": cur.row.get("flower_bytes_up", 0),
            "fedpress-flower-bytes-down": cur.row["flower_bytes_down"]}
        if None not in self.owner.mbps:
            ours["fedpress-comm-s"] = max(
                (self.owner._seconds(cur.down_bytes.get(n, 0), 1)
                 + self.owner._seconds(cur.up_bytes.get(n, 0), 0) for n in survivors),
                default=0.0)
        return ours
