"""Round protocols: which messages cross between a server and its clients in a round.

A round starts the same way in every protocol: the server sends each chosen client
its first message (:meth:`ServerEnd.downlink`), each client turns it into the model
it trains from (:meth:`ClientEnd.receive`), trains, and replies
(:meth:`ClientEnd.reply`). Some protocols then run further phases before the server
can aggregate: HGC's shared mask, PowerSGD's second factor. The server end drives
them through a ``call`` the runtime provides (the simulator's pool, a Flower grid):
``call(phase, {client: payload})`` has each client answer
(:meth:`ClientEnd.answer`) and returns the replies in client order; a runtime whose
clients can drop out (a Flower node that does not answer) leaves their replies out,
and the server end drops those clients from the round (:attr:`PhaseCost.dropped`).

A protocol is registered under the aggregation names it serves
(:func:`register_exchange`); the simulator and Flower look it up with
:func:`exchange_for` and drive the object, never a name. Everything here is
framework-free: numpy arrays, bytes and plain tuples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from ..errors import ConfigError, FormatError
from .deltas import State

if TYPE_CHECKING:
    from .downlink import Downlink


class Settings(Protocol):
    """What a protocol reads from a run's settings (the simulator's ``FLConfig``
    has these attributes; Flower builds its own)."""

    plan: Any
    plan_options: Mapping[str, Any]
    downlink_plan: Any
    downlink_options: Mapping[str, Any]
    downlink_send: str
    send: str
    reference: bool
    algorithm: str
    server_lr: float
    fraction: float
    lr_milestones: tuple[int, ...]


class Reply(Protocol):
    """A client's answer to a phase: the message, its bytes on the wire, and the
    client's seconds spent encoding it."""

    client: Any
    message: Any
    nbytes: int
    encode_s: float


class Links(Protocol):
    """Transfer seconds per client and direction (the simulator's network model)."""

    def upload_s(self, client: Any, nbytes: int) -> float: ...

    def download_s(self, client: Any, nbytes: int) -> float: ...


#: ``call(phase, {client: payload})``: the clients' replies to a later phase, in order
#: (those that did not answer left out)
Call = Callable[[str, Mapping[Any, Any]], Sequence[Reply]]


@dataclass
class PhaseCost:
    """What a protocol's later phases produced and cost in one round.

    ``aggregate`` holds the tensors the exchange averaged itself (they replace the
    plain mean of the first replies); the rest adds to the round's figures:
    ``slowest`` is the slowest client's time through the phases, ``comm_s`` their
    transfer time. ``dropped`` names the clients the exchange left out of
    ``aggregate`` (no answer, or one it could not use), with the reason: the runtime
    leaves them out of the round and starts them afresh (:meth:`ServerEnd.restart`).
    """

    aggregate: State
    bytes_up: int = 0
    encode_s: float = 0.0
    decode_s: float = 0.0
    server_s: float = 0.0
    comm_s: float = 0.0
    slowest: float = 0.0
    dropped: dict[Any, str] = field(default_factory=dict)


class ServerEnd(ABC):
    """The server's side of a protocol for one run."""

    @property
    def exchanged(self) -> frozenset[str]:
        """The tensors the later phases average (the first replies carry the others)."""
        return frozenset()

    @abstractmethod
    def downlink(self, chosen: list[Any], state: State, down: Downlink,
                 ) -> tuple[dict[Any, Any], dict[Any, int], float]:
        """The round's first messages: ``({client: message}, {client: bytes},
        server encode seconds)``; ``down`` is the run's :class:`Downlink`."""

    def exchange(self, chosen: list[Any], replies: list[State], weights: list[float],
                 call: Call, links: Links, down_bytes: dict[Any, int]) -> PhaseCost | None:
        """The later phases, after the first replies were decoded (``replies``, in the
        order of ``chosen``); adds what it sends down to ``down_bytes``. ``None``:
        the protocol has no later phase."""
        return None

    def restart(self, client: Any, state: State) -> tuple[Any, int] | None:
        """The round's first message (and its bytes) for a client that starts afresh:
        a new :class:`ClientEnd` that holds nothing, where :meth:`downlink`'s message
        assumes a copy in step with the server (a runtime's new or failed client).
        ``state`` is the global model; ``None``: the downlink's message serves."""
        return None


class ClientEnd(ABC):
    """One client's side of a protocol; ``held`` is the model copy it holds."""

    #: whether :meth:`receive` / :meth:`reply` code anything (their time counts)
    decodes: bool = False
    encodes: bool = False

    def __init__(self) -> None:
        self.held: State | None = None
        #: the federation's round (1-based; 0: not told), set by the runtime
        self.round = 0

    @abstractmethod
    def receive(self, message: Any) -> State:
        """The model to train from, out of the round's first message."""

    @abstractmethod
    def reply(self, trained: State, start: State, params: frozenset[str]) -> tuple[Any, int]:
        """The first reply (and its bytes on the wire) for what the client trained:
        its weights, update or gradient (``trained``) from ``start``; ``params`` names
        the model's parameters (the rest are buffers)."""

    def answer(self, phase: str, payload: Any) -> tuple[Any, int]:
        """The answer to a later phase (and its bytes on the wire)."""
        raise ConfigError(f"this exchange has no phase {phase!r}")

    def export(self) -> State:
        """This end's state as named arrays, for a runtime that does not keep the end
        in memory between messages (a Flower ClientApp may run in a new process for
        each); :meth:`load` on a new end of the same settings reads it back."""
        raise ConfigError(f"{type(self).__name__} cannot export its state")

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        """Take the state :meth:`export` made (FormatError if it is not one)."""
        raise ConfigError(f"{type(self).__name__} cannot load a state")


def state_parts(state: Mapping[str, np.ndarray], parts: tuple[str, ...],
                what: str) -> dict[str, State]:
    """An exported state (names ``part/tensor``, see :meth:`ClientEnd.export`) split by
    part, each a ``{tensor: array}`` dict in the state's order; FormatError for a name
    of another part."""
    out: dict[str, State] = {part: {} for part in parts}
    for key, value in state.items():
        part, _, name = str(key).partition("/")
        if part not in out or not name:
            raise FormatError(f"{what} state: unexpected entry {key!r} (parts: "
                              f"{', '.join(parts)})")
        out[part][name] = np.asarray(value)
    return out


class RoundProtocol(ABC):
    """A round protocol, built from a run's settings.

    ``aggregates`` are the names that select it (the simulator's ``aggregate``
    setting); ``exclusive_plans`` are plan names that only this protocol runs;
    ``every_round``: each round moves state that every client end mirrors, so a
    client that missed a round is out of step and must start afresh.
    """

    name: ClassVar[str]
    title: ClassVar[str]  # as people write it: "HGC", "PowerSGD"
    aggregates: ClassVar[tuple[str, ...]]
    exclusive_plans: ClassVar[tuple[str, ...]] = ()
    every_round: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self) -> None:  # noqa: B027 - most protocols accept any settings
        """ConfigError if the settings do not fit this protocol."""

    @property
    def uplink_plan(self) -> Any:
        """The plan clients encode their first reply with (``None``: the protocol
        codes its own messages, or raw traffic)."""
        return self.settings.plan

    @abstractmethod
    def server(self, state: State, params: frozenset[str]) -> ServerEnd:
        """The server's end, starting from the global ``state``."""

    @abstractmethod
    def client(self, peer: str) -> ClientEnd:
        """A client's end (``peer``: its name in codec state)."""


_EXCHANGES: dict[str, type[RoundProtocol]] = {}

P = TypeVar("P", bound=type[RoundProtocol])


def register_exchange(cls: P) -> P:
    """Register a protocol class under its ``aggregates`` names."""
    for name in cls.aggregates:
        if name in _EXCHANGES:
            raise ConfigError(f"aggregate {name!r} already names {_EXCHANGES[name].name!r}")
        _EXCHANGES[name] = cls
    return cls


def exchanges() -> dict[str, type[RoundProtocol]]:
    """Every registered protocol class, by aggregation name."""
    return dict(_EXCHANGES)


def exchange_for(settings: Settings, aggregate: str) -> RoundProtocol:
    """The protocol that runs ``aggregate`` for ``settings``, checked. ConfigError for
    an unknown name, or a plan that only another protocol runs."""
    cls = _EXCHANGES.get(aggregate)
    if cls is None:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose one of "
                          f"{', '.join(_EXCHANGES)}")
    for other in set(_EXCHANGES.values()):
        if other is not cls and settings.plan in other.exclusive_plans:
            raise ConfigError(f"plan {settings.plan!r} runs {other.title}'s exchange: set "
                              f"aggregate={other.aggregates[0]!r} (the {settings.plan!r} "
                              "codec, one sender's stream, is for UpdateEncoder)")
    protocol = cls(settings)
    protocol.check()
    return protocol
