"""The Fashion-MNIST demo: a tiny end-to-end run (with the data)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from fedpress import demo
from fedpress.sim import data

# ------------------------------------------------------------------ end to end
HAVE_DATA = all((data.DATA_DIR / name).is_file() for name in data.FILES.values())


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not HAVE_DATA, reason=f"Fashion-MNIST not in {data.DATA_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_demo_tiny_run_rows_are_consistent(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    result = demo.main(["--limit", "512", "--test-limit", "500", "--repeats", "1",
                        "--out", str(tmp_path)])
    meta, rows = result["meta"], result["rows"]
    assert meta["train_samples"] == 512 and meta["test_samples"] == 500
    assert 0.0 <= meta["test_acc"] <= 1.0
    assert meta["params"] == 421_642

    lossy = [r for r in rows if r["lossy"]]
    lossless = [r for r in rows if not r["lossy"]]
    assert meta["codecs"], "no lossy codec available"
    assert {r["lossy"] for r in lossy} == set(meta["codecs"])
    assert len(lossy) == 3 * len(meta["codecs"])
    assert [r["plan"] for r in lossless] == list(demo.LOSSLESS_PLANS)
    for r in rows:
        assert r["frame_bytes"] > 0 and r["raw_bytes"] == 421_642 * 4
        assert r["encode_ms"] > 0 and r["decode_ms"] > 0
        assert 0.0 <= r["test_acc"] <= 1.0
        assert math.isclose(r["acc_delta"], r["test_acc"] - meta["test_acc"])
    for r in lossy:
        assert r["cr"] > 1.0, r
        assert r["lossy_tensors"] == 3  # conv2/fc1/fc2 weights; conv1.weight has 288 elements
        assert 0.0 < r["max_err_over_eb"] <= 1.0, r
    for r in lossless:  # bit-exact: the decoded model is the trained one
        assert r["lossy_tensors"] == 0 and r["max_err_over_eb"] == 0.0
        assert r["test_acc"] == meta["test_acc"]
    # a looser bound never gives a smaller frame (same codec)
    for c in meta["codecs"]:
        sizes = [r["frame_bytes"] for r in lossy if r["lossy"] == c]
        assert sizes == sorted(sizes), (c, sizes)

    saved = json.loads((tmp_path / "demo_results.json").read_text())
    assert len(saved["rows"]) == len(rows)
    with open(tmp_path / "demo_results.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["plan"] for t in table] == [r["plan"] for r in rows]
