"""One direction of a Flower app's traffic: which plan, what is sent, how it is coded.

A :class:`Link` is written as a plan spec, the same as in the simulator:
``"fedsz"``, ``"gaeb(reference=true, residual_feedback=true)"``,
``"ef:topk(ratio=0.01)"``, ``"none"`` (raw arrays). Options inside the parentheses go
to the plan, except the link's own settings:

* ``send``: ``"weights"`` (the model) or ``"update"`` (its change: on the uplink,
  trained minus received weights; on the downlink, the new global model minus the copy
  the client holds, which the server mirrors);
* ``reference`` (uplink, weights): code the weights against the model the client
  started from (both ends hold it);
* ``eb``, ``mode``: the error bound of the plan's error-bounded codecs;
* ``aggregate`` (uplink), as in the simulator's plan specs: ``hgc`` or ``powersgd``
  runs that round protocol of :mod:`fedpress.exchange` (HGC's shared mask,
  PowerSGD's two phases) instead of one frame per reply: the plan's options are then
  the protocol's, its messages the protocol's (:mod:`.rounds`, :mod:`.phases`), and
  ``send`` defaults to ``update``; ``mean`` (the default) is one frame per reply.

The server's strategy wrapper holds both links; it tells each client both links in
the config of every message (keys ``fedpress-*``), so a client is configured in one
place: the server.

Who trusts whom: a client decodes what its server sends with the codecs of the
downlink the server named (in this process: the server chose them, and it chose the
app the client runs too); the server decodes what clients send with the codecs of
its uplink only, and those whose native decoder is not safe on a peer's bytes
(``Codec.peer_safe``, e.g. ``sz2``) in a child process (:meth:`Link.peer_limits`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import fedpress

from ..abc import Codec
from ..adaptive import AUTO, auto_options
from ..errors import ConfigError
from ..frame import DEFAULT_LIMITS, Limits
from ..partition import Plan

SENDS = ("weights", "update")
#: config keys the server adds to every message it sends
KEY_UPLINK = "fedpress-uplink"  # the uplink's spec (Link.spec)
KEY_DOWNLINK = "fedpress-downlink"  # the downlink's spec: what the client decodes
KEY_BASE = "fedpress-base"  # hex digest of the copy a downlink update applies to
KEY_DELAY = "fedpress-delay"  # "up_mbps,down_mbps,latency_s": the client sleeps that long
KEY_RESET = "fedpress-reset"  # true: drop all codec state and the held copy first
KEY_PHASE = "fedpress-phase"  # a round protocol's later phase the node answers
KEY_LAYOUT = "fedpress-layout"  # the layout of the protocol message (payload.pack)
#: the ConfigRecord a client adds to its reply for the server (which removes it)
REPLY_KEY = "fedpress"


@dataclass(frozen=True)
class Link:
    """One direction's plan and settings (see the module docs).

    Parameters
    ----------
    plan : str or None
        A plan name or spec (``None``/``"none"``: raw arrays).
    options : dict
        The plan's options (from the spec's parentheses).
    send : str
        ``"weights"`` or ``"update"``.
    reference : bool
        Uplink weights coded against the model the client started from.
    eb, mode : float, str
        The error bound of the plan's error-bounded codecs.
    aggregate : str or None
        The round protocol the plan runs (an aggregation name of
        :func:`fedpress.exchange.exchanges`: ``"hgc"``, ``"powersgd"``); ``None``
        (spec ``mean``): one fedpress frame per message.
    """

    plan: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    send: str = "weights"
    reference: bool = False
    eb: float = 1e-2
    mode: str = "rel"
    aggregate: str | None = None

    @classmethod
    def parse(cls, spec: str | Link | None, **overrides: Any) -> Link:
        """A link from a spec string (or a Link, returned as is plus ``overrides``)."""
        if isinstance(spec, Link):
            link = spec
        else:
            if spec is not None and not isinstance(spec, str):
                raise ConfigError(f"a link is a plan spec string, got {spec!r}")
            name, options = Plan.parse(spec)
            if isinstance(name, dict):
                raise ConfigError("a link's plan is a name or codec id with options, "
                                  "not JSON rules")
            settings = {k: options.pop(k) for k in ("send", "reference", "eb", "mode",
                                                    "aggregate") if k in options}
            if settings.get("aggregate") in ("mean", "none", ""):
                settings["aggregate"] = None
            if settings.get("aggregate") is not None:  # every protocol averages updates
                settings.setdefault("send", "update")
            plan = None if name in (None, "", "none", "raw") else str(name)
            link = cls(plan, options, **settings)
        if overrides:
            link = cls(**{**link.__dict__, **overrides})
        link.check()
        return link

    def check(self) -> None:
        if self.send not in SENDS:
            raise ConfigError(f"send must be one of {', '.join(SENDS)}, got {self.send!r}")
        if not isinstance(self.reference, bool):
            raise ConfigError(f"reference must be true or false, got {self.reference!r}")
        if self.plan is None and self.send != "weights":
            raise ConfigError("a raw link sends the weights: send='update' needs a plan")
        if self.reference and (self.plan is None or self.send != "weights"):
            raise ConfigError("reference=true codes the weights against the model the "
                              "client started from: it needs a plan and send='weights'")
        if self.aggregate is not None:
            if not isinstance(self.aggregate, str) or self.plan is None:
                raise ConfigError(f"aggregate names a round protocol and goes with a plan, "
                                  f"got aggregate={self.aggregate!r}, plan={self.plan!r}")
            return  # the protocol checks its options (CompressedStrategy)
        self.encoder()  # the plan and its options, checked now rather than mid-run
        if self.plan == AUTO and self.options.get("round", "off") != "off":
            raise ConfigError("auto(round=deadline) is built in the simulator only: in "
                              "Flower each node chooses for its own link (round=off)")

    @property
    def spec(self) -> str:
        """The spec string :meth:`parse` reads back into an equal link."""
        items = {**self.options, "send": self.send, "reference": self.reference,
                 "eb": self.eb, "mode": self.mode}
        if self.aggregate is not None:
            items["aggregate"] = self.aggregate
        body = ", ".join(f"{k}={_text(v)}" for k, v in items.items())
        return f"{self.plan or 'none'}({body})"

    def encoder(self, peer: str = "default",
                ) -> fedpress.UpdateEncoder | fedpress.AdaptiveEncoder | None:
        """A new encoder for this link's plan (``None`` for raw arrays, and for a round
        protocol's link, whose messages the protocol codes; an adaptive one for plan
        ``auto``, whose ``max_eb`` defaults to the link's ``eb``)."""
        if self.plan is None or self.aggregate is not None:
            return None
        if self.plan == AUTO:
            return fedpress.AdaptiveEncoder(
                **auto_options({"eb": self.eb, "mode": self.mode, **self.options}), peer=peer)
        return fedpress.UpdateEncoder(self.plan, self.mode, self.eb, peer=peer, **self.options)

    def _plans(self) -> list[Plan]:
        """The plans this link's frames may use (every candidate's, for ``auto``)."""
        encoder = self.encoder()
        if encoder is None:
            return []
        if isinstance(encoder, fedpress.AdaptiveEncoder):
            return [c.plan for c in encoder.candidates]
        return [encoder.plan]

    def codecs(self) -> list[Codec]:
        """Every codec this link's plan may use, wrapped ones included (none for raw
        arrays)."""
        return [c for plan in self._plans() for codec in plan.codecs() for c in codec.tree()]

    def check_available(self) -> None:
        """:class:`fedpress.MissingDependencyError`, naming the package to install, if a
        codec of this link lacks its back end library in this process."""
        for codec in self.codecs():
            codec.check_available()

    def peer_limits(self, base: Limits = DEFAULT_LIMITS) -> Limits:
        """``base`` restricted to this link's codecs, for decoding frames from peers one
        does not trust (the server decoding its clients' replies): a frame naming any
        other codec is refused before a payload byte reaches a back end.

        With ``base.codecs`` unset, the codecs whose decoders are not safe on a peer's
        bytes (``Codec.peer_safe``) are decoded in a child process
        (``Limits.isolate``); naming one in ``base.codecs`` decodes it in this process
        instead (an opt-in). ``base``'s other caps are kept."""
        tree = self.codecs()
        ids = frozenset(c.codec_id for c in tree)
        if base.codecs is not None:
            return replace(base, codecs=ids & base.codecs)
        unsafe = frozenset(c.codec_id for c in tree if not c.peer_safe)
        return replace(base, codecs=ids - unsafe, isolate=base.isolate | unsafe)

    def own_limits(self, base: Limits = DEFAULT_LIMITS) -> Limits:
        """``base`` that also accepts every codec of this link in this process, for
        frames from a peer one trusts (a client decoding its server's downlink)."""
        for plan in self._plans():
            base = fedpress.trusting(plan, base)
        return base


def sleep_for(config: dict, nbytes: int, direction: int) -> None:
    """Sleep for the simulated transfer time of ``nbytes`` (direction 0 up, 1 down),
    if the server's message asks for it (:data:`KEY_DELAY`)."""
    spec = config.get(KEY_DELAY)
    if not spec:
        return
    up, down, latency = (float(v) for v in str(spec).split(","))
    mbps = (up, down)[direction]
    time.sleep(latency + (8 * nbytes / (mbps * 1e6) if mbps > 0 else 0.0))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    text = str(v)
    if any(c in text for c in ",()=|'\""):  # quoted, if it reads back as it is
        quoted = f"'{text}'"
        try:
            same = Plan.parse(f"x(k={quoted})")[1].get("k") == text
        except ConfigError:
            same = False
        if not same:
            raise ConfigError(f"plan option value {text!r} cannot go in a spec string")
        return quoted
    return text
