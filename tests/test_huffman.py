"""Canonical Huffman stage: exact round trips, complete codes within the length cap,
sizes close to the entropy where symbols are not dominant, and corrupt streams that
come back as FormatError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedpress
from fedpress._bytes import Reader, Writer
from fedpress.stages import ans, huffman
from fedpress.stages.quantize import dequantize

from .common import check_mutated_residual_stream

residuals = hnp.arrays(np.int64, st.integers(1, 3000),
                       elements=st.one_of(st.integers(-4, 4), st.integers(-(2**40), 2**40)))


def _encode(r: np.ndarray) -> bytes:
    w = Writer()
    huffman.encode(r, w)
    return w.getvalue()


@given(residuals)
def test_round_trip(r: np.ndarray) -> None:
    assert np.array_equal(huffman.decode(Reader(_encode(r)), r.size), r)


def test_single_symbol_and_fused_values(rng: np.random.Generator) -> None:
    for r in (np.full(1000, 7, np.int64), np.array([-2], np.int64)):
        assert np.array_equal(huffman.decode(Reader(_encode(r)), r.size), r)
    r = np.rint(rng.laplace(0, 4, 50_000)).astype(np.int64)
    got = huffman.decode(Reader(_encode(r)), r.size, step=0.5, dtype=np.dtype(np.float32))
    assert got.tobytes() == dequantize(r, 0.25, np.dtype(np.float32)).tobytes()


@given(hnp.arrays(np.int64, st.integers(2, 600), elements=st.integers(0, 2**40)))
def test_lengths_form_a_complete_code_within_the_cap(counts: np.ndarray) -> None:
    lengths = huffman.code_lengths(counts)
    used = counts > 0
    assert np.array_equal(lengths > 0, used)
    if used.sum() > 1:
        assert lengths.max() <= huffman.MAX_LEN
        assert sum(2.0 ** -int(v) for v in lengths[used]) == 1.0


def test_size_near_entropy_when_no_symbol_dominates(rng: np.random.Generator) -> None:
    r = np.rint(rng.standard_normal(200_000) * 20).astype(np.int64)
    ideal = ans.entropy_bits(np.bincount(r - r.min())) / 8
    assert len(_encode(r)) < ideal * 1.02 + 500


@pytest.mark.parametrize("cut", [0, 1, 2, 5, -3, -1])
def test_truncated_streams_are_format_errors(cut: int, rng: np.random.Generator) -> None:
    r = np.rint(rng.laplace(0, 3, 20_000)).astype(np.int64)
    blob = _encode(r)
    with pytest.raises(fedpress.FormatError):
        huffman.decode(Reader(blob[:cut]), r.size)
    with pytest.raises(fedpress.FormatError):
        huffman.decode(Reader(blob), r.size + 1)


@given(st.data())
def test_mutated_streams_never_crash(data: st.DataObject) -> None:
    check_mutated_residual_stream(data, _encode, lambda b, n: huffman.decode(Reader(b), n), 20000)


def test_fpz_auto_takes_huffman_where_it_is_smaller(rng: np.random.Generator) -> None:
    # small, wide, flat-ish: the lengths header is smaller than rANS's tables
    x = rng.uniform(-1, 1, 3000).astype(np.float32)
    blob = fedpress.compress(x, codec="fpz", eb=1e-4)
    assert len(blob) <= len(fedpress.compress(x, codec="fpz", eb=1e-4, coder="rans"))
    assert len(blob) <= len(fedpress.compress(x, codec="fpz", eb=1e-4, coder="huffman"))
