"""HGC's shared-mask exchange and PowerSGD's two phases as Flower rounds, in process
(InlineGrid: real Flower messages, serialized as over gRPC): the same bytes and model
as the fedpress simulator; replies that do not unpack, nodes that drop out mid-round,
answers to the wrong phase and nodes that lose their state are dropped with logged
reasons and start afresh; settings HGC cannot run are refused."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

import fedpress
from fedpress.flower import CompressedStrategy, FailedRoundsError, compression_mod, task, wire
from fedpress.flower.inline import InlineGrid
from fedpress.flower.link import REPLY_KEY, Link
from fedpress.flower.payload import BYTES_STYPE, pack, size, unpack
from fedpress.flower.protocols import END_KEY, PAYLOAD_KEY, parameter_names

from .common import run_isolated
from .test_flower import INIT, _numpy_app

SIM = {"dataset": "digits", "model": "mlp", "local-steps": 3, "batch-size": 16,
       "lr": 0.05, "seed": 3}
HGC = "hgc(density=0.05, aggregate=hgc)"
PSGD = "powersgd(rank=2, threshold=100, aggregate=powersgd)"


def _phase(reply: Message) -> str | None:
    """The phase a node's reply answers ("train" for the first reply)."""
    if reply.has_error() or REPLY_KEY not in reply.content.config_records:
        return None
    return str(reply.content.config_records[REPLY_KEY]["phase"])


def _run(uplink: str, rounds: int = 3, nodes: int = 3, tamper=None,
         app: ClientApp | None = None, strategy=None, **options):
    """The numpy app on InlineGrid; returns the strategy, the grid, the result and the
    global model before each round (``models[r]``: what round r + 1 starts from)."""
    random.seed(0)
    grid = InlineGrid(app or _numpy_app(), nodes, tamper=tamper)
    if tamper is not None:
        tamper.grid = grid
    s = CompressedStrategy(strategy or FedAvg(fraction_evaluate=0.0), uplink=uplink,
                           **options)
    models: dict[int, dict] = {}

    def keep(rnd: int, arrays: ArrayRecord) -> None:
        models[rnd] = wire.state_of(arrays)

    result = s.start(grid=grid, initial_arrays=wire.plain_record(INIT), num_rounds=rounds,
                     evaluate_fn=keep)
    return s, grid, result, models


def _rows(s: CompressedStrategy, phase: str = "train") -> list[dict]:
    return [h for h in s.history if h["phase"] == phase]


def _held(grid: InlineGrid, node: int) -> dict[str, np.ndarray]:
    exported = wire.state_of(grid.contexts[node].state.array_records[END_KEY])
    return {k.removeprefix("held/"): v for k, v in exported.items() if k.startswith("held/")}


# -- the same run as the simulator ----------------------------------------------------
def _simulated(plan: str, options: dict, rounds: int):
    from fedpress.sim.fl import FLConfig, simulate

    cfg = FLConfig(model="mlp", clients=3, rounds=rounds, local_steps=3, batch_size=16,
                   lr=0.05, seed=3, plan=plan, plan_options=options, send="update",
                   aggregate=plan)
    history, model = simulate(task.dataset(SIM), cfg, threads=1)
    return history, {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _flower(spec: str, rounds: int, strategy):
    app = ClientApp(mods=[compression_mod])
    app.train()(task.train)
    random.seed(0)
    grid = InlineGrid(app, 3, run_config=SIM)
    s = CompressedStrategy(strategy, uplink=spec)
    result = s.start(grid=grid, initial_arrays=task.initial_arrays(SIM), num_rounds=rounds)
    return _rows(s), wire.state_of(result.arrays)


@pytest.mark.parametrize("strategy", [task.FedAvg64, FedAvg])
def test_hgc_gives_the_simulators_bytes_and_model_bit_for_bit(strategy) -> None:
    """task's training under Flower (3 nodes, 3 rounds, the digits MLP) and
    ``fedpress.sim`` with aggregate="hgc" and the same seed: the same bytes up and down
    in every round and the same final model, bit for bit, whichever FedAvg is wrapped
    (every tensor of the MLP is HGC's: the model is global + aggregate on both)."""
    history, expect = _simulated("hgc", {"density": 0.05}, 3)
    rows, got = _flower("hgc(density=0.05, aggregate=hgc)", 3, strategy(fraction_evaluate=0.0))
    assert [h["bytes_up"] for h in rows] == [m.bytes_up for m in history]
    assert [h["bytes_down"] for h in rows] == [m.bytes_down for m in history]
    assert [(h["raw_up"], h["raw_down"]) for h in rows] == \
        [(m.raw_up, m.raw_down) for m in history]
    assert [h["dropped"] for h in rows] == [0, 0, 0]
    for k in expect:
        assert got[k].tobytes() == expect[k].tobytes(), k


@pytest.mark.parametrize("strategy", [task.FedAvg64, FedAvg])
def test_powersgd_gives_the_simulators_bytes_and_model_bit_for_bit(strategy) -> None:
    """PowerSGD (rank 2) the same way: equal bytes every round and the same final
    model bit for bit, whichever FedAvg is wrapped. The three weight matrices are
    factored (global + P^ Q^T on both); the biases, the rest, travel as one coded
    frame whose decoded mean the exchange averages (global + mean on both)."""
    history, expect = _simulated("powersgd", {"rank": 2}, 3)
    rows, got = _flower("powersgd(rank=2, aggregate=powersgd)", 3,
                        strategy(fraction_evaluate=0.0))
    assert [h["bytes_up"] for h in rows] == [m.bytes_up for m in history]
    assert [h["bytes_down"] for h in rows] == [m.bytes_down for m in history]
    assert [h["dropped"] for h in rows] == [0, 0, 0]
    for k in expect:
        assert got[k].tobytes() == expect[k].tobytes(), k


def test_powersgd_with_the_rest_raw_gives_the_simulators_bytes() -> None:
    """``rest=raw``: equal bytes every round. After one round the factored tensors
    are equal bit for bit; the biases travel whole and are averaged by the wrapped
    FedAvg64 as models, each node's ``global + update`` rounded to float32 first,
    where the simulator averages the updates in float64 and adds once: within one
    float32 step. From round 2 on the nodes train from those biases, so every tensor
    moves by such last-bit amounts (< 1e-6 here after 3 rounds)."""
    history, expect = _simulated("powersgd", {"rank": 2, "rest": "raw"}, 1)
    rows, got = _flower("powersgd(rank=2, rest=raw, aggregate=powersgd)", 1,
                        task.FedAvg64(fraction_evaluate=0.0))
    assert [h["bytes_up"] for h in rows] == [m.bytes_up for m in history]
    assert [h["bytes_down"] for h in rows] == [m.bytes_down for m in history]
    for k in expect:
        if k.endswith("weight"):
            assert got[k].tobytes() == expect[k].tobytes(), k
        else:
            assert np.all(np.abs(got[k] - expect[k]) <= np.spacing(np.abs(expect[k]))), k
    history, expect = _simulated("powersgd", {"rank": 2, "rest": "raw"}, 3)
    rows, got = _flower("powersgd(rank=2, rest=raw, aggregate=powersgd)", 3,
                        task.FedAvg64(fraction_evaluate=0.0))
    assert [h["bytes_up"] for h in rows] == [m.bytes_up for m in history]
    assert [h["bytes_down"] for h in rows] == [m.bytes_down for m in history]
    for k in expect:
        assert np.abs(got[k] - expect[k]).max() < 1e-6, k


def test_the_rounds_history_breaks_down_the_phases() -> None:
    """Each round's train row counts the whole exchange (the numbers the metrics
    report); the phases' rows show their share; every node holds the server's model."""
    s, grid, result, models = _run(HGC, rounds=3, uplink_mbps=10, downlink_mbps=100)
    rows = _rows(s)
    master, values = _rows(s, "hgc_master"), _rows(s, "hgc_values")
    assert [r["nodes"] for r in master] == [1, 1, 1] and [r["nodes"] for r in values] == [2] * 3
    for rnd, row in enumerate(rows, start=1):
        m = result.train_metrics_clientapp[rnd]
        assert m["fedpress-bytes-up"] == row["bytes_up"] == \
            master[rnd - 1]["bytes_up"] + values[rnd - 1]["bytes_up"]  # no buffers here
        assert m["fedpress-flower-bytes-up"] > m["fedpress-bytes-up"] > 0
        assert m["fedpress-comm-s"] > 0 and m["fedpress-dropped"] == 0
    model_bytes = sum(v.nbytes for v in INIT.values())
    assert rows[0]["bytes_down"] == 3 * model_bytes + values[0]["bytes_down"]  # the model
    assert rows[1]["bytes_down"] < model_bytes  # then the aggregate at the mask
    assert [r["restarted"] for r in rows] == [3, 0, 0]
    for node in grid.contexts:  # round 3 started from round 2's model on every node
        held = _held(grid, node)
        assert all(held[k].tobytes() == models[2][k].tobytes() for k in INIT)


# -- robustness -----------------------------------------------------------------------
def _hook(fn: Callable[[int, Message, int], Message | None]):
    """A tamper hook calling ``fn(node, reply, round)`` (rounds counted by train
    replies to the round's first message)."""
    rounds: dict[int, int] = {}

    def hook(node: int, reply: Message) -> Message | None:
        if _phase(reply) == "train" or (reply.has_error() and node not in rounds):
            rounds[node] = rounds.get(node, 0) + 1
        return fn(node, reply, rounds.get(node, 0))

    return hook


def _corrupt(reply: Message) -> Message:
    """The payload's first byte string with its bytes flipped."""
    record = reply.content.array_records[PAYLOAD_KEY]
    key = next(k for k, a in record.items() if a.stype == BYTES_STYPE)
    data = bytearray(record[key].data)
    data[len(data) // 2] ^= 0xFF
    data[-1] ^= 0xFF
    record[key] = type(record[key])(dtype="uint8", shape=(len(data),), stype=BYTES_STYPE,
                                    data=bytes(data))
    return reply


def test_a_corrupted_phase_answer_is_dropped_and_its_node_restarts_in_step(caplog) -> None:
    """Node 103's values of round 2 arrive corrupted: dropped with HGC's reason, the
    round averages the others; round 3 starts 103 afresh (model and predictor) and it
    takes part again; at the end every node holds the server's model."""
    def fn(node: int, reply: Message, rnd: int) -> Message:
        if node == 103 and rnd == 2 and _phase(reply) == "hgc_values":
            return _corrupt(reply)
        return reply

    with caplog.at_level(logging.INFO, logger="fedpress.flower"):
        s, grid, _, models = _run(HGC, rounds=4, tamper=_hook(fn))
    rows = _rows(s)
    assert [r["dropped"] for r in rows] == [0, 1, 0, 0]
    assert [r["restarted"] for r in rows] == [3, 0, 1, 0]
    assert "node 103 left out of HGC's exchange: dropped by the exchange: hgc_values: " \
        in caplog.text
    assert "node 103 starts afresh" in caplog.text
    for node in grid.contexts:
        held = _held(grid, node)
        assert all(held[k].tobytes() == models[3][k].tobytes() for k in INIT)


@pytest.mark.parametrize("how", ["lost", "error"])
def test_a_master_that_drops_out_hands_the_mask_to_the_next_node(how: str, caplog) -> None:
    """Round 1's master (node 101) does not answer, or answers an error: node 102 sends
    the mask, the round completes with two nodes, and 101 is back from round 2."""
    def fn(node: int, reply: Message, rnd: int) -> Message | None:
        if node == 101 and rnd == 1 and _phase(reply) == "hgc_master":
            if how == "lost":
                return None
            return _error(reply, "node went away")
        return reply

    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, _, _, _ = _run(HGC, rounds=3, tamper=_hook(fn))
    masters = [r["round"] for r in _rows(s, "hgc_master")]
    assert masters == [1, 1, 2, 3]  # round 1 asked 101, then 102
    assert [r["dropped"] for r in _rows(s)] == [1, 0, 0]
    reason = "no reply to hgc_master" if how == "lost" else \
        "error reply to hgc_master: node went away"
    assert f"node 101 left out of HGC's exchange: {reason}" in caplog.text
    assert [r["restarted"] for r in _rows(s)] == [3, 1, 0]


def _error(reply: Message, reason: str) -> Message:
    from .test_flower import _error_reply

    return _error_reply(reply, reason)


def test_an_answer_to_another_phase_is_dropped(caplog) -> None:
    def fn(node: int, reply: Message, rnd: int) -> Message:
        if node == 103 and _phase(reply) == "hgc_values":  # (103: never the master here)
            reply.content.config_records[REPLY_KEY]["phase"] = "hgc_master"
        return reply

    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, _, result, _ = _run(HGC, rounds=2, tamper=_hook(fn))
    assert "dropped hgc_values reply: it answers phase 'hgc_master', not 'hgc_values'" \
        in caplog.text
    assert [r["dropped"] for r in _rows(s)] == [1, 1]
    assert all(np.isfinite(v).all() for v in wire.state_of(result.arrays).values())


def test_a_node_that_loses_its_state_answers_an_error_and_restarts(caplog) -> None:
    """Node 102's Context.state is wiped after round 1 (a SuperNode restarted): its
    round-2 train message finds no exchange state, it answers an error saying so, and
    round 3 starts it afresh."""
    def fn(node: int, reply: Message, rnd: int) -> Message:
        if node == 102 and rnd == 1 and _phase(reply) == "hgc_values":
            hook.grid.contexts[node].state = RecordDict()
        return reply

    hook = _hook(fn)
    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, grid, _, models = _run(HGC, rounds=3, tamper=hook)
    assert "holds no exchange state where the server expects one" in caplog.text
    assert [r["restarted"] for r in _rows(s)] == [3, 0, 1]
    held = _held(grid, 102)
    assert all(held[k].tobytes() == models[2][k].tobytes() for k in INIT)


def test_powersgd_goes_on_without_a_node_that_drops_out_of_its_second_phase(caplog) -> None:
    def fn(node: int, reply: Message, rnd: int) -> Message | None:
        return None if node == 103 and rnd == 2 and _phase(reply) == "powersgd_second" \
            else reply

    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, _, result, _ = _run(PSGD, rounds=3, tamper=_hook(fn))
    assert "node 103 left out of PowerSGD's exchange: no reply to powersgd_second" \
        in caplog.text
    assert [r["dropped"] for r in _rows(s)] == [0, 1, 0]
    assert [r["restarted"] for r in _rows(s)] == [3, 0, 1]
    assert all(np.isfinite(v).all() for v in wire.state_of(result.arrays).values())


def test_a_node_asked_for_a_phase_its_protocol_lacks_answers_an_error() -> None:
    """The mod answers a phase from the protocol's client end, without the app; a phase
    the protocol does not have, or one before the node trained, is an error reply
    naming it (the server drops the node and starts it afresh)."""
    from flwr.app import ConfigRecord, Context

    from fedpress.flower.link import KEY_DOWNLINK, KEY_LAYOUT, KEY_PHASE, KEY_UPLINK

    InlineGrid(_numpy_app(), 1)  # makes this process a server (messages need one)
    called: list = []
    for phase, state, reason in (
            ("hgc_bogus", {"held/w": INIT["w"]}, "ConfigError: this exchange has no phase "
                                                 "'hgc_bogus'"),
            ("hgc_values", {"held/w": INIT["w"]}, "phase 'hgc_values' before this client "
                                                  "trained"),
            ("hgc_master", None, "holds no exchange state")):
        record, layout = pack((0.05, True, False))
        message = Message(RecordDict({PAYLOAD_KEY: record, "config": ConfigRecord({
            KEY_UPLINK: Link.parse(HGC).spec, KEY_DOWNLINK: Link.parse(None).spec,
            KEY_PHASE: phase, KEY_LAYOUT: layout})}), dst_node_id=101, message_type="train")
        context = Context(run_id=1, node_id=101, node_config={}, state=RecordDict(),
                          run_config={})
        if state is not None:
            context.state[END_KEY] = wire.plain_record(state)
        reply = compression_mod(message, context, lambda m, c: called.append(m))
        assert reply.has_error() and reason in reply.error.reason, reply.error.reason
        assert f"phase {phase}" in reply.error.reason
    assert called == []  # the app never ran


def test_a_first_reply_that_does_not_unpack_is_dropped(caplog) -> None:
    def fn(node: int, reply: Message, rnd: int) -> Message:
        if node == 101 and _phase(reply) == "train":
            reply.content.config_records[REPLY_KEY]["layout"] = '{"d": "x/", "k": ["w"]}'
        return reply

    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, _, _, _ = _run(PSGD, rounds=2, tamper=_hook(fn))
    assert "dropping the reply of node 101: protocol message: the layout names Array " \
        "'x/w'" in caplog.text
    assert [r["dropped"] for r in _rows(s)] == [1, 1]


def test_a_round_without_a_node_through_every_phase_fails_the_run() -> None:
    """Every master answer lost: no node takes part in every phase, the round fails
    (max_failed_rounds=1), its summary names the reasons."""
    def fn(node: int, reply: Message, rnd: int) -> Message | None:
        return None if _phase(reply) == "hgc_master" else reply

    with pytest.raises(FailedRoundsError) as failed:
        _run(HGC, rounds=2, tamper=_hook(fn))
    assert "round 1: 0 of 3 replies decodable: 3x no reply to hgc_master" in str(failed.value)


def test_a_client_without_the_mod_is_dropped_with_the_reason() -> None:
    with pytest.raises(FailedRoundsError, match="compression_mod"):
        _run(HGC, rounds=1, app=_numpy_app(with_mod=False))


# -- settings -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": FedAvg(fraction_train=0.5), "uplink": HGC}, "fraction=1"),
    ({"uplink": HGC, "downlink": "fpz"}, "no downlink plan"),
    ({"uplink": "hgc(density=0.05, send=weights, aggregate=hgc)"}, "send='update'"),
    ({"uplink": "fpz(aggregate=hgc)"}, "use plan='hgc'"),
    ({"uplink": "hgc(density=0.05, colour=red, aggregate=hgc)"}, "unknown options"),
    ({"uplink": "signsgd(aggregate=vote)"}, "the wrapped strategy aggregates"),
    ({"uplink": "fpz(aggregate=median)"}, "unknown aggregate 'median'"),
    ({"uplink": PSGD, "downlink": "fpz(send=update)"},
     "send=update on the downlink is not supported"),
])
def test_settings_a_protocol_cannot_run_are_refused(kwargs: dict, match: str) -> None:
    strategy = kwargs.pop("strategy", FedAvg())
    with pytest.raises(fedpress.ConfigError, match=match):
        CompressedStrategy(strategy, **kwargs)


def test_the_uplink_spec_selects_the_protocol_in_code_and_run_config() -> None:
    """``aggregate=`` in the uplink spec, as in the simulator's plan specs; updates
    unless the spec says ``send=``; ``aggregate=mean`` (the default) and specs without
    it send one frame per reply (``hgc(...)`` alone is UpdateEncoder's one-stream
    codec)."""
    s = CompressedStrategy.from_run_config(FedAvg(), {
        "fedpress-uplink": "hgc(density=0.01, warmup=2, aggregate=hgc)"})
    assert s.uplink == Link("hgc", {"density": 0.01, "warmup": 2}, send="update",
                            aggregate="hgc")
    assert s.rounds is not None and s.rounds.protocol.title == "HGC"
    assert Link.parse(s.uplink.spec) == s.uplink  # what the clients read back
    s = CompressedStrategy(FedAvg(), uplink=PSGD)
    assert s.rounds is not None and s.rounds.protocol.title == "PowerSGD"
    for spec in ("fpz(aggregate=mean)", "hgc(density=0.05)"):
        assert CompressedStrategy(FedAvg(), uplink=spec).rounds is None
    with pytest.raises(fedpress.ConfigError, match=r"'fedpress-uplink' = 'fpz.aggregate=hgc.'"
                                                   r".*use plan='hgc'"):
        CompressedStrategy.from_run_config(FedAvg(), {"fedpress-uplink": "fpz(aggregate=hgc)"})


def test_parameters_are_the_float_tensors_but_batchnorms_statistics() -> None:
    state = {"conv.weight": np.zeros((2, 2), np.float32), "bn.weight": np.zeros(2, np.float32),
             "bn.running_mean": np.zeros(2, np.float32),
             "bn.running_var": np.zeros(2, np.float32),
             "bn.num_batches_tracked": np.array(3, np.int64)}
    assert parameter_names(state) == {"conv.weight", "bn.weight"}


# -- the messages ---------------------------------------------------------------------
def test_protocol_messages_round_trip_through_flower_records() -> None:
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    tree = (b"mask", (0.05, True, False), None, "x", 3,
            {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
             "n": np.array(4, np.int64)}, {}, bytearray(b""))
    record, layout = pack(tree)
    wired = recorddict_from_proto(recorddict_to_proto(RecordDict({"a": record})))["a"]
    back = unpack(wired, layout)
    assert back[:5] == (b"mask", (0.05, True, False), None, "x", 3)
    assert back[5]["w"].tobytes() == tree[5]["w"].tobytes() and back[5]["n"] == 4
    assert back[6] == {} and back[7] == b""
    assert size(tree) == 4 + 24 + 8
    with pytest.raises(fedpress.FormatError, match="cannot carry"):
        pack({1, 2})
    with pytest.raises(fedpress.FormatError, match="a number nan"):
        pack((float("nan"),))


@pytest.mark.parametrize("layout, match", [
    (None, "no layout"),
    ("{", "malformed layout"),
    ('{"b": "b9"}', "names Array 'b9'"),
    ('{"t": [{"b": "b0"}, {"b": "b0"}]}', "names Array 'b0'"),
    ('{"q": 1}', "unknown layout entry"),
    ('[1]', "bare list"),
    ('{"t": [NaN]}', "malformed layout"),
    ('{"t": []}', "Arrays the layout does not name"),
    ('{"d": "", "k": ["b0"]}', "is a byte string"),
    ('{"d": "d1/", "k": ["w", "w"]}', "a tensor name twice"),
    ("[" * 100_000 + "]" * 100_000, "malformed layout|deeper|bare list"),
])
def test_a_layout_that_does_not_match_its_arrays_is_refused(layout, match: str) -> None:
    record, _ = pack((b"abc", {"w": np.zeros(2, np.float32)}))
    assert set(record) == {"b0", "d1/w"}
    with pytest.raises(fedpress.FormatError, match=match):
        unpack(record, layout)


def test_the_flower_side_loads_without_torch_or_the_simulator() -> None:
    script = (
        "import sys\n"
        "for m in ('torch', 'matplotlib', 'fedpress.sim'):\n"
        "    sys.modules[m] = None\n"
        "from fedpress.flower import payload, phases, protocols, rounds, sizes\n"
        "from fedpress.flower import CompressedStrategy\n"
        "from flwr.serverapp.strategy import FedAvg\n"
        "CompressedStrategy(FedAvg(), uplink='hgc(density=0.01, aggregate=hgc)')\n"
        "CompressedStrategy(FedAvg(), uplink='powersgd(rank=2, aggregate=powersgd)')\n"
        "bad = [m for m in sys.modules if m.startswith(('torch', 'matplotlib', 'fedpress.sim'))\n"
        "       and sys.modules[m] is not None]\n"
        "assert not bad, bad\n"
        "print('exchange-flower-ok')\n"
    )
    run_isolated(script, "exchange-flower-ok")


def test_hgc_codes_the_batchnorm_statistics_and_every_node_holds_the_model() -> None:
    """Float buffers (names of BatchNorm statistics) travel as coded frames both ways
    under HGC by default; every node still holds the server's model bit for bit."""
    rng = np.random.default_rng(7)
    init = dict(INIT) | {"bn.running_mean": rng.standard_normal(512).astype(np.float32),
                         "bn.running_var": rng.random(512).astype(np.float32) + 0.5}
    up = {}
    for buffers in ("fpz", "raw"):
        random.seed(0)
        grid = InlineGrid(_numpy_app(), 3)
        s = CompressedStrategy(FedAvg(fraction_evaluate=0.0),
                               uplink=f"hgc(density=0.05, buffers={buffers}, aggregate=hgc)")
        models: dict[int, dict] = {}

        def keep(rnd: int, arrays: ArrayRecord, models: dict = models) -> None:
            models[rnd] = wire.state_of(arrays)

        s.start(grid=grid, initial_arrays=wire.plain_record(init), num_rounds=3,
                evaluate_fn=keep)
        rows = _rows(s)
        assert [r.get("dropped", 0) for r in rows] == [0, 0, 0]
        for node in grid.contexts:  # round 3 started from round 2's model on every node
            held = _held(grid, node)
            assert all(held[k].tobytes() == models[2][k].tobytes() for k in init)
        assert not np.array_equal(models[3]["bn.running_var"], init["bn.running_var"])
        up[buffers] = [r["bytes_up"] for r in rows]
    raw_buffers = 3 * 2 * 512 * 4  # three nodes' two statistics, float32
    assert all(c < r - raw_buffers / 2 for c, r in zip(up["fpz"], up["raw"]))


def test_the_uplink_links_bound_reaches_the_protocol() -> None:
    """An explicit ``eb``/``mode`` in the uplink spec codes HGC's buffers and PowerSGD's
    rest under that bound, as the simulator's run-level bound does."""
    from fedpress.exchange.hgc import HGCExchange, hgc_options
    from fedpress.flower.protocols import protocol_for, settings_of

    down = Link.parse(None)
    tight = settings_of(Link.parse("hgc(density=0.01, aggregate=hgc, eb=0.05, mode=abs)"),
                        down)
    assert tight.plan_options["eb"] == 0.05 and tight.plan_options["mode"] == "abs"
    assert hgc_options(tight.plan_options)["buffers_eb"] == 0.05
    assert hgc_options(settings_of(Link.parse("hgc(aggregate=hgc)"), down)
                       .plan_options)["buffers_eb"] == 1e-2  # the link's default
    assert isinstance(protocol_for(Link.parse("hgc(aggregate=hgc, eb=0.05)"), down),
                      HGCExchange)
    rest = protocol_for(Link.parse("powersgd(rank=2, aggregate=powersgd, eb=0.05)"), down)
    assert rest.settings.plan_options["eb"] == 0.05
