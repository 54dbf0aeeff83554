"""``FedpressCompressor``: an APPFL compressor backed by a fedpress plan.

APPFL calls ``compress_model(model)`` on a client (its trainer's parameters, a state
dict of tensors) and ``decompress_model(blob, model)`` on the server (``model``: the
server's ``torch.nn.Module``, a sample of what the state dict holds). This class turns
the state dict into one fedpress update frame and back: bytes that describe
themselves, checksummed, without pickle, so the server never unpickles a client's
bytes.

Configuration (APPFL's ``compressor_configs``; a ``DictConfig`` or a plain mapping)
----------------------------------------------------------------------------------

fedpress's own keys:

``plan``
    A fedpress plan spec, as in the simulator and the Flower integration:
    ``"fedsz"`` (the default; FedSZ's partition with ``fpz``), ``"fedsz(lossy=sz3)"``,
    ``"fedsz-paper"``, ``"sz3(algorithm=interp)"``, ``"ef:topk(ratio=0.01)"``, or a
    mapping of rules (``{"re:bias$": "zstd", "default": "sz3"}``).
``eb``, ``mode``
    The error bound of the plan's error-bounded codecs (``mode``: ``"abs"`` or
    ``"rel"``).
``plan_options``
    A mapping of further plan options (``lossy``, ``lossless``, ``threshold``, codec
    options, ``residual_feedback``); they add to the spec's parentheses.

APPFL's shared keys, read when the fedpress key is absent (fedpress's keys win):

``error_bound`` (``eb``), ``error_bounding_mode`` (``mode``: ``ABS`` or ``REL``; the
other SZ modes have no fedpress equivalent and are refused), ``param_cutoff``
(``threshold``: APPFL's partition, "weight" tensors with more elements go to the lossy
codec, is FedSZ's, which plan ``fedsz`` follows), ``lossless_compressor``
(``lossless``: ``blosc``, ``zstd``, ``gzip``, ``zlib``, ``lzma``, mapped to fedpress's
``blosc-lz``, ``zstd``, ``gzip``, ``zlib``, ``xz``; fedpress codec ids are taken as
they are). ``enable_compression`` and ``lossy_compressor`` are APPFL's and not read
here.

What a plan may hold
--------------------

Stateless codecs and codecs whose state only the sender keeps (``ef:``, ``dgc``,
``stc``, ``powersgd``; kept in this object, which APPFL creates once per client
agent). Codecs whose state both ends mirror (``gaeb``, ``hgc``) are refused:
APPFL's ``decompress_model`` is not told which client sent the bytes, so the server
cannot keep one state per client. ``send`` and ``reference`` (the Flower links'
settings) do not apply: APPFL sends what its trainer returns.

What a model may hold
---------------------

A mapping of names to ``torch.Tensor``/``numpy.ndarray`` values; a value may itself be
such a mapping (APPFL's "nested" models), to any depth. ``batched=True`` takes a list
or a mapping of such models. A flat model is an ordinary fedpress update frame
(``fedpress inspect`` reads it); nesting and batches are recorded in the frame's
metadata (``LAYOUT_KEY``: the path of every tensor), never pickled. Values of other
types (strings, Python numbers, ``None``) cannot be carried without pickle and are
refused with their key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from appfl.compressor.base_compressor import BaseCompressor

import fedpress

from ..abc import is_mirrored
from ..dtypes import to_numpy, to_torch
from ..errors import ConfigError, FormatError
from ..frame import KIND_UPDATE, Limits
from ..frame import unpack as unpack_frame
from ..partition import Plan

#: the name APPFL's YAML gives (``lossy_compressor``) once :func:`register` ran
NAME = "FedpressCompressor"
#: frame metadata key of a nested or batched model's layout
LAYOUT_KEY = "appfl-layout"
#: APPFL's error-bounding modes fedpress has (the SZ modes ABS_AND_REL, PSNR, ... not)
APPFL_MODES = {"ABS": "abs", "REL": "rel"}
#: APPFL's ``lossless_compressor`` names -> fedpress codec ids
APPFL_LOSSLESS = {"blosc": "blosc-lz", "zstd": "zstd", "gzip": "gzip", "zlib": "zlib",
                  "lzma": "xz"}
#: Flower link settings, which have no meaning here
_LINK_SETTINGS = ("send", "reference")

Path = tuple[str, ...]


def register() -> type[FedpressCompressor]:
    """Make ``lossy_compressor: FedpressCompressor`` work in APPFL configurations.

    APPFL resolves the name with ``getattr(appfl.compressor, name)``; this sets that
    attribute (and lists the name in ``appfl.compressor.__all__``). Idempotent. Call it
    in every process that builds an APPFL agent, before the agent is built: the top of
    the model file APPFL loads (``model_configs.model_path``) is such a place, since
    both agents load the model before the compressor.

    Returns
    -------
    type
        :class:`FedpressCompressor`.
    """
    import appfl.compressor as target

    setattr(target, NAME, FedpressCompressor)
    names = getattr(target, "__all__", None)
    if isinstance(names, list) and NAME not in names:
        names.append(NAME)
    return FedpressCompressor


def _plain(config: Any) -> dict[str, Any]:
    """The compressor configuration as a plain dict (OmegaConf's resolved)."""
    if config is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            config = OmegaConf.to_container(config, resolve=True)
    except ImportError:  # APPFL needs omegaconf; a plain mapping works without it
        pass
    if not isinstance(config, Mapping):
        raise ConfigError(f"{NAME}: the compressor configuration is a mapping, got "
                          f"{type(config).__name__}")
    return dict(config)


def settings(config: Any) -> tuple[Any, str, float, dict[str, Any]]:
    """``(plan, mode, eb, options)`` for :class:`fedpress.UpdateEncoder` from an APPFL
    compressor configuration (see the module docs); ConfigError on bad values."""
    cfg = _plain(config)
    plan, options = Plan.parse(cfg.get("plan", "fedsz"))
    extra = cfg.get("plan_options") or {}
    if not isinstance(extra, Mapping):
        raise ConfigError(f"{NAME}: plan_options is a mapping, got {extra!r}")
    options = {**options, **extra}
    if isinstance(plan, Mapping):
        plan = dict(plan)
    elif not isinstance(plan, str) or not plan:
        raise ConfigError(f"{NAME}: plan is a fedpress plan spec or a mapping of rules, got "
                          f"{plan!r}")
    for key in _LINK_SETTINGS:
        if key in options:
            raise ConfigError(f"{NAME}: {key!r} is a setting of fedpress's Flower links; "
                              "with APPFL the plan codes what the trainer returns")
    # error bound: fedpress's keys (or the spec's), else APPFL's
    for key in ("mode", "eb"):
        if key in options:
            if key in cfg:
                raise ConfigError(f"{NAME}: {key} is given twice (a key and a plan option)")
            cfg[key] = options.pop(key)
    if "mode" in cfg:
        mode = cfg["mode"]
    else:
        appfl_mode = cfg.get("error_bounding_mode", "REL")
        if not isinstance(appfl_mode, str) or appfl_mode.upper() not in APPFL_MODES:
            raise ConfigError(f"{NAME}: error_bounding_mode {appfl_mode!r} has no fedpress "
                              f"equivalent; use one of {', '.join(APPFL_MODES)}")
        mode = APPFL_MODES[appfl_mode.upper()]
    if not isinstance(mode, str) or mode.lower() not in APPFL_MODES.values():
        raise ConfigError(f"{NAME}: mode must be 'abs' or 'rel', got {mode!r}")
    mode = mode.lower()
    eb = cfg["eb"] if "eb" in cfg else cfg.get("error_bound", 1e-2)
    if isinstance(eb, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            eb = float(eb)
        except ValueError:
            raise ConfigError(f"{NAME}: the error bound must be a number, got {eb!r}") from None
    if isinstance(eb, bool) or not isinstance(eb, (int, float)) or not np.isfinite(eb) \
            or eb <= 0:
        raise ConfigError(f"{NAME}: the error bound must be a finite number > 0, got {eb!r}")
    # APPFL's partition and lossless coder, unless the plan says otherwise
    if not isinstance(plan, Mapping) and "threshold" not in options \
            and "param_cutoff" in cfg:
        options["threshold"] = cfg["param_cutoff"]
    if "lossless" not in options and "lossless_compressor" in cfg:
        name = cfg["lossless_compressor"]
        if not isinstance(name, str):
            raise ConfigError(f"{NAME}: lossless_compressor is a name, got {name!r}")
        options["lossless"] = APPFL_LOSSLESS.get(name.lower(), name)
    return plan, mode, float(eb), options


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (type(value).__module__.startswith("torch")
                                             and hasattr(value, "detach"))


def _flatten(model: Any, prefix: Path, out: dict[Path, Any]) -> None:
    """Every array of ``model`` (a mapping, nested to any depth) by its path."""
    if not isinstance(model, Mapping):
        if callable(getattr(model, "state_dict", None)):
            model = model.state_dict()
        else:
            raise ConfigError(f"{NAME}: a model is a mapping of names to tensors, got "
                              f"{type(model).__name__}" + (f" at {list(prefix)}" if prefix
                                                            else ""))
    if prefix and not model:
        raise ConfigError(f"{NAME}: the nested mapping at {list(prefix)} is empty (it "
                          "could not be rebuilt from the frame)")
    for key, value in model.items():
        if not isinstance(key, str):
            raise ConfigError(f"{NAME}: keys are strings, got {key!r} at {list(prefix)}")
        path = (*prefix, key)
        if isinstance(value, Mapping):
            _flatten(value, path, out)
        elif _is_array(value):
            out[path] = value
        else:
            raise ConfigError(
                f"{NAME}: {'/'.join(path)!r} holds a {type(value).__name__}; fedpress frames "
                "carry tensors and arrays only (no pickle)")


def _sample_specs(model: Any) -> dict[str, tuple[tuple[int, ...], bool]] | None:
    """Names -> (shape, numpy?) of the model sample APPFL passes (a module or a state
    dict), or None when there is none."""
    if model is None:
        return None
    if not isinstance(model, Mapping) and callable(getattr(model, "state_dict", None)):
        model = model.state_dict()
    if not isinstance(model, Mapping):
        raise ConfigError(f"{NAME}: the model sample is a torch module or a state dict, got "
                          f"{type(model).__name__}")
    return {str(k): (tuple(np.shape(v)), isinstance(v, np.ndarray)) for k, v in model.items()
            if _is_array(v)}


class FedpressCompressor(BaseCompressor):
    """An APPFL compressor whose bytes are fedpress frames (see the module docs).

    Parameters
    ----------
    compressor_config : omegaconf.DictConfig or mapping
        APPFL's ``compressor_configs`` (see the module docs for the keys read).
    limits : fedpress.Limits, optional
        Caps for decoding; always restricted to the plan's codecs (a frame naming
        another codec is refused before a payload byte reaches a back end), the codecs
        whose native decoders are not safe on a peer's bytes (``sz2``) decoded in a
        child process unless named in ``limits.codecs``.

    Raises
    ------
    fedpress.ConfigError
        A bad key or value, or a plan with mirrored state.
    fedpress.MissingDependencyError
        A codec of the plan lacks its back end library here (the message names the
        package).
    """

    def __init__(self, compressor_config: Any = None, *, limits: Limits | None = None) -> None:
        super().__init__(compressor_config)
        self.cfg = compressor_config
        self.plan, self.mode, self.eb, self.options = settings(compressor_config)
        self._encoder = fedpress.UpdateEncoder(self.plan, self.mode, self.eb, peer="self",
                                               **self.options)
        tree = [c for codec in self._encoder.plan.codecs() for c in codec.tree()]
        mirrored = sorted({c.codec_id for c in tree if is_mirrored(c)})
        if mirrored:
            raise ConfigError(
                f"{NAME}: the plan's {', '.join(map(repr, mirrored))} keeps state that both "
                "ends mirror per client, and APPFL's decompress_model is not told which "
                "client sent a model; use a stateless plan or one whose state only the "
                "sender keeps (ef:..., dgc, stc, powersgd)")
        if limits is not None and not isinstance(limits, Limits):
            raise ConfigError(f"{NAME}: limits must be a fedpress.Limits, got {limits!r}")
        base = limits if limits is not None else Limits()
        ids = frozenset(c.codec_id for c in tree)
        if base.codecs is not None:
            self.limits = replace(base, codecs=ids & base.codecs)
        else:
            unsafe = frozenset(c.codec_id for c in tree if not c.peer_safe)
            self.limits = replace(base, codecs=ids - unsafe, isolate=base.isolate | unsafe)
        self._decoder = fedpress.UpdateDecoder(limits=self.limits)

    # -- compress ---------------------------------------------------------------------
    def compress_model(self, model: Any, batched: bool = False) -> bytes:
        """One fedpress frame holding ``model`` (a state dict, possibly nested) or, with
        ``batched``, a list or mapping of such models.

        Raises
        ------
        fedpress.ConfigError
            A value that is neither a tensor, an array nor a mapping of them.
        """
        arrays: dict[Path, Any] = {}
        batch: str | None = None
        if batched:
            if isinstance(model, Mapping):
                batch, items = "dict", list(model.items())
            elif isinstance(model, Sequence) and not isinstance(model, (str, bytes)):
                batch, items = "list", [(str(i), m) for i, m in enumerate(model)]
            else:
                raise ConfigError(f"{NAME}: batched=True takes a list or a mapping of "
                                  f"models, got {type(model).__name__}")
            for key, sample in items:
                if not isinstance(key, str):
                    raise ConfigError(f"{NAME}: batch keys are strings, got {key!r}")
                before = len(arrays)
                _flatten(sample, (key,), arrays)
                if len(arrays) == before:
                    raise ConfigError(f"{NAME}: the batch entry {key!r} holds no tensors")
        else:
            _flatten(model, (), arrays)
        flat = batch is None and all(len(p) == 1 for p in arrays)
        names: dict[str, Path] = {}
        for p in arrays:
            name = "/".join(p)
            if name in names:
                raise ConfigError(f"{NAME}: two tensors are named {name!r} once their paths "
                                  "are joined with '/'; rename the keys that contain '/'")
            names[name] = p
        state = {name: to_numpy(arrays[p]) for name, p in names.items()}
        meta = None if flat else {LAYOUT_KEY: {"batch": batch,
                                               "paths": [list(p) for p in arrays]}}
        return self._encoder.encode(state, meta)

    # -- decompress -------------------------------------------------------------------
    def decompress_model(self, compressed_model: bytes, model: Any = None,
                         batched: bool = False) -> Any:
        """The model(s) a frame from :meth:`compress_model` holds, as torch tensors (as
        numpy arrays where the model sample holds numpy arrays).

        ``model`` is APPFL's sample of the model (the server's ``torch.nn.Module`` or a
        state dict): every state dict in the frame must hold its tensor names and
        shapes, checked before anything is decoded. A flat model comes back in the
        sample's order.

        Raises
        ------
        fedpress.FormatError
            Bytes that are not such a frame (corrupted, crafted, another codec, a
            layout that does not match ``batched``) or tensors other than the sample's.
        """
        if not isinstance(compressed_model, (bytes, bytearray, memoryview)):
            raise FormatError(f"{NAME}: expected the bytes of a fedpress frame, got "
                              f"{type(compressed_model).__name__}")
        frame = unpack_frame(compressed_model, self.limits)
        if frame.kind != KIND_UPDATE:
            raise FormatError(f"{NAME}: not an update frame")
        names = [r.name for r in frame.records]
        batch, paths = self._layout(frame.meta, names, batched)
        sample = _sample_specs(model)
        if sample is not None:
            self._check(frame, paths, sample)
        decoded = self._decoder.decode(compressed_model)
        as_numpy = sample is not None and bool(sample) and all(n for _, n in sample.values())

        def leaf(x: np.ndarray) -> Any:
            return x if as_numpy else to_torch(x)

        if batch is None and all(len(p) == 1 for p in paths) and sample is not None \
                and not batched:
            return OrderedDict((k, leaf(decoded[k])) for k in sample)
        root: OrderedDict[str, Any] = OrderedDict()
        for name, path in zip(names, paths):
            node = root
            for key in path[:-1]:
                node = node.setdefault(key, OrderedDict())
            node[path[-1]] = leaf(decoded[name])
        if batch == "list":
            return [root[str(i)] for i in range(len(root))]
        return root

    @staticmethod
    def _layout(meta: dict[str, Any], names: list[str],
                batched: bool) -> tuple[str | None, list[Path]]:
        """The batch kind and every record's path, checked against the names."""
        layout = meta.get(LAYOUT_KEY)
        if layout is None:
            if batched:
                raise FormatError(f"{NAME}: the frame holds one model, batched=True was "
                                  "asked")
            return None, [(n,) for n in names]
        if not isinstance(layout, dict) or set(layout) != {"batch", "paths"}:
            raise FormatError(f"{NAME}: bad {LAYOUT_KEY!r} metadata")
        batch, paths = layout["batch"], layout["paths"]
        if batch not in (None, "list", "dict"):
            raise FormatError(f"{NAME}: bad batch kind {batch!r}")
        if (batch is not None) != bool(batched):
            what = "a batch of models" if batch else "one model"
            raise FormatError(f"{NAME}: the frame holds {what}, batched={batched} was asked")
        if not isinstance(paths, list) or len(paths) != len(names) or not all(
                isinstance(p, list) and p and all(isinstance(k, str) for k in p)
                and "/".join(p) == n for p, n in zip(paths, names)):
            raise FormatError(f"{NAME}: the layout's paths do not match the frame's tensors")
        out = [tuple(p) for p in paths]
        if batch is not None:
            if any(len(p) < 2 for p in out):
                raise FormatError(f"{NAME}: a batched layout's paths start with the entry")
            if batch == "list":
                keys = list(dict.fromkeys(p[0] for p in out))
                if keys != [str(i) for i in range(len(keys))]:
                    raise FormatError(f"{NAME}: a list batch's entries are 0, 1, ...")
        seen: set[Path] = set(out)
        for p in out:  # a path may not also be a prefix of another (a leaf and a mapping)
            if any(p[:i] in seen for i in range(1, len(p))):
                raise FormatError(f"{NAME}: {'/'.join(p)!r} sits under a tensor")
        return batch, out

    @staticmethod
    def _check(frame: Any, paths: list[Path],
               sample: dict[str, tuple[tuple[int, ...], bool]]) -> None:
        """FormatError unless every state dict of the frame (the records grouped by
        their path less the last key) declares the sample's names and shapes."""
        groups: dict[Path, dict[str, tuple[int, ...]]] = {}
        for rec, path in zip(frame.records, paths):
            groups.setdefault(path[:-1], {})[path[-1]] = tuple(rec.spec.shape)
        expect = {k: s for k, (s, _) in sample.items()}
        for where, got in groups.items():
            at = f" at {'/'.join(where)!r}" if where else ""
            if set(got) != set(expect):
                extra, missing = sorted(set(got) - set(expect)), sorted(set(expect) - set(got))
                raise FormatError(f"{NAME}: the frame{at} holds tensors the model sample "
                                  f"does not (extra {extra[:10]}, missing {missing[:10]})")
            for name, shape in got.items():
                if shape != expect[name]:
                    raise FormatError(f"{NAME}: the frame{at} holds {name!r} of shape {shape}, "
                                      f"the model sample {expect[name]}")


__all__ = ["APPFL_LOSSLESS", "APPFL_MODES", "LAYOUT_KEY", "NAME", "FedpressCompressor",
           "register", "settings"]
