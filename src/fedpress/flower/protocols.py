"""Which round protocol a Flower app's links run, and what both of its ends share.

An uplink with ``aggregate`` set (:class:`~fedpress.flower.link.Link`) runs that round
protocol of :mod:`fedpress.exchange` (HGC's shared mask, PowerSGD's two phases): the
server drives the protocol's server end (:mod:`.rounds`), each client's mod its
client end (:mod:`.phases`). Both build the protocol the same way from the two links
(:func:`protocol_for`), and both tell the model's parameters from its buffers the
same way (:func:`parameter_names`), from the arrays alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..exchange import RoundProtocol, SingleExchange, exchange_for, exchanges
from .link import Link

#: the ArrayRecord key of a later phase's payload, and of its answer
PAYLOAD_KEY = "fedpress-exchange"
#: where the client's mod keeps its protocol end's state in ``Context.state``
END_KEY = "fedpress-exchange-end"
#: the phase a first message (the round's train message) stands for
FIRST_PHASE = "train"
#: name endings of float tensors that are buffers, not parameters (BatchNorm's
#: running statistics)
BUFFER_SUFFIXES = ("running_mean", "running_var")


@dataclass(frozen=True)
class FlowerSettings:
    """The settings a round protocol reads (:class:`fedpress.exchange.protocol.Settings`)
    for a Flower app: the links' plans, FedAvg's arithmetic on the exchanged tensors
    (the wrapped strategy aggregates the others), and the wrapped strategy's share of
    nodes per round."""

    plan: Any
    plan_options: Mapping[str, Any]
    downlink_plan: Any
    downlink_options: Mapping[str, Any]
    downlink_send: str
    send: str
    reference: bool = False
    algorithm: str = "fedavg"
    server_lr: float = 1.0
    fraction: float = 1.0
    lr_milestones: tuple[int, ...] = field(default=())


def settings_of(uplink: Link, downlink: Link, fraction: float = 1.0) -> FlowerSettings:
    """The protocol settings of a pair of links."""
    down = None if downlink.plan is None else \
        {**downlink.options, "mode": downlink.mode, "eb": downlink.eb}
    # the link's bound reaches the protocol (HGC's buffers, PowerSGD's rest), as the
    # simulator's run-level eb and mode do
    up = {**uplink.options, "mode": uplink.mode, "eb": uplink.eb}
    return FlowerSettings(uplink.plan, up, downlink.plan, down or {},
                          downlink.send, uplink.send, uplink.reference, fraction=fraction)


def protocol_for(uplink: Link, downlink: Link, fraction: float = 1.0) -> RoundProtocol:
    """The round protocol ``uplink.aggregate`` names, checked against the links.

    Raises
    ------
    fedpress.ConfigError
        No such protocol, settings it refuses (its message says which), the
        single-message exchange's other aggregation (``vote``: the wrapped strategy
        aggregates), or a downlink in update mode (not supported with a protocol).
    """
    name = uplink.aggregate
    if name is None:
        raise ConfigError("this uplink runs no round protocol (no aggregate= in its spec)")
    try:
        protocol = exchange_for(settings_of(uplink, downlink, fraction), name)
    except ConfigError as exc:
        raise ConfigError(f"uplink {uplink.spec}: {exc} (with Flower: the uplink spec gives "
                          "the plan, its options and send; the wrapped strategy's "
                          "fraction_train the fraction)") from None
    if isinstance(protocol, SingleExchange):
        raise ConfigError(f"uplink aggregate={name!r}: with Flower the wrapped strategy "
                          "aggregates the replies of one frame each (leave aggregate= out); "
                          "aggregate= selects a round protocol: "
                          + ", ".join(k for k, v in exchanges().items()
                                      if not issubclass(v, SingleExchange)))
    if downlink.send != "weights":
        raise ConfigError(f"uplink aggregate={name!r}: the downlink sends the weights with a "
                          "round protocol (send=update on the downlink is not supported)")
    return protocol


def parameter_names(state: Mapping[str, np.ndarray]) -> frozenset[str]:
    """The model's parameters among its tensors: the floating ones, except BatchNorm's
    running statistics (names ending in :data:`BUFFER_SUFFIXES`). Flower carries
    arrays only, so both ends tell them apart by this rule."""
    return frozenset(k for k, v in state.items() if np.issubdtype(np.asarray(v).dtype,
                                                                  np.floating)
                     and not k.endswith(BUFFER_SUFFIXES))
