"""The accuracy-traffic frontier: rows of whole runs, their summary over seeds, and
``fedpress recommend``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpress.cli import app
from fedpress.errors import ConfigError
from fedpress.sim.frontier import (
    COLUMNS,
    paired,
    read_frontier,
    recommend,
    run_row,
    summarize,
    time_at,
    time_to_accuracy,
)

runner = CliRunner()


def _row(plan: str, seed: int, acc: float, up: float, down: float, model: str = "cnn",
         split: str = "iid") -> dict:
    return {"model": model, "split": split, "plan": plan, "flags": f"--plan {plan}",
            "seed": seed, "rounds": 10, "clients": 4, "final_accuracy": acc,
            "best_accuracy": acc, "bytes_up": up, "bytes_down": down, "raw_up": 4e7,
            "raw_down": 4e7, "reduction": 8e7 / (up + down), "compute_s": 20.0,
            "comm_s": 5.0, "mbps": 10.0, "tta_10_s": "", "tta_100_s": "", "commit": "x"}


FRONTIER = [
    *[_row("none", k, a, 4e7, 4e7) for k, a in enumerate((0.900, 0.902, 0.898))],
    *[_row("fedsz", k, a, 5e6, 4e7) for k, a in enumerate((0.899, 0.897, 0.901))],
    *[_row("ref", k, a, 1e6, 1e6) for k, a in enumerate((0.896, 0.897, 0.898))],
    *[_row("hgc", k, a, 1e5, 2e5) for k, a in enumerate((0.880, 0.885, 0.875))],
    _row("none", 0, 0.7, 4e7, 4e7, split="dirichlet-0.3"),
]


def test_summary_takes_mean_and_spread_over_seeds() -> None:
    points = {(p.split, p.plan): p for p in summarize(FRONTIER)}
    ref = points["iid", "ref"]
    assert ref.seeds == 3 and ref.accuracy == pytest.approx(0.897)
    assert ref.spread == pytest.approx(0.001)
    assert ref.bytes_total == 2e6 and ref.reduction == pytest.approx(40.0)
    assert ref.up_per_client_round == pytest.approx(1e6 / 40)
    # a round: computation (20 s / 10 rounds) + one client's transfers
    assert ref.round_seconds(10, 100) == pytest.approx(2 + 25000 * 8 / 1e7 + 25000 * 8 / 1e8)
    assert points["dirichlet-0.3", "none"].spread == 0.0


def test_paired_differences_are_per_seed_against_raw() -> None:
    rows = [*FRONTIER, _row("ref", 0, 0.69, 1e6, 1e6, split="dirichlet-0.3"),
            _row("ref", 5, 0.9, 1e6, 1e6)]  # a seed raw FedAvg did not run: left out
    got = paired(rows)
    assert [s for s, _ in got["cnn", "iid", "ref"]] == [0, 1, 2]
    assert [d for _, d in got["cnn", "iid", "ref"]] == pytest.approx([-0.4, -0.5, 0.0])
    assert got["cnn", "dirichlet-0.3", "ref"] == [(0, pytest.approx(-1.0))]
    assert ("cnn", "iid", "none") not in got
    best = [_row("none", 0, 0.8, 1, 1) | {"best_accuracy": 0.9},
            _row("ref", 0, 0.8, 1, 1) | {"best_accuracy": 0.85}]
    assert paired(best, column="best_accuracy")["cnn", "iid", "ref"] == [
        (0, pytest.approx(-5.0))]


def test_recommend_picks_the_fewest_bytes_within_the_budget() -> None:
    rec = recommend(FRONTIER, "cnn", budget=0.5, split="iid")
    assert rec.best.plan == "ref" and rec.baseline.plan == "none"
    assert [p.plan for p in rec.candidates] == ["ref", "fedsz", "none"]
    assert recommend(FRONTIER, "cnn", budget=3.0, split="iid").best.plan == "hgc"
    assert recommend(FRONTIER, "cnn", budget=0.15, split="iid").best.plan == "fedsz"
    assert recommend(FRONTIER, "cnn", budget=0.0, split="iid").best.plan == "none"
    with pytest.raises(ConfigError, match="several splits"):
        recommend(FRONTIER, "cnn")
    with pytest.raises(ConfigError, match=r"no runs of model 'resnet18'; it has cnn$"):
        recommend(FRONTIER, "resnet18")
    with pytest.raises(ConfigError, match="no 'none' runs"):
        recommend([r for r in FRONTIER if r["plan"] != "none"], "cnn", split="iid")


def test_time_rescales_the_transfers_only() -> None:
    rounds = [{"round_s": 3.0, "comm_s": 2.0, "accuracy": 0.5},
              {"round_s": 3.0, "comm_s": 2.0, "accuracy": 0.8}]
    assert time_at(rounds, 10, 100) == pytest.approx([1.2, 2.4])
    assert time_to_accuracy(rounds, 0.7, 10, 10) == pytest.approx(6.0)
    assert time_to_accuracy(rounds, 0.9, 10, 10) == math.inf


def test_a_row_from_a_real_run_counts_both_ways(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from fedpress.sim.run import run

    base = {"dataset": "digits", "model": "mlp", "clients": 2, "rounds": 2,
            "local_steps": 2, "uplink_mbps": 10.0, "downlink_mbps": 10.0,
            "test_limit": 100, "first_download": "sent"}
    rows = {}
    for plan, extra in (("none", {}), ("fpz", {"downlink_plan": "fpz",
                                               "downlink_send": "update", "send": "update"})):
        summary = run(base | {"plan": plan} | extra, tmp_path / plan, progress=False)
        rows[plan] = run_row("mlp", "iid", plan, f"--plan {plan}", summary, summary["rows"],
                             target=0.0)
    none, fpz = rows["none"], rows["fpz"]
    assert none["reduction"] == 1.0 and none["bytes_up"] == none["raw_up"]
    assert fpz["raw_up"] == none["raw_up"] and fpz["raw_down"] == none["raw_down"]
    # the initial model's download is counted: round 1's downlink is a whole model
    assert fpz["bytes_down"] > none["bytes_down"] / 2
    assert 0 < fpz["tta_100_s"] <= fpz["tta_10_s"]
    accuracy = [float(r["accuracy"]) for r in summary["rows"]]
    assert fpz["last5_accuracy"] == pytest.approx(sum(accuracy) / len(accuracy))  # 2 rounds
    with pytest.raises(ConfigError, match="one bandwidth both ways"):
        run_row("mlp", "iid", "x", "", {**summary, "config": {**summary["config"],
                                                            "downlink_mbps": 5.0}},
                summary["rows"])


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_recommend_command(tmp_path: Path) -> None:
    csv_path = _write(tmp_path / "frontier.csv", FRONTIER)
    got = runner.invoke(app, ["recommend", "--model", "cnn", "--split", "iid",
                              "--frontier", str(csv_path), "--uplink-mbps", "5"])
    assert got.exit_code == 0, got.output
    assert got.output.startswith("Recommended: ref (cnn, iid, 10 rounds)")
    assert "40.0x less traffic" in got.output
    assert "  fedpress simulate --plan ref\n" in got.output
    assert max(len(line) for line in got.output.splitlines()) <= 80
    assert "(3 seeds)" in got.output and "caution" not in got.output
    single = _write(tmp_path / "single.csv", [r for r in FRONTIER if r["seed"] == 0])
    one = runner.invoke(app, ["recommend", "--model", "cnn", "--split", "iid",
                              "--frontier", str(single)])
    assert one.exit_code == 0, one.output
    assert "(1 seed)" in one.output and "caution: fewer than 3 seeds" in one.output
    bad = runner.invoke(app, ["recommend", "--model", "cnn", "--frontier",
                              str(tmp_path / "missing.csv")])
    assert bad.exit_code == 2 and "cannot read the frontier" in bad.output
    (tmp_path / "broken.csv").write_text("model,plan\ncnn,none\n")
    bad = runner.invoke(app, ["recommend", "--model", "cnn", "--frontier",
                              str(tmp_path / "broken.csv")])
    assert bad.exit_code == 2 and "lacks the columns" in bad.output
    assert read_frontier(csv_path)[0]["final_accuracy"] == 0.9


def test_the_shipped_frontier_answers_for_the_cnn() -> None:
    from fedpress.cli.frontier import DEFAULT_FRONTIER

    rows = read_frontier(DEFAULT_FRONTIER)
    assert {r["model"] for r in rows} >= {"cnn"}
    got = runner.invoke(app, ["recommend", "--model", "cnn", "--split", "iid"])
    assert got.exit_code == 0, got.output
    assert got.output.startswith("Recommended: ") and "less traffic" in got.output
    bad = runner.invoke(app, ["recommend", "--model", "no-such-model"])
    assert bad.exit_code == 2 and "no runs of model" in bad.output
