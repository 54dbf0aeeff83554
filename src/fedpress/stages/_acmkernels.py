"""numba kernels of the adaptive context-model coder (``stages.acm``), imported lazily.

One block of a tensor (``rows`` x ``cols`` values, row-major) is coded in one pass:
the encoder quantizes each row (``q = rint(x / step)``, the values ``q * step`` go to
``y`` and the values over the bound are counted), optionally takes the 1-D Lorenzo
residual, models every code and records its rANS operations; a second, backward pass
turns them into 16-bit rANS words. The decoder runs the same model forwards and
writes ``q * step`` straight into the output.

The model (both ends compute it from what was already coded):

* per row, a flag "every code of this row is zero" (an adaptive binary context);
  a zero row costs a small fraction of a bit and nothing else;
* per value, the magnitude ``m = |r|`` with a 16-symbol adaptive distribution
  chosen by a context of two features: the neighbourhood
  ``e = 2|l| + |ll| + 2|u| + |ul| + |ur|`` (left codes of the row, and the previous
  row's codes around the same column; ``6|l| + |ll|`` on a block's first row and
  after a zero row) and an exponential moving average of ``7 |r|`` along the rows.
  Both are bucketed by bit length relative to a shift ``sh`` that scales the code
  down first (``m >> sh``), so large codes share the tables of small ones (the
  larger bit length, at most two above the neighbourhood's, minus ``T``);
* the symbol is ``m' = m >> sh``'s class: 0-7 exactly, then two classes per
  octave up to 95, 15 an escape; the class's offset bits and the ``sh`` low bits
  of ``m`` follow as one raw field (``off << sh | low``, at most 29 bits: ``m``
  is below 2**31); an escape's field is
  ``5`` bits of the length ``L`` of ``m' - 95`` and its ``L - 1`` low bits, then
  the ``sh`` low bits;
* the sign with an adaptive binary context on the signs of the left code and of
  the code above (a two-speed estimator); a zero code takes a step of
  probability one (no bits: it keeps the decoder free of a branch on zero).

The 16-symbol distributions are semi-static: each context counts its symbols
(``INC`` per symbol, starting from ``PRIOR``, worth 8 symbols; halved when the
total passes ``LIMIT``) and codes with a 15-bit table frozen from those counts,
refreshed after its 4th symbol, then every ``2**REFRESH_BITS`` symbols and after
each halving (measured: as small as a table moved on every symbol, at a fraction
of the work). Rounding the
counts to 15 bits leaves a small deficit, which goes to the escape symbol.

rANS: 32-bit state in ``[2**16, 2**32)``, 16-bit words, 15-bit probabilities,
two states used in turn (one coding step each), so one step's dependency chain
overlaps the next. Raw bits go to their own stream of 32-bit words (LSB first).

Decoder errors (words or raw bits running out, a code out of range, final states
other than the encoder's first ones) come back as a negative status, never as an
access out of bounds: reads past a stream's end repeat its last word, and running
past the end is recorded and reported.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

PB = 15
ONE = 1 << PB
LO = 1 << 16
NSYM = 16
ESC = 15
#: context buckets per feature (T + 1 values each); codes are shifted down only from a
#: bit length of T + 1 (measured: T = 6 shifted codes that fit the alphabet and mixed
#: two scales in one context, 3-6% over the order-0 entropy on ResNet-18 weights at
#: REL 1e-2; T = 8 is 3% smaller there, within 0.4% elsewhere)
T = 8
NCTX = (T + 1) * (T + 1)
#: buckets of a value's history (gaeb: the moving average of its decoded magnitudes
#: in steps), crossed with the magnitude contexts; 1 (bucket 0) without a history
NHIST = 4
#: sign contexts (left sign x up sign x the history's last sign), then the row flag's
NSIGN = 27
#: largest magnitude a code may have (codes are kept within int32)
MAX_CODE = (1 << 30) - 1
#: binary probabilities stay within [P_MIN, ONE - P_MIN]
P_MIN = 64
#: the EMA of 7|r| along the rows, in 1/256ths, weight 2**-4 on the newest code
EMA_SHIFT = 4
#: counts: increment per coded symbol, total that halves them; a context's table
#: is refreshed every 2**REFRESH_BITS of its symbols
INC, LIMIT, REFRESH_BITS = 16, 16384, 4
#: layout of the model array (int32): counts, totals, frozen tables, binary contexts
_CNT = 0
_TOT = NHIST * NCTX * NSYM
_CUM = _TOT + NHIST * NCTX
_BIN = _CUM + NHIST * NCTX * (NSYM + 1)
_MODEL = _BIN + NSIGN + 1
#: per symbol: offset bits and the class's first magnitude (escape: 0, ESC_AT): 0-7
#: exactly, then two classes per octave up to 95
_NBITS = np.array([0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 3, 3, 4, 4, 5, 0], np.int64)
_BASE = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 96], np.int64)
ESC_AT = 96
#: initial counts of every context (sum 128 = 8 symbols): the pooled symbol frequencies
#: of each context on the project's CNN and ResNet-18 tensors at REL 1e-2..1e-4
#: (``benchmarks/make_acm_prior.py``); part of the format: both ends start from them
PRIOR = np.array([
    106, 6, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3,
    92, 21, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    81, 27, 6, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    68, 34, 10, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    59, 30, 13, 8, 3, 2, 2, 1, 3, 1, 1, 1, 1, 1, 1, 1,
    58, 17, 11, 8, 6, 5, 4, 2, 7, 2, 3, 1, 1, 1, 1, 1,
    59, 17, 5, 6, 3, 5, 5, 3, 9, 6, 3, 1, 2, 2, 1, 1,
    51, 13, 5, 4, 6, 2, 3, 3, 11, 6, 6, 5, 5, 6, 1, 1,
    40, 8, 4, 3, 2, 2, 2, 1, 5, 5, 9, 7, 5, 6, 10, 19,
    107, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    93, 21, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    78, 32, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    63, 37, 12, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    51, 36, 16, 8, 4, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    50, 23, 13, 10, 7, 5, 4, 2, 5, 3, 1, 1, 1, 1, 1, 1,
    43, 19, 10, 6, 6, 4, 4, 5, 9, 6, 6, 2, 5, 1, 1, 1,
    61, 10, 5, 10, 3, 3, 2, 2, 6, 5, 5, 2, 5, 1, 1, 7,
    56, 9, 4, 4, 1, 1, 2, 2, 6, 3, 5, 3, 7, 1, 8, 16,
    104, 10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    83, 29, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    68, 38, 8, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    53, 43, 14, 5, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    40, 41, 19, 10, 5, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    33, 28, 17, 13, 9, 7, 4, 3, 6, 2, 1, 1, 1, 1, 1, 1,
    41, 15, 12, 11, 7, 6, 5, 5, 10, 7, 4, 1, 1, 1, 1, 1,
    46, 14, 7, 8, 8, 6, 3, 3, 8, 5, 5, 4, 5, 1, 4, 1,
    47, 15, 5, 4, 2, 3, 1, 1, 6, 3, 6, 7, 7, 3, 7, 11,
    102, 12, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    77, 34, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    61, 44, 9, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    43, 47, 18, 7, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    35, 35, 24, 13, 7, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    24, 24, 22, 17, 12, 8, 5, 4, 5, 1, 1, 1, 1, 1, 1, 1,
    29, 21, 14, 11, 8, 9, 6, 5, 12, 5, 3, 1, 1, 1, 1, 1,
    37, 17, 9, 7, 5, 4, 5, 4, 11, 8, 10, 4, 4, 1, 1, 1,
    47, 8, 5, 4, 3, 2, 2, 2, 5, 4, 4, 6, 8, 5, 8, 15,
    102, 12, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    73, 37, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    54, 46, 13, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    44, 39, 21, 9, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    27, 33, 27, 16, 9, 5, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    17, 23, 23, 18, 14, 10, 6, 4, 6, 1, 1, 1, 1, 1, 1, 1,
    16, 14, 16, 14, 11, 10, 8, 7, 16, 7, 4, 1, 1, 1, 1, 1,
    20, 16, 11, 9, 7, 6, 5, 5, 15, 11, 13, 4, 3, 1, 1, 1,
    38, 9, 5, 6, 4, 2, 3, 3, 8, 6, 8, 7, 7, 6, 5, 11,
    99, 15, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    78, 30, 5, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    56, 45, 11, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    39, 38, 23, 11, 5, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    22, 29, 27, 18, 11, 6, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1,
    14, 19, 22, 18, 15, 11, 8, 5, 9, 1, 1, 1, 1, 1, 1, 1,
    10, 16, 14, 13, 12, 11, 10, 8, 15, 9, 5, 1, 1, 1, 1, 1,
    11, 11, 9, 8, 7, 6, 6, 6, 19, 16, 19, 4, 3, 1, 1, 1,
    22, 8, 6, 4, 4, 4, 3, 4, 11, 8, 13, 9, 11, 7, 5, 9,
    106, 8, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    81, 30, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    66, 41, 7, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    38, 45, 20, 9, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    22, 26, 26, 17, 12, 7, 4, 3, 4, 1, 1, 1, 1, 1, 1, 1,
    12, 16, 20, 17, 14, 12, 9, 7, 12, 3, 1, 1, 1, 1, 1, 1,
    6, 11, 10, 10, 10, 9, 9, 8, 20, 17, 13, 1, 1, 1, 1, 1,
    5, 7, 7, 7, 6, 6, 6, 6, 23, 22, 25, 3, 2, 1, 1, 1,
    10, 5, 5, 4, 4, 4, 4, 4, 13, 12, 18, 14, 16, 7, 5, 3,
    105, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    81, 31, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    61, 40, 12, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    42, 51, 13, 6, 3, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1,
    26, 31, 26, 13, 8, 4, 5, 2, 5, 2, 1, 1, 1, 1, 1, 1,
    17, 15, 17, 14, 11, 10, 8, 6, 15, 7, 3, 1, 1, 1, 1, 1,
    5, 8, 8, 8, 7, 7, 7, 7, 24, 23, 19, 1, 1, 1, 1, 1,
    4, 6, 6, 6, 6, 6, 6, 6, 23, 22, 27, 4, 3, 1, 1, 1,
    4, 4, 4, 4, 4, 4, 4, 3, 13, 12, 21, 17, 21, 8, 4, 1,
    111, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    103, 11, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    85, 25, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    55, 47, 10, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    38, 35, 20, 12, 6, 4, 2, 1, 3, 1, 1, 1, 1, 1, 1, 1,
    23, 19, 17, 13, 10, 8, 7, 5, 12, 5, 4, 1, 1, 1, 1, 1,
    12, 10, 9, 9, 8, 7, 7, 6, 19, 14, 15, 6, 3, 1, 1, 1,
    5, 5, 5, 5, 5, 5, 5, 5, 17, 16, 24, 17, 10, 2, 1, 1,
    3, 3, 3, 3, 3, 3, 3, 3, 11, 11, 20, 18, 25, 13, 5, 1,
], np.int32).reshape(-1)
#: the total after a context's 4th symbol (an early refresh)
_EARLY = 128 + 4 * 16
#: array indices in the kernels are cast with ``_u`` (np.uint64): numba then skips its
#: negative-index fix-up (three instructions per access in these loops)
_u = np.uint64
#: the previous row's neighbourhood sum is capped (it fits 30 bits, the row buffer 32)
UP_CAP = (1 << 30) - 1
#: the two-speed estimators start at one half
_HALF2 = (ONE // 2) | ((ONE // 2) << 16)

ERR_WORDS, ERR_RAW, ERR_CODE, ERR_STATE = -1, -2, -3, -4


@njit(cache=True, nogil=True, inline="always")
def _bitlen(v):  # pragma: no cover - compiled
    return 64 - leading_zeros(np.uint64(v))


@njit(cache=True, nogil=True, inline="always")
def _symbol(mm):  # pragma: no cover - compiled
    """The class of a scaled magnitude below ``ESC_AT``: itself below 8, else two
    classes per octave (``_BASE``, ``_NBITS``)."""
    bl = _bitlen(mm)
    return mm if mm < 8 else 2 * bl + ((mm >> (bl - 2)) & 1)


#: width of the context table: a neighbourhood sum is below 2**33 (three codes below
#: 2**31 and a capped row entry; a stream's codes are below 2**31 even where the
#: decoder refuses them later) and the EMA term below 2**35, so bit lengths are below 40
_LUT_W = 40


def _context_table() -> np.ndarray:
    """(context << 8 | shift) for each pair of bit lengths (neighbourhood, EMA): see
    :func:`_context`. A table, as one load is cheaper than the min/max chain
    (measured: decode 5-8% faster)."""
    out = np.zeros(_LUT_W * _LUT_W, np.int32)
    for be in range(_LUT_W):
        for bq in range(_LUT_W):
            sh = max(min(max(be, bq), be + 2) - T, 0)
            out[be * _LUT_W + bq] = ((min(max(be - sh, 0), T) * (T + 1)
                                      + min(max(bq - sh, 0), T)) << 8) | sh
    return out


_CTX = _context_table()


@njit(cache=True, nogil=True, inline="always")
def _context(e, ema):  # pragma: no cover - compiled
    """(context, shift) of a value from its neighbourhood sum and the row EMA. The
    shift follows the larger of the two, but never more than two octaves above the
    neighbourhood (after an outlier the EMA stays high for a long while, and zeros
    would pay ``sh`` raw bits each); the buckets are clamped to ``[0, T]``
    (``_context_table``)."""
    cs = np.int64(_CTX[_u(_bitlen(e) * _LUT_W + _bitlen((ema * 7) >> 8))])
    return cs >> 8, cs & 255


@njit(cache=True, nogil=True, inline="always")
def _with_history(ctx, mag, sgn, step):  # pragma: no cover - compiled
    """The magnitude context crossed with the history's bucket (its moving average of
    decoded magnitudes against 1/4, 1 and 4 steps), and the sign contexts' offset for
    its last sign (0 zero, 9 positive, 18 negative)."""
    v = np.float64(mag)
    hb = (v > 0.25 * step) + (v > step) + (v > 4.0 * step)
    return ctx + NCTX * hb, 9 * ((sgn > 0) + 2 * (sgn < 0))


@njit(cache=True, nogil=True, inline="always")
def _init_model():  # pragma: no cover - compiled
    """The model array: counts from ``PRIOR``, their tables, binary contexts at 1/2."""
    mod = np.empty(_MODEL, np.int32)
    for c in range(NHIST * NCTX):
        t = 0
        for i in range(NSYM):
            v = PRIOR[_u((c % NCTX) * NSYM + i)]
            mod[_u(_CNT + c * NSYM + i)] = v
            t += v
        mod[_u(_TOT + c)] = t
        _renew(mod, c)
    mod[_BIN:_MODEL] = _HALF2
    return mod


@njit(cache=True, nogil=True)
def _renew(mod, c):  # pragma: no cover - compiled
    """Context ``c``'s periodic work (its caller counted the symbol): halve the
    counts once their total passes ``LIMIT``, then freeze them into the 15-bit
    table. A call passes every field of the array, too costly for each symbol; the
    kernels inline no function that takes an array (numba would count references
    around it)."""
    o = _CNT + c * NSYM
    t = mod[_u(_TOT + c)]
    if t > LIMIT:
        t = 0
        for i in range(NSYM):
            v = (mod[_u(o + i)] + 1) >> 1
            mod[_u(o + i)] = v
            t += v
        mod[_u(_TOT + c)] = t
    oc = _CUM + c * (NSYM + 1)
    r = np.uint32(ONE << 16) // np.uint32(t)
    acc = 0
    for i in range(NSYM - 1):
        mod[_u(oc + i)] = acc
        acc += (np.int64(mod[_u(o + i)]) * r) >> 16
    mod[_u(oc + NSYM - 1)] = acc
    mod[_u(oc + NSYM)] = ONE


@njit(cache=True, nogil=True, inline="always")
def _due(t):  # pragma: no cover - compiled
    """Whether a context whose total is now ``t`` refreshes its table: every
    ``2**REFRESH_BITS`` symbols, after the 4th symbol (from the prior's 128) and
    after a halving."""
    return t > LIMIT or ((t >> 4) & ((1 << REFRESH_BITS) - 1)) == 0 or t == _EARLY


@njit(cache=True, nogil=True, inline="always")
def _p0(p):  # pragma: no cover - compiled
    return ((p & 0xFFFF) + (p >> 16)) >> 1


@njit(cache=True, nogil=True, inline="always")
def _bin_update(p, bit):  # pragma: no cover - compiled
    """Two-speed estimator of P(bit == 0): the mean of a fast (2**-4) and a slow
    (2**-7) one, packed as ``fast | slow << 16``; no branch on ``bit``."""
    f = p & 0xFFFF
    s = p >> 16
    t = P_MIN + (1 - bit) * (ONE - 2 * P_MIN)
    f += (t - f) >> 4
    s += (t - s) >> 7
    return f | (s << 16)


@njit(cache=True, nogil=True, inline="always")
def _op(p0, bit):  # pragma: no cover - compiled
    """The rANS operation (``start | freq << 16``) of ``bit`` when P(0) is ``p0``."""
    return p0 | ((ONE - p0) << 16) if bit else p0 << 16


@njit(cache=True, nogil=True, inline="always")
def _put(acc, accn, v, n):  # pragma: no cover - compiled
    """Append the ``n`` (<= 31) low bits of ``v`` to the bit accumulator (an int64
    holding fewer than 32 pending bits between calls, so never more than 62); returns
    ``(acc, accn, word, full)``: ``full`` says ``word`` is a finished 32-bit word
    (the caller stores it)."""
    acc |= v << accn
    accn += n
    full = accn >= 32
    word = acc & 0xFFFFFFFF
    if full:
        acc >>= 32
        accn -= 32
    return acc, accn, word, full


@njit(cache=True, nogil=True)
def encode_block(x, start, rows, cols, step, eb, pred, y, hmag, hsgn):  # pragma: no cover
    """Code ``x[start:start + rows * cols]`` (see the module docs).

    Returns ``(words, raw, n_over, ok)``: the rANS words (uint16), the raw-bit words
    (uint32), how many values of ``y`` (written with ``q * step`` in ``x``'s dtype)
    are over ``eb`` (exactly, in float64), and False if a code would reach
    ``MAX_CODE`` (nothing else is meaningful then).
    """
    n = rows * cols
    ops = np.empty(2 * n + rows, np.uint32)
    raw = np.empty(((36 * n) >> 5) + 2, np.uint32)
    nops = 0
    lane = 0  # the state of the next step (0 A, 1 B): steps alternate
    nraw = 0
    acc = 0
    accn = 0
    mod = _init_model()
    cur = np.zeros(cols + 2, np.int32)  # this row's residuals, padded
    up = np.zeros(cols, np.uint32)  # min(2|u| + |ul| + |ur|, UP_CAP) << 2 | sign class of u
    ema = 0
    last = 0  # the previous code (Lorenzo)
    lim = np.float64(MAX_CODE)
    n_over = 0
    has_up = False
    for r in range(rows):
        base = start + r * cols
        nz = 0
        for j in range(cols):
            xi = np.float64(x[_u(base + j)])
            v = np.rint(xi / step)
            if not abs(v) < lim:
                return np.empty(0, np.uint16), np.empty(0, np.uint32), n_over, False
            c = np.int64(v)
            y[_u(base + j)] = np.float64(c) * step
            n_over += not abs(np.float64(y[_u(base + j)]) - xi) <= eb  # NaN counts as over
            if pred:
                c, last = c - last, c
            cur[_u(j + 1)] = c
            nz |= c
        zrow = nz == 0
        p = mod[_u(_BIN + NSIGN)]
        ops[_u(nops)] = _op(_p0(p), 0 if zrow else 1) | (lane << 15)
        nops += 1
        lane ^= 1
        mod[_u(_BIN + NSIGN)] = _bin_update(p, 0 if zrow else 1)
        if zrow:
            has_up = False
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            c = cur[_u(j + 1)]
            m = abs(c)
            u = np.int64(up[_u(j)]) if has_up else 0
            e = 2 * a + b + (u >> 2) if has_up else 6 * a + b
            ctx, sh = _context(e, ema)
            hs = 0
            if hmag.size:
                ctx, hs = _with_history(ctx, hmag[_u(base + j)], hsgn[_u(base + j)], step)
            mm = m >> sh
            low = m & ((1 << sh) - 1)
            if mm < ESC_AT:
                s = _symbol(mm)
                # at most 29 bits: m >= 2**(class octave + sh) and m < 2**31
                nb = _NBITS[_u(s)] + sh
                field = ((mm - _BASE[_u(s)]) << sh) | low
            else:
                s = ESC
                g = mm - (ESC_AT - 1)
                L = _bitlen(g)
                acc, accn, word, full = _put(acc, accn, L - 1, 5)
                if full:
                    raw[_u(nraw)] = word
                    nraw += 1
                acc, accn, word, full = _put(acc, accn, g - (1 << (L - 1)), L - 1)
                if full:
                    raw[_u(nraw)] = word
                    nraw += 1
                field = low
                nb = sh
            acc, accn, word, full = _put(acc, accn, field, nb)
            if full:
                raw[_u(nraw)] = word
                nraw += 1
            oc = _CUM + ctx * (NSYM + 1) + s
            lo = mod[_u(oc)]
            ops[_u(nops)] = lo | ((mod[_u(oc + 1)] - lo) << 16) | (lane << 15)
            nops += 1
            lane ^= 1
            mod[_u(_CNT + ctx * NSYM + s)] += INC
            t = mod[_u(_TOT + ctx)] + INC
            mod[_u(_TOT + ctx)] = t
            if _due(t):
                _renew(mod, ctx)
            sc = _BIN + sa * 3 + (u & 3) + hs
            p = mod[_u(sc)]
            neg = 1 if c < 0 else 0
            if m:  # a zero code's sign step has probability one: only its turn is kept
                ops[_u(nops)] = _op(_p0(p), neg) | (lane << 15)
                nops += 1
                mod[_u(sc)] = _bin_update(p, neg)
            lane ^= 1
            sa = (1 + neg) if m else 0
            ema += ((m << 8) - ema) >> EMA_SHIFT
            b = a
            a = m
        for j in range(cols):
            v = np.int64(cur[_u(j + 1)])
            e = min(2 * abs(v) + abs(np.int64(cur[_u(j)])) + abs(np.int64(cur[_u(j + 2)])), UP_CAP)
            up[_u(j)] = (e << 2) | (0 if v == 0 else (1 if v > 0 else 2))
        has_up = True
    if accn:
        raw[_u(nraw)] = acc
        nraw += 1
    return _rans_backward(ops, nops), raw[:nraw].copy(), n_over, True


@njit(cache=True, nogil=True, inline="always")
def _rans_backward(ops, nops):  # pragma: no cover - compiled
    """The rANS words of ``ops[:nops]`` (``start | lane << 15 | freq << 16``), coded
    backwards, each with the state its lane names (the steps of probability one are
    not recorded: they change no state, only whose turn it is)."""
    buf = np.empty(nops + 4, np.uint16)
    p = buf.size
    xa = np.int64(LO)
    xb = np.int64(LO)
    for i in range(nops - 1, -1, -1):
        o = np.int64(ops[_u(i)])
        f = o >> 16
        start = o & 0x7FFF
        b = (o >> 15) & 1
        xs = xb if b else xa
        if xs >= (f << (32 - PB)):
            p -= 1
            buf[_u(p)] = xs & 0xFFFF
            xs >>= 16
        xu = np.uint32(xs)
        fu = np.uint32(f)
        xs = (np.int64(xu // fu) << PB) + np.int64(xu % fu) + start
        if b:
            xb = xs
        else:
            xa = xs
    buf[_u(p - 1)] = xb & 0xFFFF
    buf[_u(p - 2)] = xb >> 16
    buf[_u(p - 3)] = xa & 0xFFFF
    buf[_u(p - 4)] = xa >> 16
    return buf[p - 4:].copy()


@njit(cache=True, nogil=True, inline="always")
def _word(buf, wo, pos, last):  # pragma: no cover - compiled
    """The 16-bit word ``min(pos, last)`` of the stream at byte ``wo`` of ``buf``."""
    i = wo + 2 * min(pos, last)
    return np.int64(buf[_u(i)]) | (np.int64(buf[_u(i + 1)]) << 8)


@njit(cache=True, nogil=True, inline="always")
def _raw(buf, ro, pos, last):  # pragma: no cover - compiled
    """The 32-bit raw word ``min(pos, last)`` at byte ``ro`` of ``buf`` (0 if none)."""
    if last < 0:
        return 0
    i = ro + 4 * min(pos, last)
    return (np.int64(buf[_u(i)]) | (np.int64(buf[_u(i + 1)]) << 8)
            | (np.int64(buf[_u(i + 2)]) << 16) | (np.int64(buf[_u(i + 3)]) << 24))


@njit(cache=True, nogil=True)
def decode_block(buf, wo, nw, ro, nraw, rows, cols, step, pred, out, start, hmag, hsgn
                 ):  # pragma: no cover - compiled
    """Decode one block into ``out[start:start + rows * cols]`` (``q * step`` in
    ``out``'s dtype). Its streams are ``nw`` 16-bit words at byte ``wo`` of ``buf`` and
    ``nraw`` 32-bit raw words at byte ``ro`` (little-endian; read byte by byte, so
    ``buf`` needs no alignment and is never copied; reads past a stream's end repeat
    its last word and are reported). Returns 0, or a negative status on a bad stream."""
    if nw < 4:
        return ERR_WORDS
    wl = nw - 1
    rl = nraw - 1
    xa = (_word(buf, wo, 0, wl) << 16) | _word(buf, wo, 1, wl)
    xb = (_word(buf, wo, 2, wl) << 16) | _word(buf, wo, 3, wl)
    pos = 4
    rpos = 0
    acc = 0
    accn = 0
    mask = ONE - 1
    mod = _init_model()
    cur = np.zeros(cols + 2, np.int32)
    up = np.zeros(cols, np.uint32)
    ema = 0
    last = 0
    has_up = False
    for r in range(rows):
        base = start + r * cols
        p = mod[_u(_BIN + NSIGN)]
        p0 = _p0(p)
        slot = xa & mask
        bit = 1 if slot >= p0 else 0
        xa = (p0 + bit * (ONE - 2 * p0)) * (xa >> PB) + slot - bit * p0
        if xa < LO:
            xa = (xa << 16) | _word(buf, wo, pos, wl)
            pos += 1
        xa, xb = xb, xa
        mod[_u(_BIN + NSIGN)] = _bin_update(p, bit)
        if pos > nw:
            return ERR_WORDS
        if bit == 0:
            v0 = np.float64(last) * step if pred else 0.0
            for j in range(cols):
                out[_u(base + j)] = v0
            has_up = False
            continue
        a = 0
        b = 0
        sa = 0
        for j in range(cols):
            u = np.int64(up[_u(j)]) if has_up else 0
            e = 2 * a + b + (u >> 2) if has_up else 6 * a + b
            ctx, sh = _context(e, ema)
            hs = 0
            if hmag.size:
                ctx, hs = _with_history(ctx, hmag[_u(base + j)], hsgn[_u(base + j)], step)
            oc = _CUM + ctx * (NSYM + 1)
            slot = xa & mask
            # the symbol: one comparison picks a half of the frozen table (its entry
            # 16 is ONE), then its 7 inner boundaries are compared side by side
            h = oc + (8 if mod[_u(oc + 8)] <= slot else 0)
            s = (((np.int64(mod[_u(h + 1)] <= slot) + np.int64(mod[_u(h + 2)] <= slot))
                  + (np.int64(mod[_u(h + 3)] <= slot) + np.int64(mod[_u(h + 4)] <= slot)))
                 + ((np.int64(mod[_u(h + 5)] <= slot) + np.int64(mod[_u(h + 6)] <= slot))
                    + np.int64(mod[_u(h + 7)] <= slot))) + (h - oc)
            lo = mod[_u(oc + s)]
            xa = (mod[_u(oc + s + 1)] - lo) * (xa >> PB) + slot - lo
            need = xa < LO
            xa = (xa << 16) | _word(buf, wo, pos, wl) if need else xa
            pos = min(pos + need, nw + 1)
            xa, xb = xb, xa
            mod[_u(_CNT + ctx * NSYM + s)] += INC
            t = mod[_u(_TOT + ctx)] + INC
            mod[_u(_TOT + ctx)] = t
            if _due(t):
                _renew(mod, ctx)
            # the raw field: class offset and low bits
            if s < ESC:
                nb = _NBITS[_u(s)] + sh
                if nb > 29:  # never written: the code would be 2**31 or more
                    return ERR_CODE
                if accn < nb:
                    acc |= _raw(buf, ro, rpos, rl) << accn
                    rpos = min(rpos + 1, nraw + 1)
                    accn += 32
                field = acc & ((1 << nb) - 1)
                acc >>= nb
                accn -= nb
                m = (_BASE[_u(s)] << sh) + field
            else:
                if accn < 5:
                    acc |= _raw(buf, ro, rpos, rl) << accn
                    rpos = min(rpos + 1, nraw + 1)
                    accn += 32
                L1 = acc & 31
                acc >>= 5
                accn -= 5
                if accn < L1:
                    acc |= _raw(buf, ro, rpos, rl) << accn
                    rpos = min(rpos + 1, nraw + 1)
                    accn += 32
                mm = ESC_AT - 1 + (1 << L1) + (acc & ((1 << L1) - 1))
                acc >>= L1
                accn -= L1
                if accn < sh:
                    acc |= _raw(buf, ro, rpos, rl) << accn
                    rpos = min(rpos + 1, nraw + 1)
                    accn += 32
                if mm >= (1 << max(31 - sh, 0)):
                    return ERR_CODE
                m = (mm << sh) | (acc & ((1 << sh) - 1))
                acc >>= sh
                accn -= sh
            # the sign: a step of probability one for a zero code
            sc = _BIN + sa * 3 + (u & 3) + hs
            p = mod[_u(sc)]
            nzm = m != 0
            p0 = _p0(p) if nzm else ONE
            slot = xa & mask
            neg = 1 if slot >= p0 else 0
            xa = (p0 + neg * (ONE - 2 * p0)) * (xa >> PB) + slot - neg * p0
            need = xa < LO
            xa = (xa << 16) | _word(buf, wo, pos, wl) if need else xa
            pos = min(pos + need, nw + 1)
            xa, xb = xb, xa
            mod[_u(sc)] = _bin_update(p, neg) if nzm else p
            sa = (1 + neg) if nzm else 0
            c = m - 2 * neg * m
            if pred:
                last += c
                if not abs(last) <= MAX_CODE:
                    return ERR_CODE
                out[_u(base + j)] = np.float64(last) * step
            else:
                if m > MAX_CODE:
                    return ERR_CODE
                out[_u(base + j)] = np.float64(c) * step
            cur[_u(j + 1)] = c
            ema += ((m << 8) - ema) >> EMA_SHIFT
            b = a
            a = m
        if pos > nw or rpos > nraw:
            return ERR_WORDS if pos > nw else ERR_RAW
        for j in range(cols):
            v = np.int64(cur[_u(j + 1)])
            e = min(2 * abs(v) + abs(np.int64(cur[_u(j)])) + abs(np.int64(cur[_u(j + 2)])), UP_CAP)
            up[_u(j)] = (e << 2) | (0 if v == 0 else (1 if v > 0 else 2))
        has_up = True
    if xa != LO or xb != LO or pos != nw or rpos != nraw or acc != 0:
        return ERR_STATE
    return 0
