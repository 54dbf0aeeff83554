"""The engine benchmark (benchmarks/bench_engine.py) and its NNCodec worker.

The worker's step rule is checked against an emulation of NNCodec's float32
quantizer (no NNCodec needed); the benchmark runs end to end on a small made-up
model with NNCodec skipped; the worker itself runs only where its venv exists
(``NNCODEC_PYTHON`` or /work/nnc-venv/bin/python).
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import os
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


worker = _load("nncodec_worker")


def _emulate_nnc(x: np.ndarray, step: float) -> np.ndarray:
    """NNCodec's plain-rounding quantizer and its reconstruction, in float32."""
    scale = np.float32(1.0) / np.float32(step)
    level = np.round((scale * x.astype(np.float32)).astype(np.float64)).astype(np.int64)
    return (np.float32(step) * level.astype(np.float32)).astype(np.float32)


def test_step_of_qp_is_a_mantissa_times_a_power_of_two() -> None:
    k = 1 << worker.QP_DENSITY
    assert worker.step_of_qp(0) == 1.0
    assert worker.step_of_qp(k) == 2.0
    assert worker.step_of_qp(-k) == 0.5
    assert worker.step_of_qp(k // 2) == 1.5
    steps = [worker.step_of_qp(q) for q in range(-40 * k, 4 * k)]
    assert all(a < b for a, b in itertools.pairwise(steps))  # strictly increasing
    assert all(float(np.float32(s)) == s for s in steps)  # exact in float32


@pytest.mark.parametrize("eb", [3.7e-9, 1e-6, 2.5e-4, 0.013, 7.0])
def test_qp_for_bound_is_the_largest_safe_step(eb: float) -> None:
    x = np.array([-3 * eb, 5 * eb], dtype=np.float32)
    qp = worker.qp_for_bound(x, eb)
    step, nxt = worker.step_of_qp(qp), worker.step_of_qp(qp + 1)
    assert step <= 2 * eb
    assert step > 2 * eb * (1 - 2.0 ** -worker.QP_DENSITY) * (1 - 1e-5)
    amax = 5 * eb
    target = (eb - 4 * 2.0 ** -24 * amax) / (0.5 + 2 * 2.0 ** -24)
    assert step <= target < nxt


@pytest.mark.parametrize("rel", [1e-2, 1e-3, 1e-4])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_the_step_keeps_the_bound_under_float32_rounding(rel: float, offset: float) -> None:
    rng = np.random.default_rng(7)
    x = (offset + rng.laplace(0.0, 0.3, 200_000)).astype(np.float32)
    eb = rel * float(x.max() - x.min())
    y = _emulate_nnc(x, worker.step_of_qp(worker.qp_for_bound(x, eb)))
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    assert float(err.max()) <= eb


def test_a_bound_too_tight_for_float32_is_refused() -> None:
    x = np.array([1e6, -1e6], dtype=np.float32)
    with pytest.raises(ValueError):
        worker.qp_for_bound(x, 1e-3)


def test_bench_engine_end_to_end_without_nncodec(tmp_path: Path) -> None:
    pytest.importorskip("pysz")
    be = _load("bench_engine")
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    sd = {"conv.weight": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.1,
          "fc.weight": rng.laplace(0, 1e-3, (64, 50)).astype(np.float32),
          "fc.bias": rng.standard_normal(64).astype(np.float32)}  # < 1000: left out
    np.savez(data / "toy_update_r05.npz", **sd)  # type: ignore[arg-type]
    out, md = tmp_path / "e.csv", tmp_path / "e.md"
    rc = be.main(["--data", str(data), "--models", "toy", "--classes", "update_r05",
                  "--rels", "1e-2,1e-3", "--codecs", "fpz", "--sections", "classes,sizes",
                  "--sizes", "1e4", "--size-runs", "1", "--runs", "1",
                  "--nncodec-python", "", "--cpu", "-1", "--out", str(out),
                  "--markdown", str(md)])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# bench_engine.py results; machine:")
    assert any(ln.startswith("# unavailable nncodec:") for ln in lines)
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    cls = [r for r in rows if r["section"] == "classes"]
    assert {r["codec"] for r in cls} == {"sz3", "fpz", "h0_codes", "h0_pred"}
    for r in cls:
        assert r["n_tensors"] == "2" and r["n_elems"] == str(16 * 8 * 9 + 64 * 50)
    for r in rows:
        if r["codec"] in ("fpz", "sz3"):
            assert r["violations"] == "0" and float(r["max_err_over_eb"]) <= 1.0
            assert float(r["comp_vs_sz3"]) > 0 and float(r["decomp_vs_sz3"]) > 0
    sizes = {(r["source"], r["codec"]) for r in rows if r["section"] == "sizes"}
    assert ("laplace", "fpz") in sizes and ("toy/update_r05", "sz3") in sizes
    text = md.read_text()
    assert "## Goals (measured in this run)" in text and "| fpz | no NNCodec |" in text
    md2 = tmp_path / "again.md"
    assert be.main(["--from-csv", str(out), "--markdown", str(md2)]) == 0
    assert md2.read_text().split("## Goals")[1] == text.split("## Goals")[1]


NNC_PY = os.environ.get("NNCODEC_PYTHON", "/work/nnc-venv/bin/python")


@pytest.mark.skipif(not os.path.exists(NNC_PY), reason="no NNCodec venv "
                    "(scripts/nncodec_env.sh)")
def test_nncodec_worker_round_trip_keeps_the_bound(tmp_path: Path) -> None:
    be = _load("bench_engine")
    rng = np.random.default_rng(3)
    tensors = [("a", rng.laplace(0, 1e-3, 5000).astype(np.float32)),
               ("b", (2.0 + rng.standard_normal(3000)).astype(np.float32))]
    codec = be.NncodecCodec(NNC_PY, -1, str(tmp_path))
    try:
        assert codec.versions["nncodec"] == "2.1.3"
        for rel in (1e-2, 1e-4):
            ebs = [be.eb_for(x, rel) for _, x in tensors]
            p = codec.run(tensors, ebs, rel, True)
            assert p.comp_bytes > 0 and p.outputs is not None
            worst, viol, _ = be.check(tensors, ebs, p.outputs)
            assert viol == 0 and worst <= 1.0
    finally:
        codec.close()
