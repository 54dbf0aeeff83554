"""Unbiased stochastic quantizers: ``qsgd`` and ``terngrad``.

- ``qsgd`` (Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
  Quantization and Encoding", NeurIPS 2017) sends ``||v||_2`` and, for every entry,
  ``sign(v_i)`` and a level ``xi_i`` in ``{0, ..., s}`` (``s = levels``) drawn by
  stochastic rounding of ``s |v_i| / ||v||_2``, so that
  ``Q(v_i) = ||v||_2 sign(v_i) xi_i / s`` has ``E[Q(v)] = v``. With ``bucket = d > 0``
  the norm is taken per run of ``d`` consecutive entries (the paper's buckets, which
  lower the variance at 32 bits per bucket). The levels are sent either as the paper's
  Elias coding (Elias gamma of the gaps between non-zero levels, a sign bit, Elias
  gamma of the level: few bits when ``s`` is small and most levels are zero) or as a
  dense rANS coding of the signed levels (fedpress's static coder, close to their
  entropy once most levels are non-zero, i.e. for large ``s``), whichever is smaller.
- ``terngrad`` (Wen et al., "TernGrad: Ternary Gradients to Reduce Communication in
  Distributed Deep Learning", NeurIPS 2017) sends ``s_t = max |v|`` and, for every
  entry, ``sign(v_i) b_i`` with ``b_i ~ Bernoulli(|v_i| / s_t)``: the value
  ``s_t sign(v_i) b_i`` is unbiased. With ``clip = c`` the scale is lowered to
  ``c * std(v)`` as in the paper's gradient clipping (entries beyond it are sent as
  ``+-s_t`` with probability 1, which makes the estimate biased; the paper uses
  ``c = 2.5``); a tensor of zero spread is not clipped. The ternary symbols are sent
  with rANS or packed 2 bits each, whichever is smaller.

Both draw their randomness from ``seed`` and the tensor's bytes
(:func:`fedpress.grad.base.data_rng`): the same input gives the same payload, and
averaging over seeds approaches the input. Both are stateless; wrap them in error
feedback with ``plan="ef:qsgd"``. Outputs that would overflow the tensor's dtype
(``qsgd`` on float16 tensors whose norm over ``s`` exceeds 65504, say) saturate at its
largest finite value.

``qsgd`` payload layout::

    u8      coding       1 Elias (the paper's), 2 rANS
    u8      norm width   4 (float32) or 8 (float64; float64 tensors, or norms over
                         float32's range)
    B x     norms        little-endian, rounded up to the width; B = ceil(n / d) buckets
                         (d = bucket, or n when bucket is 0 or larger; none if n = 0)
    coding 1:
      varint  k          non-zero levels
      blob    gaps       Elias gamma of idx[0] + 1, then idx[j] - idx[j-1]
      ceil(k/8) bytes    signs, one bit per non-zero level (1 = negative), MSB first
      rest    levels     Elias gamma of |level| (absent when levels = 1)
    coding 2:
      rest    levels     :mod:`fedpress.stages.rans` coding of the n signed levels

``terngrad`` payload layout::

    u8      coding       0 all zero (no symbols), 1 2-bit packing, 2 rANS
    item    scale        s_t in the tensor's dtype, little-endian (0 for coding 0)
    coding 1: ceil(n/4) bytes, 2 bits per entry, MSB first: 0 -> 0, 1 -> +1, 2 -> -1
    coding 2: :mod:`fedpress.stages.rans` coding of the n symbols in {-1, 0, 1}

The reconstruction is ``norm_b / s * level`` (float64, then cast to the dtype) and
``+-s_t``; the encoder hands the decoder's exact output to error feedback.

Decoding memory: both decoders write the levels (or symbols) as exact floats into one
array of the tensor's size and dequantize it in place, ``CHUNK`` values at a time
(2-bit codes are unpacked straight into the output)
(float32 levels for float16/bfloat16 tensors, then cast into the output; float64 when
``levels >= 2**24``, where float32 would round a level just over the cap onto it).
Elias streams are decoded by one kernel that scatters (position, sign, magnitude)
straight into that array. :meth:`QSGD.decode_peak_bytes` and
:meth:`TernGrad.decode_peak_bytes` declare the result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import TensorSpec
from ..dtypes import le_bytes
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..stages import golomb
from ..stages.coders import RANS as RANS_CODER
from .base import GradientCodec, check_seed, data_rng
from .indices import gaps_of

#: largest ``levels`` of qsgd (more is beyond float32's precision anyway)
MAX_LEVELS = 1 << 24
_F32_MAX = float(np.finfo(np.float32).max)
_F64_MAX = float(np.finfo(np.float64).max)

#: the coding byte (PACK2 is terngrad's coding 1); RANS codes the symbols with the shared
#: rANS coder (``stages.coders``), whose id in the coder table is the same number
ZERO, ELIAS, RANS, PACK2 = 0, 1, 2, 1
#: fewer bytes than any rANS stream takes (two zstd frames and a header): a smaller
#: Elias or 2-bit body wins without trying rANS (saves its cost on small tensors)
RANS_MIN_BYTES = 16
QSGD_CODINGS = {ELIAS: "elias", RANS: "rans"}
TERN_CODINGS = {ZERO: "zero", PACK2: "2-bit", RANS: "rans"}
#: values dequantized (or unpacked) at a time: bounds the decoders' temporaries
CHUNK = 1 << 16
#: bytes per value of those temporaries (levels, steps and product in float64, bucket
#: numbers, masks, the cast), declared by ``decode_peak_bytes``
CHUNK_BYTES_PER_VALUE = 48
#: integers up to this magnitude are exact in float32
_F32_EXACT = 1 << 24
#: the Elias kernel's statuses
_ERR_BITS, _ERR_RANGE, _ERR_BEYOND = -1, -2, -3  # the statuses of stages._bitkernels


def _finite_max(dtype: np.dtype) -> float:
    if np.dtype(dtype).name == "bfloat16":  # ml_dtypes' own; imported only for it
        import ml_dtypes

        return float(ml_dtypes.finfo(dtype).max)
    return float(np.finfo(dtype).max)


def _check_int(codec_id: str, name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not low <= value <= high:
        raise ConfigError(f"codec {codec_id!r}: {name} must be an int in [{low}, {high}], "
                          f"got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------- qsgd


def bucket_layout(n: int, bucket: int) -> tuple[int, int]:
    """(bucket length, bucket count) of a tensor of ``n`` entries: one bucket of ``n``
    when ``bucket`` is 0 or at least ``n``; no bucket for an empty tensor."""
    if n == 0:
        return 0, 0
    d = n if bucket == 0 or bucket >= n else bucket
    return d, -(-n // d)


def bucket_norms(a: np.ndarray, d: int, nb: int) -> np.ndarray:
    """The L2 norm of each bucket of ``a`` (|entries|, float64), scaled by the bucket's
    max so that it overflows only when the norm itself does (then it saturates)."""
    if nb == 0:
        return np.zeros(0, dtype=np.float64)
    padded = np.zeros(nb * d, dtype=np.float64)
    padded[: a.size] = a
    rows = padded.reshape(nb, d)
    top = rows.max(axis=1)
    safe = np.where(top > 0, top, 1.0)
    with np.errstate(over="ignore"):
        norms = top * np.sqrt(np.square(rows / safe[:, None]).sum(axis=1))
    return np.minimum(norms, _F64_MAX)


def round_up_f32(norms: np.ndarray) -> np.ndarray:
    """``norms`` (all <= float32's max) rounded up to float32 values, as float64."""
    r = norms.astype(np.float32)
    low = r.astype(np.float64) < norms
    r[low] = np.nextafter(r[low], np.float32(np.inf))
    return r.astype(np.float64)


def qsgd_levels(a: np.ndarray, sign: np.ndarray, norms: np.ndarray, s: int, d: int,
                rng: np.random.Generator) -> np.ndarray:
    """Signed levels of QSGD: stochastic rounding of ``s |v_i| / norm`` (int64)."""
    per = np.repeat(norms, d)[: a.size]
    r = np.zeros(a.size, dtype=np.float64)
    np.divide(a, per, out=r, where=per > 0)
    r *= s
    low = np.floor(r)
    lev = low.astype(np.int64) + (rng.random(a.size) < r - low)
    np.minimum(lev, s, out=lev)  # a norm rounded below max|v| cannot give s + 1
    return np.where(sign, -lev, lev)


def qsgd_values(levels: np.ndarray, norms: np.ndarray, s: int, d: int,
                spec: TensorSpec) -> np.ndarray:
    """What both ends make of the levels: ``norm / s * level`` in the tensor's dtype."""
    out = levels * np.repeat(norms / s, d)[: levels.size]
    top = _finite_max(spec.dtype)
    np.clip(out, -top, top, out=out)
    return out.astype(spec.dtype).reshape(spec.shape)


def write_elias(w: Writer, levels: np.ndarray, s: int) -> None:
    """The paper's coding: gaps between non-zero levels, signs, magnitudes."""
    idx = np.flatnonzero(levels).astype(np.int64)
    nz = levels[idx]
    w.varint(int(idx.size))
    w.blob(golomb.gamma_pack(gaps_of(idx) + 1))
    w.raw(np.packbits(nz < 0).tobytes())
    if s > 1:
        w.raw(golomb.gamma_pack(np.abs(nz)))


def read_elias(rd: Reader, n: int, s: int, out: np.ndarray) -> None:
    """Write the signed levels of an Elias body into ``out`` (n zeros, float32 or
    float64); FormatError on a bad stream (the gaps' errors first, as they come first)."""
    k = rd.varint(cap=n, name="non-zero levels")
    gaps = np.frombuffer(rd.blob(cap=rd.remaining, name="level gaps"), dtype=np.uint8)
    _check_fits(k, gaps)
    kernel = elias_kernel()
    none = np.zeros(0, dtype=np.uint8)
    status, value, gap_bits = kernel(gaps, none, none, k, n, 0, out)  # the gaps alone
    _check_status(status, value)
    golomb.check_end(gaps, gap_bits, "gamma")
    signs = np.frombuffer(rd.take((k + 7) // 8), dtype=np.uint8)
    if k % 8 and int(signs[-1]) & (0xFF >> (k % 8)):
        raise FormatError("qsgd payload: sign padding is not zero")
    mags = np.frombuffer(rd.rest(), dtype=np.uint8) if s > 1 else none
    _check_fits(k if s > 1 else 0, mags)
    status, value, mag_bits = kernel(gaps, signs, mags, k, n, s, out)
    _check_status(status, value)
    if s > 1:
        golomb.check_end(mags, mag_bits, "gamma")


def _check_status(status: int, value: int) -> None:
    """FormatError for an Elias kernel status (``value``: the cap a value exceeded)."""
    if status == _ERR_BITS:
        raise FormatError("gamma: stream ends early")
    if status == _ERR_RANGE:
        raise FormatError(f"gamma: value exceeds {value}")
    if status == _ERR_BEYOND:
        raise FormatError("qsgd payload: a level position lies beyond the tensor")


def _check_fits(k: int, buf: np.ndarray) -> None:
    if k > 8 * buf.size:
        raise FormatError(f"gamma: {k} codes cannot fit in {buf.size} bytes")


@functools.cache
def elias_kernel() -> Callable[..., tuple[int, int, int]]:
    """The compiled Elias decoder, :func:`fedpress.stages._bitkernels.elias_levels`
    (numba is loaded on first use)."""
    from ..stages import _bitkernels

    return _bitkernels.elias_levels


def level_dtype(dtype: np.dtype, s: int) -> np.dtype:
    """The float dtype the decoder holds levels in: exact for every level up to ``s``
    and for the first one over it (float64 for float64 tensors and ``s >= 2**24``)."""
    return np.dtype(np.float64 if dtype == np.float64 or s >= _F32_EXACT else np.float32)


def dequantize_levels(buf: np.ndarray, norms: np.ndarray, s: int, d: int,
                      spec: TensorSpec) -> np.ndarray:
    """:func:`qsgd_values` of the levels held (exactly) in ``buf``, a chunk at a time,
    written over ``buf`` when it has the tensor's dtype. ``norms`` is the payload's
    view; FormatError if a bucket of norm 0 holds a non-zero level."""
    n = buf.size
    out = buf if buf.dtype == spec.dtype else np.empty(n, dtype=spec.dtype)
    top = _finite_max(spec.dtype)
    for start in range(0, n, CHUNK):
        part = slice(start, min(n, start + CHUNK))
        norm = norms[np.arange(part.start, part.stop) // d].astype(np.float64)
        lev = buf[part].astype(np.float64)
        if np.any((norm == 0) & (lev != 0)):
            raise FormatError("qsgd payload: non-zero levels in a bucket of norm 0")
        vals = lev * (norm / s)
        np.clip(vals, -top, top, out=vals)
        out[part] = vals.astype(spec.dtype)
    return out.reshape(spec.shape)


def check_norms(norms: np.ndarray) -> None:
    """FormatError if a norm is negative or not finite (a chunk at a time)."""
    for start in range(0, norms.size, CHUNK):
        part = norms[start:start + CHUNK]
        if not np.all(np.isfinite(part)) or np.any(part < 0):
            raise FormatError("qsgd payload: a norm is negative or not finite")


@register_codec
class QSGD(GradientCodec):
    """Unbiased stochastic quantization to ``levels`` levels of the norm per sign."""

    codec_id = "qsgd"
    config_keys: ClassVar[tuple[str, ...]] = ("levels", "bucket", "seed")

    def __init__(self, levels: int = 16, bucket: int = 512, seed: int = 0) -> None:
        self.levels = _check_int(self.codec_id, "levels", levels, 1, MAX_LEVELS)
        self.bucket = _check_int(self.codec_id, "bucket", bucket, 0, 2**62)
        self.seed = check_seed(self.codec_id, seed)

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        spec = TensorSpec.of(x)
        v = x.reshape(-1).astype(np.float64)
        a = np.abs(v)
        d, nb = bucket_layout(v.size, self.bucket)
        norms = bucket_norms(a, d, nb)
        width = 8 if x.dtype == np.float64 or norms.max(initial=0.0) > _F32_MAX else 4
        if width == 4:
            norms = round_up_f32(norms)
        levels = qsgd_levels(a, np.signbit(v), norms, self.levels, d, data_rng(self.seed, x))
        w = Writer()
        write_elias(w, levels, self.levels)
        bodies = {ELIAS: w.getvalue()}
        if len(bodies[ELIAS]) > RANS_MIN_BYTES:
            w = Writer()
            RANS_CODER.encode(levels, w)
            bodies[RANS] = w.getvalue()
        coding = min(bodies, key=lambda c: (len(bodies[c]), c))
        w = Writer()
        w.u8(coding)
        w.u8(width)
        w.raw(norms.astype("<f4" if width == 4 else "<f8").tobytes())
        w.raw(bodies[coding])
        return w.getvalue(), qsgd_values(levels, norms, self.levels, d, spec)

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        n = spec.size
        coding, width = rd.u8(), rd.u8()
        if coding not in QSGD_CODINGS:
            raise FormatError(f"qsgd payload: unknown coding {coding}")
        if width not in (4, 8):
            raise FormatError(f"qsgd payload: bad norm width {width}")
        d, nb = bucket_layout(n, self.bucket)
        norms = np.frombuffer(rd.take(nb * width), dtype="<f4" if width == 4 else "<f8")
        check_norms(norms)
        lev_dt = level_dtype(np.dtype(spec.dtype), self.levels)
        if coding == ELIAS:
            buf = np.zeros(n, dtype=lev_dt)
            read_elias(rd, n, self.levels, buf)
        else:
            buf = RANS_CODER.decode(rd, n, step=1.0, dtype=lev_dt)
            if buf.size and max(float(buf.max()), -float(buf.min())) > self.levels:
                raise FormatError(f"qsgd payload: a level exceeds {self.levels}")
        return dequantize_levels(buf, norms, self.levels, d, spec)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The levels (in the output's place unless it is float16/bfloat16, or
        ``levels >= 2**24`` for a float32 tensor), the output and the chunks'
        temporaries (the rANS stage's own buffers are not counted)."""
        n = spec.size
        lev_dt = level_dtype(np.dtype(spec.dtype), self.levels)
        peak = n * lev_dt.itemsize + CHUNK_BYTES_PER_VALUE * min(n, CHUNK)
        return peak + (spec.nbytes if lev_dt != spec.dtype else 0)

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        coding = Reader(payload, "qsgd payload").u8()
        return {"levels": self.levels, "coding": QSGD_CODINGS.get(coding, "?")}


# ---------------------------------------------------------------------------- terngrad


def ternary_values(sym: np.ndarray, scale: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``scale * sym`` in the tensor's dtype (``scale`` a 0-d array of that dtype)."""
    out = np.zeros(sym.size, dtype=spec.dtype)
    out[sym > 0] = scale
    out[sym < 0] = -scale
    return out.reshape(spec.shape)


def pack2(sym: np.ndarray) -> bytes:
    """Ternary symbols 2 bits each, MSB first (0 -> 0, 1 -> 1, -1 -> 2), zero-padded."""
    codes = np.zeros(-(-sym.size // 4) * 4, dtype=np.uint8)
    codes[: sym.size] = np.where(sym < 0, 2, sym)
    c = codes.reshape(-1, 4)
    return (c[:, 0] << 6 | c[:, 1] << 4 | c[:, 2] << 2 | c[:, 3]).astype(np.uint8).tobytes()


def unpack2(data: bytes | memoryview, n: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8)
    codes = np.stack([raw >> 6, (raw >> 4) & 3, (raw >> 2) & 3, raw & 3], axis=1).reshape(-1)
    if np.any(codes == 3):
        raise FormatError("terngrad payload: invalid 2-bit code")
    if codes[n:].any():
        raise FormatError("terngrad payload: 2-bit padding is not zero")
    codes = codes[:n].astype(np.int64)
    return np.where(codes == 2, -1, codes)


def ternary_table(scale: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """What the 2-bit codes stand for: ``[0, scale, -scale, 0]`` in ``dtype``."""
    table = np.zeros(4, dtype=dtype)
    table[1] = scale
    table[2] = -scale
    return table


def unpack2_values(data: memoryview, n: int, table: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The tensor of 2-bit codes ``data`` (``table[code]``), unpacked a chunk at a time;
    FormatError on code 3 or non-zero padding."""
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(n, dtype=spec.dtype)
    step = CHUNK // 4
    for first in range(0, raw.size, step):
        part = raw[first:first + step]
        codes = np.stack([part >> 6, (part >> 4) & 3, (part >> 2) & 3, part & 3],
                         axis=1).reshape(-1)
        if np.any(codes == 3):
            raise FormatError("terngrad payload: invalid 2-bit code")
        start = 4 * first
        keep = min(codes.size, n - start)
        if codes[keep:].any():
            raise FormatError("terngrad payload: 2-bit padding is not zero")
        out[start:start + keep] = table[codes[:keep]]
    return out.reshape(spec.shape)


def symbol_dtype(dtype: np.dtype) -> np.dtype:
    """The float dtype the decoder holds ternary symbols in (float64 for float64 tensors)."""
    return np.dtype(np.float64 if dtype == np.float64 else np.float32)


def symbols_to_values(sym: np.ndarray, scale: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """``scale * sym`` (symbols held as floats), written over ``sym`` when it has the
    tensor's dtype, else cast into the output a chunk at a time (exact: the products
    are ``0`` and ``+-scale``)."""
    if sym.dtype == spec.dtype:
        np.multiply(sym, scale.astype(sym.dtype), out=sym)
        return sym.reshape(spec.shape)
    out = np.empty(sym.size, dtype=spec.dtype)
    wide = scale.astype(sym.dtype)
    for start in range(0, sym.size, CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = (sym[part] * wide).astype(spec.dtype)
    return out.reshape(spec.shape)


def _check_clip(clip: Any) -> float | None:
    if clip is None:
        return None
    value = float("nan")
    if not isinstance(clip, bool) and isinstance(clip, (int, float)):
        try:
            value = float(clip)
        except OverflowError:  # an int beyond float's range
            pass
    if not 0 < value < float("inf"):
        raise ConfigError(f"codec 'terngrad': clip must be None or a finite number > 0 "
                          f"(in standard deviations), got {clip!r}")
    return value


@register_codec
class TernGrad(GradientCodec):
    """Unbiased stochastic ternarization to ``{-s_t, 0, s_t}``, ``s_t = max |v|``."""

    codec_id = "terngrad"
    config_keys: ClassVar[tuple[str, ...]] = ("clip", "seed")

    def __init__(self, clip: float | None = None, seed: int = 0) -> None:
        self.clip = _check_clip(clip)
        self.seed = check_seed(self.codec_id, seed)

    def scale_for(self, v: np.ndarray) -> float:
        """``max |v|``, lowered to ``clip * std(v)`` when clipping (float64)."""
        top = float(np.abs(v).max(initial=0.0))
        if self.clip is not None and top > 0:
            with np.errstate(over="ignore"):
                c_sigma = self.clip * top * float((v / top).std())  # scaled: no overflow
            if c_sigma > 0:
                return min(top, c_sigma)
        return top

    def _encode(self, x: np.ndarray) -> tuple[bytes, np.ndarray]:
        spec = TensorSpec.of(x)
        v = x.reshape(-1).astype(np.float64)
        scale = np.asarray(self.scale_for(v)).astype(x.dtype)  # exactly what is sent
        s = float(scale)
        w = Writer()
        if s == 0:
            sym = np.zeros(v.size, dtype=np.int64)
            w.u8(ZERO)
            w.raw(le_bytes(scale))
            return w.getvalue(), ternary_values(sym, scale, spec)
        p = np.minimum(np.abs(v) / s, 1.0)
        hit = data_rng(self.seed, x).random(v.size) < p
        sym = np.where(hit, np.where(np.signbit(v), -1, 1), 0).astype(np.int64)
        bodies = {PACK2: pack2(sym)}
        if len(bodies[PACK2]) > RANS_MIN_BYTES:
            sub = Writer()
            RANS_CODER.encode(sym, sub)
            bodies[RANS] = sub.getvalue()
        coding = min(bodies, key=lambda c: (len(bodies[c]), c))
        w.u8(coding)
        w.raw(le_bytes(scale))
        w.raw(bodies[coding])
        return w.getvalue(), ternary_values(sym, scale, spec)

    def _decode(self, rd: Reader, spec: TensorSpec) -> np.ndarray:
        n = spec.size
        coding = rd.u8()
        if coding not in TERN_CODINGS:
            raise FormatError(f"terngrad payload: unknown coding {coding}")
        scale = rd.array(spec.dtype, 1)[0:1].reshape(())
        s = float(scale)
        if not np.isfinite(s) or s < 0:
            raise FormatError("terngrad payload: the scale is negative or not finite")
        if (coding == ZERO) != (s == 0):
            raise FormatError("terngrad payload: the scale does not match the coding")
        if coding == ZERO:  # nothing but zeros: no symbol array
            return np.zeros(spec.shape, dtype=spec.dtype)
        scale = scale.astype(spec.dtype)
        if coding == PACK2:
            return unpack2_values(rd.take((n + 3) // 4), n, ternary_table(scale, spec.dtype),
                                  spec)
        sym = RANS_CODER.decode(rd, n, step=1.0, dtype=symbol_dtype(np.dtype(spec.dtype)))
        if sym.size and max(float(sym.max()), -float(sym.min())) > 1:
            raise FormatError("terngrad payload: a symbol is not in {-1, 0, 1}")
        return symbols_to_values(sym, scale, spec)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The symbols (in the output's place unless it is float16/bfloat16), the output
        and the chunks' temporaries (the rANS stage's own buffers are not counted)."""
        n = spec.size
        sym_dt = symbol_dtype(np.dtype(spec.dtype))
        peak = n * sym_dt.itemsize + CHUNK_BYTES_PER_VALUE * min(n, CHUNK)
        return peak + (spec.nbytes if sym_dt != spec.dtype else 0)

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        coding = Reader(payload, "terngrad payload").u8()
        return {"coding": TERN_CODINGS.get(coding, "?")}
