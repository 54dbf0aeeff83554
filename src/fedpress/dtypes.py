"""Tensor dtypes on the wire and conversion of user tensors to numpy.

Accepted inputs are numpy arrays, torch tensors (moved to CPU, detached) and
anything ``numpy.asarray`` understands. ``bfloat16`` is represented by
``ml_dtypes.bfloat16`` on the numpy side, so decoding returns the dtype that
was encoded.

``ml_dtypes`` takes longer to import than the rest of fedpress together, so it is
imported only when a bfloat16 tensor is decoded or converted (:func:`bfloat16`);
an array that already has that dtype means the user's code imported it.
``BFLOAT16`` and ``FLOAT_DTYPES`` are still module attributes, computed on first
access.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ConfigError, FormatError

_BFLOAT16_CODE = 4

#: wire code -> numpy dtype (little-endian on the wire). Codes never change. Code 4 is
#: bfloat16 (:func:`bfloat16`).
_CODES: dict[int, np.dtype] = {
    1: np.dtype("float32"),
    2: np.dtype("float64"),
    3: np.dtype("float16"),
    10: np.dtype("int8"),
    11: np.dtype("uint8"),
    12: np.dtype("int16"),
    13: np.dtype("uint16"),
    14: np.dtype("int32"),
    15: np.dtype("uint32"),
    16: np.dtype("int64"),
    17: np.dtype("uint64"),
    18: np.dtype("bool"),
}
_BY_NAME = {dt.name: code for code, dt in _CODES.items()} | {"bfloat16": _BFLOAT16_CODE}

_NATIVE_FLOATS = frozenset({np.dtype("float32"), np.dtype("float64"), np.dtype("float16")})


@functools.cache
def bfloat16() -> np.dtype:
    """The numpy dtype ``ml_dtypes.bfloat16`` (imports ``ml_dtypes`` on the first call)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def __getattr__(name: str) -> Any:
    """``BFLOAT16`` and ``FLOAT_DTYPES``, which need ``ml_dtypes``, on first access."""
    if name == "BFLOAT16":
        return bfloat16()
    if name == "FLOAT_DTYPES":
        return _NATIVE_FLOATS | {bfloat16()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_bfloat16(dtype: np.dtype) -> bool:
    # an ml_dtypes bfloat16 array exists only once ml_dtypes is imported, so the name
    # check comes first and the import happens only for a dtype of that name
    return dtype.name == "bfloat16" and dtype == bfloat16()


def dtype_code(dtype: np.dtype) -> int:
    """Wire code of a numpy dtype; ConfigError for dtypes fedpress cannot carry."""
    dt = np.dtype(dtype)
    code = _BY_NAME.get(dt.name)
    if code is None or (code == _BFLOAT16_CODE and not _is_bfloat16(dt)):
        raise ConfigError(f"dtype {dt} is not supported; supported: {sorted(_BY_NAME)}")
    return code


def dtype_from_code(code: int) -> np.dtype:
    """The numpy dtype of a wire code; FormatError for an unknown code."""
    if code == _BFLOAT16_CODE:
        return bfloat16()
    try:
        return _CODES[code]
    except KeyError:
        raise FormatError(f"unknown dtype code {code}") from None


def is_float(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is one of the floating dtypes fedpress carries."""
    dt = np.dtype(dtype)
    return dt in _NATIVE_FLOATS or _is_bfloat16(dt)


def to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array or torch tensor to a C-contiguous, native-order numpy array.

    Torch ``bfloat16`` becomes ``ml_dtypes.bfloat16``. The data are copied only
    where needed.
    """
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach().cpu()
        if t.dtype == torch.bfloat16:
            arr = t.contiguous().view(torch.int16).numpy().view(bfloat16())
        else:
            try:
                arr = t.contiguous().numpy()
            except TypeError as exc:
                raise ConfigError(f"torch dtype {t.dtype} is not supported") from exc
    else:
        arr = np.asarray(x)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
        arr = arr.copy(order="C")
    dtype_code(arr.dtype)  # validate early with a clear message
    return arr


def to_torch(arr: np.ndarray) -> Any:
    """Convert a decoded numpy array to a torch tensor (bfloat16 kept)."""
    import torch

    if not arr.flags.c_contiguous or not arr.flags.writeable:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn 0-d into 1-d)
    if _is_bfloat16(arr.dtype):
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def le_bytes(arr: np.ndarray) -> bytes:
    """Raw little-endian bytes of an array in C order."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def le_buffer(arr: np.ndarray) -> memoryview | bytes:
    """The bytes of :func:`le_bytes`, as a view of the array's memory when it is
    C-contiguous and not big-endian (no copy: for hashing large arrays), else a copy."""
    a = np.asarray(arr)
    if a.flags.c_contiguous and a.dtype.byteorder != ">" and not a.dtype.hasobject:
        try:
            return memoryview(a.reshape(-1).view(np.uint8))
        except (ValueError, TypeError):  # a dtype without a byte view: copy
            pass
    return le_bytes(a)


def as_state_dict(obj: Any) -> dict[str, np.ndarray]:
    """Numpy view of a state dict (a mapping of names to arrays/tensors, or a torch module)."""
    if not isinstance(obj, Mapping) and callable(getattr(obj, "state_dict", None)):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ConfigError(f"expected a state dict (a mapping of names to tensors), got {type(obj)}")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ConfigError(f"state dict keys must be strings, got {name!r}")
        out[name] = to_numpy(value)
    return out
