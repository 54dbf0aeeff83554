"""fedpress: compression of federated-learning traffic.

Single tensors::

    blob = fedpress.compress(x, codec="sz3", mode="rel", eb=1e-2)
    y = fedpress.decompress(blob)

Whole state dicts (FedSZ's per-tensor partition by default)::

    blob = fedpress.encode_update(model.state_dict(), plan="fedsz", eb=1e-2)
    sd = fedpress.decode_update(blob)

A plan per message, for the link it takes (:mod:`fedpress.adaptive`)::

    enc = fedpress.AdaptiveEncoder(max_eb=1e-2)
    blob = enc.encode(model.state_dict(), uplink_mbps=25.0)
"""

from __future__ import annotations

from .abc import Codec, Scope, StatefulCodec, TensorSpec
from .adaptive import AdaptiveEncoder
from .api import DEFAULT_CODEC, compress, decompress, inspect
from .bounds import ErrorBound
from .errors import (
    ConfigError,
    FedpressError,
    FormatError,
    MissingDependencyError,
    ReferenceMismatchError,
    StateDesyncError,
)
from .frame import Limits
from .partition import Plan, Rule, make_codec
from .registry import codec_from_config, get_codec, list_codecs, register_codec
from .state import DirStateStore, MemoryStateStore, StateStore, TensorState
from .update import UpdateDecoder, UpdateEncoder, decode_update, encode_update, trusting

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CODEC", "AdaptiveEncoder", "Codec", "ConfigError", "DirStateStore", "ErrorBound",
    "FedpressError",
    "FormatError", "Limits", "MemoryStateStore", "MissingDependencyError", "Plan",
    "ReferenceMismatchError", "Rule",
    "Scope", "StateDesyncError", "StateStore", "StatefulCodec", "TensorSpec", "TensorState",
    "UpdateDecoder", "UpdateEncoder", "codec_from_config", "compress", "decode_update",
    "decompress", "encode_update", "get_codec", "inspect", "list_codecs", "make_codec",
    "register_codec", "trusting",
]
