"""PowerSGD: exact on rank-r matrices, warm start, error feedback, dense fallback,
bad payloads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress.grad.powersgd import PowerSGD, matrix_shape

RNG = np.random.default_rng(3)


def _rank(r: int, n: int = 64, m: int = 90) -> np.ndarray:
    return (RNG.standard_normal((n, r)) @ RNG.standard_normal((r, m))).astype(np.float32)


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_exact_on_rank_r_matrices(rank: int) -> None:
    x = _rank(rank).reshape(64, 9, 10)
    blob = fedpress.encode_update({"conv.weight": x}, plan="powersgd", rank=rank)
    y = fedpress.decode_update(blob)["conv.weight"]
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.abs(y - x).max() < 1e-4 * np.abs(x).max()
    assert len(blob) < x.nbytes * (64 + 90) * rank / (64 * 90) + 400


def test_warm_start_and_error_feedback_converge_on_a_fixed_matrix() -> None:
    x = RNG.standard_normal((20, 16)).astype(np.float32)
    enc = fedpress.UpdateEncoder("powersgd", rank=2, threshold=0)
    dec = fedpress.UpdateDecoder()
    total = np.zeros_like(x, dtype=np.float64)
    prev_err = np.zeros_like(x)
    rounds = 300
    for _ in range(rounds):
        sent = dec.decode(enc.encode({"fc.weight": x}))["fc.weight"]
        err = enc.store.get("default", "fc.weight")["error"]
        assert np.allclose(sent + err, x + prev_err, atol=1e-4)  # EF invariant
        prev_err = err
        total += sent
    # with error feedback the residual stays bounded, so the mean of what was sent
    # approaches x; without it every round sends the same rank-2 approximation
    rel = np.linalg.norm(total / rounds - x) / np.linalg.norm(x)
    no_ef = fedpress.UpdateEncoder("powersgd", rank=2, error_feedback=False, threshold=0)
    once = fedpress.decode_update(no_ef.encode({"fc.weight": x}))["fc.weight"]
    rel_no_ef = np.linalg.norm(once - x) / np.linalg.norm(x)
    assert rel < 0.1 < 0.5 < rel_no_ef


def test_vectors_and_small_matrices_go_dense() -> None:
    c = PowerSGD(rank=4)
    assert not c.low_rank((100,)) and not c.low_rank((6, 6)) and c.low_rank((64, 64))
    x = RNG.standard_normal((6, 6)).astype(np.float64)
    blob = fedpress.encode_update({"s.weight": x},
                                  plan={"default": {"id": "powersgd", "rank": 4}})
    assert np.array_equal(fedpress.decode_update(blob)["s.weight"], x)
    assert matrix_shape((8, 3, 3, 3)) == (8, 27) and matrix_shape(()) == (1, 1)


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, min_side=1,
                                               max_side=30),
                  elements=st.floats(-100, 100, width=32)),
       st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_round_trip_shapes_and_finite_output(x: np.ndarray, rank: int) -> None:
    blob = fedpress.encode_update({"w": x}, plan={"default": {"id": "powersgd",
                                                               "rank": rank}})
    y = fedpress.decode_update(blob)["w"]
    assert y.shape == x.shape and y.dtype == x.dtype and np.isfinite(y).all()


def test_bad_options_input_and_payloads() -> None:
    for opts in ({"rank": 0}, {"rank": 2.5}, {"error_feedback": 1}, {"seed": -3}):
        with pytest.raises(fedpress.ConfigError):
            fedpress.get_codec("powersgd", **opts)
    x = _rank(2)
    x[0, 0] = np.inf
    with pytest.raises(fedpress.ConfigError, match="NaN or Inf"):
        fedpress.encode_update({"w": x}, plan={"default": {"id": "powersgd"}})
    blob = bytearray(fedpress.encode_update({"w": _rank(2)},
                                            plan={"default": {"id": "powersgd"}}))
    for cut in range(0, len(blob), 97):
        with pytest.raises(fedpress.FormatError):
            fedpress.decode_update(bytes(blob[:cut]))
    # finite factors whose product overflows float32: refused, not decoded to Inf
    from fedpress.abc import TensorSpec

    m = _rank(2)
    huge = bytes([1, 2]) + np.full((64 + 90) * 2, 1e30, np.float32).tobytes()
    with pytest.raises(fedpress.FormatError, match="non-finite"):
        fedpress.get_codec("powersgd").decode(huge, TensorSpec.of(m))
    rng = np.random.default_rng(0)
    for _ in range(200):
        bad = bytearray(blob)
        bad[rng.integers(len(bad))] ^= 1 << int(rng.integers(8))
        try:
            fedpress.decode_update(bytes(bad))
        except fedpress.FormatError:
            pass


def test_two_phase_exchange_averages_projected_matrices() -> None:
    from fedpress.exchange.powersgd import PowerSGDClient, PowerSGDServer, low_rank_names

    shapes = {"a.weight": (40, 3, 5, 5), "b.weight": (30, 50), "b.bias": (30,)}
    names = low_rank_names({k: np.zeros(s, np.float32) for k, s in shapes.items()}, 2, 100)
    assert names == ["a.weight", "b.weight"]
    server = PowerSGDServer(shapes, names, rank=2, seed=1)
    clients = [PowerSGDClient(rank=2) for _ in range(3)]
    grads = [{k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
             for _ in clients]
    weights = [1.0, 2.0, 1.0]
    first = [c.first(g, names, server.q) for c, g in zip(clients, grads)]
    assert all(set(ps) == set(names) and set(rest) == {"b.bias"} for ps, rest in first)
    p_hat = server.orthogonal_p([ps for ps, _ in first], weights)
    qs = [c.second(p_hat) for c in clients]
    agg = server.aggregate(p_hat, qs, weights)
    w = np.array(weights) / sum(weights)
    for k in names:
        n = shapes[k][0]
        mean = sum(wi * g[k].reshape(n, -1).astype(np.float64) for wi, g in zip(w, grads))
        proj = p_hat[k].astype(np.float64) @ p_hat[k].T.astype(np.float64) @ mean
        assert np.allclose(agg[k].reshape(n, -1), proj, atol=1e-4)
        assert agg[k].shape == shapes[k]
        # each client's error is what the shared subspace missed of its own matrix
        for c, g in zip(clients, grads):
            m = g[k].reshape(n, -1)
            assert np.allclose(c.errors[k], m - p_hat[k] @ (m.T @ p_hat[k]).T, atol=1e-4)
    assert np.allclose(server.q["b.weight"], sum(wi * q["b.weight"] for wi, q in zip(w, qs)),
                       atol=1e-5)  # the next round's warm start


def test_simulator_runs_the_two_phase_exchange() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from fedpress.sim import data, fl

    torch.set_num_threads(1)
    ds = data.load_dataset("digits")
    cfg = fl.FLConfig(model="cnn", clients=3, rounds=3, send="gradient", batch_size=32,
                      algorithm="fedavgm", lr=0.05, plan="powersgd",
                      plan_options={"rank": 2}, aggregate="powersgd")
    hist, _ = fl.simulate(ds, cfg, threads=1)
    raw, _ = fl.simulate(ds, fl.FLConfig(model="cnn", clients=3, rounds=3, send="gradient",
                                         batch_size=32, algorithm="fedavgm", lr=0.05),
                         threads=1)
    assert hist[-1].cr_up > 10 and hist[-1].bytes_down > raw[-1].bytes_down  # P^ and Q down
    assert hist[-1].comm_s < raw[-1].comm_s
    with pytest.raises(fedpress.ConfigError, match="two-phase"):
        fl.simulate(ds, fl.FLConfig(model="mlp", aggregate="powersgd", plan="topk",
                                    send="gradient"))
