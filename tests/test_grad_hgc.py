"""The ``hgc`` codec: one sender's HGC coding through UpdateEncoder/UpdateDecoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress.frame import unpack
from fedpress.update import RESIDUAL_PEER_SUFFIX

from .common import check_edited_update_frame

PLAN = {"re:weight": {"id": "hgc", "density": 0.02}, "default": "zstd"}


def _stream(rounds: int, seed: int = 0):
    """Persistent signs and scales (the top-k positions repeat), a little noise."""
    rng = np.random.default_rng(seed)
    scale = (rng.choice([-1.0, 1.0], (60, 50)) * rng.lognormal(0, 1, (60, 50))).astype(np.float32)
    for _ in range(rounds):
        yield {"fc.weight": scale * rng.uniform(0.9, 1.1, (60, 50)).astype(np.float32),
               "fc.bias": rng.standard_normal(60).astype(np.float32)}


@pytest.mark.parametrize("options", [{}, {"predict": False}, {"levels": 5},
                                     {"quantize": False, "predict": False}])
def test_round_trips_keep_the_mirrored_predictor_equal(options: dict) -> None:
    plan = {"re:weight": {"id": "hgc", "density": 0.02, **options}, "default": "zstd"}
    enc = fedpress.UpdateEncoder(plan, residual_feedback=True)
    dec = fedpress.UpdateDecoder()
    for x in _stream(5):
        out = dec.decode(enc.encode(x))
        w = out["fc.weight"]
        assert np.count_nonzero(w) == int(np.ceil(0.02 * w.size))  # exactly k kept
        assert np.array_equal(out["fc.bias"], x["fc.bias"])
        a, b = enc.store.get("default", "fc.weight"), dec.store.get("default", "fc.weight")
        assert a.digest() == b.digest() and a.round == b.round


def test_residual_feedback_keeps_what_the_mask_and_quantizer_dropped() -> None:
    enc = fedpress.UpdateEncoder(PLAN, residual_feedback=True, peer="c")
    dec = fedpress.UpdateDecoder()
    carried = np.zeros((60, 50), np.float32)
    for x in _stream(4):
        sent = x["fc.weight"] + carried
        out = dec.decode(enc.encode(x), peer="c")["fc.weight"]
        carried = enc.store.get("c" + RESIDUAL_PEER_SUFFIX, "fc.weight")["residual"]
        np.testing.assert_allclose(carried + out, sent, rtol=1e-6, atol=1e-6)


def test_prediction_shrinks_frames_when_signs_persist() -> None:
    """The weight's payload (positions, means, codes): the codes shrink; the positions
    (a bitmap at this density) cost the same."""
    sizes = {}
    for predict in (False, True):
        plan = {"re:weight": {"id": "hgc", "density": 0.2, "predict": predict}}
        enc = fedpress.UpdateEncoder(plan)  # no feedback: the same positions every round
        sizes[predict] = sum(len(unpack(enc.encode(x)).records[0].payload)
                             for i, x in enumerate(_stream(6)) if i >= 2)
    assert sizes[True] < 0.93 * sizes[False]  # measured 0.90: the codes are a quarter of it


def test_desync_and_bad_frames() -> None:
    enc = fedpress.UpdateEncoder(PLAN)
    frames = [enc.encode(x) for x in _stream(3)]
    with pytest.raises(fedpress.StateDesyncError):
        fedpress.UpdateDecoder().decode(frames[1])  # skipped round 1
    rng = np.random.default_rng(2)
    for _ in range(80):
        pos = int(rng.integers(0, len(frames[0])))
        check_edited_update_frame(frames[0], pos, 1 << int(rng.integers(0, 8)))


def test_bad_configs() -> None:
    for kw, match in (({"density": 0}, "ratio"), ({"levels": 2}, "levels"),
                      ({"predict": 1}, "true or false"),
                      ({"quantize": False}, "needs quantize")):
        with pytest.raises(fedpress.ConfigError, match=match):
            fedpress.get_codec("hgc", **kw)
    with pytest.raises(fedpress.ConfigError):
        fedpress.UpdateEncoder(PLAN).encode({"fc.weight": np.full((4, 4), np.nan, np.float32)})


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                  elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)),
       st.sampled_from([0.01, 0.1, 1.0]), st.sampled_from([3, 5]), st.booleans())
def test_round_trip_property(x: np.ndarray, density: float, levels: int, predict: bool) -> None:
    """Any finite float32 tensor, three rounds: exactly k values kept, at top-k
    magnitudes, each the mean of its equal-count group; mirrored states equal."""
    codec = {"id": "hgc", "density": density, "levels": levels, "predict": predict}
    enc, dec = fedpress.UpdateEncoder({"re:.*": codec}), fedpress.UpdateDecoder()
    for t in range(3):
        xt = x * np.float32(1 + t)
        out = dec.decode(enc.encode({"w": xt}))["w"]
        assert out.shape == x.shape and out.dtype == np.float32
        k = max(1, int(np.ceil(density * x.size))) if x.size else 0
        kept = np.flatnonzero(out.reshape(-1))
        assert kept.size <= k  # a kept value can be 0 (an all-zero group)
        if kept.size:  # kept values come from the k largest magnitudes
            a = np.abs(xt.reshape(-1))
            assert a[kept].min() >= np.sort(a)[-k]
        a_st, b_st = enc.store.get("default", "w"), dec.store.get("default", "w")
        assert a_st.digest() == b_st.digest()
