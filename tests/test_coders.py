"""The entropy-coder interface (``stages.coders``) and the lossless stage
(``stages.lossless``): every coder of the id table round-trips random symbol arrays
and refuses truncated streams with FormatError (never another exception); the ids are
the ones on the wire; stages/ and eblc/ import nothing from backends/."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fedpress
from fedpress._bytes import Reader, Writer
from fedpress.stages import acm, coders, crans, lossless, rans
from fedpress.stages.coders import CODERS, CoderId, EntropyCoder, Symbols

SRC = Path(fedpress.__file__).parent
HAS_CONSTRICTION = importlib.util.find_spec("constriction") is not None
#: widest alphabet a random example spans (ANS's histogram header grows with it)
_WIDE = 1 << 16


def _coders() -> list[CoderId]:
    return [cid for cid in CODERS
            if CODERS[cid].name != "ans" or HAS_CONSTRICTION]


def _encode(coder: EntropyCoder, v: np.ndarray | Symbols) -> bytes:
    w = Writer()
    coder.encode(v, w)
    return w.getvalue()


def _refuses(coder: EntropyCoder, blob: bytes, n: int) -> None:
    try:
        coder.decode(Reader(blob, "test stream"), n)
    except fedpress.FormatError:
        return
    raise AssertionError(f"{coder.name}: a bad stream of {len(blob)} bytes decoded")


@st.composite
def symbol_arrays(draw: st.DrawFn, coder: EntropyCoder) -> np.ndarray:
    """Symbols inside ``coder``'s range: small or wide alphabets anywhere in it,
    its extremes, sizes from empty to a few lanes' worth."""
    n = draw(st.one_of(st.sampled_from([0, 1, 2]), st.integers(0, 600),
                       st.sampled_from([5000, 70_000])))
    lo_dom, hi_dom = coder.min_symbol, coder.max_symbol
    cap = min(coder.max_alphabet, _WIDE) if coder.max_alphabet else 1 << 62
    kind = draw(st.sampled_from(["small", "wide", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "extremes":  # the range's ends (an alphabet limit's ends) and 0
        if coder.max_alphabet is None:
            ends = {lo_dom, hi_dom, min(max(0, lo_dom), hi_dom)}
        else:
            lo = draw(st.sampled_from([lo_dom, hi_dom - cap + 1]))
            ends = {lo, lo + cap - 1}
        picks = np.array(sorted(ends), dtype=np.int64)
        return picks[rng.integers(0, picks.size, n)]
    width = draw(st.sampled_from([1, 2, 3, 17, 300]) if kind == "small"
                 else st.sampled_from([5000, _WIDE, 1 << 40, 1 << 62]))
    width = min(width, cap, hi_dom - lo_dom + 1)
    lo = draw(st.integers(lo_dom, hi_dom - width + 1))
    skew = rng.geometric(0.3, n) - 1 if kind == "small" else rng.integers(0, width, n)
    return (lo + np.minimum(skew, width - 1)).astype(np.int64)


@pytest.mark.parametrize("cid", _coders(), ids=lambda c: CODERS[c].name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_coder_round_trips_and_refuses_truncations(cid: CoderId, data: st.DataObject
                                                          ) -> None:
    coder = CODERS[cid]
    v = data.draw(symbol_arrays(coder))
    blob = _encode(coder, v)
    out = coder.decode(Reader(blob), v.size)
    assert out.dtype == np.int64 and np.array_equal(out, v)
    # every strict prefix (a sample of them on long streams) is refused
    cuts = range(len(blob)) if len(blob) <= 300 else sorted(
        {*range(40), *range(len(blob) - 40, len(blob)),
         *np.random.default_rng(len(blob)).integers(0, len(blob), 40).tolist()})
    for cut in cuts:
        _refuses(coder, blob[:cut], v.size)


@pytest.mark.parametrize("cid", _coders(), ids=lambda c: CODERS[c].name)
def test_empty_and_single_symbol_streams(cid: CoderId) -> None:
    coder = CODERS[cid]
    for v in (np.zeros(0, np.int64), np.array([coder.max_symbol]),
              np.array([coder.min_symbol]), np.full(1000, max(coder.min_symbol, 0))):
        blob = _encode(coder, v)
        assert np.array_equal(coder.decode(Reader(blob), v.size), v)


@pytest.mark.parametrize("cid", _coders(), ids=lambda c: CODERS[c].name)
def test_symbols_outside_the_range_are_refused_when_encoding(cid: CoderId) -> None:
    coder = CODERS[cid]
    if coder.max_symbol < (1 << 63) - 1:
        with pytest.raises(ValueError):
            _encode(coder, np.array([0, coder.max_symbol + 1]))
    if coder.min_symbol > -(1 << 63):
        with pytest.raises(ValueError):
            _encode(coder, np.array([max(coder.min_symbol, 0), coder.min_symbol - 1]))


@pytest.mark.skipif(not HAS_CONSTRICTION, reason="constriction is not installed")
def test_ans_at_its_alphabet_limit() -> None:
    limit = coders.ANS.max_alphabet
    assert limit is not None
    v = np.array([-5, -5 + limit - 1, 7, 7], dtype=np.int64)
    blob = _encode(coders.ANS, v)
    assert np.array_equal(coders.ANS.decode(Reader(blob), 4), v)
    with pytest.raises(ValueError, match="alphabet"):
        _encode(coders.ANS, np.array([0, limit]))


def test_the_zigzag_form_gives_the_same_bytes(rng: np.random.Generator) -> None:
    v = np.rint(rng.laplace(0, 4, 3000)).astype(np.int64)
    z, hist = rans.symbols(v)
    for cid in _coders():
        coder = CODERS[cid]
        if coder.min_symbol > int(v.min()):
            continue
        assert _encode(coder, Symbols(zigzag=z, hist=hist)) == _encode(coder, v), coder.name


def test_fused_and_unfused_scaling_agree(rng: np.random.Generator) -> None:
    v = np.rint(rng.laplace(0, 4, 5000)).astype(np.int64)
    for cid in _coders():
        coder = CODERS[cid]
        vv = np.abs(v) if coder.min_symbol >= 0 else v
        blob = _encode(coder, vv)
        for dt in (np.float32, np.float64):
            got = coder.decode(Reader(blob), vv.size, step=0.1, dtype=np.dtype(dt))
            assert got.dtype == dt
            assert np.array_equal(got, (vv * 0.1).astype(dt)), coder.name


def test_context_rans_with_external_contexts(rng: np.random.Generator) -> None:
    n = 5000
    ext = rng.integers(0, 6, n).astype(np.uint8)
    v = np.rint(rng.laplace(0, 1 + ext.astype(np.float64) * 3)).astype(np.int64)
    coder = coders.ContextRansCoder(ext, 6)
    blob = _encode(coder, v)
    z, hist = rans.symbols(v)
    w = Writer()
    crans.encode(z, hist, ext, 6, w)
    assert blob == w.getvalue()  # the adapter writes crans's stream
    assert np.array_equal(coder.decode(Reader(blob), n), v)
    assert np.array_equal(crans.decode(Reader(blob), n, ext, 6), v)
    for cut in range(0, len(blob), 97):
        _refuses(coder, blob[:cut], n)


def test_the_id_table() -> None:
    # ids 0-3 are on the wire in fpz payloads (and 2 is quant's rANS coding byte)
    assert {CODERS[c].name: int(c) for c in CODERS} == {
        "ans": 0, "zstd": 1, "rans": 2, "huffman": 3, "crans": 4, "rice": 5, "gamma": 6,
        "radix": 7}
    assert all(coders.coder_id(CODERS[c].name) == c for c in CODERS)
    with pytest.raises(ValueError):
        coders.coder_id("nope")
    with pytest.raises(TypeError):
        CODERS[CoderId.RANS] = coders.HUFFMAN  # type: ignore[index]


def test_sparse_index_methods_map_to_the_shared_coders() -> None:
    from fedpress.grad import indices

    assert {m: c.name for m, c in indices.GAP_CODERS.items()} == {
        indices.RICE: "rice", indices.GAMMA: "gamma", indices.RANS: "rans"}


# -- the lossless stage ----------------------------------------------------------------


def test_zstd_stage_is_the_registered_codecs_bytes(rng: np.random.Generator) -> None:
    from fedpress.backends.lossless import ZstdCodec

    x = rng.standard_normal((30, 7)).astype(np.float32)
    assert lossless.ZSTD.encode_array(x) == ZstdCodec(level=3).encode(x)
    y = lossless.ZSTD.decode_array(lossless.ZSTD.encode_array(x), x.shape, x.dtype)
    assert np.array_equal(y, x) and y.flags.writeable
    out = np.empty_like(x)
    lossless.ZSTD.decode_into(memoryview(lossless.ZSTD.encode_array(x)), out, "t")
    assert np.array_equal(out, x)


def test_zstd_stage_refuses_bad_bytes() -> None:
    stage = lossless.ZstdStage(level=3)
    blob = stage.encode(b"abc" * 100)
    assert stage.decode(blob, 300) == b"abc" * 100
    for bad in (blob[:-1], blob[:5], b"", blob + b"\0", b"\x28\xb5\x2f\xfd" + b"\xff" * 20):
        with pytest.raises(fedpress.FormatError):
            stage.decode(bad, 300)
    with pytest.raises(fedpress.FormatError):
        stage.decode(blob, 301)  # not the size the frame declares
    with pytest.raises(fedpress.FormatError):
        stage.decode_array(blob, (10, 10), np.uint32)
    with pytest.raises(ValueError):
        lossless.ZstdStage(level=0)


# -- the import rule: stages/ and eblc/ build on stages, never on backends/ -----------


def _imported(path: Path) -> set[str]:
    """The modules ``path`` imports, relative ones resolved (``..backends`` -> ``backends``
    relative to the package root)."""
    rel = path.relative_to(SRC).with_suffix("").parts
    package = rel[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                mod = ".".join(["fedpress", *base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


@pytest.mark.parametrize("unit", ["stages", "eblc"])
def test_stages_and_eblc_do_not_import_backends(unit: str) -> None:
    files = sorted((SRC / unit).rglob("*.py"))
    assert files
    wrong = {f"{p.name}: {m}" for p in files for m in _imported(p)
             if m.startswith("fedpress.backends")}
    assert not wrong


def test_importing_stages_and_eblc_loads_no_backend() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import fedpress.stages, fedpress.eblc\n"
        "for pkg in (fedpress.stages, fedpress.eblc):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('fedpress.backends')))\n")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert got.stdout.strip() == "[]"


# -- the adaptive context-model coder (fpz version 3's engine) ------------------------
def _acm_round_trip(x: np.ndarray, cols: int, step: float, pred: int, workers: int = 1,
                    block_bits: int = acm.BLOCK_BITS) -> tuple[bytes, np.ndarray]:
    coded = acm.encode(x, cols, step, step / 2, pred, workers, block_bits)
    assert coded is not None
    stream, values, n_over = coded
    out = acm.decode(Reader(stream), x.size, step, x.dtype, pred, workers)
    assert out.tobytes() == values.tobytes()  # what the encoder said the decoder computes
    exact = int(np.count_nonzero(~(np.abs(values.astype(np.float64) - x) <= step / 2)))
    assert n_over == exact
    return stream, out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_acm_round_trips_any_codes(data: st.DataObject) -> None:
    """Random shapes, zero rows, codes from 0 to 2**29 (escapes, large shifts), both
    predictors and dtypes: decode gives the encoder's values, bit for bit."""
    rows = data.draw(st.integers(1, 40))
    cols = data.draw(st.integers(1, 300))
    scale = data.draw(st.sampled_from([0.0, 0.4, 3.0, 200.0, 1e5, 3e8]))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    seed = data.draw(st.integers(0, 2**31))
    pred = data.draw(st.integers(0, 1))
    rng = np.random.default_rng(seed)
    q = np.rint(rng.laplace(0.0, 1.0, (rows, cols)) * scale * rng.gamma(0.5, 1.0, (rows, 1)))
    q[rng.random(rows) < 0.3] = 0.0
    q = np.clip(q, -(2**29), 2**29)
    x = (q * 0.02 + rng.uniform(-0.009, 0.009, q.shape)).astype(dtype).reshape(-1)
    _acm_round_trip(x, cols, 0.02, pred)


def test_acm_blocks_and_workers_give_the_same_bytes(rng: np.random.Generator) -> None:
    x = (rng.laplace(0.0, 1.0, (700, 600)) * rng.gamma(0.5, 1.0, (700, 1))).astype(np.float32)
    x[rng.random(700) < 0.4] = 0.0
    flat = x.reshape(-1)
    assert len(acm.layout(flat.size, 600)) == 7  # blocks of whole rows, 109 rows each
    one, _ = _acm_round_trip(flat, 600, 0.01, 0, workers=1)
    for workers in (2, 3):
        same, _ = _acm_round_trip(flat, 600, 0.01, 0, workers=workers)
        assert same == one
    # rows longer than a block are cut into pieces (each a block of one row)
    pieces = acm.layout(flat.size, flat.size)
    assert [p[2] for p in pieces] == [1 << 16] * 6 + [flat.size - 6 * (1 << 16)]
    long_, _ = _acm_round_trip(flat, flat.size, 0.01, 1, workers=2)
    assert long_ == _acm_round_trip(flat, flat.size, 0.01, 1, workers=1)[0]
    # smaller blocks: more of them, the same values
    _, out = _acm_round_trip(flat, 600, 0.01, 0, workers=2, block_bits=12)
    assert len(acm.layout(flat.size, 600, 12)) == 700 // 6 + 1
    assert np.array_equal(out, acm.decode(Reader(one), flat.size, 0.01, flat.dtype, 0))


def test_acm_zero_rows_and_escapes() -> None:
    x = np.zeros((50, 100), np.float32)
    x[10, 5] = 1e6  # after zeros: an escape in its context
    x[30] = np.linspace(-3, 3, 100)
    stream, _ = _acm_round_trip(x.reshape(-1), 100, 0.01, 0)
    assert len(stream) < 200
    # a tensor of zeros: every row is a zero row, a few bytes in all
    zeros = np.zeros(100_000, np.float32)
    assert len(_acm_round_trip(zeros, 1000, 0.01, 0)[0]) < 40
    assert len(_acm_round_trip(zeros, 1000, 0.01, 1)[0]) < 40


def test_acm_overflowing_codes_are_refused() -> None:
    x = np.array([0.0, 3.0, -1.0], np.float64)
    assert acm.encode(x, 3, 2.0 / (1 << 30), 1.0 / (1 << 30), 0) is None
    with pytest.raises(ValueError):
        acm.encode(x, 2, 0.1, 0.05, 0)


def test_acm_refuses_bad_streams(rng: np.random.Generator) -> None:
    x = (rng.laplace(0.0, 1.0, 5000) * 3).astype(np.float32)
    stream, _ = _acm_round_trip(x, 100, 0.01, 0)
    n, dt = x.size, np.dtype(np.float32)

    def decode(b: bytes, count: int = n) -> np.ndarray:
        return acm.decode(Reader(b), count, 0.01, dt, 0)

    for cut in range(0, len(stream), max(1, len(stream) // 150)):
        with pytest.raises(fedpress.FormatError):
            decode(stream[:cut])
    with pytest.raises(fedpress.FormatError):
        decode(stream + b"\0\0")
    w = Writer()
    w.varint(7)  # 7 columns do not divide 5000
    with pytest.raises(fedpress.FormatError):
        decode(w.getvalue() + stream[2:])
    for bits in (0, 9, 17, 255):
        bad = bytearray(stream)
        bad[1] = bits  # after a one-byte varint of 100 columns: the block size
        with pytest.raises(fedpress.FormatError):
            decode(bytes(bad))
    # a word count beyond what the block can need
    w = Writer()
    w.varint(100)
    w.u8(acm.BLOCK_BITS)
    w.varint(3 * n)
    w.varint(0)
    with pytest.raises(fedpress.FormatError):
        decode(w.getvalue() + bytes(6 * n))
    # mutated bodies: FormatError or values of the declared count, never a crash
    for _ in range(300):
        bad = bytearray(stream)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(3, len(bad)))] ^= int(rng.integers(1, 256))
        try:
            out = decode(bytes(bad))
        except fedpress.FormatError:
            continue
        assert out.shape == (n,) and out.dtype == dt


def test_acm_declares_its_decoding_buffers() -> None:
    assert acm.decode_extra_bytes(10, 1) < acm.decode_extra_bytes(1 << 20, 1)
    # one set of block buffers per busy worker: no more workers than blocks
    assert acm.decode_extra_bytes(1 << 20, 2) == 2 * acm.decode_extra_bytes(1 << 20, 1)
    assert acm.decode_extra_bytes(1000, 8) == acm.decode_extra_bytes(1000, 1) == 8000
