"""Coverage-guided fuzz targets of fedpress's decoders (atheris / libFuzzer).

Every decoder must turn hostile bytes into :class:`fedpress.FormatError` (or
:class:`fedpress.StateDesyncError` and its subclass for state and references that do
not match), never a crash, a hang, another exception type or an array of another shape
or dtype than the one declared. Each target checks exactly that on one input.

Targets (``python fuzz/targets.py --list``):

``frame``
    A frame (``fedpress.decompress`` / ``fedpress.decode_update``) over every codec
    whose decoder fedpress writes itself: the parser, the error-bound envelope, szx,
    fpz (every predictor and coder), the lossless coders and the stateless gradient
    compressors.
``native``
    The same for the native back ends ``sz3`` and ``zfp`` (``sz2`` is not peer-safe:
    ``docs/format.md``).
``update``
    A sequence of update frames through one ``UpdateDecoder`` (stateful codecs:
    ``hgc``, ``gaeb``, ``ef:topk`` (values raw and fpz-coded), ``dgc``, ``stc``,
    ``powersgd``, ``efsignsgd``, references): valid frames first, then the mutated one;
    a frame that fails must leave no trace in the decoder's state.
``hgc``
    HGC's exchange messages (mask, values, aggregate; ``exchange/hgc.py``), after
    a few valid rounds so the predictor holds something.
``powersgd``
    PowerSGD's exchange (``exchange/powersgd.py``): a peer's factors (``P_i`` and
    ``Q_i`` at the server, ``Q`` and ``P^`` at a client) given to the receiving end
    beside a genuine peer's; the result must have the tensors' shapes, float32, finite.
``stages``
    The entropy-coder stages read directly: rans, crans, huffman, golomb (rice and
    gamma), radix, ans, the sparse index coding, and acm (fpz version 3's adaptive
    context model, without and with a history: gaeb's).

Inputs are self-contained (a regression file replays without any set-up state):

* ``frame``, ``native``: the frame itself;
* ``update``: ``u8 scenario``, ``varint n``, ``n`` blobs of frames decoded first, a
  blob of the frame under test, then the rest: the frame the sender really sent at
  that position (may be empty);
* ``hgc``: ``u8 scenario`` (message kind and end configuration), ``varint rounds``,
  per earlier round a blob of its mask message and a blob of its aggregate message,
  a blob of this round's mask message (unused by ``mask``), the rest: the message
  under test;
* ``powersgd``: ``u8`` receiving end, then the ``{name: array}`` message
  (:func:`read_message`: the exchange itself passes dicts of arrays);
* ``stages``: ``u8 stage``, ``u16 count``, ``u8 parameter``, the rest: the stream.

The mutator (:func:`mutate`) keeps that framing, mutates the part under test and, in
frames, recomputes the CRC-32 after mutating (otherwise the checksum rejects nearly
every input before a decoder sees it); one mutation in 32 is a plain byte mutation of
the whole input. Run targets with ``fuzz/run.py``; this file is also the worker that
``run.py`` starts (``python fuzz/targets.py --fuzz NAME ...`` and ``--replay NAME
FILE``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import struct
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

#: fedpress modules a decoder can reach (imported eagerly under instrumentation so
#: coverage guides the fuzzer through them); the numba kernels are compiled, not
#: instrumented, and the simulator, Flower and CLI layers decode nothing.
DECODER_MODULES = (
    "fedpress", "fedpress._bytes", "fedpress.abc", "fedpress.api", "fedpress.bounds",
    "fedpress.dtypes", "fedpress.errors", "fedpress.frame", "fedpress.partition",
    "fedpress.registry", "fedpress.state", "fedpress.update", "fedpress.verify",
    "fedpress.backends.lossless", "fedpress.backends.sz3", "fedpress.backends.zfp",
    "fedpress.eblc.base", "fedpress.eblc.szx", "fedpress.eblc.fpz", "fedpress.eblc.gaeb",
    "fedpress.grad.base", "fedpress.grad.indices", "fedpress.grad.topk", "fedpress.grad.ef",
    "fedpress.grad.quant", "fedpress.grad.sign", "fedpress.grad.dgc", "fedpress.grad.stc",
    "fedpress.grad.powersgd", "fedpress.grad.equalcount", "fedpress.grad.hgc",
    "fedpress.grad.hgc_values",
    "fedpress.exchange.hgc", "fedpress.exchange.powersgd", "fedpress.stages",
    "fedpress.stages.quantize",
    "fedpress.stages.predict", "fedpress.stages.rans", "fedpress.stages.crans",
    "fedpress.stages.huffman", "fedpress.stages.golomb", "fedpress.stages.radix",
    "fedpress.stages.ans", "fedpress.stages.acm",
)
COMPILED_MODULES = ("fedpress.stages._kernels", "fedpress.stages._bitkernels",
                    "fedpress.stages._ctxkernels", "fedpress.stages._acmkernels")

NATIVE = frozenset({"sz3", "zfp"})
#: caps of every decoder here: small enough that a target never pages a shared machine
MAX_TOTAL_BYTES = 64 << 20


class Finding(AssertionError):
    """A decoder broke its contract on this input (other than by raising)."""


# -- byte helpers ---------------------------------------------------------------------
def seal(body: bytes) -> bytes:
    """``body`` followed by its CRC-32, as a frame ends."""
    return body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)


def put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return


def put_blob(out: bytearray, data: bytes) -> None:
    put_varint(out, len(data))
    out += data


class Cursor:
    """Reads the harness framing of an input; ``ValueError`` when it does not parse."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise ValueError("short input")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self, cap: int = 1 << 24) -> int:
        value = shift = 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if value > cap:
                raise ValueError("varint over its cap")
            if not byte & 0x80:
                return value
            shift += 7

    def blob(self) -> bytes:
        n = self.varint(len(self.data))
        if self.pos + n > len(self.data):
            raise ValueError("short input")
        self.pos += n
        return self.data[self.pos - n: self.pos]

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


# -- checks shared by the targets -----------------------------------------------------
def allowed() -> tuple[type[BaseException], ...]:
    import fedpress

    return (fedpress.FormatError, fedpress.StateDesyncError)


def limits(codecs: frozenset[str] | None) -> Any:
    import fedpress

    return fedpress.Limits(codecs=codecs, max_total_bytes=MAX_TOTAL_BYTES)


def check_arrays(out: Any, frame: bytes, lim: Any) -> None:
    """``out`` (an array or a dict of them) has exactly the frame's declared tensors."""
    from fedpress.frame import unpack

    records = unpack(frame, lim).records
    if isinstance(out, dict):
        declared, arrays = {r.name: r.spec for r in records}, out
    else:  # a tensor frame: its one record, whatever its name
        if len(records) != 1:
            raise Finding(f"one array from a tensor frame of {len(records)} records")
        declared, arrays = {"": records[0].spec}, {"": out}
    if set(arrays) != set(declared):
        raise Finding(f"decoded names {sorted(arrays)} != declared {sorted(declared)}")
    for name, a in arrays.items():
        spec = declared[name]
        if not isinstance(a, np.ndarray) or a.shape != spec.shape or a.dtype != spec.dtype:
            got = (type(a).__name__, getattr(a, "dtype", None), getattr(a, "shape", None))
            raise Finding(f"tensor {name!r}: got {got}, frame declares "
                          f"{spec.dtype}{spec.shape}")


def _describe(outcome: Any) -> str:
    return outcome.__name__ if isinstance(outcome, type) else f"arrays {sorted(outcome)}"


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a)


# -- target: frames -------------------------------------------------------------------
def decode_frame(data: bytes, lim: Any) -> None:
    import fedpress

    try:
        if data[5:6] == b"U":
            out: Any = fedpress.decode_update(data, lim)
        else:
            out = fedpress.decompress(data, lim)
    except allowed():
        return
    check_arrays(out, data, lim)


def pure_codecs() -> frozenset[str]:
    import fedpress

    return frozenset(fedpress.list_codecs()) - NATIVE - {"sz2"}


def one_frame(data: bytes) -> None:
    decode_frame(data, limits(pure_codecs()))


def one_native(data: bytes) -> None:
    decode_frame(data, limits(NATIVE))


def _signal(n: int, seed: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.sin(np.linspace(0, 12, n)) + 0.05 * rng.standard_normal(n)
    return x.reshape(shape or (n,))


def _golden(max_size: int, codecs: frozenset[str]) -> Iterator[bytes]:
    """The golden frames up to ``max_size`` bytes that use only ``codecs``."""
    from fedpress.frame import unpack

    for path in sorted(DATA.glob("golden_v1_*.fpz")):
        blob = path.read_bytes()
        if len(blob) <= max_size and {c["id"] for c in unpack(blob).codecs} <= codecs:
            yield blob


def frame_seeds() -> list[bytes]:
    import fedpress

    seeds = list(_golden(16 << 10, pure_codecs()))
    x = _signal(600, 1, (20, 30)).astype(np.float32)
    x[3, 4] = np.nan
    x[7, 1] = np.inf
    dtypes = ("float32", "float64", "float16", "bfloat16")
    for dt in dtypes:
        y = x.astype(np.float64).astype(fedpress.dtypes.BFLOAT16 if dt == "bfloat16" else dt)
        seeds.append(fedpress.compress(y, codec="szx", eb=1e-3))
        seeds.append(fedpress.compress(y, codec="fpz", eb=1e-3))
    for pred in ("none", "lorenzo1d", "lorenzo2d"):
        for coder in ("ans", "zstd", "rans", "huffman"):
            seeds.append(fedpress.compress(x, codec="fpz", eb=1e-2, predictor=pred, coder=coder))
    sparse = np.where(np.abs(x) > 0.9, x, 0).astype(np.float32)
    seeds.append(fedpress.compress(sparse, codec="fpz", eb=1e-3, mode="abs"))
    seeds.append(fedpress.compress(np.full(50, 3.5, np.float32), codec="fpz"))  # constant
    # fpz version 3: lorenzo1d, two blocks of rows, a row cut into pieces
    seeds.append(fedpress.compress(np.cumsum(x.reshape(-1)), codec="fpz", eb=1e-3,
                                   predictor="lorenzo1d"))
    blocks = np.zeros((70, 1000), np.float32)
    blocks[[3, 50, 69], :600] = x.reshape(-1)
    seeds.append(fedpress.compress(blocks, codec="fpz", eb=1e-2))
    seeds.append(fedpress.compress(blocks.reshape(-1), codec="fpz", eb=1e-2))
    seeds.append(fedpress.compress(np.zeros((0, 4), np.float32), codec="szx"))  # empty
    seeds.append(fedpress.compress(x, codec="szx", eb=0.0, mode="abs"))  # lossless kind
    seeds.append(fedpress.compress(x, codec="fpz", eb=1e-2,
                                   mode="abs"))
    ints = np.random.default_rng(2).integers(-500, 500, 300).astype(np.int64)
    for codec in ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4"):
        seeds.append(fedpress.compress(ints, codec=codec))
        seeds.append(fedpress.compress(x, codec=codec))
    g = np.random.default_rng(3).laplace(0, 1, (40, 50)).astype(np.float32)
    grad: dict[str, dict[str, Any]] = {
        "topk": {"ratio": 0.02}, "randk": {"ratio": 0.02}, "threshold": {"tau": 2.5},
        "qsgd": {"levels": 4}, "terngrad": {}, "signsgd": {}, "ternary": {"ratio": 0.05}}
    for codec, opts in grad.items():
        seeds.append(fedpress.compress(g, codec=codec, **opts))
    # sparsifiers whose kept values are coded by fpz (float32, float16; one value)
    seeds.append(fedpress.compress(g, codec="topk", ratio=0.02, values="fpz"))
    seeds.append(fedpress.compress(g.astype(np.float16), codec="threshold", tau=2.5,
                                   values="fpz", values_eb=3e-2))
    seeds.append(fedpress.compress(g, codec="topk", ratio=1e-4, values="fpz"))
    seeds.append(fedpress.compress(g[:2, :10], codec="qsgd", levels=16))
    seeds.append(fedpress.encode_update(
        {"w": x, "b": ints[:7], "h": x[0].astype(np.float16)}, plan="fedsz", lossy="szx"))
    return seeds


def frame_edge_seeds() -> list[bytes]:
    """Frames at the edges of the codecs' ranges: huge float64 ranges, tiny bounds
    (large codes, escapes), all-NaN and one-value tensors."""
    import fedpress

    seeds = []
    huge = np.array([-1e308, 1e308, 0.0, 5e307, -3e307] * 40)
    tiny = _signal(500, 9) * 1e3
    for codec in ("szx", "fpz"):
        seeds.append(fedpress.compress(huge, codec=codec, eb=1e-2))
        seeds.append(fedpress.compress(tiny, codec=codec, eb=1e-12))
        seeds.append(fedpress.compress(np.full(30, np.nan, np.float32), codec=codec))
        seeds.append(fedpress.compress(np.array([2.5], np.float32), codec=codec, eb=1e-3))
    for coder in ("rans", "huffman"):  # large codes (smaller bounds cost the encoder
        # memory in proportion to the code range)
        seeds.append(fedpress.compress(tiny.astype(np.float32), codec="fpz", eb=1e-7,
                                       coder=coder))
    return seeds


def native_seeds() -> list[bytes]:
    import fedpress
    from fedpress.registry import unavailable_reason

    seeds = []
    x = _signal(800, 4, (40, 20)).astype(np.float32)
    x[0, 0] = np.nan
    for codec in sorted(NATIVE):
        if unavailable_reason(codec) is not None:
            continue
        seeds += list(_golden(16 << 10, frozenset({codec})))
        for dt in ("float32", "float64"):
            for mode, eb in (("rel", 1e-3), ("abs", 1e-2), ("rel", 1e-6)):
                seeds.append(fedpress.compress(x.astype(dt), codec=codec, mode=mode, eb=eb))
        seeds.append(fedpress.compress(x.astype(np.float16), codec=codec, eb=1e-2))
    return seeds


# -- target: update frames through one UpdateDecoder ----------------------------------
def _reference(scenario: int) -> dict[str, np.ndarray] | None:
    """The reference a scenario's frames were coded against (odd scenarios only)."""
    if not scenario & 1:
        return None
    rng = np.random.default_rng(99)
    return {"fc.weight": (0.05 * rng.standard_normal((16, 24))).astype(np.float32),
            "fc.bias": np.linspace(-1, 1, 16).astype(np.float32)}


def one_update(data: bytes) -> None:
    import fedpress

    try:
        cur = Cursor(data)
        scenario = cur.u8()
        prefix = [cur.blob() for _ in range(cur.varint(16))]
        target = cur.blob()
        genuine = cur.rest()
    except ValueError:
        return
    lim = limits(pure_codecs())
    ref = _reference(scenario)

    def fresh() -> Any:
        dec = fedpress.UpdateDecoder(limits=lim)
        for f in prefix:
            dec.decode(f, peer="p", reference=ref)
        return dec

    def outcome(dec: Any, blob: bytes) -> Any:
        try:
            return dec.decode(blob, peer="p", reference=ref)
        except allowed() as exc:
            return type(exc)

    try:
        dec = fresh()
    except allowed():
        return  # the earlier frames were mutated themselves: nothing to test beyond
    try:
        out = dec.decode(target, peer="p", reference=ref)
    except allowed():
        # a frame that fails leaves no trace: the frame really sent at that position
        # decodes as it would have without the failed one (checked on a quarter of
        # the inputs, chosen by their bytes: a second decoder costs time)
        if genuine and zlib.crc32(target) % 4 == 0:
            a, b = outcome(dec, genuine), outcome(fresh(), genuine)
            if isinstance(a, dict) and isinstance(b, dict):
                equal = same(a, b)
            else:
                equal = a is b  # the same exception type (dicts never compare here)
            if not equal:
                raise Finding("a failed frame changed how the next frame decodes: "
                              f"{_describe(a)} instead of {_describe(b)}") from None
        return
    check_arrays(out, target, lim)


#: name -> (UpdateEncoder arguments, tensor layout, reference used)
def update_streams() -> dict[str, tuple[dict[str, Any], bool]]:
    return {
        "hgc": ({"plan": {"default": "zstd", "re:weight$": {"id": "hgc", "density": 0.05}},
                 "residual_feedback": True}, False),
        "hgc5": ({"plan": {"default": "zstd",
                           "re:weight$": {"id": "hgc", "density": 0.1, "levels": 5}}}, False),
        "hgc_raw": ({"plan": {"default": "zstd", "re:weight$": {"id": "hgc", "density": 0.1,
                                                               "quantize": False,
                                                               "predict": False}}}, False),
        "gaeb_context": ({"plan": {"default": "zstd",
                                   "re:weight$": {"id": "gaeb", "predictor": "context"}},
                          "eb": 1e-2}, False),
        "gaeb_paper": ({"plan": {"default": "zstd",
                                 "re:weight$": {"id": "gaeb", "predictor": "paper"}},
                        "eb": 1e-2}, False),
        "gaeb_none": ({"plan": {"default": "zstd",
                                "re:weight$": {"id": "gaeb", "predictor": "none"}}}, False),
        "gaeb_magnitude": ({"plan": {"default": "zstd", "re:weight$": {
            "id": "gaeb", "predictor": "context", "features": "magnitude"}}}, False),
        "gaeb_sign": ({"plan": {"default": "zstd", "re:weight$": {
            "id": "gaeb", "predictor": "context", "features": "sign"}}}, False),
        "fpz_reference": ({"plan": {"default": "zstd", "re:weight$": "fpz"}, "eb": 1e-3}, True),
        "gaeb_reference": ({"plan": {"default": "zstd", "re:weight$": "gaeb"}, "eb": 1e-3},
                           True),
        "ef_topk": ({"plan": {"default": "zstd", "re:weight$": {"id": "ef", "inner": {
            "id": "topk", "ratio": 0.05}}}}, False),
        "dgc": ({"plan": {"default": "zstd", "re:weight$": {"id": "dgc", "ratio": 0.05,
                                                           "warmup": 0}}}, False),
        "stc": ({"plan": {"default": "zstd", "re:weight$": {"id": "stc", "ratio": 0.05}}},
                False),
        "powersgd": ({"plan": {"default": "zstd", "re:weight$": {"id": "powersgd",
                                                                "rank": 2}}}, False),
        "efsignsgd": ({"plan": {"default": "zstd", "re:weight$": "efsignsgd"}}, False),
        # new scenarios go last: a regression input names its scenario by its position
        "ef_topk_fpz": ({"plan": {"default": "zstd", "re:weight$": {"id": "ef", "inner": {
            "id": "topk", "ratio": 0.05, "values": "fpz"}}}}, False),
    }


def update_input(scenario: int, prefix: list[bytes], target: bytes, genuine: bytes) -> bytes:
    out = bytearray([scenario])
    put_varint(out, len(prefix))
    for f in prefix:
        put_blob(out, f)
    put_blob(out, target)
    return bytes(out + genuine)


def update_seeds() -> list[bytes]:
    import fedpress

    seeds = []
    rng = np.random.default_rng(5)
    scale = rng.lognormal(0.0, 1.0, (16, 8, 3))
    persistent = 0.5 * rng.standard_normal(scale.shape)
    for i, (_name, (kwargs, with_ref)) in enumerate(update_streams().items()):
        scenario = 2 * i + (1 if with_ref else 0)
        ref = _reference(scenario)
        enc = fedpress.UpdateEncoder(**kwargs)
        frames = []
        for t in range(3):
            if ref is not None:
                sd = {k: v + 1e-3 * rng.standard_normal(v.shape).astype(np.float32)
                      for k, v in ref.items()}
            else:
                w = scale * (rng.standard_normal(scale.shape) + persistent)
                sd = {"conv.weight": w.astype(np.float32),
                      "conv.bias": np.linspace(-1, 1, 16, dtype=np.float32) + t,
                      "bn.num_batches_tracked": np.array(3 + t, np.int64)}
            frames.append(enc.encode(sd, reference=ref))
        for t in range(len(frames)):
            later = frames[t + 1] if t + 1 < len(frames) else b""
            seeds.append(update_input(scenario, frames[:t], frames[t], later))
    return seeds


# -- target: HGC's exchange -----------------------------------------------------------
HGC_SHAPES = {"conv.weight": (8, 4, 3, 3), "fc.weight": (10, 40), "fc.bias": (10,)}
#: end configurations: (levels, predict, quantize, compressed this round)
HGC_CONFIGS = ((3, True, True, True), (5, True, True, True), (3, False, True, True),
               (3, True, True, False), (7, False, False, False))
HGC_KINDS = ("mask", "values", "aggregate")
HGC_DENSITY = 0.05


def _hgc_end(cfg: int, server: bool) -> Any:
    from fedpress.exchange.hgc import HGCClient, HGCServer

    levels, predict, quantize, _ = HGC_CONFIGS[cfg]
    cls = HGCServer if server else HGCClient
    return cls(HGC_SHAPES, HGC_DENSITY, levels, predict, quantize)


def one_hgc(data: bytes) -> None:
    try:
        cur = Cursor(data)
        scenario = cur.u8()
        kind, cfg = scenario & 3, (scenario >> 2) % len(HGC_CONFIGS)
        rounds = [(cur.blob(), cur.blob()) for _ in range(cur.varint(8))]
        mask_msg = cur.blob()
        msg = cur.rest()
    except ValueError:
        return
    if kind >= len(HGC_KINDS):
        return
    end = _hgc_end(cfg, server=HGC_KINDS[kind] != "aggregate")
    try:
        for m, a in rounds:
            end.advance(end.decode_aggregate(a, end.decode_mask(m)))
        mask = end.decode_mask(mask_msg) if HGC_KINDS[kind] != "mask" else None
    except allowed():
        return
    end.configure(HGC_DENSITY, HGC_CONFIGS[cfg][3])
    try:
        if HGC_KINDS[kind] == "mask":
            mask = end.decode_mask(msg)
            dense = None
        elif HGC_KINDS[kind] == "values":
            dense = end.decode_values(msg, mask)
        else:
            dense = end.decode_aggregate(msg, mask)
    except allowed():
        return
    check_mask(mask)
    if dense is not None:
        assert mask is not None
        check_dense(dense, mask)


def check_mask(mask: Any) -> None:
    if not isinstance(mask, dict) or set(mask) != set(HGC_SHAPES):
        raise Finding(f"mask names {sorted(mask)}")
    for name, idx in mask.items():
        n = int(np.prod(HGC_SHAPES[name]))
        if (not isinstance(idx, np.ndarray) or idx.ndim != 1
                or not np.issubdtype(idx.dtype, np.integer)):
            raise Finding(f"mask {name!r}: {type(idx).__name__} {getattr(idx, 'dtype', '')}")
        if idx.size and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0)):
            raise Finding(f"mask {name!r}: positions not strictly increasing in [0, {n})")


def check_dense(dense: Any, mask: dict[str, np.ndarray]) -> None:
    if not isinstance(dense, dict) or set(dense) != set(HGC_SHAPES):
        raise Finding(f"decoded names {sorted(dense)}")
    for name, a in dense.items():
        if (not isinstance(a, np.ndarray) or a.shape != HGC_SHAPES[name]
                or a.dtype != np.float32):
            raise Finding(f"{name!r}: {getattr(a, 'dtype', type(a))}{getattr(a, 'shape', '')}")
        if not np.isfinite(a).all():
            raise Finding(f"{name!r}: NaN or Inf decoded")
        off = np.ones(a.size, bool)
        off[mask[name]] = False
        if np.any(a.reshape(-1)[off] != 0):
            raise Finding(f"{name!r}: values off the mask")


def hgc_input(scenario: int, rounds: list[tuple[bytes, bytes]], mask: bytes, msg: bytes) -> bytes:
    out = bytearray([scenario])
    put_varint(out, len(rounds))
    for m, a in rounds:
        put_blob(out, m)
        put_blob(out, a)
    put_blob(out, mask)
    return bytes(out + msg)


def hgc_seeds() -> list[bytes]:
    seeds = []
    rng = np.random.default_rng(6)
    for cfg, (_, _, _, compressed) in enumerate(HGC_CONFIGS):
        server = _hgc_end(cfg, server=True)
        clients = [_hgc_end(cfg, server=False) for _ in range(2)]
        history: list[tuple[bytes, bytes]] = []
        for rnd in range(3):
            for e in (server, *clients):
                e.configure(HGC_DENSITY, compressed)
            updates = [{k: rng.standard_normal(s).astype(np.float32) for k, s in
                        HGC_SHAPES.items()} for _ in clients]
            master = clients[rnd % 2]
            mask = master.select_mask(updates[rnd % 2])
            mask_msg = master.encode_mask(mask)
            values = [c.encode_update(u, mask) for c, u in zip(clients, updates)]
            decoded = [server.decode_values(v, mask) for v in values]
            agg_msg, _ = server.aggregate(decoded, mask=mask)
            for c in clients:
                c.receive_aggregate(agg_msg, mask)
            if rnd == 0 or rnd == 2:
                for kind, msg in (("mask", mask_msg), ("values", values[0]),
                                  ("aggregate", agg_msg)):
                    scenario = HGC_KINDS.index(kind) | cfg << 2
                    seeds.append(hgc_input(scenario, list(history), mask_msg, msg))
            history.append((mask_msg, agg_msg))
    return seeds


# -- target: PowerSGD's exchange -----------------------------------------------------
PSGD_RANK = 2
PSGD_KINDS = ("server_p", "server_q", "client_q", "client_p_hat")
#: the harness's encoding of a factor's dtype (a message is a dict of arrays)
PSGD_DTYPES = {1: "<f4", 2: "<f8", 3: "<f2", 4: "bfloat16", 10: "i1", 14: "<i4", 16: "<i8",
               18: "?"}


def _psgd_dtype(code: int) -> np.dtype:
    name = PSGD_DTYPES[code]
    if name == "bfloat16":
        import fedpress.dtypes

        return np.dtype(fedpress.dtypes.BFLOAT16)
    return np.dtype(name)


def read_message(cur: Cursor) -> dict[str, np.ndarray]:
    """A ``{name: array}`` message in the harness encoding: ``varint count``, then per
    entry a blob name, ``u8`` dtype code, ``u8 ndim``, the dims, the raw values."""
    msg = {}
    for _ in range(cur.varint(16)):
        name = cur.blob().decode("utf-8", "replace")
        dtype = _psgd_dtype(cur.u8())
        shape = tuple(cur.varint(4096) for _ in range(cur.u8() % 5))
        count = int(np.prod(shape))
        if count > 1 << 16:
            raise ValueError("message too large for the harness")
        raw = cur.data[cur.pos: cur.pos + count * dtype.itemsize]
        if len(raw) != count * dtype.itemsize:
            raise ValueError("short input")
        cur.pos += len(raw)
        msg[name] = np.frombuffer(raw, dtype).reshape(shape)
    return msg


def write_message(msg: dict[str, np.ndarray]) -> bytes:
    codes = {v: k for k, v in PSGD_DTYPES.items()}
    out = bytearray()
    put_varint(out, len(msg))
    for name, a in msg.items():
        put_blob(out, name.encode())
        out.append(codes[a.dtype.str if a.dtype.str in codes else a.dtype.name])
        out.append(a.ndim)
        for d in a.shape:
            put_varint(out, d)
        out += a.tobytes()
    return bytes(out)


def _psgd_round() -> dict[str, Any]:
    """One genuine round of the exchange between two clients and a server."""
    from fedpress.exchange.powersgd import PowerSGDClient, PowerSGDServer, low_rank_names

    rng = np.random.default_rng(11)
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in HGC_SHAPES.items()}
             for _ in range(2)]
    names = low_rank_names(grads[0], PSGD_RANK, 0)
    server = PowerSGDServer(HGC_SHAPES, names, PSGD_RANK, seed=0)
    clients = [PowerSGDClient(PSGD_RANK) for _ in grads]
    q = dict(server.q)
    ps = [c.first(g, names, q)[0] for c, g in zip(clients, grads)]
    p_hat = server.orthogonal_p(ps, [1.0, 2.0])
    qs = [c.second(p_hat) for c in clients]
    return {"grads": grads, "names": names, "q": q, "ps": ps, "p_hat": p_hat, "qs": qs}


_PSGD: dict[str, Any] = {}


def one_powersgd(data: bytes) -> None:
    from fedpress.exchange.powersgd import PowerSGDClient, PowerSGDServer

    try:
        cur = Cursor(data)
        kind = PSGD_KINDS[cur.u8() % len(PSGD_KINDS)]
        msg = read_message(cur)
    except (ValueError, KeyError):
        return
    if not _PSGD:
        _PSGD.update(_psgd_round())
    g = _PSGD
    names = g["names"]
    server = PowerSGDServer(HGC_SHAPES, names, PSGD_RANK, seed=0)
    client = PowerSGDClient(PSGD_RANK)
    try:
        if kind == "server_p":
            out = server.orthogonal_p([g["ps"][0], msg], [1.0, 2.0])
            expect = {k: g["ps"][0][k].shape for k in names}
        elif kind == "server_q":
            out = server.aggregate(g["p_hat"], [g["qs"][0], msg], [1.0, 2.0])
            expect = {k: HGC_SHAPES[k] for k in names}
        elif kind == "client_q":
            out, rest = client.first(g["grads"][0], names, msg)
            expect = {k: g["ps"][0][k].shape for k in names}
            if set(rest) != set(HGC_SHAPES) - set(names):
                raise Finding(f"client_q: the tensors sent raw are {sorted(rest)}")
        else:
            client.first(g["grads"][0], names, g["q"])
            out = client.second(msg)
            expect = {k: g["qs"][0][k].shape for k in names}
            for k, e in client.errors.items():  # kept for the next round
                if not np.isfinite(e).all():
                    raise Finding(f"{kind}: the error feedback of {k!r} holds NaN or Inf")
    except allowed():
        return
    if not isinstance(out, dict) or set(out) != set(expect):
        raise Finding(f"{kind}: returned {type(out).__name__} {sorted(out)}")
    for k, a in out.items():
        if (not isinstance(a, np.ndarray) or a.shape != tuple(expect[k])
                or a.dtype != np.float32):
            raise Finding(f"{kind}: {k!r} is {getattr(a, 'dtype', type(a))}"
                          f"{getattr(a, 'shape', '')}, expected float32{tuple(expect[k])}")
        if not np.isfinite(a).all():
            raise Finding(f"{kind}: {k!r} holds NaN or Inf computed from finite factors")


def powersgd_seeds() -> list[bytes]:
    g = _psgd_round()
    genuine = {"server_p": g["ps"][1], "server_q": g["qs"][1], "client_q": g["q"],
               "client_p_hat": g["p_hat"]}
    seeds = []
    for i, kind in enumerate(PSGD_KINDS):
        msg = genuine[kind]
        for dt in (np.float32, np.float64):
            cast = {k: np.asarray(v).astype(dt) for k, v in msg.items()}
            seeds.append(bytes([i]) + write_message(cast))
    return seeds


def powersgd_edge_seeds() -> list[bytes]:
    """Genuine factors in 16-bit floats (P^ is then orthonormal only to their
    precision) and scaled near float32's largest value (finite; products of them may
    overflow): the byte mutator rarely reaches such exponents by itself."""
    import fedpress.dtypes

    g = _psgd_round()
    genuine = {"server_p": g["ps"][1], "server_q": g["qs"][1], "client_q": g["q"],
               "client_p_hat": g["p_hat"]}
    seeds = []
    for i, kind in enumerate(PSGD_KINDS):
        for dt in (np.float16, fedpress.dtypes.BFLOAT16):
            cast = {k: np.asarray(v).astype(dt) for k, v in genuine[kind].items()}
            seeds.append(bytes([i]) + write_message(cast))
        for top in (1e30, 3e38):
            big = {k: (v * (top / np.abs(v).max())).astype(np.float32)
                   for k, v in genuine[kind].items()}
            seeds.append(bytes([i]) + write_message(big))
    return seeds


# -- target: the entropy-coder stages -------------------------------------------------
STAGES = ("rans", "rans_f32", "crans", "huffman", "rice", "gamma", "radix", "ans", "indices",
          "acm", "acm_hist")
CRANS_EXT = 6  # contexts of the crans target: position-derived, in [0, CRANS_EXT)


def _crans_ext(n: int) -> np.ndarray:
    return ((np.arange(n) * 7 + n) % CRANS_EXT).astype(np.uint8)


def _acm_history(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The history the acm_hist target decodes with: position-derived magnitudes (in
    steps of 0.25, every bucket) and signs."""
    i = np.arange(n)
    return ((i % 11) * 0.15).astype(np.float32), ((i % 3) - 1).astype(np.int8)


def one_stage(data: bytes) -> None:
    from fedpress._bytes import Reader
    from fedpress.grad.indices import read_indices
    from fedpress.stages import acm, ans, crans, golomb, huffman, radix, rans

    if len(data) < 4:
        return
    stage = STAGES[data[0] % len(STAGES)]
    n = int.from_bytes(data[1:3], "little")
    param = data[3]
    stream = data[4:]
    rd = Reader(stream, "fuzz stream")
    dtype: Any = np.int64
    low, cap = 0, None  # the range values must lie in, where the stage promises one
    try:
        if stage == "rans":
            out = rans.decode(rd, n)
        elif stage == "rans_f32":
            out, dtype = rans.decode(rd, n, step=0.25, dtype=np.dtype(np.float32)), np.float32
        elif stage == "crans":
            out = crans.decode(rd, n, _crans_ext(n), CRANS_EXT)
        elif stage == "huffman":
            out = huffman.decode(rd, n)
        elif stage == "rice":
            cap = 1 << 20
            out = golomb.rice_unpack(stream, n, param % 64, cap)
        elif stage == "gamma":
            low, cap = 1, 1 << (param % 40)
            out = golomb.gamma_unpack(stream, n, cap)
        elif stage == "radix":
            cap = 2 + param  # the alphabet
            out = radix.unpack(stream, n, cap)
            cap -= 1
        elif stage == "ans":
            out = ans.decode(rd, n)
        elif stage in ("acm", "acm_hist"):  # fpz version 3's engine; param: the predictor
            hist = _acm_history(n) if stage == "acm_hist" else None
            out, dtype = acm.decode(rd, n, 0.25, np.dtype(np.float32), param & 1, 1 + (param >> 7),
                                    hist=hist), np.float32
            if not np.all(np.isfinite(out)) or (out.size and np.abs(out).max() > 0.25 * (1 << 30)):
                raise Finding(f"{stage}: a value beyond the largest code")
        else:
            size = n + param
            out = read_indices(rd, min(n, size), size)
            if out.size and (out[0] < 0 or out[-1] >= size or np.any(np.diff(out) <= 0)):
                raise Finding("indices not strictly increasing within the tensor")
    except allowed():
        return
    if not isinstance(out, np.ndarray) or out.shape != (n,) or out.dtype != dtype:
        raise Finding(f"{stage}: got {type(out).__name__} {getattr(out, 'dtype', '')}"
                      f"{getattr(out, 'shape', '')}, expected {np.dtype(dtype)}({n},)")
    if cap is not None and out.size:
        if int(out.min()) < low or int(out.max()) > cap:
            raise Finding(f"{stage}: value outside [{low}, {cap}]")


def stage_input(stage: str, n: int, param: int, stream: bytes) -> bytes:
    return bytes([STAGES.index(stage)]) + n.to_bytes(2, "little") + bytes([param]) + stream


def stage_seeds() -> list[bytes]:
    from fedpress._bytes import Writer
    from fedpress.grad.indices import candidates
    from fedpress.stages import acm, ans, crans, golomb, huffman, radix, rans

    seeds = []
    rng = np.random.default_rng(8)
    for n in (1, 7, 300, 5000):
        r = np.rint(rng.laplace(0, 3, n)).astype(np.int64)
        r[rng.random(n) < 0.01] = 10**6  # escapes
        for ctx in (0, 1):
            w = Writer()
            rans.encode(r, w, ctx_model=ctx)
            seeds.append(stage_input("rans", n, 0, w.getvalue()))
            seeds.append(stage_input("rans_f32", n, 0, w.getvalue()))
        w = Writer()
        huffman.encode(r, w)
        seeds.append(stage_input("huffman", n, 0, w.getvalue()))
        w = Writer()
        z, hist = rans.symbols(r)
        crans.encode(z, hist, _crans_ext(n), CRANS_EXT, w)
        seeds.append(stage_input("crans", n, 0, w.getvalue()))
        w = Writer()
        ans.encode(r, w)
        seeds.append(stage_input("ans", n, 0, w.getvalue()))
        x = (r * 0.25).astype(np.float32)
        x[: n // 3] = 0.0  # zero rows
        for cols in {1, n, max(1, n // 10) if n % max(1, n // 10) == 0 else n}:
            for pred in (0, 1):
                for stage in ("acm", "acm_hist"):
                    hist = _acm_history(n) if stage == "acm_hist" else None
                    coded = acm.encode(x, cols, 0.25, 0.125, pred, 1, hist=hist)
                    assert coded is not None
                    seeds.append(stage_input(stage, n, pred | (128 if cols == 1 else 0),
                                             coded[0]))
        v = np.abs(r) % 1000
        seeds.append(stage_input("rice", n, 3, golomb.rice_pack(v, 3)))
        seeds.append(stage_input("gamma", n, 12, golomb.gamma_pack(v + 1)))
        for alphabet in (2, 3, 5, 17):
            sym = np.abs(r) % alphabet
            seeds.append(stage_input("radix", n, alphabet - 2, radix.pack(sym, alphabet)))
        size = n + 200
        idx = np.sort(rng.choice(size, n, replace=False)).astype(np.int64)
        for method, blob in candidates(idx, size).items():
            w = Writer()
            w.u8(method)
            w.blob(blob)
            seeds.append(stage_input("indices", n, 200, w.getvalue()))
    return seeds


# -- the registry -----------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A fuzz target: how to check one input, how to make seeds, how inputs are framed."""

    name: str
    check: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    #: ``"frame"``: the input is a frame (CRC at its end); ``"update"``/``"hgc"``: the
    #: harness framing above; ``"stages"``: a 4-byte header, then the stream;
    #: ``"prefix"``: a selector byte, then anything
    layout: str
    #: inputs at the edges of what is valid (they need not decode), added to the seeds
    edge_seeds: Callable[[], list[bytes]] = list


TARGETS: dict[str, Target] = {
    t.name: t for t in (
        Target("frame", one_frame, frame_seeds, "frame", frame_edge_seeds),
        Target("native", one_native, native_seeds, "frame"),
        Target("update", one_update, update_seeds, "update"),
        Target("hgc", one_hgc, hgc_seeds, "hgc"),
        Target("powersgd", one_powersgd, powersgd_seeds, "prefix", powersgd_edge_seeds),
        Target("stages", one_stage, stage_seeds, "stages"),
    )
}


# -- the structure-aware mutator ------------------------------------------------------
def _mutate_frame(frame: bytes, max_size: int, mut: Callable[[bytes, int], bytes]) -> bytes:
    """Mutate a frame's body and recompute its CRC-32 (a crafted frame)."""
    if len(frame) < 12:
        return mut(frame, max_size)
    return seal(mut(frame[:-4], max(1, max_size - 4)))


def mutate(layout: str, data: bytes, max_size: int, seed: int,
           mut: Callable[[bytes, int], bytes]) -> bytes:
    """One mutation of ``data`` that keeps the target's framing (see the module doc).

    ``mut(bytes, max_size)`` is the byte-level mutator (``atheris.Mutate`` when
    fuzzing). One call in 32 mutates the whole input as plain bytes.
    """
    rng = random.Random(seed)
    if rng.random() < 1 / 32:
        return mut(data, max_size)
    if layout == "frame":
        return _mutate_frame(data, max_size, mut)
    if layout == "prefix":  # a selector byte, kept, then plain bytes
        if not data:
            return mut(data, max_size)
        return data[:1] + mut(data[1:], max(1, max_size - 1))
    if layout == "stages":
        if len(data) < 4:
            return mut(data, max_size)
        header = bytearray(data[:4])
        if rng.random() < 0.1:
            header[1 + rng.randrange(3)] = rng.randrange(256)  # count or parameter
        return bytes(header) + mut(data[4:], max(1, max_size - 4))
    try:
        cur = Cursor(data)
        head = cur.u8()
        if layout == "update":
            prefix = [cur.blob() for _ in range(cur.varint(16))]
            target, genuine = cur.blob(), cur.rest()
            room = max(16, max_size - len(data) + len(target))
            return update_input(head, prefix, _mutate_frame(target, room, mut), genuine)
        rounds = [(cur.blob(), cur.blob()) for _ in range(cur.varint(8))]
        mask, msg = cur.blob(), cur.rest()
    except ValueError:
        return mut(data, max_size)
    room = max(16, max_size - len(data) + len(msg))
    if HGC_KINDS[(head & 3) % 3] != "mask" and rng.random() < 0.15:
        return hgc_input(head, rounds, mut(mask, max(16, len(mask) + 16)), msg)
    return hgc_input(head, rounds, mask, mut(msg, room))


# -- the worker (started by run.py) ---------------------------------------------------
def signature(exc: BaseException) -> str:
    """What identifies a finding across inputs: for a broken contract the harness's
    message (numbers and quoted names left out), else the exception type and the
    innermost function of fedpress's package it passed through."""
    if isinstance(exc, Finding):
        text = re.sub(r"'[^']*'", "'*'", str(exc))  # tensor names: one finding per bug
        return "Finding: " + re.sub(r"\d+", "N", text)[:160]
    import fedpress

    package = str(Path(fedpress.__file__).resolve().parent)
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f for f in reversed(frames) if f.filename.startswith(package)), None) \
        or (frames[-1] if frames else None)
    loc = f"{Path(where.filename).stem}.{where.name}" if where else "?"
    return f"{type(exc).__name__} in {loc}"  # no line number: edits elsewhere move it


def _import_decoders(instrument: bool) -> None:
    """Import the decoders (under atheris's instrumentation when ``instrument``: only
    modules first imported inside that block are instrumented, so nothing of fedpress
    may be imported before)."""
    import importlib

    if instrument:
        import atheris

        if any(m == "fedpress" or m.startswith("fedpress.") for m in sys.modules):
            raise RuntimeError("fedpress was imported before its instrumentation")
        with atheris.instrument_imports(include=["fedpress"], exclude=list(COMPILED_MODULES)):
            for mod in DECODER_MODULES:
                importlib.import_module(mod)
    for mod in (*DECODER_MODULES, *COMPILED_MODULES):
        importlib.import_module(mod)
    import fedpress.registry as registry

    registry.list_codecs()


def write_seeds(target: Target, corpus: Path) -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = target.seeds() + target.edge_seeds()
    for s in seeds:
        (corpus / f"seed-{hashlib.sha1(s).hexdigest()}").write_bytes(s)
    return len(seeds)


def fuzz(name: str, corpus: Path, findings: Path, libfuzzer_args: list[str]) -> None:
    """Fuzz target ``name`` (in this process: libFuzzer ends it). A Python exception
    other than the allowed ones is recorded under ``findings`` (input, traceback) and
    fuzzing goes on, once per signature; crashes, hangs and memory blow-ups end the
    process with libFuzzer's own artifact."""
    import atheris

    _import_decoders(instrument=True)
    target = TARGETS[name]
    n_seeds = write_seeds(target, corpus)
    findings.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for s in sorted(corpus.iterdir()):  # warm up: numba kernels load before timing
        if s.name.startswith("seed-"):
            try:
                target.check(s.read_bytes())
            except Exception:  # a seed that fails is itself a finding
                record(name, s.read_bytes(), sys.exc_info()[1], findings, seen)
    print(f"fuzz: target {name}, {n_seeds} seeds", flush=True)

    def test_one(data: bytes) -> None:
        try:
            target.check(data)
        except Exception as exc:  # all but the allowed errors
            record(name, data, exc, findings, seen)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return mutate(target.layout, data, max_size, seed, atheris.Mutate)

    atheris.Setup([sys.argv[0], *libfuzzer_args, str(corpus)], test_one,
                  custom_mutator=mutator)
    atheris.Fuzz()


def record(name: str, data: bytes, exc: BaseException | None, findings: Path,
           seen: set[str]) -> None:
    assert exc is not None
    sig = signature(exc)
    if sig in seen:
        return
    seen.add(sig)
    sha = hashlib.sha1(data).hexdigest()
    (findings / f"{name}-{sha}.bin").write_bytes(data)
    text = "".join(traceback.format_exception(exc))
    (findings / f"{name}-{sha}.txt").write_text(f"{sig}\n{text}")
    print(f"fuzz: FINDING {sig} ({name}-{sha}.bin)", flush=True)


def replay(name: str, files: list[Path]) -> int:
    """Run each file through target ``name``; print one JSON line per file. Returns the
    number of files that broke the contract (a crash ends the process instead)."""
    import faulthandler

    faulthandler.enable()
    _import_decoders(instrument=False)
    target = TARGETS[name]
    bad = 0
    for f in files:
        try:
            target.check(f.read_bytes())
            result = {"file": str(f), "ok": True}
        except Exception as exc:  # reported, not raised
            bad += 1
            result = {"file": str(f), "ok": False, "signature": signature(exc),
                      "traceback": "".join(traceback.format_exception(exc))}
        print(json.dumps(result), flush=True)
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="list the targets")
    p.add_argument("--fuzz", metavar="NAME", choices=sorted(TARGETS))
    p.add_argument("--replay", metavar="NAME", choices=sorted(TARGETS))
    p.add_argument("--corpus", type=Path)
    p.add_argument("--findings", type=Path)
    p.add_argument("--seeds", metavar="NAME", choices=sorted(TARGETS),
                   help="write target NAME's seeds into --corpus and exit")
    p.add_argument("rest", nargs="*", help="files (--replay) or libFuzzer flags (--fuzz, "
                   "after --)")
    args = p.parse_args(argv)
    if args.list:
        for t in TARGETS:
            print(t)
        return 0
    if args.seeds:
        _import_decoders(instrument=False)
        print(write_seeds(TARGETS[args.seeds], args.corpus))
        return 0
    if args.replay:
        return 1 if replay(args.replay, [Path(f) for f in args.rest]) else 0
    if args.fuzz:
        if args.corpus is None or args.findings is None:
            p.error("--fuzz needs --corpus and --findings")
        fuzz(args.fuzz, args.corpus, args.findings, args.rest)
        return 0
    p.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
