"""``hgc``: HGC's coding of one tensor stream, for ``UpdateEncoder``/``UpdateDecoder``.

HGC (Hu, Jiang & He, IJCAI-24) shares one top-k mask between all clients of a round;
that needs the simulator's exchange (``aggregate="hgc"``,
:mod:`fedpress.exchange.hgc`). This codec is the same coding for a single
sender: its own top-k mask (positions coded with the cheapest of bitmap / Rice /
Elias gamma / rANS), the equal-count quantizer, and the codes XOR the codes of an
Adam-like prediction made from the values decoded in earlier rounds. The predictor's
moving averages are mirrored state (both ends advance them from the decoded tensor;
frames carry the state tag). Error feedback is the encoder's:
``UpdateEncoder(plan="hgc", residual_feedback=True)`` keeps what the mask and the
quantizer dropped and adds it to the next round's tensor, as HGC does.

Payload::

    u8 version (2) | varint k | indices (grad.indices) | values (hgc_values.write_values)

``k`` is at most ``ceil(density n)`` (the encoder sends exactly that many).

Version 1 always XOR-ed the codes with the prediction and always rANS-coded them.

Memory: the decoder writes the kept values straight into the output (no float32 copy
of the tensor) and advances the moving averages in place, a chunk at a time; what it
allocates beyond the output grows with ``k`` (:meth:`HGCCodec.decode_peak_bytes`), and
the two float32 averages are the state (:meth:`HGCCodec.min_state_bytes`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..abc import Scope, StatefulCodec, TensorSpec
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from ..state import TensorState
from . import equalcount as ec
from .base import check_ratio, keep_count, require_finite
from .hgc_values import read_values, write_values
from .indices import read_indices, write_indices

VERSION = 2
#: bytes the decoder allocates per kept value beyond the output (indices, codes, the
#: prediction and its quantization, the values): up to 30 measured at density 1
K_BYTES = 40


@register_codec
class HGCCodec(StatefulCodec):
    """Top-k, equal-count quantizer and predictive XOR coding (see the module docs).

    Parameters
    ----------
    density : float
        Share of the values kept (top-k by magnitude, ``k = ceil(density * n)``).
    levels : int
        Equal-count quantizer levels (odd, 3..255; 3: ternary with a mean per sign).
    predict : bool
        Let the codes go XOR the prediction's codes when that codes smaller (needs
        ``quantize``; a flag in the payload says which).
    quantize : bool
        Quantize the kept values (else they travel as float32).
    """

    codec_id = "hgc"
    config_keys: ClassVar[tuple[str, ...]] = ("density", "levels", "predict", "quantize")
    lossy = True
    scope = Scope.MIRRORED

    def __init__(self, density: float = 1e-3, levels: int = 3, predict: bool = True,
                 quantize: bool = True) -> None:
        self.density = check_ratio("hgc", density)
        self.levels = ec.check_levels(levels)
        for name, v in (("predict", predict), ("quantize", quantize)):
            if not isinstance(v, bool):
                raise ConfigError(f"hgc: {name} must be true or false, got {v!r}")
        if predict and not quantize:
            raise ConfigError("hgc: predict=True needs quantize=True (it XORs the codes)")
        self.predict, self.quantize = predict, quantize

    def _averages(self, state: Any, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The state's moving averages if they fit a tensor of ``n`` values (writable
        copies if the state's arrays are read-only), else None (they start at zero)."""
        st = state if state is not None else TensorState()
        u, v = st.get("u"), st.get("v")
        if u is None or v is None or u.shape != (n,) or v.shape != (n,) \
                or u.dtype != np.float32 or v.dtype != np.float32:
            return None
        return (u if u.flags.writeable else u.copy()), (v if v.flags.writeable else v.copy())

    def _predicted(self, averages: tuple[np.ndarray, np.ndarray] | None,
                   idx: np.ndarray) -> list[np.ndarray] | None:
        if not self.predict:
            return None
        if averages is None:
            u_k = v_k = np.zeros(idx.size, np.float32)
        else:
            u_k, v_k = averages[0][idx], averages[1][idx]
        return [ec.quantize(ec.predict(u_k, v_k), self.levels)[0]]

    @staticmethod
    def _advance(state: Any, averages: tuple[np.ndarray, np.ndarray] | None, n: int,
                 idx: np.ndarray, vals: np.ndarray) -> None:
        """Advance the averages (in place) by the decoded tensor: ``vals`` at ``idx``."""
        if state is None:
            return
        u, v = averages if averages is not None else (np.zeros(n, np.float32),
                                                      np.zeros(n, np.float32))
        ec.advance_sparse(u, v, idx, vals)
        state["u"], state["v"] = u, v

    def encode(self, x: np.ndarray, state: Any = None) -> bytes:  # type: ignore[override]
        return self.encode_with_output(x, state)[0]

    def encode_with_output(self, x: np.ndarray, state: Any = None) -> tuple[bytes, np.ndarray]:
        """The payload and what the decoder returns (the predictor state advanced)."""
        self.check_input(x)
        require_finite(self.codec_id, x)
        flat = np.asarray(x, dtype=np.float32).reshape(-1)
        n = flat.size
        k = keep_count(n, self.density)
        idx = np.sort(np.argpartition(np.abs(flat), n - k)[n - k:]) if 0 < k < n \
            else np.arange(k, dtype=np.int64)
        idx = idx.astype(np.int64)
        averages = self._averages(state, n)
        w = Writer()
        w.u8(VERSION)
        w.varint(k)
        write_indices(w, idx, n)
        sent = write_values(w, [flat[idx]], self.levels, self.quantize,
                            self._predicted(averages, idx))[0]
        y = np.zeros(n, np.float32)
        y[idx] = sent
        self._advance(state, averages, n, idx, sent)
        return w.getvalue(), y.astype(x.dtype).reshape(np.shape(x))

    def decode(self, payload: bytes | memoryview, spec: TensorSpec,  # type: ignore[override]
               state: Any = None) -> np.ndarray:
        rd = Reader(payload, "hgc payload")
        version = rd.u8()
        if version != VERSION:
            raise FormatError(f"hgc payload: unknown version {version}")
        n = spec.size
        k = rd.varint(cap=keep_count(n, self.density), name="hgc k")  # what the peak counts
        idx = read_indices(rd, k, n)
        averages = self._averages(state, n)
        vals = read_values(rd, [k], self.levels, self.quantize,
                           self._predicted(averages, idx))[0]
        rd.expect_end()
        cast = vals.astype(spec.dtype)
        if not np.isfinite(cast).all():
            raise FormatError("hgc payload: values overflow the tensor's dtype")
        out = np.zeros(n, dtype=spec.dtype)
        out[idx] = cast
        self._advance(state, averages, n, idx, vals)
        return out.reshape(spec.shape)

    def decode_peak_bytes(self, spec: TensorSpec) -> int:
        """The output, plus what grows with the ``k`` kept values (indices, codes,
        prediction, values: at most ``K_BYTES`` each) and the averages' chunk. The
        averages themselves are state, counted by :meth:`min_state_bytes` against
        ``Limits.max_state_bytes`` (a first round allocates them: 8 bytes a value)."""
        k = keep_count(spec.size, self.density)
        return spec.nbytes + K_BYTES * k + 16 * min(spec.size, ec.CHUNK)

    def min_state_bytes(self, spec: TensorSpec) -> int:
        """Every decode with state leaves the two float32 moving averages."""
        return spec.size * 8
