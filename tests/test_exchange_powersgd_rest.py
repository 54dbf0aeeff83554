"""PowerSGD's rest (the tensors not factored: biases, BatchNorm's weights and
statistics) in its two-phase exchange: the float ones travel as one coded frame with
error feedback on each client, integer ones raw; the server decodes within the bound,
the sum of what it decodes tracks the sum of the truth, a bad frame drops its client,
``rest=raw`` is the exchange as it was, and the client's residual survives its
export."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpress.errors import ConfigError, FormatError
from fedpress.exchange import Downlink, State, exchange_for, raw_bytes, weighted_mean
from fedpress.exchange.buffers import KEY, BufferCoder
from fedpress.exchange.powersgd import P_PREFIX, PowerSGDClient, PowerSGDServer, low_rank_names

PARAMS = frozenset({"conv.weight", "bn.weight", "bn.bias"})
REST = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def _settings(**options: Any) -> SimpleNamespace:
    return SimpleNamespace(plan="powersgd", plan_options={"rank": 2, "threshold": 100,
                                                          **options},
                           downlink_plan=None, downlink_options={}, downlink_send="weights",
                           send="update", reference=False, algorithm="fedavg",
                           server_lr=1.0, fraction=1.0, lr_milestones=())


def _model(c: int = 512, seed: int = 0) -> State:
    """A 1x1 convolution (factored at rank 2) and its BatchNorm (the rest)."""
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((c, 16, 1, 1)).astype(np.float32),
            "bn.weight": (1 + 0.1 * rng.standard_normal(c)).astype(np.float32),
            "bn.bias": (0.1 * rng.standard_normal(c)).astype(np.float32),
            "bn.running_mean": rng.standard_normal(c).astype(np.float32),
            "bn.running_var": (0.5 + rng.random(c)).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, np.int64)}


def _update(state: State, rng: np.random.Generator, scale: float = 0.01) -> State:
    return {k: (scale * rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype.kind == "f"
            else np.asarray(v + 1) for k, v in state.items()}


class _Runtime:
    """Client ends in a dict; ``call`` answers a phase in client order."""

    def __init__(self, protocol: Any, state: State, clients: int) -> None:
        self.protocol = protocol
        self.ends = {k: protocol.client(str(k)) for k in range(clients)}
        self.server = protocol.server(state, PARAMS)

    def first(self, state: State, updates: list[State]) -> tuple[list[int], list[dict], dict]:
        """The round's first replies (the downlink, then each end's reply)."""
        chosen = sorted(self.ends)
        messages, sizes, _ = self.server.downlink(chosen, state, Downlink(None, {}, 0))
        replies = []
        for k in chosen:
            start = self.ends[k].receive(messages[k])
            message, nbytes = self.ends[k].reply(updates[k], start, PARAMS)
            assert nbytes == raw_bytes(message)
            replies.append(dict(message))
        return chosen, replies, sizes

    def call(self, phase: str, payloads: Mapping[int, Any]) -> list[SimpleNamespace]:
        out = []
        for k in sorted(payloads):
            message, nbytes = self.ends[k].answer(phase, payloads[k])
            out.append(SimpleNamespace(client=k, message=message, nbytes=nbytes, encode_s=0.0))
        return out

    def round(self, state: State, updates: list[State], weights: list[float] | None = None,
              ) -> tuple[list[dict], Any]:
        chosen, replies, sizes = self.first(state, updates)
        weights = weights or [1.0] * len(chosen)
        cost = self.server.exchange(chosen, replies, weights, self.call, _Links(), sizes)
        return replies, cost


class _Links:
    def upload_s(self, client: Any, nbytes: int) -> float:
        return 0.0

    def download_s(self, client: Any, nbytes: int) -> float:
        return 0.0


# -- (a) the reply ---------------------------------------------------------------------
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), c=st.sampled_from([256, 512, 1024]))
def test_the_reply_codes_the_float_rest_and_is_smaller_than_raw(seed: int, c: int) -> None:
    state = _model(c, seed)
    update = _update(state, np.random.default_rng(seed))
    coded = _Runtime(exchange_for(_settings(), "powersgd"), state, 1)
    raw = _Runtime(exchange_for(_settings(rest="raw"), "powersgd"), state, 1)
    (reply,) = coded.first(state, [update])[1]
    (plain,) = raw.first(state, [update])[1]
    assert not any(k in reply for k in REST)  # no float tensor of the rest travels raw
    assert reply[KEY].dtype == np.uint8 and reply[KEY].ndim == 1
    assert reply["bn.num_batches_tracked"] == 8  # integer buffers raw
    assert set(reply) - {KEY} == set(plain) - set(REST)
    for k in reply:  # the factors are those of the raw exchange
        if k.startswith(P_PREFIX):
            assert reply[k].tobytes() == plain[k].tobytes()
    rest_raw = sum(update[k].nbytes for k in REST)
    assert raw_bytes(reply) == raw_bytes(plain) - rest_raw + reply[KEY].size
    assert raw_bytes(reply) < raw_bytes(plain) and reply[KEY].size < rest_raw / 2


# -- (b) the server's decoded rest -------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), eb=st.sampled_from([1e-1, 1e-2, 1e-3]),
       rounds=st.integers(1, 6))
def test_the_decoded_rest_keeps_the_bound_and_its_sum_tracks_the_truth(
        seed: int, eb: float, rounds: int) -> None:
    """Each round the server decodes each client's rest plus that client's residual
    within REL ``eb`` of its range; over the rounds the sum of what it decoded differs
    from the sum of the truth by the last residual only (not ``rounds`` errors)."""
    state = _model(256, seed)
    rng = np.random.default_rng(seed)
    run = _Runtime(exchange_for(_settings(eb=eb), "powersgd"), state, 2)
    true_sum = [{k: np.zeros(state[k].shape) for k in REST} for _ in range(2)]
    got_sum = [{k: np.zeros(state[k].shape) for k in REST} for _ in range(2)]
    weights = [1.0, 3.0]
    for _ in range(rounds):
        updates = [_update(state, rng, float(rng.uniform(1e-3, 1.0))) for _ in range(2)]
        before = [dict(run.ends[i].feedback.residual) for i in range(2)]
        replies, cost = run.round(state, updates, weights)
        assert not cost.dropped and KEY not in replies[0]
        for i in range(2):
            for k in REST:
                target = updates[i][k].astype(np.float64) + before[i].get(k, 0.0)
                span = float(target.max() - target.min())
                got = replies[i][k]
                assert got.dtype == state[k].dtype and got.shape == state[k].shape
                error = np.abs(got.astype(np.float64) - target).max()
                assert error <= eb * span * (1 + 1e-5) + 1e-6 * np.abs(target).max()
                true_sum[i][k] += updates[i][k]
                got_sum[i][k] += got
        mean = weighted_mean([{k: r[k] for k in REST} for r in replies], weights)
        for k in REST:  # the aggregate holds the decoded rest's weighted mean
            assert cost.aggregate[k].tobytes() == mean[k].tobytes()
    for i in range(2):
        residual = run.ends[i].feedback.residual
        for k in REST:
            gap = true_sum[i][k] - got_sum[i][k]
            scale = np.abs(true_sum[i][k]).max()
            assert np.abs(gap - residual[k]).max() <= 1e-6 * rounds * max(scale, 1.0)


def test_error_feedback_beats_coding_each_round_alone() -> None:
    """The same small update every round at a loose bound: with the residual the mean
    of what the server decoded converges on the update."""
    state = _model(256, 1)
    update = _update(state, np.random.default_rng(2))
    run = _Runtime(exchange_for(_settings(eb=0.2), "powersgd"), state, 1)
    total = {k: np.zeros(state[k].shape) for k in REST}
    rounds = 30
    for _ in range(rounds):
        replies, _ = run.round(state, [update])
        for k in REST:
            total[k] += replies[0][k]
    once, rest = BufferCoder("fpz", 0.2), {k: update[k] for k in REST}
    single = once.decode(once.encode(rest), rest)
    for k in REST:
        drift = np.abs(total[k] / rounds - update[k]).max()
        assert drift < np.abs(single[k] - update[k]).max() / 5


# -- (c) a frame the server cannot use -----------------------------------------------------
@pytest.mark.parametrize("bad", ["missing", "garbage", "not bytes", "other names",
                                 "huge declared", "cut"])
def test_a_bad_rest_frame_drops_its_client(bad: str) -> None:
    state = _model(64)
    rng = np.random.default_rng(3)
    run = _Runtime(exchange_for(_settings(), "powersgd"), state, 3)
    chosen, replies, sizes = run.first(state, [_update(state, rng) for _ in range(3)])
    coder = BufferCoder("fpz")
    blob = replies[1][KEY]
    replies[1][KEY] = {
        "missing": None,
        "garbage": np.frombuffer(b"not a frame at all", np.uint8),
        "not bytes": blob.astype(np.float32),
        "other names": coder.encode({"x": np.ones(8, np.float32)}),
        "huge declared": coder.encode({k: np.zeros(1 << 22, np.float32) for k in REST}),
        "cut": blob[: blob.size // 2],
    }[bad]
    if bad == "missing":
        del replies[1][KEY]
    cost = run.server.exchange(chosen, replies, [1.0, 1.0, 1.0], run.call, _Links(), sizes)
    assert list(cost.dropped) == [1] and cost.dropped[1].startswith("powersgd rest:")
    assert set(cost.aggregate) == set(run.server.exchanged)  # the others' round goes on
    assert all(np.isfinite(v).all() for v in cost.aggregate.values())
    assert KEY not in replies[1] and not any(k.startswith(P_PREFIX) for k in replies[1])


def test_a_raw_rest_is_not_mistaken_for_a_coded_one() -> None:
    """A client configured with ``rest=raw`` talking to a server that expects a frame
    is dropped with the reason, not averaged."""
    state = _model(64)
    coded = _Runtime(exchange_for(_settings(), "powersgd"), state, 2)
    raw = exchange_for(_settings(rest="raw"), "powersgd")
    coded.ends[1] = raw.client("1")
    _, cost = coded.round(state, [_update(state, np.random.default_rng(4)) for _ in range(2)])
    assert cost.dropped == {1: "powersgd rest: the reply carries no coded rest"}


# -- (d) rest=raw is the exchange as it was -------------------------------------------------
def test_rest_raw_is_the_old_exchange_bit_for_bit() -> None:
    """``rest=raw``: the reply is the rest as it is plus the ``P_i``, the server takes
    nothing out of it but the factors and aggregates the factored tensors only, as
    the two ends of the low-rank exchange compute them."""
    state = _model(64, 5)
    rng = np.random.default_rng(5)
    run = _Runtime(exchange_for(_settings(rest="raw"), "powersgd"), state, 2)
    names = low_rank_names(state, 2, 100, PARAMS)
    server = PowerSGDServer({k: state[k].shape for k in names}, names, 2, 0)
    clients = [PowerSGDClient(2) for _ in range(2)]
    assert run.server.exchanged == frozenset(names) == {"conv.weight"}
    for _ in range(3):
        updates = [_update(state, rng) for _ in range(2)]
        first = [c.first(u, names, server.q) for c, u in zip(clients, updates)]
        expect = [rest | {P_PREFIX + k: v for k, v in ps.items()} for ps, rest in first]
        chosen, replies, sizes = run.first(state, updates)
        for got, want in zip(replies, expect):
            assert list(got) == list(want)
            assert all(got[k].tobytes() == want[k].tobytes() for k in want)
        cost = run.server.exchange(chosen, replies, [1.0, 2.0], run.call, _Links(), sizes)
        p_hat = server.orthogonal_p([ps for ps, _ in first], [1.0, 2.0])
        agg = server.aggregate(p_hat, [c.second(p_hat) for c in clients], [1.0, 2.0])
        assert set(cost.aggregate) == set(agg)
        assert all(cost.aggregate[k].tobytes() == agg[k].tobytes() for k in agg)
        for r, u in zip(replies, updates):  # the rest, untouched, for the plain mean
            assert set(r) == set(REST) | {"bn.num_batches_tracked"}
            assert all(r[k].tobytes() == u[k].tobytes() for k in r)


def test_coding_the_rest_leaves_the_factored_tensors_alone() -> None:
    state = _model(128, 6)
    rng = np.random.default_rng(6)
    coded = _Runtime(exchange_for(_settings(), "powersgd"), state, 2)
    raw = _Runtime(exchange_for(_settings(rest="raw"), "powersgd"), state, 2)
    for _ in range(3):
        updates = [_update(state, rng) for _ in range(2)]
        _, a = coded.round(state, updates)
        _, b = raw.round(state, updates)
        assert a.aggregate["conv.weight"].tobytes() == b.aggregate["conv.weight"].tobytes()
        assert a.bytes_up == b.bytes_up  # the second phase: the Q_i only


# -- the options -------------------------------------------------------------------------
def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown options"):
        exchange_for(_settings(rnak=2), "powersgd")
    with pytest.raises(ConfigError, match="error_feedback"):
        exchange_for(_settings(error_feedback="no"), "powersgd")
    for spec in ("sz2", "gaeb", "", 3):
        with pytest.raises(ConfigError, match="rest="):
            exchange_for(_settings(rest=spec), "powersgd")
    state = _model(512)
    update = _update(state, np.random.default_rng(7))
    sizes = []
    for options in ({"rest": "zstd"}, {"eb": 1e-3}, {"eb": 1e-1}, {"eb": 1e-1, "mode": "abs"}):
        run = _Runtime(exchange_for(_settings(**options), "powersgd"), state, 1)
        (reply,) = run.first(state, [update])[1]
        sizes.append(reply[KEY].size)
        if options.get("rest") == "zstd":  # lossless: the server gets the update exactly
            replies, _ = _Runtime(exchange_for(_settings(**options), "powersgd"), state,
                                  1).round(state, [update])
            assert all(replies[0][k].tobytes() == update[k].tobytes() for k in REST)
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3]  # the run's bound, its mode


# -- (e) the client's state ---------------------------------------------------------------
def test_the_residual_survives_export_and_load() -> None:
    state = _model(128, 8)
    rng = np.random.default_rng(8)
    protocol = exchange_for(_settings(eb=0.1), "powersgd")
    run = _Runtime(protocol, state, 1)
    run.round(state, [_update(state, rng)])
    end = run.ends[0]
    exported = {k: np.array(v) for k, v in end.export().items()}
    assert {k for k in exported if k.startswith("rest/")} == {f"rest/{k}" for k in REST}
    again = protocol.client("0")
    again.load(exported)
    assert all(again.feedback.residual[k].tobytes() == end.feedback.residual[k].tobytes()
               for k in REST)
    # the next replies of the end and of its reloaded copy are the same bytes
    messages, _, _ = run.server.downlink([0], state, Downlink(None, {}, 0))
    update = _update(state, rng)
    a, _ = end.reply(update, end.receive(messages[0]), PARAMS)
    b, _ = again.reply(update, again.receive(messages[0]), PARAMS)
    assert list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)


@pytest.mark.parametrize("bad, match", [
    ({"rest/bn.bias": np.full(64, np.nan, np.float32)}, "finite float array"),
    ({"rest/bn.bias": np.array([0.0, np.inf])}, "finite float array"),
    ({"rest/bn.bias": np.zeros(64, np.int64)}, "finite float array"),
    ({"residual/bn.bias": np.zeros(64)}, "unexpected entry"),
])
def test_load_refuses_a_bad_residual(bad: dict, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        exchange_for(_settings(), "powersgd").client("0").load(bad)


def test_a_residual_is_refused_by_an_end_that_sends_the_rest_raw_or_other_tensors() -> None:
    with pytest.raises(FormatError, match="sends raw"):
        exchange_for(_settings(rest="raw"), "powersgd").client("0").load(
            {"rest/bn.bias": np.zeros(64)})
    state = _model(64)
    protocol = exchange_for(_settings(), "powersgd")
    run = _Runtime(protocol, state, 1)
    run.ends[0].load({"rest/bn.bias": np.zeros(3)})  # finite, but not the tensor's shape
    with pytest.raises(FormatError, match="does not match"):
        run.first(state, [_update(state, np.random.default_rng(9))])


# -- (f) the simulator ----------------------------------------------------------------------
def test_the_simulator_codes_the_rest_of_a_batchnorm_model() -> None:
    """MobileNetV2 on digits (BatchNorm throughout), one round: the coded rest sends
    fewer bytes than ``rest=raw`` and the model stays finite."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from fedpress.sim import data, fl

    torch.set_num_threads(1)
    ds = data.load_dataset("digits")
    runs = {}
    for rest in ("fpz", "raw"):
        cfg = fl.FLConfig(model="mobilenetv2", clients=2, rounds=1, local_steps=1,
                          batch_size=16, send="update", plan="powersgd",
                          plan_options={"rank": 2, "rest": rest}, aggregate="powersgd")
        history, model = fl.simulate(ds, cfg, threads=1, test_limit=50)
        runs[rest] = history[-1]
        assert all(torch.isfinite(v).all() for v in model.state_dict().values()
                   if v.is_floating_point())
    assert runs["fpz"].bytes_up < 0.7 * runs["raw"].bytes_up
    assert runs["fpz"].raw_up == runs["raw"].raw_up and runs["fpz"].decode_s > 0


def test_the_simulator_leaves_out_a_client_the_exchange_dropped(monkeypatch) -> None:
    """A client whose rest frame does not decode is left out of the average (as the
    Flower runtime does); when every client is dropped, the model stays as it was."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from fedpress.exchange import powersgd
    from fedpress.sim import data, fl
    from fedpress.sim.client import state_of
    from fedpress.sim.models import build_model

    torch.set_num_threads(1)
    ds = data.load_dataset("digits")
    reply, calls, spoil = powersgd.PowerSGDEnd.reply, [], set()

    def spoiled(self: Any, trained: State, start: State, params: frozenset[str]) -> Any:
        out, nbytes = reply(self, trained, start, params)
        calls.append(1)
        if len(calls) in spoil:  # the clients reply in turn, in one process
            out[KEY] = np.zeros(7, np.uint8)
        return out, nbytes

    monkeypatch.setattr(powersgd.PowerSGDEnd, "reply", spoiled)
    cfg = fl.FLConfig(model="mobilenetv2", clients=2, rounds=1, local_steps=1,
                      batch_size=16, send="update", plan="powersgd",
                      plan_options={"rank": 2}, aggregate="powersgd")
    start = state_of(build_model("mobilenetv2", ds.input_shape, ds.num_classes,
                                 seed=cfg.seed))
    spoil.add(2)
    _, one = fl.simulate(ds, cfg, threads=1, test_limit=50)
    moved = {k: v for k, v in state_of(one).items() if not np.array_equal(v, start[k])}
    assert moved and all(np.isfinite(v).all() for v in moved.values() if v.dtype.kind == "f")
    calls.clear()
    spoil.update({1, 2})
    _, none = fl.simulate(ds, cfg, threads=1, test_limit=50)
    assert all(np.array_equal(v, start[k]) for k, v in state_of(none).items())
