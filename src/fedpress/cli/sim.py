"""The simulator's commands: ``simulate``, ``compare`` and ``advise``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import MissingDependencyError
from ..partition import Plan, split_plans
from .common import app, err_console, handle_errors, out_console
from .options import Mode, parse_floats, sim_settings, split_list, with_sim_flags
from .render import compact_table, fmt_bytes, fmt_num, fmt_size

__all__ = ["SUMMARY_COLUMNS", "advise", "compare_plans", "require", "simulate",
           "summary_rows", "summary_table"]

#: (header, key of :func:`summary_rows`) of the summary table: short headers, so that the
#: table fits 80 terminal columns; every figure is in comparison.csv / summary.json
SUMMARY_COLUMNS = [("plan", "plan"), ("acc", "final_accuracy"), ("best", "best_accuracy"),
                   ("CR up", "cr_up"), ("CR dn", "cr_down"), ("MB up", "mb_up"),
                   ("MB dn", "mb_down"), ("codec s", "codec_s"), ("comm s", "comm_s"),
                   ("round s", "round_s")]
SUMMARY_LEGEND = ("acc, best: final and best test accuracy; CR: raw/sent bytes; MB: sent "
                  "(1e6 B); seconds summed over rounds: codec (encode + decode), comm and "
                  "round (simulated)")

#: what the simulator imports, and the distribution that provides each
_SIM_PACKAGES = {"torch": "torch", "matplotlib": "matplotlib"}


def require(command: str, modules: Sequence[str]) -> None:
    """Raise a one-line :class:`~fedpress.MissingDependencyError` naming what to install
    when one of ``modules`` (keys of the simulator's packages) does not import."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(_SIM_PACKAGES.get(module, module))
    if missing:
        raise MissingDependencyError(
            f"{command} needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install with: "
            f"pip install 'fedpress[sim]'")


@app.command()
@handle_errors
@with_sim_flags
def simulate(
    plan: Annotated[str | None, typer.Option(help="Uplink plan: 'none' (raw float32), "
                                                  "'fedsz', a codec id, or JSON rules.")]
    = None,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("out/simulate"),
    **flags: Any,
) -> None:
    """Federated training with compressed traffic: accuracy, bytes and time per round.

    Writes metrics.csv, summary.json and PNG plots into --out.
    """
    config = flags.pop("config", None)
    settings = sim_settings(config, plan=_sim_plan(plan) if plan else None, **flags)
    require("simulate", ("torch", "matplotlib"))
    from ..sim.run import run

    result = run(settings, out)
    print_summary([result | {"plan": settings.get("plan", "none")}], out)


def _sim_plan(text: str) -> str | dict[str, Any]:
    """``--plan`` of ``simulate``, checked by :meth:`fedpress.Plan.parse`: its JSON rules
    as a dict, any other spec as written (the simulator reads its options)."""
    spec, _ = Plan.parse(text)
    return spec if isinstance(spec, dict) else text.strip()


@app.command("compare")
@handle_errors
@with_sim_flags
def compare_plans(
    plans: Annotated[str, typer.Option(help="Comma-separated uplink plans, e.g. "
                                            "none,fedsz,sz3,fpz or 'none,ef:topk(ratio="
                                            "0.01),powersgd(rank=2)'.")]
    = "none,fedsz,sz3,fpz",
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("out/compare"),
    **flags: Any,
) -> None:
    """The same simulation once per plan; a side-by-side table and overlaid plots."""
    config = flags.pop("config", None)
    settings = sim_settings(config, **flags)
    require("compare", ("torch", "matplotlib"))
    from ..sim.run import compare as run_compare

    results = run_compare(settings, split_plans(plans), out)
    print_summary(results, out)


@app.command()
@handle_errors
def advise(
    file: Annotated[Path, typer.Argument(metavar="MODEL_FILE", help="State dict: .npz, "
                                                                    ".safetensors, .pt/.pth.")],
    codecs: Annotated[str, typer.Option(help="Comma-separated plans: codec ids, or "
                                             "fedsz:<lossy codec>.")] = "fedsz:sz2,sz3,fpz",
    eb: Annotated[str, typer.Option(help="Comma-separated error bounds.")] = "1e-2,1e-3",
    mode: Annotated[Mode, typer.Option(help="Error-bound mode.")] = Mode.rel,
    repeat: Annotated[int, typer.Option(min=1, help="Timing repetitions (median).")] = 3,
    plot: Annotated[Path, typer.Option(help="Where to draw communication time against "
                                            "bandwidth.")] = Path("out/advise.png"),
) -> None:
    """Below which bandwidth does each codec pay for itself? (FedSZ's Eq. 1)

    Compression pays when t_C + t_D + S'/B < S/B, i.e. below B* = (S - S') / (t_C + t_D),
    with S, S' the raw and compressed bytes and t_C, t_D the measured encode and
    decode seconds on this machine.
    """
    from ..io import load_tensors
    from ..sim import advise as adv

    plans = split_list(codecs, "--codecs")
    ebs = parse_floats(eb, "--eb")
    require("advise", ("matplotlib",))
    state = load_tensors(file)
    with _Steps(len(plans) * len(ebs)) as step:
        rows = adv.advise(state, plans, ebs, mode.value, repeat, on_step=step)
    table = Table(title=f"break-even bandwidth, {escape(str(file))} "
                        f"({fmt_bytes(rows[0]['raw_bytes'])} raw)")
    for col in ("codec", "eb", "CR", "encode s", "decode s", "pays below (Mbps)"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in rows:
        table.add_row(escape(r["codec"]), f"{r['eb']:g}", f"{r['cr']:.2f}",
                      f"{r['encode_s']:.3f}", f"{r['decode_s']:.3f}",
                      f"{r['break_even_mbps']:.0f}")
    console = out_console()
    console.print(table)
    title = (f"when compression pays: {file.name} ({fmt_size(rows[0]['raw_bytes'])}, "
             f"{mode.value} bounds)")
    console.print(f"plot: {escape(str(adv.plot(rows, plot, title=title)))}", highlight=False)


class _Steps:
    """A transient progress bar on stderr over ``total`` steps, shown only when stderr is
    a terminal; the context value is ``step(label)``, called as each step starts."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> Callable[[str], None]:
        console = err_console()
        if not console.is_terminal:
            return lambda label: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True)
        progress.__enter__()
        self.progress, self.task = progress, progress.add_task("advise", total=self.total)
        started = [0]

        def step(label: str) -> None:
            if started[0]:
                progress.advance(self.task)
            started[0] += 1
            progress.update(self.task, description=escape(label))

        return step

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            if exc[0] is None:
                self.progress.update(self.task, completed=self.total)
            self.progress.__exit__(*exc)


def summary_table(results: Sequence[Mapping[str, Any]]) -> Table:
    """The side-by-side table of runs (``compare``) or of one run (``simulate``)."""
    table = compact_table("fedpress simulation")
    for header, _ in SUMMARY_COLUMNS:
        if header == "plan":
            table.add_column(header, overflow="fold", min_width=6, ratio=1)
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for row in summary_rows(results):
        table.add_row(*(escape(str(row[key])) if key == "plan" else
                        f"{row[key]:.3f}" if key.endswith("accuracy") else fmt_num(row[key])
                        for _, key in SUMMARY_COLUMNS))
    return table


def summary_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of comparison.csv with ``codec_s``, encode + decode seconds."""
    from ..sim.run import comparison_rows

    return [row | {"codec_s": row["encode_s"] + row["decode_s"]}
            for row in comparison_rows(results)]


def print_summary(results: Sequence[Mapping[str, Any]], out: Path) -> None:
    """Print the summary table and where the outputs are."""
    console = out_console()
    console.print(summary_table(results))
    console.print(SUMMARY_LEGEND, style="dim", highlight=False)
    console.print(f"outputs in {escape(str(out))}", highlight=False)
