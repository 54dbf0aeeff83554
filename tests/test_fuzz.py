"""Fuzzing the decoders: mutated, truncated and random frames give FormatError, never a
crash, a hang, a huge allocation or a wrong array.

Two layers are exercised:

* frames as they arrive (checksum untouched): every corruption must be a FormatError;
* frames whose checksum was recomputed after mutating them (what a crafted frame looks
  like): the parser and every payload decoder written in fedpress must answer with a
  FormatError or an array of the declared shape and dtype. Native back ends get the
  same treatment in a subprocess (a crash would fail the test, not kill the run) except
  SZ2, whose library segfaults or calls exit() on crafted streams: see docs/format.md.
"""

from __future__ import annotations

import textwrap
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedpress
from fedpress.frame import unpack

from .common import EB_CODECS, LOSSLESS_CODECS, available, run_isolated


def _crc(body: bytes) -> bytes:
    return body + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")


def _frames() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    x = (np.sin(np.linspace(0, 20, 2000)) + 0.1 * rng.standard_normal(2000)).astype(np.float32)
    x[5] = np.nan
    out = {c: fedpress.compress(x, codec=c, eb=1e-3) for c in available(EB_CODECS)}
    out.update({c: fedpress.compress(x, codec=c) for c in available(LOSSLESS_CODECS)})
    out["update"] = fedpress.encode_update(
        {"w.weight": x.reshape(40, 50), "b": np.arange(7, dtype=np.int64),
         "c": np.ones(1500, np.float32)}, plan="fedsz", lossy="szx")
    return out


FRAMES = _frames()
PURE = [c for c in ("szx", "fpz", *LOSSLESS_CODECS, "update") if c in FRAMES]


def _decode(blob: bytes) -> object:
    if blob[5:6] == b"U":
        return fedpress.decode_update(blob)
    return fedpress.decompress(blob)


mutation = st.tuples(
    st.sampled_from(sorted(FRAMES)),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(0, 10**6)),
)


@given(mutation)
def test_corrupted_frames_are_format_errors(case: tuple) -> None:
    name, edits, cut = case
    blob = bytearray(FRAMES[name])
    for pos, val in edits:
        blob[pos % len(blob)] = val
    if cut is not None:
        blob = blob[: cut % len(blob)]
    blob = bytes(blob)
    if blob == FRAMES[name]:
        _decode(blob)  # an edit that changed nothing decodes to what was encoded
        return
    with pytest.raises(fedpress.FormatError):
        _decode(blob)


@settings(max_examples=300)
@given(st.sampled_from(PURE), st.data())
def test_crafted_frames_never_crash_pure_decoders(name: str, data: st.DataObject) -> None:
    blob = bytearray(FRAMES[name][:-4])
    n_edits = data.draw(st.integers(1, 4))
    for _ in range(n_edits):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    crafted = _crc(bytes(blob))
    try:
        out = _decode(crafted)
    except fedpress.FormatError:
        return
    declared = {r.name: r.spec for r in unpack(crafted).records}
    arrays = out if isinstance(out, dict) else {"": out}
    assert set(arrays) == set(declared)
    for name, a in arrays.items():
        assert isinstance(a, np.ndarray)
        assert a.shape == declared[name].shape and a.dtype == declared[name].dtype


@given(st.binary(max_size=400))
def test_random_bytes_after_a_valid_prefix(tail: bytes) -> None:
    for kind in (b"T", b"U"):
        blob = _crc(b"\x89FPZ\x01" + kind + b"\x00" + tail)
        try:
            _decode(blob)
        except fedpress.FormatError:
            pass


@given(st.binary(max_size=200))
def test_random_bytes(blob: bytes) -> None:
    with pytest.raises(fedpress.FormatError):
        fedpress.decompress(blob)
    with pytest.raises(fedpress.FormatError):
        fedpress.inspect(blob)


_NATIVE_SCRIPT = textwrap.dedent("""
    import sys, zlib, numpy as np, fedpress
    codec, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(4000).astype(np.float32)
    good = fedpress.compress(x, codec=codec, eb=1e-3)
    counts = [0, 0]
    for i in range(n):
        b = bytearray(good[:-4])
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(0, len(b)))]
        body = bytes(b)
        try:
            y = fedpress.decompress(body + zlib.crc32(body).to_bytes(4, "little"))
            assert y.shape == x.shape and y.dtype == x.dtype
            counts[0] += 1
        except fedpress.FormatError:
            counts[1] += 1
    print("done", codec, counts)
""")


@pytest.mark.parametrize("codec", [c for c in ("sz3", "zfp") if c in FRAMES])
def test_crafted_frames_native_backends_in_subprocess(codec: str) -> None:
    run_isolated(_NATIVE_SCRIPT, f"done {codec}", codec, "11", "400")
