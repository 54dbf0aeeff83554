"""The tensors a protocol's own messages leave out (BatchNorm statistics), coded.

A protocol that codes the parameters its own way (HGC's shared mask) still has to move
the model's float buffers (BatchNorm's running means and variances) both ways every
round. Sent raw they can outweigh everything else (on a ResNet-18, 87 % of HGC's
uplink). :class:`BufferCoder` codes them as one update frame with a stateless plan
(``fpz`` under a REL bound by default, every tensor whatever its size; ``raw`` keeps
them raw), and :class:`ErrorFeedback` keeps what a lossy downlink left out, so the
buffers' error does not build up over rounds.

The frame travels as a ``uint8`` array under :data:`KEY` in the protocol's own state
dict (an entry that is not a model tensor, as runtimes allow for a protocol's own
data); the decoder accepts only the plan's codecs (each safe to decode from a peer)
and checks every decoded tensor
against the names, shapes and dtypes expected (a peer's frame is hostile).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ..abc import StatefulCodec
from ..errors import ConfigError, FormatError
from ..frame import unpack as unpack_frame
from ..update import DEFAULT_LIMITS, UpdateDecoder, UpdateEncoder, peer_safe_codecs
from .deltas import State

#: the entry that carries the coded buffers in a protocol's message
KEY = "fedpress.buffers"
#: the plan that leaves the buffers raw
RAW = "raw"


def float_buffers(state: Mapping[str, np.ndarray], exchanged: frozenset[str] | set[str],
                  ) -> list[str]:
    """The float tensors of ``state`` outside ``exchanged`` (sorted): what
    :class:`BufferCoder` codes; integer buffers (``num_batches_tracked``) stay raw."""
    return sorted(k for k, v in state.items()
                  if k not in exchanged and np.issubdtype(np.asarray(v).dtype, np.floating))


class BufferCoder:
    """Codes a fixed set of float tensors as one frame (``spec``: a stateless codec
    id, e.g. ``fpz`` or ``zstd``, applied to every tensor; ``raw``: no coding)."""

    def __init__(self, spec: str = "fpz", eb: float = 1e-2, mode: str = "rel") -> None:
        if not isinstance(spec, str) or not spec:
            raise ConfigError(f"buffers: a codec id, or {RAW!r}; got {spec!r}")
        self.spec = spec
        self.encoder: UpdateEncoder | None = None
        self.decoder: UpdateDecoder | None = None
        if spec != RAW:
            self.encoder = UpdateEncoder({"default": spec}, mode, eb, workers=1)
            codecs = self.encoder.plan.codecs()
            if any(isinstance(c, StatefulCodec) for c in codecs):
                raise ConfigError(f"buffers: {spec!r} keeps state between messages; the "
                                  "buffers take a stateless codec (fpz, zstd, ...) or raw")
            ids = frozenset(c.codec_id for codec in codecs for c in codec.tree())
            unsafe = sorted(ids - peer_safe_codecs())
            if unsafe:
                raise ConfigError(f"buffers: {unsafe[0]!r} is not safe to decode from a "
                                  "peer; choose fpz, zstd or another peer-safe codec")
            # a peer's frames: the plan's own codecs only, under the default limits
            self.decoder = UpdateDecoder(limits=replace(DEFAULT_LIMITS, codecs=ids))

    @property
    def codes(self) -> bool:
        """Whether the buffers are coded (not raw)."""
        return self.encoder is not None

    def encode(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """The frame of ``tensors``, as the ``uint8`` array that travels under :data:`KEY`."""
        assert self.encoder is not None
        return np.frombuffer(self.encoder.encode(dict(tensors)), np.uint8)

    def decode(self, blob: object, like: Mapping[str, np.ndarray]) -> State:
        """The tensors of a frame :meth:`encode` made; FormatError unless it declares
        exactly ``like``'s names, each of its shape and dtype (checked on the frame's
        header, before anything is decoded or allocated)."""
        assert self.decoder is not None
        if not isinstance(blob, np.ndarray) or blob.dtype != np.uint8 or blob.ndim != 1:
            raise FormatError("buffers: the coded buffers are not a byte array")
        data = blob.tobytes()
        specs = {rec.name: rec.spec for rec in unpack_frame(data, self.decoder.limits).records}
        if set(specs) != set(like):
            raise FormatError(f"buffers: the frame holds {sorted(specs)[:5]}, expected "
                              f"{sorted(like)[:5]}")
        for k, spec in specs.items():
            if spec.shape != like[k].shape or spec.dtype != like[k].dtype:
                raise FormatError(f"buffers: {k!r} is {spec.dtype}{spec.shape}, expected "
                                  f"{like[k].dtype}{like[k].shape}")
        return self.decoder.decode(data)


class ErrorFeedback:
    """What a lossy coder left out of the last message, added to the next one (so the
    receiver's sum of decoded messages tracks the sender's sum of true ones)."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}

    def send(self, coder: BufferCoder, tensors: Mapping[str, np.ndarray],
             ) -> tuple[np.ndarray, State]:
        """The frame of ``tensors`` plus the residual, and what the receiver decodes
        from it (the residual becomes the difference)."""
        target = {k: (v.astype(np.float64) + self.residual.get(k, 0.0)).astype(v.dtype)
                  for k, v in tensors.items()}
        blob = coder.encode(target)
        decoded = coder.decode(blob, target)
        self.residual = {k: target[k].astype(np.float64) - decoded[k].astype(np.float64)
                         for k in target}
        return blob, decoded
