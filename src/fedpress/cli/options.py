"""Options shared by several commands and the parsing of their values.

The simulator's flag table (:func:`sim_flags`) lives here too: ``simulate`` and
``compare`` take the same flags, each ``None`` when not given so that a TOML
``--config`` fills it.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..errors import ConfigError, FormatError
from ..frame import Limits
from ..partition import Plan
from ..registry import codec_class, list_codecs

__all__ = ["AllowOption", "IsolateOption", "Mode", "decoder_limits", "opt_in_hint",
           "parse_floats", "parse_options", "parse_plan", "read_frame", "same_file",
           "sim_flags", "sim_settings", "split_list", "with_sim_flags"]

F = TypeVar("F", bound=Callable[..., Any])


class Mode(StrEnum):
    """Error-bound mode."""

    rel = "rel"
    abs = "abs"


AllowOption = Annotated[list[str] | None, typer.Option(
    "--allow", metavar="CODEC",
    help="Also decode codec CODEC in this process (repeatable). By default every registered "
         "codec whose decoder is safe on untrusted bytes is accepted: all but sz2 and sz3, "
         "whose native libraries can crash or exhaust memory on a crafted frame. Only for "
         "frames you trust.")]
IsolateOption = Annotated[list[str] | None, typer.Option(
    "--isolate", metavar="CODEC",
    help="Decode codec CODEC in a child process with limited memory and time "
         "(repeatable); a crash there is an error here. Accepts CODEC too.")]


def decoder_limits(allow: list[str] | None, isolate: list[str] | None) -> Limits:
    """The :class:`~fedpress.Limits` of a decoding command.

    Parameters
    ----------
    allow
        ``--allow`` codecs, added to the peer-safe ones.
    isolate
        ``--isolate`` codecs, decoded in a child process.
    """
    known = list_codecs()
    for flag, ids in (("--allow", allow), ("--isolate", isolate)):
        for cid in ids or ():
            if cid not in known:
                raise ConfigError(f"{flag} {cid}: no such codec; registered: "
                                  f"{', '.join(known)}")
    codecs = None
    if allow:
        safe = frozenset(cid for cid in known if codec_class(cid).peer_safe)
        codecs = safe | frozenset(allow)
    return Limits(codecs=codecs, isolate=frozenset(isolate or ()))


_REFUSED_CODEC = re.compile(r"codec '([^']+)' is not")


def opt_in_hint(exc: FormatError) -> FormatError:
    """A refused codec's error, with how to opt in on the command line (naming the
    codec when the error does)."""
    text = str(exc)
    if "Limits(" in text or "Limits.codecs" in text:
        found = _REFUSED_CODEC.search(text)
        cid = found.group(1) if found else "CODEC"
        return FormatError(f"{text} (on the command line: --isolate {cid} or --allow {cid})")
    return exc


def read_frame(path: Path) -> bytes:
    """The bytes of a frame file; a clear error for a missing file or a directory."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a directory, not a fedpress frame")
    return path.read_bytes()


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file."""
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - unusual file systems
        return False


_RESERVED_OPTIONS = frozenset({"mode", "eb", "threshold", "lossy", "lossless", "plan", "codec",
                               "store", "peer"})


def parse_plan(plan: str) -> tuple[str | dict[str, Any], dict[str, Any]]:
    """``--plan``: ``(spec, codec options)`` by :meth:`fedpress.Plan.parse` (a plan name
    or codec id, ``name(key=value, ...)``, or a JSON object of rules)."""
    spec, options = Plan.parse(plan)
    for key in options:
        _check_key(key, "--plan")
    return spec, options


def parse_options(options: list[str] | None,
                  plan_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (``level=19``), else strings.
    ``plan_options`` (from ``--plan``'s parentheses) come first; a key given both ways
    is an error."""
    out: dict[str, Any] = dict(plan_options or {})
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects key=value, got {item!r}")
        _check_key(key.strip(), "--option")
        if plan_options and key.strip() in plan_options:
            raise ConfigError(f"--option {key.strip()}=... : already given in --plan")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _check_key(key: str, flag: str) -> None:
    if key in _RESERVED_OPTIONS:
        raise ConfigError(f"{flag} {key}=... : use --{key} instead")


def split_list(text: str, what: str) -> list[str]:
    """The non-empty items of a comma-separated list (``what`` names the flag)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    return items


def parse_floats(text: str, what: str) -> list[float]:
    """A comma-separated list of finite positive numbers."""
    out = []
    for item in split_list(text, what):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{what}: {item!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{what}: bounds must be finite and > 0, not {item!r}")
        out.append(value)
    return out


# -- the simulator's flags ------------------------------------------------------


def sim_settings(config: Path | None, **flags: Any) -> dict[str, Any]:
    """TOML settings (if any) overridden by the flags given on the command line."""
    from ..sim.run import load_config

    settings = load_config(config) if config is not None else {}
    for key in ("uplink_mbps", "downlink_mbps", "latency_ms"):
        if isinstance(flags.get(key), str):
            flags[key] = _parse_link(flags[key], key)
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def _parse_link(text: str, what: str) -> float | list[float]:
    values = parse_floats(text, f"--{what.replace('_', '-')}")
    return values[0] if len(values) == 1 else values


def sim_flags() -> dict[str, Any]:
    """The typer options shared by simulate and compare (None: not given)."""
    opt = typer.Option
    return {
        "config": Annotated[Path | None, opt(help="TOML file of settings (flags override "
                                                   "it).")],
        "dataset": Annotated[str | None, opt(help="fashion-mnist, digits or cifar10.")],
        "data_dir": Annotated[str | None, opt(help="Where the dataset lies (cifar10: its "
                                                   "binary batches).")],
        "model": Annotated[str | None, opt(help="mlp, cnn, resnet18, alexnet, mobilenetv2.")],
        "clients": Annotated[int | None, opt(help="Number of clients.")],
        "rounds": Annotated[int | None, opt(help="Number of rounds.")],
        "fraction": Annotated[float | None, opt(help="Share of clients sampled per round.")],
        "local_epochs": Annotated[int | None, opt(help="Local epochs per round.")],
        "local_steps": Annotated[int | None, opt(help="Local minibatch steps (overrides "
                                                      "epochs).")],
        "batch_size": Annotated[int | None, opt(help="Local batch size.")],
        "lr": Annotated[float | None, opt(help="Client learning rate.")],
        "algorithm": Annotated[str | None, opt(help="fedavg, fedprox or fedavgm.")],
        "mu": Annotated[float | None, opt(help="FedProx proximal weight.")],
        "server_momentum": Annotated[float | None, opt(help="FedAvgM server momentum.")],
        "send": Annotated[str | None, opt(help="What clients send: weights, update, "
                                               "gradient.")],
        "partition": Annotated[str | None, opt(help="iid, dirichlet or shards.")],
        "alpha": Annotated[float | None, opt(help="Dirichlet concentration.")],
        "eb": Annotated[float | None, opt(help="Error bound of the lossy codecs.")],
        "mode": Annotated[str | None, opt(help="Error-bound mode: rel or abs.")],
        "lossy": Annotated[str | None, opt(help="fedsz plan: its lossy codec.")],
        "downlink_plan": Annotated[str | None, opt(help="Plan of the server's downlink "
                                                        "('none': raw).")],
        "uplink_mbps": Annotated[str | None, opt(help="Uplink Mbps: one number or one per "
                                                      "client (comma-separated).")],
        "downlink_mbps": Annotated[str | None, opt(help="Downlink Mbps, as --uplink-mbps.")],
        "latency_ms": Annotated[str | None, opt(help="Latency in ms, as --uplink-mbps.")],
        "seed": Annotated[int | None, opt(help="Seed of data split, model and sampling.")],
        "test_limit": Annotated[int | None, opt(help="Evaluate on the first N test "
                                                     "samples.")],
        "threads": Annotated[int | None, opt(help="PyTorch threads per process.")],
        "workers": Annotated[int | None, opt(help="Client processes (1: the clients run "
                                                  "in the main process).")],
        "aggregate": Annotated[str | None, opt(help="Server aggregation: mean, vote "
                                                    "(signSGD majority vote), hgc (HGC's "
                                                    "shared-mask exchange) or powersgd "
                                                    "(its two-phase exchange).")],
        "downlink_send": Annotated[str | None, opt(help="Downlink content: weights, or "
                                                        "update (change since each "
                                                        "client's copy).")],
        "lr_milestones": Annotated[str | None, opt(help="Rounds from which the learning "
                                                        "rate is multiplied by --lr-gamma, "
                                                        "e.g. 15,22.")],
        "lr_gamma": Annotated[float | None, opt(help="Learning-rate factor at each "
                                                     "milestone (default 0.1).")],
        "momentum_steps": Annotated[str | None, opt(help="The clients' momentum from set "
                                                         "rounds, e.g. 1:0.3,10:0.6,20:0.9.")],
        "reference": Annotated[bool | None, opt(help="Code the weights uplink against "
                                                     "the model each client started from "
                                                     "(error-bounded codecs).")],
        "client_state": Annotated[str | None, opt(help="reset (default): local momentum "
                                                       "starts at zero each round; keep: "
                                                       "each client keeps it.")],
        "bandwidth_drift": Annotated[float | None, opt(help="Links change over rounds: "
                                                            "each round scales a bandwidth "
                                                            "by exp(drift * N(0,1)).")],
        "first_download": Annotated[str | None, opt(help="seeded (default): clients start "
                                                         "from the seeded model, uncounted; "
                                                         "sent: count it in update mode; "
                                                         "coded: send it through the "
                                                         "downlink plan.")],
    }


def with_sim_flags(fn: F) -> F:
    """Give ``fn`` (which takes ``**flags``) the shared simulation options."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=ann) for name, ann in sim_flags().items()]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return fn
