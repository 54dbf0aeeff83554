"""Predictors over integer quantization codes (forward: codes -> residual symbols).

``none``
    the codes themselves (FL weights and gradients are close to white noise,
    so this is often the best).
``lorenzo1d``
    first difference along the flattened tensor (SZ's 1-D Lorenzo predictor on
    dual-quantized codes); wins on smooth data.

Each inverse reproduces the codes exactly, in int64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import FormatError


def _none_fwd(q: np.ndarray) -> np.ndarray:
    return q


def _lorenzo_fwd(q: np.ndarray) -> np.ndarray:
    return np.diff(q, prepend=np.int64(0))


def _lorenzo_inv(r: np.ndarray) -> np.ndarray:
    return np.cumsum(r, dtype=np.int64)


#: id on the wire -> (name, forward, inverse). Ids never change.
PREDICTORS: dict[int, tuple[str, Callable[[np.ndarray], np.ndarray],
                            Callable[[np.ndarray], np.ndarray]]] = {
    0: ("none", _none_fwd, _none_fwd),
    1: ("lorenzo1d", _lorenzo_fwd, _lorenzo_inv),
}
BY_NAME = {name: pid for pid, (name, _, _) in PREDICTORS.items()}


def predictor(pid: int) -> tuple[str, Callable[[np.ndarray], np.ndarray],
                                 Callable[[np.ndarray], np.ndarray]]:
    try:
        return PREDICTORS[pid]
    except KeyError:
        raise FormatError(f"unknown predictor id {pid}") from None
