"""Simulator settings: every flag and TOML value is checked for type and range before
anything runs, and a bad one is a one-line error with exit status 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedpress.errors import ConfigError
from fedpress.sim import run as sim_run

pytest.importorskip("torch")
pytest.importorskip("sklearn")
from fedpress.cli import app
from fedpress.sim.fl import FLConfig

runner = CliRunner()
# small enough that a setting wrongly accepted still ends in seconds
TINY = ["--dataset", "digits", "--model", "mlp", "--clients", "2", "--rounds", "1",
        "--local-steps", "1", "--test-limit", "50"]


def _run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _one_line_error(code: int, out: str, message: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    assert message in lines[0], out


@pytest.mark.parametrize("args,message", [
    (["--clients", "-3"], "clients must be an integer >= 1, got -3"),
    (["--threads", "0"], "threads must be an integer >= 1, got 0"),
    (["--seed", "-1"], "seed must be an integer in 0..4294967295, got -1"),
    (["--test-limit", "-1"], "test_limit must be an integer >= 1, got -1"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--fraction", "1.5"], "fraction must be a number in (0, 1]"),
    (["--lr", "0"], "lr must be a number > 0"),
    (["--partition", "random"], "partition must be one of iid, dirichlet, shards"),
])
def test_bad_flags_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    _one_line_error(*_run("simulate", *TINY, *args, "--out", tmp_path), message)


@pytest.mark.parametrize("line,message", [
    ('rounds = "three"', "rounds must be an integer >= 1, got 'three'"),
    ('eb = "big"', "eb must be a number >= 0, got 'big'"),
    ("clients = 2.5", "clients must be an integer >= 1, got 2.5"),
    ("local_steps = true", "local_steps must be an integer >= 1, got True"),
    ("test-limit = -1", "test_limit must be an integer >= 1, got -1"),
    ('uplink-mbps = "fast"', "uplink_mbps must be a number, a list of numbers"),
    ("momentum = 1.0", "momentum must be a number in [0, 1)"),
    ('reference = "yes"', "reference must be true or false"),
    ("lr_milestones = [2.5]", "lr_milestones: expected round numbers"),
])
def test_bad_toml_values_are_one_line_errors(tmp_path: Path, line: str, message: str) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'dataset = "digits"\nmodel = "mlp"\n{line}\n')
    for command in (["simulate"], ["compare", "--plans", "none"]):
        _one_line_error(*_run(*command, "--config", cfg, "--out", tmp_path / "o"), message)


def test_good_settings_of_every_form_pass() -> None:
    s = sim_run.resolve({
        "clients": 3, "lr": 1, "fraction": 0.5, "eb": 0, "uplink_mbps": [1, 2.5, 4],
        "downlink_mbps": {"median": 10, "sigma": 0.5}, "latency_ms": 5,
        "lr_milestones": "15,22", "momentum_steps": "1:0.3,10:0.6", "reference": "true",
        "local_steps": None, "test_limit": 100, "seed": 2**32 - 1,
        "plan": {"re:weight": "fpz", "default": "zstd"}})
    assert s["clients"] == 3 and s["workers"] == 1
    sim_run.check_settings(s)


@pytest.mark.parametrize("settings", [
    {"rounds": True}, {"batch_size": 64.0}, {"workers": "2"}, {"lr": False},
    {"mode": "absolute"}, {"eb": float("nan")}, {"threshold": -1}, {"plan": 3},
    {"latency_ms": {"median": 1, "spread": 2}}, {"momentum_steps": "0:0.5"},
    {"algorithm": "fedsgd"}, {"aggregate": "median"}, {"out": 3}, {"seed": 2**32},
])
def test_check_settings_refuses(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        sim_run.resolve(settings)


@pytest.mark.parametrize("field,value", [("clients", True), ("rounds", 2.5), ("seed", -1),
                                         ("local_steps", 0), ("batch_size", "64")])
def test_fl_config_checks_types_too(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        FLConfig(**{field: value}).check()
