"""Flower integration: compressed traffic for Flower apps (``pip install fedpress[flower]``).

Two pieces, one on each end:

* :class:`CompressedStrategy` wraps any Message-API strategy on the server and holds
  the plan of each direction;
* :func:`compression_mod` goes in the ClientApp's ``mods``.

Frames travel as Flower ``Array``s of stype :data:`STYPE` (no pickle). HGC's and
PowerSGD's multi-phase exchanges run as more train messages per round
(an uplink spec with ``aggregate=hgc`` or ``aggregate=powersgd``; :mod:`.rounds`,
:mod:`.phases`). See the README's "Use with Flower"
and ``examples/flower/``.
"""

from __future__ import annotations

from .._deps import require

require("flwr", "fedpress[flower]")

from .link import Link  # noqa: E402
from .mod import compression_mod  # noqa: E402
from .strategy import CompressedStrategy, FailedRoundsError  # noqa: E402
from .wire import STYPE  # noqa: E402

__all__ = ["STYPE", "CompressedStrategy", "FailedRoundsError", "Link", "compression_mod"]
