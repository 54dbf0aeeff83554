"""Error feedback around any lossy codec (``plan="ef:<codec>"``).

Error feedback (Seide et al., "1-bit stochastic gradient descent", Interspeech
2014; Karimireddy et al., "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes", ICML 2019; Stich et al. 2018) keeps what compression lost
and adds it to the next tensor before compressing::

    c_t = x_t + e_{t-1};   send C(c_t);   e_t = c_t - D(C(c_t))

so no part of a gradient is lost for good, only delayed. The residual is computed
as ``c_t - D(C(c_t))`` in the tensor's dtype, so ``sent + residual == input +
previous residual`` holds exactly where nothing was sent (all of a sparsifier's
dropped entries) and to one rounding of the dtype elsewhere. The residual ``e`` is
sender-scope state (kept in the encoder's :class:`fedpress.StateStore` under the
tensor's name, checkpointable with a :class:`fedpress.DirStateStore`); the decoder
needs no state, so a frame of
``ef:topk`` decodes like one of ``topk``.

Spelling: ``plan="ef:topk"`` (options such as ``ratio`` go to the inner codec), or
``{"id": "ef", "inner": {"id": "topk", "ratio": 0.01}}`` in a rule. Any lossy codec
can be wrapped, error-bounded ones included (``ef:fpz``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..abc import Codec, Scope, StatefulCodec, TensorSpec
from ..errors import ConfigError
from ..registry import get_codec, register_codec
from ..state import TensorState


def reconstruct(codec: Codec, x: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``codec``'s payload for ``x`` and what its decoder returns."""
    with_recon = getattr(codec, "encode_with_recon", None)
    if with_recon is not None:
        payload, recon = with_recon(x)
        return bytes(payload), recon
    payload = bytes(codec.encode(x))
    return payload, np.asarray(codec.decode(payload, TensorSpec.of(x)))


@register_codec
class ErrorFeedback(StatefulCodec):
    """Wrap ``inner`` (a lossy codec's config dict, or a codec) with error feedback."""

    codec_id = "ef"
    config_keys: ClassVar[tuple[str, ...]] = ("inner",)
    lossy = True
    scope = Scope.SENDER

    def __init__(self, inner: dict[str, Any] | Codec | str = "topk") -> None:
        if isinstance(inner, Codec):
            codec = inner
        elif isinstance(inner, str):
            codec = get_codec(inner)
        elif isinstance(inner, dict) and isinstance(inner.get("id"), str):
            cfg = dict(inner)
            codec = get_codec(cfg.pop("id"), **cfg)
        else:
            raise ConfigError(f"codec 'ef': inner must be a codec id, config or Codec, "
                              f"not {inner!r}")
        if not codec.lossy:
            raise ConfigError(f"codec 'ef': {codec.codec_id!r} is lossless; error feedback "
                              "needs a lossy codec")
        if isinstance(codec, StatefulCodec):
            raise ConfigError(f"codec 'ef': {codec.codec_id!r} keeps state of its own; wrap "
                              "a stateless codec")
        self.codec = codec

    @property
    def inner(self) -> dict[str, Any]:
        return self.codec.get_config()

    def children(self) -> tuple[Codec, ...]:
        return (self.codec,)

    def accepts(self, dtype: np.dtype) -> bool:
        return self.codec.accepts(dtype)

    def check_input(self, x: np.ndarray) -> None:
        self.codec.check_input(x)

    def encode(self, x: np.ndarray, state: TensorState | None = None) -> bytes:
        if state is None:
            state = TensorState()
        corrected = x + residual_of(state, x, self.codec_id)
        payload, recon = reconstruct(self.codec, corrected)
        state["residual"] = (corrected - recon).astype(x.dtype, copy=False)
        return payload

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,
               state: TensorState | None = None) -> np.ndarray:
        return self.codec.decode(payload, spec)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The inner codec's (decoding is the inner codec's)."""
        return self.codec.decode_peak_bytes(spec)

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        return self.codec.describe(payload, spec)


def residual_of(state: TensorState, x: np.ndarray, codec_id: str,
                key: str = "residual") -> np.ndarray:
    """The stored ``key`` array (zeros on the first round); a clear error if the
    tensor changed shape or dtype since."""
    if key not in state:
        return np.zeros_like(x)
    prev = state[key]
    if prev.shape != x.shape or prev.dtype != x.dtype:
        raise ConfigError(f"codec {codec_id!r}: the tensor is {x.dtype}{x.shape}, its "
                          f"{key} is {prev.dtype}{prev.shape}; the model changed under a "
                          "stateful codec (start a new encoder)")
    return prev
