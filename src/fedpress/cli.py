"""The ``fedpress`` command line: compress, decompress, inspect, codecs, bench.

::

    fedpress compress model.pt -o model.fpz --plan fedsz --eb 1e-2
    fedpress inspect model.fpz [--json]
    fedpress decompress model.fpz -o decoded.safetensors
    fedpress codecs [--json]
    fedpress bench model.pt --codecs sz3,zstd --eb 1e-2,1e-3 --json results.json

Tensor files are ``.npy``, ``.npz``, ``.safetensors`` and ``.pt``/``.pth``
(see :mod:`fedpress.io`), written atomically (an interrupted write leaves the
previous file whole). fedpress's own errors and missing files end with a
one-line ``error: ...`` on stderr and exit status 2.

Decoding commands accept the codecs whose decoders are safe on untrusted bytes
(every registered codec but ``sz2``); ``--allow CODEC`` adds one, ``--isolate
CODEC`` decodes one in a child process (see :class:`fedpress.Limits`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import io as fio
from .abc import Codec, StatefulCodec
from .api import DEFAULT_CODEC
from .api import compress as fp_compress
from .api import decompress as fp_decompress
from .api import inspect as fp_inspect
from .dtypes import is_float
from .errors import ConfigError, FedpressError, FormatError
from .frame import KIND_TENSOR, Limits, peek_kind
from .partition import DEFAULT_LOSSLESS, DEFAULT_LOSSY, DEFAULT_THRESHOLD
from .registry import codec_class, list_codecs, unavailable_reason
from .update import decode_update, encode_update, trusting
from .verify import compare

__all__ = ["app", "main"]

EXIT_ERROR = 2
DEFAULT_BENCH_CODECS = "sz3,sz2,zfp,szx,zstd,blosc-lz"
DEFAULT_BENCH_EBS = "1e-2,1e-3,1e-4"

app = typer.Typer(
    name="fedpress",
    help="Compress federated-learning tensors and state dicts (error-bounded lossy and lossless).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# resolved lazily: rich looks up sys.stdout / sys.stderr at each print. Piped output
# gets a wide console: rich's 80-column default truncates the per-tensor tables.
console = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", 160)))
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class Mode(StrEnum):
    """Error-bound mode."""

    rel = "rel"
    abs = "abs"


# -- helpers ------------------------------------------------------------------


def _fail(message: str) -> typer.Exit:
    line = " ".join(str(message).split())
    err_console.print(Text("error: ", style="bold red") + Text(line, style="red"),
                      soft_wrap=True, highlight=False)
    return typer.Exit(code=EXIT_ERROR)


def _handle_errors(fn: F) -> F:
    """Turn fedpress errors and file errors into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as exc:
            name = exc.filename
            raise _fail(f"no such file or directory: {name!r}" if name else str(exc)) from None
        except (FedpressError, OSError) as exc:
            raise _fail(str(exc) or type(exc).__name__) from None

    return wrapper  # type: ignore[return-value]


AllowOption = Annotated[list[str] | None, typer.Option(
    "--allow", metavar="CODEC",
    help="Also decode codec CODEC in this process (repeatable). By default every registered "
         "codec whose decoder is safe on untrusted bytes is accepted: all but sz2, whose "
         "native library can crash on a crafted frame. Only for frames you trust.")]
IsolateOption = Annotated[list[str] | None, typer.Option(
    "--isolate", metavar="CODEC",
    help="Decode codec CODEC in a child process with limited memory and time "
         "(repeatable); a crash there is an error here. Accepts CODEC too.")]


def _decoder_limits(allow: list[str] | None, isolate: list[str] | None) -> Limits:
    """The :class:`Limits` of a decoding command: ``--allow`` codecs added to the
    peer-safe ones, ``--isolate`` codecs decoded in a child process."""
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


def _opt_in_hint(exc: FormatError) -> FormatError:
    """A refused codec's error, with how to opt in on the command line."""
    text = str(exc)
    if "Limits(" in text or "Limits.codecs" in text:
        return FormatError(f"{text} (on the command line: --isolate CODEC or --allow CODEC)")
    return exc


def _read_frame(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a directory, not a fedpress frame")
    return path.read_bytes()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:  # pragma: no cover - unusual file systems
        return False


def _parse_plan(plan: str) -> str | dict[str, Any]:
    """A plan name / codec id, or a JSON object of rules."""
    text = plan.strip()
    if text.startswith("{"):
        try:
            rules = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--plan looks like JSON but does not parse: {exc}") from None
        if not isinstance(rules, dict):
            raise ConfigError("--plan JSON must be an object of pattern -> codec")
        return rules
    return text


_RESERVED_OPTIONS = frozenset({"mode", "eb", "threshold", "lossy", "lossless", "plan", "codec",
                               "store", "peer"})


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (``level=19``), else strings."""
    out: dict[str, Any] = {}
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects key=value, got {item!r}")
        if key.strip() in _RESERVED_OPTIONS:
            raise ConfigError(f"--option {key.strip()}=... : use --{key.strip()} instead")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _split_list(text: str, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{what} is empty")
    return items


def _parse_floats(text: str, what: str) -> list[float]:
    out = []
    for item in _split_list(text, what):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{what}: {item!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{what}: bounds must be finite and > 0, not {item!r}")
        out.append(value)
    return out


def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats by None so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    return obj


def _fmt_bytes(n: int) -> str:
    return f"{n:,}"


def _fmt_cr(cr: float | None) -> str:
    if cr is None:
        return "-"
    return "inf" if math.isinf(cr) else f"{cr:.2f}"


def _codec_kind(cls: type[Codec]) -> str:
    kind = "error-bounded" if cls.error_bounded else ("lossy" if cls.lossy else "lossless")
    if issubclass(cls, StatefulCodec):
        kind += f", stateful ({cls.scope.value})"
    return kind


def _probe(codec_id: str) -> tuple[bool, str]:
    """Whether codec ``codec_id`` works here (see :func:`fedpress.registry.unavailable_reason`)."""
    reason = unavailable_reason(codec_id)
    return reason is None, reason or "ok"


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"fedpress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Show the version and exit.")]
    = False,
) -> None:
    """Compress federated-learning tensors and state dicts."""


# -- compress -----------------------------------------------------------------


@app.command()
@_handle_errors
def compress(
    input: Annotated[Path, typer.Argument(metavar="INPUT", help="Tensor file: .npy, .npz, "
                                                               ".safetensors, .pt/.pth.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Frame to write.",
                                                show_default="INPUT.fpz")] = None,
    plan: Annotated[str | None, typer.Option(help="'fedsz', a codec id, or a JSON object of "
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
    spec: str | dict[str, Any] = codec if codec is not None else _parse_plan(plan or "fedsz")
    out = output if output is not None else input.with_name(input.name + ".fpz")
    tensors = fio.load_tensors(input)
    if _same_file(out, input):
        raise ConfigError(f"output {str(out)!r} would overwrite the input")
    opts = _parse_options(option)
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
    console.print(f"[bold]{escape(str(input))}[/] -> [bold]{escape(str(out))}[/]",
                  highlight=False)
    parts = ", ".join(f"{n} {escape(c)}" for c, n in by_codec.items())
    console.print(f"  {len(info['tensors'])} tensors ({parts})", highlight=False)
    console.print(f"  original {_fmt_bytes(orig)} B -> frame {_fmt_bytes(len(blob))} B, "
                  f"CR [bold]{_fmt_cr(info['cr'])}[/], {elapsed:.3f} s", highlight=False)
    if spec == "fedsz" and not any("eb_abs" in t for t in info["tensors"]):
        console.print("  [yellow]note:[/] no tensor went to the lossy codec: the fedsz plan "
                      "takes tensors whose name contains 'weight' and that have more than "
                      f"{threshold} elements; use --codec {DEFAULT_CODEC} to compress every "
                      "floating tensor", highlight=False)


# -- decompress ---------------------------------------------------------------


@app.command()
@_handle_errors
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
    if _same_file(output, input):
        raise ConfigError(f"output {str(output)!r} would overwrite the input")
    limits = _decoder_limits(allow, isolate)
    blob = _read_frame(input)
    ref = fio.load_tensors(reference) if reference is not None else None
    t0 = time.perf_counter()
    try:
        if peek_kind(blob) == KIND_TENSOR:
            tensors = {"tensor": fp_decompress(blob, limits)}
        else:
            tensors = decode_update(blob, limits, reference=ref)
    except FormatError as exc:
        raise _opt_in_hint(exc) from None
    elapsed = time.perf_counter() - t0
    fio.save_tensors(tensors, output)
    console.print(f"[bold]{escape(str(input))}[/] -> [bold]{escape(str(output))}[/]: "
                  f"{len(tensors)} tensor{'s' if len(tensors) != 1 else ''}, "
                  f"{_fmt_bytes(sum(a.nbytes for a in tensors.values()))} B, {elapsed:.3f} s",
                  highlight=False)


# -- inspect ------------------------------------------------------------------


@app.command()
@_handle_errors
def inspect(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A .fpz frame.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print fedpress.inspect() as JSON.")]
    = False,
    allow: AllowOption = None,
    isolate: IsolateOption = None,
) -> None:
    """Describe a frame per tensor without decoding it."""
    try:
        info = fp_inspect(_read_frame(file), _decoder_limits(allow, isolate))
    except FormatError as exc:
        raise _opt_in_hint(exc) from None
    if as_json:
        typer.echo(json.dumps(_jsonable(info), indent=2, allow_nan=False))
        return
    table = Table(title=f"{escape(str(file))}: {info['kind']} frame v{info['version']}",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    tensors = info["tensors"]
    show_eb = any(t.get("eb_abs") is not None for t in tensors)
    show_patches = any(t.get("patches") is not None for t in tensors)
    table.add_column("name", overflow="fold", min_width=12)
    for col in ("codec", "shape", "dtype"):
        table.add_column(col, no_wrap=True)
    numeric = ["bytes", "payload", "CR"]
    numeric += ["eb_abs"] if show_eb else []
    numeric += ["patches"] if show_patches else []
    for col in numeric:
        table.add_column(col, justify="right", no_wrap=True)
    problems = []
    for t in tensors:
        if "describe_error" in t:
            problems.append(f"{t['name'] or '(tensor)'}: {t['describe_error']}")
        cells = [
            escape(t["name"]) or "(tensor)", escape(str(t["codec"])),
            "x".join(str(d) for d in t["shape"]) or "()", t["dtype"],
            _fmt_bytes(t["original_bytes"]), _fmt_bytes(t["payload_bytes"]), _fmt_cr(t["cr"]),
        ]
        if show_eb:
            cells.append("-" if t.get("eb_abs") is None else f"{t['eb_abs']:.3g}")
        if show_patches:
            cells.append("-" if t.get("patches") is None else str(t["patches"]))
        table.add_row(*cells)
    payload = sum(t["payload_bytes"] for t in tensors)
    table.add_section()
    table.add_row(f"total: {len(tensors)}", "", "", "",
                  _fmt_bytes(info["original_bytes"]), _fmt_bytes(payload),
                  _fmt_cr(info["original_bytes"] / payload if payload else None),
                  *([""] * (len(numeric) - 3)), style="bold")
    console.print(table)
    console.print(f"frame {_fmt_bytes(info['frame_bytes'])} B (headers "
                  f"{_fmt_bytes(info['frame_bytes'] - payload)} B), "
                  f"CR {_fmt_cr(info['cr'])}", highlight=False)
    if info.get("meta"):
        console.print(Text(f"meta: {json.dumps(info['meta'])}"))
    for p in problems:
        err_console.print(Text(f"warning: {p}", style="yellow"), soft_wrap=True)


# -- codecs -------------------------------------------------------------------


@app.command()
@_handle_errors
def codecs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the registered codecs and whether their back end library works here."""
    rows: list[dict[str, Any]] = []
    for cid in list_codecs():
        cls = codec_class(cid)
        ok, msg = _probe(cid)
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append({"id": cid, "kind": _codec_kind(cls), "error_bounded": cls.error_bounded,
                     "lossy": cls.lossy, "available": ok, "status": msg,
                     "description": doc[0] if doc else ""})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="fedpress codecs", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    table.add_column("id", style="bold")
    table.add_column("kind")
    table.add_column("available")
    table.add_column("description / problem")
    for r in rows:
        table.add_row(escape(r["id"]), r["kind"],
                      "[green]yes[/]" if r["available"] else "[red]no[/]",
                      escape(r["description"] if r["available"] else r["status"]))
    console.print(table)


# -- bench --------------------------------------------------------------------


def _bench_one(codec_id: str, cls: type[Codec], eb: float | None, mode: str,
               tensors: dict[str, np.ndarray], repeat: int,
               advance: Callable[[], None]) -> dict[str, Any]:
    """Compress / decompress every tensor ``repeat`` times; one result row (the frames
    are this process's own, so every codec is decoded here, whether peer-safe or not)."""
    kwargs: dict[str, Any] = {"codec": codec_id}
    limits = trusting(codec_id)
    if eb is not None:
        kwargs.update(mode=mode, eb=eb)
    comp_t = [0.0] * repeat
    decomp_t = [0.0] * repeat
    frame_bytes = 0
    worst: float | None = 0.0 if cls.error_bounded else None
    max_abs = 0.0
    violations = 0
    for x in tensors.values():
        blob = b""
        for i in range(repeat):
            t0 = time.perf_counter()
            blob = fp_compress(x, **kwargs)
            comp_t[i] += time.perf_counter() - t0
        y = x
        for i in range(repeat):
            t0 = time.perf_counter()
            y = fp_decompress(blob, limits)
            decomp_t[i] += time.perf_counter() - t0
        frame_bytes += len(blob)
        if cls.error_bounded:
            bound: float | None = float(
                fp_inspect(blob, limits)["tensors"][0].get("eb_abs", math.nan))
        else:
            bound = math.inf if cls.lossy else None  # lossy without a bound: report only
        check = compare(x, y, bound)
        max_abs = max(max_abs, check.max_error)
        if cls.error_bounded:
            assert worst is not None
            worst = max(worst, check.ratio)
        violations += check.violations > 0
        advance()
    orig = sum(x.nbytes for x in tensors.values())
    n_values = sum(x.size for x in tensors.values())
    ct, dt = statistics.median(comp_t), statistics.median(decomp_t)
    return {
        "codec": codec_id, "kind": _codec_kind(cls), "mode": mode if eb is not None else None,
        "eb": eb, "available": True, "error": None,
        "tensors": len(tensors), "values": n_values,
        "original_bytes": orig, "frame_bytes": frame_bytes,
        "cr": orig / frame_bytes if frame_bytes else math.inf,
        "bits_per_value": 8.0 * frame_bytes / n_values if n_values else 0.0,
        "compress_mb_s": orig / 1e6 / ct if ct > 0 else math.inf,
        "decompress_mb_s": orig / 1e6 / dt if dt > 0 else math.inf,
        "max_abs_error": max_abs,
        "max_error_over_eb": worst,
        "violations": violations if (cls.error_bounded or not cls.lossy) else None,
    }


@app.command()
@_handle_errors
def bench(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="Tensor file: .npy, .npz, "
                                                             ".safetensors, .pt/.pth.")],
    codecs: Annotated[str, typer.Option(help="Comma-separated codec ids.")]
    = DEFAULT_BENCH_CODECS,
    eb: Annotated[str, typer.Option(help="Comma-separated error bounds (error-bounded "
                                         "codecs run once per bound).")] = DEFAULT_BENCH_EBS,
    mode: Annotated[Mode, typer.Option(help="Error-bound mode.")] = Mode.rel,
    min_elements: Annotated[int, typer.Option(min=0, help="Only floating tensors with at "
                                                          "least this many elements.")] = 1000,
    repeat: Annotated[int, typer.Option(min=1, help="Timing repetitions (median).")] = 3,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as "
                                                                 "JSON to this file "
                                                                 "('-': stdout).")] = None,
) -> None:
    """Compression ratio, speed and error of codecs on the tensors of a file.

    Each selected tensor is flattened to float32 and compressed alone with
    fedpress.compress(); CR is total original bytes / total frame bytes, speeds
    are in MB/s (1e6 bytes) over the median of --repeat runs, 'err/eb' is the
    worst max|x - x'| / eb_abs over the tensors and 'viol' the number of
    tensors over their bound (for lossless codecs: not bit-exact).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    codec_ids = _split_list(codecs, "--codecs")
    ebs = _parse_floats(eb, "--eb")
    if json_out is not None and str(json_out) != "-" and not json_out.parent.is_dir():
        raise ConfigError(f"--json: directory {str(json_out.parent)!r} does not exist")
    loaded = fio.load_tensors(file)
    selected = {name: np.asarray(a, dtype=np.float32).reshape(-1)
                for name, a in loaded.items() if is_float(a.dtype) and a.size >= min_elements}
    if not selected:
        raise ConfigError(f"no floating tensor in {str(file)!r} has >= {min_elements} elements "
                          f"(lower --min-elements)")

    rows: list[dict[str, Any]] = []
    plan: list[tuple[str, type[Codec], float | None]] = []
    for cid in codec_ids:
        try:
            cls = codec_class(cid)
        except ConfigError as exc:
            rows.append({"codec": cid, "available": False, "error": str(exc)})
            continue
        if issubclass(cls, StatefulCodec):
            rows.append({"codec": cid, "available": False,
                         "error": "stateful codec: benchmark it through UpdateEncoder"})
            continue
        ok, msg = _probe(cid)
        if not ok:
            rows.append({"codec": cid, "available": False, "error": msg})
            continue
        if cls.error_bounded:
            plan.extend((cid, cls, e) for e in ebs)
        else:
            plan.append((cid, cls, None))

    measured: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task("bench", total=len(plan) * len(selected))
        for cid, cls, e in plan:
            label = cid if e is None else f"{cid} eb={e:g}"
            progress.update(task, description=label)
            try:
                row = _bench_one(cid, cls, e, mode.value, selected, repeat,
                                 lambda: progress.advance(task))
            except Exception as exc:  # one broken codec must not stop the run
                row = {"codec": cid, "eb": e, "available": True,
                       "error": f"{type(exc).__name__}: {exc}"}
            measured.append(row)
    if not any(not r.get("error") for r in measured):
        reasons = "; ".join(f"{r['codec']}: {r.get('error')}" for r in rows + measured)
        raise ConfigError(f"no codec could be measured ({reasons})")
    rows = measured + rows

    result = {
        "file": str(file), "mode": mode.value, "min_elements": min_elements, "repeat": repeat,
        "tensors": len(selected), "values": int(sum(x.size for x in selected.values())),
        "original_bytes": int(sum(x.nbytes for x in selected.values())),
        "skipped_tensors": len(loaded) - len(selected), "rows": rows,
    }
    if json_out is not None:
        text = json.dumps(_jsonable(result), indent=2, allow_nan=False)
        if str(json_out) == "-":
            typer.echo(text)
            return
        fio.write_bytes_atomically(json_out, (text + "\n").encode())

    console.print(f"[bold]{escape(str(file))}[/]: {result['tensors']} tensors, "
                  f"{result['values']:,} values as float32 ({result['skipped_tensors']} "
                  f"skipped), mode {mode.value}, median of {repeat}", highlight=False)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("codec", "eb", "CR", "bits/val", "comp MB/s", "dec MB/s", "err/eb", "viol"):
        table.add_column(col, justify="left" if col == "codec" else "right", no_wrap=True)
    for r in measured:
        e = r.get("eb")
        if r.get("error"):
            table.add_row(escape(r["codec"]), "-" if e is None else f"{e:g}",
                          Text(f"failed: {r['error']}", style="red"), "", "", "", "", "")
            continue
        ratio = r["max_error_over_eb"]
        viol = r["violations"]
        table.add_row(
            escape(r["codec"]), "-" if e is None else f"{e:g}", _fmt_cr(r["cr"]),
            f"{r['bits_per_value']:.2f}", f"{r['compress_mb_s']:.1f}",
            f"{r['decompress_mb_s']:.1f}", "-" if ratio is None else f"{ratio:.3f}",
            "-" if viol is None else (f"[red]{viol}[/]" if viol else "0"),
        )
    console.print(table)
    for r in rows[len(measured):]:
        err_console.print(Text(f"unavailable: {r['codec']}: {r['error']}", style="yellow"),
                          soft_wrap=True)
    if json_out is not None:
        console.print(f"results written to {escape(str(json_out))}", highlight=False)


def _sim_settings(config: Path | None, **flags: Any) -> dict[str, Any]:
    """TOML settings (if any) overridden by the flags given on the command line."""
    from .sim.run import load_config

    settings = load_config(config) if config is not None else {}
    for key in ("uplink_mbps", "downlink_mbps", "latency_ms"):
        if isinstance(flags.get(key), str):
            flags[key] = _parse_link(flags[key], key)
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings


def _parse_link(text: str, what: str) -> float | list[float]:
    values = _parse_floats(text, f"--{what.replace('_', '-')}")
    return values[0] if len(values) == 1 else values


def _sim_flags() -> dict[str, Any]:
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
        "aggregate": Annotated[str | None, opt(help="Server aggregation: mean, or vote "
                                                    "(signSGD majority vote).")],
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
    }


def _with_sim_flags(fn: F) -> F:
    """Give ``fn`` (which takes ``**flags``) the shared simulation options."""
    import inspect as _inspect

    sig = _inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
    params += [_inspect.Parameter(name, _inspect.Parameter.KEYWORD_ONLY, default=None,
                                  annotation=ann) for name, ann in _sim_flags().items()]
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return fn


@app.command()
@_handle_errors
@_with_sim_flags
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
    from .sim.run import run

    config = flags.pop("config", None)
    settings = _sim_settings(config, plan=_parse_plan(plan) if plan else None, **flags)
    result = run(settings, out)
    _print_summary([result | {"plan": settings.get("plan", "none")}], out)


@app.command("compare")
@_handle_errors
@_with_sim_flags
def compare_plans(
    plans: Annotated[str, typer.Option(help="Comma-separated uplink plans, e.g. "
                                            "none,fedsz,sz3,fpz or 'none,ef:topk(ratio="
                                            "0.01),powersgd(rank=2)'.")]
    = "none,fedsz,sz3,fpz",
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("out/compare"),
    **flags: Any,
) -> None:
    """The same simulation once per plan; a side-by-side table and overlaid plots."""
    from .sim.run import compare as run_compare

    config = flags.pop("config", None)
    settings = _sim_settings(config, **flags)
    from .sim.run import split_plans

    results = run_compare(settings, split_plans(plans), out)
    _print_summary(results, out)


@app.command()
@_handle_errors
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
    from rich.table import Table

    from .io import load_tensors
    from .sim import advise as adv

    rows = adv.advise(load_tensors(file), _split_list(codecs, "--codecs"),
                      _parse_floats(eb, "--eb"), mode.value, repeat)
    table = Table(title=f"break-even bandwidth, {escape(str(file))} "
                        f"({_fmt_bytes(rows[0]['raw_bytes'])} raw)")
    for col in ("codec", "eb", "CR", "encode s", "decode s", "pays below (Mbps)"):
        table.add_column(col, justify="left" if col == "codec" else "right")
    for r in rows:
        table.add_row(escape(r["codec"]), f"{r['eb']:g}", f"{r['cr']:.2f}",
                      f"{r['encode_s']:.3f}", f"{r['decode_s']:.3f}",
                      f"{r['break_even_mbps']:.0f}")
    console.print(table)
    console.print(f"plot: {escape(str(adv.plot(rows, plot)))}", highlight=False)


def _print_summary(results: list[dict[str, Any]], out: Path) -> None:
    from rich.table import Table

    from .sim.run import COMPARE_COLUMNS, comparison_rows

    table = Table(title="fedpress simulation")
    for col in COMPARE_COLUMNS:
        table.add_column(col, justify="left" if col == "plan" else "right")
    for row in comparison_rows(results):
        table.add_row(*(escape(str(row[c])) if c == "plan" else f"{row[c]:.4g}"
                        for c in COMPARE_COLUMNS))
    console.print(table)
    console.print(f"outputs in {escape(str(out))}", highlight=False)


def main() -> None:
    """Entry point of the ``fedpress`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
