"""HGC's equal-count quantizer and its predictive (XOR) coding of the codes.

Pieces of HGC (Hu, Jiang & He, IJCAI-24; notes in ``docs/hgc_research.md``) that do
not depend on the round protocol, for the ``hgc`` plan to build on.

Quantizer (the paper's Eq. 3): the negative and the positive values are each sorted
and cut into ``h = (levels - 1) / 2`` groups of (almost) equal count; every value is
replaced by the mean of its group. Codes: ``0 .. h-1`` the negative groups (0 the most
negative), ``h`` an exact zero, ``h+1 .. 2h`` the positive groups (``2h`` the
largest). ``levels = 3`` is a ternary quantizer with a separate mean for each sign.
A group with no values has mean 0.

Predictive coding (Eq. 4): both ends keep Adam-like moving averages of the
aggregated update, ``u = b1 u + (1 - b1) g`` and ``v = b2 v + (1 - b2) g**2``
(float32, from zero, no bias correction), predict ``p = u / (sqrt(v) + eps)``,
quantize ``p`` at the mask with the same quantizer, and send the gradient's codes
XOR the prediction's codes; the receiver XORs back. A good prediction makes the
residues mostly 0 (same group), which an entropy coder then codes in few bits.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

#: the predictor's defaults (HGC, from Yue et al. 2022): beta for u, beta for v, epsilon
BETAS = (0.8, 0.9)
EPS = 1e-6
#: values :func:`advance_sparse` updates at a time (bounds its temporaries)
CHUNK = 1 << 16


def check_levels(levels: int) -> int:
    """``levels`` as an int, or ConfigError unless it is odd and in 3..255."""
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) \
            or not 3 <= int(levels) <= 255 or int(levels) % 2 == 0:
        raise ConfigError(f"levels must be an odd integer in 3..255, got {levels!r}")
    return int(levels)


def quantize(x: np.ndarray, levels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Equal-count codes (uint8, shape of ``x``) and the ``levels - 1`` group means
    (float32: the negative groups, most negative first, then the positive ones)."""
    levels = check_levels(levels)
    h = (levels - 1) // 2
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    if not np.isfinite(flat).all():
        raise ConfigError("equal-count quantizer: NaN or Inf in the values")
    codes = np.full(flat.size, h, dtype=np.uint8)
    means = np.zeros(2 * h, dtype=np.float32)
    for side, base in ((flat < 0, 0), (flat > 0, h + 1)):
        idx = np.flatnonzero(side)
        if not idx.size:
            continue
        order = idx[np.argsort(flat[idx], kind="stable")]
        for g, part in enumerate(np.array_split(order, h)):
            if part.size:
                codes[part] = base + g
                means[base - (base > 0) + g] = flat[part].astype(np.float64).mean()
    return codes.reshape(np.shape(x)), means


def dequantize(codes: np.ndarray, means: np.ndarray, levels: int = 3) -> np.ndarray:
    """The values codes stand for (float32): their group means, 0 for the zero code."""
    levels = check_levels(levels)
    h = (levels - 1) // 2
    if means.shape != (2 * h,):
        raise ValueError(f"{levels} levels need {2 * h} means, got {means.shape}")
    table = np.concatenate([means[:h], np.zeros(1, np.float32), means[h:]]).astype(np.float32)
    c = np.asarray(codes)
    if c.size and int(c.max()) >= levels:
        raise ValueError(f"code {int(c.max())} out of range for {levels} levels")
    return table[c]


def residue_alphabet(levels: int) -> int:
    """How many distinct values ``codes ^ predicted`` can take (a power of two)."""
    return 1 << (check_levels(levels) - 1).bit_length()


def xor_codes(codes: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Residues ``codes ^ predicted`` (uint8); the same call undoes them."""
    return np.bitwise_xor(np.asarray(codes, np.uint8), np.asarray(predicted, np.uint8))


def predict(u: np.ndarray, v: np.ndarray, eps: float = EPS) -> np.ndarray:
    """The prediction ``u / (sqrt(v) + eps)`` (float32)."""
    return (u / (np.sqrt(v) + np.float32(eps))).astype(np.float32)


def advance(u: np.ndarray, v: np.ndarray, g: np.ndarray,
            betas: tuple[float, float] = BETAS) -> tuple[np.ndarray, np.ndarray]:
    """The moving averages after the aggregate ``g`` (float32 arithmetic on both ends)."""
    b1, b2 = np.float32(betas[0]), np.float32(betas[1])
    g32 = np.asarray(g, dtype=np.float32)
    one = np.float32(1.0)
    return (b1 * u + (one - b1) * g32).astype(np.float32), \
        (b2 * v + (one - b2) * g32 * g32).astype(np.float32)


def advance_sparse(u: np.ndarray, v: np.ndarray, idx: np.ndarray, vals: np.ndarray,
                   betas: tuple[float, float] = BETAS) -> None:
    """:func:`advance` in place, for an aggregate that is ``vals`` at the sorted
    positions ``idx`` and zero elsewhere: the same float32 arithmetic, bit for bit,
    ``CHUNK`` values at a time (no dense copy of the aggregate)."""
    b1, b2 = np.float32(betas[0]), np.float32(betas[1])
    one = np.float32(1.0)
    c1, c2 = one - b1, one - b2
    vals = np.asarray(vals, dtype=np.float32)
    cuts = np.searchsorted(idx, np.arange(0, u.size + CHUNK, CHUNK))
    for j, start in enumerate(range(0, u.size, CHUNK)):
        stop = min(u.size, start + CHUNK)
        g = np.zeros(stop - start, dtype=np.float32)
        g[idx[cuts[j]:cuts[j + 1]] - start] = vals[cuts[j]:cuts[j + 1]]
        uu, vv = u[start:stop], v[start:stop]
        uu *= b1
        uu += c1 * g
        vv *= b2
        t = c2 * g
        t *= g
        vv += t
