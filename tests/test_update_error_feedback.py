"""UpdateEncoder(residual_feedback=True): what the bound dropped is carried to the next round."""

from __future__ import annotations

import numpy as np
import pytest

import fedpress
from fedpress.update import RESIDUAL_PEER_SUFFIX

PLAN = {"re:weight": "fpz", "default": "zstd"}


def _stream(rounds: int, drift: float = 2e-3, seed: int = 0):
    """A reference and weights that drift a little (well under the bound) each round."""
    rng = np.random.default_rng(seed)
    ref = {"w.weight": rng.normal(size=(32, 32)).astype(np.float32),
           "w.bias": rng.normal(size=32).astype(np.float32)}
    ups = [rng.normal(scale=1e-3, size=(32, 32)).astype(np.float32) + np.float32(drift)
           for _ in range(rounds)]
    return ref, ups


@pytest.mark.parametrize("plan", [PLAN, {"re:weight": "gaeb", "default": "zstd"}])
def test_small_changes_are_delayed_not_lost(plan: dict) -> None:
    ref, ups = _stream(60, drift=5e-3)
    w = ref["w.weight"]
    eb_abs = 1e-2 * float(w.max() - w.min() + 0.3)  # about 0.07: above any round's change
    got = {}
    for ef in (False, True):
        enc = fedpress.UpdateEncoder(plan, eb=1e-2, residual_feedback=ef)
        dec = fedpress.UpdateDecoder()
        total = np.zeros((32, 32))
        for u in ups:
            x = {"w.weight": ref["w.weight"] + u, "w.bias": ref["w.bias"]}
            out = dec.decode(enc.encode(x, reference=ref), reference=ref)
            total += out["w.weight"].astype(np.float64) - ref["w.weight"]
        got[ef] = total.mean()
    sent = float(sum(u.mean() for u in ups))  # 0.3 in all; each round's change is under eb
    assert abs(got[False]) < 0.05 * sent  # rounded to nothing, round after round
    # with error feedback, all but the last residual (under the bound) got through
    assert sent - eb_abs <= got[True] <= sent + 1e-3


def test_bound_holds_on_what_was_sent_and_residual_is_the_rest() -> None:
    ref, ups = _stream(5, drift=5e-3)
    enc = fedpress.UpdateEncoder(PLAN, eb=1e-2, residual_feedback=True, peer="c")
    dec = fedpress.UpdateDecoder()
    carried = np.zeros((32, 32), np.float32)
    for u in ups:
        x = ref["w.weight"] + u
        sent = (x.astype(np.float64) + carried).astype(np.float32)
        out = dec.decode(enc.encode({"w.weight": x, "w.bias": ref["w.bias"]}, reference=ref),
                         reference=ref)["w.weight"]
        eb_abs = 1e-2 * float(sent.max() - sent.min())
        assert np.abs(out.astype(np.float64) - sent).max() <= eb_abs
        carried = enc.store.get("c" + RESIDUAL_PEER_SUFFIX, "w.weight")["residual"]
        assert np.array_equal(carried, (sent.astype(np.float64) - out).astype(np.float32))
    # lossless tensors keep no residual
    assert not enc.store.get("c" + RESIDUAL_PEER_SUFFIX, "w.bias")


def test_residuals_survive_a_restart(tmp_path) -> None:
    ref, ups = _stream(4)
    frames = {}
    for restart in (False, True):
        store = fedpress.DirStateStore(tmp_path / str(restart))
        enc = fedpress.UpdateEncoder(PLAN, eb=1e-2, residual_feedback=True, store=store)
        out = []
        for i, u in enumerate(ups):
            if restart and i == 2:
                enc = fedpress.UpdateEncoder(PLAN, eb=1e-2, residual_feedback=True,
                                             store=fedpress.DirStateStore(tmp_path / "True"))
            out.append(enc.encode({"w.weight": ref["w.weight"] + u, "w.bias": ref["w.bias"]},
                                  reference=ref))
        frames[restart] = out
    assert frames[False] == frames[True]


def test_bad_residual_feedback_option() -> None:
    with pytest.raises(fedpress.ConfigError, match="residual_feedback"):
        fedpress.UpdateEncoder(PLAN, residual_feedback="yes")  # type: ignore[arg-type]


def test_powersgd_keeps_its_own_error_feedback_option() -> None:
    """The codec option of the same idea still reaches the codec (no capture)."""
    enc = fedpress.UpdateEncoder("powersgd", error_feedback=False)
    assert enc.plan.rules[0].codec.error_feedback is False


def test_a_lossy_codec_without_references_refuses_one() -> None:
    x = {"w.weight": np.ones((40, 40), np.float32)}
    with pytest.raises(fedpress.ConfigError, match="takes no reference"):
        fedpress.UpdateEncoder("ef:fpz").encode(x, reference=x)
    # lossless tensors simply go without
    fedpress.UpdateEncoder({"default": "zstd"}).encode(x, reference=x)
