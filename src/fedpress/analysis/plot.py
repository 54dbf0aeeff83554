"""Draw error profiles: each tensor's error histogram with the three fitted densities.

matplotlib is optional; it is imported on the first call, and a missing one is a
:class:`~fedpress.MissingDependencyError` naming the package. The figure is built
without ``pyplot``, so no display or interactive back end is involved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import ConfigError
from ..io import replaced_atomically
from .profile import ErrorProfile

__all__ = ["plot_error_profile"]

#: family -> (label and scale's symbol, colour, line style)
_STYLE = {"laplace": ("Laplace b", "tab:red", "-"),
          "gaussian": ("Gaussian sigma", "tab:blue", "--"),
          "uniform": ("uniform half-width", "tab:green", ":")}


def _profiles(profiles: ErrorProfile | Mapping[str, ErrorProfile] | Iterable[ErrorProfile],
              ) -> list[ErrorProfile]:
    if isinstance(profiles, ErrorProfile):
        return [profiles]
    if isinstance(profiles, Mapping):
        return list(profiles.values())
    return list(profiles)


def _panel(ax: Any, p: ErrorProfile) -> None:
    """One tensor: the density histogram, the fitted densities, the bound."""
    hist = p.histogram
    ax.stairs(hist.density(), hist.edges, fill=True, color="0.8", label="error")
    half = max(float(hist.edges[-1]), p.bound or 0.0) * 1.05
    t = np.linspace(-half, half, 801)
    top = float(hist.density().max())
    for family, fit in p.fits.items():
        if not fit.scale > 0:
            continue
        label, color, style = _STYLE[family]
        pdf = fit.pdf(t)
        top = max(top, float(pdf.max()))
        ax.plot(t, pdf, color=color, linestyle=style, linewidth=1.2,
                label=f"{label} {fit.scale:.3g}, KS {fit.ks:.3f}")
    if p.bound:
        for i, side in enumerate((-p.bound, p.bound)):
            ax.axvline(side, color="black", linewidth=0.8, linestyle="-.",
                       label=None if i else f"bound {p.bound:.3g}")
    ax.set_xlim(-half, half)
    ax.set_ylim(0, 1.7 * top)  # room for the legend above the curves
    ax.set_title(f"{p.name or '(tensor)'} ({p.codec})", fontsize=9)
    ax.set_xlabel("x - x'", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper right")


def plot_error_profile(profiles: ErrorProfile | Mapping[str, ErrorProfile]
                       | Iterable[ErrorProfile], path: str | Path | None = None, *,
                       columns: int = 3, dpi: int = 120) -> Any:
    """Draw each profile's error histogram (as a density) with the fitted Laplace,
    Gaussian and uniform densities and, where the frame declares one, the bound.

    Parameters
    ----------
    profiles : ErrorProfile, dict or list of them
        What :func:`~fedpress.analysis.error_profile` returned. Tensors that came back
        exactly have no error to draw and are left out.
    path : str or Path, optional
        Where to save the figure (the format follows the extension, e.g. ``.png``);
        written atomically (whole or not at all).
    columns : int
        Panels per row.
    dpi : int
        Resolution of the saved file.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    MissingDependencyError
        matplotlib is not installed.
    ConfigError
        No profile has an error to draw.
    """
    drawn = [p for p in _profiles(profiles) if not p.exact and p.count > 0]
    if not drawn:
        raise ConfigError("no tensor has a coding error to draw: every one came back exactly")
    require("matplotlib")
    from matplotlib.figure import Figure

    cols = max(1, min(int(columns), len(drawn)))
    rows = math.ceil(len(drawn) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, p in zip(axes.flat, drawn):
        _panel(ax, p)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    if path is not None:
        fmt = Path(path).suffix.lstrip(".").lower() or "png"
        with replaced_atomically(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt)
    return fig
