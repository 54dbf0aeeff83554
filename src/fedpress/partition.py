"""Plans: which codec (and bound) each tensor of a state dict gets.

A :class:`Plan` is an ordered list of :class:`Rule` objects plus a default.
Rules whose pattern is an exact tensor name are tried first, then ``re:``
regex rules in order (``re.search``), then the default. A rule also has
conditions (``min_elements``; lossy codecs only take floating tensors), and a
tensor that no rule or default can take goes to the plan's ``lossless`` codec.

Ready plans (``Plan.build``):

``"fedsz"``
    FedSZ's partition (arXiv 2312.13461): tensors whose name contains ``weight``
    and that have more than ``threshold`` elements (default 1000) go to the
    error-bounded codec ``lossy`` (default ``"fpz"``), everything else to
    ``lossless`` (default ``"zstd"``). Both defaults come with the core install.
``"fedsz-paper"``
    The same partition with the paper's codecs: ``lossy="sz2"`` (the native SZ2
    library through ``hdf5plugin``) and ``lossless="blosc-lz"`` (``blosc2``), for
    faithful reproduction. SZ2 does not validate its streams, so decoders refuse
    it from peers unless told otherwise (:class:`fedpress.Limits`).
``"ef:C"``
    codec ``C`` inside error feedback (:mod:`fedpress.grad.ef`), as ``C`` below.
any codec id ``C``
    every floating tensor with at least ``threshold`` elements via ``C``, the
    rest lossless; a lossless ``C`` takes every tensor.
a dict
    ``{"conv1.weight": "zfp", "re:bias$": "zstd", "default": "sz3"}``; values
    are codec ids, codec config dicts (``{"id": "sz3", "eb": 1e-3}``; a
    config without ``mode`` or ``eb`` takes the plan's) or
    :class:`~fedpress.abc.Codec` objects. ``lossless`` still names the codec
    for tensors no rule and no default can take (integers under lossy rules).

Written as text (command line, TOML settings, Flower links), a plan is read by
:meth:`Plan.parse`: a name or codec id, ``name(key=value, ...)`` with options
(``"topk(ratio=0.01, approx=true)"``), or a JSON object of rules; and
:func:`split_plans` splits a comma-separated list of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from .abc import Codec, StatefulCodec
from .errors import ConfigError
from .registry import codec_class, get_codec

CodecSpec = Union[str, Mapping[str, Any], Codec]

#: the codecs of plan ``"fedsz"`` and of every plan's lossless fallback: the core
#: install's (fpz and zstd need nothing beyond fedpress's own dependencies)
DEFAULT_LOSSY = "fpz"
DEFAULT_LOSSLESS = "zstd"
#: the FedSZ paper's codecs (plan ``"fedsz-paper"``)
PAPER_LOSSY = "sz2"
PAPER_LOSSLESS = "blosc-lz"
DEFAULT_THRESHOLD = 1000


def make_codec(spec: CodecSpec, mode: str = "rel", eb: float = 1e-2) -> Codec:
    """Build a codec from an id, a config dict or a codec object.

    Error-bounded codecs given by id (or by a dict without ``mode``/``eb``)
    take ``mode`` and ``eb``; lossless codecs ignore them.
    """
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, str):
        cfg: dict[str, Any] = {"id": spec}
    elif isinstance(spec, Mapping) and isinstance(spec.get("id"), str):
        cfg = dict(spec)
    else:
        raise ConfigError(f"a codec is given as an id, a config dict or a Codec, not {spec!r}")
    if cfg["id"].startswith("ef:"):  # error feedback around the named codec
        inner = make_codec({**cfg, "id": cfg["id"][3:]}, mode, eb)
        return get_codec("ef", inner=inner.get_config())
    cls = codec_class(cfg["id"])
    if cls.error_bounded:
        cfg.setdefault("mode", mode)
        cfg.setdefault("eb", eb)
    cid = cfg.pop("id")
    return get_codec(cid, **cfg)


@dataclass
class Rule:
    """Send tensors matching ``pattern`` (exact name or ``re:<regex>``) to ``codec``."""

    pattern: str
    codec: Codec
    min_elements: int = 0
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern.startswith("re:"):
            try:
                self._regex = re.compile(self.pattern[3:])
            except re.error as exc:
                raise ConfigError(f"bad regex in plan rule {self.pattern!r}: {exc}") from exc

    @property
    def is_regex(self) -> bool:
        return self._regex is not None

    def matches(self, name: str, x: np.ndarray) -> bool:
        if self._regex is not None:
            hit = self._regex.search(name) is not None
        else:
            hit = name == self.pattern
        return hit and x.size >= self.min_elements and self.codec.accepts(x.dtype)


class Plan:
    """Ordered rules, a default codec and a lossless fallback."""

    def __init__(self, rules: list[Rule], default: Codec, lossless: Codec | None = None,
                 name: str = "custom") -> None:
        self.rules = list(rules)
        self.default = default
        self.lossless = lossless if lossless is not None else make_codec(DEFAULT_LOSSLESS)
        if self.lossless.lossy:
            raise ConfigError(f"the plan's lossless codec {self.lossless.codec_id!r} is lossy")
        self.name = name

    def codec_for(self, name: str, x: np.ndarray) -> Codec:
        """The codec for tensor ``name`` with array ``x``."""
        for rule in self.rules:
            if not rule.is_regex and rule.matches(name, x):
                return rule.codec
        for rule in self.rules:
            if rule.is_regex and rule.matches(name, x):
                return rule.codec
        if self.default.accepts(x.dtype):
            return self.default
        return self.lossless

    @property
    def stateful(self) -> bool:
        """Whether any codec of the plan keeps state between rounds (then the same
        tensors give different frames round after round, and per peer)."""
        return any(isinstance(c, StatefulCodec) for c in self.codecs())

    def __repr__(self) -> str:
        return f"Plan(name={self.name!r}, rules={self.rules!r}, default={self.default!r})"

    def codecs(self) -> list[Codec]:
        """Every codec the plan may use (rules, default, lossless fallback), once each."""
        out: list[Codec] = []
        for c in [r.codec for r in self.rules] + [self.default, self.lossless]:
            if c not in out:
                out.append(c)
        return out

    def check_available(self) -> None:
        """MissingDependencyError (naming the package) if a codec of the plan lacks its
        back end library here."""
        for c in self.codecs():
            c.check_available()

    @staticmethod
    def parse(text: Any) -> tuple[Any, dict[str, Any]]:
        """A plan written as text -> ``(spec, options)`` for :meth:`build`.

        ``"fedsz"`` -> ``("fedsz", {})``; ``"topk(ratio=0.01, approx=true)"`` ->
        ``("topk", {"ratio": 0.01, "approx": True})`` (values: ``true``/``false``,
        ``none``/``null``, ints, floats, else strings); a JSON object of rules
        (``'{"re:bias$": "zstd", "default": "sz3"}'``) -> ``(dict, {})``. Anything
        that is not a string (a rule dict, ``None``) comes back as is, with no options.
        """
        if not isinstance(text, str):
            return text, {}
        spec = text.strip()
        if spec.startswith("{"):
            try:
                rules = json.loads(spec)
            except ValueError as exc:
                raise ConfigError(f"plan looks like JSON but does not parse: {exc}") from None
            if not isinstance(rules, dict):
                raise ConfigError("plan JSON must be an object of pattern -> codec")
            return rules, {}
        if "(" not in spec:
            return spec, {}
        name, _, rest = spec.partition("(")
        if not rest.endswith(")") or not name.strip():
            raise ConfigError(f"plan {text!r}: write options as name(key=value, ...)")
        options: dict[str, Any] = {}
        for item in split_plans(rest[:-1]):
            key, eq, value = item.partition("=")
            if not eq or not key.strip().isidentifier():
                raise ConfigError(f"plan {text!r}: {item!r} is not key=value")
            options[key.strip()] = _value(value.strip())
        return name.strip(), options

    @classmethod
    def build(cls, plan: str | Mapping[str, CodecSpec] | Plan = "fedsz", mode: str = "rel",
              eb: float = 1e-2, *, threshold: int = DEFAULT_THRESHOLD,
              lossy: CodecSpec | None = None, lossless: CodecSpec | None = None,
              **codec_options: Any) -> Plan:
        """Build a plan from a name, a codec id or a rule dict (see the module docs).

        ``lossy`` and ``lossless`` default to the plan's own (``fpz``/``zstd``;
        ``sz2``/``blosc-lz`` for ``"fedsz-paper"``). ``codec_options`` go to the lossy
        (or named) codec, e.g. ``algorithm`` for ``sz3``. A codec whose back end
        library is missing raises :class:`fedpress.MissingDependencyError` here.
        """
        built = cls._build(plan, mode, eb, threshold, lossy, lossless, codec_options)
        built.check_available()
        return built

    @classmethod
    def _build(cls, plan: str | Mapping[str, CodecSpec] | Plan, mode: str, eb: float,
               threshold: int, lossy: CodecSpec | None, lossless: CodecSpec | None,
               codec_options: dict[str, Any]) -> Plan:
        if isinstance(plan, Plan):
            if codec_options or lossy is not None or lossless is not None:
                raise ConfigError("lossy, lossless and codec options do not apply to a Plan "
                                  "object")
            return plan
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ConfigError(f"threshold must be a non-negative int, not {threshold!r}")
        paper, lossy_given = plan == "fedsz-paper", lossy is not None
        if lossless is None:
            lossless = PAPER_LOSSLESS if paper else DEFAULT_LOSSLESS
        if lossy is None:
            lossy = PAPER_LOSSY if paper else DEFAULT_LOSSY
        fallback = make_codec(lossless, mode, eb)

        def with_opts(spec: CodecSpec) -> Codec:
            if codec_options:
                if isinstance(spec, Codec):
                    raise ConfigError("codec options cannot be applied to a Codec object")
                base = {"id": spec} if isinstance(spec, str) else dict(spec)
                return make_codec({**base, **codec_options}, mode, eb)
            return make_codec(spec, mode, eb)

        if isinstance(plan, Mapping):
            if codec_options or threshold != DEFAULT_THRESHOLD or lossy_given:
                raise ConfigError("threshold, lossy and codec options do not apply to a dict "
                                  "plan: put them in the rules' codec configs")
            rules = []
            default: Codec | None = None
            for pattern, spec in plan.items():
                codec = make_codec(spec, mode, eb)
                if pattern == "default":
                    default = codec
                else:
                    rules.append(Rule(pattern, codec))
            return cls(rules, default or fallback, fallback, name="custom")
        if not isinstance(plan, str):
            raise ConfigError(f"plan must be a name, a codec id, a dict or a Plan, not {plan!r}")
        if plan in ("fedsz", "fedsz-paper"):
            lossy_codec = with_opts(lossy)
            if not lossy_codec.lossy:
                raise ConfigError(f"{plan}: lossy={lossy_codec.codec_id!r} is a lossless codec; "
                                  "use plan=<codec id> for an all-lossless plan")
            rule = Rule("re:weight", lossy_codec, min_elements=threshold + 1)
            return cls([rule], fallback, fallback, name=plan)
        codec = with_opts(plan)
        if not codec.lossy:
            return cls([], codec, fallback, name=plan)
        return cls([Rule("re:", codec, min_elements=threshold)], fallback, fallback, name=plan)


_OPEN, _CLOSE = "({", ")}"


def split_plans(text: str) -> list[str]:
    """Comma-separated plan specs (:meth:`Plan.parse`); commas inside parentheses,
    braces or a JSON object's strings belong to a spec."""
    out, stack, cur, quoted, escaped = [], [], "", False, False
    for ch in text:
        if quoted:  # inside a JSON string
            quoted = ch != '"' or escaped
            escaped = not escaped and ch == "\\"
        elif ch == '"' and "{" in stack:
            quoted = True
        elif ch in _OPEN:
            stack.append(ch)
        elif ch in _CLOSE:
            if not stack or _OPEN.index(stack.pop()) != _CLOSE.index(ch):
                raise ConfigError(f"unbalanced parentheses or braces in plans {text!r}")
        elif ch == "," and not stack:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    if stack or quoted:
        raise ConfigError(f"unbalanced parentheses or braces in plans {text!r}")
    return [p for p in out if p]


def _value(text: str) -> Any:
    """An option's value: bool, None, int, float, else the string itself (without the
    quotes around it, if it has them: ``'raw|zstd'``)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
