"""A hostile client's crafted frames (valid checksum) against the Flower server: in
process for every kind of frame, and once in a real local deployment (SuperLink + 2
SuperNodes, `flwr run`), where one node's ClientApp turns hostile. The server drops
each crafted reply with a logged reason and completes the run with the other nodes;
when every node turns hostile, the run fails (``FailedRoundsError``).

The hostile ClientApp is ``tests/flower_hostile_client.py`` (test code only; the
example app has no such switch)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tomllib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

import fedpress
from fedpress.flower import CompressedStrategy, compression_mod, wire
from fedpress.flower.inline import InlineGrid
from fedpress.frame import unpack

from .flower_hostile_client import EVERY, HUGE, KINDS, craft, hostile_mod
from .test_flower import INIT, _numpy_app
from .test_flower_deploy import QUICK, _flower_processes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "flower"


def _run(app: ClientApp, run_config: dict, tamper=None, uplink: str = "fpz"):
    random.seed(0)  # Flower's FedAvg samples nodes with `random`: the same order each run
    grid = InlineGrid(app, 3, run_config=run_config, tamper=tamper)
    s = CompressedStrategy(FedAvg(fraction_evaluate=0.0), uplink=uplink)
    result = s.start(grid=grid, initial_arrays=wire.plain_record(INIT), num_rounds=2)
    return s, result


@pytest.mark.parametrize("kind, uplink, reason", [
    ("sz2", "fpz", "codec 'sz2' is not accepted by this decoder"),
    ("zfp", "fpz", "codec 'zfp' is not accepted by this decoder"),
    ("zfp", "zfp", "zfp payload"),  # the uplink's own codec: its decoder refuses it
    ("huge", "fpz", f"the frame declares 'w' as float32({HUGE},), the model's "
                    "float32(48, 40)"),
    ("garbage", "fpz", ""),
])
def test_a_hostile_clients_reply_is_dropped_and_changes_nothing(
        kind: str, uplink: str, reason: str, caplog) -> None:
    """Node 102 sends a crafted frame in every round: it is dropped with its reason,
    before any payload byte reaches a codec other than the uplink's and before any
    tensor other than the model's is allocated, and the model is the one of a run
    where that node's replies were lost."""
    _, lost = _run(_numpy_app(), {}, uplink=uplink, tamper=lambda n, r: None if n == 102
                   and r.metadata.message_type == "train" else r)  # (and imports, compiles)
    app = _numpy_app(mods=[hostile_mod, compression_mod])
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
            s, result = _run(app, {"hostile-partition": 1, "hostile-frames": kind},
                             uplink=uplink)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20  # a "huge" frame would have made the decoder allocate 1 GiB
    assert [h["dropped"] for h in s.history if h["phase"] == "train"] == [1, 1]
    drops = [r.getMessage() for r in caplog.records if "dropping the reply" in r.getMessage()]
    assert len(drops) == 2 and all("node 102" in d and reason in d for d in drops), drops
    for k, v in wire.state_of(lost.arrays).items():
        assert np.array_equal(wire.state_of(result.arrays)[k], v)


def test_the_crafted_frames_are_what_they_claim() -> None:
    """Each kind keeps the frame's checksum valid and declares what its name says."""
    honest = fedpress.UpdateEncoder("fpz").encode(INIT)
    for kind in KINDS:
        frame = unpack(craft(kind, honest))  # the checksum holds
        ids = [c["id"] for c in frame.codecs]
        specs = {r.name: r.spec.shape for r in frame.records}
        assert specs == {"w": (HUGE,) if kind == "huge" else (48, 40), "b": (40,)}
        if kind in ("sz2", "zfp"):
            assert kind in ids
        if kind == "garbage":
            assert [r.payload for r in frame.records] != \
                [r.payload for r in unpack(honest).records]


def _hostile_app(tmp_path: Path) -> Path:
    """The example app with the hostile ClientApp added and selected (node 1 hostile
    only when the run config says so): the example's own train and evaluate functions,
    with the hostile mod outside fedpress's."""
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", "out"))
    hostile = app / "pytorchexample" / "hostile_client.py"
    shutil.copy(ROOT / "tests" / "flower_hostile_client.py", hostile)
    hostile.write_text(hostile.read_text() + (
        "\n\n# in the example app: the example's client functions\n"
        "from pytorchexample import client_app as _example  # noqa: E402\n\n"
        "app = ClientApp(mods=[hostile_mod, compression_mod])\n"
        "app.train()(_example.train)\n"
        "app.evaluate()(_example.evaluate)\n"))
    toml = (app / "pyproject.toml").read_text()
    honest = 'clientapp = "pytorchexample.client_app:app"'
    assert honest in toml
    toml = toml.replace(honest, 'clientapp = "pytorchexample.hostile_client:app"')
    toml += 'hostile-partition = -1\nhostile-frames = "sz2"\n'  # ends in the app config
    (app / "pyproject.toml").write_text(toml)
    config = tomllib.loads(toml)["tool"]["flwr"]["app"]["config"]
    assert config["hostile-partition"] == -1 and config["fedpress-uplink"] == "fedsz"
    return app


def _deploy(tmp_path: Path, hostile: str, timeout: int,
            ) -> tuple[subprocess.CompletedProcess[str], dict[str, str], str]:
    """deploy_local.py with the hostile test app: SuperLink + 2 SuperNodes, 2 rounds of
    the example on digits, ``hostile`` run-config settings, FLWR_HOME ``tmp_path/flwr``, outputs
    in ``tmp_path/out``. Returns the process, its logs by file name and their tails."""
    home, out = tmp_path / "flwr", tmp_path / "out"
    run_config = f"{QUICK} {hostile} out-dir='{out}'"
    proc = subprocess.run([sys.executable, str(EXAMPLE / "deploy_local.py"), "--nodes", "2",
                           "--app", str(_hostile_app(tmp_path)), "--flwr-home", str(home),
                           "--run-config", run_config, "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=2 * timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    logs = {p.name: p.read_text() for p in sorted((home / "logs").glob("*.log"))}
    tails = "\n".join(f"== {n}\n{t[-1500:]}" for n, t in logs.items())
    return proc, logs, tails


@pytest.mark.slow
def test_a_deployment_survives_a_hostile_client(tmp_path) -> None:
    """SuperLink + 2 SuperNodes, the example's server app for 2 rounds (fedsz up, the
    core install's fpz + zstd); node 1 replies with a frame naming SZ2 with a garbage
    payload in round 1 and one declaring a 1 GiB tensor in round 2. The server drops
    both with their reasons and completes the run on node 0's replies; every process
    exits."""
    home, out = tmp_path / "flwr", tmp_path / "out"
    proc, logs, tails = _deploy(tmp_path, "hostile-partition=1 hostile-frames=\"sz2,huge\"",
                                timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + tails
    assert "finished:completed" in proc.stdout
    assert _flower_processes(home) == []
    rows = list(json.loads((out / "metrics.json").read_text())["train"].values())
    assert [r["fedpress-dropped"] for r in rows] == [1, 1]
    assert all(0 < r["fedpress-bytes-up"] and r["fedpress-raw-up"] == rows[0]["fedpress-raw-up"]
               for r in rows)
    stream = logs["flwr_run.log"]
    assert "codec 'sz2' is not accepted by this decoder" in stream, tails
    assert f"as float32({HUGE},)" in stream, tails
    import torch

    final = torch.load(out / "final_model.pt")
    assert all(torch.isfinite(v).all() for v in final.values())


@pytest.mark.slow
def test_a_deployment_where_every_reply_is_dropped_fails(tmp_path) -> None:
    """SuperLink + 2 SuperNodes, 2 rounds planned, max-failed-rounds 1; both nodes reply
    with frames naming SZ2, so no train reply of round 1 is usable: the ServerApp raises
    FailedRoundsError, ``flwr ls`` shows the run as failed with the dropped replies in
    its details, deploy_local exits 1 and every process exits."""
    home, out = tmp_path / "flwr", tmp_path / "out"
    proc, logs, tails = _deploy(
        tmp_path, f'hostile-partition={EVERY} hostile-frames="sz2" fedpress-max-failed-rounds=1',
        timeout=300)
    everything = proc.stdout + proc.stderr + tails
    assert proc.returncode == 1, everything
    assert "finished:completed" not in proc.stdout + proc.stderr, everything
    assert _flower_processes(home) == []
    # deploy_local's report of the run's `flwr ls` entry: "run N ended STATUS: DETAILS"
    # then the tail of the run's log stream (flwr_run.log)
    stream = logs["flwr_run.log"]
    m = re.search(r"run \d+ ended (\S+): ", proc.stderr)
    assert m is not None, everything
    status, details = m.group(1), proc.stderr[m.end():].split("\n" + stream[-3000:])[0]
    assert status == "finished:failed", everything
    assert "no train reply could be used in a round (max_failed_rounds=1)" in details, details
    assert ("round 1: 0 of 2 replies decodable: 2x dropped: codec 'sz2' is not accepted "
            "by this decoder") in details, details
    assert "FailedRoundsError" in stream, tails
    assert "[ROUND 2/2]" not in stream, tails  # it stopped after the first failed round
    assert not (out / "metrics.json").exists()  # the ServerApp did not reach its end
