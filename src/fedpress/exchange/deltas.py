"""State-dict deltas: what turns one copy of a model into another, and back.

A downlink or uplink in update mode sends ``changes(held, target)``; the receiver
applies them with :func:`apply_changes`. Float tensors travel as differences and
integer buffers (a batch counter) as values, and the sender mirrors the receiver's
arithmetic exactly, so both ends hold the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: a state dict as fedpress moves it: tensor name -> numpy array
State = dict[str, np.ndarray]


def raw_bytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes of ``state``'s arrays as they are (what an uncompressed message carries)."""
    return int(sum(v.nbytes for v in state.values()))


def zeros_like(state: State) -> State:
    """A copy of ``state`` with every value zero (a client that holds nothing yet)."""
    return {k: np.zeros_like(v) for k, v in state.items()}


def changes(held: State, target: State) -> State:
    """What turns ``held`` into ``target``: differences of float tensors, the values
    of the others (integer buffers)."""
    return {k: target[k] - held[k] if np.issubdtype(v.dtype, np.floating) else v
            for k, v in target.items()}


def apply_changes(held: State, got: State) -> State:
    """``held`` moved by decoded changes: float tensors add, the others are replaced
    (the server mirrors this arithmetic exactly)."""
    return {k: (held[k] + v).astype(held[k].dtype, copy=False)
            if np.issubdtype(v.dtype, np.floating) else v for k, v in got.items()}
