#!/usr/bin/env python3
"""Run the example app in Flower's simulation engine (``run_simulation``, Ray).

The run config is the app's ``[tool.flwr.app.config]`` with ``--run-config``
overrides (Flower's syntax: ``'num-server-rounds=2 uplink="gaeb(reference=true)"'``).

Usage (from the project root, in the project's virtual environment)::

    python examples/flower/simulate.py --nodes 4 --run-config 'num-server-rounds=3'
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

APP = Path(__file__).resolve().parent
sys.path.insert(0, str(APP))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4, help="virtual SuperNodes")
    ap.add_argument("--run-config", default="", help="overrides, as for flwr run")
    ap.add_argument("--cpus-per-node", type=float, default=1.0)
    args = ap.parse_args(argv)
    from fedpress_example import client_app, server_app
    from flwr.common.config import parse_config_args
    from flwr.simulation import run_simulation

    with open(APP / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)["tool"]["flwr"]["app"]["config"]
    config.update(parse_config_args([args.run_config]) if args.run_config else {})
    config["min-nodes"] = args.nodes  # every node takes part in every round
    server_app.OVERRIDES.update(config)
    run_simulation(server_app=server_app.app, client_app=client_app.app,
                   num_supernodes=args.nodes,
                   backend_config={"client_resources": {"num_cpus": args.cpus_per_node,
                                                        "num_gpus": 0.0}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
