"""``fpz``: fedpress's own error-bounded compressor, assembled from stages.

Pipeline per tensor (flattened, finite, float32 or float64 core):

1. **quantize** the values (``stages.quantize``: ``q = rint(x / 2eb)``);
2. **predict** on the integer codes (``stages.predict``: ``none``,
   ``lorenzo1d`` or ``lorenzo2d`` over the natural axes), chosen per tensor by
   the order-0 entropy per value of the residuals on a sample (contiguous
   chunks; whole rows for 2-D), unless fixed by the ``predictor`` option;
3. **skip zero blocks**: blocks of 128 codes that are all zero (dead neurons'
   rows in gradients) are marked in a bitmap and not coded, when that pays;
4. **entropy-code** the residuals: static rANS with an optional magnitude
   context (``stages.rans``, the default), canonical Huffman (``stages.huffman``),
   range-ANS with the exact histogram (``stages.ans``, ``constriction``), or zstd
   over the narrowest integer type; ``coder="auto"`` takes rANS, or on small
   tensors the smallest of rANS, Huffman and zstd.

The reconstruction is ``q * 2eb`` whatever the predictor (dual quantization),
and the encoder hands it to the envelope, which stores the rare float rounding
offenders exactly. On the no-prediction path the fused quantizer also counts the
values over the bound on the output dtype (exactly, in float64; NaN counts): with
none, the envelope need not check again; with some, it finds them itself. Values whose codes
would overflow (``max|x| / 2eb > 2**30``) make the tensor go to zstd losslessly.

Payload (after the envelope)::

    u8 version (2; 1 still decodes) | u8 mode (0 quantized, 1 lossless)
    mode 0: u8 predictor id | [varint columns, lorenzo2d only] | u8 flags
            | [blob zero-block bitmap] | [u8 coder id | body]
            (version 1 has no flags and no bitmap; coder and body are absent when
            every value lies in a zero block)
            flags bit 0: zero blocks skipped; the bitmap (zstd frame of
            ``ceil(n / 128)`` bits, little-endian bit order) marks them
            coder ids (``stages.coders.CoderId``): 0 ans (constriction), 1 zstd,
            2 rans, 3 huffman
    mode 1: zstd frame of the raw values
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..stages import ans, kernels, rans, spread_chunks
from ..stages.coders import CODERS, CoderId, Symbols
from ..stages.lossless import ZSTD
from ..stages.predict import BY_NAME, NEEDS_COLS, PREDICTORS, predictor
from ..stages.quantize import MAX_CODE, dequantize, quantize, quantize_values, usable_step
from .base import ErrorBoundedCodec

VERSION = 2
MODE_QUANT, MODE_LOSSLESS = 0, 1
#: the coders fpz writes, by their ids in the shared table (``stages.coders``); version 1
#: knew only the first two
_OWN_CODERS = (CoderId.ANS, CoderId.ZSTD, CoderId.RANS, CoderId.HUFFMAN)
_V1_CODERS = (CoderId.ANS, CoderId.ZSTD)
_CODERS = {CODERS[cid].name: cid for cid in _OWN_CODERS}
FLAG_ZERO_BLOCKS = 1
ZERO_BLOCK = 128
_BLOCK_BITS = ZERO_BLOCK.bit_length() - 1
#: least share of all-zero blocks for the bitmap to be worth writing
_ZERO_BLOCK_SHARE = 0.01
#: tensors up to this size also try zstd and Huffman under coder="auto"
_SMALL = 1 << 14
_SAMPLE_CHUNKS, _CHUNK = 32, 2048
#: predictor whose values the rANS decoding loop computes itself (dequantization fused)
_FUSED = BY_NAME["none"]


def _sample(v: np.ndarray) -> np.ndarray:
    """Contiguous chunks spread over ``v`` (all of it when small), for estimates."""
    return v if v.size <= _SAMPLE_CHUNKS * _CHUNK * 2 else spread_chunks(v, _SAMPLE_CHUNKS, _CHUNK)


def zero_blocks(q: np.ndarray) -> np.ndarray | None:
    """Mask of the all-zero blocks of ``q`` (the last one may be short), or None if few."""
    nb = -(-q.size // ZERO_BLOCK)
    full = q.size // ZERO_BLOCK
    nz = np.zeros(nb, dtype=bool)
    nz[:full] = np.any(q[: full * ZERO_BLOCK].reshape(full, ZERO_BLOCK) != 0, axis=1)
    if full < nb:
        nz[full] = bool(np.any(q[full * ZERO_BLOCK :] != 0))
    return _worth_skipping(~nz)


#: (zigzag codes of the kept values, their histogram, zero-block mask or None,
#:  the values the decoder will compute, indices over the bound or None if unchecked)
_Coded = tuple[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, "np.ndarray | None"]


def _quantize_none(x: np.ndarray, eb_abs: float) -> _Coded | None:
    """The no-prediction path in one compiled pass (see ``_Coded``); None if codes
    would overflow."""
    if not usable_step(2.0 * eb_abs):
        return None
    kern = kernels()
    values = np.empty_like(x)
    z, hist, nonzero, n_over, ok = kern.quantize_symbols(x, 2.0 * eb_abs, MAX_CODE, values,
                                                         rans.HIST_CAP, _BLOCK_BITS, eb_abs)
    if not ok:
        return None
    # none over the bound: say so (the envelope skips its check); else let it find them
    over = np.zeros(0, np.int64) if n_over == 0 else None
    zero = _worth_skipping(~nonzero) if x.size >= 2 * ZERO_BLOCK else None
    if zero is not None:
        z = kern.gather_blocks(z, zero, _BLOCK_BITS)
        hist[0] -= _zero_block_values(zero, x.size)  # the codes left out are all 0
    return z, hist, zero, values, over


def _quantize_predict(x: np.ndarray, eb_abs: float, pid: int, cols: int) -> _Coded | None:
    """As :func:`_quantize_none`, for a predictor over the kept codes (all codes for
    a 2-D predictor, which needs the rows whole)."""
    qv = quantize_values(x, eb_abs)
    if qv is None:
        return None
    q, values = qv
    zero = zero_blocks(q) if q.size >= 2 * ZERO_BLOCK and pid not in NEEDS_COLS else None
    kept = q if zero is None else kernels().gather_blocks(q, zero, _BLOCK_BITS)
    z, hist = rans.symbols(predictor(pid)[1](kept, cols))
    return z, hist, zero, values, None


def natural_cols(shape: tuple[int, ...]) -> int:
    """Columns of the tensor seen as a matrix along its natural axes (first axis x
    the rest), or 0 if that is not a matrix of at least 2 x 2."""
    if len(shape) < 2 or shape[0] < 2:
        return 0
    cols = int(np.prod(shape[1:]))
    return cols if cols >= 2 else 0


def _row_bands(v: np.ndarray, cols: int) -> np.ndarray:
    """Whole-row bands spread over ``v`` (a matrix of ``cols`` columns), for estimates."""
    rows = v.size // cols
    per = max(2, _CHUNK // cols)
    if rows <= per * _SAMPLE_CHUNKS:
        return v
    starts = np.linspace(0, rows - per, _SAMPLE_CHUNKS).astype(np.int64)
    return np.concatenate([v[s * cols : (s + per) * cols] for s in starts])


def _worth_skipping(zero: np.ndarray) -> np.ndarray | None:
    return zero if zero.sum() >= max(1, _ZERO_BLOCK_SHARE * zero.size) else None


def _zero_block_values(zero: np.ndarray, n: int) -> int:
    """How many of the ``n`` values lie in the blocks marked in ``zero``."""
    count = int(zero.sum()) * ZERO_BLOCK
    if zero.size and zero[-1]:
        count -= zero.size * ZERO_BLOCK - n  # the last block is short
    return count


@register_codec
class FpzCodec(ErrorBoundedCodec):
    """fedpress's quantize / predict / entropy-code compressor (see the module docs).

    Parameters
    ----------
    mode, eb : str, float
        Error bound (see :mod:`fedpress.bounds`).
    predictor : {"auto", "none", "lorenzo1d", "lorenzo2d"}
        Prediction on the codes; ``auto`` picks per tensor (``lorenzo2d`` works
        on the tensor as a matrix, first axis x the rest; on 1-D tensors it
        falls back to ``lorenzo1d``).
    coder : {"auto", "rans", "huffman", "ans", "zstd"}
        Entropy coder; ``auto`` takes ``rans``, or on small tensors the smallest
        of rans, Huffman and zstd.
    """

    codec_id = "fpz"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "predictor", "coder")
    core_float64 = True

    def __init__(self, mode: str = "rel", eb: float = 1e-2, predictor: str = "auto",
                 coder: str = "auto") -> None:
        super().__init__(mode, eb)
        if predictor != "auto" and predictor not in BY_NAME:
            raise ConfigError(f"fpz: predictor must be 'auto' or one of {sorted(BY_NAME)}")
        if coder != "auto" and coder not in _CODERS:
            raise ConfigError(f"fpz: coder must be 'auto' or one of {sorted(_CODERS)}")
        self.predictor = predictor
        self.coder = coder

    def _choose_predictor(self, x: np.ndarray, eb_abs: float, cols: int) -> int:
        """Predictor id: fixed, or the one whose residuals have the least entropy per
        value on a sample of the quantized values (whole rows for 2-D ones)."""
        if self.predictor != "auto":
            pid = BY_NAME[self.predictor]
            if pid in NEEDS_COLS and not cols:
                return BY_NAME["lorenzo1d"]  # not a matrix: its 1-D form
            return pid
        best, best_bits = BY_NAME["none"], float("inf")
        for pid, (_, fwd, _) in PREDICTORS.items():
            if pid in NEEDS_COLS and not cols:
                continue
            q = quantize(_row_bands(x, cols) if pid in NEEDS_COLS else _sample(x), eb_abs)
            if q is None:
                return BY_NAME["none"]
            r = fwd(q, cols)
            bits = ans.entropy_bits(np.bincount(r - r.min())) / r.size
            if bits < best_bits:
                best, best_bits = pid, bits
        return best

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        return self._encode_core_recon(x, eb_abs)[0]

    def _encode_core_recon(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...] = ()
                           ) -> tuple[bytes, np.ndarray, np.ndarray | None]:
        cols = natural_cols(shape) if x.size == int(np.prod(shape)) else 0
        pid = self._choose_predictor(x, eb_abs, cols)
        coded = (_quantize_none(x, eb_abs) if pid == _FUSED
                 else _quantize_predict(x, eb_abs, pid, cols))
        w = Writer()
        w.u8(VERSION)
        if coded is None:
            w.u8(MODE_LOSSLESS)
            w.raw(ZSTD.encode_array(x))
            return w.getvalue(), x, np.zeros(0, np.int64)
        z, hist, zero, values, over = coded
        w.u8(MODE_QUANT)
        w.u8(pid)
        if pid in NEEDS_COLS:
            w.varint(cols)
        w.u8(0 if zero is None else FLAG_ZERO_BLOCKS)
        if zero is not None:
            w.blob(ZSTD.encode_array(np.packbits(zero, bitorder="little")))
        if z.size:
            w.raw(self._code(z, hist))
        return w.getvalue(), values, over

    def _code(self, z: np.ndarray, hist: np.ndarray) -> bytes:
        """Coder id byte + body, for the residuals' zigzag codes ``z``."""
        symbols = Symbols(zigzag=z, hist=hist)

        def coded(cid: CoderId) -> bytes:
            coder = CODERS[cid]
            if cid == CoderId.ANS:
                r = symbols.values
                if int(r.max()) - int(r.min()) + 1 > ans.MAX_ALPHABET:
                    raise ConfigError("fpz: alphabet too large for coder='ans' at this bound")
            w = Writer()
            w.u8(cid)
            coder.encode(symbols, w)
            return w.getvalue()

        if self.coder != "auto":
            return coded(_CODERS[self.coder])
        if z.size > _SMALL:
            return coded(CoderId.RANS)
        return min((coded(CoderId.RANS), coded(CoderId.ZSTD), coded(CoderId.HUFFMAN)), key=len)

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        rd = Reader(data, "fpz payload")
        version = rd.u8()
        if version not in (1, VERSION):
            raise FormatError(f"fpz payload: unknown version {version}")
        mode = rd.u8()
        if mode == MODE_LOSSLESS:
            return ZSTD.decode_array(rd.rest(), n, dtype)
        if mode != MODE_QUANT:
            raise FormatError(f"fpz payload: unknown mode {mode}")
        pid = rd.u8()
        _, _, inverse = predictor(pid)
        cols = 0
        if pid in NEEDS_COLS:
            cols = rd.varint(cap=n, name="fpz columns")
            if version == 1 or cols < 1 or n % cols:
                raise FormatError(f"fpz payload: {cols} columns for {n} values")
        flags = rd.u8() if version >= 2 else 0
        if flags & ~FLAG_ZERO_BLOCKS or (flags and cols):
            raise FormatError(f"fpz payload: unknown flags {flags}")
        zero = None
        if flags & FLAG_ZERO_BLOCKS:
            nb = -(-n // ZERO_BLOCK)
            bits = ZSTD.decode_array(rd.blob(cap=rd.remaining, name="fpz zero blocks"),
                                     -(-nb // 8), np.uint8)
            zero = np.unpackbits(bits, count=nb, bitorder="little").astype(bool)
        m = n if zero is None else n - _zero_block_values(zero, n)
        if not m:
            rd.expect_end()
            return np.zeros(n, dtype=dtype)
        if not usable_step(2.0 * eb_abs):
            raise FormatError(f"fpz payload: quantized values with bound {eb_abs}")
        kept = self._decode_values(rd, m, pid, lambda r: inverse(r, cols), 2.0 * eb_abs, dtype,
                                   version)
        if zero is None:
            return kept
        out = np.empty(n, dtype=dtype)
        kernels().scatter_blocks(kept, zero, _BLOCK_BITS, out)
        return out

    @staticmethod
    def _decode_values(rd: Reader, m: int, pid: int, inverse: Callable[[np.ndarray], np.ndarray],
                       step: float, dtype: np.dtype, version: int) -> np.ndarray:
        """The ``m`` coded values: residuals -> codes (``inverse``) -> ``codes * step``."""
        cid = rd.u8()
        if version == 1 and cid in _OWN_CODERS and cid not in _V1_CODERS:
            raise FormatError(f"fpz payload: coder {cid} does not exist in version 1")
        if cid not in _OWN_CODERS:
            raise FormatError(f"fpz payload: unknown coder {cid}")
        coder = CODERS[CoderId(cid)]
        if coder.fused and pid == _FUSED:
            return coder.decode(rd, m, step=step, dtype=dtype)
        r = coder.decode(rd, m)
        return dequantize(inverse(r), step / 2.0, dtype)
