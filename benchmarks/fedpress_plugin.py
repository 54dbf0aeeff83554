"""fedpress codecs for ``../shared/bench/peers.py --plugin benchmarks/fedpress_plugin.py``.

Registers, for each fedpress codec that is available here:

``fedpress_fpz``, ``fedpress_sz3``, ``fedpress_sz2``, ``fedpress_zfp``, ``fedpress_szx``
(kind ``"eb"``)
    ``fedpress.compress(x, codec, mode="abs", eb=eb_abs)``: the whole fedpress
    frame (header, codec config, checksum, error-bound envelope with its
    encode-time verification and patches) is the blob that peers.py sizes and
    times.
``fedpress_zstd`` (kind ``"lossless"``)
    ``fedpress.compress(x, "zstd")`` (zstd level 3, like peers.py's ``zstd3``).

Decoding is ``fedpress.decompress(blob, fedpress.trusting(codec))``; the element
count peers.py passes is only checked, since the frame carries the shape. A codec that is not
registered or fails a small round trip is skipped with a line on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np

import fedpress

EB = {"fedpress_fpz": "fpz", "fedpress_sz3": "sz3", "fedpress_sz2": "sz2",
      "fedpress_zfp": "zfp", "fedpress_szx": "szx"}
LOSSLESS = {"fedpress_zstd": "zstd"}


def _pair(codec: str, lossless: bool) -> tuple[Callable[..., bytes], Callable[..., np.ndarray]]:
    def compress(x: np.ndarray, eb_abs: float) -> bytes:
        if lossless:
            return fedpress.compress(x, codec=codec)
        return fedpress.compress(x, codec=codec, mode="abs", eb=float(eb_abs))

    trusted = fedpress.trusting(codec)  # its own frames: sz2 decodes here too

    def decompress(blob: Any, n: int) -> np.ndarray:
        y = fedpress.decompress(blob, trusted)
        if y.size != n:
            raise ValueError(f"fedpress {codec}: decoded {y.size} values, expected {n}")
        return y.reshape(-1)

    return compress, decompress


def _probe(compress: Callable[..., bytes], decompress: Callable[..., np.ndarray]) -> None:
    x = np.random.default_rng(0).standard_normal(2048).astype(np.float32)
    y = decompress(compress(x, 1e-2), x.size)
    if y.shape != x.shape:
        raise RuntimeError("round trip changed the shape")


def register_codecs(register: Callable[..., None]) -> None:
    """Register the available fedpress codecs with peers.py's ``register``."""
    have = set(fedpress.list_codecs())
    for table, lossless in ((EB, False), (LOSSLESS, True)):
        for name, codec in table.items():
            if codec not in have:
                print(f"fedpress_plugin: {name} skipped: codec {codec!r} is not registered",
                      file=sys.stderr)
                continue
            c, d = _pair(codec, lossless)
            try:
                _probe(c, d)
            except Exception as exc:  # a broken codec must not stop the run
                print(f"fedpress_plugin: {name} skipped: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                continue
            how = "lossless" if lossless else "mode='abs', eb=eb_abs"
            register(name, c, d, "lossless" if lossless else "eb",
                     f"fedpress {fedpress.__version__} codec {codec!r} ({how}); full frame")
