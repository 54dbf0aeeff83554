"""``gaeb``: gradient-aware error-bounded compression, round after round.

A stream of tensors (gradients, updates or weights, one per round, under one name)
is coded with an error bound, using what encoder and decoder both hold from
earlier rounds: their *decoded* values, kept as mirrored state (``Scope.MIRRORED``,
keyed by tensor name; each frame carries the round and a digest of the state it
was coded against, so a decoder that drifted raises ``StateDesyncError``).

Predictors (option ``predictor``):

``context`` (default)
    The values are quantized as in ``fpz`` and coded by ``fpz``'s engine (version 3,
    ``stages.acm``) with the history as one more context input: each value's
    magnitude context is crossed with the bucket of its predicted magnitude (an
    exponential moving average, weight ``alpha`` on the newest round, of its decoded
    magnitudes, against 1/4, 1 and 4 steps ``2eb`` of this round) and its sign
    context with the sign it had last round. No side information. Tensors of up to
    2**16 values are coded with and without the history and the smaller kept (so
    never larger than ``fpz``); larger ones use the history when a sample of 2**14
    values (whole rows from the middle) saves at least 1% with it, else they are
    coded by ``fpz`` itself.
``paper``
    The predictor of arXiv 2511.05770 as published (EB-FaLCom), for ablation, with
    its encoder/decoder drift fixed: on 4-D tensors from the second round, kernels
    (the last two axes) whose dominant sign covers at least 75% of their values
    are predicted as ``sign * |M * sigma_t + mu_t|``, where ``M`` is the moving
    average (``alpha`` 0.07) of the previous decoded magnitudes normalised by
    their own mean and std (computed on both ends, never sent), ``mu_t`` and
    ``sigma_t`` the current magnitudes' mean and std (sent); the residual is
    quantized within the bound (never clipped) and rANS coded; a kernel bitmap and
    one sign bit per predicted kernel are sent. Other tensors and the first round
    use ``fpz``'s core.
``none``
    ``fpz``'s core every round (the state is still kept, so switching is cheap).

With a ``reference`` (``UpdateEncoder.encode(sd, reference=...)``), the core and the
history see ``x - reference``; the bound is computed from ``x`` and holds on ``x``.

Payload (after the error-bound envelope)::

    u8 version (2; 1 still decodes) | u8 predictor id
    0 spatial:  fpz core payload (any fpz version)
    1 context:  version 1 only: u8 features (bit 0 magnitude, bit 1 sign) | crans stream
    2 paper:    f64 mu_t | f64 sigma_t | blob zstd(kernel bitmap) | blob zstd(kernel signs)
                | rans stream of the quantized residuals
    3 context:  version 2 only: an acm stream (``stages.acm``, predictor none) coded
                with the history (magnitudes and signs selected by ``features``)

The decoded values are ``q * 2eb`` (context) or ``p + q * 2eb`` (paper) in the core's
dtype, both computed the same way on both ends; the state is then advanced from the
envelope's output (patches included), identically on both ends.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import Scope, StatefulCodec, TensorSpec
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..stages import acm
from ..stages.coders import RANS, ContextRansCoder
from ..stages.lossless import ZSTD
from ..stages.quantize import MAX_CODE, usable_step
from ..state import TensorState
from .base import KIND_CORE, ErrorBoundedCodec
from .fpz import FpzCodec

#: the payload version written (2: the adaptive context model with the history as a
#: context); version 1 still decodes
VERSION = 2
P_SPATIAL, P_CONTEXT, P_PAPER, P_ACM = 0, 1, 2, 3
#: tensors of up to _ACM_BOTH values are coded with and without the history and the
#: smaller kept; larger ones by the outcome of a sample of _ACM_SAMPLE values (whole
#: rows from the middle) if the history saves at least _ACM_MIN_SAVING there
_ACM_BOTH, _ACM_SAMPLE = 1 << 16, 1 << 14
_ACM_MIN_SAVING = 0.01
_NO_REFERENCE = np.empty(0, np.float64)
_PREDICTORS = ("context", "paper", "none")
FEATURES = {"magnitude+sign": 3, "magnitude": 1, "sign": 2}
_DEFAULT_ALPHA = {"context": 0.3, "paper": 0.07, "none": 0.3}
#: predicted-magnitude bucket edges, in units of the step 2eb (bucket 0: exactly zero)
MAG_EDGES = np.array([0.125, 0.25, 0.5, 1.0, 1.5, 2.5, 4.0, 6.5, 10.0, 16.0, 26.0, 42.0])
#: the magnitude is scaled to eighths of a step and bucketed through this table
_SUBSTEPS = 8
_MAG_LUT = np.searchsorted(MAG_EDGES * _SUBSTEPS, np.arange(int(MAG_EDGES[-1]) * _SUBSTEPS + 1),
                           side="right").astype(np.uint8)
#: paper mode: least kernel sign consistency ``2 * majority / size - 1`` to predict
CONSISTENCY = 0.5
_STD_GUARD = 1e-8


def _n_ext(features: int) -> int:
    return (MAG_EDGES.size + 2 if features & 1 else 1) * (3 if features & 2 else 1)


@register_codec
class GaebCodec(ErrorBoundedCodec, StatefulCodec):
    """Gradient-aware error-bounded codec with mirrored history (see the module docs).

    Parameters
    ----------
    mode, eb : str, float
        Error bound (see :mod:`fedpress.bounds`), computed from each tensor.
    predictor : {"context", "paper", "none"}
        How the history is used.
    alpha : float, optional
        Weight of the newest round in the moving average of decoded magnitudes
        (default 0.3 for ``context``, the paper's 0.07 for ``paper``).
    features : {"magnitude+sign", "magnitude", "sign"}
        ``context`` only: which predictions make the contexts (for ablations).
    """

    codec_id = "gaeb"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "predictor", "alpha", "features")
    scope = Scope.MIRRORED
    core_float64 = True
    #: the history's arrays are replaced, never written into (no copies of the state)
    replaces_state = True
    #: every core's values are new arrays (acm's, fpz's, the paper predictor's)
    core_recon_owned = True

    def __init__(self, mode: str = "rel", eb: float = 1e-2, predictor: str = "context",
                 alpha: float | None = None, features: str = "magnitude+sign") -> None:
        super().__init__(mode, eb)
        if predictor not in _PREDICTORS:
            raise ConfigError(f"gaeb: predictor must be one of {list(_PREDICTORS)}")
        if features not in FEATURES:
            raise ConfigError(f"gaeb: features must be one of {list(FEATURES)}")
        a = _DEFAULT_ALPHA[predictor] if alpha is None else alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 < float(a) <= 1.0:
            raise ConfigError(f"gaeb: alpha must be a number in (0, 1], got {alpha!r}")
        self.predictor = predictor
        self.alpha = float(a)
        self.features = features
        self._fpz = FpzCodec(mode, eb)

    # -- public ------------------------------------------------------------
    def encode(self, x: np.ndarray, state: Any = None,  # type: ignore[override]
               reference: np.ndarray | None = None) -> bytes:
        return self.encode_with_output(x, state, reference)[0]

    def encode_with_output(self, x: np.ndarray, state: Any = None,  # type: ignore[override]
                           reference: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:
        """The payload and exactly what :meth:`decode` returns (and the history advanced)."""
        st = state if state is not None else TensorState()
        hist = self._history(st, int(np.size(x)))
        pending: dict[str, np.ndarray] = {}

        def core(work: np.ndarray, eb_abs: float, shape: tuple[int, ...]
                 ) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
            return self._core_encode(work, eb_abs, shape, hist, pending)

        payload, out = self._encode_envelope(x, reference, core, want_output=True)
        assert out is not None
        self._advance(st, out, reference, pending if payload[0] == KIND_CORE else {})
        return payload, out.reshape(np.shape(x))

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,  # type: ignore[override]
               state: Any = None, reference: np.ndarray | None = None) -> np.ndarray:
        st = state if state is not None else TensorState()
        hist = self._history(st, spec.size)
        pending: dict[str, np.ndarray] = {}

        def core(data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
            return self._core_decode(data, n, dtype, eb_abs, spec.shape, hist, pending)

        out = self._decode_envelope(payload, spec, reference, core)
        kind = bytes(memoryview(payload)[:1])
        self._advance(st, out.reshape(-1), reference,
                      pending if kind == bytes([KIND_CORE]) else {})
        return out

    # -- state -------------------------------------------------------------
    def min_state_bytes(self, spec: TensorSpec) -> int:
        """Every decode leaves the history: two float32 arrays (paper) or a float32
        magnitude and an int8 sign per value."""
        return spec.size * (8 if self.predictor == "paper" else 5)

    def _history(self, st: TensorState, n: int) -> dict[str, np.ndarray] | None:
        """The state's arrays if they describe a tensor of ``n`` values, else None
        (first round, or another tensor under this name: start again)."""
        keys = ("prev", "M") if self.predictor == "paper" else ("mag", "sign")
        if not all(k in st for k in keys):
            return None
        arrays = {k: np.asarray(st[k]) for k in keys}
        want = {"prev": np.float32, "M": np.float32, "mag": np.float32, "sign": np.int8}
        if any(a.shape != (n,) or a.dtype != want[k] for k, a in arrays.items()):
            return None
        return arrays

    def _advance(self, st: TensorState, out: np.ndarray, reference: np.ndarray | None,
                 pending: dict[str, np.ndarray]) -> None:
        """Advance the history from the decoded tensor ``out`` (flat), on both ends alike."""
        hist = self._history(st, out.size)
        for key in list(st):
            del st[key]
        if self.predictor == "paper":
            d = out.astype(np.float64)
            if reference is not None:
                d -= np.asarray(reference, dtype=np.float64).reshape(-1)
            f32 = float(np.finfo(np.float32).max)
            d32 = np.clip(np.nan_to_num(d, nan=0.0, posinf=0.0, neginf=0.0), -f32, f32
                          ).astype(np.float32)
            st["prev"] = d32
            if "M" in pending:
                st["M"] = pending["M"]
            else:
                st["M"] = hist["M"] if hist is not None else np.zeros(d.size, np.float32)
            return
        from ..stages import _ctxkernels

        flat = out if out.dtype in (np.float32, np.float64) else out.astype(np.float32)
        ref = (_NO_REFERENCE if reference is None
               else np.asarray(reference, dtype=np.float64).reshape(-1))
        mag = np.empty(out.size, np.float32)
        sign = np.empty(out.size, np.int8)
        _ctxkernels.advance_magnitudes(flat, ref, hist["mag"] if hist is not None else mag,
                                       self.alpha, hist is not None, mag, sign)
        st["mag"] = mag
        st["sign"] = sign

    # -- cores ---------------------------------------------------------------
    def _spatial(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...]
                 ) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        body, recon, over = self._fpz._encode_core_recon(x, eb_abs, shape)
        return bytes([VERSION, P_SPATIAL]) + bytes(body), recon, over

    def _acm_history(self, hist: dict[str, np.ndarray]) -> acm.History:
        """The history the context model sees (the ``features`` selected)."""
        feats = FEATURES[self.features]
        mag = hist["mag"] if feats & 1 else np.zeros_like(hist["mag"])
        sign = hist["sign"] if feats & 2 else np.zeros_like(hist["sign"])
        return mag, sign

    def _acm_encode(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...],
                    hist: dict[str, np.ndarray]
                    ) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        """Version 2's context coding: fpz's engine with the history as one more
        context (its magnitude bucket, its last sign), when a sample of whole rows
        says it saves at least ``_ACM_MIN_SAVING`` (small tensors: coded both ways, the
        smaller kept); else fpz's payload. Never larger than fpz but for the sample's
        error."""
        step = 2.0 * eb_abs
        n = x.size
        cols = acm.row_length(n, tuple(shape))
        h = self._acm_history(hist)
        workers = self._fpz._workers
        both = n <= _ACM_BOTH
        if not both:
            rows = max(1, _ACM_SAMPLE // cols)
            width = min(cols, _ACM_SAMPLE)
            start = (n // cols // 2) * cols  # the middle row
            take = slice(start, start + min(rows * cols, n - start, _ACM_SAMPLE))
            m = take.stop - take.start
            part = (h[0][take], h[1][take])
            plain = acm.encode(x[take], width if m % width == 0 else m, step, eb_abs, 0, 1)
            with_h = acm.encode(x[take], width if m % width == 0 else m, step, eb_abs, 0, 1,
                                hist=part)
            if plain is None or with_h is None or \
                    len(with_h[0]) > (1.0 - _ACM_MIN_SAVING) * len(plain[0]):
                return self._spatial(x, eb_abs, shape)
        coded = acm.encode(x, cols, step, eb_abs, 0, workers, hist=h)
        if coded is None:
            return self._spatial(x, eb_abs, shape)
        stream, values, n_over = coded
        result = (bytes([VERSION, P_ACM]) + stream, values,
                  np.zeros(0, np.int64) if n_over == 0 else None)
        if both:  # let the real sizes decide
            spatial = self._spatial(x, eb_abs, shape)
            if len(spatial[0]) <= len(result[0]):
                return spatial
        return result

    def _core_encode(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...],
                     hist: dict[str, np.ndarray] | None, pending: dict[str, np.ndarray]
                     ) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        if hist is None or self.predictor == "none" or not usable_step(2.0 * eb_abs):
            return self._spatial(x, eb_abs, shape)
        if self.predictor == "paper":
            return self._paper_encode(x, eb_abs, shape, hist, pending)
        return self._acm_encode(x, eb_abs, shape, hist)

    def _core_decode(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float,
                     shape: tuple[int, ...], hist: dict[str, np.ndarray] | None,
                     pending: dict[str, np.ndarray]) -> np.ndarray:
        rd = Reader(data, "gaeb payload")
        version = rd.u8()
        if version not in (1, VERSION):
            raise FormatError(f"gaeb payload: unknown version {version}")
        pid = rd.u8()
        if pid == P_SPATIAL:
            return self._fpz._decode_core(rd.rest(), n, dtype, eb_abs)
        if hist is None:
            raise FormatError("gaeb payload: predicted from a history this decoder does not "
                              "hold (first round or another tensor)")
        own = {"paper": (P_PAPER,), "context": (P_CONTEXT, P_ACM)}.get(self.predictor, ())
        if pid not in own or (pid == P_ACM and version < 2) or (pid == P_CONTEXT and version > 1):
            raise FormatError(f"gaeb payload: predictor {pid} is not this codec's")
        if not usable_step(2.0 * eb_abs):
            raise FormatError(f"gaeb payload: quantized values with bound {eb_abs}")
        if pid == P_ACM:
            return acm.decode(rd, n, 2.0 * eb_abs, dtype, 0, self._fpz._workers,
                              hist=self._acm_history(hist))
        if pid == P_PAPER:
            return self._paper_decode(rd, n, dtype, eb_abs, shape, hist, pending)
        feats = rd.u8()
        if feats != FEATURES[self.features]:
            raise FormatError(f"gaeb payload: features {feats} are not this codec's")
        ext = self._contexts(hist, 2.0 * eb_abs, feats)
        return ContextRansCoder(ext, _n_ext(feats)).decode(rd, n, step=2.0 * eb_abs, dtype=dtype)

    @staticmethod
    def _contexts(hist: dict[str, np.ndarray], step: float, feats: int) -> np.ndarray:
        """Per value: predicted-magnitude bucket x last sign (as ``feats`` selects)."""
        from ..stages import _ctxkernels

        lut = _MAG_LUT if feats & 1 else _MAG_LUT[:0]
        return _ctxkernels.magnitude_sign_contexts(hist["mag"], _SUBSTEPS / step, lut,
                                                   hist["sign"], 3 if feats & 2 else 1)

    # -- paper mode ------------------------------------------------------------
    def _paper_prediction(self, shape: tuple[int, ...], hist: dict[str, np.ndarray],
                          mu_t: float, sigma_t: float, predicted: np.ndarray,
                          signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p, M')``: the prediction (float64, flat) and the new moving average."""
        kernel = shape[2] * shape[3]
        prev_mag = np.abs(hist["prev"].astype(np.float64))
        mu_p, sd_p = float(prev_mag.mean()), float(prev_mag.std())
        pn = (prev_mag - mu_p) / sd_p if sd_p > _STD_GUARD else prev_mag - mu_p
        m_new = hist["M"].copy().reshape(-1, kernel)
        a = np.float32(self.alpha)
        upd = (np.float32(1.0) - a) * m_new + a * pn.astype(np.float32).reshape(-1, kernel)
        m_new[predicted] = upd[predicted]
        m64 = m_new.astype(np.float64)
        amp = np.abs(m64 * sigma_t + mu_t) if sigma_t > _STD_GUARD else np.abs(m64 + mu_t)
        sgn = np.where(signs, 1.0, -1.0)
        p = np.zeros_like(amp)
        p[predicted] = amp[predicted] * sgn[:, None]
        return p.reshape(-1), m_new.reshape(-1)

    def _paper_encode(self, x: np.ndarray, eb_abs: float, shape: tuple[int, ...],
                      hist: dict[str, np.ndarray], pending: dict[str, np.ndarray]
                      ) -> tuple[bytes, np.ndarray | None, np.ndarray | None]:
        if len(shape) != 4 or shape[2] * shape[3] == 0:
            return self._spatial(x, eb_abs, shape)
        kernel = shape[2] * shape[3]
        k = x.reshape(-1, kernel)
        pos = np.count_nonzero(k > 0, axis=1)
        neg = np.count_nonzero(k < 0, axis=1)
        zero = kernel - pos - neg
        signs = pos >= neg
        major = np.where(signs, pos, neg) + zero
        predicted = 2.0 * major / kernel - 1.0 >= CONSISTENCY
        mags = np.abs(x.astype(np.float64))
        with np.errstate(over="ignore", invalid="ignore"):
            mu_t, sigma_t = float(mags.mean()), float(mags.std())
        if not (np.isfinite(mu_t) and np.isfinite(sigma_t)):
            return self._spatial(x, eb_abs, shape)  # statistics out of range: no prediction
        p, m_new = self._paper_prediction(shape, hist, mu_t, sigma_t, predicted,
                                          signs[predicted])
        step = 2.0 * eb_abs
        q = np.rint((x.astype(np.float64) - p) / step)
        if not np.all(np.abs(q) < MAX_CODE):
            return self._spatial(x, eb_abs, shape)
        q = q.astype(np.int64)
        values = (p + q.astype(np.float64) * step).astype(x.dtype)
        w = Writer()
        w.u8(VERSION)
        w.u8(P_PAPER)
        w.f64(mu_t)
        w.f64(sigma_t)
        w.blob(ZSTD.encode_array(np.packbits(predicted)))
        w.blob(ZSTD.encode_array(np.packbits(signs[predicted])))
        RANS.encode(q, w)
        pending["M"] = m_new
        return w.getvalue(), values, None

    def _paper_decode(self, rd: Reader, n: int, dtype: np.dtype, eb_abs: float,
                      shape: tuple[int, ...], hist: dict[str, np.ndarray],
                      pending: dict[str, np.ndarray]) -> np.ndarray:
        if len(shape) != 4 or shape[2] * shape[3] == 0:
            raise FormatError(f"gaeb payload: paper prediction for a tensor of shape {shape}")
        mu_t, sigma_t = rd.f64(), rd.f64()
        if not (np.isfinite(mu_t) and np.isfinite(sigma_t) and mu_t >= 0 and sigma_t >= 0):
            raise FormatError("gaeb payload: bad magnitude statistics")
        kernels_n = n // (shape[2] * shape[3])
        predicted = self._bits(rd, kernels_n, "kernel bitmap")
        signs = self._bits(rd, int(predicted.sum()), "kernel signs")
        q = RANS.decode(rd, n)
        if q.size and int(np.abs(q).max()) >= MAX_CODE:
            raise FormatError("gaeb payload: residual code out of range")
        p, m_new = self._paper_prediction(shape, hist, mu_t, sigma_t, predicted, signs)
        pending["M"] = m_new
        return (p + q.astype(np.float64) * (2.0 * eb_abs)).astype(dtype)

    @staticmethod
    def _bits(rd: Reader, count: int, what: str) -> np.ndarray:
        raw = ZSTD.decode_array(rd.blob(cap=rd.remaining, name=f"gaeb {what}"), -(-count // 8),
                                np.uint8)
        bits = np.unpackbits(raw, count=count).astype(bool)
        if np.unpackbits(raw)[count:].any():
            raise FormatError(f"gaeb payload: padding bits set in the {what}")
        return bits

    # the envelope's abstract core: the first round's (no history) coding
    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        return self._spatial(x, eb_abs, x.shape)[0]

    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float
                     ) -> np.ndarray:
        return self._core_decode(data, n, dtype, eb_abs, (n,), None, {})
