"""``fpz``: fedpress's own error-bounded compressor, assembled from stages.

Version 3 (the default since fedpress's adaptive context-model engine): per tensor
(flattened, finite, float32 or float64 core), one fused pass per block of rows
(``stages.acm``):

1. **quantize** the values (``q = rint(x / 2eb)``; the reconstruction ``q * 2eb``
   and the count of values over the bound on the output dtype come out of the
   same pass);
2. optionally **predict** (``lorenzo1d``: the difference from the previous code),
   chosen per tensor on a small sample unless fixed by the ``predictor`` option;
3. **model and code** the codes of the tensor seen as a matrix (first axis x the
   rest, e.g. a convolution's output channels x ``in * kh * kw``): all-zero rows
   cost a fraction of a bit; each code's magnitude class is coded under an
   adaptive 16-symbol distribution chosen by its left and upper neighbours'
   magnitudes and a moving average along the rows, its low bits raw, its sign
   under an adaptive context of the neighbours' signs; rANS with two states.

Blocks of rows (2**18 values by default) are coded independently, side by side
with ``workers`` threads: the bytes never depend on the worker count. The older
coders (``coder=`` ``rans``, ``huffman``, ``ans``, ``zstd``, or ``predictor=
"lorenzo2d"``) write version 2 payloads (static entropy coders after an optional
Lorenzo predictor and a zero-block bitmap); versions 1 and 2 keep decoding.
``coder="best"`` codes each tensor both ways (version 3, and version 2 with its
``auto`` coder) and keeps the smaller payload: an ordinary version 3 or version 2
payload, nothing in the format says it was chosen.

The reconstruction is ``q * 2eb`` whatever the predictor (dual quantization),
and the encoder hands it to the envelope, which stores the rare float rounding
offenders exactly; with none over the bound (counted exactly, in float64), the
envelope need not check again. Values whose codes would overflow
(``max|x| / 2eb > 2**30``) make the tensor go to zstd losslessly.

Payload (after the envelope)::

    version 3:
    u8 version (3) | u8 mode (0 quantized, 1 lossless)
    mode 0: u8 predictor id (0 none, 1 lorenzo1d) | acm stream (``stages.acm``:
            varint cols | u8 block_bits | per block: varint words, varint raw words
            | per block: rANS words (u16), raw-bit words (u32))
    mode 1: zstd frame of the raw values

    versions 1 and 2:
    u8 version | u8 mode (0 quantized, 1 lossless)
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
from .._cores import available_cores
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..stages import acm, ans, kernels, rans, spread_chunks
from ..stages.coders import CODERS, CoderId, Symbols
from ..stages.lossless import ZSTD
from ..stages.predict import BY_NAME, NEEDS_COLS, PREDICTORS, predictor
from ..stages.quantize import MAX_CODE, dequantize, quantize, quantize_values, usable_step
from .base import ErrorBoundedCodec

#: the version new frames get (3: the adaptive context model); 2: the static coders
VERSION = 3
V2 = 2
MODE_QUANT, MODE_LOSSLESS = 0, 1
#: predictors of version 3 (ids as in ``stages.predict``)
_V3_PREDICTORS = (BY_NAME["none"], BY_NAME["lorenzo1d"])
#: values of the sample that chooses version 3's predictor
_V3_SAMPLE_CHUNKS, _V3_SAMPLE_CHUNK = 8, 512
#: the coders fpz writes, by their ids in the shared table (``stages.coders``); version 1
#: knew only the first two
_OWN_CODERS = (CoderId.ANS, CoderId.ZSTD, CoderId.RANS, CoderId.HUFFMAN)
_V1_CODERS = (CoderId.ANS, CoderId.ZSTD)
_CODERS = {CODERS[cid].name: cid for cid in _OWN_CODERS}
#: the coder of version 3 (not an id of the shared table: the model is the format)
ACM = "acm"
#: the coder choice that codes each tensor as version 3 and as version 2 (``auto``) and
#: keeps the smaller payload
BEST = "best"
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
        Prediction on the codes; ``auto`` picks per tensor (version 3: ``none`` or
        ``lorenzo1d``; ``lorenzo2d``, on the tensor as a matrix, first axis x the
        rest, writes version 2 and on 1-D tensors falls back to ``lorenzo1d``).
    coder : {"auto", "acm", "best", "rans", "huffman", "ans", "zstd"}
        Entropy coder: ``auto`` and ``acm`` are version 3's adaptive context model;
        ``rans``, ``huffman``, ``ans`` and ``zstd`` write version 2 (``rans`` static
        rANS, or on small tensors the smallest of rans, Huffman and zstd under version
        2's ``auto``). ``best`` codes each tensor both ways, as version 3 and as
        version 2 with its ``auto`` coder (each with its own predictor choice), and
        keeps the smaller payload (version 3 on a tie): never larger than either,
        for about the sum of their encoding times. The adaptive model pays for
        learning, so on near-white-noise tensors at loose bounds the static coder
        can be smaller (see docs/results.md). The payload is an ordinary version 3
        or version 2 payload (every decoder reads it), and the reconstruction handed
        to the envelope is the kept payload's own (both versions quantize alike, but
        one may store a small tensor losslessly where the other quantizes it, so the
        values can differ with the version kept). Not with ``version=2`` or
        ``predictor="lorenzo2d"`` (version 2 only).
    workers : int, optional
        Threads that code the blocks of one tensor side by side (default: the cores
        available, at most ``NUMBA_NUM_THREADS`` when set). Not part of the
        configuration: the bytes are the same for any number.
    version : {3, 2}, optional
        The payload version to write (default 3; 2 writes version 2 whatever the
        coder, its ``auto`` coder picking rans, or the smallest of rans, Huffman and
        zstd on small tensors). Not part of the configuration: every version decodes.
    """

    codec_id = "fpz"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "predictor", "coder")
    core_float64 = True
    #: ``encode`` may run in several threads at once (no state; the kernels release the
    #: GIL): ``UpdateEncoder`` codes such tensors of a state dict side by side
    concurrent_encode: ClassVar[bool] = True

    def __init__(self, mode: str = "rel", eb: float = 1e-2, predictor: str = "auto",
                 coder: str = "auto", workers: int | None = None, version: int = VERSION
                 ) -> None:
        super().__init__(mode, eb)
        if predictor != "auto" and predictor not in BY_NAME:
            raise ConfigError(f"fpz: predictor must be 'auto' or one of {sorted(BY_NAME)}")
        if coder not in ("auto", ACM, BEST) and coder not in _CODERS:
            raise ConfigError(f"fpz: coder must be 'auto', 'acm', 'best' or one of "
                              f"{sorted(_CODERS)}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise ConfigError(f"fpz: workers must be an int >= 1, got {workers!r}")
        if version not in (V2, VERSION) or (version == V2 and coder in (ACM, BEST)):
            raise ConfigError(f"fpz: cannot write version {version!r} with coder {coder!r}")
        if coder == BEST and predictor == "lorenzo2d":
            raise ConfigError("fpz: coder='best' compares versions 3 and 2; "
                              "predictor='lorenzo2d' writes version 2 only")
        self.predictor = predictor
        self.coder = coder
        self.workers = workers
        self.version = version

    @property
    def _workers(self) -> int:
        return self.workers if self.workers is not None else available_cores()

    def _writes_v3(self) -> bool:
        return (self.version == VERSION and self.coder in ("auto", ACM)
                and self.predictor != "lorenzo2d")

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
        if self.coder == BEST:
            # each version's own (body, values, over): the kept one's go to the envelope
            v3 = self._encode_v3(x, eb_abs, shape)
            v2 = self._encode_v2(x, eb_abs, shape)
            return v3 if len(v3[0]) <= len(v2[0]) else v2
        if self._writes_v3():
            return self._encode_v3(x, eb_abs, shape)
        return self._encode_v2(x, eb_abs, shape)

    def _choose_v3_predictor(self, x: np.ndarray, step: float) -> int:
        """``none``, or ``lorenzo1d`` when a small sample's codes change little from
        one value to the next (smooth data): the mean code difference under half the
        mean code (white noise gives about 1.4 times)."""
        if self.predictor != "auto":
            return BY_NAME[self.predictor]
        size = _V3_SAMPLE_CHUNK
        if x.size < 2 * size:
            part = x.reshape(1, -1)
        else:
            part = spread_chunks(x, _V3_SAMPLE_CHUNKS, size).reshape(_V3_SAMPLE_CHUNKS, size)
        q = np.rint(part.astype(np.float64) / step)
        if part.shape[1] < 2:
            return BY_NAME["none"]
        mean_q = float(np.abs(q).mean())
        mean_d = float(np.abs(np.diff(q, axis=1)).mean())
        return BY_NAME["lorenzo1d"] if mean_d < 0.5 * mean_q else BY_NAME["none"]

    def _encode_v3(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...]
                   ) -> tuple[bytes, np.ndarray, np.ndarray | None]:
        step = 2.0 * eb_abs
        w = Writer()
        w.u8(VERSION)
        coded = None
        if usable_step(step):
            cols = acm.row_length(x.size, tuple(shape))
            pid = self._choose_v3_predictor(x, step)
            coded = acm.encode(x, cols, step, eb_abs, pid, self._workers)
        if coded is None:
            w.u8(MODE_LOSSLESS)
            w.raw(ZSTD.encode_array(x))
            return w.getvalue(), x, np.zeros(0, np.int64)
        stream, values, n_over = coded
        w.u8(MODE_QUANT)
        w.u8(pid)
        w.raw(stream)
        # none over the bound: say so (the envelope skips its check); else let it find them
        return w.getvalue(), values, (np.zeros(0, np.int64) if n_over == 0 else None)

    def _encode_v2(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...] = ()
                   ) -> tuple[bytes, np.ndarray, np.ndarray | None]:
        cols = natural_cols(shape) if x.size == int(np.prod(shape)) else 0
        pid = self._choose_predictor(x, eb_abs, cols)
        coded = (_quantize_none(x, eb_abs) if pid == _FUSED
                 else _quantize_predict(x, eb_abs, pid, cols))
        w = Writer()
        w.u8(V2)
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

        if self.coder not in ("auto", ACM, BEST):
            return coded(_CODERS[self.coder])
        if z.size > _SMALL:
            return coded(CoderId.RANS)
        return min((coded(CoderId.RANS), coded(CoderId.ZSTD), coded(CoderId.HUFFMAN)), key=len)

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        rd = Reader(data, "fpz payload")
        version = rd.u8()
        if version not in (1, V2, VERSION):
            raise FormatError(f"fpz payload: unknown version {version}")
        mode = rd.u8()
        if mode == MODE_LOSSLESS:
            return ZSTD.decode_array(rd.rest(), n, dtype)
        if mode != MODE_QUANT:
            raise FormatError(f"fpz payload: unknown mode {mode}")
        pid = rd.u8()
        if version == VERSION:
            if pid not in _V3_PREDICTORS:
                raise FormatError(f"fpz payload: predictor {pid} in version 3")
            if not usable_step(2.0 * eb_abs):
                raise FormatError(f"fpz payload: quantized values with bound {eb_abs}")
            return acm.decode(rd, n, 2.0 * eb_abs, dtype, pid, self._workers)
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

    def _core_decode_extra_bytes(self, n: int, dtype: np.dtype) -> int:
        """Version 3's block buffers, one set per worker (the larger need of the versions)."""
        return acm.decode_extra_bytes(n, self._workers)

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
