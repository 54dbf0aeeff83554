"""The table of ``fedpress inspect --errors``: one row per tensor's error profile."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rich.markup import escape
from rich.table import Table

from ..analysis import ErrorProfile
from .render import compact_table

__all__ = ["ERROR_LEGEND", "error_table"]

#: printed under the table: what its columns mean
ERROR_LEGEND = (
    "e = original - decoded. max, b, sd: max |e|, the Laplace scale and the Gaussian sigma, "
    "as multiples of eb_abs (the declared bound). KS-L/G/U: Kolmogorov-Smirnov distance of "
    "e to the fitted Laplace, Gaussian and uniform (bold: the closest). r(x): correlation "
    "of e with the original; r1: lag-1 autocorrelation of e. A resemblance, not a privacy "
    "guarantee: e is a deterministic function of the input.")


def _ratio(value: float, bound: float | None) -> str:
    if not bound or math.isnan(value):
        return "-"
    r = value / bound
    return "inf" if math.isinf(r) else f"{r:.2f}" if r < 10 else f"{r:.3g}"


def _num(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def error_table(profiles: Mapping[str, ErrorProfile], title: str) -> Table:
    """Per tensor: codec, bound, ``max|e|``, Laplace ``b`` and Gaussian ``sigma`` (over the
    bound), the three KS distances, and the two correlations; fits within 80 columns.

    A tensor that came back exactly shows ``exact``; one over its bound has its
    ``max`` in red."""
    table = compact_table(escape(title))
    table.add_column("name", overflow="fold", min_width=10, ratio=1)
    table.add_column("codec", no_wrap=True, max_width=8, overflow="ellipsis")
    for col in ("eb_abs", "max", "b", "sd", "KS-L", "KS-G", "KS-U", "r(x)", "r1"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in profiles.values():
        name, codec = escape(p.name) or "(tensor)", escape(str(p.codec))
        bound = "-" if p.bound is None else f"{p.bound:.2g}"
        if p.exact or p.count == 0:
            table.add_row(name, codec, bound, "exact" if p.exact else "-",
                          *(["-"] * 7))
            continue
        peak = _ratio(p.max_abs, p.bound)
        if p.within_bound is False:
            peak = f"[red]{peak}[/]"
        best = p.best_fit
        ks = [f"[bold]{_num(f.ks)}[/]" if name_ == best else _num(f.ks)
              for name_, f in p.fits.items()]
        table.add_row(name, codec, bound, peak, _ratio(p.laplace.scale, p.bound),
                      _ratio(p.gaussian.scale, p.bound), *ks, _signed(p.corr_x),
                      _signed(p.lag1))
    return table
