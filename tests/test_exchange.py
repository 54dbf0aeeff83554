"""The exchange layer's framework-free parts: state-dict deltas."""

from __future__ import annotations

import numpy as np

from fedpress.exchange import apply_changes, changes, raw_bytes, zeros_like

from .common import run_isolated


def test_changes_carry_float_differences_and_integer_values() -> None:
    rng = np.random.default_rng(0)
    held = {"w": rng.standard_normal(50).astype(np.float32),
            "n": np.array(3, dtype=np.int64)}
    target = {"w": rng.standard_normal(50).astype(np.float32),
              "n": np.array(7, dtype=np.int64)}
    d = changes(held, target)
    assert d["n"] == 7 and d["w"].dtype == np.float32
    moved = apply_changes(held, d)
    assert moved["n"] == 7 and moved["w"].dtype == np.float32
    # float32 arithmetic: target - held + held is target to within one rounding step
    assert np.abs(moved["w"] - target["w"]).max() <= 2 * np.spacing(np.abs(target["w"])).max()
    assert raw_bytes(held) == 50 * 4 + 8
    z = zeros_like(held)
    assert not any(v.any() for v in z.values()) and z["w"].dtype == np.float32


def test_the_exchange_layer_imports_neither_torch_nor_the_simulator() -> None:
    script = (
        "import sys\n"
        "for m in ('torch', 'matplotlib', 'flwr'):\n"
        "    sys.modules[m] = None\n"
        "import fedpress.exchange\n"
        "assert not any(m.startswith('fedpress.sim') for m in sys.modules), sorted(sys.modules)\n"
        "print('exchange-ok')\n"
    )
    run_isolated(script, "exchange-ok")
