"""Update codec: a whole ``state_dict`` <-> one frame.

:class:`UpdateEncoder` picks a codec per tensor with a :class:`~fedpress.partition.Plan`
and packs all payloads into one update frame; :class:`UpdateDecoder` reverses it.
Both hold a :class:`~fedpress.state.StateStore` for stateful codecs, so one
encoder / decoder pair serves many rounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from ._cores import available_cores
from .abc import Codec, Scope, StatefulCodec, TensorSpec, is_mirrored
from .dtypes import as_state_dict
from .errors import (
    ConfigError,
    FedpressError,
    FormatError,
    ReferenceMismatchError,
    StateDesyncError,
)
from .frame import (
    DEFAULT_LIMITS,
    KIND_TENSOR,
    KIND_UPDATE,
    Frame,
    Limits,
    Record,
    StateTag,
    reference_digest,
)
from .frame import pack as pack_frame
from .frame import unpack as unpack_frame
from .partition import CodecSpec, Plan
from .registry import codec_from_config, peer_safe_codecs
from .state import MemoryStateStore, StateStore, TensorState


def _encode_one(codec: Codec, x: np.ndarray, state: TensorState | None,
                reference: np.ndarray | None = None, want_output: bool = False,
                ) -> tuple[bytes, StateTag | None, np.ndarray | None]:
    """Encode one tensor; returns payload, (for mirrored codecs) the state tag and (with
    ``want_output``, error-bounded codecs only) what the decoder will return."""
    codec.check_input(x)
    kw = {} if reference is None else {"reference": reference}
    method = "encode_with_output" if want_output else "encode"
    out = None
    if isinstance(codec, StatefulCodec):
        assert state is not None
        tag = StateTag(state.round, state.digest()) if codec.scope is Scope.MIRRORED else None
        result = getattr(codec, method)(x, state, **kw)
        state.round += 1
    else:
        tag = None
        result = getattr(codec, method)(x, **kw)
    payload = result[0] if want_output else result
    if want_output:
        out = result[1]
    return bytes(payload), tag, out


def _checkout(store: StateStore, peer: str, name: str, codec: StatefulCodec) -> TensorState:
    """The state ``codec`` codes ``name`` with: the store's own arrays if the codec only
    replaces them (``replaces_state``), else a copy."""
    return store.lend(peer, name) if codec.replaces_state else store.get(peer, name)


def _checkin(store: StateStore, peer: str, name: str, state: TensorState, codec: Codec) -> None:
    """Write back a state :func:`_checkout` gave out, after the whole frame coded: handed
    over (no copy) if ``codec`` only replaces its arrays, else copied."""
    if isinstance(codec, StatefulCodec) and codec.replaces_state:
        store.adopt(peer, name, state)
    else:
        store.put(peer, name, state)


#: suffix of the peer name under which residual feedback keeps its residuals (a
#: namespace of its own: no tensor name can clash with it)
RESIDUAL_PEER_SUFFIX = "\x00residual"


def _usable_reference(codec: Codec, name: str, x: np.ndarray,
                      reference: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The reference tensor ``x`` is coded against, or None (no reference for this
    name, or a lossless codec). A lossy codec that takes no reference, or a reference
    of another shape, is a ConfigError."""
    if reference is None or name not in reference:
        return None
    if not codec.takes_reference:
        if codec.lossy:
            raise ConfigError(f"tensor {name!r}: codec {codec.codec_id!r} takes no reference; "
                              "references work with the error-bounded codecs (fpz, sz3, "
                              "sz2, zfp, szx, gaeb)")
        return None
    ref = np.asarray(reference[name])
    if ref.shape != x.shape:
        raise ConfigError(f"tensor {name!r}: reference has shape {ref.shape}, "
                          f"the tensor {x.shape}")
    return ref


def trusting(plan: str | Mapping[str, CodecSpec] | Plan,
             limits: Limits = DEFAULT_LIMITS, **options: Any) -> Limits:
    """``limits`` that also accept, in this process, every codec of ``plan`` (a
    :class:`Plan` or what :meth:`Plan.build` takes, with its ``options``).

    For a decoder whose peers are the caller's own encoders (the simulator's clients,
    a file one wrote oneself, a benchmark), never for frames from untrusted peers:
    ``fedpress.decompress(blob, fedpress.trusting("sz2"))``.
    """
    built = Plan.build(plan, **options)
    ids = {c.codec_id for codec in built.codecs() for c in codec.tree()}
    base = peer_safe_codecs() if limits.codecs is None else limits.codecs
    return replace(limits, codecs=frozenset(base | ids))


def frame_codecs(frame: Frame, limits: Limits) -> list[Codec]:
    """Build a peer's frame's codec table under ``limits``: every codec of each tree
    accepted (``Limits.check_codec``) and the memory decoding the records may take
    (``Codec.decode_peak_bytes``) within ``limits.max_total_bytes``; FormatError if not."""
    codecs = [codec_from_config(cfg) for cfg in frame.codecs]
    for codec in codecs:
        limits.check_codec(codec)
    peak = 0
    for rec in frame.records:
        peak += max(codecs[rec.codec_index].decode_peak_bytes(rec.spec), rec.spec.nbytes)
        if peak > limits.max_total_bytes:
            raise FormatError(
                f"decoding this frame would take {peak} bytes or more, over the limit "
                f"{limits.max_total_bytes} (see fedpress.Limits)")
    return codecs


def _decode_isolated(codec: Codec, rec: Record, limits: Limits,
                     reference: np.ndarray | None) -> np.ndarray:
    """Decode ``rec`` in a child process (``Limits.isolate``)."""
    from .isolate import decode_isolated  # the child-process machinery, on first use

    if is_mirrored(codec):
        raise FormatError(f"tensor {rec.name!r}: codec {codec.codec_id!r} keeps mirrored "
                          "state, which an isolated decoder cannot hold; decode it in this "
                          "process (Limits.codecs) or not at all")
    return decode_isolated(codec.get_config(), rec.payload, rec.spec, reference=reference,
                           memory_bytes=limits.isolate_memory, seconds=limits.isolate_seconds)


def decode_record(codec: Codec, rec: Record, state: TensorState | None = None,
                  reference: Mapping[str, np.ndarray] | None = None,
                  limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode one record with its codec; every failure is a FormatError, except state or
    a reference that does not match the frame (StateDesyncError, ReferenceMismatchError).

    Checks what the frame claims against the codec (a lossy codec never
    produces integer tensors; only mirrored codecs carry state tags; only codecs
    that take references carry reference digests), the mirrored state tag against
    ``state``, the reference digest against ``reference[rec.name]``
    (:class:`ReferenceMismatchError`), and the result's shape and dtype. Codecs that
    ``limits`` isolates are decoded in a child process.
    """
    if not codec.accepts(rec.spec.dtype):
        raise FormatError(f"tensor {rec.name!r}: codec {codec.codec_id!r} cannot produce "
                          f"{rec.spec.dtype} tensors")
    if rec.state is not None and not is_mirrored(codec):
        raise FormatError(f"tensor {rec.name!r}: state tag on codec {codec.codec_id!r}, "
                          "which keeps no mirrored state")
    kw: dict[str, Any] = {}
    if rec.reference is not None:
        if not codec.takes_reference:
            raise FormatError(f"tensor {rec.name!r}: reference digest on codec "
                              f"{codec.codec_id!r}, which takes no reference")
        ref = None if reference is None else reference.get(rec.name)
        if ref is None:
            raise ReferenceMismatchError(
                f"tensor {rec.name!r} was coded against a reference; pass the same "
                "reference (e.g. the model the sender started from) to decode it")
        ref = np.asarray(ref)
        if reference_digest(ref) != rec.reference:
            raise ReferenceMismatchError(
                f"tensor {rec.name!r}: the reference given ({ref.dtype}{ref.shape}) is not "
                "the one it was coded against")
        if ref.shape != rec.spec.shape:  # the digest (which covers the shape) matched
            raise FormatError(f"tensor {rec.name!r}: the frame declares shape {rec.spec.shape}, "
                              f"its reference has {ref.shape}")
        kw["reference"] = ref
    try:
        if limits.isolates(codec):
            out = _decode_isolated(codec, rec, limits, kw.get("reference"))
        elif is_mirrored(codec):
            assert state is not None
            if rec.state is None:
                raise FormatError(f"tensor {rec.name!r}: mirrored codec frame without state tag")
            if rec.state.round != state.round or rec.state.digest != state.digest():
                raise StateDesyncError(
                    f"tensor {rec.name!r}: frame was encoded against round {rec.state.round} "
                    f"state {rec.state.digest.hex()}, decoder holds round {state.round} "
                    f"state {state.digest().hex()}"
                )
            out = codec.decode(rec.payload, rec.spec, state, **kw)
            state.round += 1
        elif isinstance(codec, StatefulCodec):
            out = codec.decode(rec.payload, rec.spec, None, **kw)
        else:
            out = codec.decode(rec.payload, rec.spec, **kw)
    except FedpressError:
        raise
    except Exception as exc:  # a codec's own error on bytes it cannot parse
        raise FormatError(f"tensor {rec.name!r}: codec {codec.codec_id!r} failed: {exc}") from exc
    out = np.asarray(out)
    if out.shape != rec.spec.shape or out.dtype != rec.spec.dtype:
        raise FormatError(
            f"tensor {rec.name!r}: codec {codec.codec_id!r} returned {out.dtype}{out.shape}, "
            f"frame declares {rec.spec.dtype}{rec.spec.shape}"
        )
    return out


class UpdateEncoder:
    """Encode state dicts round after round with one plan.

    Parameters
    ----------
    plan : str, dict or Plan
        ``"fedsz"``, a codec id, a rule dict or a :class:`Plan` (see
        :mod:`fedpress.partition`).
    mode, eb : str, float
        Error bound given to error-bounded codecs of the plan.
    store : StateStore, optional
        Where stateful codecs keep their state (default: in memory).
    peer : str
        Name under which this encoder's states are kept (its own identity).
    residual_feedback : bool
        Error feedback for the error-bounded tensors: what the bound dropped from a
        tensor (``sent - decoded``) is added to the next tensor of that name before it
        is coded, so small changes coded against a reference are delayed, not lost.
        The bound then holds on the tensor sent (input plus carried residual). The
        residuals are sender state, kept in ``store`` under the peer name
        ``peer + "\x00residual"``. (Codecs with error feedback of their own, such as
        ``ef:...``, ``powersgd``'s ``error_feedback`` option, are separate.)
    workers : int, optional
        Threads that code the tensors of a state dict side by side (default: the
        cores available, at most ``NUMBA_NUM_THREADS`` when set), for codecs that
        allow it (``concurrent_encode``: ``fpz``); stateful codecs and residual
        feedback stay in order. The frame is the same whatever the number.
    **options
        ``threshold``, ``lossy``, ``lossless`` and codec options, passed to
        :meth:`Plan.build`.
    """

    def __init__(self, plan: str | Mapping[str, CodecSpec] | Plan = "fedsz", mode: str = "rel",
                 eb: float = 1e-2, *, store: StateStore | None = None, peer: str = "default",
                 residual_feedback: bool = False, workers: int | None = None,
                 **options: Any) -> None:
        self.plan = Plan.build(plan, mode, eb, **options)
        self.store = store if store is not None else MemoryStateStore()
        self.peer = peer
        if not isinstance(residual_feedback, bool):
            raise ConfigError("residual_feedback must be true or false, got "
                              f"{residual_feedback!r}")
        self.residual_feedback = residual_feedback
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
        self.workers = workers if workers is not None else available_cores()

    def encode(self, state_dict: Any, meta: Mapping[str, Any] | None = None, *,
               reference: Any = None, step: int | None = None) -> bytes:
        """Encode a state dict into one update frame (bytes).

        ``reference`` (a state dict both ends hold, e.g. the global model this
        client started from) makes every tensor whose codec takes a reference (the
        error-bounded ones) and whose name it holds be coded as its difference from
        it, under the bound computed from the tensor itself. The frame records a
        digest of each reference tensor used; decode with the same reference.

        ``step`` (the federation's round, 0-based) sets the round counter of
        sender-state codecs before they code, so that schedules such as DGC's
        warm-up follow the federation's rounds rather than this sender's messages
        (a client that skipped rounds catches up). Mirrored state keeps its own
        counter, which both ends advance alike.
        """
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)
                                 or step < 0):
            raise ConfigError(f"step must be an int >= 0, got {step!r}")
        tensors = as_state_dict(state_dict)
        refs = None if reference is None else as_state_dict(reference)
        codecs: list[dict[str, Any]] = []
        index: dict[Codec, int] = {}  # codecs compare and hash by their config
        records: list[Record] = []
        new_states: dict[str, tuple[TensorState, Codec]] = {}
        residuals: dict[str, TensorState] = {}
        early = self._encode_side_by_side(tensors, refs)
        for name, x in tensors.items():
            codec = self.plan.codec_for(name, x)
            state = None
            if isinstance(codec, StatefulCodec):
                state = _checkout(self.store, self.peer, name, codec)
                if step is not None and codec.scope is Scope.SENDER:
                    state.round = step
            ref = _usable_reference(codec, name, x, refs)
            ef = self.residual_feedback and hasattr(codec, "encode_with_output")
            if ef:
                x = self._with_residual(name, x)
            if name in early:
                payload, tag, out = early[name]
            else:
                payload, tag, out = _encode_one(codec, x, state, ref, want_output=ef)
            if state is not None:
                new_states[name] = (state, codec)
            if out is not None:
                residual = np.nan_to_num(x.astype(np.float64) - out, nan=0.0, posinf=0.0,
                                         neginf=0.0).astype(x.dtype)
                residuals[name] = TensorState({"residual": residual})
            if codec not in index:
                index[codec] = len(codecs)
                codecs.append(codec.get_config())
            records.append(Record(name, index[codec], TensorSpec.of(x), payload, tag,
                                  None if ref is None else reference_digest(ref)))
        blob = pack_frame(Frame(KIND_UPDATE, codecs, records, dict(meta or {})))
        for name, (state, codec) in new_states.items():
            _checkin(self.store, self.peer, name, state, codec)
        for name, state in residuals.items():  # new arrays: handed over
            self.store.adopt(self.peer + RESIDUAL_PEER_SUFFIX, name, state)
        return blob

    def _encode_side_by_side(self, tensors: Mapping[str, np.ndarray],
                             refs: Mapping[str, np.ndarray] | None
                             ) -> dict[str, tuple[bytes, StateTag | None, np.ndarray | None]]:
        """The payloads of the tensors whose codec allows concurrent encoding
        (stateless, no residual feedback), coded by ``workers`` threads, largest
        first; the loop in :meth:`encode` codes the rest in order."""
        if self.workers <= 1:
            return {}
        jobs = []
        for name, x in tensors.items():
            codec = self.plan.codec_for(name, x)
            if (not getattr(codec, "concurrent_encode", False)
                    or isinstance(codec, StatefulCodec)
                    or (self.residual_feedback and hasattr(codec, "encode_with_output"))):
                continue
            jobs.append((name, codec, x, _usable_reference(codec, name, x, refs)))
        if len(jobs) < 2:
            return {}
        jobs.sort(key=lambda j: -int(np.size(j[2])))
        with ThreadPoolExecutor(max_workers=min(self.workers, len(jobs))) as pool:
            done = pool.map(lambda j: _encode_one(j[1], j[2], None, j[3]), jobs)
            return {j[0]: result for j, result in zip(jobs, done)}

    def _with_residual(self, name: str, x: np.ndarray) -> np.ndarray:
        """``x`` plus the residual error feedback carries for ``name`` (if it fits)."""
        st = self.store.get(self.peer + RESIDUAL_PEER_SUFFIX, name)
        r = st.get("residual")
        if r is None or r.shape != x.shape or r.dtype != x.dtype:
            return x
        return (x.astype(np.float64) + r).astype(x.dtype)


class UpdateDecoder:
    """Decode update frames, keeping mirrored state per sending peer.

    What one peer can make the decoder keep is bounded: the tensor names its
    mirrored records use are fixed by the first frame that leaves it state (a
    later record of a mirrored codec under another name is a
    :class:`StateDesyncError`, like any state the two ends no longer share, until
    :meth:`reset`), and the bytes of its state after a frame (the arrays'
    ``nbytes``, the tensors it omits included) may not exceed
    ``limits.max_state_bytes`` (a :class:`FormatError`; nothing is committed).
    That cap is checked before decoding against a lower bound (the codecs'
    ``StatefulCodec.min_state_bytes``) and again, exactly, before the new state is
    committed.

    Parameters
    ----------
    store : StateStore, optional
        Where mirrored codec state is kept (default: in memory).
    limits : Limits
        Caps checked before allocating (see :class:`fedpress.Limits`).
    """

    def __init__(self, store: StateStore | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        self.store = store if store is not None else MemoryStateStore()
        self.limits = limits

    def reset(self, peer: str) -> None:
        """Drop ``peer``'s mirrored state: its next frame starts afresh (its encoder must
        start afresh too) and fixes its tensor names anew."""
        self.store.clear(peer)

    def _check_frame_state(self, peer: str, frame: Frame, codecs: list[Codec]) -> dict[str, int]:
        """Before decoding: the frame's mirrored tensor names against the peer's, and the
        state it will leave against the cap (a lower bound). Returns the state bytes
        held now, by tensor name."""
        mirrored = [(rec, codec) for rec in frame.records
                    if is_mirrored(codec := codecs[rec.codec_index])]
        if not mirrored:
            return {}
        held = self.store.sizes(peer)
        new = [rec.name for rec, _ in mirrored if rec.name not in held]
        if held and new:
            raise StateDesyncError(
                f"peer {peer!r}: tensor {new[0]!r} has no mirrored state here; a peer's "
                "mirrored tensors are fixed by its first frame (reset the peer on both ends "
                "to start afresh with other tensors)")
        names = {rec.name for rec, _ in mirrored}
        floor = sum(b for n, b in held.items() if n not in names) + sum(
            codec.min_state_bytes(rec.spec) for rec, codec in mirrored)
        self._check_state_bytes(peer, floor, "at least ")
        return held

    def _check_state_bytes(self, peer: str, nbytes: int, qualifier: str = "") -> None:
        if nbytes > self.limits.max_state_bytes:
            raise FormatError(
                f"peer {peer!r}: this frame would leave {qualifier}{nbytes} bytes of mirrored "
                f"codec state, over the limit {self.limits.max_state_bytes} "
                "(Limits.max_state_bytes)")

    def decode(self, blob: bytes | bytearray | memoryview, peer: str = "default", *,
               reference: Any = None) -> dict[str, np.ndarray]:
        """Decode an update frame sent by ``peer``; states change only if all tensors decode.

        ``reference``: the state dict the sender coded against (see
        :meth:`UpdateEncoder.encode`); a tensor coded against a reference the
        decoder lacks or holds differently raises :class:`ReferenceMismatchError`.
        """
        frame = unpack_frame(blob, self.limits)
        refs = None if reference is None else as_state_dict(reference)
        if frame.kind != KIND_UPDATE:
            raise FormatError(
                "this is a single-tensor frame; use fedpress.decompress"
                if frame.kind == KIND_TENSOR else "not an update frame"
            )
        codecs = frame_codecs(frame, self.limits)
        held = self._check_frame_state(peer, frame, codecs)
        out: dict[str, np.ndarray] = {}
        new_states: dict[str, TensorState] = {}
        for rec in frame.records:
            codec = codecs[rec.codec_index]
            state = None
            if is_mirrored(codec):
                state = _checkout(self.store, peer, rec.name, codec)
            out[rec.name] = decode_record(codec, rec, state, refs, self.limits)
            if state is not None:
                new_states[rec.name] = state
        if new_states:
            self._check_state_bytes(peer, sum(b for n, b in held.items() if n not in new_states)
                                    + sum(st.nbytes for st in new_states.values()))
        by_name = {rec.name: codecs[rec.codec_index] for rec in frame.records}
        for name, state in new_states.items():
            _checkin(self.store, peer, name, state, by_name[name])
        return out


def encode_update(state_dict: Any, plan: str | Mapping[str, CodecSpec] | Plan = "fedsz",
                  mode: str = "rel", eb: float = 1e-2, *, reference: Any = None,
                  **options: Any) -> bytes:
    """Encode a state dict into one frame (see :class:`UpdateEncoder`; ``reference``:
    a state dict the decoder also holds, see :meth:`UpdateEncoder.encode`)."""
    return UpdateEncoder(plan, mode, eb, **options).encode(state_dict, reference=reference)


def decode_update(blob: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS, *,
                  reference: Any = None) -> dict[str, np.ndarray]:
    """Decode one update frame into ``{name: numpy array}`` (see :class:`UpdateDecoder`)."""
    return UpdateDecoder(limits=limits).decode(blob, reference=reference)
