"""Flower's differential-privacy mods and strategy wrappers together with fedpress's
mod and strategy wrapper, in process (InlineGrid). The order matters on both ends:
DP has to see plain arrays, so fedpress's pieces go outside (see docs/flower-dp.md).

Flower runs a ClientApp's mods in list order, the first one outermost: it sees the
server's message first and the reply last. App-wide mods wrap a function's own
(``@app.train(mods=[...])``)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)

from fedpress.flower import CompressedStrategy, FailedRoundsError, compression_mod, wire
from fedpress.flower.inline import InlineGrid

from .test_flower import _numpy_app

RNG = np.random.default_rng(1)
# "weight" in the name: plan fedsz codes it lossily (FedSZ's partition), the bias not
INIT = {"fc.weight": RNG.standard_normal((48, 40)).astype(np.float32),
        "fc.bias": RNG.standard_normal(40).astype(np.float32) * 0.1}
CLIP = 0.5  # each client's update (norm ~2.2 before clipping) is clipped to this
NODES = 3


def _app(mods: list, train_mods: list | None = None) -> ClientApp:
    """Clients that move every weight by a seeded step of norm ~2.2 (``mods``: the
    app's; ``train_mods``: the train function's own, inside them)."""
    return _numpy_app(mods=mods, train_mods=train_mods)


def _client_dp(inner: FedAvg) -> DifferentialPrivacyClientSideFixedClipping:
    """The server half of client-side clipping (it sends the clipping norm); no noise,
    so that the clipping shows in the model."""
    return DifferentialPrivacyClientSideFixedClipping(inner, noise_multiplier=0.0,
                                                      clipping_norm=CLIP,
                                                      num_sampled_clients=NODES)


def _change(app: ClientApp, strategy, rounds: int = 1, tamper=None) -> float:
    """L2 norm of the global model's change after ``rounds`` rounds."""
    random.seed(0)
    result = strategy.start(grid=InlineGrid(app, NODES, tamper=tamper),
                            initial_arrays=wire.plain_record(INIT), num_rounds=rounds)
    got = wire.state_of(result.arrays)
    return float(np.sqrt(sum(np.sum((got[k].astype(np.float64) - INIT[k]) ** 2)
                             for k in INIT)))


DP_MODS = {
    "fixedclipping_mod": (fixedclipping_mod, _client_dp),
    # sensitivity 0: LocalDpMod's noise has deviation 0, its clipping shows alone
    "LocalDpMod": (LocalDpMod(CLIP, sensitivity=0.0, epsilon=1.0, delta=1e-5),
                   lambda inner: inner),
}


@pytest.mark.parametrize("dp", list(DP_MODS))
def test_dp_mods_inside_the_compression_mod_clip_what_is_sent(dp: str) -> None:
    """mods=[compression_mod, <dp mod>]: the DP mod clips plain arrays, fedpress
    compresses the clipped reply (here losslessly): the model moves by at most the
    clipping norm, and by more without the DP mod."""
    mod, server = DP_MODS[dp]
    plain = _change(_app([compression_mod]),
                    CompressedStrategy(FedAvg(fraction_evaluate=0.0), uplink="zstd"))
    assert plain > 2 * CLIP  # without clipping
    clipped = _change(_app([compression_mod, mod]), CompressedStrategy(
        server(FedAvg(fraction_evaluate=0.0)), uplink="zstd", downlink="zstd"), rounds=2)
    assert 0 < clipped <= 2 * CLIP * (1 + 1e-6)  # two rounds, each moves <= CLIP


@pytest.mark.parametrize("dp", list(DP_MODS))
@pytest.mark.parametrize("downlink, match", [
    (None, "expects the keys in the ArrayRecord of the reply message to match"),
    ("zstd", r"Unsupported serialization type for numpy conversion: 'fedpress\.frame/1'"),
])
def test_dp_mods_outside_the_compression_mod_fail_the_round(dp: str, downlink, match) -> None:
    """mods=[<dp mod>, compression_mod]: the DP mod meets fedpress frames, the clients
    reply errors and the run stops with their reason: frame keys where the model's were
    sent (raw downlink), or a frame Array it cannot read as numpy."""
    mod, server = DP_MODS[dp]
    with pytest.raises(FailedRoundsError, match=match):
        _change(_app([mod, compression_mod]), CompressedStrategy(
            server(FedAvg(fraction_evaluate=0.0)), uplink="zstd", downlink=downlink))


def test_a_train_only_dp_mod_sits_inside_the_app_wide_compression_mod() -> None:
    """The usual spelling: compression_mod for the whole app (it decodes evaluate
    messages too), the DP mod on the train function only (Flower's DP mods answer
    evaluate messages, which carry no clipping norm, with an error)."""
    for mods, train_mods, clean in (([compression_mod], [fixedclipping_mod], True),
                                    ([compression_mod, fixedclipping_mod], None, False)):
        errors: dict[str, list] = {"train": [], "evaluate": []}

        def hook(node: int, reply: Message, errors=errors) -> Message:
            if reply.has_error():
                errors[reply.metadata.message_type].append(reply.error.reason)
            return reply

        strategy = CompressedStrategy(_client_dp(FedAvg(fraction_evaluate=1.0)),
                                      uplink="zstd", downlink="zstd")
        change = _change(_app(mods, train_mods), strategy, tamper=hook)
        assert 0 < change <= CLIP * (1 + 1e-6)
        assert errors["train"] == []
        if clean:
            assert errors["evaluate"] == []
        else:  # app-wide, the DP mod refuses every evaluate message
            assert len(errors["evaluate"]) == NODES
            assert all("requires the key 'clipping_norm'" in e for e in errors["evaluate"])


def test_a_lossy_uplink_after_client_side_clipping_breaks_the_norm_server_side_clipping_holds(
        ) -> None:
    """Clipping bounds the update the client computes; a lossy uplink then adds its
    coding error (bounded per value, not in norm), so the update the server
    aggregates can exceed the clipping norm the noise was calibrated to. Clipping on
    the server, inside CompressedStrategy (so on decoded arrays, against the server's
    own model), bounds what is aggregated whatever the uplink."""
    client_side = _change(_app([compression_mod, fixedclipping_mod]), CompressedStrategy(
        _client_dp(FedAvg(fraction_evaluate=0.0)), uplink="fedsz"))
    assert client_side > 1.5 * CLIP
    server = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(fraction_evaluate=0.0), noise_multiplier=0.0, clipping_norm=CLIP,
        num_sampled_clients=NODES)
    server_side = _change(_app([compression_mod]), CompressedStrategy(server, uplink="fedsz"))
    assert 0 < server_side <= CLIP * (1 + 1e-6)


def test_a_server_side_dp_wrapper_outside_compressed_strategy_meets_frames() -> None:
    """DifferentialPrivacyServerSideFixedClipping(CompressedStrategy(...)) clips the
    replies before fedpress decodes them: it meets frames and the ServerApp fails."""
    outside = DifferentialPrivacyServerSideFixedClipping(
        CompressedStrategy(FedAvg(fraction_evaluate=0.0), uplink="fedsz"),
        noise_multiplier=0.0, clipping_norm=CLIP, num_sampled_clients=NODES)
    with pytest.raises(TypeError, match=r"fedpress\.frame/1"):
        _change(_app([compression_mod]), outside)


def test_the_client_side_dp_wrapper_outside_compressed_strategy_still_works() -> None:
    """Its server half only adds the clipping norm to the config and noises the
    aggregate, which CompressedStrategy has decoded by then: either nesting works (the
    docs still put CompressedStrategy outermost)."""
    outer = DifferentialPrivacyClientSideFixedClipping(
        CompressedStrategy(FedAvg(fraction_evaluate=0.0), uplink="zstd"),
        noise_multiplier=0.0, clipping_norm=CLIP, num_sampled_clients=NODES)
    assert 0 < _change(_app([compression_mod, fixedclipping_mod]), outer) <= CLIP * (1 + 1e-6)
