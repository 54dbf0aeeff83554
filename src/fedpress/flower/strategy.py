"""The server's end: a Flower strategy that compresses what any other strategy sends.

::

    from flwr.serverapp.strategy import FedAvg
    from fedpress.flower import CompressedStrategy
    strategy = CompressedStrategy(FedAvg(), uplink="fedsz", downlink="fedsz")
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)

:class:`CompressedStrategy` wraps a Message-API strategy (FedAvg, FedProx, FedAdam,
...). The wrapped strategy builds its messages as usual; the wrapper encodes their
arrays with the downlink plan (once per distinct copy: one frame is broadcast when
the plan is stateless), adds the uplink's spec to their config, and sends them. It
decodes the train replies back to plain arrays before the wrapped strategy
aggregates them, so that strategy never sees a frame. A train reply that does not
decode (corrupted, crafted, the wrong tensors, a desynchronised codec state, a client
without the mod) is dropped with a logged reason and the round goes on with the others;
an error reply (a client that lacks a back end library, an app that raised) is logged
with its reason. A node whose reply was dropped, was an error or did not come is
started afresh: both ends drop its codec state and its next message carries the whole
model.

The server decodes replies with the uplink's codecs only (:meth:`Link.peer_limits`:
a frame naming another codec is refused before a payload byte reaches a back end;
codecs that are not safe on a peer's bytes, such as ``sz2``, are decoded in a child
process), and checks each frame's tensor names, shapes and dtypes against the model
before decoding it. Both links' back end libraries are checked when the strategy is
built (:class:`fedpress.MissingDependencyError` naming the package).

A round in which no train reply could be used leaves the model as it was; after
``max_failed_rounds`` such rounds in a row the strategy raises
:class:`FailedRoundsError`, whose message sums up the reasons, so that the ServerApp
fails (``flwr ls`` shows the run as failed) instead of finishing with an untrained
model.

Each round's train MetricRecord gains ``fedpress-*`` entries: bytes up and down on
the wire, their raw sizes, the compression ratios, the replies dropped and, with a
bandwidth given, the simulated communication seconds (FedSZ's Eq. 1 per client,
the slowest client counting). Beside the frames' bytes (``fedpress-bytes-up``/
``-down``), ``fedpress-flower-bytes-up``/``-down`` count the whole Flower messages
that carry them, serialized as Flower's protobuf ``Message`` (metadata, config and
metric records, the Array framing; transport framing such as HTTP/2 or TLS is not
counted): their difference is Flower's own overhead. (Flower 1.41's deployment runtime
moves a message as separate content-addressed objects, each Array in chunks of at most
5 MB, each object with a header naming its children by 64-character hashes; an object
the SuperLink already holds, such as a frame broadcast to several nodes, is pushed
once but pulled by each node.) :attr:`CompressedStrategy.history` keeps them per round
and phase.

:meth:`CompressedStrategy.from_run_config` builds the wrapper from the run config
(``[tool.flwr.app.config]``, keys ``fedpress-*``), so that a plan is switched with
``flwr run --run-config`` rather than in code.

An uplink spec with ``aggregate=hgc`` or ``aggregate=powersgd`` (as in the
simulator's plan specs) runs that round protocol of :mod:`fedpress.exchange` instead:
HGC's shared top-k mask or PowerSGD's two phases, their later phases sent as more
train messages in the same round (:mod:`.rounds` on this end, :mod:`.phases` in the
clients' mod)::

    strategy = CompressedStrategy(FedAvg(), uplink="hgc(density=0.01, aggregate=hgc)")
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

import fedpress

from ..errors import ConfigError, FedpressError, FormatError, StateDesyncError
from ..exchange import Downlink, apply_changes, raw_bytes
from ..frame import Limits
from ..frame import unpack as unpack_frame
from ..partition import Plan
from . import wire
from .link import (
    KEY_BASE,
    KEY_DELAY,
    KEY_DOWNLINK,
    KEY_RESET,
    KEY_UPLINK,
    REPLY_KEY,
    Link,
)
from .protocols import protocol_for
from .rounds import ExchangeRounds
from .sizes import message_bytes

__all__ = ["RUN_CONFIG_KEYS", "CompressedStrategy", "FailedRoundsError", "message_bytes"]

log = logging.getLogger("fedpress.flower")

#: how many distinct reasons a failed round's summary lists, and how long each may be
_REASONS_SHOWN, _REASON_CHARS = 4, 400

#: the run config keys :meth:`CompressedStrategy.from_run_config` reads
RUN_CONFIG_KEYS = ("fedpress-uplink", "fedpress-downlink", "fedpress-eb", "fedpress-mode",
                   "fedpress-uplink-mbps", "fedpress-downlink-mbps", "fedpress-latency-s",
                   "fedpress-delay", "fedpress-max-failed-rounds")


class FailedRoundsError(FedpressError, RuntimeError):
    """No train reply could be used in ``max_failed_rounds`` rounds in a row (the
    message sums up why, round by round)."""


class CompressedStrategy(Strategy):
    """Compress both directions of another strategy's traffic (see the module docs).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The strategy that samples, configures and aggregates.
    uplink, downlink : str or Link or None
        Plan specs (``"fedsz"``, ``"gaeb(reference=true)"``, ``"ef:topk(ratio=0.01,
        send=update)"``; ``None``/``"none"``: raw arrays). See :mod:`.link`. An
        uplink with ``aggregate=hgc`` (``"hgc(density=0.01, aggregate=hgc)"``: every
        node every round, no downlink plan) or ``aggregate=powersgd``
        (``"powersgd(rank=2, aggregate=powersgd)"``) runs that round protocol
        (:mod:`.rounds`).
    uplink_mbps, downlink_mbps : float, optional
        Bandwidths for the simulated communication time in the metrics.
    latency_s : float
        One-way latency added to each transfer of that time.
    delay : bool
        Also make the clients sleep for their simulated transfer times (an emulated
        slow network; needs both bandwidths).
    max_failed_rounds : int or None
        Raise :class:`FailedRoundsError` after this many rounds in a row in which no
        train reply could be used (all dropped, errors or lost); ``0`` or ``None``:
        never (the model then stays as it was through such rounds).
    limits : fedpress.Limits, optional
        Caps for decoding the replies; always restricted to the uplink's codecs (see
        :meth:`Link.peer_limits`: name a codec that is not peer-safe in
        ``Limits(codecs=...)`` to decode it in this process rather than in a child
        process).

    Raises
    ------
    fedpress.MissingDependencyError
        A codec of either link lacks its back end library here (the message names the
        package to install).
    """

    def __init__(self, strategy: Strategy, uplink: str | Link | None = "fedsz",
                 downlink: str | Link | None = None, *, uplink_mbps: float | None = None,
                 downlink_mbps: float | None = None, latency_s: float = 0.0,
                 delay: bool = False, max_failed_rounds: int | None = 1,
                 limits: Limits | None = None) -> None:
        if not isinstance(strategy, Strategy):
            raise ConfigError("CompressedStrategy wraps a flwr.serverapp.strategy.Strategy "
                              f"(FedAvg, FedProx, ...), got {type(strategy).__name__}")
        self.strategy = strategy
        self.uplink, self.downlink = Link.parse(uplink), Link.parse(downlink)
        if self.downlink.reference:
            raise ConfigError("reference=true is an uplink setting")
        for link in (self.uplink, self.downlink):  # the server decodes one, encodes the other
            link.check_available()
        if max_failed_rounds is None:
            max_failed_rounds = 0
        if isinstance(max_failed_rounds, bool) or not isinstance(max_failed_rounds, int) \
                or max_failed_rounds < 0:
            raise ConfigError("max_failed_rounds must be an int >= 0 or None, got "
                              f"{max_failed_rounds!r}")
        self.max_failed_rounds = max_failed_rounds
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a fedpress.Limits, got {limits!r}")
        self.limits = self.uplink.peer_limits(limits if limits is not None else Limits())
        isolated = sorted(self.limits.isolate & {c.codec_id for c in self.uplink.codecs()})
        if isolated and self.uplink.reference:
            raise ConfigError(
                f"the uplink's {', '.join(map(repr, isolated))} would be decoded in a child "
                "process (not safe on a peer's bytes), which cannot take reference=true; "
                "pass limits=fedpress.Limits(codecs={...}) naming it to decode it in this "
                "process (only with clients you trust)")
        if isolated:
            log.info("fedpress: the uplink's %s decoded in a child process (not safe on a "
                     "peer's bytes in this one)", ", ".join(isolated))
        for name, v in (("uplink_mbps", uplink_mbps), ("downlink_mbps", downlink_mbps)):
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be > 0, got {v}")
        if delay and (uplink_mbps is None or downlink_mbps is None):
            raise ConfigError("delay=True needs uplink_mbps and downlink_mbps")
        if not latency_s >= 0:
            raise ConfigError(f"latency_s must be >= 0, got {latency_s}")
        self.mbps = (uplink_mbps, downlink_mbps)
        self.latency_s, self.delay = float(latency_s), bool(delay)
        #: the round protocol's rounds (None: one frame per message)
        self.rounds: ExchangeRounds | None = None
        if self.uplink.aggregate is not None:
            fraction = float(getattr(strategy, "fraction_train", 1.0))
            self.rounds = ExchangeRounds(self, protocol_for(self.uplink, self.downlink,
                                                            fraction))
        track = self.rounds is None and (self.uplink.send == "update"
                                         or self.uplink.reference)
        d = self.downlink
        self._down = Downlink(d.plan, {**d.options, "mode": d.mode, "eb": d.eb}, 0, d.send,
                              None, track=track)
        self._decoder = fedpress.UpdateDecoder(limits=self.limits)
        self._digests: dict[int, str] = {}  # downlink version -> digest of that copy
        self._pending: dict[int, int] = {}  # this round's downlink bytes per node
        self._sent: dict[str, set[int]] = {}  # phase -> nodes sent a message this round
        self._reset: set[int] = set()  # nodes whose next message starts them afresh
        self._model: dict[str, tuple[tuple[int, ...], Any]] = {}  # names -> shape, dtype
        self._failed: list[str] = []  # summaries of the failed rounds in a row, so far
        self.history: list[dict[str, Any]] = []

    @classmethod
    def from_run_config(cls, strategy: Strategy, run_config: Mapping[str, Any] | Context,
                        **defaults: Any) -> CompressedStrategy:
        """The wrapper configured by a Flower run config (``[tool.flwr.app.config]``).

        Keys read (each optional; ``defaults``, then the constructor's defaults,
        stand for absent ones):

        ==============================  ===================================================
        ``fedpress-uplink``             plan spec of the uplink (``"fedsz"``,
                                        ``"gaeb(reference=true)"``, ``"none"``)
        ``fedpress-downlink``           plan spec of the downlink (``"none"``: raw)
        ``fedpress-eb``                 error bound of both links' error-bounded codecs
                                        (a spec's own ``eb=`` wins)
        ``fedpress-mode``               ``"rel"`` or ``"abs"`` (a spec's own ``mode=``
                                        wins)
        ``fedpress-uplink-mbps``,       bandwidths for the simulated communication time
        ``fedpress-downlink-mbps``      (> 0)
        ``fedpress-latency-s``          one-way latency of that time (>= 0)
        ``fedpress-delay``              true: clients sleep for their transfer times
        ``fedpress-max-failed-rounds``  int >= 0 (0: never stop)
        ==============================  ===================================================

        Other ``fedpress-*`` keys are refused (a misspelt key would otherwise be
        ignored); keys without the prefix are the app's own and left alone.

        Parameters
        ----------
        strategy : flwr.serverapp.strategy.Strategy
            The strategy to wrap.
        run_config : mapping or flwr.app.Context
            ``context.run_config`` (or the Context itself).
        **defaults
            Constructor arguments used where the run config has no key (``limits``
            is only ever given here).

        Raises
        ------
        fedpress.ConfigError
            An unknown ``fedpress-*`` key or a bad value; the message names the key.
        """
        if isinstance(run_config, Context):
            run_config = run_config.run_config
        if not isinstance(run_config, Mapping):
            raise ConfigError(f"from_run_config reads a run config mapping (context.run_config),"
                              f" got {type(run_config).__name__}")
        unknown = sorted(k for k in run_config
                         if str(k).startswith("fedpress-") and k not in RUN_CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"unknown run config key(s) {', '.join(map(repr, unknown))}; "
                              f"fedpress reads {', '.join(RUN_CONFIG_KEYS)}")
        cfg = {k: run_config[k] for k in RUN_CONFIG_KEYS if k in run_config}
        args = dict(defaults)

        def bad(key: str, what: str) -> ConfigError:
            return ConfigError(f"run config {key!r} must be {what}, got {cfg[key]!r}")

        def number(key: str, low: float, strict: bool) -> float:
            value = cfg[key]
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise bad(key, "a number") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not np.isfinite(value) or (value <= low if strict else value < low):
                raise bad(key, f"a number {'>' if strict else '>='} {low:g}")
            return float(value)

        bound: dict[str, Any] = {}
        if "fedpress-eb" in cfg:
            bound["eb"] = number("fedpress-eb", 0, True)
        if "fedpress-mode" in cfg:
            if cfg["fedpress-mode"] not in ("rel", "abs"):
                raise bad("fedpress-mode", "'rel' or 'abs'")
            bound["mode"] = cfg["fedpress-mode"]
        for name in ("uplink", "downlink"):
            key = f"fedpress-{name}"
            spec = cfg.get(key, args.get(name, "fedsz" if name == "uplink" else None))
            if key in cfg and not isinstance(spec, str):
                raise bad(key, "a plan spec string")
            try:
                given = set(Plan.parse(spec)[1]) if isinstance(spec, str) else set()
                extra = {} if isinstance(spec, Link) else {
                    k: v for k, v in bound.items() if k not in given}
                args[name] = Link.parse(spec, **extra)
            except ConfigError as exc:
                where = f"run config {key!r} = {spec!r}" if key in cfg else name
                raise ConfigError(f"{where}: {exc}") from None
        up = args.get("uplink")
        if isinstance(up, Link) and up.aggregate is not None:  # the protocol's own checks
            try:
                protocol_for(up, Link.parse(args.get("downlink")),
                             float(getattr(strategy, "fraction_train", 1.0)))
            except ConfigError as exc:
                where = "run config 'fedpress-uplink'" if "fedpress-uplink" in cfg else "uplink"
                raise ConfigError(f"{where} = {cfg.get('fedpress-uplink', up.spec)!r}: "
                                  f"{exc}") from None
        for key, arg in (("fedpress-uplink-mbps", "uplink_mbps"),
                         ("fedpress-downlink-mbps", "downlink_mbps")):
            if key in cfg:
                args[arg] = number(key, 0, True)
        if "fedpress-latency-s" in cfg:
            args["latency_s"] = number("fedpress-latency-s", 0, False)
        if "fedpress-delay" in cfg:
            if not isinstance(cfg["fedpress-delay"], bool):
                raise bad("fedpress-delay", "true or false")
            args["delay"] = cfg["fedpress-delay"]
        if "fedpress-max-failed-rounds" in cfg:
            value = cfg["fedpress-max-failed-rounds"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad("fedpress-max-failed-rounds", "an integer >= 0")
            args["max_failed_rounds"] = value
        return cls(strategy, **args)

    def _forget(self, node: int, why: str) -> None:
        """After a failure the server no longer knows what ``node`` holds or which codec
        state it has: drop both ends' state; its next message resets it."""
        if node not in self._reset:
            log.info("fedpress: node %s starts afresh next time (%s)", node, why)
        self._down.forget(node)
        self._decoder.store.clear(str(node))
        self._reset.add(node)

    # -- downlink ---------------------------------------------------------------------
    def _base(self, node: int) -> str:
        """Digest of the copy ``node`` holds ("" for none yet)."""
        held = self._down.held.get(node)
        if held is None:
            return ""
        version = self._down.version[node]
        if version not in self._digests:
            self._digests[version] = wire.state_digest(held)
        return self._digests[version]

    def _link_config(self) -> dict[str, Any]:
        """The config entries every message to a client carries: both links and, if
        asked, the emulated delay."""
        extra: dict[str, Any] = {KEY_UPLINK: self.uplink.spec,
                                 KEY_DOWNLINK: self.downlink.spec}
        if self.delay:
            extra[KEY_DELAY] = f"{self.mbps[0]},{self.mbps[1]},{self.latency_s}"
        return extra

    def _encode(self, server_round: int, messages: Iterable[Message],
                phase: str) -> list[Message]:
        out = list(messages)
        extra = self._link_config()
        groups: dict[int, list[Message]] = {}
        for m in out:
            key = wire.array_key(m.content)
            record = m.content.array_records[key] if key is not None else None
            groups.setdefault(id(record), []).append(m)
        down_bytes, raw_down = {}, 0
        for members in groups.values():
            key = wire.array_key(members[0].content)
            if key is None:  # nothing to compress: the uplink's spec only
                for m in members:
                    m.content = wire.with_arrays(m, None, None, extra)
                continue
            state = wire.state_of(members[0].content.array_records[key])
            if phase == "train":
                self._model = {k: (v.shape, v.dtype) for k, v in state.items()}
            nodes = [m.metadata.dst_node_id for m in members]
            bases = {n: self._base(n) for n in nodes}
            frames, sizes, _ = self._down.send(nodes, state)
            for m in members:
                node = m.metadata.dst_node_id
                frame = frames[node]
                record = wire.plain_record(frame) if isinstance(frame, dict) \
                    else wire.frame_record(frame)
                more = {KEY_BASE: bases[node]} if self.downlink.send == "update" else {}
                if node in self._reset:
                    more[KEY_RESET] = True
                m.content = wire.with_arrays(m, key, record, extra | more)
                down_bytes[node] = down_bytes.get(node, 0) + sizes[node]
                raw_down += raw_bytes(state)
        self.history.append({"round": server_round, "phase": phase,
                             "bytes_down": sum(down_bytes.values()), "raw_down": raw_down,
                             "flower_bytes_down": sum(message_bytes(m) for m in out)})
        self._pending = down_bytes
        self._sent[phase] = {m.metadata.dst_node_id for m in out}
        self._reset -= self._sent[phase]
        held = set(self._down.version.values())  # digests of copies still held
        self._digests = {v: d for v, d in self._digests.items() if v in held}
        return out

    def _check_shapes(self, got: dict, expect: dict, what: str,
                      declared: bool = False) -> None:
        """FormatError unless ``got`` has the names, shapes and dtypes of ``expect``
        (name -> (shape, dtype)); ``declared``: ``got`` maps names to (shape, dtype)
        too, not to arrays."""
        verb = "declares" if declared else "holds"
        if set(got) != set(expect):
            names = sorted(got)
            shown = names if len(names) <= 20 else [*names[:20], f"... ({len(names)})"]
            raise FormatError(f"the {what} {verb} tensors {shown}, the model "
                              f"{sorted(expect)}")
        for k, v in got.items():
            shape, dtype = v if declared else (v.shape, v.dtype)
            if (tuple(shape), np.dtype(dtype)) != (tuple(expect[k][0]), np.dtype(expect[k][1])):
                raise FormatError(f"the {what} {verb} {k!r} as {dtype}{tuple(shape)}, the "
                                  f"model's {expect[k][1]}{tuple(expect[k][0])}")

    def _check_layout(self, frame: bytes) -> None:
        """FormatError unless the frame (parsed, not decoded) declares the model's
        tensors: nothing is allocated for a frame that declares others (a huge tensor,
        extra or missing ones)."""
        records = unpack_frame(frame, self.limits).records
        declared = {r.name: (tuple(r.spec.shape), np.dtype(r.spec.dtype)) for r in records}
        if len(declared) != len(records):
            raise FormatError("the frame declares a tensor name twice")
        self._check_shapes(declared, self._model, "frame", declared=True)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's train messages, arrays encoded for the downlink (with
        a round protocol: its first messages, :meth:`ExchangeRounds.configure_train`)."""
        if self.rounds is not None:
            return self.rounds.configure_train(server_round, arrays, config, grid)
        return self._encode(server_round, self.strategy.configure_train(
            server_round, arrays, config, grid), "train")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """The wrapped strategy's evaluate messages, arrays encoded for the downlink."""
        return self._encode(server_round, self.strategy.configure_evaluate(
            server_round, arrays, config, grid), "evaluate")

    # -- uplink -----------------------------------------------------------------------
    def _decode(self, reply: Message) -> int:
        """Turn a train reply's frame into plain arrays (in place); its bytes on the
        wire. Raises FedpressError when it cannot be used."""
        node = reply.metadata.src_node_id
        key = wire.array_key(reply.content)
        if key is None:
            raise FormatError("the reply carries no arrays")
        record = reply.content.array_records[key]
        frame = wire.frame_of(record)
        if self.uplink.plan is None:
            if frame is not None:
                raise FormatError("a fedpress frame, but the uplink is raw")
            self._check_shapes(wire.state_of(record), self._model, "reply")
            return raw_bytes(wire.state_of(record))
        if frame is None:
            raise FormatError("plain arrays where a fedpress frame was expected (is "
                              "fedpress.flower.compression_mod in the ClientApp's mods?)")
        self._check_layout(frame)
        start = None
        if self.uplink.send == "update" or self.uplink.reference:
            start = self._down.held.get(node)
            sent = reply.content.config_records.get(REPLY_KEY, {}).get("start")
            if start is None or sent != wire.state_digest(start):
                raise StateDesyncError(f"the client started from {sent!r}, the server sent "
                                       f"{'' if start is None else wire.state_digest(start)!r}")
        got = self._decoder.decode(frame, peer=str(node),
                                   reference=start if self.uplink.reference else None)
        if self.uplink.send == "update":
            assert start is not None
            self._check_shapes(got, {k: (v.shape, v.dtype) for k, v in start.items()},
                               "update")
            got = apply_changes(start, got)
        self._check_shapes(got, self._model, "reply")
        content = wire.with_arrays(reply, key, wire.plain_record(got))
        if REPLY_KEY in content:
            del content[REPLY_KEY]
        reply.content = content
        return len(frame)

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the replies (dropping those that do not decode), then aggregate them
        with the wrapped strategy; its metrics gain the ``fedpress-*`` entries. With a
        round protocol: its later phases, then the merge
        (:meth:`ExchangeRounds.aggregate_train`)."""
        if self.rounds is not None:
            return self.rounds.aggregate_train(server_round, replies)
        kept, up_bytes, raw_up, dropped = [], {}, 0, 0
        replies = list(replies)
        flower_up = sum(message_bytes(r) for r in replies)  # as they came, frames and all
        failures = dict.fromkeys(self._forget_silent(replies, "train"), "no reply")
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures[node] = f"error reply: {reply.error.reason}"
                log.warning("fedpress: round %d: the train reply of node %s is an error: %s",
                            server_round, node, reply.error.reason)
                self._forget(node, "its train reply is an error")
                kept.append(reply)
                continue
            try:
                n = self._decode(reply)
            except Exception as exc:  # a peer's bytes: whatever they make a decoder raise
                dropped += 1
                why = str(exc) if isinstance(exc, FedpressError) else \
                    f"{type(exc).__name__}: {exc}"
                failures[node] = f"dropped: {why}"
                log.warning("fedpress: round %d: dropping the reply of node %s: %s",
                            server_round, node, why)
                self._forget(node, "its reply was dropped")
                continue
            up_bytes[node] = n
            raw_up += raw_bytes(wire.state_of(
                reply.content.array_records[wire.array_key(reply.content)]))
            kept.append(reply)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        row = next((h for h in reversed(self.history)
                    if h["round"] == server_round and h["phase"] == "train"), None)
        down = row["bytes_down"] if row else 0
        raw_down = row["raw_down"] if row else 0
        ours: dict[str, int | float] = {
            "fedpress-bytes-up": sum(up_bytes.values()), "fedpress-raw-up": raw_up,
            "fedpress-bytes-down": down, "fedpress-raw-down": raw_down,
            "fedpress-cr-up": raw_up / max(1, sum(up_bytes.values())),
            "fedpress-cr-down": raw_down / max(1, down),
            "fedpress-dropped": dropped,
            "fedpress-flower-bytes-up": flower_up,
            "fedpress-flower-bytes-down": row["flower_bytes_down"] if row else 0}
        if self.mbps[0] is not None and self.mbps[1] is not None:
            ours["fedpress-comm-s"] = max(
                (self._seconds(self._pending.get(n, 0), 1) + self._seconds(b, 0)
                 for n, b in up_bytes.items()), default=0.0)
        if row is not None:
            row.update({k.removeprefix("fedpress-").replace("-", "_"): v
                        for k, v in ours.items()})
        self._count_failure(server_round, len(up_bytes), failures)
        merged = MetricRecord(dict(metrics) if metrics is not None else {})
        merged.update(ours)  # type: ignore[arg-type]
        return arrays, merged

    def _count_failure(self, server_round: int, used: int, failures: dict[int, str]) -> None:
        """Count a round in which no train reply could be used (replies ``used``; the
        others' reasons by node); raise FailedRoundsError after ``max_failed_rounds``
        such rounds in a row."""
        if used or not failures:  # a usable reply, or no node was asked
            self._failed.clear()
            return
        counts = Counter(r if len(r) <= _REASON_CHARS else r[:_REASON_CHARS] + "..."
                         for r in failures.values())
        listed = [f"{n}x {r}" for r, n in counts.most_common(_REASONS_SHOWN)]
        if len(counts) > _REASONS_SHOWN:
            listed.append(f"{len(counts) - _REASONS_SHOWN} other reasons")
        summary = (f"round {server_round}: 0 of {len(failures)} replies decodable: "
                   + "; ".join(listed))
        self._failed.append(summary)
        log.warning("fedpress: %s", summary)
        if self.max_failed_rounds and len(self._failed) >= self.max_failed_rounds:
            n = len(self._failed)
            when = f"in {n} rounds in a row" if n > 1 else "in a round"
            raise FailedRoundsError(
                f"fedpress: no train reply could be used {when} (max_failed_rounds="
                f"{self.max_failed_rounds}), so the run stops:\n" + "\n".join(self._failed))

    def _seconds(self, nbytes: int, direction: int) -> float:
        mbps = self.mbps[direction]
        assert mbps is not None
        return self.latency_s + 8 * nbytes / (mbps * 1e6)

    def _forget_silent(self, replies: list[Message], phase: str) -> list[int]:
        """Forget the nodes sent a message in ``phase`` that did not reply; those nodes."""
        answered = {r.metadata.src_node_id for r in replies}
        silent = sorted(self._sent.get(phase, set()) - answered)
        for node in silent:
            self._forget(node, f"no {phase} reply")
        return silent

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message],
                           ) -> MetricRecord | None:
        """The wrapped strategy's evaluation metrics (evaluate replies carry no arrays);
        nodes that failed are started afresh next time."""
        replies = list(replies)
        row = next((h for h in reversed(self.history)
                    if h["round"] == server_round and h["phase"] == "evaluate"), None)
        if row is not None:
            row["flower_bytes_up"] = sum(message_bytes(r) for r in replies)
        self._forget_silent(replies, "evaluate")
        for r in replies:
            if r.has_error():
                log.warning("fedpress: round %d: the evaluate reply of node %s is an error: "
                            "%s", server_round, r.metadata.src_node_id, r.error.reason)
                self._forget(r.metadata.src_node_id, "its evaluate reply is an error")
        return self.strategy.aggregate_evaluate(server_round, replies)

    def start(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`flwr.serverapp.strategy.Strategy.start`; a round protocol's later
        phases wait for replies as long as its ``timeout`` says."""
        bound = inspect.signature(Strategy.start).bind(self, *args, **kwargs)
        bound.apply_defaults()
        if self.rounds is not None:
            self.rounds.timeout = bound.arguments.get("timeout", self.rounds.timeout)
        return super().start(*args, **kwargs)

    def summary(self) -> None:
        """The wrapped strategy's summary and the two links."""
        self.strategy.summary()
        log.info("fedpress: uplink %s, downlink %s", self.uplink.spec, self.downlink.spec)
