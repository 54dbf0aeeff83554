"""Helpers every codec test uses (in the spirit of numcodecs' check_encode_decode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fedpress
from fedpress.dtypes import BFLOAT16, FLOAT_DTYPES

EB_CODECS = ("sz3", "sz2", "zfp", "szx", "fpz")
LOSSLESS_CODECS = ("zstd", "blosc-lz", "blosc-zstd", "zlib", "gzip", "xz", "lz4", "raw")


def keep_made(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, got: dict,
              key: str) -> None:
    """Make ``owner.name`` (a class or factory) keep what it makes next in ``got[key]``,
    so a test can look into the objects a run built (a simulator's pool, its server)."""
    make = getattr(owner, name)

    def keep(*args: Any, **kwargs: Any) -> Any:
        got[key] = made = make(*args, **kwargs)
        return made

    monkeypatch.setattr(owner, name, keep)


def available(codec_ids: tuple[str, ...]) -> list[str]:
    """The codecs of ``codec_ids`` that work here (registered and with their library)."""
    from fedpress.registry import unavailable_reason

    return [c for c in codec_ids if unavailable_reason(c) is None]


def run_isolated(script: str, sentinel: str, *args: str, timeout: int = 300) -> None:
    """Run ``script`` in a fresh interpreter; assert it exits 0 and prints ``sentinel``.

    For native back ends that can crash or exit(): a regression fails the test
    instead of ending the test process.
    """
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0 and sentinel in proc.stdout, (
        f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def abs_bound(x: np.ndarray, mode: str, eb: float) -> float:
    """The absolute bound fedpress must honour for ``x`` (computed independently)."""
    if mode == "abs":
        return eb
    v = np.asarray(x, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    return eb * (float(v.max()) - float(v.min()))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-exact equality (NaN payloads and -0.0 included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.tobytes() == b.tobytes()


def assert_within_bound(x: np.ndarray, y: np.ndarray, mode: str, eb: float) -> None:
    """``y`` has ``x``'s shape and dtype, NaN/Inf exactly, and ``max|x - y| <= eb_abs``
    with eb_abs computed from ``x`` (not from ``x - reference``)."""
    assert y.shape == x.shape and y.dtype == x.dtype
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    fin = np.isfinite(x64)
    assert same_bits(x[~fin], y[~fin]), "NaN/Inf must come back exactly"
    if fin.any():
        assert np.abs(x64[fin] - y64[fin]).max() <= abs_bound(x, mode, eb)


#: limits for frames the test itself wrote: every registered codec decodes in-process
#: (the defaults refuse the codecs that are not safe on a peer's bytes)
TRUSTED = fedpress.Limits(codecs=frozenset(fedpress.list_codecs()))


def check_error_bounded(x: np.ndarray, codec: str, mode: str = "rel", eb: float = 1e-2,
                        **config: object) -> tuple[np.ndarray, bytes]:
    """Round trip ``x`` through ``codec`` and assert every promise of an EB codec.

    Shape and dtype kept, NaN/Inf bit-exact in place, and ``|x - x'| <= eb_abs``
    on the output dtype for every finite value.
    """
    blob = fedpress.compress(x, codec=codec, mode=mode, eb=eb, **config)
    y = fedpress.decompress(blob, TRUSTED)
    assert y.shape == x.shape and y.dtype == x.dtype, (y.shape, y.dtype)
    x64 = x.astype(np.float64)
    y64 = y.astype(np.float64)
    fin = np.isfinite(x64)
    assert same_bits(x[~fin], y[~fin]), "non-finite values must survive exactly"
    bound = abs_bound(x, mode, eb)
    if fin.any():
        err = np.abs(x64[fin] - y64[fin])
        assert float(err.max()) <= bound, (codec, float(err.max()), bound)
    info = fedpress.inspect(blob)["tensors"][0]
    if x.size and fin.any():
        assert info["eb_abs"] == bound or np.isclose(info["eb_abs"], bound, rtol=1e-12)
    return y, blob


def check_lossless(x: np.ndarray, codec: str, **config: object) -> bytes:
    blob = fedpress.compress(x, codec=codec, **config)
    y = fedpress.decompress(blob, TRUSTED)
    assert same_bits(x, y)
    return blob


__all__ = ["BFLOAT16", "TRUSTED", "EB_CODECS", "FLOAT_DTYPES", "LOSSLESS_CODECS", "abs_bound",
           "available", "check_error_bounded", "check_lossless", "run_isolated", "same_bits"]


def check_mutated_residual_stream(data: Any, encode: Callable[[np.ndarray], bytes],
                                  decode: Callable[[bytes, int], np.ndarray],
                                  max_n: int) -> None:
    """Encode random residuals, flip a few bytes (hypothesis ``data`` draws where), and
    check the decoder answers with FormatError or a well-formed int64 array."""
    import hypothesis.strategies as st

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    r = np.rint(rng.laplace(0, 2, data.draw(st.integers(1, max_n)))).astype(np.int64)
    blob = bytearray(encode(r))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        out = decode(bytes(blob), r.size)
    except fedpress.FormatError:
        return
    assert out.shape == r.shape and out.dtype == np.int64  # a well-formed array


def check_edited_update_frame(frame: bytes, pos: int, flip: int) -> None:
    """One byte of an update frame edited: the checksum catches it; the same edit
    behind a recomputed checksum decodes to a FormatError or to arrays, or, for a
    mirrored codec's state tag, to a StateDesyncError (never another exception)."""
    import zlib

    import fedpress

    blob = bytearray(frame)
    blob[pos] ^= flip
    with pytest.raises(fedpress.FormatError):
        fedpress.decode_update(bytes(blob))
    body = bytearray(frame[:-4])
    body[pos % len(body)] ^= flip
    resealed = bytes(body) + (zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "little")
    try:
        out = fedpress.decode_update(resealed)
    except (fedpress.FormatError, fedpress.StateDesyncError):
        return
    assert all(isinstance(a, np.ndarray) for a in out.values())
