#!/usr/bin/env python3
"""Run the example app on a real local Flower deployment (flwr 1.41, 1.42), then stop it.

Starts a SuperLink and ``--nodes`` SuperNodes on 127.0.0.1 (free ports, insecure,
each SuperNode with ``partition-id``/``num-partitions``), submits the app with
``flwr run``, waits for the run to end, reads its status with ``flwr ls`` (``flwr run
--stream`` exits 0 even when the ServerApp fails), and stops every process it started,
also on errors and Ctrl-C. Flower's files (config, installed app, logs) go to a
temporary ``FLWR_HOME`` unless ``--flwr-home`` names one; nothing is installed at run
time (the environment must already have fedpress[flower]). ``--app`` submits another
Flower app directory instead of this example (the tests use that).

Usage (from the project root, in the project's virtual environment)::

    python examples/flower/deploy_local.py --nodes 2 \\
        --run-config "num-server-rounds=2 fedpress-uplink='gaeb(reference=true)'"

Exit status 0 when the run finished and completed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parent
CONNECTION = "fedpress-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.3)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Deployment:
    """A SuperLink and SuperNodes as subprocesses (a context manager that stops them)."""

    def __init__(self, home: Path, nodes: int) -> None:
        self.home, self.nodes = home, nodes
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.logfiles: list = []
        self.leftover: list[int] = []

    def _start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "w")
        self.logfiles.append(log)
        proc = subprocess.Popen([str(Path(sys.executable).parent / args[0]), *args[1:]],
                                stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        self.procs.append((name, proc))

    def __enter__(self) -> Deployment:
        try:
            self._start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
                        "--port", str(self.port), "--disable-runtime-dependency-installation")
            wait_for("the SuperLink's port", lambda: port_open(self.port), 60)
            for i in range(self.nodes):
                self._start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink",
                            f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port",
                            str(free_port()), "--node-config",
                            f"partition-id={i} num-partitions={self.nodes}")
            wait_for(f"{self.nodes} SuperNodes to register", lambda: (
                (self.logs / "superlink.log").read_text().count("Activated node_id")
                >= self.nodes), 120)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.leftover = self.stop()

    def flwr(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args],
                              capture_output=True, text=True, env=self.env, timeout=timeout)

    def stop(self) -> list[int]:
        """SIGTERM the SuperNodes, then the SuperLink (SIGKILL after 15 s), then any other
        process of this FLWR_HOME (their SuperExec children). Returns the pids still
        alive (none)."""
        for name, proc in sorted(self.procs, key=lambda p: p[0] == "superlink"):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    print(f"{name} ignored SIGTERM; killing it", file=sys.stderr)
                    proc.kill()
                    try:
                        proc.wait(5)
                    except subprocess.TimeoutExpired:
                        pass
        for log in self.logfiles:
            log.close()
        deadline = time.monotonic() + 10
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)  # SuperExecs notice their parent is gone and exit
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        return self.processes()

    def processes(self) -> list[int]:
        """Live processes (not zombies) whose environment has this FLWR_HOME."""
        tag = f"FLWR_HOME={self.home}".encode()
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if tag in env and state != "Z" and int(pid) != os.getpid():
                found.append(int(pid))
        return found


def run(nodes: int, run_config: str, timeout: float, home: Path, app: Path = APP) -> dict:
    """Deploy, run ``app`` (this example by default), stop. Returns the run's ``flwr
    ls`` entry plus ``wall_s`` and ``stream`` (the run's log); raises if it did not
    complete."""
    t0 = time.monotonic()
    with Deployment(home, nodes) as dep:
        args = ["run", str(app), CONNECTION, "--stream"]
        if run_config:
            args += ["--run-config", run_config]
        done = dep.flwr(*args, timeout=timeout)
        stream = done.stdout + done.stderr
        (dep.logs / "flwr_run.log").write_text(stream)
        m = re.search(r"Successfully started run (\d+)", stream)
        if m is None:
            raise RuntimeError(f"flwr run did not start a run:\n{stream[-3000:]}")
        ls = dep.flwr("ls", CONNECTION, "--run-id", m.group(1), "--format", "json",
                      timeout=120)
        entry = json.loads(ls.stdout)["runs"][0]
    if dep.leftover:
        raise RuntimeError(f"processes still running after the stop: {dep.leftover}")
    entry["wall_s"] = time.monotonic() - t0
    entry["stream"] = stream
    if entry["status"] != "finished:completed":
        raise RuntimeError(f"run {entry['run-id']} ended {entry['status']}: "
                           f"{entry.get('status-details')}\n{stream[-3000:]}")
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--run-config", default="", help="flwr run --run-config overrides")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the run")
    ap.add_argument("--flwr-home", help="Flower's directory (default: a temporary one)")
    ap.add_argument("--app", type=Path, default=APP, help="the Flower app directory to run "
                    "(default: this example)")
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # stop the deployment on the way out
        signal.signal(sig, lambda *_: sys.exit(1))
    home = (Path(args.flwr_home) if args.flwr_home else Path(tempfile.mkdtemp(
        prefix="fedpress-flwr-"))).resolve()
    try:
        entry = run(args.nodes, args.run_config, args.timeout, home, args.app.resolve())
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        print(f"deployment run failed: {exc}\n(logs in {home / 'logs'})", file=sys.stderr)
        return 1
    print(f"run {entry['run-id']}: {entry['status']} in {entry['wall_s']:.0f} s "
          f"(logs in {home / 'logs'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
