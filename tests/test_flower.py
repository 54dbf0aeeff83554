"""Flower integration, in process (InlineGrid: real Flower messages, serialized as over
gRPC, no Ray): the mod and the strategy wrapper, stateful plans across rounds, bytes
counted, bad replies dropped, missing back ends and rounds without a usable reply
reported, and the same weights and bytes as the fedpress simulator."""

from __future__ import annotations

import logging
import random
import sys

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

import fedpress
from fedpress.backends.lossless import BloscLzCodec, ZstdCodec
from fedpress.flower import CompressedStrategy, Link, compression_mod, task, wire
from fedpress.flower.inline import InlineGrid
from fedpress.flower.mod import STATE_KEY
from fedpress.flower.strategy import FailedRoundsError

RNG = np.random.default_rng(0)
INIT = {"w": RNG.standard_normal((48, 40)).astype(np.float32),
        "b": RNG.standard_normal(40).astype(np.float32) * 0.1}


def _numpy_app(with_mod: bool = True, mods: list | None = None,
               trained: list | None = None, train_mods: list | None = None) -> ClientApp:
    """Clients that move every weight by a seeded, node-specific step (``mods``: in
    place of the mod; ``trained``: gets the node id of each train call; ``train_mods``:
    the train function's own mods, inside the app's)."""
    app = ClientApp(mods=mods if mods is not None else [compression_mod] if with_mod else [])

    @app.train(mods=train_mods or [])
    def train(msg: Message, ctx: Context) -> Message:
        if trained is not None:
            trained.append(ctx.node_id)
        st = wire.state_of(msg.content["arrays"])
        pid = int(ctx.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        rng = np.random.default_rng(100 * rnd + pid)
        out = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(np.float32)
               for k, v in st.items()}
        return Message(RecordDict({"arrays": wire.plain_record(out),
                                   "metrics": MetricRecord({"num-examples": 10 + pid})}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        st = wire.state_of(msg.content["arrays"])
        return Message(RecordDict({"metrics": MetricRecord(
            {"num-examples": 5, "norm": float(sum(np.abs(v).sum() for v in st.values()))})}),
            reply_to=msg)

    return app


def _run(uplink: str | None, downlink: str | None = None, rounds: int = 3, nodes: int = 3,
         app: ClientApp | None = None, tamper=None, strategy=None, run_config=None,
         **options):
    random.seed(0)  # Flower's FedAvg samples nodes with `random`: the same order each run
    grid = InlineGrid(app or _numpy_app(), nodes, tamper=tamper, run_config=run_config)
    s = CompressedStrategy(strategy or FedAvg(fraction_evaluate=1.0), uplink=uplink,
                           downlink=downlink, uplink_mbps=10, downlink_mbps=100, **options)
    result = s.start(grid=grid, initial_arrays=wire.plain_record(INIT), num_rounds=rounds)
    return s, grid, result


def _frames(log: list) -> callable:
    """A tamper hook that records each train reply's frame length per round."""
    def hook(node: int, reply: Message) -> Message:
        if reply.has_content() and reply.content.array_records:
            frame = wire.frame_of(next(iter(reply.content.array_records.values())))
            if frame is not None:
                log.append(len(frame))
        return reply
    return hook


def test_lossless_plans_change_nothing_but_the_bytes() -> None:
    """A lossless uplink and downlink give bit for bit the raw run's model."""
    _, _, raw = _run(None)
    _, _, packed = _run("zstd", "zstd")
    for k in INIT:
        assert np.array_equal(wire.state_of(raw.arrays)[k], wire.state_of(packed.arrays)[k])


@pytest.mark.parametrize("uplink, downlink", [
    ("fedsz", None),
    ("gaeb(reference=true, residual_feedback=true)", "fpz(send=update)"),
    ("ef:topk(ratio=0.05, send=update)", "gaeb"),
    ("hgc(density=0.05, send=update, residual_feedback=true)", "fedsz(send=update)"),
])
def test_plans_run_across_rounds_and_bytes_are_the_frames(uplink: str, downlink: str) -> None:
    """Stateful plans (sender state, mirrored state, references, downlink updates) keep
    their state in Context.state across rounds; the metrics count the frames' bytes."""
    seen: list = []
    s, grid, result = _run(uplink, downlink, tamper=_frames(seen))
    rows = [h for h in s.history if h["phase"] == "train"]
    assert [h["dropped"] for h in rows] == [0, 0, 0]
    for rnd, row in enumerate(rows, start=1):
        assert row["bytes_up"] == sum(seen[3 * (rnd - 1): 3 * rnd])  # 3 train replies a round
        assert row["raw_up"] == 3 * sum(v.nbytes for v in INIT.values())
        m = result.train_metrics_clientapp[rnd]
        assert m["fedpress-bytes-up"] == row["bytes_up"]
        assert m["fedpress-cr-up"] == pytest.approx(row["raw_up"] / row["bytes_up"])
        assert m["fedpress-comm-s"] > 0
    for ctx in grid.contexts.values():
        assert STATE_KEY in ctx.state.config_records
    final = wire.state_of(result.arrays)
    assert all(np.isfinite(v).all() and v.shape == INIT[k].shape for k, v in final.items())
    # every client's copy of the model is the one the server mirrors (update downlink)
    if "send=update" in (downlink or ""):
        for node, ctx in grid.contexts.items():
            store = fedpress.MemoryStateStore.from_bytes(
                ctx.state.config_records[STATE_KEY]["blob"])
            held = {n: store.get("\x00held", n)["value"] for p, n in store.keys()
                    if p == "\x00held"}
            assert wire.state_digest(held) == wire.state_digest(s._down.held[node])


def test_a_corrupted_frame_is_dropped_and_the_round_goes_on(caplog) -> None:
    bad = 102  # the second node

    def corrupt(node: int, reply: Message) -> Message:
        if node == bad and reply.has_content() and "arrays" in reply.content:
            frame = bytearray(wire.frame_of(reply.content["arrays"]))
            frame[len(frame) // 2] ^= 0xFF
            reply.content["arrays"] = wire.frame_record(bytes(frame))
        return reply

    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, _, result = _run("fedsz", rounds=2, tamper=corrupt, max_failed_rounds=1)
    assert [h["dropped"] for h in s.history if h["phase"] == "train"] == [1, 1]
    assert "dropping the reply of node 102" in caplog.text and "checksum" in caplog.text
    assert "decodable" not in caplog.text  # two good replies a round: no failed round
    assert result.arrays is not None


def test_a_client_without_the_mod_is_dropped_with_the_reason(caplog) -> None:
    """Every reply dropped: the run fails (by default after the first such round), its
    error naming the reason; with max_failed_rounds=0 it goes on and the model stays."""
    with pytest.raises(FailedRoundsError) as failed:
        _run("fedsz", rounds=3, app=_numpy_app(with_mod=False))
    assert "round 1: 0 of 3 replies decodable: 3x dropped: plain arrays where a fedpress " \
        "frame was expected" in str(failed.value)
    assert "compression_mod" in str(failed.value) and "round 2" not in str(failed.value)
    with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
        s, _, result = _run("fedsz", rounds=2, app=_numpy_app(with_mod=False),
                            max_failed_rounds=0)
    assert [h["dropped"] for h in s.history if h["phase"] == "train"] == [3, 3]
    assert "compression_mod" in caplog.text
    for k, v in wire.state_of(result.arrays).items():  # the previous model stands
        assert np.array_equal(v, INIT[k])


def _error_reply(reply: Message, reason: str) -> Message:
    """A Flower error in place of a node's reply (from that node, to the server)."""
    err = Message(Error(code=0, reason=reason), reply_to=reply)
    md = err.metadata.__dict__  # reply_to swaps the ends: restore the node's as sender
    md["_src_node_id"], md["_dst_node_id"] = reply.metadata.src_node_id, \
        reply.metadata.dst_node_id
    md["_reply_to_message_id"] = reply.metadata.reply_to_message_id
    return err


def _failing_once(node: int, rnd: int, how: str):
    """A tamper hook: ``node``'s train reply of round ``rnd`` is lost, an error, or its
    client's state is wiped after replying; records every reply as (node, ok)."""
    seen: list = []

    def hook(n: int, reply: Message) -> Message | None:
        train = reply.metadata.message_type == "train"
        if n == node and train and reply.metadata.group_id == "" and \
                sum(1 for m, _, t in seen if m == n and t) == rnd - 1:
            if how == "lost":
                seen.append((n, False, train))
                return None
            if how == "error":
                reply = _error_reply(reply, "the app crashed")
            if how == "wipe":
                hook.grid.contexts[n].state = RecordDict()
        seen.append((n, not reply.has_error(), train))
        return reply

    hook.seen = seen
    return hook


@pytest.mark.parametrize("how", ["lost", "error", "wipe"])
def test_a_node_that_fails_once_starts_afresh_and_takes_part_again(how: str) -> None:
    """Stateful plans both ways (mirrored gaeb history up, against the start model,
    with residual feedback; fpz updates from the mirrored copy down): a node whose reply
    was lost or an error, or that lost its Context.state, is reset on both ends and
    its later replies count again."""
    hook = _failing_once(101, 2, how)
    random.seed(0)
    grid = InlineGrid(_numpy_app(), 3, tamper=hook)
    hook.grid = grid
    s = CompressedStrategy(FedAvg(fraction_evaluate=1.0),
                           uplink="gaeb(reference=true, residual_feedback=true)",
                           downlink="fpz(send=update)")
    s.start(grid=grid, initial_arrays=wire.plain_record(INIT), num_rounds=5)
    rows = [h for h in s.history if h["phase"] == "train"]
    train_101 = [ok for n, ok, t in hook.seen if n == 101 and t]
    if how == "wipe":  # round 2's evaluate message cannot be decoded there: an error
        assert train_101 == [True] * 5
        assert [ok for n, ok, t in hook.seen if n == 101 and not t][:3] == [True, False, True]
    else:
        assert train_101 == [True, False, True, True, True]
    assert all(h["dropped"] == 0 for h in rows)
    assert rows[-1]["bytes_up"] > 0 and rows[-1]["raw_up"] == 3 * sum(
        v.nbytes for v in INIT.values())  # all three replies counted again


def test_replies_of_the_wrong_tensors_are_dropped(caplog) -> None:
    def reshape(node: int, reply: Message) -> Message:
        if node == 103 and reply.has_content() and "arrays" in reply.content:
            bad = {"w": np.zeros(40, np.float32), "b": np.zeros((48, 40), np.float32)}
            reply.content["arrays"] = wire.frame_record(fedpress.UpdateEncoder("fpz").encode(bad))
        return reply

    for uplink in ("fpz", "fpz(send=update)"):
        with caplog.at_level(logging.WARNING, logger="fedpress.flower"):
            s, _, result = _run(uplink, rounds=2, tamper=reshape)
        assert [h["dropped"] for h in s.history if h["phase"] == "train"] == [1, 1]
        assert "float32(40,), the model's float32(48, 40)" in caplog.text
        assert {k: v.shape for k, v in wire.state_of(result.arrays).items()} == \
            {k: v.shape for k, v in INIT.items()}


def _fails_in(rounds: set[int], how: str):
    """A tamper hook: every train reply of the given rounds lost or an error."""
    count: dict[int, int] = {}

    def hook(node: int, reply: Message) -> Message | None:
        if reply.metadata.message_type != "train":
            return reply
        count[node] = rnd = count.get(node, 0) + 1
        if rnd not in rounds:
            return reply
        return None if how == "lost" else _error_reply(reply, f"the app crashed on node {node}")

    return hook


def test_failed_rounds_raise_after_max_failed_rounds_in_a_row() -> None:
    """Rounds 2 and 3 without a usable reply: max_failed_rounds=2 stops the run at round
    3, with each round's reasons counted; one such round between good ones does not."""
    with pytest.raises(FailedRoundsError) as failed:
        _run("fpz", rounds=4, tamper=_fails_in({2, 3}, "lost"), max_failed_rounds=2)
    text = str(failed.value)
    assert "in 2 rounds in a row (max_failed_rounds=2)" in text
    assert "round 2: 0 of 3 replies decodable: 3x no reply" in text
    assert "round 3: 0 of 3 replies decodable: 3x no reply" in text
    assert "round 4" not in text
    with pytest.raises(FailedRoundsError, match="1x error reply: the app crashed on node 103"):
        _run("fpz", rounds=2, tamper=_fails_in({1}, "error"))  # the default: 1
    s, _, result = _run("fpz", rounds=4, tamper=_fails_in({1, 3}, "error"),
                        max_failed_rounds=2)
    assert [h["bytes_up"] > 0 for h in s.history if h["phase"] == "train"] == \
        [False, True, False, True]
    assert not np.array_equal(wire.state_of(result.arrays)["w"], INIT["w"])
    s, _, _ = _run("fpz", rounds=3, tamper=_fails_in({1, 2, 3}, "lost"), max_failed_rounds=None)
    assert [h["bytes_up"] for h in s.history if h["phase"] == "train"] == [0, 0, 0]
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(fedpress.ConfigError, match="max_failed_rounds"):
            CompressedStrategy(FedAvg(), max_failed_rounds=bad)  # type: ignore[arg-type]


def _missing(package: str):
    """A check_available that finds ``package`` missing."""
    def check(self) -> None:
        raise fedpress.MissingDependencyError(
            f"codec {self.codec_id!r} needs the Python package {package!r}, which is not "
            f"installed; install it with: pip install {package}")
    return check


@pytest.mark.parametrize("uplink, downlink", [("fedsz", None), (None, "zstd"),
                                              (None, "ef:topk(ratio=0.1, send=update)")])
def test_a_back_end_missing_on_the_server_is_found_when_the_strategy_is_built(
        monkeypatch, uplink, downlink) -> None:
    monkeypatch.setattr(ZstdCodec, "check_available", _missing("zstandard"))
    with pytest.raises(fedpress.MissingDependencyError, match="pip install zstandard"):
        CompressedStrategy(FedAvg(), uplink=uplink, downlink=downlink)


def test_a_client_missing_a_back_end_replies_an_error_naming_it_before_training(
        monkeypatch, caplog) -> None:
    """The server has the uplink's back end, the clients not: each client's mod answers
    with a Flower error naming the package before its app trains; the server logs it
    and the run fails with it."""
    trained: list = []
    random.seed(0)
    grid = InlineGrid(_numpy_app(trained=trained), 3)
    s = CompressedStrategy(FedAvg(fraction_evaluate=0.0),
                           uplink="fedsz(lossy=fpz, lossless=blosc-lz)")
    monkeypatch.setattr(BloscLzCodec, "check_available", _missing("blosc2"))
    replies: list = []
    grid.tamper = lambda node, reply: replies.append(reply) or reply
    with caplog.at_level(logging.WARNING, logger="fedpress.flower"), \
            pytest.raises(FailedRoundsError) as failed:
        s.start(grid=grid, initial_arrays=wire.plain_record(INIT), num_rounds=3)
    assert trained == []
    assert [r.error.code for r in replies] == [6, 6, 6]  # ErrorCode.MOD_FAILED_PRECONDITION
    assert "pip install blosc2" in replies[0].error.reason
    assert "the train reply of node 101 is an error" in caplog.text
    assert "pip install blosc2" in caplog.text
    assert "round 1: 0 of 3 replies decodable: 3x error reply: fedpress on this " \
        "SuperNode: codec 'blosc-lz' needs the Python package 'blosc2'" in str(failed.value)


def test_a_client_whose_back_end_fails_to_import_when_encoding_replies_an_error(
        monkeypatch) -> None:
    """The user's case: the library cannot be imported on the clients (blosc2 not in
    the install), found when the reply is encoded: an error reply naming the package,
    and a failed run, not a finished one with an untrained model."""
    random.seed(0)
    grid = InlineGrid(_numpy_app(), 2)
    s = CompressedStrategy(FedAvg(fraction_evaluate=0.0),
                           uplink="fedsz(lossy=fpz, lossless=blosc-lz)")
    monkeypatch.setitem(sys.modules, "blosc2", None)  # `import blosc2` now fails
    with pytest.raises(FailedRoundsError, match=r"2x error reply: .*'blosc2'.*pip install "
                                                r"blosc2"):
        s.start(grid=grid, initial_arrays=wire.plain_record(INIT), num_rounds=2)


def test_the_downlink_is_decoded_with_its_own_codecs_and_only_the_uplinks_are_accepted(
        monkeypatch) -> None:
    """A client accepts the downlink's codecs (its server chose them); the server only
    its uplink's, those not safe on a peer's bytes in a child process."""
    from fedpress.backends.sz2 import SZ2Codec

    monkeypatch.setattr(SZ2Codec, "peer_safe", False)  # as the core marks it
    s = CompressedStrategy(FedAvg(), uplink="ef:topk(ratio=0.1, send=update)",
                           downlink="fpz")
    assert s.limits.codecs == {"ef", "topk", "zstd"} and not s.limits.isolate
    paper = Link.parse("fedsz-paper")
    assert paper.peer_limits().codecs == {"blosc-lz"}
    assert paper.peer_limits().isolate == {"sz2"}
    assert paper.peer_limits(fedpress.Limits(codecs={"sz2", "blosc-lz", "zfp"})).codecs == \
        {"sz2", "blosc-lz"}
    assert {"sz2", "blosc-lz"} <= paper.own_limits().codecs
    with pytest.raises(fedpress.ConfigError, match="child process"):
        CompressedStrategy(FedAvg(), uplink="fedsz-paper(reference=true)")
    _, _, result = _run("fpz", "zstd", rounds=1)  # the clients decode zstd frames
    assert result.arrays is not None


def test_links_parse_and_refuse_bad_settings() -> None:
    link = Link.parse("gaeb(reference=true, residual_feedback=true, eb=0.001)")
    assert link.plan == "gaeb" and link.reference and link.eb == 0.001
    assert link.options == {"residual_feedback": True}
    assert Link.parse(link.spec) == link
    assert Link.parse(None).plan is None and Link.parse("none").encoder() is None
    for spec, match in (("fedsz(send=gradient)", "send"), ("none(send=update)", "raw"),
                        ("fedsz(reference=true, send=update)", "reference"),
                        ("nonexistent-codec", "nonexistent")):
        with pytest.raises(fedpress.ConfigError, match=match):
            Link.parse(spec)
    with pytest.raises(fedpress.ConfigError, match="uplink setting"):
        CompressedStrategy(FedAvg(), downlink="fpz(reference=true)")
    with pytest.raises(fedpress.ConfigError, match="Strategy"):
        CompressedStrategy(object())  # type: ignore[arg-type]
    with pytest.raises(fedpress.ConfigError, match="delay"):
        CompressedStrategy(FedAvg(), delay=True)


def test_frame_records() -> None:
    rec = wire.frame_record(b"\x01\x02")
    assert wire.frame_of(rec) == b"\x01\x02" and rec[wire.FRAME_KEY].stype == wire.STYPE
    assert wire.frame_of(wire.plain_record(INIT)) is None
    mixed = wire.plain_record(INIT)
    mixed[wire.FRAME_KEY] = rec[wire.FRAME_KEY]
    with pytest.raises(fedpress.FormatError, match="one Array"):
        wire.frame_of(mixed)


SIM = {"dataset": "digits", "model": "mlp", "local-steps": 3, "batch-size": 16,
       "lr": 0.05, "seed": 3}


@pytest.mark.parametrize("plan", ["fpz", "ef:topk(ratio=0.1, send=update)"])
def test_same_weights_and_bytes_as_the_fedpress_simulator(plan: str) -> None:
    """task's train function under Flower (3 nodes, 2 rounds, float64 FedAvg) and
    ``fedpress.sim`` with the same seed and plan: equal weights and bytes, bit for bit,
    when weights are sent.
    (Flower's stock FedAvg sums in float32: within 1e-5 then. Not SZ2 here: its
    output size depends on what the process compressed before, through the library's
    global state, though it decodes to the same values.)"""
    from fedpress.sim.fl import FLConfig, simulate
    from fedpress.sim.run import parse_plan_spec

    ds = task.dataset(SIM)
    name, options = parse_plan_spec(plan)
    send = options.pop("send", "weights")
    cfg = FLConfig(model="mlp", clients=3, rounds=2, local_steps=3, batch_size=16, lr=0.05,
                   seed=3, plan=name, plan_options=options, send=send)
    history, model = simulate(ds, cfg, threads=1)
    expect = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    app = ClientApp(mods=[compression_mod])
    app.train()(task.train)
    for strategy, exact in ((task.FedAvg64(fraction_evaluate=0.0), send == "weights"),
                            (FedAvg(fraction_evaluate=0.0), False)):
        random.seed(0)
        grid = InlineGrid(app, 3, run_config=SIM)
        s = CompressedStrategy(strategy, uplink=plan)
        result = s.start(grid=grid, initial_arrays=task.initial_arrays(SIM), num_rounds=2)
        got = wire.state_of(result.arrays)
        rows = [h for h in s.history if h["phase"] == "train"]
        if exact:
            for k in expect:
                np.testing.assert_array_equal(got[k], expect[k])
            assert [h["bytes_up"] for h in rows] == [m.bytes_up for m in history]
        else:  # float32 sums (stock FedAvg) or updates added back to the start in float32
            # (the simulator averages updates in float64): a few values move across a
            # lossy codec's bin, at most
            for k in expect:
                diff = np.abs(got[k] - expect[k])
                assert np.mean(diff > 1e-5) < 1e-3
                assert diff.max() <= 2 * 1e-2 * np.ptp(expect[k]) + 1e-5
            assert rows[0]["bytes_up"] == history[0].bytes_up
        assert [h["raw_up"] for h in rows] == [m.raw_up for m in history]


def test_flower_message_bytes_are_counted_beside_the_frames() -> None:
    """fedpress-flower-bytes-* count the whole Flower messages (protobuf Message:
    metadata, config and metric records, the Array framing) that carry the frames: a
    little more than the frames, which are counted as before; InlineGrid's own
    measure of each message's content lies between the two."""
    seen: list = []
    s, grid, result = _run("fedsz", "zstd", rounds=2, tamper=_frames(seen))
    rows = [h for h in s.history if h["phase"] == "train"]
    messages = 3 * len(s.history)  # 3 nodes, each asked to train and to evaluate a round
    for rnd, row in enumerate(rows, start=1):
        m = result.train_metrics_clientapp[rnd]
        assert m["fedpress-bytes-up"] == sum(seen[3 * (rnd - 1): 3 * rnd])  # frames only
        assert m["fedpress-flower-bytes-up"] > m["fedpress-bytes-up"] > 0
        assert m["fedpress-flower-bytes-down"] > m["fedpress-bytes-down"] > 0
        assert m["fedpress-flower-bytes-up"] == row["flower_bytes_up"]
        # Flower's overhead: records, keys, metadata; hundreds of bytes a message
        assert m["fedpress-flower-bytes-up"] - m["fedpress-bytes-up"] < 3 * 1024
    # the content alone (what InlineGrid serializes) is the message less its metadata
    down = sum(h["flower_bytes_down"] for h in s.history)
    up = sum(h["flower_bytes_up"] for h in s.history)
    assert 0 < down - sum(grid.bytes_sent) < 200 * messages
    assert 0 < up - sum(grid.bytes_received) < 200 * messages


def test_flower_message_bytes_of_a_raw_link_exceed_the_raw_arrays() -> None:
    _, _, result = _run(None, None, rounds=1)
    m = result.train_metrics_clientapp[1]
    assert m["fedpress-bytes-up"] == m["fedpress-raw-up"] == 3 * sum(v.nbytes for v in
                                                                      INIT.values())
    assert m["fedpress-flower-bytes-up"] > m["fedpress-raw-up"]
    assert m["fedpress-flower-bytes-down"] > m["fedpress-raw-down"]


RUN_CONFIG = {"fedpress-uplink": "gaeb(reference=true)", "fedpress-downlink": "fpz(send=update)",
              "fedpress-eb": 0.001, "fedpress-mode": "abs", "fedpress-uplink-mbps": 5,
              "fedpress-downlink-mbps": 50.0, "fedpress-latency-s": 0.01,
              "fedpress-delay": False, "fedpress-max-failed-rounds": 3,
              "num-server-rounds": 2, "lr": 0.1}  # the app's own keys are left alone


def test_from_run_config_reads_every_fedpress_key() -> None:
    s = CompressedStrategy.from_run_config(FedAvg(), RUN_CONFIG)
    assert s.uplink == Link.parse("gaeb(reference=true, eb=0.001, mode=abs)")
    assert s.downlink == Link.parse("fpz(send=update, eb=0.001, mode=abs)")
    assert s.mbps == (5.0, 50.0) and s.latency_s == 0.01 and s.delay is False
    assert s.max_failed_rounds == 3
    # a spec's own bound wins over fedpress-eb / fedpress-mode; a Context is read too
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={
        "fedpress-uplink": "fedsz(eb=0.05)", "fedpress-eb": 0.001, "fedpress-mode": "abs"})
    s = CompressedStrategy.from_run_config(FedAvg(), ctx)
    assert (s.uplink.eb, s.uplink.mode) == (0.05, "abs")
    assert s.downlink.plan is None
    # absent keys: the keyword defaults, then the constructor's
    s = CompressedStrategy.from_run_config(FedAvg(), {}, uplink="fpz", max_failed_rounds=2)
    assert s.uplink.plan == "fpz" and s.max_failed_rounds == 2 and s.mbps == (None, None)
    s = CompressedStrategy.from_run_config(FedAvg(), {})
    assert s.uplink.plan == "fedsz" and s.downlink.plan is None and s.max_failed_rounds == 1


def test_a_run_configured_by_the_run_config_sends_what_the_constructor_would() -> None:
    cfg = {"fedpress-uplink": "fpz", "fedpress-eb": 0.05, "fedpress-downlink": "zstd"}
    random.seed(0)
    a = CompressedStrategy.from_run_config(FedAvg(fraction_evaluate=0.0), cfg)
    a.start(grid=InlineGrid(_numpy_app(), 3), initial_arrays=wire.plain_record(INIT),
            num_rounds=2)
    random.seed(0)
    b = CompressedStrategy(FedAvg(fraction_evaluate=0.0), uplink="fpz(eb=0.05)",
                           downlink="zstd(eb=0.05)")  # fedpress-eb sets both links' bound
    b.start(grid=InlineGrid(_numpy_app(), 3), initial_arrays=wire.plain_record(INIT),
            num_rounds=2)
    assert a.uplink == b.uplink and a.downlink == b.downlink
    rows = [[h["bytes_up"] for h in s.history if h["phase"] == "train"] for s in (a, b)]
    assert rows[0] == rows[1] and all(rows[0])
    assert a.uplink != Link.parse("fpz")  # the bound came through


@pytest.mark.parametrize("key, value, match", [
    ("fedpress-uplnk", "fpz", "unknown run config key.*'fedpress-uplnk'"),
    ("fedpress-uplink", 3, "'fedpress-uplink' must be a plan spec string"),
    ("fedpress-uplink", "nonexistent-codec", "'fedpress-uplink' = 'nonexistent-codec'"),
    ("fedpress-downlink", "fpz(reference=true)", "uplink setting"),
    ("fedpress-downlink", "fpz(send=gradient)", "'fedpress-downlink' = .*send must be"),
    ("fedpress-eb", "tight", "'fedpress-eb' must be a number"),
    ("fedpress-eb", 0, "'fedpress-eb' must be a number > 0"),
    ("fedpress-eb", True, "'fedpress-eb' must be a number > 0"),
    ("fedpress-mode", "psnr", "'fedpress-mode' must be 'rel' or 'abs'"),
    ("fedpress-uplink-mbps", 0, "'fedpress-uplink-mbps' must be a number > 0"),
    ("fedpress-downlink-mbps", "fast", "'fedpress-downlink-mbps' must be a number"),
    ("fedpress-latency-s", -1, "'fedpress-latency-s' must be a number >= 0"),
    ("fedpress-delay", "yes", "'fedpress-delay' must be true or false"),
    ("fedpress-delay", True, "delay=True needs uplink_mbps"),
    ("fedpress-max-failed-rounds", -1, "'fedpress-max-failed-rounds' must be an integer"),
    ("fedpress-max-failed-rounds", 1.5, "'fedpress-max-failed-rounds' must be an integer"),
    ("fedpress-max-failed-rounds", True, "'fedpress-max-failed-rounds' must be an integer"),
])
def test_from_run_config_names_the_key_of_a_bad_value(key: str, value, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        CompressedStrategy.from_run_config(FedAvg(), {key: value})
    with pytest.raises(fedpress.ConfigError, match="run config mapping"):
        CompressedStrategy.from_run_config(FedAvg(), ["fedpress-uplink"])  # type: ignore


def test_message_bytes_is_the_protobuf_size_without_serializing_the_data() -> None:
    """The metric's size equals protobuf's own for messages of every shape (length
    prefixes of 1 to 4 bytes, empty arrays, frames, no arrays, errors)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.common.serde import message_to_proto

    from fedpress.flower.strategy import message_bytes

    InlineGrid(_numpy_app(), 1)  # makes this process a server (messages need one)
    rng = np.random.default_rng(0)
    messages = []
    for sizes in ([0], [1], [31, 32], [4095, 4096, 3], [600_000]):  # up to 2.4 MB of data
        arrays = ArrayRecord({f"t{i}": Array(rng.random(n).astype(np.float32))
                              for i, n in enumerate(sizes)})
        messages.append(Message(RecordDict({
            "arrays": arrays, "config": ConfigRecord({"a": 1, "s": "x" * 300}),
            "metrics": MetricRecord({"n": 3})}), dst_node_id=5, message_type="train"))
    messages += [
        Message(RecordDict({"arrays": wire.frame_record(b"\x01" * 70_000)}), dst_node_id=7,
                message_type="train"),
        Message(RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=7,
                message_type="evaluate"),
        Message(RecordDict({"a": ArrayRecord(), "b": ArrayRecord(
            {"x": Array(np.zeros((0, 3), np.float32))})}), dst_node_id=7, message_type="train")]
    messages.append(Message(Error(code=3, reason="boom"), reply_to=messages[0]))
    for m in messages:
        assert message_bytes(m) == message_to_proto(m).ByteSize()
    assert message_bytes(messages[4]) > 2_400_000


def test_an_adaptive_uplink_decodes_whatever_each_node_chose(monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path) -> None:
    """plan ``auto``: each node picks its candidate for its link; the server accepts
    every candidate's codecs (and only those)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the calibration cache
    s, _, _ = _run("auto(max_eb=0.01, candidates='zstd|fpz(eb=0.01)')")
    rows = [h for h in s.history if h["phase"] == "train"]
    assert [h["dropped"] for h in rows] == [0, 0, 0]
    assert all(h["bytes_up"] < h["raw_up"] for h in rows)
    assert s.uplink.peer_limits().codecs == frozenset({"zstd", "fpz"})
    with pytest.raises(fedpress.ConfigError, match="looser than max_eb"):
        CompressedStrategy(FedAvg(), uplink="auto(max_eb=0.01, candidates='fpz(eb=0.1)')")
