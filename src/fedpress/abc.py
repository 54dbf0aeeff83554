"""Codec base classes.

A :class:`Codec` turns one numpy array into payload bytes and back. Its whole
configuration is given to ``__init__`` and returned by :meth:`Codec.get_config`
(a JSON-serialisable dict with the codec ``id``), so a frame can name the codec
and its parameters and any decoder can rebuild it with
:func:`fedpress.registry.codec_from_config`.

A :class:`StatefulCodec` also keeps state between rounds. The state lives
outside the codec object, in a :class:`fedpress.state.StateStore`, and has one
of two scopes (:class:`Scope`):

``sender``
    only the encoding side holds it (error-feedback residuals, momentum);
    the decoder gets ``state=None``.
``mirrored``
    both ends hold it and advance it **only from decoded values** (predictor
    history, shared masks). Frames of mirrored codecs carry the round counter
    and a digest of the state they were encoded against; a decoder whose state
    differs raises :class:`fedpress.StateDesyncError`.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard

import numpy as np

from .dtypes import is_float
from .errors import ConfigError


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor, as carried by the frame."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @classmethod
    def of(cls, x: np.ndarray) -> TensorSpec:
        return cls(tuple(int(d) for d in x.shape), x.dtype)


class Codec(ABC):
    """A stateless codec: one array <-> payload bytes.

    Subclasses set ``codec_id``, list their configuration attribute names in
    ``config_keys`` and implement :meth:`encode` and :meth:`decode`.
    """

    codec_id: ClassVar[str] = ""
    #: names of the ``__init__`` arguments that make up the configuration
    config_keys: ClassVar[tuple[str, ...]] = ()
    #: True for codecs whose output may differ from their input
    lossy: ClassVar[bool] = False
    #: True for codecs that guarantee ``max|x - x'| <= eb_abs``
    error_bounded: ClassVar[bool] = False
    #: True for codecs whose ``encode`` / ``decode`` take ``reference=``: an array
    #: both ends hold (e.g. the model a client started from) to code the tensor against
    takes_reference: ClassVar[bool] = False
    #: False for codecs whose decoder hands peer bytes to a native library that does not
    #: validate them (it may crash, exit or read out of bounds on a crafted stream): the
    #: default :class:`fedpress.Limits` refuse them; a user opts in by naming them in
    #: ``Limits(codecs=...)`` or decodes them in a child process (``Limits(isolate=...)``)
    peer_safe: ClassVar[bool] = True

    @abstractmethod
    def encode(self, x: np.ndarray) -> bytes:
        """Encode a C-contiguous array into payload bytes."""

    @abstractmethod
    def decode(self, payload: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
        """Decode payload bytes into an array of ``spec``; FormatError on bad bytes."""

    def accepts(self, dtype: np.dtype) -> bool:
        """Whether this codec can encode arrays of ``dtype``."""
        return is_float(dtype) if self.lossy else True

    def check_input(self, x: np.ndarray) -> None:
        if not self.accepts(x.dtype):
            raise ConfigError(
                f"codec {self.codec_id!r} does not take {x.dtype} tensors"
                + (" (it is lossy: use a lossless codec such as 'zstd')" if self.lossy else "")
            )

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        """Facts about one payload for :func:`fedpress.inspect` (e.g. the absolute bound)."""
        return {}

    def children(self) -> tuple[Codec, ...]:
        """The codecs this one wraps (e.g. error feedback's inner codec); none by default.

        Decoders check their allow-list on every codec of the tree, so a wrapper must
        list each codec it hands payload bytes to.
        """
        return ()

    def tree(self) -> list[Codec]:
        """This codec and every codec it wraps, depth first."""
        out: list[Codec] = [self]
        for child in self.children():
            out.extend(child.tree())
        return out

    def check_available(self) -> None:
        """Raise :class:`fedpress.MissingDependencyError` (naming the package) if a
        library this codec needs cannot be imported; the default needs none.

        Called when a plan, an encoder or a decoder is built, so a missing back end is
        found before the first round rather than in it.
        """
        for child in self.children():
            child.check_available()

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The most memory decoding one payload of ``spec`` may allocate, in bytes
        (output included). :class:`fedpress.Limits` caps the sum over a frame
        (``max_total_bytes``), so a codec whose decoder needs temporaries larger than
        its output says so here.
        """
        return spec.nbytes

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"id": self.codec_id}
        for key in self.config_keys:
            cfg[key] = getattr(self, key)
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Codec:
        cfg = dict(config)
        cid = cfg.pop("id", cls.codec_id)
        if cid != cls.codec_id:
            raise ConfigError(f"config is for codec {cid!r}, not {cls.codec_id!r}")
        unknown = set(cfg) - set(cls.config_keys)
        if unknown:
            raise ConfigError(f"codec {cls.codec_id!r}: unknown options {sorted(unknown)}")
        return cls(**cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.config_keys)
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.get_config().items())))


class Scope(str, enum.Enum):
    """Who holds a stateful codec's state."""

    SENDER = "sender"
    MIRRORED = "mirrored"


class StatefulCodec(Codec):
    """A codec whose encoding depends on state kept between rounds.

    ``encode(x, state)`` and ``decode(payload, spec, state)`` receive the
    :class:`fedpress.state.TensorState` of this (peer, tensor) pair and update
    it in place; the framework advances ``state.round`` after each call. For
    ``Scope.SENDER`` codecs the decoder receives ``state=None``.
    """

    scope: ClassVar[Scope] = Scope.SENDER
    #: True if ``encode`` and ``decode`` never write into the arrays of the state they
    #: are given nor keep them, only replace them: the update codecs then borrow the
    #: store's arrays and hand it the new ones without copies
    #: (:meth:`fedpress.state.StateStore.lend` and ``adopt``)
    replaces_state: ClassVar[bool] = False

    @abstractmethod
    def encode(self, x: np.ndarray, state: Any = None) -> bytes:  # type: ignore[override]
        """Encode ``x`` given this tensor's state, updating the state."""

    @abstractmethod
    def decode(  # type: ignore[override]
        self, payload: bytes | memoryview, spec: TensorSpec, state: Any = None
    ) -> np.ndarray:
        """Decode given this tensor's (mirrored) state, updating the state."""

    def min_state_bytes(self, spec: TensorSpec) -> int:
        """A lower bound of the mirrored state decoding one payload of ``spec`` leaves
        (0: none known). Decoders check ``Limits.max_state_bytes`` against it before
        decoding a frame, and against the true size before committing its state."""
        return 0


def is_mirrored(codec: Codec) -> TypeGuard[StatefulCodec]:
    """Whether ``codec`` keeps state that both ends hold (``Scope.MIRRORED``)."""
    return isinstance(codec, StatefulCodec) and codec.scope is Scope.MIRRORED
