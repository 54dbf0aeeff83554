"""Round protocols' messages inside Flower records, and back (no pickle).

HGC's and PowerSGD's ends (:mod:`fedpress.exchange`) exchange small trees: tuples of
byte strings (HGC's mask, values and aggregate messages, a downlink frame), state
dicts (PowerSGD's factors, buffers, a whole end state), numbers, booleans and
``None``. :func:`pack` puts such a tree into one :class:`flwr.app.ArrayRecord` and a
layout string: each byte string becomes a ``uint8`` Array of stype
:data:`BYTES_STYPE`, each state dict's tensors Flower's own numpy Arrays, and the
layout (JSON) describes the tree and names the Arrays. :func:`unpack` reads it back
and checks that the layout and the Arrays agree (every Array named once, of the kind
the layout says); anything else is a :class:`fedpress.FormatError`.

:func:`size` is a tree's bytes as the protocols count them: the byte strings and
the tensors (numbers and flags travel in the layout, uncounted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from ..errors import FormatError

#: the Array stype of a protocol's byte string (format name and version)
BYTES_STYPE = "fedpress.bytes/1"
#: the longest layout :func:`unpack` reads, and the deepest tree
MAX_LAYOUT, MAX_DEPTH = 4 << 20, 16

_BYTES = (bytes, bytearray, memoryview)


def pack(tree: Any) -> tuple[ArrayRecord, str]:
    """The ArrayRecord and layout string of ``tree`` (see the module docs).

    Raises
    ------
    fedpress.FormatError
        A leaf that is none of None, bool, int, float (finite), str, bytes, a tuple or
        list, or a dict of numpy arrays.
    """
    arrays: dict[str, Array] = {}

    def walk(node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FormatError(f"protocol message deeper than {MAX_DEPTH}")
        if node is None or isinstance(node, (bool, str)):
            return node
        if isinstance(node, (np.bool_, np.integer, np.floating)):
            node = node.item()
        if isinstance(node, (int, float)):
            if isinstance(node, float) and not np.isfinite(node):
                raise FormatError(f"protocol message: a number {node!r}")
            return node
        if isinstance(node, _BYTES):
            key = f"b{len(arrays)}"
            data = bytes(node)
            arrays[key] = Array(dtype="uint8", shape=(len(data),), stype=BYTES_STYPE,
                                data=data)
            return {"b": key}
        if isinstance(node, (tuple, list)):
            return {"t": [walk(item, depth + 1) for item in node]}
        if isinstance(node, Mapping):
            prefix = f"d{len(arrays)}/"
            names = []
            for name, value in node.items():
                if not isinstance(name, str) or not isinstance(value, np.ndarray):
                    raise FormatError("protocol message: a dict maps tensor names to "
                                      f"numpy arrays, got {type(name).__name__} -> "
                                      f"{type(value).__name__}")
                arrays[prefix + name] = Array(np.ascontiguousarray(value))
                names.append(name)
            if not names:  # an empty dict still needs its own prefix
                arrays[prefix] = Array(dtype="uint8", shape=(0,), stype=BYTES_STYPE, data=b"")
            return {"d": prefix, "k": names}
        raise FormatError(f"protocol message: cannot carry a {type(node).__name__}")

    layout = json.dumps(walk(tree, 0), allow_nan=False, separators=(",", ":"))
    return ArrayRecord(arrays), layout


def unpack(record: ArrayRecord, layout: Any) -> Any:
    """The tree :func:`pack` made of ``record`` and ``layout``; FormatError if they do
    not describe one (malformed layout, an Array named twice or not at all, an Array
    of the wrong kind)."""
    if not isinstance(layout, str) or len(layout) > MAX_LAYOUT:
        raise FormatError("protocol message: no layout, or one longer than "
                          f"{MAX_LAYOUT} characters")
    try:
        tree = json.loads(layout, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"protocol message: malformed layout ({exc})") from None
    used: set[str] = set()

    def take(key: Any) -> Array:
        if not isinstance(key, str) or key not in record or key in used:
            raise FormatError(f"protocol message: the layout names Array {key!r}, which "
                              "the record lacks or names twice")
        used.add(key)
        return record[key]

    def walk(node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FormatError(f"protocol message deeper than {MAX_DEPTH}")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            raise FormatError("protocol message: a bare list in the layout")
        if set(node) == {"t"} and isinstance(node["t"], list):
            return tuple(walk(item, depth + 1) for item in node["t"])
        if set(node) == {"b"}:
            return _blob(take(node["b"]))
        if set(node) == {"d", "k"} and isinstance(node["d"], str) \
                and isinstance(node["k"], list):
            prefix, names = node["d"], node["k"]
            if not names:
                _blob(take(prefix))
                return {}
            if len(set(map(str, names))) != len(names):
                raise FormatError("protocol message: a tensor name twice")
            return {str(n): _tensor(take(prefix + str(n)), str(n)) for n in names}
        raise FormatError(f"protocol message: unknown layout entry {str(node)[:80]!r}")

    out = walk(tree, 0)
    extra = set(record) - used
    if extra:
        raise FormatError(f"protocol message: Arrays the layout does not name: "
                          f"{sorted(extra)[:5]}")
    return out


def size(tree: Any) -> int:
    """Bytes of ``tree``'s byte strings and tensors (what the protocols count)."""
    if isinstance(tree, _BYTES):
        return len(tree)
    if isinstance(tree, (tuple, list)):
        return sum(size(item) for item in tree)
    if isinstance(tree, Mapping):
        return int(sum(np.asarray(v).nbytes for v in tree.values()))
    return 0


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number here")


def _blob(a: Array) -> bytes:
    if a.stype != BYTES_STYPE or a.dtype != "uint8" or tuple(a.shape) != (len(a.data),):
        raise FormatError("protocol message: a byte string Array of another kind "
                          f"(stype {a.stype!r}, dtype {a.dtype!r})")
    return bytes(a.data)


def _tensor(a: Array, name: str) -> np.ndarray:
    if a.stype == BYTES_STYPE:
        raise FormatError(f"protocol message: tensor {name!r} is a byte string")
    try:
        return np.asarray(a.numpy())
    except Exception as exc:  # a peer's bytes: whatever numpy's reader raises
        raise FormatError(f"protocol message: tensor {name!r} does not load: "
                          f"{type(exc).__name__}: {exc}") from None
