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
from fedpress.stages import coders, crans, lossless, rans
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
