"""fedpress frames inside Flower records, and back.

A compressed message carries one :class:`flwr.app.Array` in its ``ArrayRecord``:
dtype ``uint8``, shape ``(len,)``, ``stype`` :data:`STYPE` (the format and its
version), data the fedpress update frame (self-describing, checksummed; no pickle).
Plain arrays travel as Flower's own numpy Arrays.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict

from ..errors import FormatError
from ..state import TensorState

#: the Array stype of a fedpress frame: format name and frame version
STYPE = "fedpress.frame/1"
#: the ArrayRecord key of the frame
FRAME_KEY = "fedpress-frame"

State = dict[str, np.ndarray]


def frame_record(frame: bytes) -> ArrayRecord:
    """An ArrayRecord holding one fedpress frame."""
    return ArrayRecord({FRAME_KEY: Array(dtype="uint8", shape=(len(frame),), stype=STYPE,
                                         data=bytes(frame))})


def frame_of(record: ArrayRecord) -> bytes | None:
    """The frame an ArrayRecord carries, or None if it holds plain arrays.

    A record that mixes a fedpress frame with other arrays, or whose frame Array
    disagrees with its own dtype/shape, is a FormatError."""
    ours = [k for k, a in record.items() if a.stype == STYPE]
    if not ours:
        return None
    if len(record) != 1 or ours != [FRAME_KEY]:
        raise FormatError(f"a fedpress ArrayRecord holds one Array {FRAME_KEY!r}, got "
                          f"{list(record)}")
    a = record[FRAME_KEY]
    if a.dtype != "uint8" or tuple(a.shape) != (len(a.data),):
        raise FormatError("fedpress frame Array: dtype/shape do not match its data")
    return bytes(a.data)


def state_of(record: ArrayRecord) -> State:
    """Plain numpy arrays of a record (in its order)."""
    return {k: np.asarray(a.numpy()) for k, a in record.items()}


def plain_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of numpy arrays (in the state's order)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def array_key(content: RecordDict) -> str | None:
    """The key of the content's only ArrayRecord (None if it has none); FormatError if
    there are several (which one holds the model would be a guess)."""
    keys = list(content.array_records)
    if len(keys) > 1:
        raise FormatError(f"message has {len(keys)} ArrayRecords ({keys}); fedpress "
                          "compresses messages that carry one")
    return keys[0] if keys else None


def config_of(message: Message) -> dict:
    """The message's (first) ConfigRecord as a dict (empty if it has none)."""
    records = message.content.config_records if message.has_content() else {}
    return dict(next(iter(records.values()))) if records else {}


def with_arrays(message: Message, key: str | None, record: ArrayRecord | None,
                extra: Mapping[str, object] | None = None) -> RecordDict:
    """A copy of the message's content with ``record`` under ``key`` (``None``: no
    change; the other records shared, not copied) and, if given, ``extra`` added to
    its ConfigRecord (one named ``config`` if it has none)."""
    content = message.content
    out = RecordDict()
    for k, v in content.items():
        out[k] = record if k == key and record is not None else v
    if extra:
        from flwr.app import ConfigRecord

        configs = list(content.config_records)
        name = configs[0] if configs else "config"
        merged = ConfigRecord(dict(content.config_records[name]) if configs else {})
        merged.update(extra)  # type: ignore[arg-type]
        out[name] = merged
    return out


def state_digest(state: Mapping[str, np.ndarray]) -> str:
    """Hex digest of a state dict (names, dtypes, shapes, bytes): the digest mirrored
    codec states use (:meth:`fedpress.TensorState.digest`)."""
    return TensorState(dict(state)).digest().hex()
