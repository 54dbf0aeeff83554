"""Adaptive plans: each message takes the candidate plan with the least expected time.

FedSZ's Eq. 1 asks, for one link and one codec, whether compressing pays:
``t_encode + bytes / bandwidth + latency + t_decode`` against sending raw. An
:class:`AdaptiveEncoder` asks it for every message, among several candidate plans,
with the link the message is about to take::

    enc = fedpress.AdaptiveEncoder(max_eb=1e-2)          # plan "auto(max_eb=0.01)"
    blob = enc.encode(state_dict, uplink_mbps=25.0, latency_ms=40.0)

- **Candidates** (default: ``raw``, ``zstd``, ``fpz`` at ``max_eb / 10`` and at
  ``max_eb``): any stateless plans. Every error-bounded codec of a candidate must
  have a bound no looser than ``max_eb`` (same mode), so the bound promise holds
  whichever is chosen; codecs without a bound (sparsifiers, quantizers) are refused
  unless ``unbounded=True``. Stateful codecs are refused: their state would advance
  on one end only when a message switches away from them.
- **Time** per candidate: its encode and decode throughput on this machine
  (:class:`Calibration`, measured once per candidate on a probe tensor and cached
  in a JSON file), the bytes it is expected to send (the compression ratio it had on
  this sender's last message, re-probed on a sample of the state dict every
  ``reprobe`` messages and for candidates never measured), and the link.
- **Link**: the bandwidth given to :meth:`AdaptiveEncoder.encode`, or, without one,
  the bandwidth seen on earlier transfers (:meth:`AdaptiveEncoder.observe_transfer`,
  a moving average), or ``default_mbps``.
- **Deadline** (the round-level view, option ``round=deadline``): given a deadline,
  the choice is the candidate with the tightest error bound whose expected time fits
  it (lossless candidates first), ties by time; the fastest if none fits. A runtime
  that knows every sampled client's expected times (:meth:`AdaptiveEncoder.choose`
  tells them without encoding the message) sets the round's deadline to the
  slowest client's best time, so the clients that would wait for it spend their
  slack on a tighter bound instead.

Frames are ordinary update frames: each names its codecs, so a decoder that accepts
every candidate (:func:`auto_limits`) decodes whatever the sender chose.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .abc import StatefulCodec
from .dtypes import as_state_dict
from .errors import ConfigError
from .frame import DEFAULT_LIMITS, Limits
from .io import write_bytes_atomically
from .partition import Plan, split_plans
from .update import UpdateDecoder, UpdateEncoder, trusting

#: the plan name of an adaptive plan, and its options
AUTO = "auto"
AUTO_OPTIONS = ("max_eb", "candidates", "mode", "reprobe", "unbounded", "default_mbps",
                "link", "round")
#: where a runtime takes the uplink bandwidth from: the link's configured value, or
#: the encoder's estimate from its earlier transfers
LINKS = ("configured", "measured")
#: what a runtime asks of each choice: the least time for the message alone ("off"),
#: or the tightest bound that fits the round's deadline ("deadline")
ROUNDS = ("off", "deadline")
#: values per tensor the size probe codes (a contiguous slice from the middle)
PROBE_VALUES = 1 << 16


@dataclass(frozen=True)
class Candidate:
    """One plan an adaptive plan may choose: as written, and built."""

    spec: str
    plan: Plan
    options: dict[str, Any]

    @property
    def bound(self) -> float:
        """The loosest error bound of its error-bounded codecs (0: lossless)."""
        return max((float(getattr(c, "eb", 0.0)) for c in self.plan.codecs()
                    if getattr(c, "lossy", False)), default=0.0)

    @property
    def looseness(self) -> float:
        """How much error it may add, for a choice under a deadline (smaller first):
        its :attr:`bound`, or infinity when one of its codecs is lossy without a
        bound (allowed with ``unbounded=True``)."""
        for codec in self.plan.codecs():
            for c in codec.tree():
                if getattr(c, "lossy", False) and not hasattr(c, "eb"):
                    return float("inf")
        return self.bound


def candidates_for(specs: str | Sequence[str] | None, max_eb: float, mode: str = "rel",
                   unbounded: bool = False) -> list[Candidate]:
    """The candidates of an adaptive plan, checked against ``max_eb`` (see the module).

    ``specs``: plan specs (``"zstd"``, ``"fpz(eb=0.001)"``, ...) as a list or a
    ``|``-separated string; an error-bounded codec without ``eb`` takes ``max_eb``.
    """
    if not max_eb > 0 or not np.isfinite(max_eb):
        raise ConfigError(f"auto: max_eb must be a finite number > 0, got {max_eb!r}")
    if specs is None:
        specs = ["raw", "zstd", f"fpz(eb={max_eb / 10:g})", f"fpz(eb={max_eb:g})"]
    elif isinstance(specs, str):
        specs = [s.strip() for s in specs.split("|") if s.strip()]
    if not specs:
        raise ConfigError("auto: no candidates")
    out = []
    for spec in specs:
        name, options = Plan.parse(spec)
        if name in (None, "none", AUTO):
            raise ConfigError(f"auto: candidate {spec!r} is not a plan (raw traffic is "
                              "the 'raw' codec)")
        options = {"eb": max_eb} | dict(options) | {"mode": mode}
        try:
            plan = Plan.build(name, **options)
        except TypeError as e:
            raise ConfigError(f"auto: candidate {spec!r}: {e}") from None
        for codec in plan.codecs():
            for c in codec.tree():
                if isinstance(c, StatefulCodec):
                    raise ConfigError(f"auto: candidate {spec!r} uses the stateful codec "
                                      f"{c.codec_id!r}; a switch away from it would leave "
                                      "its state advanced on one end only: use stateless "
                                      "candidates")
                bounded = hasattr(c, "eb") or not getattr(c, "lossy", False)
                if not bounded and not unbounded:
                    raise ConfigError(f"auto: candidate {spec!r} uses {c.codec_id!r}, which "
                                      "has no error bound; allow it with unbounded=true "
                                      "(max_eb then bounds the error-bounded candidates only)")
        cand = Candidate(spec, plan, options)
        if cand.bound > max_eb * (1 + 1e-12):
            raise ConfigError(f"auto: candidate {spec!r} has bound {cand.bound:g}, looser "
                              f"than max_eb={max_eb:g}")
        out.append(cand)
    return out


def _default_cache() -> Path:
    from . import __version__

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedpress" / f"calibration-{__version__}.json"


def _probe_tensor(n: int = 1 << 20) -> dict[str, np.ndarray]:
    """A seeded gradient-like tensor (Laplace values with some structure)."""
    rng = np.random.default_rng(12345)
    x = rng.laplace(0.0, 1e-3, n).astype(np.float32)
    x[: n // 4] *= 0.1  # quieter rows, as in real layers
    return {"probe.weight": x.reshape(1024, -1)}


@dataclass
class Calibration:
    """Encode and decode throughput (bytes of input per second) per candidate, measured
    on this machine and cached in ``path`` (default: the user's cache directory; no
    file with ``path=None`` and ``persist=False``)."""

    path: Path | None = None
    persist: bool = True
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.persist and self.path is None:
            self.path = _default_cache()
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.rates.update({k: (float(v[0]), float(v[1])) for k, v in data.items()
                                   if isinstance(v, list) and len(v) == 2})
            except (OSError, ValueError, TypeError):
                pass  # an unreadable cache is measured again

    def rate(self, cand: Candidate) -> tuple[float, float]:
        """(encode, decode) bytes per second of ``cand``, measured if not known."""
        key = json.dumps({"spec": cand.spec, "options": cand.options}, sort_keys=True,
                         default=str)
        if key not in self.rates:
            self.rates[key] = measure(cand)
            if self.persist and self.path is not None:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    write_bytes_atomically(self.path, json.dumps(
                        {k: list(v) for k, v in self.rates.items()}).encode())
                except OSError:
                    pass  # a read-only cache: measure again next time
        return self.rates[key]


def measure(cand: Candidate, repeats: int = 3) -> tuple[float, float]:
    """Encode and decode bytes per second of ``cand`` on the probe tensor (best of
    ``repeats``, after an untimed warm-up)."""
    probe = _probe_tensor()
    raw = sum(v.nbytes for v in probe.values())
    enc = UpdateEncoder(cand.plan)
    dec = UpdateDecoder(limits=trusting(cand.plan))
    blob = enc.encode(probe)
    dec.decode(blob)
    t_enc = t_dec = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = enc.encode(probe)
        t1 = time.perf_counter()
        dec.decode(blob)
        t2 = time.perf_counter()
        t_enc, t_dec = min(t_enc, t1 - t0), min(t_dec, t2 - t1)
    return raw / max(t_enc, 1e-9), raw / max(t_dec, 1e-9)


@dataclass(frozen=True)
class Choice:
    """What :meth:`AdaptiveEncoder.choose` decided, and why: per candidate the expected
    bytes and seconds (encode + transfer + decode), and the deadline it was given."""

    spec: str
    mbps: float
    expected_bytes: dict[str, float]
    expected_s: dict[str, float]
    deadline_s: float | None = None

    @property
    def fastest_s(self) -> float:
        """The least expected seconds of any candidate (this message's best time)."""
        return min(self.expected_s.values())


def _sample(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """At most :data:`PROBE_VALUES` contiguous values of each tensor (its middle)."""
    out = {}
    for name, x in tensors.items():
        flat = np.asarray(x).reshape(-1)
        if flat.size > PROBE_VALUES:
            start = (flat.size - PROBE_VALUES) // 2
            flat = flat[start:start + PROBE_VALUES]
        out[name] = flat.reshape((-1,) if flat.ndim else ())
    return out


class AdaptiveEncoder:
    """An encoder that chooses, message by message, the candidate plan with the least
    expected time (see the module docs).

    Parameters
    ----------
    max_eb : float
        The loosest bound any error-bounded candidate may have (mode ``mode``).
    candidates : str or sequence of str, optional
        Plan specs (``|``-separated in a string); default ``raw | zstd |
        fpz(eb=max_eb/10) | fpz(eb=max_eb)``.
    peer : str
        The sender's name (as :class:`fedpress.UpdateEncoder`).
    reprobe : int
        Re-measure every candidate's ratio on a sample every ``reprobe`` messages.
    unbounded : bool
        Allow candidates whose codecs have no error bound.
    default_mbps : float
        The bandwidth assumed before any is given or observed.
    link : str
        For the runtime that drives the encoder: ``"configured"`` passes the link's
        bandwidth to :meth:`encode`; ``"measured"`` passes none and reports each
        transfer to :meth:`observe_transfer`.
    round : str
        For the runtime too: ``"off"`` lets each message take its fastest candidate;
        ``"deadline"`` asks it for a round deadline (the slowest sampled client's
        best expected time) and passes it to :meth:`encode` (see :meth:`choose`).
    calibration : Calibration, optional
        Throughput measurements (default: measured here, cached on disk).
    """

    def __init__(self, max_eb: float = 1e-2, candidates: str | Sequence[str] | None = None,
                 mode: str = "rel", *, peer: str = "default", reprobe: int = 5,
                 unbounded: bool = False, default_mbps: float = 10.0,
                 link: str = "measured", round: str = "off",
                 calibration: Calibration | None = None) -> None:
        if isinstance(reprobe, bool) or not isinstance(reprobe, int) or reprobe < 1:
            raise ConfigError(f"auto: reprobe must be an int >= 1, got {reprobe!r}")
        if not default_mbps > 0:
            raise ConfigError(f"auto: default_mbps must be > 0, got {default_mbps!r}")
        if link not in LINKS:
            raise ConfigError(f"auto: link must be one of {', '.join(LINKS)}, got {link!r}")
        if round not in ROUNDS:
            raise ConfigError(f"auto: round must be one of {', '.join(ROUNDS)}, got "
                              f"{round!r}")
        self.link, self.round = link, round
        self.max_eb, self.mode = float(max_eb), mode
        self.candidates = candidates_for(candidates, self.max_eb, mode, unbounded)
        self.encoders = {c.spec: UpdateEncoder(c.plan, peer=peer) for c in self.candidates}
        self.calibration = calibration if calibration is not None else Calibration()
        self.reprobe, self.default_mbps = reprobe, float(default_mbps)
        self.ratio: dict[str, float] = {}  # raw bytes / frame bytes, per candidate
        self.age: dict[str, int] = {}  # messages since each ratio was measured
        self.seen_mbps: float | None = None  # moving average of observed transfers
        self.last: Choice | None = None
        self.residual_feedback = False  # as UpdateEncoder: no residual of its own

    def limits(self, base: Limits = DEFAULT_LIMITS) -> Limits:
        """``base`` accepting every candidate's codecs in-process (for a decoder of this
        encoder's own frames)."""
        return auto_limits(self.candidates, base)

    def observe_transfer(self, nbytes: int, seconds: float) -> None:
        """Record a transfer this sender made (``nbytes`` in ``seconds``): the bandwidth
        estimate used when :meth:`encode` is given none."""
        if nbytes > 0 and seconds > 0:
            mbps = nbytes * 8 / seconds / 1e6
            self.seen_mbps = mbps if self.seen_mbps is None else 0.5 * (self.seen_mbps + mbps)

    def _ratios(self, tensors: Mapping[str, np.ndarray]) -> dict[str, float]:
        stale = [c for c in self.candidates
                 if c.spec not in self.ratio or self.age.get(c.spec, 0) >= self.reprobe]
        if stale:
            sample = _sample(tensors)
            raw = sum(v.nbytes for v in sample.values())
            for c in stale:
                blob = UpdateEncoder(c.plan).encode(sample)  # stateless: a fresh encoder
                self.ratio[c.spec], self.age[c.spec] = raw / max(1, len(blob)), 0
        return self.ratio

    def choose(self, state_dict: Any, uplink_mbps: float | None = None,
               latency_ms: float = 0.0, deadline_s: float | None = None) -> Choice:
        """The candidate with the least expected encode + transfer + decode seconds;
        with ``deadline_s``, the one with the tightest bound (:attr:`Candidate.looseness`:
        lossless first) among those expected to take at most ``deadline_s``, ties by
        time, and the fastest if none fits.

        Nothing of the message is encoded (only a sample of it, when a candidate's
        ratio is due to be measured again), so a runtime can ask each client for its
        expected times (:attr:`Choice.expected_s`, :attr:`Choice.fastest_s`) first and
        set a deadline after."""
        tensors = as_state_dict(state_dict)
        mbps = uplink_mbps if uplink_mbps is not None else (self.seen_mbps or self.default_mbps)
        if not mbps > 0:
            raise ConfigError(f"auto: the uplink bandwidth must be > 0, got {mbps!r}")
        raw = sum(np.asarray(v).nbytes for v in tensors.values())
        ratios = self._ratios(tensors)
        nbytes, seconds = {}, {}
        for c in self.candidates:
            enc_rate, dec_rate = self.calibration.rate(c)
            nbytes[c.spec] = raw / ratios[c.spec]
            seconds[c.spec] = (raw / enc_rate + nbytes[c.spec] * 8 / (mbps * 1e6)
                               + latency_ms / 1e3 + raw / dec_rate)
        best = min(self.candidates, key=lambda c: (seconds[c.spec], nbytes[c.spec]))
        if deadline_s is not None:
            if not deadline_s >= 0:
                raise ConfigError(f"auto: the deadline must be >= 0 seconds, got "
                                  f"{deadline_s!r}")
            slack = deadline_s * (1 + 1e-9)  # the slowest client's own best time fits
            fits = [c for c in self.candidates if seconds[c.spec] <= slack]
            if fits:
                best = min(fits, key=lambda c: (c.looseness, seconds[c.spec], nbytes[c.spec]))
            return Choice(best.spec, float(mbps), nbytes, seconds, float(deadline_s))
        return Choice(best.spec, float(mbps), nbytes, seconds)

    def encode(self, state_dict: Any, meta: Mapping[str, Any] | None = None, *,
               uplink_mbps: float | None = None, latency_ms: float = 0.0,
               reference: Any = None, deadline_s: float | None = None) -> bytes:
        """Encode with the candidate :meth:`choose` picks (under ``deadline_s`` if
        given); :attr:`last` keeps the choice."""
        tensors = as_state_dict(state_dict)
        choice = self.choose(tensors, uplink_mbps, latency_ms, deadline_s)
        blob = self.encoders[choice.spec].encode(tensors, meta, reference=reference)
        raw = sum(np.asarray(v).nbytes for v in tensors.values())
        for spec in self.age:
            self.age[spec] += 1
        self.ratio[choice.spec], self.age[choice.spec] = raw / max(1, len(blob)), 0
        self.last = choice
        return blob


def auto_limits(candidates: Sequence[Candidate], base: Limits = DEFAULT_LIMITS) -> Limits:
    """``base`` accepting, in-process, the codecs of every candidate."""
    limits = base
    for c in candidates:
        limits = trusting(c.plan, limits)
    return limits


def auto_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """An adaptive plan's options as :class:`AdaptiveEncoder` takes them (a plan spec's
    ``auto(max_eb=0.01, candidates='raw|fpz')``); ConfigError for others."""
    unknown = set(options) - set(AUTO_OPTIONS) - {"eb", "threshold", "lossy", "lossless"}
    if unknown:
        raise ConfigError(f"plan 'auto': unknown options {sorted(unknown)}; it takes "
                          f"{', '.join(AUTO_OPTIONS)}")
    out = {k: v for k, v in options.items() if k in AUTO_OPTIONS}
    if "max_eb" not in out and "eb" in options:
        out["max_eb"] = options["eb"]  # the run's bound, when max_eb is not given
    if isinstance(out.get("candidates"), str):
        out["candidates"] = split_plans(out["candidates"].replace("|", ","))
    return out
