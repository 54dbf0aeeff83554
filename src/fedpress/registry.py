"""Codec registry: find codecs by id, list them, and load third-party ones.

Third-party packages add codecs through the entry-point group
``fedpress.codecs``; each entry point names a :class:`fedpress.abc.Codec`
subclass, e.g. in ``pyproject.toml``::

    [project.entry-points."fedpress.codecs"]
    mycodec = "mypkg.codecs:MyCodec"
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Collection
from importlib.metadata import entry_points
from typing import Any

from .abc import Codec
from .errors import ConfigError, FedpressError, FormatError

ENTRY_POINT_GROUP = "fedpress.codecs"

_REGISTRY: dict[str, type[Codec]] = {}
_BUILTIN_MODULES = (
    "fedpress.backends.lossless",
    "fedpress.backends.sz3",
    "fedpress.backends.sz2",
    "fedpress.backends.zfp",
    "fedpress.eblc.szx",
    "fedpress.eblc.fpz",
    "fedpress.eblc.gaeb",
    "fedpress.grad.ef",
    "fedpress.grad.topk",
    "fedpress.grad.powersgd",
    "fedpress.grad.quant",
    "fedpress.grad.sign",
    "fedpress.grad.dgc",
    "fedpress.grad.hgc",
    "fedpress.grad.stc",
)
_loaded = False
_loading = False
_LOCK = threading.RLock()


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Register a codec class under its ``codec_id`` (usable as a decorator)."""
    cid = getattr(cls, "codec_id", "")
    if not cid or not isinstance(cid, str):
        raise ConfigError(f"{cls!r} has no codec_id")
    existing = _REGISTRY.get(cid)
    if existing is not None and existing is not cls:
        raise ConfigError(f"codec id {cid!r} is already registered by {existing!r}")
    _REGISTRY[cid] = cls
    return cls


def unregister_codec(codec_id: str) -> None:
    """Remove a codec id (mainly for tests)."""
    _REGISTRY.pop(codec_id, None)


def _load() -> None:
    """Import the built-in codecs, then the entry points' (once per process)."""
    global _loaded, _loading
    if _loaded:
        return
    with _LOCK:  # other threads wait; a re-entrant call (a plug-in's import) returns
        if _loaded or _loading:
            return
        _loading = True
        try:
            _load_all()
        finally:
            _loading = False
        _loaded = True


def _load_all() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
            if _REGISTRY.get(getattr(cls, "codec_id", "")) is cls:
                continue
            register_codec(cls)
        except Exception as exc:  # a broken or clashing plug-in must not break fedpress
            import warnings

            warnings.warn(f"fedpress: codec entry point {ep.name!r} not registered: {exc}",
                          stacklevel=2)


def list_codecs() -> list[str]:
    """Ids of all registered codecs, sorted."""
    _load()
    return sorted(_REGISTRY)


def peer_safe_codecs() -> frozenset[str]:
    """Ids of the registered codecs whose decoders are safe on a peer's bytes
    (``Codec.peer_safe``): what the default :class:`fedpress.Limits` accept."""
    _load()
    return frozenset(cid for cid, cls in _REGISTRY.items() if cls.peer_safe)


def codec_class(codec_id: str) -> type[Codec]:
    _load()
    try:
        return _REGISTRY[codec_id]
    except KeyError:
        raise ConfigError(
            f"unknown codec {codec_id!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def get_codec(codec_id: str, **config: Any) -> Codec:
    """Instantiate the codec ``codec_id`` with its configuration."""
    return codec_class(codec_id).from_config(config)


def codec_from_config(config: dict[str, Any], allowed: Collection[str] | None = None) -> Codec:
    """Rebuild a codec from a frame's config; FormatError if it is not valid.

    ``allowed``, if given, is the set of codec ids the caller accepts: every codec of
    the tree built (a wrapper's inner codecs too, however its config spells them) must
    be in it. Decoders pass their :class:`fedpress.Limits` instead (``Limits.check_codec``).
    """
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        raise FormatError("codec config must be an object with a string 'id'")
    if allowed is not None and config["id"] not in allowed:
        raise FormatError(f"codec {config['id']!r} is not accepted by this decoder")
    _load()
    cls = _REGISTRY.get(config["id"])
    if cls is None:
        raise FormatError(
            f"frame uses codec {config['id']!r}, which is not registered here "
            "(a missing plug-in?)"
        )
    try:
        codec = cls.from_config(config)
    except Exception as exc:  # whatever a codec's constructor raises on bad values
        raise FormatError(f"invalid config for codec {config['id']!r}: {exc}") from exc
    if allowed is not None:
        for c in codec.tree():
            if c.codec_id not in allowed:
                raise FormatError(f"codec {c.codec_id!r} is not accepted by this decoder")
    return codec


def unavailable_reason(codec_id: str) -> str | None:
    """Why codec ``codec_id`` cannot be used here, or None if it works.

    Registered is not enough: the back end library may be missing or broken,
    so this builds the codec with its defaults and round-trips a small array.
    """
    import numpy as np

    from .abc import Scope, StatefulCodec, TensorSpec
    from .state import TensorState

    try:
        codec = codec_class(codec_id).from_config({})
        x = np.linspace(-1.0, 1.0, 256, dtype=np.float32)
        spec = TensorSpec.of(x)
        if isinstance(codec, StatefulCodec):
            payload = codec.encode(x, TensorState())
            codec.decode(payload, spec, TensorState() if codec.scope is Scope.MIRRORED else None)
        else:
            codec.decode(codec.encode(x), spec)
    except Exception as exc:  # missing library, broken back end, unknown id
        return str(exc) if isinstance(exc, FedpressError) else f"{type(exc).__name__}: {exc}"
    return None
