"""The FL loop on sklearn digits with tiny models: bit-for-bit equal to a plain PyTorch
FedAvg loop when traffic is raw, compressed traffic counted and still learning, the
algorithm variants consistent with each other, the network model, bad configs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import fedpress

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
from fedpress.exchange import Downlink, gradient_compressor  # noqa: E402
from fedpress.sim import data, fl  # noqa: E402
from fedpress.sim.models import build_model  # noqa: E402
from fedpress.sim.network import Network, per_client, transfer_s  # noqa: E402

from .common import keep_made  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load_dataset("digits")


def _cfg(**kw: object) -> fl.FLConfig:
    base = {"model": "mlp", "clients": 3, "rounds": 2, "batch_size": 32, "lr": 0.05}
    base.update(kw)
    return fl.FLConfig(**base)  # type: ignore[arg-type]


def test_raw_fedavg_equals_a_plain_pytorch_loop(digits: data.Dataset) -> None:
    torch.set_num_threads(1)
    cfg = _cfg()
    _, model = fl.simulate(digits, cfg)

    # the reference: plain PyTorch, same seeds, same data order, same averaging
    parts = data.partition(digits.y_train, 3, "iid", seed=0)
    ref = build_model("mlp", digits.input_shape, 10, seed=0)
    glob = {k: v.clone() for k, v in ref.state_dict().items()}
    for rnd in (1, 2):
        states, sizes = [], []
        for k, p in enumerate(parts):
            ref.load_state_dict(glob)
            x = (torch.from_numpy(digits.x_train[p]).float() / 255 - 0.5) / 0.25
            y = torch.from_numpy(digits.y_train[p])
            gen = torch.Generator().manual_seed(0 * 1_000_003 + rnd * 1_009 + k)
            opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
            for idx in torch.randperm(len(y), generator=gen).split(32):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
                opt.step()
            states.append({k2: v.clone() for k2, v in ref.state_dict().items()})
            sizes.append(len(p))
        w = [s / sum(sizes) for s in sizes]
        glob = {k2: sum(wi * st[k2].double() for wi, st in zip(w, states)).float()
                for k2 in glob}
    got = model.state_dict()
    assert all(torch.equal(got[k], glob[k]) for k in glob)


def test_compressed_traffic_is_counted_and_still_learns(digits: data.Dataset) -> None:
    raw, _ = fl.simulate(digits, _cfg(model="cnn", rounds=3))
    fz, _ = fl.simulate(digits, _cfg(model="cnn", rounds=3, plan="fpz",
                                     plan_options={"eb": 1e-2}, downlink_plan="fpz",
                                     downlink_options={"eb": 1e-3}))
    assert raw[-1].cr_up == raw[-1].cr_down == 1.0 and raw[-1].encode_s == 0.0
    assert fz[-1].cr_up > 5 and fz[-1].cr_down > 2
    assert fz[-1].bytes_up * 5 < raw[-1].bytes_up and fz[-1].encode_s > 0
    assert fz[-1].comm_s < raw[-1].comm_s
    assert raw[-1].accuracy > 0.8 and abs(fz[-1].accuracy - raw[-1].accuracy) < 0.05


def test_variants_agree_where_they_should(digits: data.Dataset) -> None:
    base, m_avg = fl.simulate(digits, _cfg())
    _, m_mom0 = fl.simulate(digits, _cfg(algorithm="fedavgm", server_momentum=0.0))
    _, m_upd = fl.simulate(digits, _cfg(send="update"))
    for k, v in m_avg.state_dict().items():
        assert torch.equal(m_mom0.state_dict()[k], v)  # no momentum, server lr 1: FedAvg
        assert torch.allclose(m_upd.state_dict()[k], v, atol=1e-6)  # updates add up
    grad, _ = fl.simulate(digits, _cfg(send="gradient", local_steps=2, rounds=3))
    prox, _ = fl.simulate(digits, _cfg(algorithm="fedprox", mu=0.1))
    assert len(grad) == 3 and 0 <= grad[-1].accuracy <= 1 and prox[-1].accuracy > 0.5
    half, _ = fl.simulate(digits, _cfg(clients=4, fraction=0.5))
    assert all(len(m.clients) == 2 for m in half)
    assert base[0].row()["clients"] == "0 1 2"


def test_network_model() -> None:
    assert transfer_s(1_250_000, 10.0, 20.0) == pytest.approx(1.02)  # 10 Mb at 10 Mbps
    net = Network.build(3, up_mbps=[1, 2, 4], down_mbps={"median": 10, "sigma": 0.5},
                        latency_ms=5, seed=1)
    assert net.upload_s(2, 500_000) == pytest.approx(1.005)
    assert net.down_mbps.shape == (3,) and len(set(net.down_mbps)) == 3
    again = Network.build(3, up_mbps=[1, 2, 4], down_mbps={"median": 10, "sigma": 0.5},
                          latency_ms=5, seed=1)
    assert np.array_equal(net.down_mbps, again.down_mbps)
    for bad, match in (([-1.0, 1, 1], "> 0"), ([1, 2], "2 values for 3"),
                       ({"sigma": 1}, "median")):
        with pytest.raises(fedpress.ConfigError, match=match):
            per_client(bad, 3, "uplink", 0)


@pytest.mark.parametrize("kw,match", [
    ({"algorithm": "fedsgd"}, "choose one of fedavg"),
    ({"send": "logits"}, "choose one of weights"),
    ({"rounds": 0}, "rounds must be >= 1"),
    ({"fraction": 0.0}, "fraction"),
    ({"model": "vgg"}, "unknown model"),
    ({"reference": True}, "needs send='weights' and an uplink plan"),
    ({"downlink_plan": "fpz", "downlink_options": {"residual_feedback": True}},
     "downlink cannot use it"),
    ({"reference": True, "plan": "fpz", "send": "update"}, "needs send='weights'"),
])
def test_bad_configs_are_config_errors(digits: data.Dataset, kw: dict, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        fl.simulate(digits, _cfg(**kw))


def test_a_process_pool_gives_the_same_run(digits: data.Dataset) -> None:
    torch.set_num_threads(1)
    cfg = _cfg(clients=3, plan="fpz", plan_options={"eb": 1e-2})
    one, m_one = fl.simulate(digits, cfg, threads=1)
    two, m_two = fl.simulate(digits, cfg, workers=2, threads=1)
    for k, v in m_one.state_dict().items():
        assert torch.equal(m_two.state_dict()[k], v)
    assert [m.bytes_up for m in one] == [m.bytes_up for m in two]
    assert [m.accuracy for m in one] == [m.accuracy for m in two]
    with pytest.raises(fedpress.ConfigError, match="workers"):
        fl.simulate(digits, cfg, workers=0)


def test_a_stateless_downlink_is_encoded_once_and_broadcast() -> None:
    state = {"w.weight": np.random.default_rng(1).standard_normal(4096).astype(np.float32)}
    down = Downlink("fpz", {"eb": 1e-2}, clients=3)
    messages, sizes, seconds = down.send([0, 2], state)
    assert down.broadcast and messages[0] is messages[2] and seconds > 0
    assert sizes == {0: len(messages[0]), 2: len(messages[0])}
    raw = Downlink(None, {}, clients=3)
    messages, sizes, seconds = raw.send([1], state)
    assert messages[1] is state and sizes == {1: 16384} and seconds == 0.0


def test_downlink_updates_mirror_each_clients_copy(digits: data.Dataset) -> None:
    torch.set_num_threads(1)
    _, m_weights = fl.simulate(digits, _cfg())
    _, m_update = fl.simulate(digits, _cfg(downlink_send="update"))
    for k, v in m_weights.state_dict().items():
        assert torch.allclose(m_update.state_dict()[k], v, atol=1e-5)
    # a lossy downlink: the server's mirror equals what the client holds, bit for bit
    cfg = _cfg(clients=4, fraction=0.5, downlink_send="update", downlink_plan="topk",
               downlink_options={"ratio": 0.2})
    parts = data.partition(digits.y_train, 4, "iid", seed=0)
    from fedpress.sim.pool import InProcessPool

    pool = InProcessPool(cfg, [(digits.x_train[p], digits.y_train[p]) for p in parts],
                         digits.input_shape, 10)
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    state = fl.state_of(model)
    down = Downlink("topk", {"ratio": 0.2}, 4, "update", state)
    for rnd in (1, 2, 3):
        target = {k: v + 0.01 * rnd for k, v in state.items()}
        messages, sizes, _ = down.send([0, 2] if rnd % 2 else [1, 2], target)
        pool.run(rnd, messages)
        for k in messages:
            held = pool.clients[k].end.held
            assert held is not None
            assert all(np.array_equal(held[n], down.held[k][n]) for n in held)
        assert all(s < fl.raw_bytes(target) for s in sizes.values())
    assert down.version[2] != down.version[0]  # client 0 missed round 2: its own copy
    # the mirror is the downlink's error feedback: a fixed target is reached
    target = {k: v + 1.0 for k, v in state.items() if v.dtype.kind == "f"}
    for _ in range(12):
        down.send([3], target)
    assert all(np.abs(down.held[3][k] - target[k]).max() < 1e-5 for k in target)
    with pytest.raises(fedpress.ConfigError, match="stateless form"):
        Downlink("ef:topk", {"ratio": 0.2}, 4, "update", state)


def test_gradient_compressors_are_refused_on_weights(digits: data.Dataset) -> None:
    with pytest.raises(fedpress.ConfigError, match=r"not weights.*'update' or 'gradient'"):
        fl.simulate(digits, _cfg(plan="topk"))
    with pytest.raises(fedpress.ConfigError, match="downlink_send to 'update'"):
        fl.simulate(digits, _cfg(send="update", downlink_plan="ef:signsgd"))
    assert gradient_compressor("fpz", {}) is None
    assert gradient_compressor("ef:qsgd", {}) == "ef"


def test_weights_coded_against_the_start_model(digits: data.Dataset) -> None:
    """reference=true: each client's weights are coded against the model it decoded
    (through a lossy, stateful downlink too); the server decodes them with the copy it
    mirrors, and the uplink gets smaller than without the reference."""
    kw = {"model": "cnn", "rounds": 3, "plan": {"re:weight": "gaeb", "default": "zstd"},
          "plan_options": {"eb": 1e-3}, "downlink_plan": "gaeb",
          "downlink_options": {"eb": 1e-3}}
    plain, _ = fl.simulate(digits, _cfg(**kw))
    ref, _ = fl.simulate(digits, _cfg(reference=True, **kw))
    assert sum(r.bytes_up for r in ref) < 0.8 * sum(r.bytes_up for r in plain)
    assert ref[-1].accuracy > 0.5
    # the server's copy of a client's start model is what the client decoded
    half, _ = fl.simulate(digits, _cfg(reference=True, clients=4, fraction=0.5, **kw))
    assert len(half) == 3


def test_kept_client_momentum_continues_the_optimizer(digits: data.Dataset) -> None:
    """client_state="keep": two rounds of 2 full-batch steps with the momentum carried
    over equal 4 steps of one optimizer; "reset" starts the momentum at zero."""
    from fedpress.sim.client import local_train, normalise

    x, y = normalise(digits.x_train[:64]), torch.from_numpy(digits.y_train[:64])
    cfg = _cfg(batch_size=64, local_steps=2, momentum=0.9)
    start = build_model("mlp", digits.input_shape, 10, seed=1).state_dict()

    def trained(steps: list[int], keep: bool) -> dict:
        model = build_model("mlp", digits.input_shape, 10, seed=1)
        model.load_state_dict(start)
        momentum: dict | None = {} if keep else None
        for n in steps:
            kept = local_train(model, x, y, _cfg(batch_size=64, local_steps=n, momentum=0.9),
                               torch.Generator().manual_seed(0), momentum=momentum)
            momentum = kept if keep else None
        assert (kept is not None) == keep
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}

    once, kept, reset = trained([4], False), trained([2, 2], True), trained([2, 2], False)
    assert all(np.allclose(once[k], kept[k], atol=1e-6) for k in once)
    assert not all(np.allclose(once[k], reset[k], atol=1e-6) for k in once)
    # in the simulator: round 1 is the same either way, later rounds differ
    h_reset, _ = fl.simulate(digits, _cfg(rounds=2, local_steps=3), test_limit=200)
    h_keep, _ = fl.simulate(digits, _cfg(rounds=2, local_steps=3, client_state="keep"),
                            test_limit=200)
    assert h_reset[0].loss == h_keep[0].loss and h_reset[1].loss != h_keep[1].loss
    assert cfg.client_state == "reset"
    with pytest.raises(fedpress.ConfigError, match="client_state"):
        _cfg(client_state="forever").check()


def test_first_download_sent_counts_the_initial_model(digits: data.Dataset) -> None:
    kw = {"send": "update", "plan": "fpz", "downlink_plan": "fpz", "downlink_send": "update",
          "rounds": 2}
    seeded, _ = fl.simulate(digits, _cfg(**kw), test_limit=100)
    sent, _ = fl.simulate(digits, _cfg(**kw, first_download="sent"), test_limit=100)
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    raw = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert sent[0].bytes_down == seeded[0].bytes_down + 3 * raw
    assert sent[1].bytes_down == seeded[1].bytes_down
    assert [m.accuracy for m in sent] == [m.accuracy for m in seeded]
    with pytest.raises(fedpress.ConfigError, match="first_download"):
        _cfg(first_download="maybe").check()


def test_first_download_coded_sends_the_initial_model_through_the_plan(
        digits: data.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    kw = {"send": "update", "plan": "fpz", "downlink_plan": "fpz", "downlink_send": "update",
          "rounds": 2}
    sent, _ = fl.simulate(digits, _cfg(**kw, first_download="sent"), test_limit=100)
    got: dict = {}
    keep_made(monkeypatch, fl, "make_pool", got, "pool")
    keep_made(monkeypatch, fl, "Downlink", got, "down")
    coded, _ = fl.simulate(digits, _cfg(**kw, first_download="coded"), test_limit=100)
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    raw = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    # the initial model went through fpz (REL 1e-2): far fewer bytes than raw
    assert coded[0].bytes_down < sent[0].bytes_down - 2 * raw
    assert coded[1].bytes_down < 2 * sent[1].bytes_down
    # each client holds what it decoded, which the server mirrors exactly; round 1's
    # copy was the initial model within the bound, not the model itself
    for cid, client in got["pool"].clients.items():
        mirror = got["down"].held[cid]
        assert all(client.end.held[k].tobytes() == mirror[k].tobytes() for k in mirror)
    assert got["down"].initial is None
    # without an update-mode downlink plan it is as "sent"
    weights = {"send": "update", "plan": "fpz", "rounds": 1}
    a, _ = fl.simulate(digits, _cfg(**weights, first_download="sent"), test_limit=100)
    b, _ = fl.simulate(digits, _cfg(**weights, first_download="coded"), test_limit=100)
    assert a[0].bytes_down == b[0].bytes_down
    assert not _cfg(**weights, first_download="coded").codes_first_download


def test_error_feedback_with_server_momentum_is_warned_about() -> None:
    from fedpress.sim.fl import FLConfig

    for plan in ("ef:topk", "efsignsgd", "stc"):
        with pytest.warns(UserWarning, match="server steps with momentum"):
            FLConfig(plan=plan, send="update", algorithm="fedavgm").check()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FLConfig(plan="ef:topk", send="update").check()  # plain FedAvg
        FLConfig(plan="topk", send="update", algorithm="fedavgm").check()  # no feedback
