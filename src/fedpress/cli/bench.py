"""``fedpress bench``: compression ratio, speed and error of codecs on a file's tensors."""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markup import escape
from rich.text import Text

from .. import io as fio
from ..abc import Codec, StatefulCodec
from ..api import compress as fp_compress
from ..api import decompress as fp_decompress
from ..api import inspect as fp_inspect
from ..dtypes import is_float
from ..errors import ConfigError
from ..registry import codec_class
from ..update import trusting
from ..verify import compare
from .common import app, err_console, handle_errors, out_console
from .options import Mode, parse_floats, split_list
from .render import codec_kind, compact_table, fmt_cr, jsonable
from .tensors import probe

__all__ = ["DEFAULT_BENCH_CODECS", "DEFAULT_BENCH_EBS", "bench", "bench_one"]

DEFAULT_BENCH_CODECS = "sz3,sz2,zfp,szx,zstd,blosc-lz"
DEFAULT_BENCH_EBS = "1e-2,1e-3,1e-4"


def bench_one(codec_id: str, cls: type[Codec], eb: float | None, mode: str,
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
        "codec": codec_id, "kind": codec_kind(cls), "mode": mode if eb is not None else None,
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
@handle_errors
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

    codec_ids = split_list(codecs, "--codecs")
    ebs = parse_floats(eb, "--eb")
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
        ok, msg = probe(cid)
        if not ok:
            rows.append({"codec": cid, "available": False, "error": msg})
            continue
        if cls.error_bounded:
            plan.extend((cid, cls, e) for e in ebs)
        else:
            plan.append((cid, cls, None))

    measured: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err_console(), transient=True) as progress:
        task = progress.add_task("bench", total=len(plan) * len(selected))
        for cid, cls, e in plan:
            label = cid if e is None else f"{cid} eb={e:g}"
            progress.update(task, description=label)
            try:
                row = bench_one(cid, cls, e, mode.value, selected, repeat,
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
        text = json.dumps(jsonable(result), indent=2, allow_nan=False)
        if str(json_out) == "-":
            typer.echo(text)
            return
        fio.write_bytes_atomically(json_out, (text + "\n").encode())

    console = out_console()
    console.print(f"[bold]{escape(str(file))}[/]: {result['tensors']} tensors, "
                  f"{result['values']:,} values as float32 ({result['skipped_tensors']} "
                  f"skipped), mode {mode.value}, median of {repeat}", highlight=False)
    table = compact_table()
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
            escape(r["codec"]), "-" if e is None else f"{e:g}", fmt_cr(r["cr"]),
            f"{r['bits_per_value']:.2f}", f"{r['compress_mb_s']:.1f}",
            f"{r['decompress_mb_s']:.1f}", "-" if ratio is None else f"{ratio:.3f}",
            "-" if viol is None else (f"[red]{viol}[/]" if viol else "0"),
        )
    console.print(table)
    for r in rows[len(measured):]:
        err_console().print(Text(f"unavailable: {r['codec']}: {r['error']}", style="yellow"),
                            soft_wrap=True)
    if json_out is not None:
        console.print(f"results written to {escape(str(json_out))}", highlight=False)
