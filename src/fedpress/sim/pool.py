"""Where the simulated clients run: in this process, or in worker processes.

Both pools take the round's messages (``{client: Message}``) and return the clients'
:class:`~fedpress.sim.client.ClientResult` s in client order; the server loop does
not know which one it talks to. A client always runs in the same worker (client
``k`` in worker ``k % workers``), so its codec state (error-feedback residuals,
mirrored predictors) stays where it was built. Results are the same in both pools
for the same settings and PyTorch thread count (see the tests).

Worker processes are started with ``spawn`` (safe next to PyTorch's thread pools);
each loads its clients' data once, warms up its codecs and model, and then serves
rounds. Training times are measured inside the workers, so they stay per-client
compute times; only the wall time shrinks.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..exchange import warm_codecs
from ..exchange.deltas import zeros_like
from .client import ClientResult, SimClient, Trainer, state_of, warm_up

if TYPE_CHECKING:
    from .fl import FLConfig
    from .network import Network


class ClientPool(Protocol):
    def run(self, rnd: int, messages: Mapping[int, Any]) -> list[ClientResult]: ...

    def call(self, method: str, rnd: int, messages: Mapping[int, Any],
             ) -> list[ClientResult]: ...

    def close(self) -> None: ...


class InProcessPool:
    """The clients run one after another in this process (the default)."""

    def __init__(self, cfg: FLConfig, shards: Sequence[tuple[np.ndarray, np.ndarray]],
                 input_shape: tuple[int, ...], classes: int,
                 ids: Sequence[int] | None = None, network: Network | None = None) -> None:
        ids = list(range(len(shards))) if ids is None else list(ids)
        self.clients = {k: SimClient(k, x, y, cfg, network) for k, (x, y) in zip(ids, shards)}
        self.trainer = Trainer(cfg, input_shape, classes)
        initial = state_of(self.trainer.model)  # both ends start from the seeded model
        if cfg.codes_first_download:  # or from nothing: the first download is all of it
            initial = zeros_like(initial)
        for client in self.clients.values():
            client.end.held = initial
        warm_codecs(cfg.protocol().uplink_plan, cfg.plan_options)
        warm_codecs(cfg.downlink_plan, cfg.downlink_options)
        first = self.clients[ids[0]]
        warm_up(self.trainer.model, first.x[:cfg.batch_size], first.y[:cfg.batch_size])

    def run(self, rnd: int, messages: Mapping[int, Any]) -> list[ClientResult]:
        return [self.clients[k].round(rnd, messages[k], self.trainer) for k in sorted(messages)]

    def call(self, method: str, rnd: int, messages: Mapping[int, Any]) -> list[ClientResult]:
        """A later phase of the round: each client's answer to ``method``."""
        return [self.clients[k].answer(method, rnd, messages[k]) for k in sorted(messages)]

    def close(self) -> None:
        pass


_WORKER: InProcessPool | None = None  # the clients of a worker process


def _exit_with_parent() -> None:
    """End this worker when the parent process dies (even by SIGKILL), so no worker
    outlives a killed simulation holding its data and model."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        def watch() -> None:
            parent.join()
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="fedpress-parent-watch").start()


def _start_worker(cfg: FLConfig, shards: list[tuple[np.ndarray, np.ndarray]],
                  input_shape: tuple[int, ...], classes: int, ids: list[int],
                  threads: int, network: Network | None = None) -> None:
    global _WORKER
    _exit_with_parent()
    torch.set_num_threads(threads)
    _WORKER = InProcessPool(cfg, shards, input_shape, classes, ids, network)


def _serve(method: str, rnd: int, messages: dict[int, Any]) -> list[ClientResult]:
    if _WORKER is None:  # pragma: no cover - _start_worker always runs first
        raise RuntimeError("worker process not started")
    if method == "round":
        return _WORKER.run(rnd, messages)
    return _WORKER.call(method, rnd, messages)


class ProcessPool:
    """The clients run in ``workers`` processes, ``threads`` PyTorch threads each."""

    def __init__(self, cfg: FLConfig, shards: Sequence[tuple[np.ndarray, np.ndarray]],
                 input_shape: tuple[int, ...], classes: int, workers: int,
                 threads: int = 1, network: Network | None = None) -> None:
        if workers < 2:
            raise ConfigError(f"a process pool needs >= 2 workers, got {workers}")
        workers = min(workers, len(shards))
        context = multiprocessing.get_context("spawn")
        self.workers = workers
        self.executors: list[ProcessPoolExecutor] = []
        started: list[Future[None]] = []
        try:
            for w in range(workers):
                ids = list(range(w, len(shards), workers))
                executor = ProcessPoolExecutor(1, mp_context=context)
                self.executors.append(executor)
                started.append(executor.submit(_start_worker, cfg, [shards[k] for k in ids],
                                               input_shape, classes, ids, threads, network))
            for job in started:  # the workers start side by side; errors surface here
                job.result()
        except BaseException:
            self.close()
            raise

    def run(self, rnd: int, messages: Mapping[int, Any]) -> list[ClientResult]:
        return self.call("round", rnd, messages)

    def call(self, method: str, rnd: int, messages: Mapping[int, Any]) -> list[ClientResult]:
        jobs: list[Future[list[ClientResult]]] = []
        for w, executor in enumerate(self.executors):
            mine = {k: m for k, m in messages.items() if k % self.workers == w}
            if mine:
                jobs.append(executor.submit(_serve, method, rnd, mine))
        results = [r for job in jobs for r in job.result()]
        return sorted(results, key=lambda r: r.client)

    def close(self) -> None:
        for executor in self.executors:
            executor.shutdown(wait=True, cancel_futures=True)
        self.executors = []


def make_pool(cfg: FLConfig, shards: Sequence[tuple[np.ndarray, np.ndarray]],
              input_shape: tuple[int, ...], classes: int, workers: int = 1,
              threads: int = 1, network: Network | None = None) -> ClientPool:
    """An :class:`InProcessPool` for ``workers <= 1``, else a :class:`ProcessPool`."""
    if workers < 1 or threads < 1:
        raise ConfigError(f"workers and threads must be >= 1, got {workers} and {threads}")
    if workers == 1:
        torch.set_num_threads(threads)
        return InProcessPool(cfg, shards, input_shape, classes, network=network)
    return ProcessPool(cfg, shards, input_shape, classes, workers, threads, network)
