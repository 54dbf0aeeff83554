"""The wire format: versioned, self-describing, checksummed frames.

One layout serves a single tensor (kind ``T``) and a whole update (kind
``U``); ``docs/format.md`` documents it byte by byte. Parsing checks the
checksum first, then every declared count and length against the bytes that
are present and against :class:`Limits` before anything is allocated. Every
failure is a :class:`fedpress.FormatError`.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._bytes import Reader, Writer
from .abc import Codec, TensorSpec
from .dtypes import dtype_code, dtype_from_code, le_buffer
from .errors import FormatError

MAGIC = b"\x89FPZ"
VERSION = 1
KIND_TENSOR = ord("T")
KIND_UPDATE = ord("U")
_KINDS = {KIND_TENSOR: "tensor", KIND_UPDATE: "update"}
_REC_HAS_STATE = 0x01
_REC_HAS_REFERENCE = 0x02
DIGEST_SIZE = 8
_PREFIX = len(MAGIC) + 3
_CRC = 4


@dataclass(frozen=True)
class Limits:
    """Caps a decoder enforces before allocating (all configurable).

    Parameters
    ----------
    max_tensors : int
        Records in one frame.
    max_tensor_elements : int
        Elements of one decoded tensor (default 2**31).
    max_total_bytes : int
        Memory decoding a frame may take (default 4 GiB): the decoded bytes of all its
        tensors, and each codec's peak while decoding (``Codec.decode_peak_bytes``,
        output included) when that is larger. A constant tensor is a few bytes on the
        wire whatever its size, so this cap is what bounds the memory a frame can make
        a decoder allocate.
    max_ndim : int
        Dimensions of one tensor.
    max_text : int
        Bytes of a name, a codec config or the metadata.
    codecs : frozenset of str, optional
        The codec ids this decoder accepts, checked on every codec of the tree a
        frame builds (a wrapper's inner codecs too, however spelled) before any
        payload byte reaches a back end; a frame naming another codec is a
        FormatError. ``None`` (the default) accepts every registered codec whose
        decoder is safe on a peer's bytes (``Codec.peer_safe``): all but ``sz2``,
        whose native library crashes or exits on crafted streams, and ``sz3``, whose
        library a crafted stream can make fill gigabytes. Naming one here opts in to
        decoding it in this process.
    isolate : frozenset of str
        Codec ids decoded in a child process with ``isolate_memory`` bytes of
        address space and ``isolate_seconds`` of time (e.g. ``{"sz2"}``): a crash,
        an ``exit()`` or a stall there is a FormatError here. A codec named here is
        accepted even if it is not peer-safe (isolation is the opt-in).
    isolate_memory : int
        Address-space limit of an isolated decoder's child process (default 4 GiB).
    isolate_seconds : float
        Wall-clock limit of one isolated decode (default 60 s).
    max_state_bytes : int
        Mirrored codec state one peer may make a decoder keep (default 1 GiB),
        checked before a decoded frame's state is committed. The tensor names a
        peer's stateful records use are fixed by its first frame (until its state
        is reset), so renaming tensors cannot grow the state either.
    """

    max_tensors: int = 1_000_000
    max_tensor_elements: int = 1 << 31
    max_total_bytes: int = 4 << 30
    max_ndim: int = 32
    max_text: int = 1 << 20
    codecs: frozenset[str] | None = None
    isolate: frozenset[str] = frozenset()
    isolate_memory: int = 4 << 30
    isolate_seconds: float = 60.0
    max_state_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for key in ("codecs", "isolate"):
            value = getattr(self, key)
            if value is None or isinstance(value, frozenset):
                continue
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"Limits.{key} must be a set of codec ids, not {value!r}")
            object.__setattr__(self, key, frozenset(value))

    def check_codec(self, codec: Codec) -> None:
        """FormatError unless every codec of ``codec``'s tree is accepted (see ``codecs``
        and ``isolate``); called on the codecs a frame builds, before any payload byte
        reaches them."""
        for c in codec.tree():
            cid = c.codec_id
            if cid in self.isolate or (c.peer_safe if self.codecs is None
                                       else cid in self.codecs):
                continue
            if self.codecs is None:
                raise FormatError(
                    f"codec {cid!r} is not decoded from peers by default: its native library "
                    "does not validate its input, so a crafted frame could crash this "
                    f"process; opt in with Limits(isolate={{{cid!r}}}) (a child process) or "
                    "by naming it in Limits(codecs=...)")
            raise FormatError(f"codec {cid!r} is not accepted by this decoder (Limits.codecs)")

    def isolates(self, codec: Codec) -> bool:
        """Whether ``codec`` is decoded in a child process (a codec of its tree is in
        ``isolate``)."""
        return bool(self.isolate) and any(c.codec_id in self.isolate for c in codec.tree())


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class StateTag:
    """Round counter and digest of the mirrored state a record was encoded against."""

    round: int
    digest: bytes


@dataclass
class Record:
    """One tensor of a frame: its name, codec (index into the codec table), spec and payload."""

    name: str
    codec_index: int
    spec: TensorSpec
    payload: bytes | memoryview
    state: StateTag | None = None
    #: digest of the reference the tensor was coded against (see :func:`reference_digest`)
    reference: bytes | None = None


@dataclass
class Frame:
    """A decoded (or to-be-encoded) frame."""

    kind: int
    codecs: list[dict[str, Any]]
    records: list[Record]
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    @property
    def kind_name(self) -> str:
        return _KINDS.get(self.kind, "?")


def reference_digest(reference: np.ndarray) -> bytes:
    """8-byte digest (SHA-256, first bytes) of a reference tensor (dtype, shape and
    bytes), so a decoder holding another reference is told so instead of returning
    wrong values."""
    a = np.ascontiguousarray(reference)
    h = hashlib.sha256()
    h.update(a.dtype.str.encode())
    h.update(repr(a.shape).encode())
    h.update(le_buffer(a))
    return h.digest()[:DIGEST_SIZE]


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def pack(frame: Frame) -> bytes:
    """Serialise a frame; the checksum covers every byte before it."""
    w = Writer()
    w.raw(MAGIC)
    w.u8(VERSION)
    w.u8(frame.kind)
    w.u8(0)
    w.varint(len(frame.codecs))
    for cfg in frame.codecs:
        w.blob(_json_bytes(cfg))
    w.blob(_json_bytes(frame.meta) if frame.meta else b"")
    w.varint(len(frame.records))
    for rec in frame.records:
        w.text(rec.name)
        w.varint(rec.codec_index)
        w.u8(dtype_code(rec.spec.dtype))
        w.u8(len(rec.spec.shape))
        for d in rec.spec.shape:
            w.varint(int(d))
        if rec.state is not None and len(rec.state.digest) != DIGEST_SIZE:
            raise ValueError(f"state digest must be {DIGEST_SIZE} bytes")
        if rec.reference is not None and len(rec.reference) != DIGEST_SIZE:
            raise ValueError(f"reference digest must be {DIGEST_SIZE} bytes")
        w.u8((_REC_HAS_STATE if rec.state is not None else 0)
             | (_REC_HAS_REFERENCE if rec.reference is not None else 0))
        if rec.state is not None:
            w.varint(rec.state.round)
            w.raw(rec.state.digest)
        if rec.reference is not None:
            w.raw(rec.reference)
        w.varint(len(rec.payload))
    for rec in frame.records:
        w.raw(rec.payload)
    body = w.getvalue()
    return body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")


def _json_obj(raw: memoryview, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be a JSON object")
    return obj


def peek_kind(blob: bytes | bytearray | memoryview) -> int:
    """The kind byte of a frame after checking magic and version (no checksum)."""
    view = memoryview(blob)
    if len(view) < _PREFIX + _CRC:
        raise FormatError(f"not a fedpress frame: only {len(view)} bytes")
    if bytes(view[:4]) != MAGIC:
        raise FormatError("not a fedpress frame: bad magic bytes")
    if view[4] != VERSION:
        raise FormatError(
            f"fedpress frame version {view[4]} is not supported (this fedpress reads {VERSION})"
        )
    if view[5] not in _KINDS:
        raise FormatError(f"unknown frame kind {view[5]}")
    return int(view[5])


def unpack(blob: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Parse and validate a frame. Payloads are zero-copy views into ``blob``."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise FormatError(f"expected bytes, got {type(blob).__name__}")
    view = memoryview(blob)
    if not view.c_contiguous:
        raise FormatError("frame buffer must be contiguous")
    view = view.cast("B")
    kind = peek_kind(view)
    body = view[:-_CRC]
    stored = int.from_bytes(view[-_CRC:], "little")
    if zlib.crc32(body) & 0xFFFFFFFF != stored:
        raise FormatError("fedpress frame checksum mismatch (corrupted or truncated)")
    r = Reader(body, "frame")
    r.take(_PREFIX - 1)
    if r.u8() != 0:
        raise FormatError("frame flags set that this version does not know")
    n_codecs = r.varint(cap=min(limits.max_tensors, r.remaining), name="codec count")
    codecs = [_json_obj(r.blob(cap=limits.max_text, name="codec config"), "codec config")
              for _ in range(n_codecs)]
    meta_raw = r.blob(cap=limits.max_text, name="metadata")
    meta = _json_obj(meta_raw, "frame metadata") if len(meta_raw) else {}
    n_rec = r.varint(cap=min(limits.max_tensors, r.remaining), name="tensor count")
    if kind == KIND_TENSOR and n_rec != 1:
        raise FormatError(f"a tensor frame holds 1 tensor, this one declares {n_rec}")
    heads: list[tuple[str, int, TensorSpec, StateTag | None, bytes | None, int]] = []
    total_bytes = 0
    seen: set[str] = set()
    for _ in range(n_rec):
        name = r.text(cap=limits.max_text, name="tensor name")
        if name in seen:
            raise FormatError(f"tensor name {name!r} appears twice")
        seen.add(name)
        cidx = r.varint(cap=max(n_codecs - 1, 0), name="codec index")
        if n_codecs == 0:
            raise FormatError("frame has tensors but no codec table")
        dtype = dtype_from_code(r.u8())
        ndim = r.u8()
        if ndim > limits.max_ndim:
            raise FormatError(f"{ndim} dimensions exceed the limit {limits.max_ndim}")
        shape = tuple(r.varint(cap=limits.max_tensor_elements, name="dimension")
                      for _ in range(ndim))
        spec = TensorSpec(shape, dtype)
        if spec.size > limits.max_tensor_elements:
            raise FormatError(
                f"tensor {name!r} declares {spec.size} elements, over the limit "
                f"{limits.max_tensor_elements} (see fedpress.Limits)"
            )
        total_bytes += spec.nbytes
        if total_bytes > limits.max_total_bytes:
            raise FormatError(
                f"frame declares {total_bytes} decoded bytes, over the limit "
                f"{limits.max_total_bytes} (see fedpress.Limits)"
            )
        flags = r.u8()
        if flags & ~(_REC_HAS_STATE | _REC_HAS_REFERENCE):
            raise FormatError(f"tensor {name!r}: unknown record flags {flags:#x}")
        tag = None
        if flags & _REC_HAS_STATE:
            rnd = r.varint(name="round")
            tag = StateTag(rnd, bytes(r.take(DIGEST_SIZE)))
        ref = bytes(r.take(DIGEST_SIZE)) if flags & _REC_HAS_REFERENCE else None
        plen = r.varint(cap=r.remaining, name="payload length")
        heads.append((name, cidx, spec, tag, ref, plen))
    if sum(h[-1] for h in heads) != r.remaining:
        raise FormatError(
            f"payload lengths add up to {sum(h[-1] for h in heads)} bytes, "
            f"{r.remaining} are present"
        )
    records = [Record(name, cidx, spec, r.take(plen), tag, ref)
               for name, cidx, spec, tag, ref, plen in heads]
    return Frame(kind, codecs, records, meta, version=int(view[4]))
