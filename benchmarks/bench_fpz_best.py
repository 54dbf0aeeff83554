"""``fpz(coder=best)`` on bench_engine's cells, against the NNCodec and SZ3 bytes it recorded.

``coder=best`` codes each tensor as version 3 (the default, adaptive context model) and
as version 2 (static coders, its ``auto`` choice) and keeps the smaller payload. This
script re-codes the tensors of every (model, data class, rel) cell of a
``bench_engine.py`` CSV exactly as bench_engine's fpz driver does (every float tensor of
the class's npz with >= 1000 values, flat float32, ``eb_abs = rel * (max - min)``, one
``fedpress.compress(x, 'fpz', mode='abs', eb=eb_abs)`` frame per tensor) three ways:
the default, ``version=2`` and ``coder='best'``, and compares the byte totals with the
CSV's NNCodec and SZ3 bytes for the same cells (NNCodec and SZ3 are deterministic, so
they are not run again). The default's totals are checked against the CSV's fpz bytes:
equal totals mean the tensors (and the default coder) are the ones the CSV measured.
Every tensor is also checked: best's frame is exactly the smaller of the other two.

Then the encoding time of ``best`` against the default, in the same process (one
thread, CPU seconds, best of ``--time-runs`` interleaved runs), on the largest tensor
of a few classes.

Usage (from the repository root; the data as bench_engine uses it, ``.bench/data``)::

    python benchmarks/bench_fpz_best.py --out benchmarks/results/fpz_best.md

Prints a markdown report (also written to ``--out``); progress goes to stderr.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"  # one thread, as bench_engine's single-thread sections

import argparse  # noqa: E402
import datetime  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import bench_engine as be  # noqa: E402  (benchmarks/ is on the path when run as a script)
import fedpress  # noqa: E402
from _env import machine  # noqa: E402
from fedpress.eblc.fpz import FpzCodec  # noqa: E402

WAYS: dict[str, dict[str, Any]] = {"default": {}, "v2": {"version": 2}, "best": {"coder": "best"}}
TIME_CLASSES = ("weights_final", "update_r05", "grad_r05")
TIME_RELS = (1e-2, 1e-4)


def frame(x: np.ndarray, eb: float, way: str) -> bytes:
    """One frame of ``x``: the default exactly as bench_engine codes it."""
    if way == "default":
        return fedpress.compress(x, codec="fpz", mode="abs", eb=eb)
    return fedpress.compress(x, codec=FpzCodec(mode="abs", eb=eb, **WAYS[way]))


def csv_cells(path: str) -> tuple[list[str], dict[tuple[str, str, float], dict[str, int]]]:
    """The CSV's header lines and, per (model, class, rel) of its classes section,
    the bytes of each codec (and the tensor count under ``n_tensors``)."""
    header, rows = be.read_csv(path)
    cells: dict[tuple[str, str, float], dict[str, int]] = {}
    for r in rows:
        if r["section"] != "classes":
            continue
        cell = cells.setdefault((r["model"], r["data_class"], float(r["rel"])), {})
        cell[r["codec"]] = int(r["comp_bytes"])
        cell["n_tensors"] = int(r["n_tensors"])
    return header, cells


def gmean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in xs) / len(xs))


def measure(cells: dict[tuple[str, str, float], dict[str, int]], data: str, min_elems: int
            ) -> dict[tuple[str, str, float], dict[str, int]]:
    """Bytes of each way per cell (and how many tensors best kept as version 2)."""
    out: dict[tuple[str, str, float], dict[str, int]] = {}
    for model, cls in dict.fromkeys((m, c) for m, c, _ in cells):
        tensors = be.load_tensors(os.path.join(data, be.class_file(model, cls)), min_elems)
        rels = [rel for m, c, rel in cells if (m, c) == (model, cls)]
        for rel in rels:
            got = {w: 0 for w in WAYS} | {"kept_v2": 0, "n_tensors": len(tensors)}
            for name, x in tensors:
                eb = be.eb_for(x, rel)
                sizes = {w: len(frame(x, eb, w)) for w in WAYS}
                if sizes["best"] != min(sizes["default"], sizes["v2"]):
                    raise AssertionError(f"{model}/{cls}/{name} at {rel:g}: {sizes}")
                got["kept_v2"] += sizes["best"] < sizes["default"]
                for w in WAYS:
                    got[w] += sizes[w]
            out[(model, cls, rel)] = got
            be.log(f"{model} {cls} {rel:g}: {got}")
    return out


def timing(data: str, models: Sequence[str], min_elems: int, runs: int
           ) -> list[tuple[str, int, float, float, float]]:
    """(label, values, rel, default s, best s): CPU seconds to encode the largest tensor
    of a few classes, best of ``runs`` interleaved runs."""
    rows = []
    for model in models:
        for cls in TIME_CLASSES:
            path = os.path.join(data, be.class_file(model, cls))
            if not os.path.exists(path):
                continue
            name, x = max(be.load_tensors(path, min_elems), key=lambda t: t[1].size)
            for rel in TIME_RELS:
                eb = be.eb_for(x, rel)
                best = {"default": math.inf, "best": math.inf}
                for w in best:
                    frame(x, eb, w)  # compiled and warm before timing
                for _ in range(runs):
                    for w in best:
                        t0 = time.process_time()
                        frame(x, eb, w)
                        best[w] = min(best[w], time.process_time() - t0)
                rows.append((f"{model}/{cls} `{name}`", x.size, rel, best["default"],
                             best["best"]))
    return rows


def report(header: list[str], cells: dict[tuple[str, str, float], dict[str, int]],
           got: dict[tuple[str, str, float], dict[str, int]],
           times: list[tuple[str, int, float, float, float]], argv: Sequence[str]) -> str:
    src = be.fedpress_source()
    nnc_line = next((h for h in header if h.startswith("# nncodec:")), "")
    lines = [
        "# fpz(coder=best) on bench_engine's cells",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        "- fedpress: " + ", ".join(f"{k} {v}" for k, v in src.items()),
        f"- versions: python {sys.version.split()[0]}, numpy {np.__version__}",
        f"- command: `python benchmarks/bench_fpz_best.py {' '.join(argv)}`".rstrip(),
        "- tensors: bench_engine's (every float tensor >= 1000 values of the class's npz, "
        "flat float32, eb_abs = rel * (max - min), one fpz frame per tensor); SZ3 and NNCodec "
        "bytes from the CSV, not re-run" + (f" ({nnc_line[2:]})" if nnc_line else ""),
        "- default = fpz as it is (version 3); v2 = `fpz(version=2)`; best = `fpz(coder=best)`, "
        "the smaller of the two per tensor; `kept v2` = tensors of the cell best wrote as "
        "version 2; `default = CSV` says whether the default's total is the CSV's fpz bytes",
        "",
        "| model | class | rel | tensors | kept v2 | SZ3 | NNCodec | fpz default | default = CSV "
        "| fpz v2 | fpz best | default / NNC | best / NNC | best CR / SZ3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    n_match = 0
    for key, g in got.items():
        c = cells[key]
        match = g["default"] == c.get("fpz")
        n_match += match
        nnc = c.get("nncodec")
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]:g} | {g['n_tensors']} | {g['kept_v2']} | "
            f"{c['sz3']} | {nnc if nnc else '-'} | {g['default']} | "
            f"{'yes' if match else 'NO (' + str(c.get('fpz')) + ')'} | {g['v2']} | {g['best']} | "
            + (f"{g['default'] / nnc:.4f} | {g['best'] / nnc:.4f}" if nnc else "- | -")
            + f" | {c['sz3'] / g['best']:.4f} |")
    lines += ["", "## Summary", ""]
    lines.append(f"Default totals equal to the CSV's fpz bytes: {n_match} of {len(got)} cells.")
    lines += ["", "| | fpz default | fpz v2 | fpz best |", "|---|---|---|---|"]
    rels = sorted({k[2] for k in got}, reverse=True)
    for scope in [None, *rels]:
        keys = [k for k in got if scope is None or k[2] == scope]
        with_nnc = [k for k in keys if cells[k].get("nncodec")]
        label = "all" if scope is None else f"rel {scope:g}"
        row_le, row_worst, row_cr = [f"cells <= NNCodec ({label})"], \
            [f"worst bytes / NNCodec ({label})"], [f"geo-mean CR / SZ3 ({label})"]
        for w in WAYS:
            ratios = {k: got[k][w] / cells[k]["nncodec"] for k in with_nnc}
            le = sum(v <= 1 for v in ratios.values())
            worst = max(ratios, key=ratios.__getitem__)
            row_le.append(f"{le}/{len(with_nnc)}")
            row_worst.append(f"{ratios[worst]:.4f} ({worst[0]}/{worst[1]} {worst[2]:g})"
                             if scope is None else f"{ratios[worst]:.4f}")
            row_cr.append(f"{gmean([cells[k]['sz3'] / got[k][w] for k in keys]):.4f}")
        for row in (row_le, row_worst, row_cr):
            lines.append("| " + " | ".join(row) + " |")
    total = {w: sum(g[w] for g in got.values()) for w in WAYS}
    lines.append(f"| total bytes, all cells | {total['default']} | {total['v2']} | "
                 f"{total['best']} ({total['best'] / total['default'] - 1:+.3%} vs default) |")
    if times:
        lines += ["", "## Encoding time, best against the default", "",
                  "One thread, CPU seconds, best of the runs, the two interleaved in one "
                  "process; the frame of the largest tensor of the class.", "",
                  "| tensor | values | rel | default s | best s | best / default |",
                  "|---|---|---|---|---|---|"]
        for label, n, rel, td, tb in times:
            lines.append(f"| {label} | {n} | {rel:g} | {td:.4f} | {tb:.4f} | {tb / td:.2f} |")
        lines.append(f"| geometric mean | | | | | "
                     f"{gmean([tb / td for *_, td, tb in times]):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default="benchmarks/results/engine_fpz3.csv",
                    help="a bench_engine.py CSV with sz3, fpz and nncodec rows")
    ap.add_argument("--data", default=".bench/data")
    ap.add_argument("--min-elems", type=int, default=1000)
    ap.add_argument("--models", default="", help="only these models' cells (default: all)")
    ap.add_argument("--time-models", default="cnn,vggbn,resnet18",
                    help="models whose largest tensors are timed ('' = no timing)")
    ap.add_argument("--time-runs", type=int, default=3)
    ap.add_argument("--out", default="", help="also write the report here")
    args = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(args)
    header, cells = csv_cells(a.csv)
    if a.models:
        cells = {k: v for k, v in cells.items() if k[0] in a.models.split(",")}
    got = measure(cells, a.data, a.min_elems)
    models = [m for m in a.time_models.split(",") if m]
    times = timing(a.data, models, a.min_elems, a.time_runs) if models else []
    text = report(header, cells, got, times, args)
    print(text, end="")
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
