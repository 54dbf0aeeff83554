"""The native back ends on hostile input: what each library would trust is checked first.

Frames here carry a valid checksum (they are built with :func:`fedpress.frame.pack`),
so everything reaches the codec. Whatever may crash the process (zfp reading past its
buffer, SZ2's encoder on subnormal bounds, a mutated stream) runs in a subprocess,
under an address-space limit where a library may allocate what a stream declares.

- zfp: only fixed-accuracy headers at the payload's own bound are decoded (a
  fixed-rate or expert header made zfp read far past the padded buffer);
- sz3: SZ3's header, appended configuration, lossless stage and the Lorenzo /
  regression block counts are checked before pysz sees the bytes;
- sz2: not peer-safe; its encoder is never given a bound below the smallest normal
  number (it segfaults there), such tensors are stored losslessly instead;
- every back end names its pip package when its library cannot be imported.
"""

from __future__ import annotations

import importlib
import math
import textwrap
from typing import Any

import numpy as np
import pytest

import fedpress
from fedpress.registry import get_codec

from .common import TRUSTED, available, run_isolated

needs_zfp = pytest.mark.skipif(not available(("zfp",)), reason="zfpy not installed")
needs_sz3 = pytest.mark.skipif(not available(("sz3",)), reason="pysz not installed")
needs_sz2 = pytest.mark.skipif(not available(("sz2",)), reason="hdf5plugin's SZ not available")

# Shared by the subprocess scripts: frames with a valid checksum around a payload,
# an address-space cap, and a tally of outcomes that fails on anything but a
# FormatError or an array of the declared shape and dtype.
_PRELUDE = textwrap.dedent("""
    import os, resource, struct, sys
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    import numpy as np, fedpress
    from fedpress.abc import TensorSpec
    from fedpress.frame import KIND_TENSOR, Frame, Record, pack

    def frame(codec, x, payload):
        rec = Record("t", 0, TensorSpec.of(x), payload)
        return pack(Frame(KIND_TENSOR, [codec.get_config()], [rec]))

    def outcome(blob, x):
        try:
            y = fedpress.decompress(blob)
        except fedpress.FormatError:
            return "refused"
        assert y.shape == x.shape and y.dtype == x.dtype, (y.shape, y.dtype)
        return "decoded"
""")


# -- zfp --------------------------------------------------------------------------------

def _set_bits(raw: bytes, pos: int, width: int, value: int) -> bytes:
    """``raw`` with ``width`` bits at bit ``pos`` (zfp's LSB-first order) set to ``value``."""
    nbytes = (pos + width + 7) // 8
    word = int.from_bytes(raw[:nbytes], "little")
    mask = ((1 << width) - 1) << pos
    word = (word & ~mask) | (value << pos)
    return word.to_bytes(nbytes, "little") + raw[nbytes:]


@needs_zfp
@pytest.mark.parametrize("tolerance", [1e-3, 0.75, 1.0, 3e-9, 1e-300, 5e-324, 1e-323,
                                       2.0 ** 843, 2.0 ** 844, 1e306])
def test_zfp_header_parser_reads_what_zfp_writes(tolerance: float) -> None:
    import zfpy

    from fedpress.backends.zfp import accuracy_params, codec_version, parse_header

    x = np.linspace(-1, 1, 37)
    hdr = parse_header(bytes(zfpy.compress_numpy(x, tolerance=tolerance)))
    assert (hdr.ndim, hdr.nx, hdr.dtype, hdr.version) == (1, 37, np.float64, codec_version())
    assert hdr.params == accuracy_params(tolerance)
    assert hdr.params[3] == math.floor(math.log2(tolerance))  # 2**minexp <= tol < 2**(minexp+1)
    assert hdr.bits == (96 if -1074 < hdr.params[3] <= 843 else 148)  # short or long mode


_ZFP_CRAFTED = _PRELUDE + textwrap.dedent("""
    import math
    ZFP_MODE = 84  # bit offset of the mode word (after 32 magic and 52 field bits)

    def set_bits(raw, pos, width, value):
        nbytes = (pos + width + 7) // 8
        word = int.from_bytes(raw[:nbytes], "little")
        word = (word & ~(((1 << width) - 1) << pos)) | (value << pos)
        return word.to_bytes(nbytes, "little") + raw[nbytes:]

    def long_mode(minbits, maxbits, maxprec, minexp):
        m = ((minexp + 16495) << 37) | ((maxprec - 1) << 30) | ((maxbits - 1) << 15) | (minbits - 1)
        return (m << 12) | 0xFFF

    codec = fedpress.get_codec("zfp", mode="abs", eb=1e-3)
    refused = 0
    for n, dtype in ((12492, np.float32), (3000, np.float64)):
        x = np.random.default_rng(n).standard_normal(n).astype(dtype)
        payload = codec.encode(x)
        env, zs = payload[:10], payload[10:]
        assert payload[0] == 2 and zs[:3] == b"zfp"
        minexp = math.frexp(1e-3)[1] - 1  # what zfp derives from the tolerance
        accuracy = 2177 + 1074  # short mode of fixed accuracy at minexp 0
        crafted = {
            # a 12-byte header alone: zfp would read 2048 bits per block of nothing
            "fixed rate 512 bits/value, no body": set_bits(zs, ZFP_MODE, 12, 2047)[:12],
            "fixed rate 256 bits/value": set_bits(zs, ZFP_MODE, 12, 1023),
            "fixed rate 8 bits/value": set_bits(zs, ZFP_MODE, 12, 31),
            "fixed precision 40": set_bits(zs, ZFP_MODE, 12, 2048 + 39),
            "reversible": set_bits(zs, ZFP_MODE, 12, 2176),
            "accuracy, finer than the bound": set_bits(zs, ZFP_MODE, 12, accuracy + minexp - 5),
            "accuracy, coarser than the bound": set_bits(zs, ZFP_MODE, 12, accuracy + minexp + 1),
            "expert, 32767 bits per block": set_bits(zs, ZFP_MODE, 64,
                                                     long_mode(32767, 32768, 64, minexp)),
            "expert, accuracy at the bound but minbits 2000": set_bits(
                zs, ZFP_MODE, 64, long_mode(2000, 16658, 64, minexp)),
            "int32 field": set_bits(zs, 32, 2, 0),
            "2-D field": set_bits(zs, 34, 2, 1),
            "longer field": set_bits(zs, 36, 48, n),
            "other codec version": zs[:3] + bytes([zs[3] + 1]) + zs[4:],
        }
        for name, stream in crafted.items():
            try:
                fedpress.decompress(frame(codec, x, env + stream))
            except fedpress.FormatError:
                refused += 1
                continue
            print("decoded a crafted header:", name, dtype.__name__)
            sys.exit(1)
    print("zfp-crafted-refused", refused)
""")


@needs_zfp
def test_zfp_crafted_headers_are_format_errors() -> None:
    run_isolated(_ZFP_CRAFTED, "zfp-crafted-refused 26", timeout=300)


_ZFP_MUTATIONS = _PRELUDE + textwrap.dedent("""
    rng = np.random.default_rng(int(sys.argv[1]))
    codec = fedpress.get_codec("zfp", mode="abs", eb=1e-3)
    tally = {"refused": 0, "decoded": 0}
    # sizes whose padded buffer is mapped on its own (over malloc's mmap threshold), so
    # a read past it faults rather than returning other heap memory
    sizes = ((20000, np.float32), (8000, np.float64), (97, np.float32))
    cases = [np.random.default_rng(k).standard_normal(n).astype(dt)
             for k, (n, dt) in enumerate(sizes)]
    payloads = [codec.encode(x) for x in cases]
    for i in range(int(sys.argv[2])):
        k = i % len(cases)
        x, payload = cases[k], payloads[k]
        zs = bytearray(payload[10:])
        family = i // len(cases) % 3
        if family == 0:  # the mode word (bits 84-95: bytes 10 and 11)
            zs[10 + int(rng.integers(0, 2))] = int(rng.integers(0, 256))
        for _ in range(int(rng.integers(1, 4)) if family else 0):
            # the header (magic, field, mode) or anywhere
            j = int(rng.integers(0, 24)) if family == 1 else int(rng.integers(0, len(zs)))
            if rng.random() < 0.5:
                zs[j] ^= 1 << int(rng.integers(0, 8))
            else:
                zs[j] = int(rng.integers(0, 256))
        if rng.random() < 0.15:
            zs = zs[: int(rng.integers(0, len(zs)))]
        tally[outcome(frame(codec, x, payload[:10] + bytes(zs)), x)] += 1
    print("zfp-mutations", tally)
""")


@needs_zfp
def test_zfp_mutated_streams_never_crash() -> None:
    run_isolated(_ZFP_MUTATIONS, "zfp-mutations", "5", "600", timeout=300)


# -- sz3 --------------------------------------------------------------------------------

_SZ3_FORGED = _PRELUDE + textwrap.dedent("""
    import zstandard as zstd

    def parts(payload):
        s = payload[10:]
        magic, version, plen = struct.unpack_from("<IIQ", s)
        return payload[:10], s[:16], s[16:16 + plen], s[16 + plen:]

    def join(env, head, body, conf):
        return env + struct.pack("<IIQ", *struct.unpack_from("<II", head), len(body)) + body + conf

    def inner_of(body):
        size = struct.unpack_from("<Q", body)[0]
        return bytearray(zstd.ZstdDecompressor().decompress(body[8:], max_output_size=size))

    def body_of(inner):
        return struct.pack("<Q", len(inner)) + zstd.ZstdCompressor().compress(bytes(inner))

    def conf_field(conf, offset, fmt, value):
        c = bytearray(conf)
        struct.pack_into(fmt, c, offset, value)
        return bytes(c)

    n = 1000
    x = (np.sin(np.linspace(0, 30, n)) + 0.01 * np.random.default_rng(1).standard_normal(n))
    x = x.astype(np.float32)
    lreg = fedpress.get_codec("sz3", mode="rel", eb=1e-4, algorithm="lorenzo_reg")
    tuned = fedpress.get_codec("sz3", mode="rel", eb=1e-4, algorithm="interp_lorenzo")
    env, head, body, conf = parts(lreg.encode(x))
    inner = inner_of(body)
    assert struct.unpack_from("<QQ", inner) == (0, 8)  # no regression block, 8 selections
    d = 3 + (n.bit_length() + 7) // 8  # where the element count starts in the config
    forged = {
        # the case a mutation found: SZ3 allocated (and zeroed) 4 bytes per selection
        "selection count": (lreg, join(env, head, body_of(
            inner[:8] + struct.pack("<Q", 1 << 26) + inner[16:]), conf)),
        "odd regression count": (lreg, join(env, head, body_of(
            struct.pack("<Q", 3) + inner[8:]), conf)),
        "regression count past the blocks": (lreg, join(env, head, body_of(
            struct.pack("<Q", 1 << 30) + inner[8:]), conf)),
        "element count": (lreg, join(env, head, body, conf_field(conf, d, "<Q", n + 1))),
        "dimension": (lreg, join(env, head, body, conf[:3] + (n - 1).to_bytes(2, "little")
                                 + conf[5:])),
        "bound": (lreg, join(env, head, body, conf_field(conf, d + 10, "<d", 0.5))),
        "REL mode": (lreg, join(env, head, body, conf_field(conf, d + 9, "<B", 1))),
        "OpenMP switch": (lreg, join(env, head, body, conf_field(conf, d + 18, "<B", 0xA8))),
        "predictor switches": (lreg, join(env, head, body, conf_field(conf, d + 18, "<B", 0x10))),
        "block size 0": (lreg, join(env, head, body, conf_field(conf, d + 24, "<i", 0))),
        "algorithm nopred for lorenzo_reg": (lreg, join(env, head, body,
                                                        conf_field(conf, d + 8, "<B", 3))),
        "config size": (lreg, join(env, head, body, bytes([conf[0] + 1]) + conf[1:] + b"\\0")),
        "bytes after the config": (lreg, join(env, head, body, conf) + b"\\0"),
        "data version": (lreg, env + head[:4] + b"\\0\\0\\5\\3" + head[8:] + body + conf),
        "inner size": (lreg, join(env, head, struct.pack("<Q", 1 << 40) + body[8:], conf)),
        "zstd frame size": (lreg, join(env, head, struct.pack("<Q", len(inner) + 1) + body[8:],
                                       conf)),
        "not zstd": (lreg, join(env, head, body[:8] + b"\\0" * (len(body) - 8), conf)),
        # regression is only on in lorenzo_reg streams (interp_lorenzo's Lorenzo has none)
        "regression under interp_lorenzo": (tuned, join(env, head, body, conf)),
    }
    refused = 0
    for name, (codec, payload) in forged.items():
        try:
            fedpress.decompress(frame(codec, x, payload))
        except fedpress.FormatError:
            refused += 1
            continue
        print("decoded a forged stream:", name)
        sys.exit(1)
    print("sz3-forged-refused", refused)
""")


@needs_sz3
def test_sz3_forged_streams_are_format_errors() -> None:
    run_isolated(_SZ3_FORGED, "sz3-forged-refused 18", timeout=300)


@needs_sz3
def test_sz3_checks_accept_what_sz3_writes() -> None:
    rng = np.random.default_rng(3)
    shapes = {"noise": lambda n: rng.standard_normal(n),
              "smooth": lambda n: np.sin(np.linspace(0, 9, n)),
              "steps": lambda n: np.repeat(rng.standard_normal(n // 10 + 1), 10)[:n]}
    for algorithm in ("interp_lorenzo", "interp", "lorenzo_reg", "nopred"):
        for n in (2, 7, 128, 129, 1000, 20000):
            for kind, make in shapes.items():
                for dtype in (np.float32, np.float64):
                    x = make(n).astype(dtype)
                    blob = fedpress.compress(x, codec="sz3", eb=1e-3, algorithm=algorithm)
                    y = fedpress.decompress(blob, TRUSTED)
                    assert np.abs(y - x).max() <= 1e-3 * float(x.max() - x.min()), (
                        algorithm, n, kind)


_SZ3_MUTATIONS = _PRELUDE + textwrap.dedent("""
    import zstandard as zstd
    rng = np.random.default_rng(int(sys.argv[1]))
    tally = {"refused": 0, "decoded": 0}
    cases = []
    for k, algorithm in enumerate(("interp_lorenzo", "lorenzo_reg", "interp", "nopred")):
        for n, dt, smooth in ((3000, np.float32, True), (1000, np.float64, False)):
            r = np.random.default_rng(k)
            x = (np.sin(np.linspace(0, 30, n)) + 0.01 * r.standard_normal(n)) if smooth \\
                else r.standard_normal(n)
            x = x.astype(dt)
            codec = fedpress.get_codec("sz3", mode="rel", eb=1e-4, algorithm=algorithm)
            cases.append((codec, x, codec.encode(x)))

    def outer(s):
        for _ in range(int(rng.integers(1, 4))):
            where = rng.random()
            if where < 0.3:  # the header
                j = int(rng.integers(0, 24))
            elif where < 0.6:  # the configuration SZ3 appends
                j = len(s) - 1 - int(rng.integers(0, 34))
            else:
                j = int(rng.integers(0, len(s)))
            s[j] = int(rng.integers(0, 256))
        return s

    def inner(s):
        magic, version, plen = struct.unpack_from("<IIQ", s)
        size = struct.unpack_from("<Q", s, 16)[0]
        b = bytearray(zstd.ZstdDecompressor().decompress(bytes(s[24:16 + plen]),
                                                         max_output_size=size))
        for _ in range(int(rng.integers(1, 4))):
            j = int(rng.integers(0, 64)) if rng.random() < 0.5 else int(rng.integers(0, len(b)))
            if rng.random() < 0.5:
                b[j] = int(rng.integers(0, 256))
            else:
                w = int(rng.choice([2, 4, 8]))
                v = int(rng.choice([0, 1, 255, 1 << 16, 1 << 31, (1 << 32) - 1]))
                b[j:j + w] = (v % (1 << (8 * w))).to_bytes(w, "little")
        body = struct.pack("<Q", len(b)) + zstd.ZstdCompressor().compress(bytes(b))
        return bytearray(struct.pack("<IIQ", magic, version, len(body)) + body + s[16 + plen:])

    for i in range(int(sys.argv[2])):
        codec, x, payload = cases[i % len(cases)]
        s = bytearray(payload[10:])
        s = inner(s) if i % 2 else outer(s)
        if rng.random() < 0.1:
            s = s[: int(rng.integers(0, len(s)))]
        tally[outcome(frame(codec, x, payload[:10] + bytes(s)), x)] += 1
    print("sz3-mutations", tally)
""")


@needs_sz3
def test_sz3_mutated_streams_never_crash() -> None:
    # outer edits (header, configuration, anywhere) and edits of SZ3's inner stream
    # behind a recompressed zstd stage, under a 2 GiB address-space cap: a stream
    # that makes SZ3 allocate more fails there (std::bad_alloc, a FormatError)
    run_isolated(_SZ3_MUTATIONS, "sz3-mutations", "9", "1000", timeout=300)


# -- sz2 --------------------------------------------------------------------------------

def test_sz2_is_not_peer_safe() -> None:
    from fedpress.backends.sz2 import SZ2Codec

    assert SZ2Codec.peer_safe is False
    assert "sz2" not in fedpress.registry.peer_safe_codecs()


_SZ2_TINY_BOUNDS = textwrap.dedent("""
    import numpy as np, fedpress
    from fedpress.backends.sz2 import SZ2Codec
    trusted = fedpress.Limits(codecs=frozenset({"sz2"}))
    rng = np.random.default_rng(0)
    cases = [
        # a float16 tensor under an absolute bound below float32's smallest normal
        (rng.standard_normal(20000).astype(np.float16), "abs", 1e-39),
        (rng.standard_normal(1000).astype(np.float16), "abs", 1e-45),
        # float64 tensors of subnormal range in rel mode (bound ~1e-310)
        (rng.standard_normal(1000) * 1e-308, "rel", 1e-2),
        (rng.standard_normal(30) * 1e-307, "rel", 1e-3),
    ]
    for x, mode, eb in cases:
        y = fedpress.decompress(fedpress.compress(x, codec="sz2", mode=mode, eb=eb), trusted)
        bound = eb if mode == "abs" else eb * float(x.max() - x.min())
        assert y.dtype == x.dtype and np.abs(y.astype(float) - x.astype(float)).max() <= bound
    # the core itself: below the smallest normal it never calls SZ2, at it it does
    core = SZ2Codec("abs", 1.0)
    for dt in (np.float32, np.float64):
        x = rng.standard_normal(20000).astype(np.float16).astype(dt)
        tiny = float(np.finfo(dt).tiny)
        assert core._encode_core(x, tiny * 0.5)[:1] == b"\\x01"
        assert core._encode_core(x, tiny * 1e-3)[:1] == b"\\x01"
        assert core._encode_core(x, tiny)[:1] == b"\\x00"
    print("sz2-tiny-bounds-ok")
""")


@needs_sz2
def test_sz2_encoder_stores_subnormal_bounds_losslessly() -> None:
    run_isolated(_SZ2_TINY_BOUNDS, "sz2-tiny-bounds-ok", timeout=300)


# -- missing libraries --------------------------------------------------------------------

_MODULES = [("zfp", "zfpy", "zfpy"), ("sz3", "pysz", "pysz"), ("sz2", "h5py", "h5py"),
            ("sz2", "hdf5plugin", "hdf5plugin"), ("zstd", "zstandard", "zstandard"),
            ("lz4", "lz4.block", "lz4"), ("blosc-lz", "blosc2", "blosc2"),
            ("blosc-zstd", "blosc2", "blosc2")]


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``importlib.import_module(module)`` fail as if it were not installed."""
    real = importlib.import_module

    def fake(name: str, package: Any = None) -> Any:
        if name == module:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)


@pytest.mark.parametrize(("codec_id", "module", "package"), _MODULES)
def test_check_available_names_the_missing_package(monkeypatch: pytest.MonkeyPatch,
                                                   codec_id: str, module: str,
                                                   package: str) -> None:
    codec = get_codec(codec_id)
    _hide(monkeypatch, module)
    with pytest.raises(fedpress.MissingDependencyError, match=f"pip install {package}") as info:
        codec.check_available()
    assert repr(codec_id) in str(info.value)


@pytest.mark.parametrize("codec_id", ["zfp", "sz3", "sz2", "zstd", "lz4", "blosc-lz",
                                      "blosc-zstd", "zlib", "gzip", "xz"])
def test_check_available_passes_where_the_library_works(codec_id: str) -> None:
    if not available((codec_id,)):
        pytest.skip(f"{codec_id} not usable here")
    get_codec(codec_id).check_available()


@needs_sz2
def test_sz2_without_the_sz_filter_names_hdf5plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    import h5py

    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda filter_id: False)
    with pytest.raises(fedpress.MissingDependencyError, match=r"SZ filter.*hdf5plugin"):
        get_codec("sz2").check_available()
