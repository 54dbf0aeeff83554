"""What compression error looks like: per-tensor error profiles of a frame.

:func:`error_profile` decodes a frame and describes, per tensor, the error
``x - x'``: histogram, fitted Laplace / Gaussian / uniform scales with their
Kolmogorov-Smirnov distances, the largest error against the declared bound,
and the error's correlation with ``x`` and with itself (lag 1).
:func:`plot_error_profile` draws it (matplotlib, optional).

The profile is a measurement, not a privacy property: a codec's error is a
deterministic, bounded, data-dependent function of its input, which is no
differential-privacy noise whatever its histogram looks like.
"""

from __future__ import annotations

from .fit import FAMILIES, Fit, ks_distance
from .plot import plot_error_profile
from .profile import DEFAULT_BINS, ErrorProfile, Histogram, error_profile, profile_arrays

__all__ = ["DEFAULT_BINS", "FAMILIES", "ErrorProfile", "Fit", "Histogram", "error_profile",
           "ks_distance", "plot_error_profile", "profile_arrays"]
