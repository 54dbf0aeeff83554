"""SZ2 through the HDF5 SZ filter (id 32017) that ``hdf5plugin`` ships.

SZ2 has no maintained Python binding; hdf5plugin builds the real SZ2 library
as an HDF5 filter. Each call writes the flattened tensor as one chunk into an
in-memory HDF5 file (``driver="core"``, no backing store) and takes the raw
filtered chunk; decoding writes the chunk back and reads the dataset.

Core layout: one tag byte, then either SZ2's stream (tag 0; it carries its own
parameters) or the raw values (tag 1). The filter passes very small chunks
(about 20 values and fewer) through unchanged, and SZ2's decoder, given such
raw bytes, calls ``exit()``; the tag keeps them away from it.

SZ2's encoder segfaults on some tensors when the absolute bound is below the core
dtype's smallest normal number (float32: 1.18e-38, e.g. a float16 tensor under
``abs`` 1e-39; float64: 2.2e-308, e.g. a float64 tensor of subnormal range in ``rel``
mode). Such a bound asks for every value exactly anyway, so those tensors are coded
raw (tag 1) and the envelope stores them losslessly; SZ2 never sees them.

SZ2's decoder does not validate its stream: crafted bytes make it segfault or call
``exit()``. The codec is therefore not ``peer_safe``: the default
:class:`fedpress.Limits` refuse it, and a decoder facing peers opts in by decoding it
in a child process (``Limits(isolate={"sz2"})``).
"""

from __future__ import annotations

import uuid
from types import ModuleType
from typing import ClassVar

import numpy as np

from .._deps import require
from ..eblc.base import ErrorBoundedCodec
from ..errors import FormatError, MissingDependencyError
from ..registry import register_codec

_TAG_SZ2, _TAG_RAW = b"\x00", b"\x01"


def _name() -> str:
    """A unique in-memory file name (HDF5 refuses two open files of one name: threads)."""
    return f"fedpress-sz2-{uuid.uuid4().hex}.h5"


def _h5() -> tuple[ModuleType, ModuleType]:
    """h5py and hdf5plugin, with hdf5plugin's SZ filter registered; else
    MissingDependencyError naming the package."""
    h5py = require("h5py", codec="sz2")
    hdf5plugin = require("hdf5plugin", codec="sz2")
    try:
        built = bool(h5py.h5z.filter_avail(hdf5plugin.SZ_ID))
    except Exception:  # an hdf5plugin without the SZ filter has no SZ_ID
        built = False
    if not built:
        raise MissingDependencyError(
            "codec 'sz2' needs the SZ filter of the Python package 'hdf5plugin', which "
            "this installation does not provide; install a build with it: "
            "pip install hdf5plugin")
    return h5py, hdf5plugin


def sz2_can_code(x: np.ndarray, eb_abs: float) -> bool:
    """Whether SZ2's encoder may be given ``x`` (float32/float64) under ``eb_abs``:
    not below the dtype's smallest normal number, where it crashes on some data."""
    return eb_abs >= float(np.finfo(x.dtype).tiny)


@register_codec
class SZ2Codec(ErrorBoundedCodec):
    """SZ2 (hdf5plugin's SZ filter, absolute mode), float32/float64 cores."""

    codec_id = "sz2"
    core_float64 = True
    peer_safe: ClassVar[bool] = False

    def _core_decode_extra_bytes(self, n: int, dtype: np.dtype) -> int:
        """SZ2's and HDF5's buffers while decoding: about 5.8 (float32) and 8.6
        (float64) bytes a value, measured."""
        return 9 * n

    def check_available(self) -> None:
        _h5()

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        if not sz2_can_code(x, eb_abs):
            return _TAG_RAW + np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).tobytes()
        h5py, hdf5plugin = _h5()
        with h5py.File(_name(), "w", driver="core", backing_store=False) as f:
            ds = f.create_dataset("x", data=x, chunks=(x.size,),
                                  **hdf5plugin.SZ(absolute=float(eb_abs)))
            f.flush()
            mask, chunk = ds.id.read_direct_chunk((0,))
        if mask != 0:
            raise RuntimeError("HDF5 skipped the SZ2 filter; is hdf5plugin's SZ filter built?")
        raw = x.tobytes()
        if len(chunk) == len(raw) and bytes(chunk) == raw:
            return _TAG_RAW + raw
        return _TAG_SZ2 + bytes(chunk)

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        if len(data) < 2:
            raise FormatError("sz2 payload: empty SZ2 stream")
        tag, data = bytes(data[:1]), data[1:]
        if tag == _TAG_RAW:
            if len(data) != n * dtype.itemsize:
                raise FormatError("sz2 payload: raw chunk of the wrong size")
            return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
        if tag != _TAG_SZ2:
            raise FormatError(f"sz2 payload: unknown tag {tag!r}")
        h5py, hdf5plugin = _h5()
        with h5py.File(_name(), "w", driver="core", backing_store=False) as f:
            ds = f.create_dataset("x", shape=(n,), dtype=dtype, chunks=(n,),
                                  **hdf5plugin.SZ(absolute=float(eb_abs) or 1.0))
            ds.id.write_direct_chunk((0,), bytes(data), filter_mask=0)
            return ds[...]
