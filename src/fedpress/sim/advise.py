"""When does compression pay? FedSZ's Eq. 1 on a real model file.

Sending ``S`` raw bytes over bandwidth ``B`` takes ``S / B``; compressed it takes
``t_C + t_D + S' / B`` (encode, decode, smaller payload). Compression pays when
``t_C + t_D + S'/B < S/B``, i.e. below the break-even bandwidth
``B* = (S - S') / (t_C + t_D)``. :func:`advise` measures ``S'``, ``t_C`` and
``t_D`` (median of ``repeats``) for each codec and bound on a state dict and
reports ``B*`` in Mbps (each codec runs once untimed first, so library loading and
compilation are not counted); :func:`plot` draws communication time against bandwidth
from 10 Mbps to 10 Gbps.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import fedpress

from ..errors import ConfigError
from ..io import save_png


def advise(state: Mapping[str, np.ndarray], codecs: Sequence[str], ebs: Sequence[float],
           mode: str = "rel", repeats: int = 3,
           on_step: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per (codec, bound): CR, encode/decode seconds, break-even Mbps.

    Each codec is used as a plan (``plan=codec``: every float tensor of at least
    1000 elements through it, the rest lossless), or ``"fedsz:<lossy>"`` for the
    FedSZ partition with that lossy codec.

    Parameters
    ----------
    on_step
        Called with a label (``"fpz eb=0.01"``) as each (codec, bound) measurement
        starts, ``len(codecs) * len(ebs)`` times: a progress bar's hook.
    """
    if not codecs or not ebs:
        raise ConfigError("advise needs at least one codec and one bound")
    raw = int(sum(np.asarray(v).nbytes for v in state.values()))
    rows = []
    for codec in codecs:
        options: dict[str, Any] = {}
        plan = codec
        if codec.startswith("fedsz:"):
            plan, options = "fedsz", {"lossy": codec.split(":", 1)[1]}
        # its own frames: every codec of the plan decodes here (sz2 too)
        limits = fedpress.trusting(plan, **options)
        # once untimed: loads the codec's library and compiled kernels
        fedpress.decode_update(fedpress.encode_update(state, plan=plan, mode=mode, eb=ebs[0],
                                                      **options), limits)
        for eb in ebs:
            if on_step is not None:
                on_step(f"{codec} eb={eb:g}")
            enc: tuple[list[float], list[float]] = [], []
            blob = b""
            for _ in range(repeats):
                t0 = time.perf_counter()
                blob = fedpress.encode_update(state, plan=plan, mode=mode, eb=eb, **options)
                t1 = time.perf_counter()
                fedpress.decode_update(blob, limits)
                enc[0].append(t1 - t0)
                enc[1].append(time.perf_counter() - t1)
            t_c, t_d = statistics.median(enc[0]), statistics.median(enc[1])
            saved = raw - len(blob)
            rows.append({"codec": codec, "eb": eb, "mode": mode, "raw_bytes": raw,
                         "bytes": len(blob), "cr": raw / len(blob), "encode_s": t_c,
                         "decode_s": t_d,
                         "break_even_mbps": (8 * saved / (t_c + t_d) / 1e6) if saved > 0
                         else 0.0})
    return rows


def comm_seconds(row: Mapping[str, Any], mbps: np.ndarray) -> np.ndarray:
    """``t_C + t_D + S'/B`` of a row at bandwidths ``mbps``."""
    return row["encode_s"] + row["decode_s"] + 8 * row["bytes"] / (mbps * 1e6)


def plot(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Communication time against bandwidth (log-log, 10 Mbps .. 10 Gbps).

    Parameters
    ----------
    rows
        :func:`advise`'s rows (one line each).
    path
        The PNG to write.
    title
        The plot's title; by default the raw size of the state dict.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mbps = np.logspace(1, 4, 200)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(mbps, 8 * rows[0]["raw_bytes"] / (mbps * 1e6), "k--", label="uncompressed")
    for r in rows:
        ax.plot(mbps, comm_seconds(r, mbps), label=f"{r['codec']} eb={r['eb']:g} "
                f"(CR {r['cr']:.1f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bandwidth (Mbps)")
    ax.set_ylabel("communication time (s)")
    raw_mb = rows[0]["raw_bytes"] / 1e6
    ax.set_title(title or f"when compression pays: {raw_mb:.3g} MB of tensors", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, out)
    plt.close(fig)
    return out
