"""Flower for real: the simulation engine (run_simulation, Ray) and a local deployment
(flower-superlink + 2 flower-supernodes on 127.0.0.1, `flwr run`), each in its own
processes, with bounded time and every process stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM = {"dataset": "digits", "model": "mlp", "local-steps": 3, "batch-size": 16, "lr": 0.05,
       "seed": 3}


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


@pytest.mark.slow
def test_simulation_engine_gives_the_fedpress_simulators_weights_and_bytes(tmp_path) -> None:
    """The example app in Flower's run_simulation (Ray actors, 3 nodes, 2 rounds, tiny
    model, FedAvg summed in float64) and ``fedpress.sim`` with the same seed and plan:
    the same weights and bytes, up to the last bit of float arithmetic."""
    from fedpress.flower import task
    from fedpress.sim.fl import FLConfig, simulate

    out = tmp_path / "out"
    run_config = (f'num-server-rounds=2 dataset="digits" model="mlp" local-steps=3 '
                  f'batch-size=16 lr=0.05 seed=3 test-limit=0 uplink="fpz" '
                  f'aggregation="float64" out="{out}"')
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "flower" / "simulate.py"),
                           "--nodes", "3", "--run-config", run_config], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = {"weights": dict(np.load(out / "final.npz")),
           **json.loads((out / "metrics.json").read_text())}
    cfg = FLConfig(model="mlp", clients=3, rounds=2, local_steps=3, batch_size=16, lr=0.05,
                   seed=3, plan="fpz")
    history, model = simulate(task.dataset(SIM), cfg, threads=1)
    # seen once: last-bit differences (possibly FedAvg64 summing in node-id order, random
    # each run, where the simulator sums in client order):
    # the float64 sums may round differently in the last bit, and a value may then land
    # in the neighbouring bin of the lossy codec (one process, fixed ids: bit for bit,
    # test_flower.py; some runs here match bit for bit too)
    for k, v in model.state_dict().items():
        diff = np.abs(np.asarray(got["weights"][k], np.float32) - v.numpy())
        assert np.mean(diff > 1e-6) < 0.02, k
        assert diff.max() <= 2 * 1e-2 * np.ptp(v.numpy()) + 1e-6, k
    rows = [h for h in got["history"] if h["phase"] == "train"]
    for h, m in zip(rows, history, strict=True):
        assert abs(h["bytes_up"] - m.bytes_up) <= 1e-3 * m.bytes_up
        assert h["raw_up"] == m.raw_up
    assert [h["dropped"] for h in rows] == [0, 0]


@pytest.mark.slow
def test_local_deployment_with_a_stateful_plan(tmp_path) -> None:
    """SuperLink + 2 SuperNodes on loopback (free ports), the example app for 2 rounds
    with gaeb coded against the start model plus residual feedback up and fpz updates
    down; the run completes, the bytes are reported, every process exits."""
    home, result = tmp_path / "flwr", tmp_path / "out"
    run_config = (f'num-server-rounds=2 dataset="digits" model="mlp" local-steps=3 '
                  f'batch-size=16 test-limit=0 downlink="fpz(send=update)" '
                  f'uplink="gaeb(reference=true, residual_feedback=true)" out="{result}"')
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "flower" / "deploy_local.py"),
                           "--nodes", "2", "--flwr-home", str(home), "--run-config", run_config,
                           "--timeout", "600"], capture_output=True, text=True, timeout=1200)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((home / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert "finished:completed" in proc.stdout
    assert _flower_processes(home) == []
    metrics = json.loads((result / "metrics.json").read_text())
    rows = [h for h in metrics["history"] if h["phase"] == "train"]
    assert [h["round"] for h in rows] == [1, 2] and all(h["dropped"] == 0 for h in rows)
    for h in rows:  # two clients' weights up, coded against their start: far below raw
        assert 0 < h["bytes_up"] < h["raw_up"] / 10
        assert h["cr_up"] == pytest.approx(h["raw_up"] / h["bytes_up"])
        assert 0 < h["bytes_down"] <= h["raw_down"] * 1.01
    assert rows[1]["bytes_down"] < rows[0]["bytes_down"] / 5  # updates after the first model
    assert set(np.load(result / "final.npz").files) == {"fc1.weight", "fc1.bias", "fc2.weight",
                                                       "fc2.bias", "fc3.weight", "fc3.bias"}
