"""``fedpress simulate`` / ``compare`` on sklearn digits: outputs written with the
promised columns, TOML config with flags on top, and one-line errors that name the fix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("sklearn")
from fedpress.cli import app

runner = CliRunner()
TINY = ["--dataset", "digits", "--model", "mlp", "--clients", "3", "--rounds", "2"]


def _run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_simulate_writes_metrics_summary_and_plots(tmp_path: Path) -> None:
    code, out = _run("simulate", *TINY, "--plan", "fpz", "--uplink-mbps", "1,2,4",
                     "--out", tmp_path)
    assert code == 0, out
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for col in ("round", "accuracy", "loss", "bytes_up", "bytes_down", "cr_up", "cr_down",
                "encode_s", "decode_s", "comm_s", "round_s"):
        assert col in rows[0]
    assert float(rows[0]["cr_up"]) > 3 and float(rows[0]["cr_down"]) == 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["plan"] == "fpz"
    assert summary["config"]["network"]["up_mbps"] == [1.0, 2.0, 4.0]
    for png in ("accuracy_vs_round", "accuracy_vs_mb", "time_per_round"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000


def test_compare_side_by_side_from_a_toml_config(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text('dataset = "digits"\nmodel = "mlp"\nclients = 2\nrounds = 4\n'
                   'uplink-mbps = 10\n')
    code, out = _run("compare", "--config", cfg, "--rounds", "1", "--plans", "none,fpz",
                     "--out", tmp_path / "cmp")
    assert code == 0, out
    with open(tmp_path / "cmp" / "comparison.csv") as f:
        table = {r["plan"]: r for r in csv.DictReader(f)}
    assert set(table) == {"none", "fpz"}
    assert float(table["fpz"]["cr_up"]) > 3 and float(table["none"]["cr_up"]) == 1.0
    assert float(table["fpz"]["comm_s"]) < float(table["none"]["comm_s"])
    assert (tmp_path / "cmp" / "fpz" / "metrics.csv").is_file()
    with open(tmp_path / "cmp" / "fpz" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # --rounds beat the file's 4
    assert "| none |" in (tmp_path / "cmp" / "comparison.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist"], "choose one of fashion-mnist, digits, cifar10"),
    (["--model", "vgg"], "unknown model 'vgg'"),
    (["--eb", "3"], "eb out of range"),
    (["--uplink-mbps", "-1"], "--uplink-mbps"),
    (["--dataset", "cifar10"], "needs --data-dir"),
    (["--config", "/nonexistent.toml"], "cannot read config"),
])
def test_bad_settings_give_one_line_errors(tmp_path: Path, args: list[str],
                                           message: str) -> None:
    code, out = _run("simulate", *TINY, *args, "--out", tmp_path)
    assert code == 2
    assert message in out and "Traceback" not in out


def test_advise_break_even_bandwidth(tmp_path: Path) -> None:
    import numpy as np

    from fedpress.sim import advise

    rng = np.random.default_rng(0)
    state = {"fc.weight": rng.standard_normal((64, 128)).astype(np.float32),
             "fc.bias": np.zeros(64, np.float32)}
    rows = advise.advise(state, ["fpz", "fedsz:sz3"], [1e-2], repeats=1)
    for r in rows:
        assert r["cr"] > 2
        # at the break-even bandwidth both ways take the same time
        b = np.array([r["break_even_mbps"]])
        assert advise.comm_seconds(r, b)[0] == pytest.approx(8 * r["raw_bytes"] / (b[0] * 1e6))
    np.savez(tmp_path / "m.npz", **state)
    code, out = _run("advise", tmp_path / "m.npz", "--codecs", "fpz", "--eb", "1e-2",
                     "--repeat", "1", "--plot", tmp_path / "adv.png")
    assert code == 0, out
    assert "pays below (Mbps)" in out and (tmp_path / "adv.png").stat().st_size > 1000


def test_compare_gradient_compressors_with_plan_options(tmp_path: Path) -> None:
    code, out = _run("compare", *TINY, "--send", "gradient", "--local-steps", "2",
                     "--plans", "none,ef:topk(ratio=0.05),powersgd(rank=2)",
                     "--workers", "1", "--out", tmp_path)
    assert code == 0, out
    with open(tmp_path / "comparison.csv") as f:
        table = {r["plan"]: r for r in csv.DictReader(f)}
    assert set(table) == {"none", "ef:topk(ratio=0.05)", "powersgd(rank=2)"}
    assert float(table["ef:topk(ratio=0.05)"]["cr_up"]) > 5
    assert float(table["powersgd(rank=2)"]["cr_up"]) > 2


def test_plan_specs_and_the_heterogeneous_example() -> None:
    from fedpress.errors import ConfigError
    from fedpress.sim.network import Network
    from fedpress.sim.run import load_config, parse_plan_spec, resolve, split_plans

    assert split_plans("none, topk(ratio=0.01, approx=true),fpz") == [
        "none", "topk(ratio=0.01, approx=true)", "fpz"]
    assert parse_plan_spec("ef:topk(ratio=0.01, approx=true, name=x)") == (
        "ef:topk", {"ratio": 0.01, "approx": True, "name": "x"})
    assert parse_plan_spec("fpz") == ("fpz", {})
    for bad in ("topk(ratio)", "topk(ratio=1", "(x=1)"):
        with pytest.raises(ConfigError):
            split_plans(bad) and parse_plan_spec(bad)
    example = Path(__file__).parents[1] / "examples" / "heterogeneous.toml"
    s = resolve(load_config(example))
    net = Network.build(s["clients"], s["uplink_mbps"], s["downlink_mbps"], s["latency_ms"],
                        seed=s["seed"])
    assert len(set(net.up_mbps.tolist())) == 8 and net.latency_ms[-1] == 150


def test_a_plan_spec_can_carry_its_own_run_settings(tmp_path: Path) -> None:
    code, out = _run("compare", *TINY, "--send", "gradient", "--plans",
                     "signsgd(aggregate=vote),powersgd(rank=1, aggregate=powersgd)",
                     "--out", tmp_path)
    assert code == 0, out
    vote = json.loads((tmp_path / "signsgd_aggregate_vote_" / "summary.json").read_text())
    assert vote["config"]["aggregate"] == "vote"
    low = json.loads((tmp_path / "powersgd_rank_1__aggregate_powersgd_" /
                      "summary.json").read_text())
    assert low["config"]["aggregate"] == "powersgd" and low["cr_down"] < 1


def test_simulate_at_80_columns_titles_its_plots(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpress.cli.sim import SUMMARY_COLUMNS
    from fedpress.sim import report

    titles: list[tuple[str, list[str]]] = []
    real = report.save_png

    def keep(fig, path, **kw):  # type: ignore[no-untyped-def]
        ax = fig.axes[0]
        titles.append((ax.get_title(), [t.get_text() for t in ax.get_legend().get_texts()]))
        real(fig, path, **kw)

    monkeypatch.setattr(report, "save_png", keep)
    result = runner.invoke(app, [str(a) for a in ("simulate", *TINY, "--plan", "fpz",
                                                  "--uplink-mbps", "2,8,4", "--out", tmp_path)],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    lines = lines[lines.index(next(x for x in lines if x.startswith("fedpress simulation"))):]
    assert all(len(line.rstrip()) <= 80 and "…" not in line for line in lines), lines
    at = next(i for i, line in enumerate(lines) if line.startswith("plan"))
    assert lines[at].split() == [w for title, _ in SUMMARY_COLUMNS for w in title.split()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    row = lines[at + 2].split()  # under the header's rule
    assert row[0] == "fpz"
    assert row[1] == f"{summary['final_accuracy']:.3f}"
    assert len(titles) == 3
    for title, legend in titles:
        assert title == "digits, mlp, up 2-8 Mbps, down 10 Mbps"
        assert legend and all(label.startswith("fpz") for label in legend)
