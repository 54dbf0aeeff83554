"""Tensor dtypes on the wire and conversion of user tensors to numpy.

Accepted inputs are numpy arrays, torch tensors (moved to CPU, detached) and
anything ``numpy.asarray`` understands. ``bfloat16`` is represented by
``ml_dtypes.bfloat16`` on the numpy side, so decoding returns the dtype that
was encoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from .errors import ConfigError, FormatError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

#: wire code -> numpy dtype (little-endian on the wire). Codes never change.
_CODES: dict[int, np.dtype] = {
    1: np.dtype("float32"),
    2: np.dtype("float64"),
    3: np.dtype("float16"),
    4: BFLOAT16,
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
_BY_NAME = {dt.name: code for code, dt in _CODES.items()}

FLOAT_DTYPES = frozenset({np.dtype("float32"), np.dtype("float64"), np.dtype("float16"), BFLOAT16})


def dtype_code(dtype: np.dtype) -> int:
    """Wire code of a numpy dtype; ConfigError for dtypes fedpress cannot carry."""
    try:
        return _BY_NAME[np.dtype(dtype).name]
    except KeyError:
        raise ConfigError(
            f"dtype {np.dtype(dtype)} is not supported; supported: {sorted(_BY_NAME)}"
        ) from None


def dtype_from_code(code: int) -> np.dtype:
    try:
        return _CODES[code]
    except KeyError:
        raise FormatError(f"unknown dtype code {code}") from None


def is_float(dtype: np.dtype) -> bool:
    return np.dtype(dtype) in FLOAT_DTYPES


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
            arr = t.contiguous().view(torch.int16).numpy().view(BFLOAT16)
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
    if arr.dtype == BFLOAT16:
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def le_bytes(arr: np.ndarray) -> bytes:
    """Raw little-endian bytes of an array in C order."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


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
