"""Composable stages of fedpress's own compressors: quantizer, predictors, entropy
coders, lossless bytes-to-bytes stages.

Each stage is a pair of pure functions (forward, inverse) over NumPy arrays, and
each coder serialises its own parameters, so codecs (``fpz``, ``gaeb``, the gradient
compressors, HGC) assemble them without knowing their insides. The entropy coders
share one interface and one id table (:mod:`.coders`); side tables and lossless
fall-backs go through :data:`.lossless.ZSTD`. This package imports only fedpress's
base modules (errors, byte reader and writer, dtypes), nothing above it.
"""

from types import ModuleType

import numpy as np


def kernels() -> ModuleType:
    """The compiled (numba) kernels, imported on first use: numba is heavy to load."""
    from . import _kernels

    return _kernels


def spread_chunks(v: np.ndarray, chunks: int, size: int) -> np.ndarray:
    """``chunks`` contiguous runs of ``size`` elements spread evenly over ``v``, one
    after the other (a sample that keeps neighbours together, for estimates);
    ``v`` needs at least ``size`` elements."""
    starts = np.linspace(0, v.size - size, chunks).astype(np.int64)
    return np.concatenate([v[s : s + size] for s in starts])
