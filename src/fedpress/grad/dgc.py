"""Deep Gradient Compression (``dgc``): top-k sparsification with momentum
correction, local gradient clipping, momentum factor masking and sparsity warm-up.

Lin, Han, Mao, Wang & Dally, "Deep Gradient Compression: Reducing the
Communication Bandwidth for Distributed Training", ICLR 2018.

Per round ``t`` (``state.round``, advanced by the framework after each encode)
and tensor gradient ``g``::

    g <- g * min(1, clip / ||g||_2)       local gradient clipping (clip=None: off)
    u <- m * u + g                        momentum correction (m = momentum)
    v <- v + u                            local accumulation
    idx <- top-k of |v| at density d(t)   k = ceil(d(t) * n), at least 1
    send v[idx]
    u[idx] <- 0;  v[idx] <- 0             momentum factor masking

so ``sent + v_t == v_{t-1} + (m * u_{t-1} + g_t)`` holds exactly (in the tensor's
dtype arithmetic): nothing is dropped, only delayed. ``u`` and ``v`` are
sender-scope state (arrays ``"u"`` and ``"v"`` of the tensor's
:class:`fedpress.state.TensorState`); the decoder holds none, and a ``dgc`` payload
decodes like a ``topk`` one (:mod:`fedpress.grad.base`'s sparse payload: ``varint k``,
the indices, ``k`` values in the tensor's dtype).

Sparsity warm-up (the paper's schedule: over the warm-up the density drops four-fold
per stage, 75%, 93.75%, 98.4375%, 99.6% sparsity, then the target; the paper's
stages are epochs, here they are ``warmup / 4`` rounds each)::

    d(t) = max(ratio, 0.25 ** (floor(4 t / warmup) + 1))   for t < warmup
    d(t) = ratio                                          for t >= warmup

With the defaults (``ratio=0.001``, ``warmup=4``) that is 0.25, 0.0625, 0.015625,
0.00390625, then 0.001 from round 4 on; ``warmup=40`` holds each density for 10
rounds; ``warmup=0`` turns it off. The density never goes below ``ratio``. A round
here is the state's round counter (``state.round``): one encode by this sender, or the
federation's round when the encoder is told it (``UpdateEncoder.encode(step=...)``;
the simulator does), so that with partial participation a client's warm-up follows
the global round rather than its own participations.

``dgc`` applies momentum itself, on the client: it is meant for
``send="gradient"`` (the client sends its raw gradient; the server applies the
decoded sum with plain SGD), and the client's optimizer must not apply momentum a
second time. ``approx=True`` (the default) selects with DGC's sampled threshold
(:func:`fedpress.grad.topk.approx_top_indices`: the top quantile of a random
``sample`` share of ``|v|``), which sends at most ``k`` entries; ``approx=False``
sends exactly ``k``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..errors import ConfigError
from ..registry import register_codec
from ..state import TensorState
from .base import (
    StatefulGradientCodec,
    check_ratio,
    check_seed,
    data_rng,
    keep_count,
    read_sparse,
    scatter,
    sparse_peak_bytes,
    write_sparse,
)
from .ef import residual_of
from .indices import METHODS
from .topk import approx_top_indices, top_indices

#: the first warm-up round's density; each further warm-up round divides it by 4
WARMUP_START = 0.25


def l2_norm(x: np.ndarray) -> float:
    """``||x||_2`` in float64, without overflow for large float64 values."""
    if x.size == 0:
        return 0.0
    a = np.abs(x.reshape(-1)).astype(np.float64)
    amax = float(a.max())
    if amax == 0.0:
        return 0.0
    return amax * math.sqrt(float(np.dot(a / amax, a / amax)))


@register_codec
class DGC(StatefulGradientCodec):
    """Deep Gradient Compression: momentum-corrected, accumulated top-k (client state)."""

    codec_id = "dgc"
    config_keys: ClassVar[tuple[str, ...]] = ("ratio", "momentum", "clip", "warmup", "approx",
                                              "sample", "seed")

    def __init__(self, ratio: float = 0.001, momentum: float = 0.9, clip: float | None = None,
                 warmup: int = 4, approx: bool = True, sample: float = 0.01,
                 seed: int = 0) -> None:
        self.ratio = check_ratio(self.codec_id, ratio)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) \
                or not 0 <= momentum < 1:
            raise ConfigError(f"codec 'dgc': momentum must be a number in [0, 1), got "
                              f"{momentum!r}")
        self.momentum = float(momentum)
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not 0 < clip < math.inf):
            raise ConfigError(f"codec 'dgc': clip must be None (off) or a finite number > 0 "
                              f"(the largest L2 norm of a tensor's gradient), got {clip!r}")
        self.clip = None if clip is None else float(clip)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup <= 10_000:
            raise ConfigError(f"codec 'dgc': warmup must be an int in [0, 10000] (rounds of "
                              f"sparsity warm-up), got {warmup!r}")
        self.warmup = warmup
        if not isinstance(approx, bool):
            raise ConfigError(f"codec 'dgc': approx must be true or false, got {approx!r}")
        self.approx = approx
        self.sample = check_ratio(self.codec_id, sample)
        self.seed = check_seed(self.codec_id, seed)

    # -- schedule -----------------------------------------------------------------------

    def density(self, t: int) -> float:
        """The density of round ``t``: ``max(ratio, 0.25 ** (4 t // warmup + 1))``
        during the ``warmup`` first rounds, ``ratio`` after."""
        if 0 <= t < self.warmup:
            return max(self.ratio, WARMUP_START ** (4 * t // self.warmup + 1))
        return self.ratio

    def max_kept(self, n: int) -> int:
        """The most entries any round sends for a tensor of ``n`` values."""
        return keep_count(n, self.density(0))

    # -- encoding -----------------------------------------------------------------------


    def clipped(self, g: np.ndarray) -> np.ndarray:
        """``g`` scaled to L2 norm ``clip`` if it is longer (up to rounding)."""
        if self.clip is None:
            return g
        norm = l2_norm(g)
        if norm <= self.clip:
            return g
        return (g * np.asarray(self.clip / norm, dtype=g.dtype)).astype(g.dtype, copy=False)

    def encode(self, x: np.ndarray, state: TensorState | None = None) -> bytes:
        self.check_input(x)
        if state is None:
            state = TensorState()
        x = np.ascontiguousarray(x).reshape(np.shape(x))  # a 0-d tensor stays 0-d
        u_prev = residual_of(state, x, self.codec_id, "u")
        v_prev = residual_of(state, x, self.codec_id, "v")
        g = self.clipped(x)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below
            u = u_prev * np.asarray(self.momentum, dtype=x.dtype)  # a new array
            u += g
            v = v_prev + u
        if v.size and not np.isfinite(v).all():
            raise ConfigError("codec 'dgc': the accumulated gradient overflowed "
                              f"{x.dtype}; scale the gradients down or set clip")
        flat_u, flat_v = u.reshape(-1), v.reshape(-1)
        k = keep_count(x.size, self.density(state.round))
        mag = np.abs(flat_v)
        if self.approx:
            idx = approx_top_indices(mag, k, self.sample, data_rng(self.seed, v))
        else:
            idx = top_indices(mag, k)
        values = flat_v[idx]  # a copy
        w = Writer()
        write_sparse(w, idx, values, x.size)
        flat_u[idx] = 0  # momentum factor masking
        flat_v[idx] = 0
        state["u"] = u
        state["v"] = v
        return w.getvalue()

    # -- decoding -----------------------------------------------------------------------

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """Reading the most entries any round may send (:meth:`max_kept`: the first
        warm-up round's density, 0.25 by default), the output included."""
        return sparse_peak_bytes(spec, self.max_kept(spec.size))

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,
               state: TensorState | None = None) -> np.ndarray:
        rd = Reader(payload, "dgc payload")
        idx, values = read_sparse(rd, spec, self.max_kept(spec.size), "dgc payload")
        rd.expect_end()
        return scatter(idx, values, spec)

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        rd = Reader(payload, "dgc payload")
        k = rd.varint(cap=spec.size, name="kept entries")
        method = rd.u8()
        return {"kept": k, "density": k / spec.size if spec.size else 0.0,
                "index_coding": METHODS.get(method, f"unknown ({method})")}
