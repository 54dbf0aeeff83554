"""Number formats, table layout and text clean-up for the command line's output."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
from rich import box
from rich.table import Table

from ..abc import Codec, StatefulCodec

__all__ = ["codec_kind", "compact_table", "first_sentence", "fmt_bytes", "fmt_cr", "fmt_num",
           "fmt_size",
           "jsonable"]


def jsonable(obj: Any) -> Any:
    """Replace non-finite floats by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    return obj


def fmt_bytes(n: int) -> str:
    """A byte count with thousands separators."""
    return f"{n:,}"


def fmt_cr(cr: float | None) -> str:
    """A compression ratio with two decimals (``inf``, or ``-`` when there is none)."""
    if cr is None:
        return "-"
    return "inf" if math.isinf(cr) else f"{cr:.2f}"


def fmt_num(value: float | None) -> str:
    """About three significant digits without exponent notation, in at most 7 characters
    below a million: ``0.0123``, ``1.23``, ``12.3``, ``123``, ``12,345``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    v = float(value)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1 or a == 0:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.2g}"


def fmt_size(n: int) -> str:
    """A byte count in B, kB, MB or GB (powers of 1000), three significant digits."""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.5 or unit == "TB":
            break
    digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
    return f"{value:.{digits}f} {unit}"


def compact_table(title: str | None = None) -> Table:
    """A table with a rule under the header, one space between columns and no edges:
    the layout that keeps the widest tables within 80 columns."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                 collapse_padding=True, padding=(0, 0), show_edge=False)


def codec_kind(cls: type[Codec]) -> str:
    """``error-bounded``, ``lossy`` or ``lossless``, and whether the codec keeps state."""
    kind = "error-bounded" if cls.error_bounded else ("lossy" if cls.lossy else "lossless")
    if issubclass(cls, StatefulCodec):
        kind += f", stateful ({cls.scope.value})"
    return kind


_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``")
_INTERPRETED = re.compile(r"(?<![\w`])`([^`]+)`(?!\w)")
_EMPHASIS = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")


def _quoted(match: re.Match[str]) -> str:
    literal = match.group(1)
    if len(literal) > 1 and literal[0] == literal[-1] and literal[0] in "\"'":
        return literal  # a string value, quoted already
    return f"'{literal}'"


def strip_rst(text: str) -> str:
    """Text with reStructuredText inline markup removed: roles (``:mod:`x```),
    interpreted text and emphasis keep their words and lose their markers; literals
    (option names, values) are put in single quotes."""
    text = _ROLE.sub(lambda m: m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2),
                     text)
    text = _LITERAL.sub(_quoted, text)
    text = _INTERPRETED.sub(r"\1", text)
    return _EMPHASIS.sub(r"\1", text)


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, inline markup stripped."""
    paragraph = (doc or "").strip().split("\n\n", 1)[0]
    text = strip_rst(" ".join(paragraph.split()))
    return _SENTENCE_END.split(text, maxsplit=1)[0]
