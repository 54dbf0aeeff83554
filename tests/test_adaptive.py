"""Adaptive plans: the candidate with the least expected time, the bound promise, and
``auto`` in the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fedpress
from fedpress.adaptive import (
    AdaptiveEncoder,
    Calibration,
    auto_limits,
    auto_options,
    candidates_for,
)
from fedpress.errors import ConfigError

RNG = np.random.default_rng(5)
MODEL = {"conv.weight": (0.01 * RNG.standard_normal((32, 16, 3, 3))).astype(np.float32),
         "fc.weight": (0.01 * RNG.standard_normal((128, 512))).astype(np.float32),
         "fc.bias": np.zeros(128, np.float32), "bn.num_batches_tracked": np.array(7)}
#: fixed throughputs (bytes/s): raw is free to run, the lossy coder slow
RATES = {"raw": (1e10, 1e10), "zstd": (2e8, 5e8), "fpz(eb=0.001)": (1e8, 2e8),
         "fpz(eb=0.01)": (1e8, 2e8), "gzip": (3e9, 3e9)}


def _calibration() -> Calibration:
    """Throughputs fixed per candidate (no measurement, no file)."""
    cal = Calibration(persist=False)
    cal.rate = lambda cand: RATES[cand.spec]  # type: ignore[method-assign]
    return cal


def test_default_candidates_keep_the_bound_promise() -> None:
    cands = candidates_for(None, 1e-2)
    assert [c.spec for c in cands] == ["raw", "zstd", "fpz(eb=0.001)", "fpz(eb=0.01)"]
    assert max(c.bound for c in cands) == 1e-2 and cands[0].bound == 0.0
    with pytest.raises(ConfigError, match="looser than max_eb"):
        candidates_for(["fpz(eb=0.05)"], 1e-2)
    with pytest.raises(ConfigError, match="stateful codec 'gaeb'"):
        candidates_for("zstd|gaeb", 1e-2)
    with pytest.raises(ConfigError, match="no error bound"):
        candidates_for("topk(ratio=0.1)", 1e-2)
    assert candidates_for("topk(ratio=0.1)", 1e-2, unbounded=True)[0].spec == "topk(ratio=0.1)"
    with pytest.raises(ConfigError, match="not a plan"):
        candidates_for("none", 1e-2)
    with pytest.raises(ConfigError, match="max_eb"):
        candidates_for(None, 0.0)


def test_the_link_decides_and_every_choice_decodes_within_the_bound() -> None:
    enc = AdaptiveEncoder(1e-2, calibration=_calibration())
    dec = fedpress.UpdateDecoder(limits=enc.limits())
    chosen = {}
    for mbps in (0.5, 10.0, 1e5):
        blob = enc.encode(MODEL, uplink_mbps=mbps)
        assert enc.last is not None
        chosen[mbps] = enc.last.spec
        assert enc.last.expected_s[enc.last.spec] == min(enc.last.expected_s.values())
        out = dec.decode(blob)
        for k, x in MODEL.items():
            if x.dtype.kind == "f" and x.size > 1000:
                bound = 1e-2 * float(x.max() - x.min())
                assert np.abs(out[k].astype(np.float64) - x).max() <= bound
            else:
                assert np.array_equal(out[k], x)
    assert chosen[0.5] == "fpz(eb=0.01)"  # slow link: the fewest bytes
    assert chosen[1e5] == "raw"  # fast link: coding costs more than it saves


def test_without_a_given_link_it_uses_the_transfers_it_saw() -> None:
    enc = AdaptiveEncoder(1e-2, calibration=_calibration(), default_mbps=0.5)
    enc.encode(MODEL)
    assert enc.last is not None and enc.last.spec == "fpz(eb=0.01)" and enc.last.mbps == 0.5
    enc.observe_transfer(10**9, 0.01)  # 800,000 Mbps seen
    enc.encode(MODEL)
    assert enc.last.spec == "raw" and enc.last.mbps == pytest.approx(8e5)


def test_ratios_are_remeasured_on_a_sample() -> None:
    enc = AdaptiveEncoder(1e-2, calibration=_calibration(), reprobe=2)
    enc.encode(MODEL, uplink_mbps=1.0)
    first = dict(enc.ratio)
    assert set(first) == set(RATES) - {"gzip"} and first["fpz(eb=0.01)"] > first["zstd"] > 1.0
    assert first["raw"] < 1.0  # a raw frame carries its header
    enc.encode(MODEL, uplink_mbps=1.0)
    assert enc.age["zstd"] == 2 and enc.age["fpz(eb=0.01)"] == 0


def test_calibration_is_measured_once_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "cal.json"
    cand = candidates_for("zstd", 1e-2)[0]
    enc, dec = Calibration(path).rate(cand)
    assert enc > 0 and dec > 0 and path.exists()
    assert Calibration(path).rates  # read back
    path.write_text("not json")
    assert Calibration(path).rates == {}  # an unreadable cache is measured again


def test_options_from_a_plan_spec() -> None:
    name, options = fedpress.Plan.parse("auto(max_eb=0.02, candidates='raw|fpz(eb=0.02)')")
    assert name == "auto"
    o = auto_options(options)
    assert o == {"max_eb": 0.02, "candidates": ["raw", "fpz(eb=0.02)"]}
    assert auto_options({"eb": 0.05})["max_eb"] == 0.05
    with pytest.raises(ConfigError, match="unknown options"):
        auto_options({"levels": 3})
    with pytest.raises(ConfigError, match="link must be"):
        AdaptiveEncoder(1e-2, link="guessed")
    limits = auto_limits(candidates_for(None, 1e-2))
    assert {"raw", "zstd", "fpz"} <= set(limits.codecs or ())


def test_auto_in_the_simulator_follows_each_clients_link(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from fedpress.sim import data, fl
    from fedpress.sim.network import Network

    ds = data.load_dataset("digits")
    net = Network.build(2, [0.05, 1e6], 1e3, 0.0, seed=0)
    cfg = fl.FLConfig(model="mlp", clients=2, rounds=2, local_steps=2, plan="auto",
                      plan_options={"max_eb": 1e-2, "link": "configured"})
    history, _ = fl.simulate(ds, cfg, net, test_limit=50)
    raw = history[0].raw_up // 2
    # the slow client codes (a few times smaller), the fast one sends raw (one header more)
    assert raw < history[0].bytes_up < raw + raw / 2
    with pytest.raises(ConfigError, match="downlink takes a fixed plan"):
        fl.simulate(ds, fl.FLConfig(model="mlp", clients=2, rounds=1, downlink_plan="auto"),
                    net)
    drifting = Network.build(2, 10.0, 10.0, 0.0, seed=3, drift=0.5)
    assert drifting.at(1).up_mbps.tolist() != drifting.at(2).up_mbps.tolist()
    assert drifting.at(2).up_mbps.tolist() == drifting.at(2).up_mbps.tolist()
    assert Network.build(2).at(5).up_mbps.tolist() == [10.0, 10.0]


def test_a_receiver_with_other_candidates_refuses_the_frame() -> None:
    """Ends that disagree on the candidates are told so, not silently mis-decoded: a
    frame of a codec the receiver's candidates lack is refused before decoding."""
    enc = AdaptiveEncoder(1e-2, "gzip|fpz(eb=0.01)", calibration=_calibration())
    strict = fedpress.UpdateDecoder(limits=auto_limits(candidates_for(
        "fpz(eb=0.01)", 1e-2), fedpress.Limits(codecs=frozenset())))
    blob = enc.encode(MODEL, uplink_mbps=1e5)  # a fast link: gzip, cheaper to run than fpz
    assert enc.last is not None and enc.last.spec == "gzip"
    with pytest.raises(fedpress.FormatError, match="gzip"):
        strict.decode(blob)


def test_a_deadline_buys_the_tightest_bound_that_fits() -> None:
    """The round-level view: under a deadline a client takes the tightest-bound
    candidate expected to fit (lossless first), ties by time; the fastest if none
    fits; without a deadline the choice is unchanged."""
    enc = AdaptiveEncoder(1e-2, calibration=_calibration(), round="deadline")
    plain = enc.choose(MODEL, uplink_mbps=10.0)
    assert plain.deadline_s is None and plain.spec == "fpz(eb=0.01)"
    assert plain.expected_s[plain.spec] == plain.fastest_s
    assert AdaptiveEncoder(1e-2, calibration=_calibration()).choose(
        MODEL, uplink_mbps=10.0) == plain  # the option changes nothing by itself
    s = plain.expected_s
    # a fast peer with the straggler's slack: lossless fits; raw and zstd tie on the
    # bound (0), the faster of them wins
    roomy = enc.choose(MODEL, uplink_mbps=10.0, deadline_s=10 * max(s.values()))
    assert roomy.spec == min(("raw", "zstd"), key=lambda k: s[k])
    assert roomy.deadline_s == pytest.approx(10 * max(s.values()))
    # room for the tighter fpz but not for lossless
    lossless = min(s["raw"], s["zstd"])
    if s["fpz(eb=0.001)"] < lossless:
        mid = enc.choose(MODEL, uplink_mbps=10.0, deadline_s=s["fpz(eb=0.001)"])
        assert mid.spec == "fpz(eb=0.001)"
    # the straggler: its deadline is its own best time, so it keeps its fastest
    assert enc.choose(MODEL, uplink_mbps=10.0, deadline_s=plain.fastest_s).spec == plain.spec
    # nothing fits: the fastest
    assert enc.choose(MODEL, uplink_mbps=10.0, deadline_s=1e-9).spec == plain.spec
    # whatever is chosen keeps the bound promise
    dec = fedpress.UpdateDecoder(limits=enc.limits())
    for deadline in (None, 1e-9, plain.fastest_s, 10 * max(s.values())):
        blob = enc.encode(MODEL, uplink_mbps=10.0, deadline_s=deadline)
        assert enc.last is not None and enc.last.deadline_s == deadline
        chosen = next(c for c in enc.candidates if c.spec == enc.last.spec)
        assert chosen.bound <= enc.max_eb
        x, out = MODEL["fc.weight"], dec.decode(blob)["fc.weight"]
        assert np.abs(out.astype(np.float64) - x).max() <= 1e-2 * float(x.max() - x.min())
    assert auto_options({"round": "deadline"}) == {"round": "deadline"}
    with pytest.raises(ConfigError, match="round must be"):
        AdaptiveEncoder(1e-2, round="always")
    with pytest.raises(ConfigError, match="deadline must be"):
        enc.choose(MODEL, uplink_mbps=10.0, deadline_s=-1.0)


def test_an_unbounded_candidate_is_the_loosest_under_a_deadline() -> None:
    cands = candidates_for("topk(ratio=0.1)|fpz(eb=0.01)|zstd", 1e-2, unbounded=True)
    assert [c.looseness for c in cands] == [float("inf"), 1e-2, 0.0]


def test_auto_round_deadline_in_the_simulator(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A straggler and a fast peer: the round waits for the straggler's best time
    anyway, so the fast peer sends lossless; the straggler keeps its fastest; the
    choices are recorded (``choices.csv``)."""
    pytest.importorskip("torch")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from fedpress.sim import data, fl, report
    from fedpress.sim.network import Network

    ds = data.load_dataset("digits")
    net = Network.build(2, [0.05, 50.0], 1e3, 0.0, seed=0)
    runs = {}
    for view in ("off", "deadline"):
        cfg = fl.FLConfig(model="mlp", clients=2, rounds=2, local_steps=2, plan="auto",
                          plan_options={"max_eb": 1e-2, "link": "configured",
                                        "round": view})
        runs[view], _ = fl.simulate(ds, cfg, net, test_limit=50)
    off, deadline = runs["off"], runs["deadline"]
    for m in off:
        assert [c["spec"] for c in m.choices] == ["fpz(eb=0.01)"] * 2
        assert all(c["deadline_s"] == "" for c in m.choices)
    for m in deadline:
        slow, fast = m.choices
        assert slow["spec"] == "fpz(eb=0.01)"  # the straggler keeps its fastest
        assert slow["deadline_s"] == pytest.approx(slow["fastest_s"])
        assert fast["spec"] in ("raw", "zstd") and fast["expected_s"] <= fast["deadline_s"]
        assert fast["deadline_s"] > fast["fastest_s"] * 10  # the fast peer's slack
    assert deadline[0].bytes_up > off[0].bytes_up  # the fast peer sent lossless
    out = tmp_path / "run"
    report.write_run(out, deadline, {"plan": "auto"}, plots=False)
    lines = (out / "choices.csv").read_text().splitlines()
    assert lines[0] == ",".join(report.CHOICE_COLUMNS) and len(lines) == 5
    report.write_run(tmp_path / "fixed", fl.simulate(ds, fl.FLConfig(
        model="mlp", clients=2, rounds=1, local_steps=1, plan="zstd"), net,
        test_limit=50)[0], {"plan": "zstd"}, plots=False)
    assert not (tmp_path / "fixed" / "choices.csv").exists()


def test_flower_refuses_the_round_level_view() -> None:
    pytest.importorskip("flwr")
    from fedpress.flower.link import Link

    assert Link.parse("auto(max_eb=0.01, round=off)").plan == "auto"
    with pytest.raises(ConfigError, match="simulator only"):
        Link.parse("auto(max_eb=0.01, round=deadline)")
