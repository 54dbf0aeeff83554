"""FedSZ and other plans over whole state dicts."""

from __future__ import annotations

import numpy as np
import pytest

import fedpress
from fedpress.dtypes import BFLOAT16

from .common import TRUSTED, abs_bound, same_bits


def _state_dict(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "conv1.weight": rng.standard_normal((32, 1, 3, 3)).astype(np.float32),  # 288: small
        "conv2.weight": (rng.standard_normal((64, 32, 3, 3)) * 0.05).astype(np.float32),
        "conv2.bias": rng.standard_normal(64).astype(np.float32),
        "bn.running_mean": rng.standard_normal(64).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "fc.weight": (rng.standard_normal((128, 3136)) * 0.02).astype(np.float32),
        "emb.table": rng.standard_normal((100, 50)).astype(np.float32),  # big, no 'weight'
        "fc.weight_half": rng.standard_normal((40, 40)).astype(np.float16),
        "head.weight": rng.standard_normal((10, 128)).astype(BFLOAT16),
    }


@pytest.mark.parametrize(("plan", "lossy_id", "lossless_id"),
                         [("fedsz", "fpz", "zstd"), ("fedsz-paper", "sz2", "blosc-lz")])
def test_fedsz_partition_and_bounds(rng: np.random.Generator, plan: str, lossy_id: str,
                                    lossless_id: str) -> None:
    sd = _state_dict(rng)
    blob = fedpress.encode_update(sd, plan=plan, eb=1e-2)
    # the paper's sz2 is decoded from a trusted encoder only (see Limits)
    out = fedpress.decode_update(blob, fedpress.trusting(fedpress.Plan.build(plan)))
    assert list(out) == list(sd)
    info = {t["name"]: t for t in fedpress.inspect(blob)["tensors"]}
    lossy = {n for n, t in info.items() if t["codec"] == lossy_id}
    assert lossy == {"conv2.weight", "fc.weight", "fc.weight_half", "head.weight"}
    for name, x in sd.items():
        y = out[name]
        assert y.dtype == x.dtype and y.shape == x.shape
        if name in lossy:
            err = np.abs(y.astype(np.float64) - x.astype(np.float64)).max()
            assert err <= abs_bound(x, "rel", 1e-2)
            assert info[name]["eb_abs"] == pytest.approx(abs_bound(x, "rel", 1e-2), rel=1e-12)
        else:
            assert info[name]["codec"] == lossless_id
            assert same_bits(x, y)


def test_fedsz_threshold_is_strictly_more_than(rng: np.random.Generator) -> None:
    sd = {"a.weight": rng.standard_normal(1000).astype(np.float32),
          "b.weight": rng.standard_normal(1001).astype(np.float32)}
    info = {t["name"]: t["codec"] for t in
            fedpress.inspect(fedpress.encode_update(sd))["tensors"]}
    assert info == {"a.weight": "zstd", "b.weight": "fpz"}
    info = {t["name"]: t["codec"] for t in
            fedpress.inspect(fedpress.encode_update(sd, plan="fedsz-paper"))["tensors"]}
    assert info == {"a.weight": "blosc-lz", "b.weight": "sz2"}
    info = {t["name"]: t["codec"] for t in fedpress.inspect(
        fedpress.encode_update(sd, threshold=10, lossy="zfp", lossless="zlib"))["tensors"]}
    assert info == {"a.weight": "zfp", "b.weight": "zfp"}


def test_codec_id_plan_takes_float_tensors_over_threshold(rng: np.random.Generator) -> None:
    sd = _state_dict(rng)
    info = {t["name"]: t["codec"] for t in
            fedpress.inspect(fedpress.encode_update(sd, plan="sz3", eb=1e-3))["tensors"]}
    assert info["emb.table"] == "sz3"  # no 'weight' in the name, but >= threshold
    assert info["fc.weight"] == "sz3"
    assert info["conv2.bias"] == "zstd"
    assert info["bn.num_batches_tracked"] == "zstd"
    info = {t["name"]: t["codec"] for t in
            fedpress.inspect(fedpress.encode_update(sd, plan="zlib"))["tensors"]}
    assert set(info.values()) == {"zlib"}


def test_dict_plan_exact_then_regex_then_default(rng: np.random.Generator) -> None:
    sd = _state_dict(rng)
    plan = {
        "re:weight": "sz3",
        "fc.weight": {"id": "zfp", "mode": "abs", "eb": 1e-4},
        "re:^bn": "zlib",
        "default": "zstd",
    }
    blob = fedpress.encode_update(sd, plan=plan, eb=1e-3)
    info = {t["name"]: t for t in fedpress.inspect(blob)["tensors"]}
    assert info["fc.weight"]["codec"] == "zfp" and info["fc.weight"]["eb_abs"] == 1e-4
    assert info["conv2.weight"]["codec"] == "sz3"
    assert info["bn.running_mean"]["codec"] == "zlib"
    assert info["emb.table"]["codec"] == "zstd"
    # lossy rule never takes an integer tensor: it falls to the default / lossless
    assert info["bn.num_batches_tracked"]["codec"] == "zlib"
    out = fedpress.decode_update(blob, TRUSTED)  # sz3: its own frame
    assert np.abs(out["fc.weight"] - sd["fc.weight"]).max() <= 1e-4


def test_torch_state_dict_and_module() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 6 * 6, 10))
    blob = fedpress.encode_update(model, eb=1e-3)
    out = fedpress.decode_update(blob)
    sd = model.state_dict()
    assert list(out) == list(sd)
    for k, v in sd.items():
        assert out[k].shape == tuple(v.shape)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in out.items()})
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    out = fedpress.decode_update(fedpress.encode_update(half))
    assert out["3.weight"].dtype == BFLOAT16


def test_frame_overhead_is_small(rng: np.random.Generator) -> None:
    sd = {f"layer{i}.bias": rng.standard_normal(8).astype(np.float32) for i in range(50)}
    blob = fedpress.encode_update(sd, plan="zstd")
    payload = sum(t["payload_bytes"] for t in fedpress.inspect(blob)["tensors"])
    # one codec table entry shared by all tensors; names + specs + lengths per tensor
    assert len(blob) - payload < 50 * 24 + 64


def test_bad_state_dicts() -> None:
    with pytest.raises(fedpress.ConfigError):
        fedpress.encode_update([1, 2, 3])
    with pytest.raises(fedpress.ConfigError):
        fedpress.encode_update({1: np.zeros(3)})
    with pytest.raises(fedpress.ConfigError):
        fedpress.encode_update({"x": np.zeros(3, dtype=np.complex64)})
    with pytest.raises(fedpress.ConfigError):
        fedpress.encode_update({"x": np.zeros(3)}, plan="fedsz", threshold=-1)
    with pytest.raises(fedpress.ConfigError):
        fedpress.encode_update({"x": np.zeros(3)}, plan={"re:(": "zstd"})
    with pytest.raises(fedpress.ConfigError):
        fedpress.encode_update({"x": np.zeros(3)}, plan=42)


def test_empty_state_dict_round_trips() -> None:
    assert fedpress.decode_update(fedpress.encode_update({})) == {}


def test_frame_kinds_are_not_mixed(rng: np.random.Generator) -> None:
    x = rng.standard_normal(100).astype(np.float32)
    with pytest.raises(fedpress.FormatError, match="decompress"):
        fedpress.decode_update(fedpress.compress(x))
    with pytest.raises(fedpress.FormatError, match="decode_update"):
        fedpress.decompress(fedpress.encode_update({"x": x}))


def test_step_sets_sender_schedules_to_the_federations_round() -> None:
    """DGC's warm-up follows ``step``: a sender whose first message comes in round 10
    codes at the target density, not at the warm-up's first one."""
    x = {"w": np.random.default_rng(3).standard_normal(20_000).astype(np.float32)}
    own = fedpress.UpdateEncoder("dgc", ratio=0.001, warmup=4, approx=False)
    late = fedpress.UpdateEncoder("dgc", ratio=0.001, warmup=4, approx=False)
    first, caught_up = own.encode(x), late.encode(x, step=10)
    assert len(caught_up) < len(first) / 20  # 0.1 % of the values against 25 %
    assert fedpress.decode_update(caught_up)["w"].shape == (20_000,)
    with pytest.raises(fedpress.ConfigError, match="step"):
        own.encode(x, step=-1)
