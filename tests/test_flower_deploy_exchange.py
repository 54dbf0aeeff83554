"""HGC's multi-phase exchange in a real local Flower deployment: flower-superlink and 2
flower-supernodes on 127.0.0.1 (``examples/flower/deploy_local.py``), ``flwr run`` of a
test app whose strategy reads the uplink from the run config, bounded time, every
process stopped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_flower_deploy import _flower_processes

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "flower_exchange_app"
MODEL_BYTES = 662_520 // 3  # the digits MLP's float32 tensors


@pytest.mark.slow
def test_local_deployment_runs_hgcs_exchange(tmp_path) -> None:
    """3 rounds of HGC's shared-mask exchange between 2 SuperNodes: its mask and values
    phases go as more train messages, each ClientApp runs in a process of its own with
    its HGC end kept in Context.state. The run completes, the bytes are reported, every
    process exits."""
    app, home, out = tmp_path / "app", tmp_path / "flwr", tmp_path / "out"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    run_config = (f"num-server-rounds=3 fedpress-uplink='hgc(density=0.05, aggregate=hgc)' "
                  f"out='{out}'")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "flower" / "deploy_local.py"),
                           "--nodes", "2", "--flwr-home", str(home), "--app", str(app),
                           "--run-config", run_config, "--timeout", "600"],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((home / "logs").glob("*.log")))
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    assert "finished:completed" in proc.stdout
    assert _flower_processes(home) == []
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    rows = [h for h in history if h["phase"] == "train"]
    assert [h["round"] for h in rows] == [1, 2, 3]
    assert [h["dropped"] for h in rows] == [0, 0, 0]
    assert [h["restarted"] for h in rows] == [2, 0, 0]
    assert [h["round"] for h in history if h["phase"] == "hgc_master"] == [1, 2, 3]
    assert [h["nodes"] for h in history if h["phase"] == "hgc_values"] == [1, 1, 1]
    for h in rows:
        assert h["raw_up"] == h["raw_down"] == 2 * MODEL_BYTES
        assert 0 < h["bytes_up"] < h["raw_up"] / 50  # the mask and the values, no more
        assert h["flower_bytes_up"] > h["bytes_up"]
    assert rows[0]["bytes_down"] > 2 * MODEL_BYTES  # the model, then the forwarded mask
    assert all(h["bytes_down"] < h["raw_down"] / 20 for h in rows[1:])  # the aggregate
    assert metrics["central"]["3"]["accuracy"] > metrics["central"]["0"]["accuracy"]
    print("HGC in a deployment, per round (bytes up, down; Flower's messages up, down):",
          [(h["bytes_up"], h["bytes_down"], h["flower_bytes_up"], h["flower_bytes_down"])
           for h in rows])
