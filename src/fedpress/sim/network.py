"""The simulated network: per-client uplink/downlink bandwidth and latency.

A transfer of ``b`` bytes over a link of ``mbps`` megabits per second with
``latency_ms`` takes ``8 b / (mbps * 1e6) + latency_ms / 1000`` seconds. Each
setting is one number (all clients alike), a list (one per client) or a seeded
log-normal spread around a median (``{"median": 10, "sigma": 0.5}``) for
heterogeneous clients. ``drift`` makes the bandwidths change over rounds: in round
``r`` each client's bandwidths are multiplied by ``exp(drift * z)``, ``z`` a
standard normal drawn from a generator seeded by the network's seed and ``r``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

Setting = float | Sequence[float] | dict[str, float]


def per_client(value: Setting, clients: int, what: str, seed: int,
               allow_zero: bool = False) -> np.ndarray:
    """One float per client from a number, a list, or ``{"median", "sigma"}``."""
    if isinstance(value, dict):
        try:
            median, sigma = float(value["median"]), float(value.get("sigma", 0.5))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{what}: a spread needs a numeric 'median' (and optional "
                              f"'sigma'), got {value}") from None
        if not median > 0 or sigma < 0:
            raise ConfigError(f"{what}: median must be > 0 and sigma >= 0, got {value}")
        out = median * np.exp(sigma * np.random.default_rng(seed).standard_normal(clients))
    elif isinstance(value, (list, tuple, np.ndarray)):
        out = np.asarray(value, dtype=np.float64)
        if out.shape != (clients,):
            raise ConfigError(f"{what}: {out.size} values for {clients} clients")
    else:
        out = np.full(clients, float(value))
    ok = (out >= 0) if allow_zero else (out > 0)
    if not np.all(ok & np.isfinite(out)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{what} must be finite and {bound}, got {value}")
    return out


@dataclass(frozen=True)
class Network:
    """Links of ``clients`` clients (arrays of one value per client)."""

    up_mbps: np.ndarray
    down_mbps: np.ndarray
    latency_ms: np.ndarray
    drift: float = 0.0
    seed: int = 0

    @classmethod
    def build(cls, clients: int, up_mbps: Setting = 10.0, down_mbps: Setting = 10.0,
              latency_ms: Setting = 0.0, seed: int = 0, drift: float = 0.0) -> Network:
        if not 0 <= drift <= 5 or not np.isfinite(drift):
            raise ConfigError(f"bandwidth drift must be in [0, 5], got {drift}")
        return cls(per_client(up_mbps, clients, "uplink bandwidth (Mbps)", seed),
                   per_client(down_mbps, clients, "downlink bandwidth (Mbps)", seed + 1),
                   per_client(latency_ms, clients, "latency (ms)", seed + 2, allow_zero=True),
                   float(drift), int(seed))

    def at(self, rnd: int) -> Network:
        """The links in round ``rnd`` (this network itself without drift)."""
        if self.drift == 0:
            return self
        z = np.random.default_rng([self.seed, 7919, rnd]).standard_normal(
            (2, self.up_mbps.size))
        return Network(self.up_mbps * np.exp(self.drift * z[0]),
                       self.down_mbps * np.exp(self.drift * z[1]), self.latency_ms)

    def upload_s(self, client: int, nbytes: int) -> float:
        return transfer_s(nbytes, float(self.up_mbps[client]), float(self.latency_ms[client]))

    def download_s(self, client: int, nbytes: int) -> float:
        return transfer_s(nbytes, float(self.down_mbps[client]), float(self.latency_ms[client]))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: [float(v) for v in getattr(self, k)]
                               for k in ("up_mbps", "down_mbps", "latency_ms")}
        if self.drift:
            out["drift"] = self.drift
        return out


def transfer_s(nbytes: int, mbps: float, latency_ms: float) -> float:
    """Seconds to move ``nbytes`` over ``mbps`` with ``latency_ms`` of latency."""
    return 8.0 * nbytes / (mbps * 1e6) + latency_ms / 1e3
