"""What a simulation leaves behind: ``metrics.csv``, ``summary.json`` and PNG plots.

``metrics.csv`` has one row per round with at least ``round, accuracy, loss,
bytes_up, bytes_down, cr_up, cr_down, encode_s, decode_s, comm_s, round_s`` plus
``raw_up, raw_down, train_s, wall_s, clients`` and the cumulative ``cum_mb`` (MB
up + down) and ``cum_comm_s`` / ``cum_round_s``. The plots (matplotlib, Agg):
accuracy per round, accuracy against cumulative MB, and the time per round split
into communication and the rest, titled with the dataset, model and bandwidths
(:func:`plot_title`). Several runs can share the plots (``compare``).

A run of an adaptive plan (``auto``) also leaves ``choices.csv``: per round and
client the candidate chosen, the bandwidth assumed, its expected seconds, the
client's least expected seconds and its deadline (``auto(round=deadline)``; empty
otherwise), and the bytes sent.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..io import replaced_atomically, save_png, write_bytes_atomically
from .fl import RoundMetrics

COLUMNS = ["round", "accuracy", "loss", "bytes_up", "bytes_down", "cr_up", "cr_down",
           "encode_s", "decode_s", "comm_s", "round_s", "raw_up", "raw_down", "train_s",
           "wall_s", "cum_mb", "cum_comm_s", "cum_round_s", "clients"]
CHOICE_COLUMNS = ["round", "client", "spec", "mbps", "expected_s", "fastest_s", "deadline_s",
                  "bytes"]


def rows(history: Sequence[RoundMetrics]) -> list[dict[str, Any]]:
    """Per-round rows with the cumulative columns."""
    out, mb, comm, total = [], 0.0, 0.0, 0.0
    for m in history:
        mb += (m.bytes_up + m.bytes_down) / 1e6
        comm += m.comm_s
        total += m.round_s
        row = m.row()
        row.update(cum_mb=mb, cum_comm_s=comm, cum_round_s=total)
        out.append(row)
    return out


def summary(history: Sequence[RoundMetrics], config: Mapping[str, Any]) -> dict[str, Any]:
    """Final and total figures of one run, with the configuration that produced it."""
    last = history[-1]
    up, down = sum(m.bytes_up for m in history), sum(m.bytes_down for m in history)
    raw_up, raw_down = sum(m.raw_up for m in history), sum(m.raw_down for m in history)
    return {
        "config": dict(config), "rounds": len(history),
        "final_accuracy": last.accuracy, "final_loss": last.loss,
        "best_accuracy": max(m.accuracy for m in history),
        "bytes_up": up, "bytes_down": down, "cr_up": raw_up / up, "cr_down": raw_down / down,
        "encode_s": sum(m.encode_s for m in history),
        "decode_s": sum(m.decode_s for m in history),
        "comm_s": sum(m.comm_s for m in history),
        "round_s": sum(m.round_s for m in history),
        "wall_s": sum(m.wall_s for m in history),
    }


def write_run(out_dir: str | os.PathLike[str], history: Sequence[RoundMetrics],
              config: Mapping[str, Any], plots: bool = True) -> dict[str, Any]:
    """Write ``metrics.csv``, ``summary.json`` (and the plots) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rows(history)
    with replaced_atomically(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    choices = [c for m in history for c in m.choices]
    if choices:
        with replaced_atomically(out / "choices.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CHOICE_COLUMNS)
            writer.writeheader()
            writer.writerows(choices)
    result = summary(history, config)
    write_bytes_atomically(out / "summary.json",
                           (json.dumps(result, indent=2, default=str) + "\n").encode())
    if plots:
        plot({plan_label(config.get("plan", "none")): table}, out, title=plot_title(config))
    return result


def plan_label(plan: Any) -> str:
    """A plan as a legend shows it: its spec, or a JSON object of rules on one line."""
    if isinstance(plan, Mapping):
        return json.dumps(plan, separators=(",", ":"), default=str)
    return str(plan)


def _mbps(value: Any) -> str:
    """One bandwidth, or the range of per-client bandwidths, in Mbps (a log-normal
    spread's median when only the setting is known)."""
    if isinstance(value, Mapping):
        return f"median {float(value['median']):g}"
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def plot_title(config: Mapping[str, Any]) -> str:
    """``dataset, model, up X Mbps, down Y Mbps`` from a run's settings (the keys that
    are missing are left out)."""
    parts = [str(config[k]) for k in ("dataset", "model") if config.get(k) is not None]
    network = config.get("network") or {}
    for key, word, drawn in (("uplink_mbps", "up", "up_mbps"),
                             ("downlink_mbps", "down", "down_mbps")):
        value = network.get(drawn, config.get(key))  # the links as drawn, if known
        if value is not None:
            parts.append(f"{word} {_mbps(value)} Mbps")
    return ", ".join(parts)


def plot(runs: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: Path,
         title: str | None = None) -> list[Path]:
    """Accuracy vs round, accuracy vs cumulative MB and time per round, one line (or
    bar group) per run, labelled by the keys of ``runs``; returns the PNG paths.

    Parameters
    ----------
    runs
        Legend label (the plan) -> the run's per-round rows (:func:`rows`).
    out_dir
        Where the PNGs go.
    title
        The plots' title, e.g. :func:`plot_title` of the runs' settings.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    paths = []
    for name, x_key, xlabel in (("accuracy_vs_round", "round", "round"),
                                ("accuracy_vs_mb", "cum_mb", "cumulative MB (up + down)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, table in runs.items():
            ax.plot([r[x_key] for r in table], [r["accuracy"] for r in table], marker="o",
                    label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        if x_key == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title:
            ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / f"{name}.png")
        save_png(fig, paths[-1])
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(runs))
    for i, (label, table) in enumerate(runs.items()):
        x = [r["round"] + (i - (len(runs) - 1) / 2) * width for r in table]
        comm = [r["comm_s"] for r in table]
        rest = [r["round_s"] - r["comm_s"] for r in table]
        ax.bar(x, comm, width, label=f"{label}: communication")
        ax.bar(x, rest, width, bottom=comm, alpha=0.5, label=f"{label}: compute + codecs")
    ax.set_xlabel("round")
    ax.set_ylabel("simulated seconds")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "time_per_round.png")
    save_png(fig, paths[-1])
    plt.close(fig)
    return paths
