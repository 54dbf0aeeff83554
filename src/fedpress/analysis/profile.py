"""The coding error of a frame, tensor by tensor: what ``x - x'`` looks like.

:func:`error_profile` decodes a frame (under :class:`~fedpress.Limits`, as any
decoder), pairs each decoded tensor with the original it was coded from, and
describes the error ``e = x - x'`` of each: its histogram, the fitted Laplace,
Gaussian and uniform distributions with their Kolmogorov-Smirnov distances
(:mod:`fedpress.analysis.fit`), its largest magnitude against the bound the frame
declares, its correlation with ``x`` and its lag-1 autocorrelation.
:func:`profile_arrays` does the same for two arrays already at hand.

These are measurements of a deterministic function of the input; they say what
the error looks like, not that it protects anything (see the docs' page on error
profiles).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

from ..api import decompress
from ..api import inspect as inspect_frame
from ..dtypes import as_state_dict, to_numpy
from ..errors import ConfigError
from ..frame import DEFAULT_LIMITS, KIND_TENSOR, Limits, peek_kind
from ..update import decode_update
from .fit import Fit, fit_all

__all__ = ["DEFAULT_BINS", "ErrorProfile", "Histogram", "error_profile", "profile_arrays"]

#: histogram bins of a profile unless told otherwise
DEFAULT_BINS = 64


@dataclass(frozen=True)
class Histogram:
    """Counts of the error values in equal-width bins.

    Attributes
    ----------
    edges : numpy.ndarray
        ``bins + 1`` bin edges (float64), symmetric about 0: ``[-m, m]`` with ``m`` the
        largest ``|e|``.
    counts : numpy.ndarray
        ``bins`` counts (int64).
    """

    edges: np.ndarray
    counts: np.ndarray

    def density(self) -> np.ndarray:
        """The counts as a probability density (integrates to 1; zeros if empty)."""
        total = self.counts.sum()
        widths = np.diff(self.edges)
        if total == 0:
            return np.zeros_like(widths)
        return self.counts / (total * widths)

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        """``edges`` and ``counts`` as lists."""
        return {"edges": self.edges.tolist(), "counts": self.counts.tolist()}


@dataclass(frozen=True)
class ErrorProfile:
    """What the coding error ``e = x - x'`` of one tensor looks like.

    Attributes
    ----------
    name : str
        The tensor's name in the frame (``""`` for a single-tensor frame).
    codec : str or None
        The id of the codec that coded it.
    shape : tuple of int
    dtype : str
    count : int
        Values compared: the positions where ``x`` is finite (NaN and Inf come back
        exactly from every codec and are left out).
    nonfinite : int
        Positions left out because ``x`` is NaN or Inf there.
    bound : float or None
        The absolute error bound the frame declares for this tensor (``eb_abs``);
        None for codecs without one (lossless or not error-bounded).
    max_abs : float
        ``max |e|`` over the compared positions (``inf`` if the decoded value is not
        finite where ``x`` is).
    mean : float
        Mean error (the bias).
    laplace, gaussian, uniform : Fit
        The maximum-likelihood fits and their Kolmogorov-Smirnov distances
        (:mod:`fedpress.analysis.fit`).
    corr_x : float
        Pearson correlation of ``e`` with ``x`` (NaN when either is constant).
    lag1 : float
        Lag-1 autocorrelation of ``e`` in the tensor's flattened (C) order, the order
        the codecs see: ``sum (e_t - m)(e_t+1 - m) / sum (e_t - m)^2`` (NaN when ``e``
        is constant).
    histogram : Histogram
    """

    name: str
    codec: str | None
    shape: tuple[int, ...]
    dtype: str
    count: int
    nonfinite: int
    bound: float | None
    max_abs: float
    mean: float
    laplace: Fit
    gaussian: Fit
    uniform: Fit
    corr_x: float
    lag1: float
    histogram: Histogram = field(repr=False)

    @property
    def fits(self) -> dict[str, Fit]:
        """``{family: Fit}`` for the three families."""
        return {"laplace": self.laplace, "gaussian": self.gaussian, "uniform": self.uniform}

    @property
    def exact(self) -> bool:
        """Whether every compared value came back exactly."""
        return self.max_abs == 0

    @property
    def within_bound(self) -> bool | None:
        """``max_abs <= bound``, or None when the frame declares no bound."""
        return None if self.bound is None else bool(self.max_abs <= self.bound)

    @property
    def best_fit(self) -> str | None:
        """The family with the smallest KS distance (None when none has one)."""
        scored = [(f.ks, name) for name, f in self.fits.items() if not math.isnan(f.ks)]
        return min(scored)[1] if scored else None

    def to_dict(self, histogram: bool = True) -> dict[str, Any]:
        """The profile as plain Python values (JSON- and CSV-friendly; NaN kept).

        Parameters
        ----------
        histogram : bool
            Include the histogram's edges and counts.
        """
        out: dict[str, Any] = {
            "name": self.name, "codec": self.codec, "shape": list(self.shape),
            "dtype": self.dtype, "count": self.count, "nonfinite": self.nonfinite,
            "bound": self.bound, "max_abs": self.max_abs,
            "max_over_bound": (self.max_abs / self.bound if self.bound else None),
            "within_bound": self.within_bound, "mean": self.mean,
        }
        for name, fit in self.fits.items():
            out[name] = fit.to_dict()
        out.update(best_fit=self.best_fit, corr_x=self.corr_x, lag1=self.lag1)
        if histogram:
            out["histogram"] = self.histogram.to_dict()
        return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    return float(np.dot(da, db)) / den if den > 0 else math.nan


def _lag1(e: np.ndarray) -> float:
    if e.size < 2:
        return math.nan
    d = e - e.mean()
    den = float(np.dot(d, d))
    return float(np.dot(d[:-1], d[1:])) / den if den > 0 else math.nan


def _histogram(e: np.ndarray, bins: int) -> Histogram:
    m = float(np.max(np.abs(e))) if e.size else 0.0
    span = (-m, m) if m > 0 else (-0.5, 0.5)
    counts, edges = np.histogram(e, bins=bins, range=span)
    return Histogram(edges.astype(np.float64), counts.astype(np.int64))


def profile_arrays(x: Any, y: Any, *, bound: float | None = None, name: str = "",
                   codec: str | None = None, bins: int = DEFAULT_BINS) -> ErrorProfile:
    """Profile the error ``x - y`` of two arrays of one shape.

    Parameters
    ----------
    x : array-like
        The original.
    y : array-like
        What a decoder returned for it.
    bound : float, optional
        The absolute error bound ``y`` was coded under, if any.
    name, codec : str
        Labels carried into the profile.
    bins : int
        Histogram bins.

    Returns
    -------
    ErrorProfile

    Raises
    ------
    ConfigError
        Shapes differ, or ``bins`` is not a positive integer.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    xa, ya = to_numpy(x), to_numpy(y)
    if xa.shape != ya.shape:
        raise ConfigError(f"tensor {name!r}: the original has shape {xa.shape}, "
                          f"the decoded one {ya.shape}")
    x64 = xa.astype(np.float64).reshape(-1)
    y64 = ya.astype(np.float64).reshape(-1)
    fin = np.isfinite(x64)
    xs = x64[fin]
    err = xs - y64[fin]
    ok = np.isfinite(err)
    if not ok.all():
        max_abs = math.inf
        err, xs = err[ok], xs[ok]
    else:
        max_abs = float(np.max(np.abs(err))) if err.size else 0.0
    fits = fit_all(err)
    return ErrorProfile(
        name=name, codec=codec, shape=tuple(xa.shape), dtype=str(xa.dtype),
        count=int(fin.sum()), nonfinite=int(fin.size - fin.sum()),
        bound=None if bound is None else float(bound), max_abs=max_abs,
        mean=float(err.mean()) if err.size else math.nan,
        laplace=fits["laplace"], gaussian=fits["gaussian"], uniform=fits["uniform"],
        corr_x=_pearson(err, xs), lag1=_lag1(err), histogram=_histogram(err, bins))


def _is_state_dict(x: Any) -> bool:
    return isinstance(x, Mapping) or callable(getattr(x, "state_dict", None))


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _pair(x: Any, decoded: dict[str, np.ndarray],
          single: bool) -> dict[str, tuple[str, np.ndarray]]:
    """For each decoded name: the name to report and the original tensor; ConfigError
    when the frame's tensors and the original's do not match."""
    if not _is_state_dict(x):
        if len(decoded) != 1:
            raise ConfigError(f"the frame holds {len(decoded)} tensors "
                              f"({_names(list(decoded))}); pass the state dict it was "
                              "encoded from, not one array")
        name = next(iter(decoded))
        return {name: (name, to_numpy(x))}
    sd = as_state_dict(x)
    if single:
        if len(sd) != 1:
            raise ConfigError(f"this is a single-tensor frame, the original holds {len(sd)} "
                              "tensors; pass the one array it was compressed from")
        [(name, orig)] = sd.items()
        return {"": (name, orig)}
    missing = [n for n in decoded if n not in sd]
    extra = [n for n in sd if n not in decoded]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the frame holds {_names(missing)}, which the original lacks")
        if extra:
            parts.append(f"the original holds {_names(extra)}, which the frame lacks")
        raise ConfigError("the frame does not match the original: " + "; ".join(parts))
    return {n: (n, sd[n]) for n in decoded}


@overload
def error_profile(x: Mapping[str, Any], blob: bytes | bytearray | memoryview, *,
                  limits: Limits = ..., reference: Any = ...,
                  bins: int = ...) -> dict[str, ErrorProfile]: ...


@overload
def error_profile(x: Any, blob: bytes | bytearray | memoryview, *,
                  limits: Limits = ..., reference: Any = ...,
                  bins: int = ...) -> ErrorProfile | dict[str, ErrorProfile]: ...


def error_profile(x: Any, blob: bytes | bytearray | memoryview, *,
                  limits: Limits = DEFAULT_LIMITS, reference: Any = None,
                  bins: int = DEFAULT_BINS) -> ErrorProfile | dict[str, ErrorProfile]:
    """Decode ``blob`` and profile its coding error against the original ``x``.

    Parameters
    ----------
    x : array-like, torch.Tensor, state dict or torch module
        What was encoded: one array for a frame of :func:`fedpress.compress` (or an
        update frame of one tensor), a state dict for a frame of
        :func:`fedpress.encode_update` / :meth:`fedpress.UpdateEncoder.encode`.
    blob : bytes
        The frame.
    limits : Limits
        What the decoder accepts (as :func:`fedpress.decompress`); frames of codecs
        that are not safe on a peer's bytes (``sz2``, ``sz3``) need, for a frame one
        wrote oneself, ``fedpress.trusting("sz3")``, or ``Limits(isolate=...)``.
    reference : state dict, optional
        The reference the frame was coded against (``encode(..., reference=...)``).
    bins : int
        Histogram bins per tensor.

    Returns
    -------
    ErrorProfile or dict
        One :class:`ErrorProfile` when ``x`` is one array; ``{name: ErrorProfile}`` in
        the frame's order when ``x`` is a state dict.

    Raises
    ------
    FormatError
        ``blob`` is not a frame this decoder accepts.
    ConfigError
        The frame's tensors do not match ``x`` (names, shapes or dtypes).
    StateDesyncError
        A codec with mirrored state needs earlier frames first.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    single = peek_kind(blob) == KIND_TENSOR
    if single:
        decoded = {"": decompress(blob, limits)}
    else:
        decoded = decode_update(blob, limits, reference=reference)
    described = {t["name"]: t for t in inspect_frame(blob, limits)["tensors"]}
    originals = _pair(x, decoded, single)
    profiles: dict[str, ErrorProfile] = {}
    for key, y in decoded.items():
        name, orig = originals[key]
        if orig.shape != y.shape or orig.dtype != y.dtype:
            label = f"tensor {name!r}" if name else "the tensor"
            raise ConfigError(f"{label}: the original is {orig.dtype}{list(orig.shape)}, "
                              f"the frame's {y.dtype}{list(y.shape)}")
        info = described[key]
        profiles[name] = profile_arrays(orig, y, bound=info.get("eb_abs"), name=name,
                                        codec=info.get("codec"), bins=bins)
    if _is_state_dict(x):
        return profiles
    return next(iter(profiles.values()))
