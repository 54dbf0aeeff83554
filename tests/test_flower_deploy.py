"""The Flower example for real, each run in its own processes with bounded time and
every process stopped: ``flwr run`` on Flower's local SuperLink (simulation mode, as
docs/flower.md runs it first), and a local deployment (flower-superlink + 2
flower-supernodes on 127.0.0.1, ``examples/flower/deploy_local.py``)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"
#: a quick run of the example: scikit-learn's digits, 2 rounds
QUICK = "num-server-rounds=2 dataset='digits' batch-size=16 learning-rate=0.05"


def _flower_processes(home: Path) -> list[int]:
    """Live processes whose environment names this FLWR_HOME (zombies excluded)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if f"FLWR_HOME={home}".encode() in env.split(b"\0") and state != "Z":
            found.append(int(pid))
    return found


def _stop(home: Path) -> None:
    """SIGTERM every process of this FLWR_HOME, SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in _flower_processes(home):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while _flower_processes(home) and time.monotonic() < end:
            time.sleep(0.3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_rows(out: Path) -> list[dict]:
    """The train metrics of each round, from the ServerApp's metrics.json."""
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert list(train) == ["1", "2"]
    return list(train.values())


@pytest.mark.slow
def test_flwr_run_switches_the_plans_from_the_command_line(tmp_path) -> None:
    """``flwr run examples/flower --stream`` with its defaults' plans replaced by
    ``--run-config`` (fpz at a tighter bound up, fpz updates down): Flower's local
    SuperLink in simulation mode, 2 SuperNodes, 2 rounds. The run completes, both
    directions are compressed (the downlink is raw by default), and no process is
    left once the SuperLink is stopped."""
    home, out = tmp_path / "flwr", tmp_path / "out"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()), "OMP_NUM_THREADS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    flwr = str(Path(sys.executable).parent / "flwr")
    run_config = (f"{QUICK} fedpress-uplink='fpz' fedpress-eb=0.001 "
                  f"fedpress-downlink='fpz(send=update)' out-dir='{out}'")
    try:
        proc = subprocess.run([flwr, "run", ".", "--stream", "--federation-config",
                               "num-supernodes=2", "--run-config", run_config], cwd=EXAMPLE,
                              env=env, capture_output=True, text=True, timeout=600)
        stream = proc.stdout + proc.stderr
        m = re.search(r"Successfully started run (\d+)", stream)
        assert proc.returncode == 0 and m is not None, stream[-3000:]
        ls = subprocess.run([flwr, "ls", "--run-id", m.group(1), "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=120)
        entry = json.loads(ls.stdout)["runs"][0]
        assert entry["status"] == "finished:completed", (entry, stream[-3000:])
    finally:
        _stop(home)
    assert _flower_processes(home) == []
    rows = _train_rows(out)
    assert [r["fedpress-dropped"] for r in rows] == [0, 0]
    for r in rows:
        assert 0 < r["fedpress-bytes-up"] < r["fedpress-raw-up"]
        assert r["fedpress-cr-up"] == pytest.approx(r["fedpress-raw-up"] / r["fedpress-bytes-up"])
        assert r["fedpress-cr-down"] > 1  # raw unless the run config says otherwise
    central = json.loads((out / "metrics.json").read_text())["central"]
    assert central["2"]["accuracy"] > central["0"]["accuracy"]


@pytest.mark.slow
def test_local_deployment_with_a_stateful_plan(tmp_path) -> None:
    """SuperLink + 2 SuperNodes on loopback (free ports), the example app for 2 rounds
    with gaeb coded against the start model plus residual feedback up and fpz updates
    down; the run completes, the bytes are reported, every process exits."""
    home, out = tmp_path / "flwr", tmp_path / "out"
    run_config = (f"{QUICK} fedpress-downlink='fpz(send=update)' "
                  f"fedpress-uplink='gaeb(reference=true, residual_feedback=true)' "
                  f"out-dir='{out}'")
    proc = subprocess.run([sys.executable, str(EXAMPLE / "deploy_local.py"),
                           "--nodes", "2", "--flwr-home", str(home), "--run-config", run_config,
                           "--timeout", "600"], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((home / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert "finished:completed" in proc.stdout
    assert _flower_processes(home) == []
    rows = _train_rows(out)
    assert all(r["fedpress-dropped"] == 0 for r in rows)
    for r in rows:  # two clients' weights up, coded against their start: far below raw
        assert 0 < r["fedpress-bytes-up"] < r["fedpress-raw-up"] / 5
        assert r["fedpress-cr-up"] == pytest.approx(r["fedpress-raw-up"] / r["fedpress-bytes-up"])
        assert 0 < r["fedpress-bytes-down"] <= r["fedpress-raw-down"] * 1.01
    # updates after the first model
    assert rows[1]["fedpress-bytes-down"] < rows[0]["fedpress-bytes-down"] / 1.5
    import torch

    final = torch.load(out / "final_model.pt")
    assert set(final) == {f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")
                          for p in ("weight", "bias")}
