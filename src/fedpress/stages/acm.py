"""Adaptive context-model coding of quantization codes: fpz v3's engine.

The codes of a tensor seen as a matrix (rows x ``cols``, row-major; ``cols`` is the
row length, e.g. a convolution's ``in x kh x kw``) are coded by
:mod:`._acmkernels` in one fused pass per block: quantizer, optional 1-D Lorenzo
residual, bound count, an adaptive model (row-zero flags; the magnitude's class
under a 16-symbol adaptive distribution chosen by the left and upper neighbours'
magnitudes and a moving average along the rows; its low bits raw; the sign under
an adaptive binary context of the neighbours' signs) and rANS.

Blocks are runs of whole rows of at most ``2**block_bits`` values (rows longer
than that are cut into pieces of ``2**block_bits``, each its own block), coded
independently (each starts its model afresh), so they can be coded and decoded
side by side: the bytes do not depend on how many workers coded them.

Stream (after the caller's header)::

    varint cols | u8 block_bits | per block: varint words, varint raw words
    | per block: words (u16 LE) then raw-bit words (u32 LE)

The decoder checks every count against the block's size and the bytes present
before allocating, and refuses a stream whose rANS states, words or raw bits do
not end exactly where the encoder's began (:class:`fedpress.FormatError`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import TypeVar

import numpy as np

from .._bytes import Reader, Writer
from ..errors import FormatError

#: default block size: 2**16 values (a block restarts its model from the prior:
#: measured +0.1% of bytes against 2**18 on VGG and ResNet-18 tensors)
BLOCK_BITS = 16
#: block sizes a stream may declare (the encoder writes BLOCK_BITS); at most 2**16
#: values keeps a decoding worker's buffers small against any output
MIN_BLOCK_BITS, MAX_BLOCK_BITS = 10, 16
#: bytes a decoding worker allocates per value of its block, beyond the output: the
#: two 32-bit row buffers (the streams are read in place). Its model, 7 KB, is not
#: counted, as the other coders' tables are not
DECODE_BYTES_PER_VALUE = 8
_ERRORS = {-1: "rANS words run out", -2: "raw bits run out", -3: "a code out of range",
           -4: "the stream does not end where it began"}


def kernels() -> ModuleType:
    """The compiled kernels, imported (and compiled) on first use."""
    from . import _acmkernels

    return _acmkernels


Block = tuple[int, int, int]  # (start, rows, cols)
T = TypeVar("T")
R = TypeVar("R")


def layout(n: int, cols: int, block_bits: int = BLOCK_BITS) -> list[Block]:
    """The blocks of ``n`` values in rows of ``cols``: (start, rows, cols) each."""
    size = 1 << block_bits
    rows = n // cols
    if cols > size:
        return [(r * cols + s, 1, min(size, cols - s))
                for r in range(rows) for s in range(0, cols, size)]
    per = max(1, size // cols)
    return [(r * cols, min(per, rows - r), cols) for r in range(0, rows, per)]


def row_length(n: int, shape: tuple[int, ...]) -> int:
    """The row length the coder uses for a tensor: everything but the first axis
    (``n`` itself for 0-D and 1-D tensors, or when the shape does not match)."""
    if len(shape) >= 2 and int(np.prod(shape)) == n and shape[0] > 0:
        cols = n // shape[0]
        if cols >= 1:
            return cols
    return max(n, 1)


#: what the encoder kernel returns for a block: words, raw words, values over, ok
_Coded = tuple[np.ndarray, np.ndarray, int, bool]


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def pool(workers: int) -> ThreadPoolExecutor:
    """The process's shared pool of ``workers`` threads for blocks (created on first
    use, again in a forked child, whose copy has no threads). Threads that wait on it
    (a state dict's tensors coded side by side) are never its own, so it cannot
    deadlock, and the numba kernels it runs release the GIL."""
    key = (os.getpid(), workers)
    with _POOLS_LOCK:
        ex = _POOLS.get(key)
        if ex is None:
            ex = _POOLS[key] = ThreadPoolExecutor(max_workers=workers,
                                                  thread_name_prefix="fedpress-acm")
        return ex


def _map(fn: Callable[[T], R], items: list[T], workers: int) -> list[R]:
    """``[fn(i) for i in items]``, on the shared pool when it pays."""
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    return list(pool(workers).map(fn, items))


_NO_MAG = np.empty(0, np.float32)
_NO_SIGN = np.empty(0, np.int8)
#: a value's history (``gaeb``): the moving average of its decoded magnitudes
#: (float32) and its last decoded sign (int8: -1, 0, 1)
History = tuple[np.ndarray, np.ndarray]


def _history(hist: History | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The history arrays as the kernels take them (checked against ``n``)."""
    if hist is None:
        return _NO_MAG, _NO_SIGN
    mag = np.ascontiguousarray(hist[0], dtype=np.float32)
    sgn = np.ascontiguousarray(hist[1], dtype=np.int8)
    if mag.shape != (n,) or sgn.shape != (n,):
        raise ValueError(f"acm: a history of {mag.shape} and {sgn.shape} for {n} values")
    return mag, sgn


def encode(x: np.ndarray, cols: int, step: float, eb: float, pred: int, workers: int = 1,
           block_bits: int = BLOCK_BITS, hist: History | None = None,
           ) -> tuple[bytes, np.ndarray, int] | None:
    """Code the flat array ``x`` (finite float32/float64) as rows of ``cols``.

    ``hist``, if given, is what both ends know of each value from elsewhere (gaeb's
    history: ``(magnitudes, signs)``): the magnitude contexts are crossed with the
    bucket of its magnitude in steps (below 1/4, 1, 4, above), the sign contexts with
    its sign.

    Returns ``(stream, values, n_over)``: the stream (see the module docs), the
    decoder's values ``q * step`` in ``x``'s dtype, and how many of them are over
    ``eb`` (exactly, in float64); None if a code would overflow (the caller then
    stores ``x`` losslessly).
    """
    n = x.size
    if cols < 1 or n % cols:
        raise ValueError(f"acm: {cols} columns for {n} values")
    hmag, hsgn = _history(hist, n)
    kern = kernels()
    y = np.empty_like(x)
    blocks = layout(n, cols, block_bits)

    def one(blk: Block) -> _Coded:
        start, rows, c = blk
        words, raw, over, ok = kern.encode_block(x, start, rows, c, step, eb, pred, y, hmag,
                                                 hsgn)
        return words, raw, int(over), bool(ok)

    parts = _map(one, blocks, workers)
    w = Writer()
    w.varint(cols)
    w.u8(block_bits)
    n_over = 0
    for words, raw, over, ok in parts:
        if not ok:
            return None
        n_over += over
        w.varint(int(words.size))
        w.varint(int(raw.size))
    for words, raw, _, _ in parts:
        w.raw(words.astype("<u2", copy=False).tobytes())
        w.raw(raw.astype("<u4", copy=False).tobytes())
    return w.getvalue(), y, n_over


def decode(rd: Reader, n: int, step: float, dtype: np.dtype, pred: int, workers: int = 1,
           hist: History | None = None) -> np.ndarray:
    """The ``n`` values (``dtype``) of a stream of :func:`encode` read from ``rd`` (to
    its end); ``hist`` as the encoder had it."""
    hmag, hsgn = _history(hist, n)
    cols = rd.varint(cap=n, name="acm columns")
    if cols < 1 or n % cols:
        raise FormatError(f"acm stream: {cols} columns for {n} values")
    block_bits = rd.u8()
    if not MIN_BLOCK_BITS <= block_bits <= MAX_BLOCK_BITS:
        raise FormatError(f"acm stream: block size 2**{block_bits}")
    blocks = layout(n, cols, block_bits)
    if len(blocks) > rd.remaining:
        raise FormatError(f"acm stream: {len(blocks)} blocks in {rd.remaining} bytes")
    sizes = []
    for _, rows, c in blocks:
        m = rows * c
        nw = rd.varint(cap=2 * m + rows + 4, name="acm words")
        nr = rd.varint(cap=((35 * m) >> 5) + 2, name="acm raw words")
        sizes.append((nw, nr))
    offsets = []
    at = rd.pos
    for nw, nr in sizes:
        offsets.append(at)
        at += 2 * nw + 4 * nr
    if at - rd.pos != rd.remaining:
        raise FormatError(f"acm stream: blocks of {at - rd.pos} bytes, {rd.remaining} present")
    body = np.frombuffer(rd.take(rd.remaining), np.uint8)
    if body.flags.writeable:  # one array type for the kernel, whatever held the bytes
        body = body.view()
        body.flags.writeable = False
    base = offsets[0] if offsets else 0
    out = np.empty(n, dtype=dtype)
    kern = kernels()

    def one(i: int) -> int:
        start, rows, c = blocks[i]
        nw, nr = sizes[i]
        o = offsets[i] - base
        return int(kern.decode_block(body, o, nw, o + 2 * nw, nr, rows, c, step, pred, out,
                                     start, hmag, hsgn))

    for status in _map(one, list(range(len(blocks))), workers):
        if status:
            raise FormatError(f"acm stream: {_ERRORS.get(status, status)}")
    return out


def decode_extra_bytes(n: int, workers: int = 1, block_bits: int = MAX_BLOCK_BITS) -> int:
    """Bytes :func:`decode` allocates beyond its output: the block buffers of each
    worker (no more workers than blocks; blocks of up to ``2**block_bits`` values)."""
    per = min(n, 1 << block_bits)
    busy = max(1, min(workers, -(-n // per) if per else 1))
    return busy * DECODE_BYTES_PER_VALUE * per
