"""Load and save tensors and state dicts: ``.npy``, ``.npz``, ``.safetensors``, ``.pt``.

:func:`load_tensors` returns ``{name: numpy array}`` whatever the format, with
torch ``bfloat16`` kept as ``ml_dtypes.bfloat16`` (see :mod:`fedpress.dtypes`);
:func:`save_tensors` writes such a dict back. The format follows the file's
extension:

``.npy``
    one array; its name is the file's stem. Saving needs exactly one tensor.
``.npz``
    a numpy zip archive, read without pickle (``allow_pickle=False``).
``.safetensors``
    through ``safetensors.numpy``, or ``safetensors.torch`` (and torch) when a
    tensor is ``bfloat16``. Needs the ``safetensors`` package.
``.pt`` / ``.pth``
    a torch file read with ``torch.load(..., weights_only=True)`` (no
    arbitrary pickles): a state dict, or a checkpoint dict holding one under
    ``"state_dict"`` or ``"model_state_dict"``. Needs ``torch``.

numpy has no ``bfloat16`` of its own, so ``.npy`` / ``.npz`` files store a
``bfloat16`` array as a structured array with one ``uint16`` field named
``"bfloat16"`` (plain numpy reads it without pickle; the field name says what
the bits are). Reading also takes an unstructured 2-byte void array, which is
what ``numpy.save`` writes for an ``ml_dtypes.bfloat16`` array.

Unreadable files, unknown extensions and content that is not a flat mapping of
names to tensors raise :class:`fedpress.ConfigError`; a missing optional
library raises :class:`fedpress.MissingDependencyError`.

Every file is written atomically (:func:`replaced_atomically`): into a temporary
file beside the destination, flushed to disk, then renamed over it, so an
interrupted write (Ctrl-C, a full disk, an error) leaves the previous file whole
and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .dtypes import as_state_dict, bfloat16, to_numpy, to_torch
from .errors import ConfigError, FedpressError, MissingDependencyError

__all__ = ["SUPPORTED_EXTENSIONS", "format_of", "load_tensors", "replaced_atomically",
           "save_tensors", "write_bytes_atomically"]

#: extension -> format name
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".npy": "npy",
    ".npz": "npz",
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
}

#: checkpoint keys under which a ``.pt`` file may hold its state dict
STATE_DICT_KEYS = ("state_dict", "model_state_dict")

#: structured dtype used for bfloat16 arrays in .npy/.npz files
NPY_BFLOAT16 = np.dtype([("bfloat16", "<u2")])

PathLike = str | os.PathLike[str]


def format_of(path: PathLike) -> str:
    """The format of ``path`` from its extension (``npy``, ``npz``, ``safetensors``, ``torch``).

    Raises
    ------
    ConfigError
        The extension is not one of :data:`SUPPORTED_EXTENSIONS`.
    """
    suffix = Path(path).suffix.lower()
    try:
        return SUPPORTED_EXTENSIONS[suffix]
    except KeyError:
        raise ConfigError(
            f"cannot tell the format of {str(path)!r} from its extension {suffix or '(none)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        ) from None


def load_tensors(path: PathLike) -> dict[str, np.ndarray]:
    """Read the tensors of a ``.npy``, ``.npz``, ``.safetensors`` or ``.pt``/``.pth`` file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its extension picks the format.

    Returns
    -------
    dict of str to numpy.ndarray
        Names to C-contiguous arrays in their stored dtype (``bfloat16`` as
        ``ml_dtypes.bfloat16``), in the file's order.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ConfigError
        Unknown extension, unreadable or malformed file, pickled objects,
        non-tensor values or unsupported dtypes.
    MissingDependencyError
        ``torch`` or ``safetensors`` is needed and not installed.
    """
    fmt = format_of(path)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if p.is_dir():
        raise ConfigError(f"{str(path)!r} is a directory, not a tensor file")
    loader = {"npy": _load_npy, "npz": _load_npz, "safetensors": _load_safetensors,
              "torch": _load_torch}[fmt]
    try:
        return loader(p)
    except (FedpressError, FileNotFoundError, PermissionError):
        raise
    except Exception as exc:  # any parser's own error on a malformed file
        raise ConfigError(f"cannot read {str(path)!r} as a {fmt} file: {_short(exc)}") from exc


def save_tensors(tensors: Mapping[str, Any], path: PathLike) -> None:
    """Write named tensors to a ``.npy``, ``.npz``, ``.safetensors`` or ``.pt``/``.pth`` file.

    Parameters
    ----------
    tensors : mapping of str to array-like or torch.Tensor
        What to write; values are converted with :func:`fedpress.dtypes.to_numpy`.
    path : str or os.PathLike
        Destination (overwritten); its extension picks the format. ``.npy``
        takes exactly one tensor; ``.pt`` stores torch tensors (a state dict).

    Raises
    ------
    ConfigError
        Unknown extension, non-string names, unsupported dtypes, or not
        exactly one tensor for ``.npy``.
    MissingDependencyError
        ``torch`` or ``safetensors`` is needed and not installed.
    """
    fmt = format_of(path)
    arrays = as_state_dict(tensors)
    writer = {"npy": _save_npy, "npz": _save_npz, "safetensors": _save_safetensors,
              "torch": _save_torch}[fmt]
    with replaced_atomically(path) as tmp:
        writer(arrays, tmp)


# -- atomic writes ------------------------------------------------------------


@contextlib.contextmanager
def replaced_atomically(path: PathLike) -> Iterator[Path]:
    """A new temporary file beside ``path`` to write; it replaces ``path`` when the block ends.

    On success the file is flushed to disk and renamed over ``path`` (``os.replace``;
    a symbolic link is followed, an existing file's permissions kept); on any
    failure, Ctrl-C included, it is removed. ``path`` so holds either its old
    content or the whole new one.

    Parameters
    ----------
    path : str or os.PathLike
        The destination; its directory must exist.

    Yields
    ------
    pathlib.Path
        The temporary file (created empty, named ``.<name>.<random>.tmp``).
    """
    target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    tmp = _new_temp_beside(target)
    try:
        yield tmp
        _fsync(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(target.parent)


def write_bytes_atomically(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`replaced_atomically`."""
    with replaced_atomically(path) as tmp:
        tmp.write_bytes(data)


def save_png(fig: Any, path: PathLike, dpi: int = 110) -> None:
    """Save a matplotlib figure as a PNG that replaces ``path`` whole or not at all."""
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def _new_temp_beside(target: Path) -> Path:
    """Create an empty file of a fresh name in ``target``'s directory (permissions as
    a new file's under the umask)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - 48 random bits taken
            continue
        return tmp


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk; file systems that cannot
    sync a directory are let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


# -- helpers ------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _checked(name: str, value: Any) -> np.ndarray:
    try:
        return to_numpy(value)
    except ConfigError as exc:
        raise ConfigError(f"tensor {name!r}: {exc}") from None


# -- numpy --------------------------------------------------------------------


def _from_npy(name: str, arr: np.ndarray) -> np.ndarray:
    """Undo the bfloat16 encoding of .npy/.npz files and check the dtype."""
    if arr.dtype == NPY_BFLOAT16 or (arr.dtype.kind == "V" and arr.dtype.names is None
                                     and arr.dtype.itemsize == 2):
        arr = _contiguous(arr).view(np.uint16).view(bfloat16())
    elif arr.dtype.names is not None:
        raise ConfigError(f"tensor {name!r}: structured dtype {arr.dtype} is not a tensor dtype")
    return _checked(name, arr)


def _to_npy(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.name == "bfloat16":
        return _contiguous(arr).view(np.uint16).astype("<u2").view(NPY_BFLOAT16)
    return arr


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _check_magic(path: Path, magics: tuple[bytes, ...], what: str) -> None:
    # without this np.load would try to unpickle anything else
    with open(path, "rb") as f:
        head = f.read(8)
    if not any(head.startswith(m) for m in magics):
        raise ConfigError(f"{str(path)!r} is not a {what} (wrong signature bytes)")


def _load_npy(path: Path) -> dict[str, np.ndarray]:
    _check_magic(path, (_NPY_MAGIC,), ".npy file")
    arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray):  # np.load gives an NpzFile for a zip archive
        raise ConfigError(f"{str(path)!r} is not a .npy file (a .npz archive?)")
    return {path.stem: _from_npy(path.stem, arr)}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    _check_magic(path, (*_ZIP_MAGIC, _NPY_MAGIC), ".npz archive")
    npz = np.load(path, allow_pickle=False)
    if isinstance(npz, np.ndarray):  # np.load reads a .npy file whatever its name
        raise ConfigError(f"{str(path)!r} is a .npy file, not a .npz archive")
    with npz:
        return {name: _from_npy(name, npz[name]) for name in npz.files}


def _save_npy(arrays: dict[str, np.ndarray], path: Path) -> None:
    if len(arrays) != 1:
        raise ConfigError(
            f"a .npy file holds exactly one tensor, got {len(arrays)}; use .npz, .safetensors "
            "or .pt for several"
        )
    (arr,) = arrays.values()
    with open(path, "wb") as f:
        np.lib.format.write_array(f, _to_npy(arr), allow_pickle=False)


def _save_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    # written like numpy.savez, but any tensor name works (savez's own keyword
    # arguments such as 'file' would clash with names passed as **kwargs)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, _to_npy(arr), allow_pickle=False)


# -- safetensors --------------------------------------------------------------


def _safetensors_dtypes(path: Path) -> set[str]:
    """The dtype names in a safetensors header (8-byte length + JSON)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ConfigError(f"{str(path)!r} is too short to be a safetensors file")
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n > size - 8 or n > 100 << 20:
            raise ConfigError(f"{str(path)!r}: safetensors header length {n} is invalid")
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise ConfigError(f"{str(path)!r}: safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{str(path)!r}: safetensors header is not an object")
    return {str(v.get("dtype")) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}


def _torch_or_none() -> Any:
    try:
        return require("torch")
    except MissingDependencyError:
        return None


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    dtypes = _safetensors_dtypes(path)
    if "BF16" in dtypes and _torch_or_none() is not None:
        st_torch = require("safetensors.torch", "safetensors")
        tensors = st_torch.load_file(str(path), device="cpu")
    else:
        st_np = require("safetensors.numpy", "safetensors")
        try:
            tensors = st_np.load_file(str(path))
        except Exception as exc:
            if "BF16" in dtypes:  # an older safetensors.numpy without bfloat16
                require("torch")
            raise ConfigError(f"cannot read {str(path)!r}: {_short(exc)}") from exc
    return {name: _checked(name, t) for name, t in tensors.items()}


def _save_safetensors(arrays: dict[str, np.ndarray], path: Path) -> None:
    has_bf16 = any(a.dtype.name == "bfloat16" for a in arrays.values())
    if has_bf16 and _torch_or_none() is not None:
        st_torch = require("safetensors.torch", "safetensors")
        st_torch.save_file({k: _torch_tensor(a) for k, a in arrays.items()}, str(path))
        return
    st_np = require("safetensors.numpy", "safetensors")
    try:
        st_np.save_file({k: np.ascontiguousarray(a).reshape(a.shape)
                         for k, a in arrays.items()}, str(path))
    except Exception as exc:
        if has_bf16:  # an older safetensors.numpy without bfloat16
            require("torch")
        raise ConfigError(f"cannot write {str(path)!r}: {_short(exc)}") from exc


# -- torch --------------------------------------------------------------------


def _torch_tensor(arr: np.ndarray) -> Any:
    """``to_torch`` that keeps 0-d shapes and never shares a read-only buffer."""
    if not arr.flags.writeable:
        arr = arr.copy()
    return to_torch(arr).reshape(arr.shape)


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    torch = require("torch")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if type(exc).__name__ == "UnpicklingError" and "weights_only" in text.lower():
            raise ConfigError(
                f"{str(path)!r} cannot be loaded with torch.load(weights_only=True) "
                f"({_unpickler_detail(text)}); fedpress does not unpickle arbitrary objects: "
                "save a state dict of tensors (torch.save(model.state_dict(), path))"
            ) from None
        raise
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ConfigError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict "
            "(a mapping of names to tensors)"
        )
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ConfigError(f"{str(path)!r}: state dict keys must be strings, got {name!r}")
        if not (torch.is_tensor(value) or isinstance(value, np.ndarray)):
            hint = (f"; it holds a checkpoint, expected its state dict under one of "
                    f"{list(STATE_DICT_KEYS)}" if isinstance(value, Mapping) else "")
            raise ConfigError(
                f"{str(path)!r}: entry {name!r} is a {type(value).__name__}, not a tensor{hint}"
            )
        out[name] = _checked(name, value)
    return out


def _unpickler_detail(text: str) -> str:
    """The useful part of torch's weights-only error message."""
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        line = rest.splitlines()[0].strip() if rest else ""
        return line.split(". ")[0].rstrip(".") or "not a plain state dict"
    return "not a plain state dict"


def _save_torch(arrays: dict[str, np.ndarray], path: Path) -> None:
    torch = require("torch")
    torch.save({k: _torch_tensor(a) for k, a in arrays.items()}, str(path))
