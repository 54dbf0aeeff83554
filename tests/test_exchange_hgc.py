"""HGC's exchange: shared mask, XOR-predicted codes, error feedback, mirrored predictor."""

from __future__ import annotations

import numpy as np
import pytest

import fedpress
from fedpress.exchange.hgc import HGCClient, HGCServer
from fedpress.stages import radix

SHAPES = {"conv.weight": (16, 8, 3, 3), "fc.weight": (40, 50), "fc.bias": (40,)}
# the mask's density: the module's default (0.001) unless a test says otherwise
K_DEFAULT = 1e-3


def _updates(rng: np.random.Generator, scale: dict | None = None) -> dict:
    """Noise, or a persistent signed scale times (1 + noise): signs and ranks persist."""
    if scale is None:
        return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    return {k: (scale[k] * (1 + 0.1 * rng.standard_normal(s))).astype(np.float32)
            for k, s in SHAPES.items()}


def _run(rounds: int, clients: int = 3, **kw: object):
    """Yield each round's (mask, messages, per-client sent tensors, aggregate)."""
    rng = np.random.default_rng(0)
    persistent = {k: (rng.uniform(1.0, 1.5, s) * rng.choice([-1, 1], s)).astype(np.float32)
                  for k, s in SHAPES.items()}
    ends = [HGCClient(SHAPES, **kw) for _ in range(clients)]  # type: ignore[arg-type]
    server = HGCServer(SHAPES, **kw)  # type: ignore[arg-type]
    for rnd in range(rounds):
        ups = [_updates(rng, persistent) for _ in range(clients)]
        master = rnd % clients
        mask = ends[master].select_mask(ups[master])
        mask_msg = ends[master].encode_mask(mask)
        blobs, before = [], []
        for i, c in enumerate(ends):
            got = mask if i == master else c.decode_mask(mask_msg)
            before.append({k: c.residual[k].copy() for k in SHAPES})
            blobs.append(c.encode_update(ups[i], got))
        decoded = [server.decode_values(b, mask) for b in blobs]
        agg_msg, agg = server.aggregate(decoded, mask=mask)
        for c in ends:
            got = c.receive_aggregate(agg_msg, mask)
            assert all(np.array_equal(got[k], agg[k]) for k in SHAPES)
        yield ends, server, mask, mask_msg, blobs, ups, before, decoded


def test_mask_is_shared_and_messages_round_trip() -> None:
    for ends, _, mask, mask_msg, _, _, _, decoded in _run(4):
        for c in ends:
            assert all(np.array_equal(c.decode_mask(mask_msg)[k], mask[k]) for k in SHAPES)
        for k, s in SHAPES.items():
            n = int(np.prod(s))
            assert mask[k].size == max(1, int(np.ceil(n * K_DEFAULT)))
            for d in decoded:  # nothing off the mask
                off = np.ones(n, bool)
                off[mask[k]] = False
                assert not d[k].reshape(-1)[off].any()


@pytest.mark.parametrize("kw", [{}, {"predict": False}, {"quantize": False, "predict": False},
                                {"levels": 5, "density": 0.05}])
def test_error_feedback_keeps_what_was_not_sent(kw: dict) -> None:
    """residual_new + decoded == update + residual_old, on and off the mask."""
    for ends, _, _, _, _, ups, before, decoded in _run(4, **kw):
        for c, u, b, d in zip(ends, ups, before, decoded, strict=True):
            for k in SHAPES:
                lhs = c.residual[k] + d[k].reshape(-1)
                rhs = u[k].reshape(-1) + b[k]
                np.testing.assert_allclose(lhs, rhs, rtol=1e-6, atol=1e-5)


def test_predictor_state_is_equal_on_every_end() -> None:
    for ends, server, *_ in _run(5, density=0.05):
        for c in ends:
            for k in SHAPES:
                assert c.u[k].tobytes() == server.u[k].tobytes()
                assert c.v[k].tobytes() == server.v[k].tobytes()


def test_prediction_shrinks_the_values_messages_when_positions_repeat() -> None:
    """On a fixed mask with persistent signs the predicted codes match (XOR 0), and the
    values messages shrink. (With error feedback choosing the mask, positions that were
    just sent leave the top-k and the prediction has no history there: the benchmark
    on real gradients will tell how often positions repeat.)"""
    rng = np.random.default_rng(5)
    shapes = {"w": (4000,)}
    sign = rng.choice([-1.0, 1.0], 4000).astype(np.float32)
    mask = {"w": np.sort(rng.choice(4000, 400, replace=False)).astype(np.int64)}
    sizes = {}
    for predict in (False, True):
        client, server = HGCClient(shapes, predict=predict), HGCServer(shapes, predict=predict)
        total = 0
        for rnd in range(6):
            up = {"w": sign * rng.uniform(1.0, 1.5, 4000).astype(np.float32)}
            blob = client.encode_update(up, mask)
            total += len(blob) if rnd >= 2 else 0
            agg_msg, _ = server.aggregate([server.decode_values(blob, mask)], mask=mask)
            client.receive_aggregate(agg_msg, mask)
        sizes[predict] = total
    assert sizes[True] < 0.7 * sizes[False]


def test_prediction_is_used_only_where_it_codes_smaller() -> None:
    """Prediction changes the bytes, never the values: the same run with and without it
    decodes the same tensors, and each values message with prediction is no larger."""
    runs = [list(_run(6, density=0.05, predict=p)) for p in (False, True)]
    for plain, predicted in zip(*runs, strict=True):
        for a, b in zip(plain[4], predicted[4], strict=True):
            assert len(b) <= len(a)
        for da, db in zip(plain[7], predicted[7], strict=True):
            assert all(np.array_equal(da[k], db[k]) for k in SHAPES)


def test_short_messages_cost_little_beyond_their_codes() -> None:
    """At HGC's density a tensor keeps a handful of values: all codes share one stream
    (radix-packed when that is smaller), so no tensor pays for its own coder tables;
    the aggregate of a few ternary senders is a table of distinct values plus indices."""
    shapes = {f"t{i}": (2000 + 97 * i,) for i in range(6)}
    rng = np.random.default_rng(1)
    ends = [HGCClient(shapes, density=0.05, predict=False) for _ in range(3)]
    server = HGCServer(shapes, density=0.05, predict=False)
    ups = [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
           for _ in ends]
    mask = ends[0].select_mask(ups[0])
    k = sum(m.size for m in mask.values())
    blobs = [c.encode_update(u, mask) for c, u in zip(ends, ups, strict=True)]
    header, means = 10, 8 * len(shapes)
    for b in blobs:  # mode, flag, method, length: 5 bytes at most
        assert len(b) <= header + means + 5 + radix.packed_size(k, 3)
    agg_msg, agg = server.aggregate([server.decode_values(b, mask) for b in blobs], mask=mask)
    assert len(agg_msg) < header + 4 * k / 2  # ~8 distinct values per tensor
    got = ends[1].decode_aggregate(agg_msg, mask)
    assert all(np.array_equal(got[n], agg[n]) for n in shapes)


def test_bad_messages_are_format_errors() -> None:
    ends, server, mask, mask_msg, blobs, *_ = list(_run(2, density=0.05))[-1]
    other = HGCServer({"fc.weight": (40, 50)}, density=0.05)
    with pytest.raises(fedpress.FormatError, match="other tensors"):
        other.decode_values(blobs[0], mask)
    agg_msg = server.aggregate(decoded_of(server, blobs, mask), mask=mask)[0]
    rng = np.random.default_rng(3)
    for blob in (blobs[0], mask_msg, agg_msg):
        for _ in range(300):
            b = bytearray(blob)
            pos = int(rng.integers(0, len(b)))
            b[pos] ^= 1 << int(rng.integers(0, 8))
            if rng.random() < 0.3:
                b = b[: int(rng.integers(0, len(b)))]
            try:
                if blob is mask_msg:
                    ends[0].decode_mask(bytes(b))
                elif blob is agg_msg:
                    ends[0].decode_aggregate(bytes(b), mask)
                else:
                    server.decode_values(bytes(b), mask)
            except fedpress.FormatError:
                pass


def decoded_of(server: HGCServer, blobs: list[bytes], mask: dict) -> list[dict]:
    return [server.decode_values(b, mask) for b in blobs]


def test_bad_configs() -> None:
    with pytest.raises(fedpress.ConfigError, match="levels"):
        HGCClient(SHAPES, levels=4)
    with pytest.raises(fedpress.ConfigError, match="quantize"):
        HGCClient(SHAPES, quantize=False, predict=True)
    c = HGCClient(SHAPES)
    bad = _updates(np.random.default_rng(0))
    bad["fc.bias"] = np.full(40, np.nan, np.float32)
    with pytest.raises(fedpress.ConfigError, match="NaN"):
        c.select_mask(bad)
