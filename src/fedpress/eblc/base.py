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
  envelope this pass (see ``_encode_core_recon``).

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
from ..backends.lossless import ZstdCodec
from ..bounds import ErrorBound, check_bound
from ..dtypes import is_float, le_bytes
from ..errors import ConfigError, FormatError

KIND_EMPTY, KIND_CONSTANT, KIND_CORE, KIND_LOSSLESS = 0, 1, 2, 3
_LOSSLESS = ZstdCodec(level=3)  # kind 3's coder
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
        y: np.ndarray | None = None  # the core's output, in x's dtype

        if lo == hi:
            kind, body = KIND_CONSTANT, None
        elif eb_abs == 0.0:
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
            body_, recon, over = core(work, eb_abs, np.shape(x))
            body = bytes(body_)
            # the core's own count of offenders holds only for x itself, as the core saw it
            check = over is None or not all_finite or work.dtype != flat.dtype or ref is not None
            if check or want_output:
                yc = recon if recon is not None else self._decode_core(
                    memoryview(body), n, work.dtype, eb_abs)
                y = _add_reference(np.asarray(yc).reshape(-1), ref, flat.dtype)
                if check:
                    over = _over_bound(xs, y, eb_abs, all_finite)
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
            w.raw(_LOSSLESS.encode(flat))
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
            if np.shares_memory(y, flat) or (recon is not None and np.shares_memory(y, recon)) \
                    or not y.flags.writeable:
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
            out = np.full(n, dtype.type(value), dtype=dtype)
        elif kind == KIND_LOSSLESS:
            out = _LOSSLESS.decode(r.rest(), TensorSpec((n,), dtype))
        elif kind == KIND_CORE:
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
            out = _add_reference(y.reshape(-1), _flat_reference(reference, spec), dtype)
            if not out.flags.writeable:
                out = out.copy()
        else:
            raise FormatError(f"{self.codec_id} payload: unknown kind {kind}")
        if idx.size:
            out[idx] = vals
        return out.reshape(spec.shape)

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


def _read_patches(r: Reader, n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    count = r.varint(cap=n, name="patch count")
    if count == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=dtype)
    width = r.u8()
    if width not in (4, 8):
        raise FormatError(f"patch index width {width} is not 4 or 8")
    idx = r.array("u4" if width == 4 else "u8", count).astype(np.int64)
    if idx[-1] >= n or idx[0] < 0 or (count > 1 and not bool(np.all(np.diff(idx) > 0))):
        raise FormatError("patch indices out of range or not increasing")
    vals = r.array(dtype, count).astype(dtype)
    return idx, vals
