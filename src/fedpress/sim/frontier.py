"""The accuracy-traffic frontier: whole trainings per plan and seed, summed up, and
the plan to recommend for an accuracy budget.

A frontier CSV has one row per run (:data:`COLUMNS`): the model, the data split, the
plan's label and the simulator flags that reproduce it, the seed, the final
accuracy (also the best, and the mean of the last 5 rounds, steadier where the
accuracy swings from round to round, as on non-IID splits), the whole run's bytes
both ways (every round, warm-up and first download included) beside raw FedAvg's,
and the time split into computation and transfer.
:func:`run_row` makes a row from a run's ``summary.json`` and ``metrics.csv``
(``benchmarks/frontier.py`` runs the grid); :func:`summarize` groups the rows by
model, split and plan (mean and spread over seeds); :func:`recommend` answers *which
plan sends the fewest bytes within my accuracy budget*.

Only the standard library: reading a frontier needs neither torch nor numpy.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

COLUMNS = ("model", "split", "plan", "flags", "seed", "rounds", "clients",
           "final_accuracy", "best_accuracy", "last5_accuracy", "bytes_up", "bytes_down",
           "raw_up", "raw_down", "reduction", "compute_s", "comm_s", "mbps", "tta_10_s",
           "tta_100_s", "commit")
#: the columns a row must have to be summed up (the rest are informative)
NEEDED = ("model", "split", "plan", "seed", "rounds", "clients", "final_accuracy",
          "bytes_up", "bytes_down", "raw_up", "raw_down", "compute_s", "comm_s", "mbps")


def time_at(rows: Sequence[Mapping[str, Any]], run_mbps: float, mbps: float) -> list[float]:
    """Cumulative seconds after each round at ``mbps`` on every link, from the rounds
    of a run made at ``run_mbps`` (without latency): the measured computation plus the
    transfer time scaled by the bandwidth ratio (transfer is bytes x 8 / bandwidth)."""
    total, out = 0.0, []
    for r in rows:
        comm = float(r["comm_s"])
        total += float(r["round_s"]) - comm + comm * run_mbps / mbps
        out.append(total)
    return out


def time_to_accuracy(rows: Sequence[Mapping[str, Any]], target: float, run_mbps: float,
                     mbps: float) -> float:
    """Seconds until the first round whose accuracy reaches ``target`` (``inf``: never)."""
    for r, t in zip(rows, time_at(rows, run_mbps, mbps), strict=True):
        if float(r["accuracy"]) >= target:
            return t
    return math.inf


def run_row(model: str, split: str, plan: str, flags: str, summary: Mapping[str, Any],
            rounds: Sequence[Mapping[str, Any]], commit: str = "",
            target: float | None = None) -> dict[str, Any]:
    """A frontier row from a run's ``summary.json`` and ``metrics.csv`` rows.

    The run must have been made with the same bandwidth on every link and no latency
    (``mbps``); the times to ``target`` accuracy at 10 and 100 Mbps are left empty
    without a target."""
    config = summary["config"]
    mbps = float(config["uplink_mbps"])
    if float(config["downlink_mbps"]) != mbps or float(config.get("latency_ms") or 0) != 0:
        raise ConfigError("a frontier run needs one bandwidth both ways and no latency")
    raw_up = sum(int(r["raw_up"]) for r in rounds)
    raw_down = sum(int(r["raw_down"]) for r in rounds)
    up, down = int(summary["bytes_up"]), int(summary["bytes_down"])
    comm = sum(float(r["comm_s"]) for r in rounds)
    row = {"model": model, "split": split, "plan": plan, "flags": flags,
           "seed": int(config["seed"]), "rounds": len(rounds), "clients": int(config["clients"]),
           "final_accuracy": float(summary["final_accuracy"]),
           "best_accuracy": float(summary["best_accuracy"]),
           "last5_accuracy": statistics.fmean(float(r["accuracy"]) for r in rounds[-5:]),
           "bytes_up": up,
           "bytes_down": down, "raw_up": raw_up, "raw_down": raw_down,
           "reduction": (raw_up + raw_down) / max(1, up + down),
           "compute_s": sum(float(r["round_s"]) for r in rounds) - comm, "comm_s": comm,
           "mbps": mbps, "tta_10_s": "", "tta_100_s": "", "commit": commit}
    if target is not None:
        row["tta_10_s"] = time_to_accuracy(rounds, target, mbps, 10.0)
        row["tta_100_s"] = time_to_accuracy(rounds, target, mbps, 100.0)
    return row


def read_frontier(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a frontier CSV, numbers parsed; ConfigError naming what is missing."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"cannot read the frontier {path}: {e.strerror or e}") from None
    if not rows:
        raise ConfigError(f"the frontier {path} has no rows")
    missing = [c for c in NEEDED if c not in rows[0]]
    if missing:
        raise ConfigError(f"the frontier {path} lacks the columns {', '.join(missing)}")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            out.append({**r, **{k: float(r[k]) for k in NEEDED
                                if k not in ("model", "split", "plan")}})
        except ValueError:
            raise ConfigError(f"the frontier {path}, line {i}: a number is not one") from None
    return out


@dataclass(frozen=True)
class PlanPoint:
    """One plan on one model and split, over its seeds."""

    model: str
    split: str
    plan: str
    flags: str
    seeds: int
    accuracy: float  # mean final accuracy
    spread: float  # sample standard deviation (0 with one seed)
    bytes_total: float  # mean bytes, up + down, over the whole run
    reduction: float  # raw FedAvg's bytes / this plan's, both ways
    rounds: float
    clients: float
    up_per_client_round: float  # mean bytes one client sends in a round
    down_per_client_round: float
    compute_per_round: float  # seconds: the measured round time without transfers

    def round_seconds(self, up_mbps: float, down_mbps: float) -> float:
        """Seconds per round with these links (computation + one client's transfers)."""
        return (self.compute_per_round + self.up_per_client_round * 8 / (up_mbps * 1e6)
                + self.down_per_client_round * 8 / (down_mbps * 1e6))


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[PlanPoint]:
    """Mean and spread of each (model, split, plan) over its seeds."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["split"], r["plan"]), []).append(r)
    out = []
    for (model, split, plan), rs in sorted(groups.items()):
        acc = [float(r["final_accuracy"]) for r in rs]
        total = statistics.fmean(float(r["bytes_up"]) + float(r["bytes_down"]) for r in rs)
        raw = statistics.fmean(float(r["raw_up"]) + float(r["raw_down"]) for r in rs)
        rounds = statistics.fmean(float(r["rounds"]) for r in rs)
        clients = statistics.fmean(float(r["clients"]) for r in rs)
        per = rounds * clients
        out.append(PlanPoint(
            model, split, plan, str(rs[0].get("flags", "")), len(rs), statistics.fmean(acc),
            statistics.stdev(acc) if len(acc) > 1 else 0.0, total, raw / max(1.0, total),
            rounds, clients, statistics.fmean(float(r["bytes_up"]) for r in rs) / per,
            statistics.fmean(float(r["bytes_down"]) for r in rs) / per,
            statistics.fmean(float(r["compute_s"]) for r in rs) / rounds))
    return out


def paired(rows: Sequence[Mapping[str, Any]], baseline: str = "none",
           column: str = "final_accuracy",
           ) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """Each plan's accuracy (``column``) minus the ``baseline`` plan's on the same
    model, split and seed (each seed is its own data split and initial model), in
    points: ``{(model, split, plan): [(seed, difference), ...]}`` over the seeds both
    ran."""
    base = {(r["model"], r["split"], int(r["seed"])): float(r[column])
            for r in rows if r["plan"] == baseline}
    out: dict[tuple[str, str, str], list[tuple[int, float]]] = {}
    for r in rows:
        key = (r["model"], r["split"], int(r["seed"]))
        if r["plan"] != baseline and key in base:
            out.setdefault((r["model"], r["split"], r["plan"]), []).append(
                (key[2], 100.0 * (float(r[column]) - base[key])))
    return {k: sorted(v) for k, v in out.items()}


@dataclass(frozen=True)
class Recommendation:
    """The plan to use, the baseline it was held against, and the other candidates."""

    best: PlanPoint
    baseline: PlanPoint
    candidates: list[PlanPoint]  # within the budget, fewest bytes first
    budget: float  # accuracy points


def recommend(rows: Iterable[Mapping[str, Any]], model: str, budget: float = 0.5,
              split: str | None = None, baseline: str = "none") -> Recommendation:
    """The plan with the fewest bytes (both ways, whole run) whose mean final accuracy
    is within ``budget`` points of the ``baseline`` plan's (raw FedAvg), on ``model``
    (and ``split``; any split when there is one). ConfigError when the frontier has no
    such model, split or baseline."""
    every = summarize(rows)
    points = [p for p in every if p.model == model]
    if not points:
        models = sorted({p.model for p in every})
        raise ConfigError(f"the frontier has no runs of model {model!r}; it has "
                          f"{', '.join(models) or 'none'}")
    splits = sorted({p.split for p in points})
    if split is None:
        if len(splits) > 1:
            raise ConfigError(f"model {model!r} was run on several splits ({', '.join(splits)}): "
                              "choose one")
        split = splits[0]
    points = [p for p in points if p.split == split]
    if not points:
        raise ConfigError(f"model {model!r} has no runs on split {split!r}; it has "
                          f"{', '.join(splits)}")
    base = next((p for p in points if p.plan == baseline), None)
    if base is None:
        raise ConfigError(f"the frontier has no {baseline!r} runs of {model!r} on {split!r} "
                          "to hold the plans against")
    within = [p for p in points if p.accuracy >= base.accuracy - budget / 100.0]
    within.sort(key=lambda p: (p.bytes_total, -p.accuracy))
    return Recommendation(within[0], base, within, budget)
