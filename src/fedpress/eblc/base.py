"""The envelope every error-bounded codec shares.

:class:`ErrorBoundedCodec` does everything that is not the compression
algorithm itself, so that each back end only maps a 1-D float array and an
absolute bound to bytes and back (``_encode_core`` / ``_decode_core``):

* computes the absolute bound (``abs`` or value-range ``rel`` mode);
* takes NaN/Inf out of the data (stored exactly as patches; the core sees the
  finite minimum instead);
* stores empty and constant tensors without calling the core, and falls back
  to lossless zstd when the absolute bound is 0;
* decodes the core's output at encode time (or takes the reconstruction a
  quantizing core computed), casts it to the tensor's dtype and stores exactly
  every value with ``|x - x'| > eb_abs`` (float32 rounding, float16/bfloat16
  casts), so the bound holds on the output dtype. A core that has itself checked
  every value of a finite tensor in its own dtype and found none over spares the
  envelope this pass (see ``_encode_core_recon``);
* keeps the bound when the thread flushes subnormals (FTZ/DAZ, e.g. after
  ``torch.set_flush_denormal(True)``): the encoder then stores subnormal values as
  patches (the core sees zeros there) and bounds below ``FLUSH_SAFE_FACTOR`` times
  the core dtype's smallest normal losslessly; the decoder refuses such a bound
  (:class:`fedpress.ConfigError`, naming the cause) rather than return values the
  flushing arithmetic moved beyond it;
* decodes within its declared memory (:meth:`ErrorBoundedCodec.decode_peak_bytes`):
  patches are read in place and applied, the reference added and the output cast a
  block of ``CHUNK`` values at a time, in place when the core returns the tensor's
  dtype.

Payload layout (little-endian)::

    u8   kind           0 empty, 1 constant, 2 core, 3 lossless (eb_abs == 0)
    f64  eb_abs
    varint n_patches
    u8   index width    4 or 8 (only if n_patches > 0)
    n_patches indices   strictly increasing, uint32/uint64
    n_patches values    raw bytes in the tensor's dtype
    kind 1: f64 constant value
    kind 2: the core's bytes (to the end)
    kind 3: zstd frame of the raw little-endian values (to the end)
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import Codec, TensorSpec
from ..bounds import ErrorBound, check_bound
from ..dtypes import is_float, le_bytes
from ..errors import ConfigError, FormatError
from ..stages.lossless import ZSTD

KIND_EMPTY, KIND_CONSTANT, KIND_CORE, KIND_LOSSLESS = 0, 1, 2, 3
#: values handled at a time when the decoder adds a reference or applies patches
CHUNK = 1 << 16
#: bytes per value of those blocks' temporaries (reference, values and sum in float64,
#: the cast result; patch indices as intp), declared by ``decode_peak_bytes``
CHUNK_BYTES_PER_VALUE = 32
#: with subnormals flushed, a bound below this many times the core dtype's smallest
#: normal is not trusted to the core. Measured with flushing on one end only: up to
#: 2e4x over the bound where the bound is subnormal, and 56x at 5.6e6 times the
#: smallest normal (zfp: a block's scale 2**(emax - 30) goes subnormal below 2**-96
#: and the block decodes to zero); none above that
FLUSH_SAFE_FACTOR = 2.0**40
_LOSSLESS = ZSTD  # kind 3's coder
_F32_TINY, _F32_HUGE = 1e-30, 1e30  # margins safely inside float32's normal range
_KIND_NAMES = {0: "empty", 1: "constant", 2: "core", 3: "lossless"}


class ErrorBoundedCodec(Codec):
    """Base of all error-bounded codecs; subclasses implement the core only.

    Parameters
    ----------
    mode : {"rel", "abs"}
        Error-bound mode (see :mod:`fedpress.bounds`).
    eb : float
        The bound: relative to the value range in ``rel`` mode, absolute in
        ``abs`` mode.
    """

    lossy = True
    error_bounded = True
    takes_reference = True
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb")
    #: whether the core can work in float64 (else it gets float32)
    core_float64: ClassVar[bool] = False
    #: whether the core's reconstruction is always an array of its own, which nothing
    #: else holds or reads later (the input aside): ``encode_with_output`` then patches
    #: and returns it without a copy
    core_recon_owned: ClassVar[bool] = False

    def __init__(self, mode: str = "rel", eb: float = 1e-2) -> None:
        check_bound(mode, eb)
        self.mode = mode
        self.eb = float(eb)

    # -- the part each back end writes ------------------------------------
    @abstractmethod
    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        """Compress a 1-D finite float32 (or float64) array with ``eb_abs > 0``."""

    @abstractmethod
    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        """Return the ``n`` values (1-D, ``dtype``) that ``_encode_core`` encoded."""

    def _encode_core_recon(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...] = ()
                           ) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        """Encode and, where the core knows them, return the decoder's exact output
        and where it breaks the bound. ``shape`` is the tensor's shape (``x`` is
        flat), for cores that predict along its axes.

        Returns ``(body, recon, over)``. Cores that compute their reconstruction
        while encoding (quantizers) return it as ``recon`` so the envelope can
        check the bound without a decode; their tests must show ``_decode_core``
        returns exactly that array. ``over``, if not None, holds every index with
        ``|x - recon| > eb_abs`` exactly (float64, after ``recon``'s rounding to
        ``x``'s dtype; usually empty): the envelope then skips its own check when
        ``x`` is the tensor itself (finite values, same dtype). The default returns
        ``(body, None, None)`` and the envelope decodes the bytes.
        """
        return self._encode_core(x, eb_abs), None, None

    # -- envelope ---------------------------------------------------------
    def _core_dtype(self, dtype: np.dtype) -> np.dtype:
        if self.core_float64 and dtype == np.float64:
            return np.dtype(np.float64)
        return np.dtype(np.float32)

    def encode(self, x: np.ndarray, reference: np.ndarray | None = None) -> bytes:
        """Encode ``x``; with ``reference`` (same shape, finite), code ``x - reference``
        under the bound computed from ``x`` itself (the decoder needs the same reference)."""
        return self._encode_envelope(x, reference)[0]

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,
               reference: np.ndarray | None = None) -> np.ndarray:
        return self._decode_envelope(payload, spec, reference)

    def encode_with_output(self, x: np.ndarray, reference: np.ndarray | None = None
                           ) -> tuple[bytes, np.ndarray]:
        """The payload and exactly what :meth:`decode` returns for it (for error feedback)."""
        payload, out = self._encode_envelope(x, reference, want_output=True)
        assert out is not None
        return payload, out.reshape(np.shape(x))

    def _encode_envelope(self, x: np.ndarray, reference: np.ndarray | None = None,
                         core: CoreEncoder | None = None, want_output: bool = False,
                         ) -> tuple[bytes, np.ndarray | None]:
        """The payload of ``x`` and, if ``want_output``, exactly what
        :meth:`_decode_envelope` will return for it (flat).

        ``core`` replaces :meth:`_encode_core_recon` (for codecs whose core needs
        more than the values, e.g. mirrored state). With ``reference``, the core sees
        ``x - reference`` (computed in float64) and the reconstruction is
        ``reference + core output`` (float64, then cast to x's dtype).
        """
        self.check_input(x)
        core = core if core is not None else self._encode_core_recon
        flat = np.ascontiguousarray(x).reshape(-1)
        ref = _flat_reference(reference, x)
        n = flat.size
        flushing = flushes_subnormals()
        w = Writer()
        if n == 0:
            w.u8(KIND_EMPTY)
            w.f64(0.0)
            w.varint(0)
            return w.getvalue(), (flat.copy() if want_output else None)
        # finiteness and range in a dtype where comparisons are exact
        xs = flat if flat.dtype in (np.float32, np.float64) else flat.astype(np.float32)
        finite = np.isfinite(xs)
        all_finite = bool(finite.all())
        lo, hi = _finite_range(xs, None if all_finite else finite)
        eb_abs = ErrorBound(self.mode, self.eb).absolute(lo, hi)
        bad_idx = np.zeros(0, dtype=np.int64) if all_finite else np.flatnonzero(~finite)
        if flushing:  # subnormals read as zero: store them exactly
            bad_idx = np.union1d(bad_idx, np.flatnonzero(subnormal_mask(flat)))
        y: np.ndarray | None = None  # the core's output, in x's dtype

        if lo == hi:
            kind, body = KIND_CONSTANT, None
        elif eb_abs == 0.0 or (flushing and eb_abs < flush_floor(self._core_dtype(flat.dtype))):
            kind, body = KIND_LOSSLESS, None
        else:
            kind = KIND_CORE
            core_dt = self._core_dtype(flat.dtype)
            fmax = float(np.finfo(core_dt).max)
            if ref is None:
                src = flat
            else:
                src = flat.astype(np.float64) - ref
                if not all_finite:
                    src[~finite] = 0.0
            # values beyond a float32 core's range are clipped (and patched later)
            if core_dt.itemsize < src.dtype.itemsize:
                src = np.clip(src, -fmax, fmax)
            # cores never write to their input: no copy unless NaN/Inf must be replaced
            work = src.astype(core_dt, copy=not all_finite and ref is None)
            if not all_finite and ref is None:
                work[~finite] = min(max(lo, -fmax), fmax)
            if flushing:  # the core sees zeros where flushing arithmetic would
                work = _zero_subnormals(work, flat)
            body_, recon, over = core(work, eb_abs, np.shape(x))
            body = bytes(body_)
            # the core's own count of offenders holds only for x itself, as the core saw it
            check = (over is None or not all_finite or work.dtype != flat.dtype
                     or ref is not None or flushing)
            if check or want_output:
                yc = recon if recon is not None else self._decode_core(
                    memoryview(body), n, work.dtype, eb_abs)
                y = _add_reference(np.asarray(yc).reshape(-1), ref, flat.dtype)
                if check:
                    over = _over_bound(xs, y, eb_abs, all_finite)
            assert over is not None  # the core's own count, or the check above
            if over.size:
                bad_idx = np.union1d(bad_idx, over)
            patch_bytes = bad_idx.size * (flat.dtype.itemsize + 8)
            if patch_bytes + len(body) > flat.nbytes:
                # the core cannot hold this bound (e.g. a float32 core below float64
                # precision): storing the values exactly is smaller
                kind, body = KIND_LOSSLESS, None
        if kind == KIND_LOSSLESS:
            bad_idx = np.zeros(0, dtype=np.int64)  # the lossless body holds NaN/Inf too

        w.u8(kind)
        w.f64(eb_abs)
        _write_patches(w, flat, bad_idx)
        if kind == KIND_CONSTANT:
            w.f64(lo)
        elif kind == KIND_LOSSLESS:
            w.raw(_LOSSLESS.encode_array(flat))
        else:
            assert body is not None
            w.raw(body)
        if not want_output:
            return w.getvalue(), None
        if kind == KIND_CONSTANT:
            out = np.full(n, flat.dtype.type(lo), dtype=flat.dtype)
        elif kind == KIND_LOSSLESS:
            out = flat.copy()
        else:
            assert y is not None
            shared_recon = (recon is not None and not self.core_recon_owned
                            and np.shares_memory(y, recon))
            if np.shares_memory(y, flat) or shared_recon or not y.flags.writeable:
                y = y.copy()  # never hand out (or patch) the caller's or the core's array
            out = y
        if bad_idx.size:
            out[bad_idx] = flat[bad_idx]
        return w.getvalue(), out

    def _decode_envelope(self, payload: bytes | memoryview, spec: TensorSpec,
                         reference: np.ndarray | None = None,
                         core: CoreDecoder | None = None) -> np.ndarray:
        """Decode a payload of :meth:`_encode_envelope` (``core`` replaces
        :meth:`_decode_core`)."""
        core = core if core is not None else self._decode_core
        r = Reader(payload, f"{self.codec_id} payload")
        n = spec.size
        dtype = np.dtype(spec.dtype)
        kind = r.u8()
        eb_abs = r.f64()
        if not (eb_abs >= 0.0) or eb_abs == float("inf"):
            raise FormatError(f"{self.codec_id} payload: invalid bound {eb_abs}")
        idx, vals = _read_patches(r, n, dtype)
        if kind == KIND_EMPTY:
            if n != 0:
                raise FormatError(f"{self.codec_id} payload: empty payload for {n} values")
            r.expect_end()
            return np.zeros(spec.shape, dtype=dtype)
        if n == 0:
            raise FormatError(f"{self.codec_id} payload: non-empty payload for an empty tensor")
        if kind == KIND_CONSTANT:
            value = r.f64()
            r.expect_end()
            self._check_flushing(kind, eb_abs, dtype, value)
            out = np.full(n, dtype.type(value), dtype=dtype)
        elif kind == KIND_LOSSLESS:
            out = _lossless_decode(r.rest(), n, dtype, self.codec_id)
        elif kind == KIND_CORE:
            self._check_flushing(kind, eb_abs, dtype)
            ref = _reference_view(reference, spec)
            core_dtype = self._core_dtype(dtype)
            try:
                y = core(r.rest(), n, core_dtype, eb_abs)
            except FormatError:
                raise
            except Exception as exc:  # a back end's own error on bad bytes
                raise FormatError(f"{self.codec_id} payload: back end failed: {exc}") from exc
            y = np.asarray(y)
            if y.size != n:
                raise FormatError(f"{self.codec_id} payload: decoded {y.size} values, expected {n}")
            out = _finish_output(y.reshape(-1), ref, dtype)
        else:
            raise FormatError(f"{self.codec_id} payload: unknown kind {kind}")
        _apply_patches(out, idx, vals)
        return out.reshape(spec.shape)

    def _check_flushing(self, kind: int, eb_abs: float, dtype: np.dtype,
                        value: float = 0.0) -> None:
        """ConfigError if this thread flushes subnormals and the payload needs them:
        a core bound below :func:`flush_floor`, or a constant the cast would flush."""
        if not flushes_subnormals():
            return
        if kind == KIND_CORE:
            floor = flush_floor(self._core_dtype(dtype))
            if eb_abs < floor:
                raise ConfigError(
                    f"{self.codec_id} payload: its bound {eb_abs:.3g} is below {floor:.3g}, "
                    "where this thread's flush-to-zero (FTZ/DAZ: torch.set_flush_denormal(True) "
                    "or a library built with -ffast-math) breaks the bound; decode with "
                    "subnormals enabled (torch.set_flush_denormal(False))")
        elif (kind == KIND_CONSTANT and dtype.name in _CAST_FLUSHED
              and 0.0 < abs(value) < float(np.finfo(np.float32).tiny)):
            raise ConfigError(
                f"{self.codec_id} payload: its constant {value:.3g} is subnormal, and this "
                "thread flushes subnormals to zero (FTZ/DAZ: torch.set_flush_denormal(True)); "
                "decode with subnormals enabled (torch.set_flush_denormal(False))")

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The core's output, the tensor when the core returns another dtype (float16,
        bfloat16, and float64 for float32 cores), what the back end allocates beyond
        its output (:meth:`_core_decode_extra_bytes`) and the blocks' temporaries."""
        n = spec.size
        dtype = np.dtype(spec.dtype)
        core_dt = self._core_dtype(dtype)
        peak = n * core_dt.itemsize + self._core_decode_extra_bytes(n, core_dt)
        if core_dt != dtype:
            peak += spec.nbytes
        return peak + CHUNK_BYTES_PER_VALUE * min(n, CHUNK)

    def _core_decode_extra_bytes(self, n: int, dtype: np.dtype) -> int:
        """Bytes :meth:`_decode_core` allocates beyond the ``n`` values of ``dtype`` it
        returns (a back end's internal buffers); 0 unless a back end says otherwise."""
        return 0

    def describe(self, payload: bytes | memoryview, spec: TensorSpec) -> dict[str, Any]:
        r = Reader(payload, f"{self.codec_id} payload")
        kind = r.u8()
        eb_abs = r.f64()
        n_patches = r.varint()
        return {"mode": self.mode, "eb": self.eb, "eb_abs": eb_abs,
                "storage": _KIND_NAMES.get(kind, "?"), "patches": n_patches}

    def bound_for(self, x: np.ndarray) -> float:
        """The absolute bound this codec will use for ``x``."""
        x64 = np.asarray(x, dtype=np.float64).reshape(-1)
        return ErrorBound(self.mode, self.eb).absolute(*_finite_range(x64, np.isfinite(x64)))


# -- flush-to-zero -----------------------------------------------------------

_PROBE_SUB = np.array([np.finfo(np.float32).smallest_subnormal], dtype=np.float32)
_PROBE_TINY = np.array([np.finfo(np.float32).tiny], dtype=np.float32)
_PROBE_HALF = np.float32(0.5)
#: dtypes (by name; bfloat16 is ml_dtypes', not imported here) whose casts from float64
#: flush subnormal results; both share float32's smallest normal. float16's casts are
#: done bit by bit and do not flush (measured)
_CAST_FLUSHED = ("float32", "bfloat16")
#: dtype name -> (unsigned view, exponent-field mask, mantissa mask) for the bit test of
#: subnormals; float16 is left out (it is widened to float32, where it is normal)
_SUBNORMAL_BITS = {
    "float32": (np.uint32, 0x7F800000, 0x007FFFFF),
    "float64": (np.uint64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "bfloat16": (np.uint16, 0x7F80, 0x007F),
}


def flushes_subnormals() -> bool:
    """Whether this thread's floating-point unit flushes subnormal results to zero
    (FTZ) or reads subnormal inputs as zero (DAZ), as ``torch.set_flush_denormal(True)``
    or a library built with ``-ffast-math`` leave it. NumPy and numba obey the flags.

    Two one-value operations, checked by their bits (so DAZ cannot fool the test):
    ``tiny * 0.5`` is 0 under FTZ, ``tiny + smallest subnormal`` is ``tiny`` under DAZ.
    Cheap enough to ask on every call (the flags are per thread and can change).
    """
    half = np.multiply(_PROBE_TINY, _PROBE_HALF)
    total = np.add(_PROBE_TINY, _PROBE_SUB)
    return bool(half.view(np.uint32)[0] == 0
                or total.view(np.uint32)[0] == _PROBE_TINY.view(np.uint32)[0])


def flush_floor(core_dtype: np.dtype) -> float:
    """The smallest bound a core of ``core_dtype`` keeps while subnormals are flushed."""
    return FLUSH_SAFE_FACTOR * float(np.finfo(core_dtype).tiny)


def subnormal_mask(x: np.ndarray) -> np.ndarray:
    """Where ``x`` holds subnormal values, by a test of the bits (no float arithmetic,
    so it holds under DAZ); all False for dtypes not in ``_SUBNORMAL_BITS``."""
    spec = _SUBNORMAL_BITS.get(x.dtype.name)
    if spec is None or x.dtype.itemsize != np.dtype(spec[0]).itemsize:
        return np.zeros(x.shape, dtype=bool)
    view_dt, exp_mask, mant_mask = spec
    bits = x.view(view_dt)
    return ((bits & view_dt(exp_mask)) == 0) & ((bits & view_dt(mant_mask)) != 0)


def _zero_subnormals(work: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``work`` with its subnormal values set to 0 (a copy if it is the caller's array)."""
    mask = subnormal_mask(work)
    if not mask.any():
        return work
    if np.shares_memory(work, flat) or not work.flags.writeable:
        work = work.copy()
    work[mask] = 0
    return work


#: ``(x, eb_abs, shape) -> (body, recon, over)``, as :meth:`ErrorBoundedCodec._encode_core_recon`
CoreEncoder = Callable[[np.ndarray, float, tuple[int, ...]],
                       tuple[bytes, "np.ndarray | None", "np.ndarray | None"]]
#: ``(data, n, dtype, eb_abs) -> values``, as :meth:`ErrorBoundedCodec._decode_core`
CoreDecoder = Callable[[memoryview, int, np.dtype, float], np.ndarray]


def _flat_reference(reference: np.ndarray | None, like: np.ndarray | TensorSpec,
                    ) -> np.ndarray | None:
    """The reference as flat float64, checked against the tensor's shape; None if none."""
    if reference is None:
        return None
    ref = np.asarray(reference)
    shape = tuple(like.shape)
    if ref.shape != shape:
        raise ConfigError(f"reference has shape {ref.shape}, the tensor {shape}")
    if not is_float(ref.dtype) and not np.issubdtype(ref.dtype, np.integer):
        raise ConfigError(f"reference must be numeric, not {ref.dtype}")
    ref64 = ref.astype(np.float64).reshape(-1)
    if not np.isfinite(ref64).all():
        raise ConfigError("reference holds NaN or Inf")
    return ref64


def _reference_view(reference: np.ndarray | None, spec: TensorSpec) -> np.ndarray | None:
    """The reference, flat in its own dtype (no float64 copy), checked as
    :func:`_flat_reference` checks it; None if none."""
    if reference is None:
        return None
    ref = np.asarray(reference)
    if ref.shape != tuple(spec.shape):
        raise ConfigError(f"reference has shape {ref.shape}, the tensor {tuple(spec.shape)}")
    if not is_float(ref.dtype) and not np.issubdtype(ref.dtype, np.integer):
        raise ConfigError(f"reference must be numeric, not {ref.dtype}")
    flat = ref.reshape(-1)
    if is_float(ref.dtype):
        for start in range(0, flat.size, CHUNK):
            if not np.isfinite(flat[start:start + CHUNK].astype(np.float64)).all():
                raise ConfigError("reference holds NaN or Inf")
    return flat


def _finish_output(y: np.ndarray, ref: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """The decoder's output from the core's flat output ``y``: ``ref + y`` in float64
    cast to ``dtype`` (``y`` cast if there is no reference), block by block; written
    over ``y`` when it has the output's dtype and is the decoder's own."""
    own = y.dtype == dtype and y.flags.writeable and y.flags.c_contiguous
    if ref is None:
        if y.dtype != dtype:
            return y.astype(dtype)
        return y if own else y.copy()
    out = y if own else np.empty(y.size, dtype=dtype)
    for start in range(0, y.size, CHUNK):
        part = slice(start, start + CHUNK)
        out[part] = (ref[part].astype(np.float64) + y[part].astype(np.float64)).astype(dtype)
    return out


def _add_reference(y: np.ndarray, ref: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """``ref + y`` in float64, cast to ``dtype`` (``y`` cast if there is no reference)."""
    if ref is None:
        return y.astype(dtype, copy=False)
    return (ref + y.astype(np.float64)).astype(dtype)


def _finite_range(x: np.ndarray, finite: np.ndarray | None) -> tuple[float, float]:
    """(min, max) of the finite values of ``x`` (``finite``: their mask, None if all are)."""
    fin = x if finite is None else x[finite]
    return (float(fin.min()), float(fin.max())) if fin.size else (0.0, 0.0)


def _over_bound(x: np.ndarray, y: np.ndarray, eb_abs: float,
                all_finite: bool = False) -> np.ndarray:
    """Flat indices where ``|x - y| > eb_abs`` exactly (NaN in x never counts).

    ``all_finite`` says ``x`` has no NaN/Inf (the check for them is skipped).

    A first pass in x's own precision (float32 for float32/float16/bfloat16
    tensors) flags candidates with a small safety margin; only those are
    re-checked in float64, so the common case costs two float32 passes.
    """
    margin = eb_abs * (1.0 - 1e-5)
    if x.dtype != np.float64 and not (_F32_TINY < margin < _F32_HUGE):
        x = x.astype(np.float64)  # the margin would not survive a cast to float32
    ys = y if y.dtype == x.dtype else y.astype(x.dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(ys - x)
        far = ~(diff <= x.dtype.type(margin))
        cand = np.flatnonzero(far if all_finite else far & np.isfinite(x))
    if not cand.size:
        return cand
    x64 = x[cand].astype(np.float64)
    y64 = y[cand].astype(np.float64)
    keep = ~(np.abs(y64 - x64) <= eb_abs)
    return cand[keep]


def _write_patches(w: Writer, flat: np.ndarray, idx: np.ndarray) -> None:
    w.varint(int(idx.size))
    if not idx.size:
        return
    width = 4 if flat.size <= 0xFFFFFFFF else 8
    w.u8(width)
    w.raw(idx.astype("<u4" if width == 4 else "<u8").tobytes())
    w.raw(le_bytes(flat[idx]))


def _lossless_decode(data: memoryview, n: int, dtype: np.dtype, codec_id: str) -> np.ndarray:
    """Kind 3's body (one zstd frame of the raw little-endian values), decompressed
    straight into the output array (no second copy); FormatError on a frame that is
    not exactly the tensor's bytes."""
    out = np.empty(n, dtype=dtype)
    _LOSSLESS.decode_into(data, out, f"{codec_id} payload: lossless body")
    return out


def _read_patches(r: Reader, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The patch indices and values, as read-only views of the payload (checked:
    strictly increasing, below ``n``)."""
    count = r.varint(cap=n, name="patch count")
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype)
    width = r.u8()
    if width not in (4, 8):
        raise FormatError(f"patch index width {width} is not 4 or 8")
    idx = np.frombuffer(r.take(count * width), dtype="<u4" if width == 4 else "<u8")
    vals = np.frombuffer(r.take(count * dtype.itemsize), dtype=dtype.newbyteorder("<"))
    if int(idx[-1]) >= n:
        raise FormatError("patch indices out of range or not increasing")
    for start in range(0, count - 1, CHUNK):  # overlapping blocks: every pair checked
        part = idx[start:start + CHUNK + 1].astype(np.int64)
        if not bool(np.all(np.diff(part) > 0)):
            raise FormatError("patch indices out of range or not increasing")
    return idx, vals


def _apply_patches(out: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> None:
    """``out[idx] = vals``, a block at a time (indices as intp only block by block)."""
    for start in range(0, idx.size, CHUNK):
        part = slice(start, start + CHUNK)
        out[idx[part].astype(np.intp)] = vals[part]
