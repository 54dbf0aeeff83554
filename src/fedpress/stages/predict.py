"""Predictors over integer quantization codes (forward: codes -> residual symbols).

``none``
    the codes themselves (FL weights and gradients are close to white noise,
    so this is often the best).
``lorenzo1d``
    first difference along the flattened tensor (SZ's 1-D Lorenzo predictor on
    dual-quantized codes); wins on smooth data.
``lorenzo2d``
    2-D Lorenzo over the tensor's natural axes, seen as a matrix of ``cols``
    columns (output channels x everything else for a conv kernel or a linear
    layer): ``q[i,j] - q[i-1,j] - q[i,j-1] + q[i-1,j-1]``; wins on data smooth
    along both axes (measured to lose on FL weights, updates and gradients).

Every forward and inverse takes ``(values, cols)``; the 1-D ones ignore ``cols``.
Each inverse reproduces the codes exactly, in int64.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import FormatError


def _none_fwd(q: np.ndarray, cols: int = 0) -> np.ndarray:
    return q


def _lorenzo_fwd(q: np.ndarray, cols: int = 0) -> np.ndarray:
    return np.diff(q, prepend=np.int64(0))


def _lorenzo_inv(r: np.ndarray, cols: int = 0) -> np.ndarray:
    return np.cumsum(r, dtype=np.int64)


def _matrix(v: np.ndarray, cols: int) -> np.ndarray:
    if cols < 1 or v.size % cols:
        raise ValueError(f"lorenzo2d: {v.size} values do not form rows of {cols}")
    return v.reshape(-1, cols)


def _lorenzo2d_fwd(q: np.ndarray, cols: int = 0) -> np.ndarray:
    m = _matrix(q.astype(np.int64, copy=False), cols)
    d = np.diff(m, axis=0, prepend=np.zeros((1, cols), np.int64))
    return np.diff(d, axis=1, prepend=np.zeros((d.shape[0], 1), np.int64)).reshape(-1)


def _lorenzo2d_inv(r: np.ndarray, cols: int = 0) -> np.ndarray:
    m = _matrix(r, cols)
    return np.cumsum(np.cumsum(m, axis=1, dtype=np.int64), axis=0, dtype=np.int64).reshape(-1)


_Stage = Callable[[np.ndarray, int], np.ndarray]
#: id on the wire -> (name, forward, inverse). Ids never change.
PREDICTORS: dict[int, tuple[str, _Stage, _Stage]] = {
    0: ("none", _none_fwd, _none_fwd),
    1: ("lorenzo1d", _lorenzo_fwd, _lorenzo_inv),
    2: ("lorenzo2d", _lorenzo2d_fwd, _lorenzo2d_inv),
}
#: predictors that need the number of columns (written after their id)
NEEDS_COLS = frozenset({2})
BY_NAME = {name: pid for pid, (name, _, _) in PREDICTORS.items()}


def predictor(pid: int) -> tuple[str, _Stage, _Stage]:
    try:
        return PREDICTORS[pid]
    except KeyError:
        raise FormatError(f"unknown predictor id {pid}") from None
