"""The round protocols, framework-free, shared by the simulator and Flower.

Plain numpy objects only (no torch, no simulator, no framework): what a round moves
between server and clients (:mod:`.deltas`), the codec ends of a link (:mod:`.ends`),
the server's downlink with its mirror of each client's copy (:mod:`.downlink`),
aggregation (:mod:`.aggregate`), and the registered round protocols
(:mod:`.protocol`): the single-message exchange (:mod:`.single`), HGC's shared-mask
exchange (:mod:`.hgc`) and PowerSGD's two-phase exchange (:mod:`.powersgd`).
"""

from __future__ import annotations

from .aggregate import majority_vote, weighted_mean
from .deltas import State, apply_changes, changes, raw_bytes, zeros_like
from .downlink import Downlink
from .ends import Message, gradient_compressor, make_decoder, make_encoder, warm_codecs
from .hgc import HGCExchange
from .powersgd import PowerSGDExchange
from .protocol import (
    ClientEnd,
    PhaseCost,
    RoundProtocol,
    ServerEnd,
    exchange_for,
    exchanges,
    register_exchange,
)
from .single import SingleExchange

__all__ = ["ClientEnd", "Downlink", "HGCExchange", "Message", "PhaseCost",
           "PowerSGDExchange", "RoundProtocol", "ServerEnd", "SingleExchange", "State",
           "apply_changes", "changes", "exchange_for", "exchanges", "gradient_compressor",
           "make_decoder", "make_encoder", "majority_vote", "raw_bytes", "register_exchange",
           "warm_codecs", "weighted_mean", "zeros_like"]
