"""The exchange layer: state-dict deltas, the round protocols without a framework,
and the layering (the exchange layer and Flower's ends load without torch or the
simulator)."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedpress.errors import ConfigError
from fedpress.exchange import (
    Downlink,
    PhaseCost,
    RoundProtocol,
    SingleExchange,
    State,
    apply_changes,
    changes,
    exchange_for,
    exchanges,
    raw_bytes,
    register_exchange,
    weighted_mean,
    zeros_like,
)

from .common import run_isolated


def test_changes_carry_float_differences_and_integer_values() -> None:
    rng = np.random.default_rng(0)
    held = {"w": rng.standard_normal(50).astype(np.float32),
            "n": np.array(3, dtype=np.int64)}
    target = {"w": rng.standard_normal(50).astype(np.float32),
              "n": np.array(7, dtype=np.int64)}
    d = changes(held, target)
    assert d["n"] == 7 and d["w"].dtype == np.float32
    moved = apply_changes(held, d)
    assert moved["n"] == 7 and moved["w"].dtype == np.float32
    # float32 arithmetic: target - held + held is target to within one rounding step
    assert np.abs(moved["w"] - target["w"]).max() <= 2 * np.spacing(np.abs(target["w"])).max()
    assert raw_bytes(held) == 50 * 4 + 8
    z = zeros_like(held)
    assert not any(v.any() for v in z.values()) and z["w"].dtype == np.float32


def test_the_exchange_layer_imports_neither_torch_nor_the_simulator() -> None:
    script = (
        "import sys\n"
        "for m in ('torch', 'matplotlib', 'flwr'):\n"
        "    sys.modules[m] = None\n"
        "import fedpress.exchange\n"
        "assert not any(m.startswith('fedpress.sim') for m in sys.modules), sorted(sys.modules)\n"
        "print('exchange-ok')\n"
    )
    run_isolated(script, "exchange-ok")


def test_flower_and_the_exchange_layer_load_without_torch_sim_or_matplotlib() -> None:
    script = (
        "import sys\n"
        "for m in ('torch', 'matplotlib', 'fedpress.sim'):\n"
        "    sys.modules[m] = None\n"
        "import fedpress.exchange\n"
        "from fedpress.flower import CompressedStrategy, compression_mod\n"
        "from fedpress.flower import inline, link, mod, strategy, wire\n"
        "from flwr.serverapp.strategy import FedAvg\n"
        "CompressedStrategy(FedAvg(), uplink='fedsz', downlink='fpz(eb=0.01)')\n"
        "bad = [m for m in sys.modules if m.startswith(('torch', 'matplotlib', 'fedpress.sim'))\n"
        "       and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
        "print('flower-ok')\n"
    )
    run_isolated(script, "flower-ok")


# -- the round protocols, driven without the simulator ---------------------------------
class _Runtime:
    """A minimal runtime: client ends in a dict, ``call`` answers a phase in order."""

    def __init__(self, protocol: RoundProtocol, initial: State, clients: int) -> None:
        self.ends = {k: protocol.client(str(k)) for k in range(clients)}
        for end in self.ends.values():
            end.held = initial

    def call(self, phase: str, payloads: Mapping[int, Any]) -> list[SimpleNamespace]:
        out = []
        for k in sorted(payloads):
            message, nbytes = self.ends[k].answer(phase, payloads[k])
            out.append(SimpleNamespace(client=k, message=message, nbytes=nbytes,
                                       encode_s=0.0))
        return out


class _Links:
    def upload_s(self, client: Any, nbytes: int) -> float:
        return nbytes / 1e6

    def download_s(self, client: Any, nbytes: int) -> float:
        return nbytes / 1e7


def _settings(**kw: Any) -> SimpleNamespace:
    base = {"plan": None, "plan_options": {}, "downlink_plan": None, "downlink_options": {},
            "downlink_send": "weights", "send": "update", "reference": False,
            "algorithm": "fedavg", "server_lr": 1.0, "fraction": 1.0, "lr_milestones": ()}
    base.update(kw)
    return SimpleNamespace(**base)


def _model(rng: np.random.Generator) -> State:
    return {"conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
            "fc.weight": rng.standard_normal((10, 64)).astype(np.float32),
            "fc.bias": rng.standard_normal(10).astype(np.float32),
            "bn.running_mean": rng.standard_normal(8).astype(np.float32),
            "bn.num_batches_tracked": np.array(5, np.int64)}


def _round(protocol: RoundProtocol, server: Any, runtime: _Runtime, state: State,
           rng: np.random.Generator, params: frozenset[str]) -> tuple[State, Any, dict]:
    """One round: the first messages, each client's reply to a random update, the
    later phases; returns the replies' mean merged with the exchange's aggregate."""
    chosen = sorted(runtime.ends)
    down = Downlink(None, {}, len(chosen), "weights", state)
    messages, sizes, _ = server.downlink(chosen, state, down)
    replies = []
    for k in chosen:
        start = runtime.ends[k].receive(messages[k])
        update = {n: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
                  if v.dtype.kind == "f" else v for n, v in start.items()}
        message, nbytes = runtime.ends[k].reply(update, start, params)
        assert isinstance(message, dict) and nbytes == raw_bytes(message)
        replies.append(dict(message))
    weights = [1.0 + k for k in chosen]
    cost = server.exchange(chosen, replies, weights, runtime.call, _Links(), sizes)
    return weighted_mean(replies, weights), cost, sizes


def test_hgc_protocol_keeps_every_end_on_the_servers_model() -> None:
    rng = np.random.default_rng(3)
    state = _model(rng)
    params = frozenset(k for k in state if "running" not in k and "tracked" not in k)
    protocol = exchange_for(_settings(plan="hgc", plan_options={"density": 0.1}), "hgc")
    assert protocol.uplink_plan is None
    server = protocol.server(state, params)
    runtime = _Runtime(protocol, state, 3)
    for _ in range(4):
        mean, cost, _ = _round(protocol, server, runtime, state, rng, params)
        assert isinstance(cost, PhaseCost) and cost.bytes_up > 0
        # the parameters at the mask and the float buffers' coded mean change
        assert set(cost.aggregate) == set(server.names) | {"bn.running_mean"}
        assert set(server.exchanged) == set(cost.aggregate)
        # the server's arithmetic: the aggregate added, the other buffers averaged
        new = dict(state)
        for k, v in cost.aggregate.items():
            new[k] = (state[k] + v.astype(np.float64)).astype(state[k].dtype)
        for k in state:
            if k not in server.exchanged:
                new[k] = mean[k]
        state = new
        masks = [end.mask for end in runtime.ends.values()]
        assert all(np.array_equal(m[k], masks[0][k]) for m in masks for k in masks[0])
    # the next downlink brings the last aggregate: every client then holds the model
    down = Downlink(None, {}, 3, "weights", state)
    messages, _, _ = server.downlink(sorted(runtime.ends), state, down)
    for k, end in runtime.ends.items():
        held = end.receive(messages[k])
        assert all(held[n].tobytes() == state[n].tobytes() for n in state)


@pytest.mark.parametrize("bad", ["missing", "garbage", "other names"])
def test_hgc_drops_a_client_whose_coded_buffers_do_not_decode(bad: str) -> None:
    from fedpress.exchange.buffers import KEY, BufferCoder

    rng = np.random.default_rng(5)
    state = _model(rng)
    params = frozenset(k for k in state if "running" not in k and "tracked" not in k)
    protocol = exchange_for(_settings(plan="hgc", plan_options={"density": 0.1}), "hgc")
    server = protocol.server(state, params)
    runtime = _Runtime(protocol, state, 3)
    chosen = sorted(runtime.ends)
    messages, sizes, _ = server.downlink(chosen, state, Downlink(None, {}, 3, "weights", state))
    replies = []
    for k in chosen:
        start = runtime.ends[k].receive(messages[k])
        update = {n: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
                  if v.dtype.kind == "f" else v for n, v in start.items()}
        replies.append(dict(runtime.ends[k].reply(update, start, params)[0]))
    if bad == "missing":
        del replies[1][KEY]
    elif bad == "garbage":
        replies[1][KEY] = np.frombuffer(b"not a frame at all", np.uint8)
    else:
        replies[1][KEY] = BufferCoder().encode({"x": np.ones(8, np.float32)})
    cost = server.exchange(chosen, replies, [1.0, 1.0, 1.0], runtime.call, _Links(), sizes)
    assert list(cost.dropped) == [1] and cost.dropped[1].startswith("buffers:")
    assert set(cost.aggregate) == set(server.exchanged)  # the others' round goes on


def test_powersgd_protocol_averages_the_projected_updates() -> None:
    rng = np.random.default_rng(4)
    state = _model(rng)
    params = frozenset(state)
    settings = _settings(plan="powersgd", plan_options={"rank": 2, "threshold": 100})
    protocol = exchange_for(settings, "powersgd")
    server = protocol.server(state, params)
    runtime = _Runtime(protocol, state, 3)
    mean, cost, sizes = _round(protocol, server, runtime, state, rng, params)
    # the factored tensors, and the rest's float tensors decoded from their frame
    assert set(cost.aggregate) == set(server.exchanged) == {
        "conv.weight", "fc.weight", "fc.bias", "bn.running_mean"}
    assert not any(k.startswith("powersgd.P/") for k in mean)  # the factors were taken out
    assert "fedpress.buffers" not in mean and mean["fc.bias"].dtype == np.float32
    assert all(s > raw_bytes({}) for s in sizes.values()) and cost.bytes_up > 0
    for k, v in cost.aggregate.items():
        assert v.shape == state[k].shape and np.isfinite(v).all()


def test_protocols_are_looked_up_by_name_and_check_their_settings() -> None:
    assert {"mean", "vote", "hgc", "powersgd"} <= set(exchanges())
    assert isinstance(exchange_for(_settings(plan="fpz"), "mean"), SingleExchange)
    with pytest.raises(ConfigError, match="unknown aggregate"):
        exchange_for(_settings(), "median")
    with pytest.raises(ConfigError, match="runs HGC's exchange"):
        exchange_for(_settings(plan="hgc"), "mean")
    with pytest.raises(ConfigError, match="send='update'"):
        exchange_for(_settings(plan="hgc", send="weights"), "hgc")
    with pytest.raises(ConfigError, match="plan='powersgd'"):
        exchange_for(_settings(plan="fpz"), "powersgd")
    with pytest.raises(ConfigError, match="already names"):
        register_exchange(type("Again", (SingleExchange,), {"aggregates": ("mean",)}))
    with pytest.raises(ConfigError, match="no phase"):
        exchange_for(_settings(), "mean").client("0").answer("hgc_master", None)
