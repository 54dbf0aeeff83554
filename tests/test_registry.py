"""Registry: lookup, third-party codecs through entry points, missing back ends."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fedpress
from fedpress import registry


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real installed distribution (dist-info on sys.path) declaring a codec entry point."""
    (tmp_path / "fp_plugin_demo.py").write_text(textwrap.dedent('''
        import numpy as np
        from fedpress.abc import Codec

        class Negate(Codec):
            """Lossless toy codec: stores -x (bit-exact for ints)."""
            codec_id = "demo-negate"
            def encode(self, x):
                return (-x.astype(np.int64)).tobytes()
            def decode(self, payload, spec):
                return (-np.frombuffer(bytes(payload), np.int64)).astype(spec.dtype).reshape(
                    spec.shape)
    '''))
    dist = tmp_path / "fp_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fp-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[fedpress.codecs]\ndemo-negate = fp_plugin_demo:Negate\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    yield "demo-negate"
    registry.unregister_codec("demo-negate")
    sys.modules.pop("fp_plugin_demo", None)


def test_entry_point_codec_is_found_and_used(plugin_dist: str) -> None:
    assert plugin_dist in fedpress.list_codecs()
    x = np.arange(-5, 5, dtype=np.int32)
    y = fedpress.decompress(fedpress.compress(x, codec=plugin_dist))
    assert np.array_equal(x, y) and y.dtype == np.int32


def test_register_codec_rejects_clashes_and_missing_ids() -> None:
    from fedpress.backends.lossless import ZstdCodec

    class Clash(ZstdCodec):
        pass

    with pytest.raises(fedpress.ConfigError, match="already registered"):
        fedpress.register_codec(Clash)

    class NoId(fedpress.Codec):
        def encode(self, x: np.ndarray) -> bytes:
            return b""

        def decode(self, payload: bytes, spec: fedpress.TensorSpec) -> np.ndarray:
            return np.zeros(0)

    with pytest.raises(fedpress.ConfigError, match="codec_id"):
        fedpress.register_codec(NoId)


@pytest.mark.parametrize("module,codec", [("pysz", "sz3"), ("zfpy", "zfp"), ("hdf5plugin", "sz2"),
                                          ("blosc2", "blosc-lz"), ("lz4.block", "lz4")])
def test_missing_library_names_the_package(module: str, codec: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    x = np.random.default_rng(0).standard_normal(2000).astype(np.float32)
    with pytest.raises(fedpress.MissingDependencyError, match="pip install") as info:
        fedpress.compress(x, codec=codec)
    assert module.split(".")[0] in str(info.value)
    assert isinstance(info.value, ImportError)
