"""The codec ends of a link: an encoder and a decoder built from a plan spec.

``None`` as a plan means raw traffic: no encoder, no decoder, the state dict itself
is the message (:data:`Message`). The decoder built here accepts every codec of its
plan in-process (:func:`fedpress.trusting`): it is for frames the same program made
(the simulator's peers, a server mirroring its own downlink). A decoder of a remote
peer's frames uses the peer limits of :mod:`fedpress.frame` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..abc import Scope, StatefulCodec
from ..adaptive import AUTO, AdaptiveEncoder, auto_limits, auto_options, candidates_for
from ..update import UpdateDecoder, UpdateEncoder, trusting
from .deltas import State

#: what crosses a link: a fedpress frame, or the raw state dict
Message = bytes | State


def make_encoder(plan: Any, options: Mapping[str, Any],
                 peer: str = "default") -> UpdateEncoder | AdaptiveEncoder | None:
    """An encoder for ``plan`` (``None``: raw traffic, no encoder; ``"auto"``: an
    :class:`fedpress.AdaptiveEncoder`)."""
    if plan is None:
        return None
    if plan == AUTO:
        return AdaptiveEncoder(**auto_options(options), peer=peer)
    return UpdateEncoder(plan, peer=peer, **options)


def make_decoder(plan: Any, options: Mapping[str, Any]) -> UpdateDecoder | None:
    """A decoder of ``plan``'s own frames (``None``: raw traffic); it accepts every
    codec of the plan (``sz2`` too; every candidate's of an ``auto`` plan) in-process."""
    if plan == AUTO:
        o = auto_options(options)
        return UpdateDecoder(limits=auto_limits(candidates_for(
            o.get("candidates"), o.get("max_eb", 1e-2), o.get("mode", "rel"),
            bool(o.get("unbounded", False)))))
    enc = make_encoder(plan, options)
    return None if enc is None else UpdateDecoder(limits=trusting(enc.plan))


def warm_codecs(plan: Any, options: Mapping[str, Any]) -> None:
    """Encode and decode a probe once, so compiled kernels load before anything is timed."""
    if plan == AUTO:  # each candidate's kernels, and its throughput measured once
        encoder = make_encoder(plan, options)
        assert isinstance(encoder, AdaptiveEncoder)
        for c in encoder.candidates:
            warm_codecs(c.plan, {})
            encoder.calibration.rate(c)
        return
    enc, dec = make_encoder(plan, options), make_decoder(plan, options)
    if enc is not None and dec is not None:
        rng = np.random.default_rng(0)
        # a small tensor and one large enough for fpz's rANS coder (small ones use
        # Huffman); two messages, since stateful codecs use their history kernels from
        # the second on
        probe = {"probe.weight": rng.standard_normal(8192, np.float32),
                 "probe.large.weight": rng.standard_normal(1 << 15, np.float32)}
        for _ in range(2):
            dec.decode(enc.encode(probe))


def keeps_sender_state(plan: Any) -> bool:
    """Whether a codec of ``plan`` (a built :class:`fedpress.Plan`) keeps state only
    the sender holds (error feedback, residuals); mirrored state (``gaeb``'s history)
    is no such thing."""
    return any(isinstance(c, StatefulCodec) and c.scope is Scope.SENDER
               for c in plan.codecs())


def gradient_compressor(plan: Any, options: Mapping[str, Any]) -> str | None:
    """The id of a gradient compressor in ``plan`` (wrapped in ``ef`` or not), if any."""
    from ..grad.base import GradientCodec, StatefulGradientCodec
    from ..grad.ef import ErrorFeedback

    encoder = make_encoder(plan, options)
    if encoder is None:
        return None
    plans = [c.plan for c in encoder.candidates] if isinstance(encoder, AdaptiveEncoder) \
        else [encoder.plan]
    for p in plans:
        for codec in [r.codec for r in p.rules] + [p.default]:
            inner = codec.codec if isinstance(codec, ErrorFeedback) else codec
            if isinstance(inner, (GradientCodec, StatefulGradientCodec)):
                return codec.codec_id
    return None
