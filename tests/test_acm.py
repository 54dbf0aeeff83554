"""The adaptive context-model coder's kernels (``stages._acmkernels``)."""

from __future__ import annotations

import numpy as np

from fedpress.stages import _acmkernels as K


def _context_ref(e: int, ema: int) -> tuple[int, int]:
    """The context rule of the module docs, computed directly."""
    be = int(e).bit_length()
    bq = int((ema * 7) >> 8).bit_length()
    sh = max(min(max(be, bq), be + 2) - K.T, 0)
    return min(max(be - sh, 0), K.T) * (K.T + 1) + min(max(bq - sh, 0), K.T), sh


def test_context_table_matches_the_rule_over_the_whole_range() -> None:
    # the largest sums a stream can bring: codes below 2**31, a capped row entry
    e_max = 2 * (2**31 - 1) + (2**31 - 1) + K.UP_CAP
    ema_max = (2**31 - 1) << 8
    assert (e_max.bit_length() < K._LUT_W
            and ((ema_max * 7) >> 8).bit_length() < K._LUT_W)
    rng = np.random.default_rng(0)
    es = [0, 1, 2, 7, 255, 256, e_max] + [int(v) for v in rng.integers(0, e_max, 200)]
    emas = [0, 37, 36, 1 << 12, ema_max] + [int(v) for v in rng.integers(0, ema_max, 50)]
    for e in es:
        for ema in emas:
            cs = int(K._CTX[e.bit_length() * K._LUT_W + ((ema * 7) >> 8).bit_length()])
            assert (cs >> 8, cs & 255) == _context_ref(e, ema)
