"""The ``hgc`` codec: one sender's HGC coding through UpdateEncoder/UpdateDecoder."""

from __future__ import annotations

import numpy as np
import pytest

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
