"""The fedpress simulator's training, as Flower train/evaluate functions.

With these, a Flower app and ``fedpress simulate`` run the same experiment: the same
dataset split, seeded model, local SGD (seeded by client and round) and test set.
With the same seed and plan the two give the same weights and bytes (the tests
compare them; ``examples/flower/`` is Flower's own PyTorch app instead).

Settings (Flower's ``[tool.flwr.app.config]``, all optional): ``dataset``
(``fashion-mnist``, ``digits``, ``cifar10``), ``data-dir``, ``model``, ``local-steps``,
``local-epochs``, ``batch-size``, ``lr``, ``momentum``, ``partition``, ``alpha``,
``seed``, ``threads`` (PyTorch threads per client), ``test-limit``. The server sends
them to the clients in the config of every message (:func:`config_record`), so the
server's run config decides; a client's own run config fills in what the message
lacks (Flower's ``run_simulation`` gives the apps an empty run config).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from ..errors import ConfigError
from ..exchange import weighted_mean
from ..sim.client import SimClient, Trainer, load_state, normalise, state_of
from ..sim.data import Dataset, load_dataset, partition
from ..sim.fl import FLConfig
from ..sim.fl import evaluate as test_model
from ..sim.models import build_model
from . import wire

_KEYS = {"dataset": str, "data-dir": str, "model": str, "local-steps": int,
         "local-epochs": int, "batch-size": int, "lr": float, "momentum": float,
         "partition": str, "alpha": float, "seed": int, "threads": int, "test-limit": int}


def settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The task's settings from a run config (defaults for the keys it lacks)."""
    out: dict[str, Any] = {"dataset": "fashion-mnist", "data-dir": "", "model": "cnn",
                           "local-steps": 0, "local-epochs": 1, "batch-size": 64,
                           "lr": 0.01, "momentum": 0.9, "partition": "iid", "alpha": 0.5,
                           "seed": 0, "threads": 1, "test-limit": 0}
    for key, kind in _KEYS.items():
        if key in run_config:
            try:
                out[key] = kind(run_config[key])
            except (TypeError, ValueError):
                raise ConfigError(f"run config {key!r}: expected {kind.__name__}, got "
                                  f"{run_config[key]!r}") from None
    return out


def config_record(run_config: Mapping[str, Any]) -> ConfigRecord:
    """The task's settings as a ConfigRecord, for ``Strategy.start``'s ``train_config``
    and ``evaluate_config``: the clients train as the server's run config says."""
    return ConfigRecord({k: v for k, v in settings(run_config).items()})


def _settings_of(message: Message, context: Context) -> dict[str, Any]:
    config = wire.config_of(message)
    return {**context.run_config, **{k: v for k, v in config.items() if k in _KEYS}}


def fl_config(run_config: Mapping[str, Any], clients: int) -> FLConfig:
    """The simulator's config for these settings and ``clients`` partitions."""
    s = settings(run_config)
    cfg = FLConfig(model=s["model"], clients=clients, local_epochs=s["local-epochs"],
                   local_steps=s["local-steps"] or None, batch_size=s["batch-size"],
                   lr=s["lr"], momentum=s["momentum"], partition=s["partition"],
                   alpha=s["alpha"], seed=s["seed"])
    cfg.check()
    return cfg


@lru_cache(maxsize=2)
def _dataset(name: str, data_dir: str) -> Dataset:
    return load_dataset(name, data_dir or None)


def dataset(run_config: Mapping[str, Any]) -> Dataset:
    """The run's dataset (loaded once per process)."""
    s = settings(run_config)
    return _dataset(s["dataset"], s["data-dir"])


_CLIENTS: dict[tuple, tuple[SimClient, Trainer]] = {}


def _client(context: Context, run: Mapping[str, Any]) -> tuple[SimClient, Trainer]:
    """This node's simulator client (its data shard) and a model to train, for the
    settings ``run``."""
    try:
        pid = int(context.node_config["partition-id"])
        parts = int(context.node_config["num-partitions"])
    except (KeyError, ValueError, TypeError):
        raise ConfigError("the node config needs partition-id and num-partitions "
                          "(flower-supernode --node-config 'partition-id=0 "
                          "num-partitions=2')") from None
    if not 0 <= pid < parts:
        raise ConfigError(f"partition-id {pid} is not in 0..{parts - 1}")
    key = (pid, parts, tuple(sorted(settings(run).items())))
    if key not in _CLIENTS:
        cfg = fl_config(run, parts)
        torch.set_num_threads(settings(run)["threads"])
        ds = dataset(run)
        idx = partition(ds.y_train, parts, cfg.partition, alpha=cfg.alpha, seed=cfg.seed)[pid]
        _CLIENTS[key] = (SimClient(pid, ds.x_train[idx], ds.y_train[idx], cfg),
                         Trainer(cfg, ds.input_shape, ds.num_classes))
    return _CLIENTS[key]


def _arrays(message: Message) -> dict[str, np.ndarray]:
    key = wire.array_key(message.content)
    if key is None:
        raise ConfigError("the server's message carries no model")
    return wire.state_of(message.content.array_records[key])


def train(message: Message, context: Context) -> Message:
    """Local SGD from the received model (as the simulator's client); the trained
    weights and ``num-examples``."""
    client, trainer = _client(context, _settings_of(message, context))
    rnd = int(wire.config_of(message).get("server-round", 1))
    local = client._train(trainer.model, _arrays(message), rnd)
    return Message(RecordDict({"arrays": wire.plain_record(local),
                               "metrics": MetricRecord({"num-examples": len(client.y)})}),
                   reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """Accuracy and loss of the received model on this node's shard."""
    client, trainer = _client(context, _settings_of(message, context))
    load_state(trainer.model, _arrays(message))
    acc, loss = test_model(trainer.model, client.x, client.y)
    return Message(RecordDict({"metrics": MetricRecord(
        {"num-examples": len(client.y), "accuracy": acc, "loss": loss})}), reply_to=message)


def initial_arrays(run_config: Mapping[str, Any]) -> ArrayRecord:
    """The seeded initial model (the simulator's)."""
    s, ds = settings(run_config), dataset(run_config)
    model = build_model(s["model"], ds.input_shape, ds.num_classes, seed=s["seed"])
    return wire.plain_record(state_of(model))


def central_evaluate(run_config: Mapping[str, Any],
                     ) -> Callable[[int, ArrayRecord], MetricRecord]:
    """``evaluate_fn`` for ``Strategy.start``: test accuracy of the global model."""
    s, ds = settings(run_config), dataset(run_config)
    n = len(ds.y_test) if not s["test-limit"] else min(s["test-limit"], len(ds.y_test))
    x, y = normalise(ds.x_test[:n]), torch.from_numpy(ds.y_test[:n])
    model = build_model(s["model"], ds.input_shape, ds.num_classes, seed=s["seed"])

    def fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        load_state(model, wire.state_of(arrays))
        acc, loss = test_model(model, x, y)
        return MetricRecord({"accuracy": acc, "loss": loss})

    return fn


class FedAvg64(FedAvg):
    """FedAvg whose weighted mean accumulates in float64, like the fedpress simulator
    (Flower's FedAvg accumulates in the arrays' dtype, float32): the two then agree
    bit for bit."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        ok = sorted((r for r in replies if not r.has_error()),
                    key=lambda r: r.metadata.src_node_id)  # a fixed order: node ids
        if arrays is None or not ok:
            return arrays, metrics
        states = [wire.state_of(next(iter(r.content.array_records.values()))) for r in ok]
        weights = [float(next(iter(r.content.metric_records.values()))[self.weighted_by_key])
                   for r in ok]
        return wire.plain_record(weighted_mean(states, weights)), metrics
