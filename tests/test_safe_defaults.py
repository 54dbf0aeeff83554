"""Safe by default: what a decoder accepts from a peer, what the default plans need.

- the allow-list (``Limits.codecs``) holds on the codec tree as built, however a
  wrapper's config spells its inner codec;
- codecs whose native library does not validate its streams (``sz2``) are refused by
  the default ``Limits`` with a message saying how to opt in;
- the memory a codec declares for decoding counts against ``max_total_bytes``;
- the default plans run on the core install alone, and a plan whose back end is
  missing fails when it is built, naming the package.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import numpy as np
import pytest

import fedpress
from fedpress.abc import Codec, TensorSpec
from fedpress.registry import peer_safe_codecs, register_codec, unregister_codec

from .common import available, run_isolated

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("inner", ["sz2", {"id": "sz2"}, {"id": "sz2", "mode": "abs",
                                                            "eb": 1e-3}])
def test_the_allow_list_holds_on_the_codec_tree_however_the_inner_codec_is_spelled(
        inner: object) -> None:
    # a frame whose codec table says {"id": "ef", "inner": "sz2"} (string spelling):
    # the allow-list {"ef", "topk"} must refuse it before sz2 sees a byte
    x = RNG.standard_normal(3000).astype(np.float32)
    enc = fedpress.UpdateEncoder(plan={"w": {"id": "ef", "inner": "topk"}})
    frame = fedpress.frame.unpack(enc.encode({"w": x}))
    frame.codecs = [{"id": "ef", "inner": inner}]
    blob = fedpress.frame.pack(frame)
    limits = fedpress.Limits(codecs=frozenset({"ef", "topk"}))
    with pytest.raises(fedpress.FormatError, match="'sz2' is not accepted"):
        fedpress.UpdateDecoder(limits=limits).decode(blob)
    with pytest.raises(fedpress.FormatError, match="'sz2' is not accepted"):
        fedpress.codec_from_config({"id": "ef", "inner": inner}, {"ef", "topk"})


def test_default_limits_accept_every_peer_safe_codec_and_refuse_sz2() -> None:
    safe = peer_safe_codecs()
    assert "sz2" not in safe and "sz3" not in safe
    assert {"fpz", "zstd", "zfp", "gaeb", "ef", "topk", "hgc"} <= safe
    limits = fedpress.Limits()
    assert limits.codecs is None
    with pytest.raises(fedpress.FormatError, match=r"isolate=\{'sz2'\}"):
        limits.check_codec(fedpress.get_codec("sz2"))
    with pytest.raises(fedpress.FormatError, match="'sz2' is not decoded from peers"):
        limits.check_codec(fedpress.get_codec("ef", inner="sz2"))
    limits.check_codec(fedpress.get_codec("ef", inner="topk"))
    # naming it opts in, in this process; isolating it does too
    fedpress.Limits(codecs=frozenset({"sz2"})).check_codec(fedpress.get_codec("sz2"))
    fedpress.Limits(isolate=frozenset({"sz2"})).check_codec(fedpress.get_codec("sz2"))
    with pytest.raises(TypeError, match="set of codec ids"):
        fedpress.Limits(codecs="sz2")  # type: ignore[arg-type]


@pytest.mark.skipif(not available(("sz2",)), reason="sz2 (hdf5plugin) not installed")
def test_an_sz2_frame_from_a_peer_is_refused_unless_opted_in() -> None:
    x = RNG.standard_normal(4000).astype(np.float32)
    blob = fedpress.compress(x, codec="sz2")
    with pytest.raises(fedpress.FormatError, match="not decoded from peers by default"):
        fedpress.decompress(blob)
    update = fedpress.encode_update({"a.weight": x}, plan="fedsz-paper")
    with pytest.raises(fedpress.FormatError, match="not decoded from peers by default"):
        fedpress.decode_update(update)
    trusted = fedpress.trusting(fedpress.Plan.build("fedsz-paper"))
    assert fedpress.decode_update(update, trusted)["a.weight"].shape == x.shape
    y = fedpress.decompress(blob, fedpress.Limits(codecs=frozenset({"sz2"})))
    assert np.abs(y - x).max() <= 1e-2 * float(x.max() - x.min())


class _Greedy(Codec):
    """A test codec that declares a decoding peak of 10x its output."""

    codec_id: ClassVar[str] = "test-greedy"

    def encode(self, x: np.ndarray) -> bytes:
        return x.tobytes()

    def decode(self, payload: bytes | memoryview, spec: TensorSpec) -> np.ndarray:
        return np.frombuffer(payload, spec.dtype).reshape(spec.shape).copy()

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        return 10 * spec.nbytes


def test_a_codecs_declared_decoding_peak_counts_against_max_total_bytes() -> None:
    register_codec(_Greedy)
    try:
        x = RNG.standard_normal(1000).astype(np.float32)  # 4000 bytes out, 40000 peak
        blob = fedpress.compress(x, codec="test-greedy")
        ok = fedpress.Limits(max_total_bytes=40_000)
        assert np.array_equal(fedpress.decompress(blob, ok), x)
        tight = fedpress.Limits(max_total_bytes=39_999)
        with pytest.raises(fedpress.FormatError, match="would take 40000 bytes"):
            fedpress.decompress(blob, tight)
        update = fedpress.encode_update({"a": x, "b": x}, plan="test-greedy", threshold=0)
        with pytest.raises(fedpress.FormatError, match="would take 80000 bytes"):
            fedpress.decode_update(update, fedpress.Limits(max_total_bytes=79_999))
    finally:
        unregister_codec("test-greedy")


def test_sz3_from_a_peer_is_decoded_only_when_opted_in() -> None:
    if not available(("sz3",)):
        pytest.skip("sz3 (pysz) not installed")
    x = RNG.standard_normal(4000).astype(np.float32)
    blob = fedpress.compress(x, codec="sz3", algorithm="lorenzo_reg")
    with pytest.raises(fedpress.FormatError, match=r"isolate=\{'sz3'\}"):
        fedpress.decompress(blob)
    y = fedpress.decompress(blob, fedpress.Limits(isolate=frozenset({"sz3"})))
    assert np.abs(y - x).max() <= 1e-2 * float(x.max() - x.min())


def test_a_plan_whose_back_end_is_missing_fails_when_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pysz", None)  # makes `import pysz` fail
    for build in (lambda: fedpress.Plan.build("sz3"),
                  lambda: fedpress.UpdateEncoder(plan="fedsz", lossy="sz3"),
                  lambda: fedpress.UpdateEncoder(plan={"re:w": "ef:sz3"})):
        with pytest.raises(fedpress.MissingDependencyError, match="pip install pysz"):
            build()
    fedpress.UpdateEncoder(plan="fedsz")  # the default needs nothing optional


def test_the_default_plans_run_on_the_core_install_alone() -> None:
    # every optional back end library made unimportable: the defaults still work
    script = (
        "import sys\n"
        "for m in ('pysz', 'zfpy', 'h5py', 'hdf5plugin', 'blosc2', 'lz4', 'constriction',\n"
        "          'torch', 'flwr', 'sklearn', 'matplotlib'):\n"
        "    sys.modules[m] = None\n"
        "import numpy as np, fedpress\n"
        "rng = np.random.default_rng(0)\n"
        "sd = {'conv.weight': rng.standard_normal((16, 8, 3, 3)).astype(np.float32),\n"
        "      'fc.weight': rng.standard_normal((10, 400)).astype(np.float32),\n"
        "      'fc.bias': rng.standard_normal(10).astype(np.float32),\n"
        "      'bn.num_batches_tracked': np.array(3, dtype=np.int64)}\n"
        "blob = fedpress.encode_update(sd)\n"
        "out = fedpress.decode_update(blob)\n"
        "codecs = {t['name']: t['codec'] for t in fedpress.inspect(blob)['tensors']}\n"
        "assert codecs == {'conv.weight': 'fpz', 'fc.weight': 'fpz', 'fc.bias': 'zstd',\n"
        "                  'bn.num_batches_tracked': 'zstd'}, codecs\n"
        "assert all(out[k].shape == v.shape for k, v in sd.items())\n"
        "x = rng.standard_normal(5000).astype(np.float32)\n"
        "y = fedpress.decompress(fedpress.compress(x))\n"
        "assert np.abs(y - x).max() <= 1e-2 * float(x.max() - x.min())\n"
        "print('core-ok')\n"
    )
    run_isolated(script, "core-ok")


@pytest.mark.skipif(not available(("sz2",)), reason="sz2 (hdf5plugin) not installed")
def test_isolated_decoding_through_the_decoders_with_and_without_a_reference() -> None:
    ref = RNG.standard_normal(6000).astype(np.float32)
    x = ref + 0.01 * RNG.standard_normal(6000).astype(np.float32)
    limits = fedpress.Limits(isolate=frozenset({"sz2"}))
    y = fedpress.decompress(fedpress.compress(x, codec="sz2"), limits)
    assert np.abs(y - x).max() <= 1e-2 * float(x.max() - x.min())
    blob = fedpress.encode_update({"w": x}, plan={"w": "sz2"}, reference={"w": ref})
    y = fedpress.decode_update(blob, limits, reference={"w": ref})["w"]
    assert np.abs(y - x).max() <= 1e-2 * float(x.max() - x.min())
    # a mirrored codec cannot be isolated: its state lives in this process
    enc = fedpress.UpdateEncoder(plan={"w": "gaeb"})
    with pytest.raises(fedpress.FormatError, match="cannot hold"):
        fedpress.UpdateDecoder(limits=fedpress.Limits(isolate=frozenset({"gaeb"}))).decode(
            enc.encode({"w": x}))
