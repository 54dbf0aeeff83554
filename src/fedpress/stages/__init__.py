"""Composable stages of fedpress's own compressors: quantizer, predictors, entropy coders.

Each stage is a pair of pure functions (forward, inverse) over NumPy arrays, and
each coder serialises its own parameters, so codecs (``fpz`` now, the
gradient-aware codec and HGC later) assemble them without knowing their insides.
"""

from types import ModuleType


def kernels() -> ModuleType:
    """The compiled (numba) kernels, imported on first use: numba is heavy to load."""
    from . import _kernels

    return _kernels
