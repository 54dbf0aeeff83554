"""What decoding may cost, and the error bound under flush-to-zero.

* memory: each decoder's peak (resident set, measured in a child process around
  one decode) stays within 1.5x its output or within its declared
  ``decode_peak_bytes`` (+10%); sparse payloads, with every index coding and as many
  entries as their config allows, stay within it (tracemalloc), and the declarations
  of ordinary sparse updates stay near their output;
* time: a PowerSGD payload cannot claim a rank above its codec's, and float16
  factors are multiplied through BLAS (float32), not NumPy's float16 loop;
* flush-to-zero: with ``torch.set_flush_denormal(True)`` on the encoding or the
  decoding side, error-bounded codecs keep their bound on tensors near float32's
  smallest normal, or refuse with an error that names the cause.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import pytest

import fedpress
from fedpress._bytes import Writer
from fedpress.abc import StatefulCodec, TensorSpec
from fedpress.eblc.base import ErrorBoundedCodec
from fedpress.errors import ConfigError, FormatError
from fedpress.grad import hgc_values, indices, quant
from fedpress.registry import codec_from_config
from fedpress.state import TensorState

from .common import available

N = 1 << 22  # 16 MiB of float32: large against the interpreter's own noise
BF16 = np.dtype(ml_dtypes.bfloat16)
HWM = Path("/proc/self/clear_refs")

# ---------------------------------------------------------------------------- memory

#: the child: for each case, decode once (warm-up: imports, JIT), then reset the
#: resident-set high-water mark and decode again; prints [peak, output, declared]
CHILD = r"""
import gc, json, pickle, sys
from fedpress.registry import codec_from_config
from fedpress.state import TensorState

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024

def decode(codec, case, state):
    args = {} if case["reference"] is None else {"reference": case["reference"]}
    if case["stateful"]:
        return codec.decode(case["payload"], case["spec"], state, **args)
    return codec.decode(case["payload"], case["spec"], **args)

results = []
for case in pickle.load(open(sys.argv[1], "rb")):
    codec = codec_from_config(case["config"])
    state = None
    if case["prior"] is not None:  # the mirrored state a first round leaves
        state = TensorState()
        codec.decode(case["prior"], case["spec"], state)
    warm = decode(codec, case, None if state is None else state.copy())
    del warm
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = status("VmRSS:")
    out = decode(codec, case, state)
    peak = status("VmHWM:") - base
    results.append([peak, out.nbytes, codec.decode_peak_bytes(case["spec"])])
    del out
print(json.dumps(results))
"""


def _case(config: dict[str, Any], x: np.ndarray, payload: bytes, *,
          reference: np.ndarray | None = None, prior: bytes | None = None) -> dict[str, Any]:
    codec = codec_from_config(config)
    return {"config": config, "spec": TensorSpec.of(x), "payload": payload,
            "reference": reference, "prior": prior,
            "stateful": isinstance(codec, StatefulCodec)}


def _encode(config: dict[str, Any], x: np.ndarray, state: TensorState | None = None,
            **kw: Any) -> bytes:
    codec = codec_from_config(config)
    if isinstance(codec, StatefulCodec):
        return codec.encode(x, state, **kw)
    return codec.encode(x, **kw)


def _gauss(dtype: Any, n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32).astype(dtype)


def _memory_cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    x32, x16 = _gauss(np.float32), _gauss(np.float16)
    plain: list[tuple[str, dict[str, Any], np.ndarray]] = [
        ("qsgd rans float32", {"id": "qsgd", "bucket": 0}, x32),
        ("qsgd float16", {"id": "qsgd"}, x16),
        ("terngrad rans float32", {"id": "terngrad"}, x32),
        ("terngrad float16", {"id": "terngrad"}, x16),
        ("fpz bfloat16", {"id": "fpz"}, x32.astype(BF16)),
        ("szx float32", {"id": "szx"}, x32),
        ("szx float16", {"id": "szx"}, x16),
        # sparse values coded by fpz: a tenth kept, and every value kept (the most)
        ("topk fpz float32", {"id": "topk", "ratio": 0.1, "values": "fpz"}, x32),
        ("threshold fpz float32 dense", {"id": "threshold", "tau": 0.0, "values": "fpz"},
         x32)]
    if available(("zfp",)):  # the other peer-safe back end that decodes in this process
        plain.append(("zfp float32", {"id": "zfp", "mode": "abs", "eb": 1e-3}, x32))
    for name, cfg, x in plain:
        cases[name] = _case(cfg, x, _encode(cfg, x))
    assert cases["qsgd rans float32"]["payload"][0] == quant.RANS
    # Elias and 2-bit packing win on small tensors only: build large ones by hand
    sym = np.random.default_rng(1).integers(-1, 2, N)
    w = Writer()
    quant.write_elias(w, sym, 1)  # two thirds of the levels non-zero
    elias = bytes([quant.ELIAS, 4]) + np.array([1.0], "<f4").tobytes() + w.getvalue()
    cases["qsgd elias float32"] = _case({"id": "qsgd", "levels": 1, "bucket": 0}, x32, elias)
    packed = bytes([quant.PACK2]) + np.array([0.5], "<f4").tobytes() + quant.pack2(sym)
    cases["terngrad 2-bit float32"] = _case({"id": "terngrad"}, x32, packed)
    # HGC: without state, and the second round (state held, advanced in place)
    hgc = {"id": "hgc", "density": 0.01}
    st = TensorState()
    first = _encode(hgc, x32, st)
    cases["hgc float32"] = _case(hgc, x32, first)
    cases["hgc float32 round 2"] = _case(hgc, x32, _encode(hgc, x32 * 0.9, st), prior=first)
    # the envelope: a reference, and a third of the values patched (NaN)
    ref = _gauss(np.float32, seed=2)
    cases["fpz float32 reference"] = _case({"id": "fpz"}, x32,
                                           _encode({"id": "fpz"}, x32, reference=ref),
                                           reference=ref)
    # PowerSGD's low-rank form for a float16 matrix (products in float32 blocks)
    mat = _gauss(np.float16).reshape(2048, -1)
    cases["powersgd float16"] = _case({"id": "powersgd", "rank": 4}, mat,
                                      _encode({"id": "powersgd", "rank": 4}, mat))
    assert cases["powersgd float16"]["payload"][0] == 1
    for name, step, kind in [("fpz float32 patches", 5, 2), ("fpz float32 lossless", 3, 3)]:
        holes = x32.copy()
        holes[::step] = np.nan  # NaN travels as patches, or the body goes lossless
        payload = _encode({"id": "fpz"}, holes)
        assert payload[0] == kind
        cases[name] = _case({"id": "fpz"}, holes, payload)
    # sparse payloads with raw values, at the most entries their config lets a payload
    # keep: the indices' int64 gaps and cumulative sums peak before the output exists
    for name, cfg, kept, coding in [
            ("topk raw float32 every entry, rice", {"id": "topk", "ratio": 1.0}, N, "rice"),
            ("threshold raw float32 every entry, rans", {"id": "threshold", "tau": 0.0}, N,
             "rans"),
            ("threshold raw float32 every entry, bitmap", {"id": "threshold", "tau": 0.0}, N,
             "bitmap"),
            ("dgc float32 warm-up cap, gamma", {"id": "dgc"}, N // 4, "gamma"),
            ("stc float32 every entry, rice", {"id": "stc", "ratio": 1.0}, N, "rice"),
            ("ef:topk raw float32 every entry, rice",
             {"id": "ef", "inner": {"id": "topk", "ratio": 1.0}}, N, "rice")]:
        cases[name] = _case(cfg, x32, _sparse_payload(cfg, N, kept, coding, np.float32))
    for ratio in (0.1, 0.5, 0.75):  # randk draws its positions from the payload's seed
        cfg = {"id": "randk", "ratio": ratio}
        cases[f"randk float32 ratio {ratio}"] = _case(cfg, x32, _encode(cfg, x32))
    return cases


# sparse payloads built by hand, every index coding forced (the encoder would pick the
# cheapest): "rans escaped" is a hostile stream whose every gap is an 8-byte escape
INDEX_CODINGS = ("bitmap", "rice", "gamma", "rans", "rans escaped")


def _index_bytes(idx: np.ndarray, n: int, coding: str) -> bytes:
    w = Writer()
    if coding == "bitmap":
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        w.u8(indices.BITMAP)
        w.blob(np.packbits(mask).tobytes())
        return w.getvalue()
    method = {"rice": indices.RICE, "gamma": indices.GAMMA, "rans": indices.RANS,
              "rans escaped": indices.RANS}[coding]
    gaps = indices.gaps_of(idx)
    if coding == "rans escaped":  # out of range: refused, but only once decoded
        gaps = np.random.default_rng(4).integers(1 << 40, 1 << 62, idx.size)
    sub = Writer()
    indices.GAP_CODERS[method].encode(gaps, sub)
    w.u8(method)
    w.blob(sub.getvalue())
    return w.getvalue()


def _sparse_payload(config: dict[str, Any], n: int, k: int, coding: str,
                    dtype: Any) -> bytes:
    """A payload of codec ``config`` keeping ``k`` of ``n`` entries (spread at random),
    its indices coded by ``coding``."""
    rng = np.random.default_rng(7)
    idx = np.arange(n, dtype=np.int64) if k >= n else \
        np.sort(rng.choice(n, k, replace=False)).astype(np.int64)
    cid = config["inner"]["id"] if config["id"] == "ef" else config["id"]
    w = Writer()
    if cid in ("stc", "ternary"):
        w.raw(np.array([0.5], dtype=dtype).tobytes())
    elif cid == "hgc":
        w.u8(2)
    w.varint(k)
    w.raw(_index_bytes(idx, n, coding))
    if cid in ("stc", "ternary"):
        w.raw(np.packbits(rng.integers(0, 2, k).astype(bool)).tobytes())
    elif cid == "hgc":
        values = rng.standard_normal(k).astype(np.float32)
        hgc_values.write_values(w, [values], 3, True, None)
    else:
        w.raw(rng.standard_normal(k).astype(dtype).tobytes())
    return w.getvalue()


@pytest.mark.skipif(not HWM.exists(), reason="needs Linux's /proc/self/clear_refs")
def test_decode_peaks_stay_within_their_declaration(tmp_path: Path) -> None:
    cases = _memory_cases()
    path = tmp_path / "cases.pkl"
    path.write_bytes(pickle.dumps(list(cases.values())))
    # a fixed mmap threshold: glibc returns every large block on free (its dynamic
    # threshold would keep freed blocks resident and hide the next case's peak)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    over = {}
    for name, (peak, out, declared) in zip(cases, json.loads(proc.stdout), strict=True):
        if not name.startswith("hgc"):  # the measure sees the output itself (hgc's
            assert peak > 0.8 * out, (name, peak, out)  # zeros stay untouched pages)
        if peak > max(1.5 * out, 1.1 * declared):
            over[name] = f"peak {peak / out:.2f}x the output, declared {declared / out:.2f}x"
    assert not over, over


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BF16])
def test_declared_peaks(dtype: Any) -> None:
    """What each fixed decoder declares: about its output where it decodes in place,
    the float32 working array too where the tensor is 16-bit."""
    spec = TensorSpec((N,), np.dtype(dtype))
    wide = 4 if spec.dtype.itemsize < 4 else 0
    for cfg in ({"id": "qsgd"}, {"id": "terngrad"}, {"id": "fpz"}):
        declared = codec_from_config(cfg).decode_peak_bytes(spec)
        base = spec.nbytes + N * wide
        assert base <= declared <= base + (4 << 20), cfg  # + the blocks' temporaries
    # a float32 tensor with 2**24 levels holds its levels in float64 (exact past the cap)
    big = codec_from_config({"id": "qsgd", "levels": quant.MAX_LEVELS})
    assert big.decode_peak_bytes(TensorSpec((N,), np.dtype(np.float32))) >= 12 * N
    assert codec_from_config({"id": "hgc", "density": 1.0}).decode_peak_bytes(spec) \
        > 10 * N + spec.nbytes  # what grows with k counts
    # small tensors are not charged a fixed block size
    tiny = TensorSpec((10,), np.dtype(dtype))
    for cfg in ({"id": "qsgd"}, {"id": "terngrad"}, {"id": "fpz"}, {"id": "hgc"}):
        assert codec_from_config(cfg).decode_peak_bytes(tiny) < 1024, cfg


SPARSE_N = 1 << 20
#: what a decode may take beyond its declaration: Python objects, and a rANS stream's
#: frequency tables (a fixed size, ~170 KB for these streams; not counted per entry)
SLACK = 256 << 10
#: (config, the most entries a payload may keep for SPARSE_N values)
SPARSE_CAPS: dict[str, tuple[dict[str, Any], int]] = {
    "topk ratio 1": ({"id": "topk", "ratio": 1.0}, SPARSE_N),
    "topk ratio 0.1": ({"id": "topk", "ratio": 0.1}, SPARSE_N // 10 + 1),
    "topk ratio 0.001": ({"id": "topk", "ratio": 0.001}, SPARSE_N // 1000 + 1),
    "threshold": ({"id": "threshold", "tau": 0.0}, SPARSE_N),
    "dgc warm-up": ({"id": "dgc"}, SPARSE_N // 4),
    "dgc no warm-up": ({"id": "dgc", "ratio": 0.5, "warmup": 0}, SPARSE_N // 2),
    "stc ratio 1": ({"id": "stc", "ratio": 1.0}, SPARSE_N),
    "ternary ratio 0.5": ({"id": "ternary", "ratio": 0.5}, SPARSE_N // 2),
    "hgc density 1": ({"id": "hgc", "density": 1.0}, SPARSE_N),
    "ef:topk ratio 1": ({"id": "ef", "inner": {"id": "topk", "ratio": 1.0}}, SPARSE_N),
}


def _traced_decode_peak(config: dict[str, Any], payload: bytes, spec: TensorSpec) -> int:
    """What one decode allocates at its peak (tracemalloc: NumPy's arrays included),
    after a warm-up decode; a FormatError counts as a decode."""
    codec = codec_from_config(config)

    def decode() -> None:
        try:
            if isinstance(codec, StatefulCodec):
                codec.decode(payload, spec, None)
            else:
                codec.decode(payload, spec)
        except FormatError:
            pass

    decode()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        decode()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("coding", INDEX_CODINGS)
@pytest.mark.parametrize("case", list(SPARSE_CAPS))
def test_sparse_index_decoding_stays_within_the_declared_peak(case: str, coding: str) -> None:
    """Every index coding, at the most entries the codec lets a payload keep: the decode
    allocates no more than the codec declares (:data:`SLACK` aside)."""
    config, kept = SPARSE_CAPS[case]
    dtypes: list[Any] = [np.float32]
    if coding == "rice" and not case.startswith("hgc"):
        dtypes += [np.float16, np.float64]
    for dtype in dtypes:
        spec = TensorSpec((SPARSE_N,), np.dtype(dtype))
        payload = _sparse_payload(config, SPARSE_N, kept, coding, dtype)
        peak = _traced_decode_peak(config, payload, spec)
        declared = codec_from_config(config).decode_peak_bytes(spec)
        assert peak <= declared + SLACK, (np.dtype(dtype).name, peak / spec.nbytes,
                                               declared / spec.nbytes)


@pytest.mark.parametrize("ratio", [0.001, 0.1, 0.3, 0.5, 0.6, 0.9, 1.0])
def test_randk_stays_within_the_declared_peak(ratio: float) -> None:
    """randk draws its positions (a sort of about twice the kept count) while decoding."""
    x = _gauss(np.float32, SPARSE_N)
    spec = TensorSpec.of(x)
    worst = 0
    for seed in range(3):  # the draw seed is the peer's
        cfg = {"id": "randk", "ratio": ratio, "seed": seed}
        worst = max(worst, _traced_decode_peak(cfg, _encode(cfg, x), spec))
    declared = codec_from_config({"id": "randk", "ratio": ratio}).decode_peak_bytes(spec)
    assert worst <= declared + SLACK, (worst / spec.nbytes, declared / spec.nbytes)
    assert declared <= 1.25 * worst + SLACK  # and close to it


def test_sparse_declared_peaks_are_tight() -> None:
    """The sparse codecs' declarations follow the entries their config may keep: near the
    output at ordinary densities, 6x (float32) only where every entry may be kept."""
    spec = TensorSpec((SPARSE_N,), np.dtype(np.float32))

    def declared(cfg: dict[str, Any]) -> float:
        return codec_from_config(cfg).decode_peak_bytes(spec) / spec.nbytes

    for cfg in ({"id": "topk", "ratio": 0.01}, {"id": "stc", "ratio": 0.01},
                {"id": "ternary", "ratio": 0.01}, {"id": "dgc", "ratio": 0.001, "warmup": 0},
                {"id": "ef", "inner": {"id": "topk", "ratio": 0.01}}):
        assert 1.0 < declared(cfg) <= 1.05, cfg
    assert 1.25 < declared({"id": "topk", "ratio": 0.1}) <= 1.35
    assert 5.9 < declared({"id": "threshold"}) <= 6.1  # any entry may pass tau
    assert 5.9 < declared({"id": "topk", "ratio": 1.0}) <= 6.1
    fpz = {"id": "topk", "ratio": 0.1, "values": "fpz"}
    assert declared({"id": "ef", "inner": fpz}) == declared(fpz)


def test_sparse_payloads_keeping_more_than_the_config_allows_are_refused() -> None:
    """The declared peak counts the entries the config may keep; a payload that claims
    more is refused before its indices are read."""
    n = 3000
    spec = TensorSpec((n,), np.dtype(np.float32))
    for cfg, cap in [({"id": "topk", "ratio": 0.01}, 30), ({"id": "dgc", "warmup": 0}, 3),
                     ({"id": "hgc", "density": 0.01}, 30)]:
        codec = codec_from_config(cfg)
        good = _sparse_payload(cfg, n, cap, "rice", np.float32)
        args: tuple[Any, ...] = (None,) if isinstance(codec, StatefulCodec) else ()
        assert codec.decode(good, spec, *args).shape == (n,)
        bad = _sparse_payload(cfg, n, cap + 1, "rice", np.float32)
        with pytest.raises(FormatError, match="exceeds the limit"):
            codec.decode(bad, spec, *args)


def _resnet18() -> dict[str, np.ndarray]:
    """ResNet-18's float32 tensors (11.7M values), Gaussian of scale 1e-3."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{key}"] = (c,)

    bn("bn1", 64)
    cin = 64
    for layer, c in enumerate((64, 128, 256, 512), 1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            shapes[f"{p}.conv1.weight"] = (c, cin if block == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if block == 0 and cin != c:
                shapes[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    rng = np.random.default_rng(8)
    return {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.slow
def test_a_resnet18_sized_sparse_update_decodes_under_the_default_limits() -> None:
    from fedpress.frame import DEFAULT_LIMITS, unpack
    from fedpress.update import frame_codecs

    sd = _resnet18()
    assert 11_600_000 < sum(x.size for x in sd.values()) < 11_800_000
    out_bytes = sum(x.nbytes for x in sd.values())
    for plan, opts, most in [("topk", {"ratio": 0.01}, 1.05), ("topk", {"ratio": 0.1}, 1.35),
                             ("ef:topk", {"ratio": 0.1}, 1.35), ("threshold", {"tau": 1e-3}, 6.1),
                             ("dgc", {"ratio": 0.001}, 1.8), ("stc", {"ratio": 0.01}, 1.05)]:
        blob = fedpress.UpdateEncoder(plan, **opts).encode(sd)
        frame = unpack(blob, DEFAULT_LIMITS)
        codecs = frame_codecs(frame, DEFAULT_LIMITS)
        declared = sum(max(codecs[r.codec_index].decode_peak_bytes(r.spec), r.spec.nbytes)
                       for r in frame.records)
        assert declared <= most * out_bytes, (plan, opts, declared / out_bytes)
        assert declared * 10 < DEFAULT_LIMITS.max_total_bytes, (plan, opts)
        y = fedpress.decode_update(blob)
        assert {k: v.shape for k, v in y.items()} == {k: v.shape for k, v in sd.items()}


def test_qsgd_level_just_over_the_cap_is_refused_at_the_largest_level_count() -> None:
    """Levels travel as floats: at 2**24 levels float32 would round 2**24 + 1 onto the
    cap, so the decoder holds them in float64 and still sees the excess."""
    from fedpress.stages import rans

    s = quant.MAX_LEVELS
    levels = np.zeros(8, np.int64)
    levels[3] = s + 1
    w = Writer()
    rans.encode(levels, w)
    payload = bytes([quant.RANS, 4]) + np.array([1.0], "<f4").tobytes() + w.getvalue()
    codec = codec_from_config({"id": "qsgd", "levels": s, "bucket": 0})
    with pytest.raises(FormatError, match="exceeds"):
        codec.decode(payload, TensorSpec((8,), np.dtype(np.float32)))


# ---------------------------------------------------------------------------- PowerSGD


def _low_rank_payload(n: int, m: int, r: int, dtype: Any) -> bytes:
    rng = np.random.default_rng(3)
    p = rng.standard_normal((n, r)).astype(dtype)
    q = rng.standard_normal((m, r)).astype(dtype)
    return bytes([1, r]) + p.tobytes() + q.tobytes()


def test_powersgd_refuses_a_rank_above_its_own_quickly() -> None:
    codec = fedpress.get_codec("powersgd", rank=2)
    spec = TensorSpec((512, 512), np.dtype(np.float16))
    t0 = time.perf_counter()
    with pytest.raises(FormatError, match="rank 64 exceeds the codec's rank 2"):
        codec.decode(_low_rank_payload(512, 512, 64, np.float16), spec)
    assert time.perf_counter() - t0 < 0.5
    ok = codec.decode(_low_rank_payload(512, 512, 2, np.float16), spec)  # its own rank
    assert ok.shape == (512, 512) and ok.dtype == np.float16


class _MatmulSpy(np.ndarray):
    """An array that records the dtypes of the products it takes part in."""

    seen: ClassVar[list[tuple[np.dtype, np.dtype]]] = []

    def __matmul__(self, other: Any) -> Any:
        _MatmulSpy.seen.append((self.dtype, np.asarray(other).dtype))
        return np.matmul(np.asarray(self), np.asarray(other))


@pytest.mark.parametrize("dtype", [np.float16, BF16])
def test_powersgd_multiplies_16_bit_factors_in_float32(dtype: Any) -> None:
    """The values of float32 products rounded to the dtype, and every product taken in
    float32 (NumPy's float16 product has no BLAS path: ~20x slower)."""
    from fedpress.grad.powersgd import rebuild

    n, m, r = 700, 500, 8
    codec = fedpress.get_codec("powersgd", rank=r)
    payload = _low_rank_payload(n, m, r, dtype)
    out = codec.decode(payload, TensorSpec((n, m), np.dtype(dtype)))
    p = np.frombuffer(payload[2:2 + n * r * 2], dtype=dtype).reshape(n, r)
    q = np.frombuffer(payload[2 + n * r * 2:], dtype=dtype).reshape(m, r)
    expected = (p.astype(np.float32) @ q.astype(np.float32).T).astype(dtype)
    assert out.dtype == np.dtype(dtype) and out.tobytes() == expected.tobytes()
    _MatmulSpy.seen = []
    spied = rebuild(p.copy().view(_MatmulSpy), q.copy().view(_MatmulSpy), (n, m))
    assert np.asarray(spied).tobytes() == expected.tobytes()
    assert _MatmulSpy.seen and all(a == b == np.float32 for a, b in _MatmulSpy.seen)


def test_powersgd_exchange_checks_what_peers_send() -> None:
    from fedpress.exchange.powersgd import PowerSGDClient, PowerSGDServer

    shapes = {"w": (60, 40)}
    server = PowerSGDServer(shapes, ["w"], rank=2, seed=0)
    client = PowerSGDClient(rank=2)
    grads = {"w": np.random.default_rng(0).standard_normal((60, 40)).astype(np.float32)}
    ps, _ = client.first(grads, ["w"], server.q)
    weights = [1.0]
    malformed: list[tuple[dict[str, np.ndarray], str]] = [
        ({"w": np.zeros((60, 64), np.float32)}, "shape"),  # rank 64 > 2
        ({"w": np.full((60, 2), np.nan, np.float32)}, "NaN"),
        ({"w": np.zeros((60, 2), np.int32)}, "not floating"),
        ({}, "no factor")]
    for bad, why in malformed:
        with pytest.raises(FormatError, match=why):
            server.orthogonal_p([bad], weights)
    with pytest.raises(FormatError, match="shape"):
        client.first(grads, ["w"], {"w": np.zeros((40, 9), np.float32)})
    p_hat = server.orthogonal_p([{"w": ps["w"].astype(np.float16)}], weights)  # cast
    assert p_hat["w"].dtype == np.float32
    with pytest.raises(FormatError, match="shape"):
        client.second({"w": np.zeros((60, 3), np.float32)})
    client.first(grads, ["w"], server.q)
    qs = client.second(p_hat)
    with pytest.raises(FormatError, match="shape"):
        server.aggregate(p_hat, [{"w": np.zeros((40, 5), np.float32)}], weights)
    agg = server.aggregate(p_hat, [{"w": qs["w"].astype(np.float16)}], weights)
    assert agg["w"].shape == (60, 40) and agg["w"].dtype == np.float32


def test_powersgd_exchange_refuses_finite_factors_that_overflow() -> None:
    """Finite but huge factors from a peer: an error, not Inf/NaN in the results or in
    the client's error feedback (which every later round would add)."""
    from fedpress.exchange.powersgd import PowerSGDClient, PowerSGDServer

    shapes = {"w": (60, 40)}
    server = PowerSGDServer(shapes, ["w"], rank=2, seed=0)
    client = PowerSGDClient(rank=2)
    grads = {"w": np.random.default_rng(0).standard_normal((60, 40)).astype(np.float32)}
    with pytest.raises(FormatError, match="overflows"):
        client.first(grads, ["w"], {"w": np.full((40, 2), 3e38, np.float32)})
    ps, _ = client.first(grads, ["w"], server.q)
    p_hat = server.orthogonal_p([ps], [1.0])
    client.second(p_hat)  # a first round leaves error feedback
    before = client.errors["w"].copy()
    client.first(grads, ["w"], server.q)
    with pytest.raises(FormatError, match="orthonormal"):
        client.second({"w": p_hat["w"] * np.float32(3e37)})
    assert np.array_equal(client.errors["w"], before)  # nothing updated
    qs = client.second(p_hat)
    q_before = server.q["w"].copy()
    with pytest.raises(FormatError, match="NaN"):
        server.aggregate(p_hat, [qs, {"w": np.full((40, 2), np.inf, np.float32)}], [1.0, 1.0])
    assert np.array_equal(server.q["w"], q_before)  # the warm start unchanged
    assert np.isfinite(server.aggregate(p_hat, [qs], [1.0])["w"]).all()


# ---------------------------------------------------------------------------- flush-to-zero

@contextmanager
def flushing(on: bool) -> Iterator[None]:
    """Subnormals flushed (``torch.set_flush_denormal``) inside the block, if ``on``."""
    torch_ = pytest.importorskip("torch")
    if on and not torch_.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        yield
    finally:
        torch_.set_flush_denormal(False)


def test_the_probe_sees_flush_to_zero() -> None:
    from fedpress.eblc.base import flushes_subnormals

    assert not flushes_subnormals()
    with flushing(True):
        assert flushes_subnormals()
    assert not flushes_subnormals()


def _roundtrip(cid: str, cfg: dict[str, Any], x: np.ndarray, enc_ftz: bool,
               dec_ftz: bool) -> np.ndarray:
    codec = fedpress.get_codec(cid, **cfg)
    args: tuple[Any, ...] = (TensorState(),) if isinstance(codec, StatefulCodec) else ()
    with flushing(enc_ftz):
        payload = codec.encode(x, *args)
    args = (TensorState(),) if isinstance(codec, StatefulCodec) else ()
    with flushing(dec_ftz):
        return codec.decode(payload, TensorSpec.of(x), *args)


def _bound(cid: str, cfg: dict[str, Any], x: np.ndarray) -> float:
    """The absolute bound codec ``cid`` with ``cfg`` uses for ``x`` (subnormals kept)."""
    codec = fedpress.get_codec(cid, **cfg)
    assert isinstance(codec, ErrorBoundedCodec)
    return codec.bound_for(x)


FTZ_CODECS = available(("fpz", "szx", "gaeb", "sz3", "zfp"))


def _near_tiny(dtype: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Tensors whose range is near the smallest normal (and below it)."""
    rng = np.random.default_rng(5)
    tiny = float(ml_dtypes.finfo(dtype).tiny)
    for scale in (0.01, 1.0, 10.0, 1e3):
        yield f"sym {scale}", (rng.uniform(-1, 1, 2048) * tiny * scale).astype(dtype)
        yield f"pos {scale}", (rng.uniform(1, 2, 2048) * tiny * scale).astype(dtype)


@pytest.mark.parametrize("cid", FTZ_CODECS)
def test_bound_holds_or_a_clear_error_under_flush_to_zero(cid: str) -> None:
    failures = []
    for dtype in (np.float32, BF16):
        for label, x in _near_tiny(dtype):
            for cfg in ({"mode": "rel", "eb": 1e-2}, {"mode": "rel", "eb": 1e-4}):
                bound = _bound(cid, cfg, x)
                for enc_ftz, dec_ftz in ((True, False), (False, True), (True, True)):
                    try:
                        y = _roundtrip(cid, cfg, x, enc_ftz, dec_ftz)
                    except ConfigError as exc:
                        assert not enc_ftz or dec_ftz, "the encoder must keep the bound"
                        assert "set_flush_denormal" in str(exc)
                        continue
                    err = np.abs(y.astype(np.float64) - x.astype(np.float64)).max()
                    if not err <= bound:
                        failures.append((np.dtype(dtype).name, label, cfg, enc_ftz,
                                         dec_ftz, float(err / bound)))
    assert not failures, failures[:10]


@pytest.mark.parametrize("cid", FTZ_CODECS)
def test_ordinary_tensors_under_flush_to_zero_still_compress(cid: str) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal(4096).astype(np.float32)
    x[::97] = np.float32(1e-40)  # a few subnormals among ordinary values
    codec = fedpress.get_codec(cid, mode="rel", eb=1e-3)
    bound = _bound(cid, {"mode": "rel", "eb": 1e-3}, x)
    for enc_ftz, dec_ftz in ((True, False), (False, True), (True, True)):
        y = _roundtrip(cid, {"mode": "rel", "eb": 1e-3}, x, enc_ftz, dec_ftz)
        assert np.abs(y.astype(np.float64) - x.astype(np.float64)).max() <= bound
    with flushing(True):
        args: tuple[Any, ...] = (TensorState(),) if isinstance(codec, StatefulCodec) else ()
        payload = codec.encode(x, *args)
    assert payload[0] == 2 and len(payload) < x.nbytes  # the core, not raw storage


def test_subnormal_only_tensor_is_kept_exactly_under_flush_to_zero() -> None:
    """Under DAZ every subnormal compares equal to zero: the range must not collapse
    to a constant."""
    x = (np.arange(1, 65, dtype=np.float64) * 1e-41).astype(np.float32)
    for cid in available(("fpz", "szx")):
        y = _roundtrip(cid, {"mode": "rel", "eb": 1e-2}, x, True, False)
        assert np.array_equal(y.view(np.uint32), x.view(np.uint32)), cid
