"""APPFL integration: a compressor APPFL loads by name from its YAML configuration.

APPFL (the framework FedSZ was published in) builds its compressor from
``comm_configs.compressor_configs`` with ``getattr(appfl.compressor, lossy_compressor)``:
only classes found in the module ``appfl.compressor`` can be named, not a module path.
:func:`register` adds :class:`FedpressCompressor` there, after which the three lines
an APPFL user changes are::

    # in the model file APPFL loads (model_path), so that every process runs it
    import fedpress.appfl; fedpress.appfl.register()

    # in the server YAML, under client_configs.comm_configs.compressor_configs
    lossy_compressor: "FedpressCompressor"
    plan: "fedsz"          # any fedpress plan spec; optional (the default)

The usual APPFL keys (``error_bound``, ``error_bounding_mode``, ``param_cutoff``,
``lossless_compressor``) keep their meaning. What goes on the wire is one fedpress
frame (bytes, no pickle). See ``docs/appfl.md``.
"""

from __future__ import annotations

from .._deps import require

require("appfl.compressor", "appfl")

from .compressor import (  # noqa: E402
    APPFL_LOSSLESS,
    APPFL_MODES,
    LAYOUT_KEY,
    NAME,
    FedpressCompressor,
    register,
)

__all__ = ["APPFL_LOSSLESS", "APPFL_MODES", "LAYOUT_KEY", "NAME", "FedpressCompressor",
           "register"]
