"""How many cores this process may use: the default worker count of the codecs."""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says),
    at most ``NUMBA_NUM_THREADS`` when that is set (the threads run numba kernels)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        cores = max(1, os.cpu_count() or 1)
    limit = os.environ.get("NUMBA_NUM_THREADS", "")
    return max(1, min(cores, int(limit))) if limit.isdigit() else cores
