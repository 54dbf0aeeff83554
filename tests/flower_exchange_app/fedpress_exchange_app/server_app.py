"""The ServerApp: FedAvg (float64 sums) wrapped by CompressedStrategy, configured by
the run config; writes the final model and the strategy's history to ``out``."""

import json
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpress.flower import CompressedStrategy, task
from fedpress.flower.wire import state_of

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    inner = task.FedAvg64(fraction_evaluate=0.0, min_train_nodes=nodes,
                          min_available_nodes=nodes)
    strategy = CompressedStrategy.from_run_config(inner, cfg)
    result = strategy.start(grid=grid, initial_arrays=task.initial_arrays(cfg),
                            num_rounds=int(cfg["num-server-rounds"]),
                            train_config=task.config_record(cfg),
                            evaluate_fn=task.central_evaluate(cfg))
    if cfg["out"]:
        out = Path(str(cfg["out"]))
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "final.npz", **state_of(result.arrays))
        central = {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()}
        (out / "metrics.json").write_text(json.dumps(
            {"history": strategy.history, "central": central}, indent=1))
