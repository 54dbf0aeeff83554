"""The tensor commands: ``compress``, ``decompress``, ``inspect`` and ``codecs``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .. import io as fio
from ..analysis import error_profile, plot_error_profile
from ..api import DEFAULT_CODEC
from ..api import decompress as fp_decompress
from ..api import inspect as fp_inspect
from ..errors import ConfigError, FormatError
from ..frame import KIND_TENSOR, Limits, peek_kind
from ..partition import DEFAULT_LOSSLESS, DEFAULT_LOSSY, DEFAULT_THRESHOLD
from ..registry import codec_class, list_codecs, unavailable_reason
from ..update import decode_update, encode_update
from .common import app, err_console, handle_errors, out_console
from .error_table import ERROR_LEGEND, error_table
from .options import (
    AllowOption,
    IsolateOption,
    Mode,
    decoder_limits,
    opt_in_hint,
    parse_options,
    parse_plan,
    read_frame,
    same_file,
)
from .render import (
    codec_kind,
    compact_table,
    first_sentence,
    fmt_bytes,
    fmt_cr,
    fmt_size,
    jsonable,
)

__all__ = ["codecs", "compress", "decompress", "inspect", "inspect_table", "probe"]


def probe(codec_id: str) -> tuple[bool, str]:
    """Whether codec ``codec_id`` works here (see :func:`fedpress.registry.unavailable_reason`)."""
    reason = unavailable_reason(codec_id)
    return reason is None, reason or "ok"


# -- compress -----------------------------------------------------------------


@app.command()
@handle_errors
def compress(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="Tensor file: .npy, .npz, "
                                                               ".safetensors, .pt/.pth.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Frame to write.",
                                                show_default="INPUT.fpz")] = None,
    plan: Annotated[str | None, typer.Option(help="'fedsz', a codec id, name(key=value, ...) "
                                           "with codec options, or a JSON object of "
                                           "rules such as '{\"re:weight\": \"sz3\", "
                                           "\"default\": \"zstd\"}' [default: fedsz]")]
    = None,
    codec: Annotated[str | None, typer.Option(help="Shorthand for --plan ID: every floating "
                                                   "tensor with >= threshold elements via ID.")]
    = None,
    mode: Annotated[Mode, typer.Option(help="Error-bound mode.")] = Mode.rel,
    eb: Annotated[float, typer.Option(help="Error bound (relative to the value range "
                                           "in rel mode).")] = 1e-2,
    threshold: Annotated[int, typer.Option(help="fedsz: tensors with MORE elements go to the "
                                                "lossy codec; a codec-id plan: tensors with "
                                                "at least this many.")] = DEFAULT_THRESHOLD,
    lossy: Annotated[str | None, typer.Option(
        help=f"Lossy codec of the fedsz plan [default: {DEFAULT_LOSSY}].")] = None,
    lossless: Annotated[str | None, typer.Option(
        help=f"Lossless codec for everything else [default: {DEFAULT_LOSSLESS}].")] = None,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-O", help="Codec option key=value for the lossy / named codec "
                               "(repeatable), e.g. -O algorithm=interp.")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Tensor file the receiver also holds (e.g. the global model this one was "
             "trained from): error-bounded tensors are coded as their difference from it; "
             "decompress with the same --reference.")] = None,
) -> None:
    """Compress a tensor file into one fedpress update frame."""
    if codec is not None and plan is not None:
        raise ConfigError("give --plan or --codec, not both")
    spec: str | dict[str, Any]
    spec, plan_opts = (codec, {}) if codec is not None else parse_plan(plan or "fedsz")
    out = output if output is not None else input.with_name(input.name + ".fpz")
    tensors = fio.load_tensors(input)
    if same_file(out, input):
        raise ConfigError(f"output {str(out)!r} would overwrite the input")
    opts = parse_options(option, plan_opts)
    t0 = time.perf_counter()
    ref = fio.load_tensors(reference) if reference is not None else None
    blob = encode_update(tensors, spec, mode.value, eb, threshold=threshold, lossy=lossy,
                         lossless=lossless, reference=ref, **opts)
    elapsed = time.perf_counter() - t0
    fio.write_bytes_atomically(out, blob)

    info = fp_inspect(blob, Limits(codecs=frozenset(list_codecs())))  # our own frame
    by_codec: dict[str, int] = {}
    for t in info["tensors"]:
        by_codec[t["codec"]] = by_codec.get(t["codec"], 0) + 1
    orig = info["original_bytes"]
    console = out_console()
    console.print(f"[bold]{escape(str(input))}[/] -> [bold]{escape(str(out))}[/]",
                  highlight=False)
    parts = ", ".join(f"{n} {escape(c)}" for c, n in by_codec.items())
    console.print(f"  {len(info['tensors'])} tensors ({parts})", highlight=False)
    console.print(f"  original {fmt_bytes(orig)} B -> frame {fmt_bytes(len(blob))} B, "
                  f"CR [bold]{fmt_cr(info['cr'])}[/], {elapsed:.3f} s", highlight=False)
    if spec == "fedsz" and not any("eb_abs" in t for t in info["tensors"]):
        console.print("  [yellow]note:[/] no tensor went to the lossy codec: the fedsz plan "
                      "takes tensors whose name contains 'weight' and that have more than "
                      f"{threshold} elements; use --codec {DEFAULT_CODEC} to compress every "
                      "floating tensor", highlight=False)


# -- decompress ---------------------------------------------------------------


@app.command()
@handle_errors
def decompress(
    input: Annotated[Path, typer.Argument(metavar="INPUT",
                                          help="A .fpz frame from 'fedpress compress' "
                                               "or fedpress.compress().")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Tensor file to write: .npz, "
                                                               ".safetensors, .pt/.pth or .npy.")],
    reference: Annotated[Path | None, typer.Option(
        help="The tensor file the frame was compressed against (compress --reference).")]
    = None,
    allow: AllowOption = None,
    isolate: IsolateOption = None,
) -> None:
    """Decode a frame and save its tensors (a single-tensor frame under the key 'tensor')."""
    fio.format_of(output)  # fail on a bad extension before decoding
    if same_file(output, input):
        raise ConfigError(f"output {str(output)!r} would overwrite the input")
    limits = decoder_limits(allow, isolate)
    blob = read_frame(input)
    ref = fio.load_tensors(reference) if reference is not None else None
    t0 = time.perf_counter()
    try:
        if peek_kind(blob) == KIND_TENSOR:
            tensors = {"tensor": fp_decompress(blob, limits)}
        else:
            tensors = decode_update(blob, limits, reference=ref)
    except FormatError as exc:
        raise opt_in_hint(exc) from None
    elapsed = time.perf_counter() - t0
    fio.save_tensors(tensors, output)
    out_console().print(
        f"[bold]{escape(str(input))}[/] -> [bold]{escape(str(output))}[/]: "
        f"{len(tensors)} tensor{'s' if len(tensors) != 1 else ''}, "
        f"{fmt_bytes(sum(a.nbytes for a in tensors.values()))} B, {elapsed:.3f} s",
        highlight=False)


# -- inspect ------------------------------------------------------------------


@app.command()
@handle_errors
def inspect(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .fpz frame.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print fedpress.inspect() as JSON "
                                                         "(with --errors: the profiles).")]
    = False,
    errors: Annotated[Path | None, typer.Option(
        "--errors", metavar="ORIGINAL",
        help="Decode the frame and profile its coding error against ORIGINAL, the tensor "
             "file it was compressed from: max error against the bound, fitted Laplace / "
             "Gaussian / uniform scales and their Kolmogorov-Smirnov distances, "
             "correlations.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="PNG", help="With --errors: draw each tensor's error histogram "
                                      "and fitted densities into PNG (needs matplotlib).")]
    = None,
    reference: Annotated[Path | None, typer.Option(
        help="With --errors: the tensor file the frame was compressed against "
             "(compress --reference).")] = None,
    allow: AllowOption = None,
    isolate: IsolateOption = None,
) -> None:
    """Describe a frame per tensor without decoding it; with --errors, decode it and
    describe its coding error."""
    if errors is None and (plot is not None or reference is not None):
        raise ConfigError("--plot and --reference go with --errors ORIGINAL")
    if errors is not None:
        _inspect_errors(file, errors, plot, reference, as_json, decoder_limits(allow, isolate))
        return
    try:
        info = fp_inspect(read_frame(file), decoder_limits(allow, isolate))
    except FormatError as exc:
        raise opt_in_hint(exc) from None
    if as_json:
        typer.echo(json.dumps(jsonable(info), indent=2, allow_nan=False))
        return
    tensors = info["tensors"]
    payload = sum(t["payload_bytes"] for t in tensors)
    console = out_console()
    console.print(inspect_table(info, str(file)))
    console.print(f"frame {fmt_bytes(info['frame_bytes'])} B (payload {fmt_bytes(payload)} B, "
                  f"headers {fmt_bytes(info['frame_bytes'] - payload)} B) for "
                  f"{fmt_bytes(info['original_bytes'])} B of tensors: CR {fmt_cr(info['cr'])}",
                  highlight=False)
    if info.get("meta"):
        console.print(Text(f"meta: {json.dumps(info['meta'])}"))
    for t in tensors:
        if "describe_error" in t:
            err_console().print(Text(f"warning: {t['name'] or '(tensor)'}: "
                                     f"{t['describe_error']}", style="yellow"), soft_wrap=True)


def _inspect_errors(file: Path, original: Path, plot: Path | None, reference: Path | None,
                    as_json: bool, limits: Limits) -> None:
    """``inspect --errors``: decode ``file`` under ``limits`` and profile its error."""
    if plot is not None:
        if plot.suffix.lower() != ".png":
            raise ConfigError(f"--plot {str(plot)!r}: give a .png file")
        if same_file(plot, file) or same_file(plot, original):
            raise ConfigError(f"--plot {str(plot)!r} would overwrite an input")
    blob = read_frame(file)
    tensors = fio.load_tensors(original)
    ref = fio.load_tensors(reference) if reference is not None else None
    try:
        profiles = error_profile(tensors, blob, limits=limits, reference=ref)
    except FormatError as exc:
        raise opt_in_hint(exc) from None
    if plot is not None:
        plot_error_profile(profiles, plot)
    if as_json:
        typer.echo(json.dumps(jsonable([p.to_dict() for p in profiles.values()]), indent=2,
                              allow_nan=False))
        return
    console = out_console()
    console.print(error_table(profiles, f"{file}: coding error against {original}"))
    console.print(Text(ERROR_LEGEND, style="dim"))
    over = [p.name or "(tensor)" for p in profiles.values() if p.within_bound is False]
    if over:
        err_console().print(Text(f"warning: over the declared bound: {', '.join(over)}",
                                 style="yellow"), soft_wrap=True)
    if plot is not None:
        console.print(f"plot: {escape(str(plot))}", highlight=False)


def inspect_table(info: dict[str, Any], title: str) -> Table:
    """The per-tensor table of ``inspect``: codec, shape, dtype, payload size, CR, and the
    absolute bound and patch count where some tensor has them.

    The original size of a tensor is its shape times its dtype's size; the totals are
    under the table."""
    table = compact_table(f"{escape(title)}: {info['kind']} frame v{info['version']}")
    tensors = info["tensors"]
    show_eb = any(t.get("eb_abs") is not None for t in tensors)
    show_patches = any(t.get("patches") is not None for t in tensors)
    table.add_column("name", overflow="fold", min_width=12, ratio=1)
    for col in ("codec", "shape", "dtype"):
        table.add_column(col, no_wrap=True)
    numeric = ["payload", "CR"]
    numeric += ["eb_abs"] if show_eb else []
    numeric += ["patches"] if show_patches else []
    for col in numeric:
        table.add_column(col, justify="right", no_wrap=True)
    for t in tensors:
        cells = [
            escape(t["name"]) or "(tensor)", escape(str(t["codec"])),
            "x".join(str(d) for d in t["shape"]) or "()", t["dtype"],
            fmt_size(t["payload_bytes"]), fmt_cr(t["cr"]),
        ]
        if show_eb:
            cells.append("-" if t.get("eb_abs") is None else f"{t['eb_abs']:.3g}")
        if show_patches:
            cells.append("-" if t.get("patches") is None else str(t["patches"]))
        table.add_row(*cells)
    payload = sum(t["payload_bytes"] for t in tensors)
    table.add_section()
    table.add_row(f"total: {len(tensors)}", "", "", "", fmt_size(payload),
                  fmt_cr(info["original_bytes"] / payload if payload else None),
                  *([""] * (len(numeric) - 2)), style="bold")
    return table


# -- codecs -------------------------------------------------------------------


@app.command()
@handle_errors
def codecs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the registered codecs and whether their back end library works here."""
    rows: list[dict[str, Any]] = []
    for cid in list_codecs():
        cls = codec_class(cid)
        ok, msg = probe(cid)
        rows.append({"id": cid, "kind": codec_kind(cls), "error_bounded": cls.error_bounded,
                     "lossy": cls.lossy, "available": ok, "status": msg,
                     "description": first_sentence(cls.__doc__)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = compact_table("fedpress codecs")
    table.add_column("id", style="bold", no_wrap=True)
    table.add_column("kind", max_width=14, overflow="fold")
    table.add_column("available", no_wrap=True)
    table.add_column("description / problem", ratio=1)
    for r in rows:
        table.add_row(escape(r["id"]), r["kind"],
                      "[green]yes[/]" if r["available"] else "[red]no[/]",
                      escape(r["description"] if r["available"] else r["status"]))
    out_console().print(table)
