"""Run simulations from settings (the CLI's flags or a TOML file) with a progress bar.

Settings (all optional; defaults in ``DEFAULTS``): ``dataset``, ``data_dir``,
``model``, ``clients``, ``rounds``, ``fraction``, ``local_epochs``, ``local_steps``,
``batch_size``, ``lr``, ``momentum``, ``algorithm``, ``mu``, ``server_lr``,
``server_momentum``, ``send``, ``partition``, ``alpha``, ``plan`` (``"none"`` = raw
float32, any fedpress plan, or ``name(key=value, ...)`` with codec options, e.g.
``ef:topk(ratio=0.01)``, and run settings of ``SIM_KEYS`` for that plan's run, e.g.
``signsgd(aggregate=vote)``), ``mode``, ``eb``, ``lossy``, ``lossless``,
``threshold``, ``downlink_plan`` (same forms; default ``"none"``), ``downlink_send`` (``weights``:
the global model; ``update``: its change since what each client holds),
``aggregate`` (``mean``; ``vote``: signSGD's majority vote; ``powersgd``: its two-phase
exchange; ``hgc``: HGC's shared-mask exchange, implied by plan ``hgc``), ``reference``
(``true``: the weights uplink is coded against the model each client started from),
``lr_milestones`` (rounds from which the learning rate is multiplied by ``lr_gamma``),
``momentum_steps`` (``"round:momentum,..."``: the clients' momentum from those rounds),
``client_state`` (``reset``: local momentum starts at zero every round; ``keep``: each
client keeps it between its rounds), ``first_download`` (``seeded``: clients start from
the seeded initial model, not counted; ``sent``: an update-mode downlink counts it in
each client's first download; ``coded``: it goes through the downlink plan as an update
from nothing), ``bandwidth_drift`` (links change over rounds: each
round multiplies every bandwidth by ``exp(drift * z)``, ``z`` standard normal),
``uplink_mbps``,
``downlink_mbps``, ``latency_ms`` (a number, a list or ``{median, sigma}``),
``seed``, ``test_limit``, ``threads`` (PyTorch threads per process), ``workers``
(client processes; 1 = the clients run in this process), ``out``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import write_bytes_atomically
from ..partition import Plan, split_plans  # noqa: F401 - split_plans: imported from here

DEFAULTS: dict[str, Any] = {
    "dataset": "fashion-mnist", "data_dir": None, "model": "cnn", "clients": 4, "rounds": 5,
    "fraction": 1.0, "local_epochs": 1, "local_steps": None, "batch_size": 64, "lr": 0.01,
    "momentum": 0.9, "algorithm": "fedavg", "mu": 0.01, "server_lr": 1.0,
    "server_momentum": 0.9, "send": "weights", "partition": "iid", "alpha": 0.5,
    "plan": "none", "mode": "rel", "eb": 1e-2, "lossy": None, "lossless": None,
    "threshold": None, "downlink_plan": "none", "uplink_mbps": 10.0, "downlink_mbps": 10.0,
    "latency_ms": 0.0, "seed": 0, "test_limit": None, "threads": 1, "workers": 1,
    "aggregate": "mean", "downlink_send": "weights", "reference": False,
    "lr_milestones": (), "lr_gamma": 0.1, "momentum_steps": (),
    "client_state": "reset", "first_download": "seeded", "bandwidth_drift": 0.0,
    "out": "out/simulate",
}
PLAN_KEYS = ("mode", "eb", "lossy", "lossless", "threshold")
#: run settings a plan spec may carry for its own run (in ``compare``)
SIM_KEYS = ("aggregate", "algorithm", "lr", "server_lr", "server_momentum", "momentum",
            "downlink_plan", "downlink_send", "send", "local_steps", "local_epochs",
            "reference", "lr_milestones", "lr_gamma", "momentum_steps", "client_state",
            "first_download")


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Settings from a TOML file (top-level keys as in ``DEFAULTS``, dashes allowed)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    settings = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(settings) - set(DEFAULTS) - {"plans"})
    if unknown:
        raise ConfigError(f"config {path}: unknown keys {', '.join(unknown)}; known: "
                          f"{', '.join(DEFAULTS)}")
    return settings


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``DEFAULTS`` overridden by the non-None ``settings``, every one checked
    (:func:`check_settings`)."""
    unknown = sorted(set(settings) - set(DEFAULTS) - {"plans"})
    if unknown:
        raise ConfigError(f"unknown settings {', '.join(unknown)}")
    out = dict(DEFAULTS)
    out.update({k: v for k, v in settings.items() if v is not None})
    check_settings(out)
    return out


# -- checking settings ----------------------------------------------------------------
# Each setting's type and range, in one place, checked before anything runs: a TOML
# file gives strings, booleans and floats where numbers are meant, and Python would
# take True for 1 or truncate 2.5 to 2. Errors are one-line ConfigErrors.

Check = Callable[[str, Any], None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _integer(low: int, high: int | None = None, optional: bool = False) -> Check:
    """An int (not a bool) in [low, high]."""
    def check(name: str, value: Any) -> None:
        if optional and value is None:
            return
        if not _is_int(value) or value < low or (high is not None and value > high):
            span = f">= {low}" if high is None else f"in {low}..{high}"
            raise ConfigError(f"{name} must be an integer {span}, got {value!r}")
    return check


def _number(low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> Check:
    """A finite int or float (not a bool) between ``low`` and ``high``."""
    def check(name: str, value: Any) -> None:
        if _is_number(value) and (value > low if low_open else value >= low) \
                and (value < high if high_open else value <= high):
            return
        if math.isinf(high):
            span = f"{'>' if low_open else '>='} {low:g}"
        else:
            span = "in " + ("(" if low_open else "[") + f"{low:g}, {high:g}" + \
                (")" if high_open else "]")
        raise ConfigError(f"{name} must be a number {span}, got {value!r}")
    return check


def _text(optional: bool = False) -> Check:
    def check(name: str, value: Any) -> None:
        if not (isinstance(value, str) or (optional and value is None)):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    return check


def _path(optional: bool = False) -> Check:
    def check(name: str, value: Any) -> None:
        if not (isinstance(value, (str, os.PathLike)) or (optional and value is None)):
            raise ConfigError(f"{name} must be a path, got {value!r}")
    return check


def _choice(options: Callable[[], Sequence[str]]) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in options():
            raise ConfigError(f"{name} must be one of {', '.join(options())}, got {value!r}")
    return check


def _plan_spec(name: str, value: Any) -> None:
    if not isinstance(value, (str, Mapping)):
        raise ConfigError(f"{name} must be a plan name, a spec such as 'topk(ratio=0.01)' "
                          f"or a table of rules, got {value!r}")


def _link(name: str, value: Any) -> None:
    """A number, one number per client, or ``{median, sigma}`` (ranges: Network)."""
    if isinstance(value, Mapping):
        extra = set(value) - {"median", "sigma"}
        if not extra and "median" in value and all(_is_number(v) for v in value.values()):
            return
    elif isinstance(value, (list, tuple)):
        if value and all(_is_number(v) for v in value):
            return
    elif _is_number(value):
        return
    raise ConfigError(f"{name} must be a number, a list of numbers (one per client) or "
                      f"{{median, sigma}}, got {value!r}")


def _reference(name: str, value: Any) -> None:
    _flag(value, name)


def _milestones(name: str, value: Any) -> None:
    if any(r < 1 for r in _int_list(value, name)):  # (_int_list refuses 2.5 and true)
        raise ConfigError(f"{name} must be rounds >= 1, got {value!r}")


def _momentum_steps(name: str, value: Any) -> None:
    if any(r < 1 or not 0 <= m < 1 for r, m in _steps(value)):
        raise ConfigError(f"{name} must be round:momentum pairs (round >= 1, momentum in "
                          f"[0, 1)), got {value!r}")


def _plans(name: str, value: Any) -> None:
    if not (isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
        raise ConfigError(f"{name} must be a string or a list of plan strings, got {value!r}")


def _fl_choices(key: str) -> Callable[[], Sequence[str]]:
    def options() -> Sequence[str]:
        from . import fl  # the simulator's own constants (imports torch: only when checked)

        return tuple(getattr(fl, key))
    return options


def _data_choices(key: str) -> Callable[[], Sequence[str]]:
    def options() -> Sequence[str]:
        from . import data

        return tuple(getattr(data, key))
    return options


SETTINGS: dict[str, Check] = {
    "dataset": _text(), "data_dir": _path(optional=True), "model": _text(),
    "clients": _integer(1), "rounds": _integer(1), "fraction": _number(0, 1, low_open=True),
    "local_epochs": _integer(1), "local_steps": _integer(1, optional=True),
    "batch_size": _integer(1), "lr": _number(0, low_open=True),
    "momentum": _number(0, 1, high_open=True), "algorithm": _choice(_fl_choices("ALGORITHMS")),
    "mu": _number(0), "server_lr": _number(0, low_open=True),
    "server_momentum": _number(0, 1, high_open=True), "send": _choice(_fl_choices("SENDS")),
    "partition": _choice(_data_choices("PARTITIONS")), "alpha": _number(0, low_open=True),
    "plan": _plan_spec, "mode": _choice(lambda: ("rel", "abs")), "eb": _number(0),
    "lossy": _text(optional=True), "lossless": _text(optional=True),
    "threshold": _integer(0, optional=True), "downlink_plan": _plan_spec,
    "uplink_mbps": _link, "downlink_mbps": _link, "latency_ms": _link,
    "seed": _integer(0, 2**32 - 1), "test_limit": _integer(1, optional=True),
    "threads": _integer(1), "workers": _integer(1),
    "aggregate": _choice(_fl_choices("AGGREGATES")),
    "downlink_send": _choice(_fl_choices("DOWNLINK_SENDS")), "reference": _reference,
    "lr_milestones": _milestones, "lr_gamma": _number(0, 1, low_open=True),
    "momentum_steps": _momentum_steps, "out": _path(), "plans": _plans,
    "client_state": _choice(_fl_choices("CLIENT_STATES")),
    "first_download": _choice(_fl_choices("FIRST_DOWNLOADS")),
    "bandwidth_drift": _number(0, 5),
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """ConfigError (one line, naming the setting) unless every setting has its type
    (an integer is not a bool, nor a float or a string) and range; settings that are
    None are left to their defaults. Dataset and model names, and the link values per
    client, are checked where they are used."""
    for key, value in settings.items():
        if key in SETTINGS and value is not None:
            SETTINGS[key](key, value)
    mode, eb = settings.get("mode", DEFAULTS["mode"]), settings.get("eb", DEFAULTS["eb"])
    if mode == "rel" and eb is not None and not eb < 1:
        raise ConfigError(f"eb out of range for mode {mode!r}: {eb} "
                          "(rel: 0 <= eb < 1; abs: eb >= 0)")


def _flag(value: Any, name: str) -> bool:
    """A boolean setting (TOML/CLI booleans, or the strings true/false)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _items(value: Any) -> list[Any]:
    """A list setting given as a list, one value, or a string split on ``,`` or ``;``
    (``;`` also works inside a plan spec, where commas separate options)."""
    if isinstance(value, str):
        return [v for v in value.replace(";", ",").split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [] if value is None else [value]


def _int_list(value: Any, name: str) -> tuple[int, ...]:
    """Rounds given as a list, one number, or a string ("15,22" or "15;22")."""
    try:
        return tuple(int(str(v).strip()) for v in _items(value))
    except (ValueError, TypeError):
        raise ConfigError(f"{name}: expected round numbers, got {value!r}") from None


def _steps(value: Any) -> tuple[tuple[int, float], ...]:
    """(round, momentum) steps from a list of pairs or a string "1:0.3,60:0.6,100:0.9"
    (``;`` works as well as ``,``)."""
    out = []
    for item in _items(value):
        try:
            r, m = str(item).split(":") if isinstance(item, str) else list(item)
            out.append((int(str(r).strip()), float(str(m).strip())))
        except (ValueError, TypeError):
            raise ConfigError(f"momentum_steps: expected round:momentum pairs, got {value!r}"
                              ) from None
    return tuple(out)


#: the plan-spec grammar (:meth:`fedpress.Plan.parse`), under its former name here
parse_plan_spec = Plan.parse


def _plan(spec: Any, settings: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(plan for UpdateEncoder or None for raw, its options)."""
    spec, extra = Plan.parse(spec)
    extra = {k: v for k, v in extra.items() if k not in SIM_KEYS}  # run settings
    if spec in (None, "none", "raw"):
        return None, {}
    options = {k: settings[k] for k in PLAN_KEYS if settings.get(k) is not None}
    if spec not in ("fedsz", "fedsz-paper"):
        options.pop("lossy", None)
        options.pop("lossless", None)
    return spec, options | extra


def run(settings: Mapping[str, Any], out_dir: str | os.PathLike[str] | None = None,
        progress: bool = True, label: str | None = None,
        dataset: Any = None) -> dict[str, Any]:
    """One simulation; writes its outputs to ``out_dir`` (default ``settings['out']``)
    and returns the summary (with the per-round rows under ``"rows"``)."""
    import torch

    from . import report
    from .data import load_dataset
    from .fl import FLConfig, simulate
    from .network import Network

    # run settings given inside the uplink plan spec: "signsgd(aggregate=vote)"
    name, spec_settings = Plan.parse(settings.get("plan"))
    s = resolve({**settings, **{k: v for k, v in spec_settings.items() if k in SIM_KEYS}})
    if name == "hgc":  # HGC's exchange: its run settings where the defaults stand
        for key, value in (("aggregate", "hgc"), ("send", "update")):
            if s[key] == DEFAULTS[key]:
                s[key] = value
    torch.set_num_threads(int(s["threads"]))
    ds = dataset if dataset is not None else load_dataset(s["dataset"], s["data_dir"])
    plan, plan_options = _plan(s["plan"], s)
    down, down_options = _plan(s["downlink_plan"], s)
    cfg = FLConfig(
        model=s["model"], clients=int(s["clients"]), rounds=int(s["rounds"]),
        fraction=float(s["fraction"]), local_epochs=int(s["local_epochs"]),
        local_steps=None if s["local_steps"] is None else int(s["local_steps"]),
        batch_size=int(s["batch_size"]), lr=float(s["lr"]), momentum=float(s["momentum"]),
        algorithm=s["algorithm"], mu=float(s["mu"]), server_lr=float(s["server_lr"]),
        server_momentum=float(s["server_momentum"]), send=s["send"],
        partition=s["partition"], alpha=float(s["alpha"]), plan=plan,
        plan_options=plan_options, downlink_plan=down, downlink_options=down_options,
        seed=int(s["seed"]), aggregate=s["aggregate"], downlink_send=s["downlink_send"],
        reference=_flag(s["reference"], "reference"),
        lr_milestones=_int_list(s["lr_milestones"], "lr_milestones"),
        lr_gamma=float(s["lr_gamma"]), momentum_steps=_steps(s["momentum_steps"]),
        client_state=s["client_state"], first_download=s["first_download"])
    network = Network.build(cfg.clients, s["uplink_mbps"], s["downlink_mbps"],
                            s["latency_ms"], seed=cfg.seed,
                            drift=float(s["bandwidth_drift"]))
    with _progress(progress, label or str(s["plan"]), cfg.rounds) as tick:
        history, _ = simulate(ds, cfg, network, on_round=tick,
                              test_limit=None if s["test_limit"] is None
                              else int(s["test_limit"]), workers=int(s["workers"]),
                              threads=int(s["threads"]))
    config = {k: v for k, v in s.items() if k != "out"} | {"network": network.describe()}
    result = report.write_run(out_dir or s["out"], history, config)
    result["rows"] = report.rows(history)
    return result


def compare(settings: Mapping[str, Any], plans: Sequence[str],
            out_dir: str | os.PathLike[str], progress: bool = True) -> list[dict[str, Any]]:
    """The same run (seed, data, clients) once per uplink plan; writes each run under
    ``out_dir/<plan>/``, the side-by-side ``comparison.csv`` / ``comparison.md`` and
    overlaid plots in ``out_dir``."""
    from . import report
    from .data import load_dataset

    if not plans:
        raise ConfigError("compare needs at least one plan")
    s = resolve(settings)
    ds = load_dataset(s["dataset"], s["data_dir"])
    out = Path(out_dir)
    results = []
    for spec in plans:
        name = _slug(spec)
        results.append(run(dict(s, plan=spec), out / name, progress, label=name, dataset=ds)
                       | {"plan": spec})
    write_comparison(results, out)
    report.plot({_slug(r["plan"]): r["rows"] for r in results}, out)
    return results


COMPARE_COLUMNS = ["plan", "final_accuracy", "best_accuracy", "cr_up", "cr_down", "mb_up",
                   "mb_down", "encode_s", "decode_s", "comm_s", "round_s", "wall_s"]


def comparison_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"plan": r["plan"], "final_accuracy": r["final_accuracy"],
             "best_accuracy": r["best_accuracy"], "cr_up": r["cr_up"], "cr_down": r["cr_down"],
             "mb_up": r["bytes_up"] / 1e6, "mb_down": r["bytes_down"] / 1e6,
             "encode_s": r["encode_s"], "decode_s": r["decode_s"], "comm_s": r["comm_s"],
             "round_s": r["round_s"], "wall_s": r["wall_s"]} for r in results]


def write_comparison(results: Sequence[Mapping[str, Any]], out: Path) -> None:
    table = comparison_rows(results)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COMPARE_COLUMNS)
    writer.writeheader()
    writer.writerows(table)
    write_bytes_atomically(out / "comparison.csv", buf.getvalue().encode())
    lines = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    for row in table:
        lines.append("| " + " | ".join(row["plan"] if k == "plan" else _fmt(row[k])
                                       for k in COMPARE_COLUMNS) + " |")
    write_bytes_atomically(out / "comparison.md", ("\n".join(lines) + "\n").encode())


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _slug(spec: Any) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(spec))


class _progress:
    """A rich progress bar over rounds (or nothing); ``tick(metrics)`` advances it."""

    def __init__(self, enabled: bool, label: str, rounds: int) -> None:
        self.enabled, self.label, self.rounds = enabled, label, rounds

    def __enter__(self) -> Callable[[Any], None]:
        if not self.enabled:
            return lambda m: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("round {task.completed}/{task.total}"),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        self.bar.__enter__()
        task = self.bar.add_task(self.label, total=self.rounds, status="")

        def tick(m: Any) -> None:
            self.bar.update(task, advance=1, status=f"acc {m.accuracy:.4f}  up CR "
                                                    f"{m.cr_up:.2f}")
        return tick

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
