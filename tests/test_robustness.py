"""Regression tests for robustness holes found in review: each was a crash, a leaked
exception type, a frame the decoder refused, or a missed bound check."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import numpy as np
import pytest

import fedpress
from fedpress.abc import Codec, TensorSpec
from fedpress.eblc.base import ErrorBoundedCodec
from fedpress.frame import KIND_TENSOR, KIND_UPDATE, Frame, Record, StateTag, pack
from fedpress.registry import register_codec, unregister_codec

from .common import EB_CODECS, TRUSTED, available, run_isolated


def _frame(cfg: dict[str, Any], spec: TensorSpec, payload: bytes,
           tag: StateTag | None = None, kind: int = KIND_TENSOR) -> bytes:
    return pack(Frame(kind, [cfg], [Record("t", 0, spec, payload, tag)]))


def test_truncated_zfp_stream_does_not_crash() -> None:
    script = (
        "import numpy as np, fedpress\n"
        "from fedpress.frame import pack, Frame, Record, KIND_TENSOR\n"
        "n = 3_000_000\n"
        "x = np.random.default_rng(1).standard_normal(n).astype(np.float32)\n"
        "c = fedpress.make_codec('zfp', 'abs', 1e-6)\n"
        "p = c.encode(x)\n"
        "for keep in (16, 1000, len(p) // 2):\n"
        "    f = pack(Frame(KIND_TENSOR, [c.get_config()], [Record('', 0,\n"
        "             fedpress.TensorSpec((n,), np.dtype('f4')), p[:10 + keep])]))\n"
        "    try:\n"
        "        y = fedpress.decompress(f)\n"
        "        assert y.shape == (n,)\n"
        "    except fedpress.FormatError:\n"
        "        pass\n"
        "print('zfp-truncated-ok')\n"
    )
    run_isolated(script, "zfp-truncated-ok")


@pytest.mark.parametrize("codec", available(EB_CODECS))
def test_rel_bound_of_a_huge_float64_range(codec: str) -> None:
    x = np.array([-1e308, 1e308, 0.0, 5e307] * 10)
    y = fedpress.decompress(fedpress.compress(x, codec=codec, eb=1e-2), TRUSTED)
    assert np.all(np.abs(y - x) <= np.finfo(np.float64).max)
    assert np.all(np.abs(y / 1e308 - x / 1e308) <= 2e-2)


def test_oversized_numbers_in_configs() -> None:
    with pytest.raises(fedpress.ConfigError):
        fedpress.get_codec("sz3", eb=10**400)
    spec = TensorSpec((3,), np.dtype("f4"))
    for cfg in ({"id": "sz3", "eb": 10**400}, {"id": "zstd", "level": "5"},
                {"id": "sz3", "mode": ["rel"]}, {"id": "szx", "block_size": 1.5}):
        with pytest.raises(fedpress.FormatError):
            fedpress.decompress(_frame(cfg, spec, b"\0" * 8))


class _Fragile(Codec):
    codec_id = "test-fragile"

    def encode(self, x: np.ndarray) -> bytes:
        return x.tobytes()

    def decode(self, payload: Any, spec: TensorSpec) -> np.ndarray:
        raise ValueError("this plug-in does not validate")


def test_codec_exceptions_become_format_errors() -> None:
    register_codec(_Fragile)
    try:
        blob = fedpress.compress(np.zeros(4, np.float32), codec="test-fragile")
        with pytest.raises(fedpress.FormatError, match="failed"):
            fedpress.decompress(blob)
        upd = fedpress.encode_update({"a": np.zeros(4, np.float32)}, plan="test-fragile")
        with pytest.raises(fedpress.FormatError, match="failed"):
            fedpress.decode_update(upd)
    finally:
        unregister_codec("test-fragile")


def test_records_a_codec_cannot_have_made() -> None:
    payload = fedpress.get_codec("sz3").encode(np.arange(100, dtype=np.float32))
    with pytest.raises(fedpress.FormatError, match="cannot produce"):
        fedpress.decompress(_frame({"id": "sz3", "mode": "rel", "eb": 0.01,
                                    "algorithm": "interp_lorenzo"},
                                   TensorSpec((100,), np.dtype("i4")), payload), TRUSTED)
    z = fedpress.get_codec("zstd").encode(np.zeros(3, np.float32))
    with pytest.raises(fedpress.FormatError, match="state tag"):
        fedpress.decode_update(_frame({"id": "zstd", "level": 3}, TensorSpec((3,), np.dtype("f4")),
                                      z, tag=StateTag(0, b"\0" * 8), kind=KIND_UPDATE))


def test_zstd_payload_with_trailing_bytes() -> None:
    x = np.arange(10, dtype=np.float32)
    blob = fedpress.compress(x, codec="zstd")
    payload = fedpress.frame.unpack(blob).records[0].payload
    for extra in (b"\0", bytes(payload)):
        bad = _frame({"id": "zstd", "level": 3}, TensorSpec((10,), np.dtype("f4")),
                     bytes(payload) + extra)
        with pytest.raises(fedpress.FormatError):
            fedpress.decompress(bad)


def test_non_contiguous_buffer_is_a_format_error() -> None:
    blob = fedpress.compress(np.zeros(10, np.float32), codec="zstd")
    with pytest.raises(fedpress.FormatError, match="contiguous"):
        fedpress.decompress(memoryview(blob + blob)[::2])


def test_empty_state_file(tmp_path: Any) -> None:
    store = fedpress.DirStateStore(tmp_path)
    store.put("p", "t", fedpress.TensorState({"a": np.arange(3)}))
    next(tmp_path.glob("*.npz")).write_bytes(b"")
    with pytest.raises(fedpress.FormatError):
        store.get("p", "t")


def test_dict_plans_refuse_options_they_would_ignore() -> None:
    with pytest.raises(fedpress.ConfigError, match="dict plan"):
        fedpress.Plan.build({"default": "sz3"}, algorithm="interp")
    with pytest.raises(fedpress.ConfigError, match="dict plan"):
        fedpress.Plan.build({"default": "sz3"}, threshold=10)


def test_codecs_from_many_threads(rng: np.random.Generator) -> None:
    x = rng.standard_normal(20_000).astype(np.float32)
    errors: list[BaseException] = []

    def work(codec: str) -> None:
        try:
            for _ in range(3):
                y = fedpress.decompress(fedpress.compress(x, codec=codec, eb=1e-3), TRUSTED)
                assert np.abs(y - x).max() <= 1e-3 * float(x.max() - x.min())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,))
               for c in available(EB_CODECS) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


class _Sloppy(ErrorBoundedCodec):
    """A core that misses the bound by a fixed amount (to test the envelope's check)."""

    codec_id = "test-sloppy"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "miss")

    def __init__(self, mode: str = "abs", eb: float = 1e-2, miss: float = 2.0) -> None:
        super().__init__(mode, eb)
        self.miss = miss

    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        return b""

    def _decode_core(self, data: Any, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        base = np.linspace(-1, 1, n)
        with np.errstate(over="ignore"):  # float16 + a 1e39 miss overflows to inf on purpose
            return (base + np.where(np.arange(n) % 2, 1, -1) * eb_abs * self.miss).astype(dtype)


@pytest.mark.parametrize("eb,miss,dtype", [(1e-45, 1.5, np.float32), (1e-40, 1.2, np.float32),
                                           (1e39, 2.0, np.float16), (1e-3, 1.000001, np.float32),
                                           (1e-300, 3.0, np.float64)])
def test_envelope_catches_misses_at_extreme_bounds(eb: float, miss: float,
                                                   dtype: type) -> None:
    register_codec(_Sloppy)
    try:
        x = np.linspace(-1, 1, 64).astype(dtype)
        y = fedpress.decompress(fedpress.compress(x, codec="test-sloppy", mode="abs", eb=eb,
                                                  miss=miss))
        assert np.all(np.isfinite(y))
        assert np.abs(y.astype(np.float64) - x.astype(np.float64)).max() <= eb
    finally:
        unregister_codec("test-sloppy")
