"""Run by tests/test_flower_deploy.py in a fresh interpreter: the task under Flower's
simulation engine (run_simulation, Ray), 3 nodes, 2 rounds; writes the final weights
and per-round bytes as JSON to argv[1]. Usage: python tests/flower_sim_script.py OUT
PLAN"""

import json
import random
import sys

from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedpress.flower import CompressedStrategy, compression_mod, task, wire

SETTINGS = json.loads(sys.argv[3])
out: dict = {}
server = ServerApp()
client = ClientApp(mods=[compression_mod])
client.train()(task.train)


@server.main()
def main(grid: Grid, context) -> None:
    random.seed(0)
    strategy = CompressedStrategy(
        task.FedAvg64(fraction_evaluate=0.0, min_train_nodes=3, min_available_nodes=3),
        uplink=sys.argv[2])
    result = strategy.start(grid=grid, initial_arrays=task.initial_arrays(SETTINGS),
                            num_rounds=2, train_config=task.config_record(SETTINGS))
    out["weights"] = {k: v.tolist() for k, v in wire.state_of(result.arrays).items()}
    out["history"] = strategy.history


run_simulation(server_app=server, client_app=client, num_supernodes=3,
               backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                               "init_args": {"num_cpus": 2, "num_gpus": 0}})
with open(sys.argv[1], "w") as f:
    json.dump(out, f)
print("FLOWER-SIM-DONE")
