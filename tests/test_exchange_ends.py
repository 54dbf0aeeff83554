"""The round protocols' client ends outside memory, and clients that drop out: an end
exported to arrays after every message and loaded into a new end gives the same
rounds as one kept in memory; a malformed state is refused; a server end drops a
client that does not answer (HGC hands the mask to the next client when the master
fails) and a restarted client is in step again. Framework-free (no Flower, no torch)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedpress.errors import FormatError
from fedpress.exchange import ClientEnd, Downlink, State, exchange_for, raw_bytes, weighted_mean

PARAMS = frozenset({"conv.weight", "fc.weight", "fc.bias"})


def _settings(plan: str, **options: Any) -> SimpleNamespace:
    return SimpleNamespace(plan=plan, plan_options=options, downlink_plan=None,
                           downlink_options={}, downlink_send="weights", send="update",
                           reference=False, algorithm="fedavg", server_lr=1.0, fraction=1.0,
                           lr_milestones=())


def _model(seed: int = 0) -> State:
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
            "fc.weight": rng.standard_normal((10, 64)).astype(np.float32),
            "fc.bias": rng.standard_normal(10).astype(np.float32),
            "bn.running_mean": rng.standard_normal(8).astype(np.float32),
            "bn.num_batches_tracked": np.array(5, np.int64)}


class _Clients:
    """Client ends answering phases; ``fresh``: every message goes to a new end loaded
    from the last one's export (a Flower ClientApp in a new process); ``silent``:
    ``(phase, client)`` pairs that do not answer."""

    def __init__(self, protocol: Any, initial: State, n: int, fresh: bool,
                 silent: set[tuple[str, int]] | None = None) -> None:
        self.protocol, self.fresh, self.silent = protocol, fresh, silent or set()
        self.ends: dict[int, ClientEnd] = {k: protocol.client(str(k)) for k in range(n)}
        for end in self.ends.values():
            end.held = initial

    def end(self, k: int) -> ClientEnd:
        if self.fresh:  # a new end each message, from the arrays the last one left
            exported = {name: np.array(v) for name, v in self.ends[k].export().items()}
            self.ends[k] = self.protocol.client(str(k))
            self.ends[k].load(exported)
        return self.ends[k]

    def call(self, phase: str, payloads: Mapping[int, Any]) -> list[SimpleNamespace]:
        out = []
        for k in sorted(payloads):
            if (phase, k) in self.silent:
                continue
            message, nbytes = self.end(k).answer(phase, payloads[k])
            out.append(SimpleNamespace(client=k, message=message, nbytes=nbytes, encode_s=0.0))
        return out


class _Links:
    def upload_s(self, client: Any, nbytes: int) -> float:
        return 0.0

    def download_s(self, client: Any, nbytes: int) -> float:
        return 0.0


def _rounds(protocol: Any, clients: _Clients, state: State, rounds: int,
            restart: Callable[[int], set[int]] = lambda r: set(),
            ) -> tuple[list[State], list]:
    """``rounds`` rounds as the simulator drives them (updates of seeded noise, the
    aggregate merged with server_lr 1); ``restart(r)``: the clients that start afresh
    in round ``r``. Returns the model after each round and each round's PhaseCost."""
    server = protocol.server(state, PARAMS)
    costs, states = [], []
    for rnd in range(1, rounds + 1):
        chosen = sorted(clients.ends)
        messages, sizes, _ = server.downlink(chosen, state, Downlink(None, {}, 0))
        for k in restart(rnd):
            clients.ends[k] = protocol.client(str(k))
            again = server.restart(k, state)
            if again is not None:
                messages[k], sizes[k] = again
        replies = []
        for k in chosen:
            end = clients.end(k)
            start = end.receive(messages[k])
            rng = np.random.default_rng(100 * rnd + k)
            update = {n: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
                      if v.dtype.kind == "f" else v for n, v in start.items()}
            message, nbytes = end.reply(update, start, PARAMS)
            assert nbytes == raw_bytes(message)
            replies.append(dict(message))
        weights = [1.0 + k for k in chosen]
        cost = server.exchange(chosen, replies, weights, clients.call, _Links(), sizes)
        costs.append(cost)
        used = [i for i, k in enumerate(chosen) if k not in cost.dropped]
        mean = weighted_mean([replies[i] for i in used], [weights[i] for i in used])
        new = dict(state)
        for k, v in mean.items():
            new[k] = (state[k] + v.astype(np.float64)).astype(state[k].dtype) \
                if v.dtype.kind == "f" else v
        for k, v in cost.aggregate.items():
            new[k] = (state[k] + v.astype(np.float64)).astype(state[k].dtype)
        state = new
        states.append(state)
    return states, costs


@pytest.mark.parametrize("plan, options", [
    ("hgc", {"density": 0.1, "warmup": 2}),
    ("powersgd", {"rank": 2, "threshold": 100})])
def test_an_end_exported_after_every_message_runs_the_same_rounds(plan: str, options) -> None:
    """Kept in memory or rebuilt from its export for every message: the same model,
    the same bytes, bit for bit."""
    protocol = exchange_for(_settings(plan, **options), plan)
    results = []
    for fresh in (False, True):
        states, costs = _rounds(protocol, _Clients(protocol, _model(), 3, fresh), _model(), 4)
        results.append((states[-1], [c.bytes_up for c in costs]))
    (a, bytes_a), (b, bytes_b) = results
    assert bytes_a == bytes_b and all(bytes_a)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_the_exports_hold_what_the_ends_keep_between_messages() -> None:
    hgc = exchange_for(_settings("hgc", density=0.1), "hgc")
    clients = _Clients(hgc, _model(), 2, fresh=False)
    _rounds(hgc, clients, _model(), 1)
    parts = {name.split("/")[0] for name in clients.ends[0].export()}
    assert parts == {"held", "pending", "mask", "residual", "u", "v"}
    psgd = exchange_for(_settings("powersgd", rank=2, threshold=100), "powersgd")
    clients = _Clients(psgd, _model(), 2, fresh=False)
    _rounds(psgd, clients, _model(), 1)
    assert {name.split("/")[0] for name in clients.ends[0].export()} == {"errors", "rest"}
    raw = exchange_for(_settings("powersgd", rank=2, threshold=100, rest="raw"), "powersgd")
    clients = _Clients(raw, _model(), 2, fresh=False)
    _rounds(raw, clients, _model(), 1)
    assert {name.split("/")[0] for name in clients.ends[0].export()} == {"errors"}


@pytest.mark.parametrize("plan, bad, match", [
    ("hgc", {"mystery/w": np.zeros(3, np.float32)}, "unexpected entry"),
    ("hgc", {"u/fc.bias": np.zeros(10, np.float32)}, "predictor"),
    ("hgc", {"held/fc.bias": np.zeros(10, np.float32), "u/fc.bias": np.zeros(10, np.float32),
             "v/fc.bias": np.zeros(9, np.float32)}, "expected float32 of 10"),
    ("hgc", {"held/fc.bias": np.zeros(10, np.float32), "u/fc.bias": np.zeros(10, np.float32),
             "v/fc.bias": np.zeros(10, np.float32),
             "mask/fc.bias": np.array([3, 12], np.int64)}, "positions in 0..9"),
    ("powersgd", {"errors/fc.weight": np.zeros(10, np.float32)}, "float32 matrix"),
    ("powersgd", {"m/fc.weight": np.full((2, 2), np.nan, np.float32)}, "finite"),
    ("powersgd", {"decoder/store": np.zeros(4, np.uint8)}, "no decoder"),
    ("powersgd", {"rest/fc.bias": np.full(10, np.inf)}, "finite float array"),
    ("powersgd", {"rest/fc.bias": np.zeros(10, np.int32)}, "finite float array"),
])
def test_a_malformed_state_is_refused(plan: str, bad: dict, match: str) -> None:
    options = {"density": 0.1} if plan == "hgc" else {"rank": 2}
    end = exchange_for(_settings(plan, **options), plan).client("0")
    with pytest.raises(FormatError, match=match):
        end.load(bad)


def test_hgc_hands_the_mask_on_when_the_master_does_not_answer() -> None:
    """Round 1's master (client 0) is silent: client 1 sends the mask, client 0 is
    dropped, and the others still hold the server's model after the next downlink."""
    protocol = exchange_for(_settings("hgc", density=0.1), "hgc")
    clients = _Clients(protocol, _model(), 3, fresh=True, silent={("hgc_master", 0)})
    _, costs = _rounds(protocol, clients, _model(), 1)
    assert costs[0].dropped == {0: "no answer to hgc_master"}
    assert costs[0].aggregate and costs[0].bytes_up > 0
    assert clients.ends[0].mask is None  # never asked for values
    assert np.array_equal(clients.ends[1].mask["fc.weight"], clients.ends[2].mask["fc.weight"])


def test_a_dropped_client_restarts_in_step() -> None:
    """HGC: client 2 does not answer round 2's values phase; it is dropped, starts
    afresh in round 3 (the model and the predictor), and from then on every end holds
    the server's model and predictor exactly."""
    protocol = exchange_for(_settings("hgc", density=0.1), "hgc")
    clients = _Clients(protocol, _model(), 3, fresh=True)
    silent = clients.silent

    def restart(rnd: int) -> set[int]:
        silent.clear()
        if rnd == 2:
            silent.add(("hgc_values", 2))
        return {2} if rnd == 3 else set()

    states, costs = _rounds(protocol, clients, _model(), 4, restart)
    assert [sorted(c.dropped) for c in costs] == [[], [2], [], []]
    # round 4 began with round 3's model on every end, one mask, one predictor
    ends = [clients.end(k) for k in range(3)]
    masks = [e.mask for e in ends]
    assert all(np.array_equal(m[k], masks[0][k]) for m in masks for k in masks[0])
    us = [e.hgc.u for e in ends]
    assert all(u[k].tobytes() == us[0][k].tobytes() for u in us for k in us[0])
    for end in ends:
        assert all(end.held[k].tobytes() == states[2][k].tobytes() for k in states[2])
    assert costs[-1].aggregate


def test_powersgd_drops_a_client_that_does_not_answer_the_second_phase() -> None:
    protocol = exchange_for(_settings("powersgd", rank=2, threshold=100), "powersgd")
    clients = _Clients(protocol, _model(), 3, fresh=True,
                       silent={("powersgd_second", 1)})
    _, costs = _rounds(protocol, clients, _model(), 1)
    assert costs[0].dropped == {1: "no answer to powersgd_second"}
    assert set(costs[0].aggregate) == {"conv.weight", "fc.weight", "fc.bias",
                                       "bn.running_mean"}  # factored, and the coded rest
    assert all(np.isfinite(v).all() for v in costs[0].aggregate.values())
