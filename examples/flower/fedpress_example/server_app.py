"""The ServerApp: FedAvg wrapped in fedpress's CompressedStrategy."""

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedpress.flower import CompressedStrategy, task

app = ServerApp()
#: run config entries that override the run's (simulate.py sets them: Flower's
#: run_simulation gives the app an empty run config)
OVERRIDES: dict = {}


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = {**context.run_config, **OVERRIDES}
    inner = (task.FedAvg64 if cfg.get("aggregation", "float32") == "float64" else FedAvg)(
        fraction_evaluate=float(cfg.get("fraction-evaluate", 0.0)),
        min_train_nodes=int(cfg.get("min-nodes", 2)),
        min_available_nodes=int(cfg.get("min-nodes", 2)))
    # the fedpress lines on the server: a plan for each direction
    strategy = CompressedStrategy(inner, uplink=str(cfg.get("uplink", "fedsz")),
                                  downlink=str(cfg.get("downlink", "none")),
                                  uplink_mbps=float(cfg.get("uplink-mbps", 10.0)),
                                  downlink_mbps=float(cfg.get("downlink-mbps", 10.0)),
                                  max_failed_rounds=int(cfg.get("max-failed-rounds", 1)))
    result = strategy.start(grid=grid, initial_arrays=task.initial_arrays(cfg),
                            num_rounds=int(cfg.get("num-server-rounds", 3)),
                            train_config=task.config_record(cfg),  # how clients train
                            evaluate_config=task.config_record(cfg),
                            evaluate_fn=task.central_evaluate(cfg))
    out = str(cfg.get("out", ""))
    if out:  # the final model and the per-round figures, for scripts and tests
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        import numpy as np

        from fedpress.flower.wire import state_of

        np.savez(path / "final.npz", **state_of(result.arrays))
        accuracy = {r: dict(m) for r, m in result.evaluate_metrics_serverapp.items()}
        (path / "metrics.json").write_text(json.dumps(
            {"history": strategy.history, "central": accuracy}, indent=1))
