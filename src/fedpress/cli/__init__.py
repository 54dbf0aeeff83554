"""The ``fedpress`` command line.

::

    fedpress compress model.pt -o model.fpz --plan fedsz --eb 1e-2
    fedpress inspect model.fpz [--json]
    fedpress decompress model.fpz -o decoded.safetensors
    fedpress codecs [--json]
    fedpress bench model.pt --codecs sz3,zstd --eb 1e-2,1e-3 --json results.json
    fedpress simulate --dataset digits --model mlp --plan fpz
    fedpress compare --plans none,fedsz,fpz
    fedpress advise model.pt --codecs fpz,sz3
    fedpress recommend --model cnn --accuracy-budget 0.5 --uplink-mbps 10

Tensor files are ``.npy``, ``.npz``, ``.safetensors`` and ``.pt``/``.pth``
(see :mod:`fedpress.io`), written atomically (an interrupted write leaves the
previous file whole). fedpress's own errors and missing files end with a
one-line ``error: ...`` on stderr and exit status 2.

Decoding commands accept the codecs whose decoders are safe on untrusted bytes
(every registered codec but ``sz2``); ``--allow CODEC`` adds one, ``--isolate
CODEC`` decodes one in a child process (see :class:`fedpress.Limits`).

Modules: :mod:`~fedpress.cli.common` (the Typer app, consoles, errors),
:mod:`~fedpress.cli.options` (shared options, value parsing, the simulator's
flags), :mod:`~fedpress.cli.render` (number formats, tables),
:mod:`~fedpress.cli.tensors` (compress, decompress, inspect, codecs),
:mod:`~fedpress.cli.bench`, :mod:`~fedpress.cli.sim` (simulate, compare,
advise) and :mod:`~fedpress.cli.frontier` (recommend).
"""

from __future__ import annotations

import sys
import types
from typing import Any

# importing the command modules registers their commands, in the order of --help
# (bench imports tensors first); the private names are the helpers' earlier names,
# kept importable from here
from . import bench, frontier, sim, tensors  # noqa: F401
from .bench import bench_one as _bench_one  # noqa: F401
from .common import app
from .tensors import decode_update, fp_inspect  # noqa: F401
from .tensors import probe as _probe  # noqa: F401

__all__ = ["app", "main"]

#: helpers the commands look up in their own modules, re-exported here; assigning one
#: on this package (``monkeypatch.setattr(fedpress.cli, "fp_inspect", ...)``) assigns
#: it in those modules too, so the commands see the replacement
_FORWARDED: dict[str, tuple[types.ModuleType, ...]] = {
    "decode_update": (tensors,),
    "fp_inspect": (tensors, bench),
}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        for module in _FORWARDED.get(name, ()):
            setattr(module, name, value)


sys.modules[__name__].__class__ = _Package

def main() -> None:
    """Entry point of the ``fedpress`` console script."""
    app()
