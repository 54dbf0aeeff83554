"""Error-bound modes.

``abs``
    ``eb_abs = eb``.
``rel``
    value-range relative, per tensor: ``eb_abs = eb * (max - min)`` over the
    finite values (SZ's REL mode, FedSZ's default with ``eb = 1e-2``).

A constant tensor has range 0 and is stored exactly as its value; ``eb_abs ==
0`` on a non-constant tensor means lossless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

MODES = ("abs", "rel")
_FLOAT64_MAX = float(np.finfo(np.float64).max)


@dataclass(frozen=True)
class ErrorBound:
    """An error bound: ``mode`` (``"abs"`` or ``"rel"``) and its value ``eb``."""

    mode: str = "rel"
    eb: float = 1e-2

    def __post_init__(self) -> None:
        check_bound(self.mode, self.eb)

    def absolute(self, lo: float, hi: float) -> float:
        """Absolute bound for a tensor whose finite values span ``[lo, hi]``."""
        if self.mode == "abs":
            return float(self.eb)
        # eb*hi - eb*lo, not eb*(hi - lo): the range of float64 data can overflow
        eb_abs = float(self.eb) * float(hi) - float(self.eb) * float(lo)
        return min(eb_abs, _FLOAT64_MAX)


def check_bound(mode: str, eb: float) -> None:
    """Raise ConfigError for an unknown mode or a negative / non-finite bound."""
    if mode not in MODES:
        raise ConfigError(f"error-bound mode must be one of {MODES}, not {mode!r}")
    if isinstance(eb, bool) or not isinstance(eb, (int, float, np.floating, np.integer)):
        raise ConfigError(f"error bound must be a number, not {type(eb).__name__}")
    try:
        value = float(eb)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"error bound must be finite and >= 0, not {eb!r}")
