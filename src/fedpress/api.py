"""Single-tensor API: compress, decompress, inspect."""

from __future__ import annotations

from typing import Any

import numpy as np

from .abc import Codec, StatefulCodec, TensorSpec
from .dtypes import to_numpy
from .errors import ConfigError, FormatError
from .frame import DEFAULT_LIMITS, KIND_TENSOR, Frame, Limits, Record
from .frame import pack as pack_frame
from .frame import unpack as unpack_frame
from .partition import make_codec
from .registry import codec_from_config
from .update import decode_record, frame_codecs

#: the codec ``compress(x)`` uses when none is named: the best error-bounded one
DEFAULT_CODEC = "fpz"


def compress(x: Any, codec: str | dict[str, Any] | Codec | None = None, mode: str = "rel",
             eb: float = 1e-2, **config: Any) -> bytes:
    """Compress one tensor into a self-describing frame.

    Parameters
    ----------
    x : array-like or torch.Tensor
        Any shape; float32/float64/float16/bfloat16 for lossy codecs, any
        supported dtype for lossless ones.
    codec : str, dict or Codec, optional
        Codec id (see :func:`fedpress.list_codecs`); ``None`` means the
        project's best error-bounded codec (``DEFAULT_CODEC``).
    mode, eb : str, float
        Error bound of error-bounded codecs: ``"rel"`` (``eb * (max - min)``)
        or ``"abs"``. Ignored by lossless codecs.
    **config
        Further codec options (e.g. ``level=19`` for ``zstd``).

    Returns
    -------
    bytes
        The frame; its length is the compressed size.
    """
    arr = to_numpy(x)
    spec = codec if codec is not None else DEFAULT_CODEC
    if config:
        if isinstance(spec, Codec):
            raise ConfigError("pass options to the Codec object, not to compress()")
        spec = {**({"id": spec} if isinstance(spec, str) else dict(spec)), **config}
    c = make_codec(spec, mode, eb)
    if isinstance(c, StatefulCodec):
        raise ConfigError(
            f"codec {c.codec_id!r} keeps state between rounds; use fedpress.UpdateEncoder"
        )
    c.check_input(arr)
    payload = c.encode(arr)
    rec = Record("", 0, TensorSpec.of(arr), bytes(payload))
    return pack_frame(Frame(KIND_TENSOR, [c.get_config()], [rec]))


def decompress(blob: bytes | bytearray | memoryview,
               limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a frame made by :func:`compress` (same shape and dtype as the input)."""
    frame = unpack_frame(blob, limits)
    if frame.kind != KIND_TENSOR:
        raise FormatError("this is an update frame; use fedpress.decode_update")
    rec = frame.records[0]
    c = frame_codecs(frame, limits)[rec.codec_index]
    if isinstance(c, StatefulCodec):
        raise FormatError(f"stateful codec {c.codec_id!r} in a single-tensor frame")
    if rec.reference is not None:
        raise FormatError("reference digest in a single-tensor frame")
    return decode_record(c, rec, limits=limits)


def inspect(blob: bytes | bytearray | memoryview,
            limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Describe a frame without decoding its tensors.

    Returns a dict with ``kind``, ``version``, ``frame_bytes``,
    ``original_bytes``, overall ``cr`` (frame bytes, headers included), the
    ``codecs`` table and per tensor: ``name``, ``codec``, ``config``,
    ``shape``, ``dtype``, ``payload_bytes``, ``original_bytes``, ``cr``
    (payload only; None for an empty payload) and what the codec reports
    (e.g. ``eb_abs``).
    """
    frame = unpack_frame(blob, limits)
    tensors = []
    for rec in frame.records:
        cfg = frame.codecs[rec.codec_index]
        info: dict[str, Any] = {
            "name": rec.name,
            "codec": cfg.get("id"),
            "config": cfg,
            "shape": list(rec.spec.shape),
            "dtype": str(rec.spec.dtype),
            "payload_bytes": len(rec.payload),
            "original_bytes": rec.spec.nbytes,
            "cr": rec.spec.nbytes / len(rec.payload) if len(rec.payload) else None,
        }
        if rec.state is not None:
            info["state_round"] = rec.state.round
            info["state_digest"] = rec.state.digest.hex()
        try:
            info.update(codec_from_config(cfg).describe(rec.payload, rec.spec))
        except (FormatError, ConfigError) as exc:
            info["describe_error"] = str(exc)
        tensors.append(info)
    orig = sum(t["original_bytes"] for t in tensors)
    size = len(memoryview(blob))
    return {
        "kind": frame.kind_name,
        "version": frame.version,
        "frame_bytes": size,
        "original_bytes": orig,
        "cr": orig / size,
        "codecs": frame.codecs,
        "meta": frame.meta,
        "tensors": tensors,
    }
