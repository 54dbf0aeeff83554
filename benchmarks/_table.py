"""A Markdown table from benchmark rows (shared by the benchmark scripts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


def markdown_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str],
                   fmt: Callable[[Any], str] = str) -> str:
    """``cols`` of ``rows`` as a Markdown table, each cell through ``fmt``."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"
