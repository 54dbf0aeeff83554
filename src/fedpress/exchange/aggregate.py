"""Aggregation: how the server combines its clients' decoded replies.

:func:`weighted_mean` is FedAvg's (float64 accumulation, cast back);
:func:`majority_vote` is signSGD's server side. Framework-free: the simulator and
Flower's ``FedAvg64`` call the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..dtypes import is_float
from ..grad.sign import mean_abs
from .deltas import State


def weighted_mean(states: list[State], weights: list[float]) -> State:
    """Weighted mean of float tensors (in float64, cast back); other dtypes: the
    rounded mean (e.g. BatchNorm's num_batches_tracked)."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    out: State = {}
    for k, ref in states[0].items():
        acc = sum(wi * s[k].astype(np.float64) for wi, s in zip(w, states))
        out[k] = (np.asarray(acc).astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating)
                  else np.rint(acc).astype(ref.dtype))
    return out


def majority_vote(decoded: Sequence[np.ndarray],
                  weights: Sequence[float] | None = None) -> np.ndarray:
    """The server's aggregate of sign messages: ``mean_scale * sign(sum_i w_i sign(d_i))``.

    ``decoded`` are the clients' decoded messages (e.g. ``signsgd`` outputs,
    ``s_i * sign(x_i)``), all of one shape and floating dtype; ``weights`` (default
    all 1, e.g. the clients' sample counts) must be finite, >= 0 and not all 0.

    Each coordinate takes the sign of the weighted vote of the clients' signs
    (Bernstein et al. 2019); a tie (weighted sum exactly 0, computed in float64)
    gives 0, and so does a coordinate where every client sent 0. The vote is then
    multiplied by the weighted mean of the clients' scales, ``mean |d_i|``.
    Plain majority vote has magnitude 1 and needs a sign-sized learning rate;
    scaled by the mean scale, the aggregate has the magnitude of an average
    client's message, so the learning rate used with averaged (uncompressed)
    updates still fits. For ``scale="none"`` messages the mean scale is 1 and this
    is the plain vote. Returns an array of the inputs' shape and dtype.
    """
    arrays = [np.asarray(d) for d in decoded]
    if not arrays:
        raise ValueError("majority_vote needs at least one message")
    shape, dtype = arrays[0].shape, arrays[0].dtype
    for a in arrays:
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"majority_vote: messages differ in shape or dtype "
                             f"({dtype}{shape} and {a.dtype}{a.shape})")
    if not is_float(dtype):
        raise ValueError(f"majority_vote takes floating messages, not {dtype}")
    if weights is None:
        w = np.ones(len(arrays), dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(arrays),):
            raise ValueError(f"majority_vote: {w.size} weights for {len(arrays)} messages")
        if not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
            raise ValueError("majority_vote: weights must be finite, >= 0 and not all 0")
        w = w / w.max()  # same vote and mean, no overflow
    votes = np.zeros(shape, dtype=np.float64)
    scales = np.empty(len(arrays), dtype=np.float64)
    for i, a in enumerate(arrays):
        a64 = a.astype(np.float64)
        if not np.isfinite(a64).all():
            raise ValueError(f"majority_vote: message {i} holds NaN or Inf")
        votes += w[i] * np.sign(a64)
        scales[i] = mean_abs(a64)
    scale = float(np.dot(w, scales) / w.sum())
    return (np.sign(votes) * scale).astype(dtype)
