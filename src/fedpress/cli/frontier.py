"""``fedpress recommend``: the plan with the fewest bytes within an accuracy budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..sim.frontier import read_frontier, recommend
from .common import app, handle_errors, out_console
from .render import compact_table, fmt_num

__all__ = ["DEFAULT_FRONTIER", "recommend_plan"]

#: the project's measured frontier, shipped with the package
DEFAULT_FRONTIER = Path(__file__).resolve().parent.parent / "sim" / "frontier.csv"


#: seeds below which a comparison gets a caution
MIN_SEEDS = 3


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


@app.command("recommend")
@handle_errors
def recommend_plan(
    model: Annotated[str, typer.Option(help="The model, as in the frontier (e.g. cnn).")],
    accuracy_budget: Annotated[float, typer.Option(
        help="Accuracy points you accept to lose against raw FedAvg.")] = 0.5,
    uplink_mbps: Annotated[float, typer.Option(help="Your clients' uplink.")] = 10.0,
    downlink_mbps: Annotated[float | None, typer.Option(
        help="Your clients' downlink (default: the uplink's).")] = None,
    split: Annotated[str | None, typer.Option(
        help="The data split, as in the frontier (iid, dirichlet-0.3).")] = None,
    frontier: Annotated[Path | None, typer.Option(
        help="A frontier CSV (benchmarks/frontier.py); default: the project's.")] = None,
) -> None:
    """Recommend the plan with the fewest bytes within an accuracy budget.

    Reads a measured frontier (several seeds per plan), keeps the plans whose mean
    final accuracy is within the budget of raw FedAvg's, and prints the one that
    sends the fewest bytes over the whole training, both ways, with the flags to
    paste, its traffic reduction and its time per round on your links.
    """
    if not accuracy_budget >= 0 or not uplink_mbps > 0 or not (downlink_mbps or 1) > 0:
        raise ConfigError("the accuracy budget is >= 0 and bandwidths are > 0")
    down = uplink_mbps if downlink_mbps is None else downlink_mbps
    path = frontier or DEFAULT_FRONTIER
    if frontier is None and not path.exists():
        raise ConfigError("this install has no measured frontier: run "
                          "benchmarks/frontier.py and pass --frontier FILE")
    rec = recommend(read_frontier(path), model, accuracy_budget, split)
    best, base = rec.best, rec.baseline
    console = out_console()
    lines = [
        f"Recommended: {best.plan} ({best.model}, {best.split}, {best.rounds:.0f} rounds)",
        f"  {fmt_num(best.reduction)}x less traffic than raw FedAvg, both ways, whole run",
        f"  accuracy {best.accuracy:.4f} ± {best.spread:.4f} ({_seeds(best.seeds)}) against "
        f"{base.accuracy:.4f} ± {base.spread:.4f} ({_seeds(base.seeds)})",
        f"  a round at {uplink_mbps:g} up / {down:g} down Mbps: "
        f"{best.round_seconds(uplink_mbps, down):.2f} s against "
        f"{base.round_seconds(uplink_mbps, down):.2f} s raw"]
    if min(best.seeds, base.seeds) < MIN_SEEDS:
        lines.append(f"  caution: fewer than {MIN_SEEDS} seeds; a gap of a few tenths of a "
                     "point between single runs may be noise")
    for line in lines:
        console.print(line, highlight=False)
    # the command to paste, on one line whatever its length
    console.print(f"  fedpress simulate {best.flags}", highlight=False, soft_wrap=True)
    table = compact_table(f"Within {accuracy_budget:g} points, fewest bytes first")
    for header in ("plan", "acc", "spread", "seeds", "MB", "less", "s/round"):
        table.add_column(header, justify="left" if header == "plan" else "right")
    for p in rec.candidates[:8]:
        table.add_row(p.plan, f"{p.accuracy:.4f}", f"{p.spread:.4f}", str(p.seeds),
                      fmt_num(p.bytes_total / 1e6), f"{fmt_num(p.reduction)}x",
                      f"{p.round_seconds(uplink_mbps, down):.2f}")
    console.print(table)
