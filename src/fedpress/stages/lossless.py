"""Lossless bytes-to-bytes stages (zarr's ``BytesBytesCodec``): bytes in, bytes out.

fedpress's own codecs and coders squeeze their side tables (frequency tables, code
lengths, escape values, bitmaps) and their lossless fall-backs through a stage of
this module, :data:`ZSTD` (zstd level 3, the ``zstandard`` package, a core
dependency). The registered lossless codecs of :mod:`fedpress.backends.lossless` wrap
these stages, never the reverse: ``stages/`` imports nothing above it.

A stage codes bytes; :meth:`BytesStage.encode_array` and
:meth:`BytesStage.decode_array` add the one array mapping every caller uses (the
raw little-endian bytes of a C-ordered array). Decoding is told the exact number
of bytes to expect and never produces more (no decompression bombs); every bad
input raises :class:`fedpress.FormatError`.

Layout of a zstd stage's bytes: one zstd frame that declares its content size
(``zstandard``'s default), nothing before or after it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import IO, ClassVar, cast

import numpy as np
import zstandard

from ..dtypes import le_bytes
from ..errors import FormatError

Buffer = bytes | bytearray | memoryview


class BytesStage(ABC):
    """A lossless bytes-to-bytes stage.

    Subclasses implement :meth:`encode` and :meth:`decode`; the array helpers
    build on them.
    """

    #: the stage's name (``"zstd"``)
    name: ClassVar[str]

    @abstractmethod
    def encode(self, data: Buffer) -> bytes:
        """Compress ``data``.

        Parameters
        ----------
        data : bytes-like
            The bytes to code.

        Returns
        -------
        bytes
            The coded bytes.
        """

    @abstractmethod
    def decode(self, data: Buffer, expected: int) -> bytes:
        """Decompress bytes written by :meth:`encode`.

        Parameters
        ----------
        data : bytes-like
            Coded bytes (possibly hostile).
        expected : int
            The exact number of bytes they must decode to.

        Returns
        -------
        bytes
            Exactly ``expected`` bytes.

        Raises
        ------
        FormatError
            If ``data`` is not a stream of exactly ``expected`` bytes.
        """

    def encode_array(self, x: np.ndarray) -> bytes:
        """:meth:`encode` of the raw little-endian bytes of ``x`` (C order)."""
        return self.encode(le_bytes(x))

    def decode_array(self, data: Buffer, shape: Sequence[int] | int,
                     dtype: np.dtype | type | str) -> np.ndarray:
        """The array of ``shape`` and ``dtype`` that :meth:`encode_array` coded.

        Parameters
        ----------
        data : bytes-like
            Coded bytes (possibly hostile).
        shape : int or sequence of int
            The array's shape, known to the caller (it sets the bytes expected).
        dtype : numpy dtype
            The array's dtype (read little-endian).

        Returns
        -------
        numpy.ndarray
            A new, writeable array.

        Raises
        ------
        FormatError
            If ``data`` does not decode to exactly the array's bytes.
        """
        dt = np.dtype(dtype)
        dims = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        expected = int(np.prod(dims, dtype=object)) * dt.itemsize
        raw = self.decode(data, expected)
        return np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt).reshape(dims)


class ZstdStage(BytesStage):
    """Zstandard at a fixed level (1-22), one frame with its content size.

    Parameters
    ----------
    level : int
        zstd compression level (default 3, what fedpress's codecs use).
    """

    name = "zstd"
    #: the levels zstd accepts here
    LEVELS: ClassVar[tuple[int, int]] = (1, 22)

    def __init__(self, level: int = 3) -> None:
        lo, hi = self.LEVELS
        if isinstance(level, bool) or not isinstance(level, int) or not lo <= level <= hi:
            raise ValueError(f"zstd level must be an int in [{lo}, {hi}], got {level!r}")
        self.level = level

    def __repr__(self) -> str:
        return f"ZstdStage(level={self.level})"

    def encode(self, data: Buffer) -> bytes:
        return zstandard.ZstdCompressor(level=self.level).compress(bytes(data))

    def decode(self, data: Buffer, expected: int) -> bytes:
        try:
            raw = zstd_decompress(bytes(data), expected)
        except FormatError:
            raise
        except Exception as exc:  # whatever zstandard makes of hostile bytes
            raise FormatError(f"zstd payload: cannot decompress: {exc}") from exc
        if len(raw) != expected:  # zstd_decompress checks it; kept as a second guard
            raise FormatError(f"zstd payload: {len(raw)} bytes decoded, expected {expected}")
        return raw

    def decode_into(self, data: memoryview, out: np.ndarray, what: str) -> None:
        """Decompress one frame straight into ``out`` (C-contiguous; its bytes are
        filled in little-endian order, then swapped on big-endian hosts), streaming:
        no copy of the whole input or output is made.

        ``what`` starts the messages of the :class:`FormatError` raised on a frame
        that is not exactly ``out.nbytes`` bytes.
        """
        expected = out.nbytes
        try:
            declared = zstandard.get_frame_parameters(bytes(data[:18])).content_size
        except zstandard.ZstdError as exc:
            raise FormatError(f"{what}: {exc}") from None
        if declared != expected:
            raise FormatError(f"{what}: its frame declares {declared} bytes, expected {expected}")
        writer = _ArrayWriter(out.reshape(-1).view(np.uint8).data)
        try:
            read, _ = zstandard.ZstdDecompressor().copy_stream(
                cast(IO[bytes], _SliceReader(data)), cast(IO[bytes], writer))
        except zstandard.ZstdError as exc:
            raise FormatError(f"{what}: cannot decompress: {exc}") from None
        if writer.pos != expected or read != len(data):
            raise FormatError(f"{what}: truncated, trailing bytes or wrong size")
        if not np.little_endian:
            out.byteswap(inplace=True)


def zstd_decompress(data: bytes, expected: int) -> bytes:
    """Decompress exactly one zstd frame of exactly ``expected`` bytes.

    The frame must declare its content size (fedpress always writes it), and
    zstd checks the decoded size against it, so nothing larger is produced;
    bytes after the frame are refused. Raises :class:`FormatError` on a wrong
    size, ``zstandard.ZstdError`` on a corrupt frame (:meth:`ZstdStage.decode`
    turns both into FormatError).
    """
    params = zstandard.get_frame_parameters(data)
    if params.content_size != expected:
        raise FormatError(f"zstd frame declares {params.content_size} bytes, expected {expected}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = dobj.decompress(data)
    if not dobj.eof or dobj.unused_data or len(out) != expected:
        raise FormatError("zstd payload: truncated, trailing bytes or wrong size")
    return out


class _SliceReader:
    """A file-like reader over a buffer (no copy of the whole buffer)."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else min(len(self.data), self.pos + size)
        chunk = bytes(self.data[self.pos:end])
        self.pos = end
        return chunk


class _ArrayWriter:
    """A file-like writer into a preallocated buffer that refuses to overflow it."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def write(self, data: bytes) -> int:
        end = self.pos + len(data)
        if end > len(self.buf):
            raise FormatError("lossless body expands past the tensor's size")
        self.buf[self.pos:end] = data
        self.pos = end
        return len(data)


#: the stage fedpress's own codecs and coders use (zstd level 3)
ZSTD = ZstdStage(level=3)

__all__ = ["ZSTD", "BytesStage", "ZstdStage", "zstd_decompress"]
