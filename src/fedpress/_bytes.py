"""Bounds-checked little-endian byte reader and writer used by the wire format.

The reader never reads past the end of its buffer and never allocates more
than the bytes that are actually present; every violation raises
:class:`fedpress.FormatError`.
"""

from __future__ import annotations

import struct

import numpy as np
from numpy.typing import DTypeLike

from .errors import FormatError

_MAX_VARINT_BYTES = 10


class Writer:
    """Append-only byte buffer with varint and fixed-width helpers."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes | bytearray | memoryview) -> None:
        self._parts.append(bytes(data))

    def u8(self, value: int) -> None:
        self._parts.append(struct.pack("<B", value))

    def u32(self, value: int) -> None:
        self._parts.append(struct.pack("<I", value))

    def f64(self, value: float) -> None:
        self._parts.append(struct.pack("<d", value))

    def varint(self, value: int) -> None:
        if value < 0:
            raise ValueError("varint must be non-negative")
        out = bytearray()
        while True:
            byte = value & 0x7F
            value >>= 7
            if value:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
        self._parts.append(bytes(out))

    def blob(self, data: bytes | bytearray | memoryview) -> None:
        """Length-prefixed (varint) byte string."""
        data = bytes(data)
        self.varint(len(data))
        self._parts.append(data)

    def text(self, value: str) -> None:
        self.blob(value.encode("utf-8"))

    def smallest(self, options: dict[int, bytes]) -> int:
        """Write the shortest of ``options`` (method byte -> bytes; ties go to the lower
        byte) as its method byte and a blob; returns the method."""
        method = min(options, key=lambda m: (len(options[m]), m))
        self.u8(method)
        self.blob(options[method])
        return method

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Sequential reader over a bytes-like object; raises FormatError on overrun."""

    def __init__(self, data: bytes | bytearray | memoryview, what: str = "payload") -> None:
        self._buf = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self._buf) - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.remaining:
            raise FormatError(
                f"{self.what}: truncated (needs {n} bytes at offset {self.pos}, "
                f"{self.remaining} present)"
            )
        view = self._buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def f64(self) -> float:
        return float(struct.unpack("<d", self.take(8))[0])

    def varint(self, cap: int | None = None, name: str = "value") -> int:
        result = 0
        shift = 0
        for _ in range(_MAX_VARINT_BYTES):
            byte = self.u8()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        else:
            raise FormatError(f"{self.what}: varint too long at offset {self.pos}")
        if cap is not None and result > cap:
            raise FormatError(f"{self.what}: {name} {result} exceeds the limit {cap}")
        return result

    def blob(self, cap: int | None = None, name: str = "field") -> memoryview:
        n = self.varint(cap=cap, name=f"{name} length")
        return self.take(n)

    def text(self, cap: int = 1 << 16, name: str = "text") -> str:
        raw = self.blob(cap=cap, name=name)
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{self.what}: {name} is not valid UTF-8") from exc

    def array(self, dtype: DTypeLike, count: int) -> np.ndarray:
        """Read ``count`` little-endian items of ``dtype`` (a copy, owned)."""
        dt = np.dtype(dtype).newbyteorder("<")
        raw = self.take(count * dt.itemsize)
        return np.frombuffer(raw, dtype=dt).copy()

    def rest(self) -> memoryview:
        return self.take(self.remaining)

    def expect_end(self) -> None:
        if self.remaining:
            raise FormatError(f"{self.what}: {self.remaining} unexpected trailing bytes")
