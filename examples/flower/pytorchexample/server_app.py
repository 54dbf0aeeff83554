"""pytorchexample: A Flower / PyTorch app."""

import json
from functools import partial
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from fedpress.flower import CompressedStrategy
from pytorchexample.task import Net, load_centralized_dataset, test

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""

    # Read run config
    fraction_evaluate: float = context.run_config["fraction-evaluate"]
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["learning-rate"]
    dataset: str = context.run_config["dataset"]

    # Load global model
    global_model = Net()
    arrays = ArrayRecord(global_model.state_dict())

    # Initialize FedAvg strategy
    strategy = CompressedStrategy.from_run_config(
        FedAvg(fraction_evaluate=fraction_evaluate), context.run_config
    )

    # Start strategy, run FedAvg for `num_rounds`
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
        evaluate_fn=partial(global_evaluate, dataset=dataset),
    )

    # Save final model and metrics to disk
    out_dir: str = context.run_config["out-dir"]
    if out_dir:
        print(f"\nSaving final model and metrics to {out_dir}...")
        save(result, Path(out_dir))


def global_evaluate(server_round: int, arrays: ArrayRecord, dataset: str) -> MetricRecord:
    """Evaluate model on central data."""

    # Load the model and initialize it with the received weights
    model = Net()
    model.load_state_dict(arrays.to_torch_state_dict())
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model.to(device)

    # Load entire test set
    test_dataloader = load_centralized_dataset(dataset)

    # Evaluate the global model on the test set
    test_loss, test_acc = test(model, test_dataloader, device)

    # Return the evaluation metrics
    return MetricRecord({"accuracy": test_acc, "loss": test_loss})


def save(result: Result, out: Path) -> None:
    """Write final_model.pt and metrics.json (the metrics of every round) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result.arrays.to_torch_state_dict(), out / "final_model.pt")
    metrics = {
        "train": result.train_metrics_clientapp,
        "evaluate": result.evaluate_metrics_clientapp,
        "central": result.evaluate_metrics_serverapp,
    }
    rounds = {k: {str(r): dict(m) for r, m in v.items()} for k, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(rounds, indent=1))
