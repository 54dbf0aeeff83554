"""SZ3 through ``pysz`` (the SZ3 library's official Python binding).

The tensor is flattened to 1-D (as FedSZ does) and compressed in SZ3's ABS
mode with the absolute bound computed by the envelope. ``algorithm`` picks
SZ3's predictor: ``interp_lorenzo`` (SZ3's default), ``interp``,
``lorenzo_reg`` or ``nopred``.

Before a payload reaches SZ3's decoder, :func:`check_stream` checks every part of
it that fedpress can read without decoding: the 16-byte header (magic and data
version this library writes, payload length), the configuration SZ3 appends (one
dimension of the tensor's length, ABS mode at exactly the payload's bound, an
algorithm the codec's ``algorithm`` can leave there, the predictor switches
fedpress's configurations produce: no OpenMP), the lossless stage (a zstd frame
declaring the length SZ3 reads, within what ``n`` values can take) and, for the
block-wise Lorenzo/regression predictor, the leading counts of its inner stream
(regression coefficients, block selections) against the tensor's block count.

What stays trusted: the rest of SZ3's inner stream (Huffman tables and the
counts behind them). SZ3 (pysz 1.1) bounds-checks most of it, but a single-symbol
Huffman table with a forged element count (the block selections after regression
coefficients, or the quantization codes of the Lorenzo/regression predictor) makes
it fill a vector of that many entries without reading input: a 1 KB payload can
make it allocate and touch gigabytes. Only streams of the ``lorenzo_reg`` algorithm
take that path (``interp_lorenzo``'s Lorenzo branch has no regression, and its
selection count is checked), but the algorithm is part of the codec configuration
a frame names. The codec is therefore not ``peer_safe``: default decoders refuse it
from peers, and a server that accepts it decodes it in a child process with a memory
limit (``Limits(isolate={"sz3"})``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np

from .._deps import require
from ..eblc.base import ErrorBoundedCodec
from ..errors import ConfigError, FormatError
from ..registry import register_codec

_ALGOS = {
    "interp_lorenzo": "INTERP_LORENZO",
    "interp": "INTERP",
    "lorenzo_reg": "LORENZO_REG",
    "nopred": "NOPRED",
}

# SZ3's algorithm ids as stored in a stream (SZ3/def.hpp)
_LORENZO_REG, _INTERP, _NOPRED, _LOSSLESS = 0, 2, 3, 4
#: what SZ3 may store for each fedpress algorithm: interp_lorenzo settles on one of the
#: two predictors, and any algorithm falls back to lossless when that is smaller
_STORED = {
    "interp_lorenzo": frozenset({_LORENZO_REG, _INTERP, _LOSSLESS}),
    "interp": frozenset({_INTERP, _LOSSLESS}),
    "lorenzo_reg": frozenset({_LORENZO_REG, _LOSSLESS}),
    "nopred": frozenset({_NOPRED, _LOSSLESS}),
}
_EB_ABS = 0
# Config's switch byte: lorenzo 0x80, lorenzo2 0x40, regression 0x20, regression2 0x10,
# openmp 0x08. SZ3's defaults (lorenzo + regression) and interp_lorenzo's tuned Lorenzo
# (first and second order) are all fedpress's configurations produce.
_SWITCHES_DEFAULT, _SWITCHES_TUNED = 0xA0, 0xC0
_HEADER = struct.Struct("<IIQ")  # magic, data version, payload length
_TAIL = struct.Struct("<BBiiB")  # switches, data type, quant bins, block size, pred dim
#: the data version whose inner layout the Lorenzo/regression count check knows
_KNOWN_INNER_VERSION = 0x03040000
_REG_COEFFS_PER_BLOCK = 2  # a 1-D regression block has a slope and an intercept


@dataclass(frozen=True)
class Sz3Stream:
    """The parts of an SZ3 stream :func:`check_stream` read."""

    version: int
    algo: int
    switches: int
    block_size: int
    inner_size: int


@register_codec
class SZ3Codec(ErrorBoundedCodec):
    """SZ3 (pysz), error-bounded, float32/float64 cores."""

    codec_id = "sz3"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "algorithm")
    core_float64 = True
    #: a crafted Lorenzo/regression stream within every check above can still make the
    #: library allocate and fill gigabytes from a kilobyte frame: decode it from peers
    #: only in a child process with a memory limit (``Limits(isolate={"sz3"})``)
    peer_safe: ClassVar[bool] = False

    def _core_decode_extra_bytes(self, n: int, dtype: np.dtype) -> int:
        """SZ3's own buffers while decoding: about 4.6 bytes a value, measured."""
        return 5 * n

    def __init__(self, mode: str = "rel", eb: float = 1e-2,
                 algorithm: str = "interp_lorenzo") -> None:
        super().__init__(mode, eb)
        if algorithm not in _ALGOS:
            raise ConfigError(f"sz3: algorithm must be one of {sorted(_ALGOS)}")
        self.algorithm = algorithm

    def check_available(self) -> None:
        require("pysz", codec=self.codec_id)

    def _config(self, n: int, eb_abs: float) -> tuple[Any, Any]:
        pysz = require("pysz", codec=self.codec_id)
        cfg = pysz.szConfig((n,))
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = float(eb_abs)
        cfg.cmprAlgo = getattr(pysz.szAlgorithm, _ALGOS[self.algorithm])
        cfg.openmp = False
        return pysz, cfg

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        pysz, cfg = self._config(x.size, eb_abs)
        out, _ = pysz.sz.compress(x, cfg)
        return np.asarray(out, dtype=np.uint8).tobytes()

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        pysz = require("pysz", codec=self.codec_id)
        raw = bytes(data)
        check_stream(raw, n, dtype.itemsize, eb_abs, self.algorithm)
        arr = np.frombuffer(raw, dtype=np.uint8)
        out, _ = pysz.sz.decompress(arr, dtype.type, (n,))
        return np.asarray(out)


def check_stream(raw: bytes, n: int, itemsize: int, eb_abs: float, algorithm: str,
                 ) -> Sz3Stream:
    """Check an SZ3 stream is one :class:`SZ3Codec` with ``algorithm`` writes for ``n``
    values of ``itemsize`` bytes under ``eb_abs``; FormatError if not."""
    magic, version = library_stamp()
    if len(raw) < _HEADER.size:
        raise FormatError("sz3 payload: shorter than the SZ3 header")
    got_magic, got_version, payload_len = _HEADER.unpack_from(raw)
    if got_magic != magic or got_version != version:
        raise FormatError(f"sz3 payload: magic {got_magic:#x} version {got_version:#x}, this "
                          f"SZ3 writes {magic:#x} {version:#x}")
    if payload_len > len(raw) - _HEADER.size:
        raise FormatError("sz3 payload: payload length past the end")
    payload = raw[_HEADER.size:_HEADER.size + payload_len]
    algo, switches, block_size = _check_config(raw[_HEADER.size + payload_len:], n, eb_abs)
    if algo not in _STORED[algorithm]:
        raise FormatError(f"sz3 payload: algorithm {algo} is not one {algorithm!r} stores")
    if switches not in _switches_for(algorithm, algo):
        raise FormatError(f"sz3 payload: predictor switches {switches:#x} are not what "
                          f"{algorithm!r} writes")
    inner_size = _check_lossless_stage(payload, n, itemsize)
    if algo == _LORENZO_REG and version == _KNOWN_INNER_VERSION:
        _check_block_counts(payload, n, switches, block_size)
    return Sz3Stream(version, algo, switches, block_size, inner_size)


def _switches_for(algorithm: str, algo: int) -> frozenset[int]:
    """The predictor switches a stream of ``algorithm`` that SZ3 stored as ``algo`` can
    carry: interp_lorenzo tunes them (first and second order Lorenzo, no regression)
    before it picks its branch, so its Lorenzo branch always carries the tuned ones and
    its other branches (interpolation, the lossless fallback) either; every other
    algorithm keeps SZ3's defaults."""
    if algorithm == "interp_lorenzo":
        if algo == _LORENZO_REG:
            return frozenset({_SWITCHES_TUNED})
        return frozenset({_SWITCHES_TUNED, _SWITCHES_DEFAULT})
    return frozenset({_SWITCHES_DEFAULT})


def _check_config(conf: bytes, n: int, eb_abs: float) -> tuple[int, int, int]:
    """Check the configuration SZ3 appends to its payload; (algorithm, switches,
    block size).

    Layout: size (u8, the whole block), dimensions (u8), bit width of the dimensions
    (u8), the dimensions packed in that many bits each, element count (u64), algorithm
    (u8), error bound mode (u8), the ABS bound (f64), then the tail :data:`_TAIL`.
    """
    width = n.bit_length()
    dims_len = (width + 7) // 8
    want_len = 3 + dims_len + 8 + 2 + 8 + _TAIL.size
    if len(conf) != want_len or conf[0] != want_len:
        raise FormatError(f"sz3 payload: configuration of {len(conf)} bytes (declared "
                          f"{conf[0] if conf else 0}), expected {want_len}")
    if conf[1] != 1 or conf[2] != width or int.from_bytes(conf[3:3 + dims_len], "little") != n:
        raise FormatError(f"sz3 payload: dimensions are not ({n},)")
    pos = 3 + dims_len
    num, algo, eb_mode, bound = struct.unpack_from("<QBBd", conf, pos)
    if num != n:
        raise FormatError(f"sz3 payload: {num} elements, expected {n}")
    if eb_mode != _EB_ABS or bound != eb_abs:
        raise FormatError(f"sz3 payload: error bound mode {eb_mode} at {bound!r}, expected "
                          f"ABS at {eb_abs!r}")
    switches, _, _, block_size, _ = _TAIL.unpack_from(conf, pos + 18)
    if switches not in (_SWITCHES_DEFAULT, _SWITCHES_TUNED):
        raise FormatError(f"sz3 payload: predictor switches {switches:#x} are not fedpress's")
    if block_size < 1:
        raise FormatError(f"sz3 payload: block size {block_size}")
    return algo, switches, block_size


def _check_lossless_stage(payload: bytes, n: int, itemsize: int) -> int:
    """The payload is SZ3's lossless stage: the length of the inner stream (u64) and
    a zstd frame declaring that length, which ``n`` values could have produced."""
    zstd = require("zstandard", codec="sz3")
    if len(payload) < 8 + 4:
        raise FormatError("sz3 payload: lossless stage too short")
    inner = int.from_bytes(payload[:8], "little")
    if inner > 4 * n * itemsize + 4096:
        raise FormatError(f"sz3 payload: inner stream of {inner} bytes for {n} values")
    try:
        declared = zstd.get_frame_parameters(payload[8:]).content_size
    except zstd.ZstdError as exc:
        raise FormatError(f"sz3 payload: lossless stage is not a zstd frame: {exc}") from None
    if declared != inner:
        raise FormatError(f"sz3 payload: zstd frame declares {declared} bytes, SZ3 {inner}")
    return inner


def _check_block_counts(payload: bytes, n: int, switches: int, block_size: int) -> None:
    """The block-wise Lorenzo/regression stream starts with counts SZ3 allocates by:
    with regression, the number of regression coefficients (2 per block at most) and,
    if there are none, the number of block selections; without, the selections. A
    selection count must be the tensor's block count."""
    zstd = require("zstandard", codec="sz3")
    try:
        head = zstd.ZstdDecompressor().stream_reader(payload[8:]).read(16)
    except zstd.ZstdError as exc:
        raise FormatError(f"sz3 payload: lossless stage does not decompress: {exc}") from None
    if len(head) < 16:
        raise FormatError("sz3 payload: inner stream too short")
    first, second = struct.unpack("<QQ", head)
    blocks = math.ceil(n / block_size)
    if switches == _SWITCHES_TUNED:
        selections = first
    else:
        if first > _REG_COEFFS_PER_BLOCK * blocks or first % _REG_COEFFS_PER_BLOCK:
            raise FormatError(f"sz3 payload: {first} regression coefficients for {blocks} blocks")
        if first:
            return
        selections = second
    if selections != blocks:
        raise FormatError(f"sz3 payload: {selections} block selections for {blocks} blocks")


@lru_cache(maxsize=1)
def library_stamp() -> tuple[int, int]:
    """(magic, data version) the installed SZ3 writes, read from a stream it makes;
    FormatError if that stream's configuration is not the layout fedpress checks."""
    pysz = require("pysz", codec="sz3")
    n = 64
    cfg = pysz.szConfig((n,))
    cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
    cfg.absErrorBound = 1e-3
    cfg.cmprAlgo = pysz.szAlgorithm.NOPRED
    cfg.openmp = False
    out, _ = pysz.sz.compress(np.linspace(0.0, 1.0, n, dtype=np.float32), cfg)
    raw = np.asarray(out, dtype=np.uint8).tobytes()
    magic, version, payload_len = _HEADER.unpack_from(raw)
    try:
        _check_config(raw[_HEADER.size + payload_len:], n, 1e-3)
    except FormatError as exc:
        raise FormatError(f"sz3: this pysz writes an SZ3 layout fedpress does not know "
                          f"(data version {version:#x}): {exc}") from None
    return magic, version
