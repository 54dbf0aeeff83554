"""HGC's exchange in the simulator: every end holds the same model, mask and predictor."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fedpress  # noqa: E402
from fedpress.exchange import hgc as hgc_exchange  # noqa: E402
from fedpress.exchange.hgc import schedule  # noqa: E402
from fedpress.sim import data, fl  # noqa: E402
from fedpress.sim.client import state_of  # noqa: E402

from .common import keep_made  # noqa: E402


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load_dataset("digits")


def _cfg(**kw: object) -> fl.FLConfig:
    base = {"model": "cnn", "clients": 3, "rounds": 3, "batch_size": 32, "lr": 0.05,
            "local_steps": 3, "send": "update", "plan": "hgc", "aggregate": "hgc",
            "plan_options": {"density": 0.05}}
    base.update(kw)
    return fl.FLConfig(**base)  # type: ignore[arg-type]


def _capture(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Keep the pool and the server's HGC end of the next simulate() call."""
    got: dict = {}
    keep_made(monkeypatch, fl, "make_pool", got, "pool")
    keep_made(monkeypatch, hgc_exchange, "HGCRounds", got, "server")
    return got


def test_clients_hold_the_servers_model_and_predictor(digits: data.Dataset,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, model3 = fl.simulate(digits, _cfg(rounds=3))
    got = _capture(monkeypatch)
    history, _ = fl.simulate(digits, _cfg(rounds=4))
    global3 = state_of(model3)
    clients = got["pool"].clients
    for c in (client.end for client in clients.values()):
        # round 4 began with round 3's aggregate: the client's copy is the global model
        assert all(c.held[k].tobytes() == global3[k].tobytes() for k in global3)
        # one mask for everyone, and the predictor mirrors the server's
        assert all(np.array_equal(c.mask[k], clients[0].end.mask[k]) for k in c.mask)
        # the server advanced its predictor with round 4's aggregate; the clients do when
        # the next round's downlink brings it
        c.hgc.receive_aggregate(got["server"].last, c.mask)
        for k in c.hgc.shapes:
            assert c.hgc.u[k].tobytes() == got["server"].server.u[k].tobytes()
            assert c.hgc.v[k].tobytes() == got["server"].server.v[k].tobytes()
    # the uplink is tiny next to raw updates; the downlink carries the aggregate at the mask
    raw = history[-1].raw_up
    assert history[-1].bytes_up < raw / 10 and history[-1].bytes_down < raw / 5


def test_warm_up_sends_raw_values_then_codes(digits: data.Dataset) -> None:
    warm, _ = fl.simulate(digits, _cfg(rounds=4, plan_options={"density": 0.01,
                                                               "warmup": 3}))
    cold, _ = fl.simulate(digits, _cfg(rounds=4, plan_options={"density": 0.01}))
    assert warm[0].bytes_up > 5 * cold[0].bytes_up  # density 0.25, raw floats
    assert warm[3].bytes_up < 2 * cold[3].bytes_up  # after the warm-up: the target


def test_schedule_boundaries() -> None:
    assert schedule(0, 0.001, 0) == (0.001, True)
    assert schedule(0, 0.001, 300) == (0.25, False)
    d, compressed = schedule(299, 0.001, 300)
    assert np.isclose(d, 0.001) and not compressed
    assert schedule(300, 0.001, 300) == (0.001, True)
    mid, _ = schedule(150, 0.001, 300)
    assert 0.001 < mid < 0.25
    assert schedule(0, 0.5, 10) == (0.5, False)  # above 0.25: the density, values raw
    assert schedule(0, 0.001, 1) == (0.001, False)  # one warm-up round: at the target
    assert schedule(1, 0.001, 1) == (0.001, True)


@pytest.mark.parametrize("kw,match", [
    ({"send": "weights"}, "send='update'"),
    ({"fraction": 0.5, "clients": 4}, "fraction=1"),
    ({"algorithm": "fedavgm"}, "algorithm='fedavg'"),
    ({"aggregate": "mean"}, "runs HGC.s exchange"),
    ({"plan_options": {"density": 0.05, "sparsity": 1}}, "unknown options"),
    ({"plan_options": {"levels": 4}}, "levels"),
    ({"plan_options": {"predict": "false"}}, "true or false"),
    ({"plan_options": {"warmup": -1}}, "warmup and correction"),
])
def test_bad_hgc_configs(digits: data.Dataset, kw: dict, match: str) -> None:
    with pytest.raises(fedpress.ConfigError, match=match):
        fl.simulate(digits, _cfg(**kw))


def test_run_settings_imply_hgcs_exchange(digits: data.Dataset, tmp_path: object) -> None:
    from fedpress.sim.run import run

    out = run({"dataset": "digits", "model": "mlp", "clients": 2, "rounds": 2,
               "local_steps": 2, "plan": "hgc(density=0.05, levels=5)"}, tmp_path,
              progress=False, dataset=digits)
    assert out["cr_up"] > 10


def test_compare_runs_hgc_next_to_other_plans(digits: data.Dataset, tmp_path: object) -> None:
    """compare passes resolved settings (defaults filled in): hgc still gets its own."""
    from fedpress.sim.run import compare

    rows = compare({"dataset": "digits", "model": "mlp", "clients": 2, "rounds": 1,
                    "local_steps": 2}, ["fpz", "hgc(density=0.05)"], tmp_path,
                   progress=False)
    assert len(rows) == 2 and all(r["cr_up"] > 1 for r in rows)


def test_learning_rate_and_momentum_schedules() -> None:
    cfg = fl.FLConfig(lr=0.1, lr_milestones=(3, 5), momentum=0.9,
                      momentum_steps=((1, 0.3), (4, 0.6)))
    assert [round(cfg.lr_at(r), 6) for r in (1, 2, 3, 4, 5, 6)] == \
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    assert [cfg.momentum_at(r) for r in (1, 3, 4, 9)] == [0.3, 0.3, 0.6, 0.6]
    assert fl.FLConfig(momentum=0.9).momentum_at(7) == 0.9
    for bad in ({"lr_milestones": (0,)}, {"lr_gamma": 0.0}, {"momentum_steps": ((1, 1.0),)}):
        with pytest.raises(fedpress.ConfigError):
            fl.FLConfig(**bad).check()  # type: ignore[arg-type]


def test_correction_window_around_milestones() -> None:
    from fedpress.exchange.hgc import correction

    # milestone at round 6 (0-based 5), window 2: rounds 3..6 (0-based) corrected
    got = [correction(r, 0.001, (6,), 2) for r in range(9)]
    assert [d for d, _ in got] == [0.001] * 3 + [0.01] * 4 + [0.001] * 2
    assert [c for _, c in got] == [False] * 7 + [True, False]
    assert correction(4, 0.001, (6,), 0) == (0.001, False)


def test_clear_drops_the_residuals() -> None:
    from fedpress.exchange.hgc import HGCClient

    c = HGCClient({"w": (100,)}, density=0.1)
    c.encode_update({"w": np.arange(100, dtype=np.float32)}, c.select_mask(
        {"w": np.arange(100, dtype=np.float32)}))
    assert np.abs(c.residual["w"]).sum() > 0
    c.configure(0.1, True, clear=True)
    assert not c.residual["w"].any()


def test_correction_raises_the_density_in_its_window(digits: data.Dataset) -> None:
    plain, _ = fl.simulate(digits, _cfg(rounds=5, plan_options={"density": 0.001}))
    corr, _ = fl.simulate(digits, _cfg(rounds=5, lr_milestones=(3,),
                                       plan_options={"density": 0.001, "correction": 1}))
    # rounds 2 and 3 (1-based) lie in the window [3 - 1 - 1, 3 - 1 + 1) of round 3
    assert corr[0].bytes_up == plain[0].bytes_up
    assert corr[1].bytes_up > 1.3 * plain[1].bytes_up and corr[2].bytes_up > 1.3 * plain[2].bytes_up
    assert corr[4].bytes_up < 1.1 * plain[4].bytes_up


def test_schedule_settings_parse() -> None:
    from fedpress.sim.run import _int_list, _steps

    assert _int_list("15, 22", "x") == (15, 22) and _int_list([3], "x") == (3,)
    assert _steps("1:0.3,10:0.6") == ((1, 0.3), (10, 0.6))
    assert _steps([[1, 0.3]]) == ((1, 0.3),)
    with pytest.raises(fedpress.ConfigError):
        _steps("1-0.3")
    with pytest.raises(fedpress.ConfigError):
        _int_list("a,b", "lr_milestones")


def test_one_client_and_the_first_downlink(digits: data.Dataset) -> None:
    """Round 1's downlink counts the initial model (every plan's clients need it)."""
    h, _ = fl.simulate(digits, _cfg(clients=1, rounds=2))
    assert h[0].bytes_down == h[0].raw_down and h[1].bytes_down < h[0].bytes_down
    assert h[0].cr_down == 1.0


def test_list_settings_in_plan_specs() -> None:
    from fedpress.sim.run import _int_list, _steps

    assert _int_list(15, "x") == (15,) and _int_list("15;22", "x") == (15, 22)
    assert _steps("1:0.3;10:0.6") == ((1, 0.3), (10, 0.6))
    with pytest.raises(fedpress.ConfigError):
        _steps(3)


def _tiny_bn(name: str, input_shape: tuple[int, ...], classes: int,
             seed: int | None = None) -> torch.nn.Module:
    """A small model with BatchNorm statistics (float buffers and an integer count)."""
    if seed is not None:
        torch.manual_seed(seed)
    c = input_shape[0]
    return torch.nn.Sequential(torch.nn.Conv2d(c, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(64 * 4, classes))


@pytest.mark.parametrize("buffers", ["fpz", "raw"])
def test_batchnorm_buffers_coded_and_every_end_in_step(
        digits: data.Dataset, monkeypatch: pytest.MonkeyPatch, buffers: str) -> None:
    from fedpress.sim import client as sim_client

    monkeypatch.setattr(fl, "build_model", _tiny_bn)
    monkeypatch.setattr(sim_client, "build_model", _tiny_bn)
    options = {"density": 0.05, "buffers": buffers}
    _, model3 = fl.simulate(digits, _cfg(rounds=3, plan_options=options))
    got = _capture(monkeypatch)
    fl.simulate(digits, _cfg(rounds=4, plan_options=options))
    global3 = state_of(model3)
    assert "1.running_var" in global3 and "1.num_batches_tracked" in global3
    for c in (client.end for client in got["pool"].clients.values()):
        # the BatchNorm statistics too: every end holds the server's model bit for bit
        assert all(c.held[k].tobytes() == global3[k].tobytes() for k in global3)
    server = got["server"]
    coded = buffers != "raw"
    assert server.buffer_names == (["1.running_mean", "1.running_var"] if coded else [])
    assert ("1.running_mean" in server.exchanged) is coded
    assert (server.last_buffers is not None) is coded


def test_coded_batchnorm_buffers_shrink_both_ways(digits: data.Dataset,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fedpress.sim import client as sim_client

    monkeypatch.setattr(fl, "build_model", _tiny_bn)
    monkeypatch.setattr(sim_client, "build_model", _tiny_bn)
    runs = {b: fl.simulate(digits, _cfg(rounds=3, plan_options={"density": 0.05,
                                                                "buffers": b}))[0]
            for b in ("raw", "fpz")}
    raw, coded = runs["raw"][-1], runs["fpz"][-1]
    assert coded.bytes_up < raw.bytes_up and coded.bytes_down < raw.bytes_down
