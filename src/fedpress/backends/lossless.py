"""Lossless codecs: raw, zstd, blosc-lz, blosc-zstd, zlib, gzip, xz, lz4.

They code the raw little-endian bytes of any dtype and round-trip bit-exactly
(NaN payloads and -0.0 included). Every decoder is told the exact number of
bytes to expect and never produces more (no decompression bombs).

``blosc-lz`` (BloscLZ, FedSZ's lossless coder) and ``blosc-zstd`` apply
blosc's byte shuffle with the tensor's item size first.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from abc import abstractmethod
from typing import ClassVar

import numpy as np

from .._deps import require
from ..abc import Codec, TensorSpec
from ..dtypes import le_bytes
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..stages.lossless import ZstdStage, zstd_decompress


class LosslessCodec(Codec):
    """Base of byte-oriented lossless codecs with a ``level`` option."""

    lossy = False
    config_keys: ClassVar[tuple[str, ...]] = ("level",)
    level_range: ClassVar[tuple[int, int]] = (0, 9)
    default_level: ClassVar[int] = 5

    def __init__(self, level: int | None = None) -> None:
        lo, hi = self.level_range
        level = self.default_level if level is None else level
        if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
            raise ConfigError(f"codec {self.codec_id!r}: level must be an int in [{lo}, {hi}]")
        self.level = level

    @abstractmethod
    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        """Compress raw bytes."""

    @abstractmethod
    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        """Decompress into at most ``expected`` bytes (may raise anything on bad data)."""

    def encode(self, x: np.ndarray) -> bytes:
        return self.compress_bytes(le_bytes(x), max(1, x.dtype.itemsize))

    def decode(self, payload: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
        expected = spec.nbytes
        try:
            raw = self.decompress_bytes(bytes(payload), expected)
        except FormatError:
            raise
        except Exception as exc:
            raise FormatError(f"{self.codec_id} payload: cannot decompress: {exc}") from exc
        if len(raw) != expected:
            raise FormatError(
                f"{self.codec_id} payload: {len(raw)} bytes decoded, expected {expected}"
            )
        dt = np.dtype(spec.dtype)
        return np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt).reshape(spec.shape)


def _bounded_stream(decomp: object, data: bytes, expected: int) -> bytes:
    """Run a zlib/lzma-style decompressor object, refusing output past ``expected``."""
    out = decomp.decompress(data, expected + 1)  # type: ignore[attr-defined]
    if len(out) > expected:
        raise FormatError(f"payload expands past the declared {expected} bytes")
    if not decomp.eof:  # type: ignore[attr-defined]
        raise FormatError("compressed stream is truncated")
    if decomp.unused_data:  # type: ignore[attr-defined]
        raise FormatError("trailing bytes after the compressed stream")
    return out


@register_codec
class ZstdCodec(LosslessCodec):
    """Zstandard (``zstandard`` package), levels 1-22, default 3: the registered face
    of :class:`fedpress.stages.lossless.ZstdStage`."""

    codec_id = "zstd"
    level_range = (1, 22)
    default_level = 3

    def __init__(self, level: int | None = None) -> None:
        super().__init__(level)
        self.stage = ZstdStage(self.level)

    def check_available(self) -> None:
        require("zstandard", codec=self.codec_id)

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        return self.stage.encode(data)

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        return zstd_decompress(data, expected)


@register_codec
class RawCodec(LosslessCodec):
    """The tensor's little-endian bytes as they are (no coding; the cheapest to run)."""

    codec_id = "raw"
    config_keys: ClassVar[tuple[str, ...]] = ()
    level_range = (0, 0)
    default_level = 0

    def __init__(self) -> None:
        super().__init__(0)

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        return data

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        if len(data) != expected:
            raise FormatError(f"raw payload: {len(data)} bytes, expected {expected}")
        return data


@register_codec
class ZlibCodec(LosslessCodec):
    """zlib (DEFLATE with zlib header), levels 0-9, default 6."""

    codec_id = "zlib"
    default_level = 6

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        return zlib.compress(data, self.level)

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        return _bounded_stream(zlib.decompressobj(), data, expected)


@register_codec
class GzipCodec(LosslessCodec):
    """gzip (DEFLATE with gzip header, mtime 0 so output is reproducible)."""

    codec_id = "gzip"
    default_level = 6

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        return gzip.compress(data, compresslevel=self.level, mtime=0)

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        return _bounded_stream(zlib.decompressobj(wbits=31), data, expected)


@register_codec
class XzCodec(LosslessCodec):
    """xz / LZMA2 (``lzma`` preset 0-9, default 6)."""

    codec_id = "xz"
    default_level = 6

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=self.level)

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        return _bounded_stream(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), data, expected)


@register_codec
class Lz4Codec(LosslessCodec):
    """LZ4 block format (``lz4`` package); level 0 = fast mode, 1-12 = high compression."""

    codec_id = "lz4"
    level_range = (0, 12)
    default_level = 0

    def check_available(self) -> None:
        require("lz4.block", package="lz4", codec=self.codec_id)

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        lz4_block = require("lz4.block", package="lz4", codec=self.codec_id)
        if self.level == 0:
            return bytes(lz4_block.compress(data, mode="default", store_size=False))
        return bytes(lz4_block.compress(data, mode="high_compression",
                                        compression=self.level, store_size=False))

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        lz4_block = require("lz4.block", package="lz4", codec=self.codec_id)
        if expected == 0:
            if data not in (b"", b"\x00"):
                raise FormatError("lz4 payload: data for an empty tensor")
            return b""
        return bytes(lz4_block.decompress(data, uncompressed_size=expected))


class _BloscCodec(LosslessCodec):
    """blosc2 with byte shuffle (item size of the tensor), one thread."""

    blosc_codec: ClassVar[str] = ""

    def check_available(self) -> None:
        require("blosc2", codec=self.codec_id)

    def compress_bytes(self, data: bytes, itemsize: int) -> bytes:
        blosc2 = require("blosc2", codec=self.codec_id)
        return bytes(blosc2.compress2(
            data, codec=getattr(blosc2.Codec, self.blosc_codec), clevel=self.level,
            typesize=min(itemsize, 255), filters=[blosc2.Filter.SHUFFLE], nthreads=1,
        ))

    def decompress_bytes(self, data: bytes, expected: int) -> bytes:
        blosc2 = require("blosc2", codec=self.codec_id)
        if len(data) < 32:  # blosc2's extended header is 32 bytes
            raise FormatError("blosc payload: shorter than its header")
        nbytes, cbytes, _ = blosc2.get_cbuffer_sizes(data)
        if nbytes != expected or cbytes != len(data):
            raise FormatError(
                f"blosc payload declares {nbytes} bytes in {cbytes}, expected {expected} in "
                f"{len(data)}"
            )
        return bytes(blosc2.decompress2(data, nthreads=1))


@register_codec
class BloscLzCodec(_BloscCodec):
    """BloscLZ with byte shuffle (FedSZ's lossless coder), clevel 0-9, default 5."""

    codec_id = "blosc-lz"
    blosc_codec = "BLOSCLZ"


@register_codec
class BloscZstdCodec(_BloscCodec):
    """Zstd inside blosc2 with byte shuffle, clevel 0-9, default 5."""

    codec_id = "blosc-zstd"
    blosc_codec = "ZSTD"


LOSSLESS_IDS = ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4")
