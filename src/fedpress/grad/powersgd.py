"""PowerSGD: rank-``r`` approximation by one step of power iteration, warm-started.

Vogels, Karimireddy & Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for
Distributed Optimization", NeurIPS 2019. Each tensor is viewed as a matrix ``M``
(first axis x the rest; conv kernels ``out x in*kh*kw``). With error feedback
``e`` and the previous round's ``Q`` (warm start; a seeded Gaussian on the first
round)::

    M = x + e;   P = orth(M Q);   Q = M^T P;   send P, Q;   e = M - P Q^T

The receiver rebuilds ``P Q^T``. A tensor whose rank-``r`` factors would not be
smaller than the tensor itself (vectors, small or thin matrices) is sent densely.
Both ends multiply float16/bfloat16 factors in float32 (NumPy has no BLAS path for
them), a block of rows at a time, and round each block to the tensor's dtype. The
decoder refuses a payload whose rank exceeds the codec's ``rank``.

This codec is the single-message form: each sender's own factors travel together
(``(n + m) r`` values instead of ``n m``). In the all-reduce form of the paper the
``P`` of all workers are averaged before ``Q`` is computed, which aligns the
factors across clients; here each client's approximation is exact to rank ``r``
on its own and the server averages the rebuilt matrices.

State (sender scope, under the tensor's name): ``q`` (``m x r``) and ``error``.

Payload::

    u8      form        0 dense, 1 low rank
    dense:  the tensor, little-endian, its dtype
    low rank: varint r, then P (n x r) and Q (m x r), little-endian, the tensor's dtype
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..dtypes import le_bytes
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..state import TensorState
from .base import StatefulGradientCodec, check_seed, finite_values
from .ef import residual_of

DENSE, LOW_RANK = 0, 1
#: rows of ``P Q^T`` multiplied at a time for float16/bfloat16 factors (bounds the
#: float32 temporary) and checked for finiteness at a time
BLOCK_ELEMENTS = 1 << 18


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The matrix view of a tensor: first axis x the product of the others."""
    if len(shape) == 0:
        return 1, 1
    n = shape[0]
    m = 1
    for d in shape[1:]:
        m *= d
    return n, m


def orthonormalize(p: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``p`` (reduced QR); zero columns stay zero."""
    q, r = np.linalg.qr(p.astype(np.float64))
    return q * np.where(np.abs(np.diag(r)) > 0, 1.0, 0.0)


@register_codec
class PowerSGD(StatefulGradientCodec):
    """Rank-``rank`` factors by one warm-started power iteration, with error feedback."""

    codec_id = "powersgd"
    config_keys: ClassVar[tuple[str, ...]] = ("rank", "seed", "error_feedback")

    def __init__(self, rank: int = 2, seed: int = 0, error_feedback: bool = True) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 1024:
            raise ConfigError(f"codec 'powersgd': rank must be an int in [1, 1024], got {rank!r}")
        if not isinstance(error_feedback, bool):
            raise ConfigError("codec 'powersgd': error_feedback must be true or false")
        self.rank = rank
        self.seed = check_seed(self.codec_id, seed)
        self.error_feedback = error_feedback

    def low_rank(self, shape: tuple[int, ...]) -> bool:
        n, m = matrix_shape(shape)
        r = min(self.rank, n, m)
        return len(shape) >= 2 and (n + m) * r < n * m

    def encode(self, x: np.ndarray, state: TensorState | None = None) -> bytes:
        self.check_input(x)
        state = state if state is not None else TensorState()
        w = Writer()
        if not self.low_rank(x.shape):
            w.u8(DENSE)
            w.raw(le_bytes(x))
            return w.getvalue()
        n, m = matrix_shape(x.shape)
        r = min(self.rank, n, m)
        err = residual_of(state, x, self.codec_id, "error") if self.error_feedback \
            else np.zeros_like(x)
        mat = (x + err).reshape(n, m).astype(np.float64)
        q = state.get("q")
        if q is None or q.shape != (m, r):
            q = np.random.default_rng([self.seed, n, m]).standard_normal((m, r))
        p = orthonormalize(mat @ q).astype(x.dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            q_new = (mat.T @ p.astype(np.float64)).astype(x.dtype)
            error = ((x + err) - rebuild(p, q_new, x.shape)).astype(x.dtype)
        if not (np.isfinite(q_new).all() and np.isfinite(error).all()):
            raise ConfigError(f"codec 'powersgd': the factors overflow {x.dtype}; scale the "
                              "tensor down or send it in a wider dtype")
        state["q"] = q_new
        if self.error_feedback:
            state["error"] = error
        w.u8(LOW_RANK)
        w.varint(r)
        w.raw(le_bytes(p))
        w.raw(le_bytes(q_new))
        return w.getvalue()

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,
               state: Any = None) -> np.ndarray:
        rd = Reader(payload, "powersgd payload")
        form = rd.u8()
        if form == DENSE:
            out = rd.array(spec.dtype, spec.size).reshape(spec.shape)
            if not all_finite(out):
                raise FormatError("powersgd payload: non-finite values")
        elif form == LOW_RANK:
            n, m = matrix_shape(spec.shape)
            r = rd.varint(cap=min(n, m), name="rank")
            if r < 1 or len(spec.shape) < 2:
                raise FormatError("powersgd payload: bad rank or shape for low-rank form")
            if r > self.rank:
                raise FormatError(f"powersgd payload: rank {r} exceeds the codec's rank "
                                  f"{self.rank}")
            p = finite_values(_factor(rd, spec.dtype, n, r), "powersgd payload")
            q = finite_values(_factor(rd, spec.dtype, m, r), "powersgd payload")
            with np.errstate(over="ignore", invalid="ignore"):
                out = rebuild(p, q, spec.shape)
            if not all_finite(out):
                raise FormatError("powersgd payload: non-finite values")
        else:
            raise FormatError(f"powersgd payload: unknown form {form}")
        rd.expect_end()
        return out


    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The output, plus for the low-rank form the float32 copy of ``Q`` that
        float16/bfloat16 factors are multiplied with and one block of rows (the factors
        themselves are read in place)."""
        n, m = matrix_shape(spec.shape)
        r = min(self.rank, n, m)
        extra = 0
        if np.dtype(spec.dtype).itemsize < 4 and len(spec.shape) >= 2:
            extra = 4 * (m * r + n * r) + 8 * min(spec.size, BLOCK_ELEMENTS)
        return spec.nbytes + extra


def _factor(rd: Reader, dtype: np.dtype, rows: int, r: int) -> np.ndarray:
    """A ``rows x r`` factor, read in place (a read-only view of the payload)."""
    dt = np.dtype(dtype)
    return np.frombuffer(rd.take(rows * r * dt.itemsize), dtype=dt.newbyteorder("<")) \
        .reshape(rows, r)


def rebuild(p: np.ndarray, q: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``P Q^T`` in the factors' dtype, shaped like the tensor (what decoders return).

    float32/float64 factors are multiplied in their dtype in one product; others
    (float16, bfloat16) in float32, ``BLOCK_ELEMENTS // m`` rows at a time, each
    block rounded to the factors' dtype.
    """
    if p.dtype in (np.float32, np.float64):
        return (p @ q.T).astype(p.dtype, copy=False).reshape(shape)
    n, m = p.shape[0], q.shape[0]
    out = np.empty((n, m), dtype=p.dtype)
    q32 = q.astype(np.float32).T
    rows = max(1, BLOCK_ELEMENTS // max(m, 1))
    for start in range(0, n, rows):
        block = p[start:start + rows].astype(np.float32) @ q32
        out[start:start + rows] = block.astype(p.dtype)
    return out.reshape(shape)


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of ``x`` is finite, checked in blocks (no full-size mask)."""
    flat = x.reshape(-1)
    with np.errstate(invalid="ignore"):  # signalling NaNs of float16
        return all(bool(np.isfinite(flat[i:i + BLOCK_ELEMENTS]).all())
                   for i in range(0, flat.size, BLOCK_ELEMENTS))
