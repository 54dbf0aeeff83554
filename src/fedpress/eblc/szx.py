"""SZx: an ultra-fast error-bounded lossy compressor, in vectorised NumPy.

This is an implementation of the SZx algorithm of X. Yu, S. Di, K. Zhao,
J. Tian, D. Tao, X. Liang and F. Cappello, "SZx: an Ultra-fast
Error-bounded Lossy Compressor for Scientific Datasets", *Proc. HPDC'22*
(ACM), doi:10.1145/3502181.3531473, written from the paper's description.
SZx uses no prediction and no entropy coding, only cheap bit operations on
fixed-size blocks:

1. The flattened array is cut into blocks of ``block_size`` values (the last
   one may be shorter).
2. Each block gets ``mid = (min + max) / 2`` (float32). If every value lies
   within ``eb_abs`` of ``mid`` the block is *constant* and only ``mid`` is
   stored.
3. Otherwise the block stores ``v = x - mid`` (float32) with only the top
   ``reqBits = 9 + m`` bits of each IEEE-754 word (sign, exponent and ``m``
   mantissa bits), ``m = expo(radius) - floor(log2(eb_abs))``, where
   ``radius = max|v|`` over the block; truncating the other mantissa bits
   changes each value by less than ``2**floor(log2(eb_abs)) <= eb_abs``.
4. The ``reqBits // 8`` full bytes of each truncated word are XORed with the
   previous word of the block; the number of identical leading bytes
   (0..3, at most the number of full bytes) is a 2-bit code and only the
   bytes after them are stored. The ``reqBits % 8`` residual bits are
   bit-packed separately.

Safeguard (not in the paper): after choosing ``reqBits`` the encoder
reconstructs each block exactly as the decoder will (in float32) and checks
``|x - x'| <= eb_abs`` in float64. A block that fails because of float32
rounding of ``x - mid`` or ``v' + mid`` gets one more mantissa bit (at most
three times); if it still fails, or ``reqBits`` would exceed 32, it is stored
losslessly (``mid = 0``, ``reqBits = 32``). The core therefore honours the
bound on its own and the envelope's exact patches stay for casts to narrower
dtypes. (With the paper's bit count the check has not been seen to fail on
ordinary data: the truncated bits leave at least one unit in the last place
of ``v`` as slack for the rounding; the lossless case is what it catches,
when ``eb_abs`` is below the float32 spacing of the data.)

Core stream layout (little-endian; ``nb = ceil(n / block_size)``, ``n`` and
the bound come from the envelope)::

    u8      version             1
    varint  block_size          8..65536
    u8[nb]  block codes         0 = constant block, 9..32 = reqBits
    f32[nb] mids                every block's mid (0.0 for lossless blocks)
    lead codes                  2 bits per value of the non-constant blocks,
                                in index order, 4 per byte, first value in the
                                low bits; 0 at each block start
    byte column 0..3            for k = 0..3, byte k (k = 0 is the most
                                significant) of every value with
                                reqBits // 8 > k and lead <= k, in index order
    residual groups s = 1..7    for each s, the low s kept bits (the bits just
                                after the full bytes) of every value in a block
                                with reqBits % 8 == s, packed MSB first,
                                ceil(count * s / 8) bytes

All section lengths follow from ``n``, the block codes and the lead codes;
the decoder checks each one against the bytes present before allocating and
rejects anything malformed with :class:`fedpress.FormatError`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .._bytes import Reader, Writer
from ..errors import ConfigError, FormatError
from ..registry import register_codec
from .base import ErrorBoundedCodec

FORMAT_VERSION = 1
MIN_BLOCK, MAX_BLOCK = 8, 65536
_EXTRA_BITS = 3  # verification retries before a block falls back to lossless
_MANTISSA_SLACK = 0  # added to the paper's mantissa bit count (tests lower it)
_U32_ONES = np.uint32(0xFFFFFFFF)


def _floor_log2(value: np.ndarray | float) -> np.ndarray:
    """``floor(log2(value))`` for positive finite float64 values (exact, via frexp)."""
    return np.frexp(np.asarray(value, dtype=np.float64))[1].astype(np.int64) - 1


def _keep_mask(req_bits: np.ndarray) -> np.ndarray:
    """uint32 masks keeping the top ``req_bits`` (9..32) bits of a word."""
    shift = (32 - req_bits.astype(np.int64)).astype(np.uint32)
    return np.left_shift(_U32_ONES, shift).astype(np.uint32)


def _pack_small(values: np.ndarray, bits: int) -> bytes:
    """Bit-pack uint8 values of ``bits`` (1..7) bits each, MSB first.

    Every eight values make ``bits`` bytes; they are merged pairwise (16, 32,
    then 64-bit lanes) into one big-endian word whose low ``8 * bits`` bits
    are written. The result equals ``np.packbits`` of the concatenated bits.
    """
    count = values.size
    groups = -(-count // 8)
    a = np.zeros(groups * 8, dtype=np.uint16)
    a[:count] = values
    p = (a[0::2] << bits) | a[1::2]
    q = (p[0::2].astype(np.uint32) << (2 * bits)) | p[1::2]
    r = (q[0::2].astype(np.uint64) << (4 * bits)) | q[1::2]
    raw = r.astype(">u8").view(np.uint8).reshape(groups, 8)[:, 8 - bits:]
    return raw.tobytes()[: -(-count * bits // 8)]


def _unpack_small(data: memoryview, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_small`: ``count`` uint8 values of ``bits`` bits."""
    groups = -(-count // 8)
    body = np.zeros(groups * bits, dtype=np.uint8)
    body[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    raw = np.zeros((groups, 8), dtype=np.uint8)
    raw[:, 8 - bits:] = body.reshape(groups, bits)
    r = raw.view(">u8").reshape(groups).astype(np.uint64)
    q = np.empty(groups * 2, dtype=np.uint32)
    q[0::2] = r >> (4 * bits)
    q[1::2] = r & ((1 << (4 * bits)) - 1)
    p = np.empty(groups * 4, dtype=np.uint16)
    p[0::2] = q >> (2 * bits)
    p[1::2] = q & ((1 << (2 * bits)) - 1)
    a = np.empty(groups * 8, dtype=np.uint8)
    a[0::2] = p >> bits
    a[1::2] = p & ((1 << bits) - 1)
    return a[:count]


@register_codec
class SZxCodec(ErrorBoundedCodec):
    """SZx (Yu et al., HPDC'22): block-wise mid-value + bit truncation, float32 core.

    Parameters
    ----------
    mode : {"rel", "abs"}
        Error-bound mode.
    eb : float
        The error bound (relative to the value range, or absolute).
    block_size : int
        Values per block, 8..65536 (SZx's default is 128).
    """

    codec_id = "szx"
    config_keys: ClassVar[tuple[str, ...]] = ("mode", "eb", "block_size")

    def __init__(self, mode: str = "rel", eb: float = 1e-2, block_size: int = 128) -> None:
        if (isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer))
                or not MIN_BLOCK <= int(block_size) <= MAX_BLOCK):
            raise ConfigError(
                f"szx: block_size must be an int in [{MIN_BLOCK}, {MAX_BLOCK}], not {block_size!r}"
            )
        self.block_size = int(block_size)
        super().__init__(mode, eb)

    # -- encoder ----------------------------------------------------------

    def _core_decode_extra_bytes(self, n: int, dtype: np.dtype) -> int:
        """The decoder's per-value temporaries (block ids, leading bytes, bit planes):
        about 18 bytes a float32 value, measured."""
        return 18 * n
    def _encode_core(self, x: np.ndarray, eb_abs: float) -> bytes:
        """Compress finite float32 ``x`` (1-D) into the core stream (module docstring)."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        n = x.size
        bs = self.block_size
        nb = -(-n // bs)
        pad = nb * bs - n
        if pad:  # the last block is padded with copies of its last value
            xs = np.concatenate([x, np.full(pad, x[-1], dtype=np.float32)]).reshape(nb, bs)
        else:
            xs = x.reshape(nb, bs)

        lo = xs.min(axis=1).astype(np.float64)
        hi = xs.max(axis=1).astype(np.float64)
        with np.errstate(invalid="ignore"):  # only float64 input cast to float32 reaches inf
            mid = ((lo + hi) * 0.5).astype(np.float32)
            mid64 = mid.astype(np.float64)
            radius = np.maximum(hi - mid64, mid64 - lo)  # max |x - mid|, as the envelope checks
        nonconst = ~(radius <= eb_abs)
        codes = np.zeros(nb, dtype=np.uint8)

        w = Writer()
        w.u8(FORMAT_VERSION)
        w.varint(bs)
        rows = np.flatnonzero(nonconst)
        if rows.size == 0:
            w.raw(codes.tobytes())
            w.raw(mid.astype("<f4").tobytes())
            return w.getvalue()

        nr = rows.size
        xb = xs if nr == nb else xs[rows]
        words, req_bits, mid_b = _truncate_blocks(xb, mid[rows], float(eb_abs))
        mid[rows] = mid_b
        codes[rows] = req_bits
        w.raw(codes.tobytes())
        w.raw(mid.astype("<f4").tobytes())

        # padding values of the last block are never stored
        n_vals = nr * bs - (pad if bool(nonconst[-1]) else 0)
        full = req_bits >> 3
        min_full, max_full = int(full.min()), int(full.max())

        # lead codes: identical leading bytes with the previous word of the block
        lead = np.zeros((nr, bs), dtype=np.uint8)
        xor = words[:, 1:] ^ words[:, :-1]
        after = lead[:, 1:]
        np.less(xor, 1 << 24, out=after.view(np.bool_))
        after += (xor < (1 << 16)).view(np.uint8)
        after += (xor < (1 << 8)).view(np.uint8)
        if min_full < 3:
            np.minimum(lead, full[:, None], out=lead)
        lead_flat = lead.reshape(-1)[:n_vals]
        padded = np.zeros(-(-n_vals // 4) * 4, dtype=np.uint8)
        padded[:n_vals] = lead_flat
        quads = padded.reshape(-1, 4)
        w.raw((quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6))
              .tobytes())

        # byte columns, most significant first: stored where lead <= k < full
        le_bytes = words.astype("<u4", copy=False).view(np.uint8).reshape(-1, 4)
        for k in range(max_full):
            store = lead <= k
            if k >= min_full:
                store &= (full > k)[:, None]
            column = np.ascontiguousarray(le_bytes[:n_vals, 3 - k])
            w.raw(np.compress(store.reshape(-1)[:n_vals], column).tobytes())

        # residual bits, grouped by their count
        resid = req_bits & 7
        if int(req_bits.min()) == int(req_bits.max()):
            s = int(resid[0])
            if s:
                vals = words.reshape(-1)[:n_vals] >> np.uint32(32 - int(req_bits[0]))
                w.raw(_pack_small((vals & np.uint32((1 << s) - 1)).astype(np.uint8), s))
            return w.getvalue()
        shift = (32 - req_bits.astype(np.int64)).astype(np.uint32)
        mask = ((1 << resid.astype(np.uint32)) - 1).astype(np.uint32)
        res = ((words >> shift[:, None]) & mask[:, None]).astype(np.uint8)
        for s in range(1, 8):
            sel = resid == s
            if not sel.any():
                continue
            vals = res[sel].reshape(-1)
            if sel[-1] and nonconst[-1] and pad:
                vals = vals[: vals.size - pad]
            w.raw(_pack_small(vals, s))
        return w.getvalue()

    # -- decoder ----------------------------------------------------------
    def _decode_core(self, data: memoryview, n: int, dtype: np.dtype, eb_abs: float) -> np.ndarray:
        """Decode ``n`` float32 values; FormatError on any malformed stream."""
        r = Reader(data, "szx core")
        if n <= 0:
            raise FormatError(f"szx core: invalid value count {n}")
        version = r.u8()
        if version != FORMAT_VERSION:
            raise FormatError(f"szx core: unknown format version {version}")
        bs = r.varint(cap=MAX_BLOCK, name="block size")
        if bs < MIN_BLOCK:
            raise FormatError(f"szx core: block size {bs} below {MIN_BLOCK}")
        nb = -(-n // bs)
        pad = nb * bs - n
        codes = r.array(np.uint8, nb)
        if bool(np.any((codes != 0) & ((codes < 9) | (codes > 32)))):
            raise FormatError("szx core: invalid block code")
        mids = r.array(np.float32, nb).astype(np.float32)
        if not bool(np.isfinite(mids).all()):
            raise FormatError("szx core: non-finite block value")
        nonconst = codes != 0
        rows = np.flatnonzero(nonconst)
        nr = rows.size
        if nr == 0:
            r.expect_end()
            return np.repeat(mids, bs)[:n]

        tail = pad if bool(nonconst[-1]) else 0
        n_vals = nr * bs - tail
        packed = np.frombuffer(r.take(-(-n_vals // 4)), dtype=np.uint8)
        quads = np.empty((packed.size, 4), dtype=np.uint8)
        for j in range(4):
            np.bitwise_and(packed >> (2 * j), 3, out=quads[:, j])
        lead = np.zeros(nr * bs, dtype=np.uint8)
        lead[:n_vals] = quads.reshape(-1)[:n_vals]
        lead2 = lead.reshape(nr, bs)

        req_bits = codes[rows]
        full = req_bits >> 3
        min_full, max_full = int(full.min()), int(full.max())
        if bool(lead2[:, 0].any()):
            raise FormatError("szx core: block starts with a lead code")
        if min_full < 3 and bool((lead2 > full[:, None]).any()):
            raise FormatError("szx core: lead code exceeds the stored bytes")

        idx_type = np.int32 if nr * bs < 2**31 - 1 else np.int64
        words = np.zeros(nr * bs, dtype=np.uint32)
        for k in range(max_full):
            store = lead <= k
            need = full > k
            if k >= min_full:
                store.reshape(nr, bs)[~need] = False
            if tail:
                store[n_vals:] = False
            # each value's byte is its own if stored, else the previous
            # stored one's (an identical leading byte)
            pos = np.cumsum(store, dtype=idx_type)
            count = int(pos[-1])
            column = np.zeros(count + 1, dtype=np.uint8)
            column[1:] = np.frombuffer(r.take(count), dtype=np.uint8)
            byte = column[pos]
            if k >= min_full:
                byte.reshape(nr, bs)[~need] = 0
            words |= byte.astype(np.uint32) << np.uint32(24 - 8 * k)

        words2 = words.reshape(nr, bs)
        resid = req_bits & 7
        if int(req_bits.min()) == int(req_bits.max()):
            s = int(resid[0])
            if s:
                vals = _unpack_small(r.take(-(-n_vals * s // 8)), n_vals, s)
                words[:n_vals] |= vals.astype(np.uint32) << np.uint32(32 - int(req_bits[0]))
        else:
            res = np.zeros((nr, bs), dtype=np.uint8)
            for s in range(1, 8):
                sel = resid == s
                if not sel.any():
                    continue
                m = int(np.count_nonzero(sel))
                count = m * bs - (tail if sel[-1] else 0)
                vals = _unpack_small(r.take(-(-count * s // 8)), count, s)
                if count < m * bs:
                    vals = np.concatenate([vals, np.zeros(m * bs - count, dtype=np.uint8)])
                res[sel] = vals.reshape(m, bs)
            shift = (32 - req_bits.astype(np.int64)).astype(np.uint32)
            words2 |= res.astype(np.uint32) << shift[:, None]
        r.expect_end()

        values = words2.view(np.float32)
        with np.errstate(all="ignore"):
            values += mids[rows][:, None]
        if nr == nb:
            return values.reshape(-1)[:n]
        out = np.empty((nb, bs), dtype=np.float32)
        out[rows] = values
        const = ~nonconst
        out[const] = mids[const][:, None]
        return out.reshape(-1)[:n]


def _truncate_blocks(
    xb: np.ndarray, mid: np.ndarray, eb_abs: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Choose reqBits per non-constant block and truncate its words.

    Parameters
    ----------
    xb : ndarray, shape (blocks, block_size), float32
        The values of the non-constant blocks (last block padded with copies).
    mid : ndarray, shape (blocks,), float32
        Their mid values.
    eb_abs : float
        Absolute error bound (> 0).

    Returns
    -------
    words : ndarray, uint32, shape of ``xb``
        Truncated IEEE-754 words of ``x - mid``.
    req_bits : ndarray, uint8
        Bits kept per block (9..32).
    mid : ndarray, float32
        Mid values actually used (0.0 for blocks stored losslessly).
    """
    mid = mid.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        v = xb - mid[:, None]
        vmax = np.abs(v).max(axis=1).astype(np.float64)
    usable = np.isfinite(vmax) & (vmax > 0)
    # exponent of the block radius; float32 subnormals behave like exponent -126
    e_rad = np.maximum(_floor_log2(np.where(usable, vmax, 1.0)), -126)
    e_eb = int(_floor_log2(eb_abs)) if math.isfinite(eb_abs) else 1 << 20
    req = 9 + np.clip(e_rad - e_eb + _MANTISSA_SLACK, 0, 24)
    req[~usable] = 33
    req_bits = req.astype(np.uint8)  # 33 = lossless

    # float32 pre-check: fl(|y - x|) <= eb32 implies |y - x| <= eb_abs exactly
    eb32 = np.float32(min(eb_abs * (1.0 - 2.0**-20), 3e38))
    if float(eb32) > eb_abs * (1.0 - 2.0**-20):
        eb32 = np.nextafter(eb32, np.float32(0))

    words = v.view(np.uint32)
    todo = np.flatnonzero(req_bits <= 32)
    for attempt in range(_EXTRA_BITS + 1):
        if todo.size == 0:
            break
        every = todo.size == req_bits.size
        if every:
            wt = v.view(np.uint32) & _keep_mask(req_bits)[:, None]
            xt, mt = xb, mid[:, None]
        else:
            wt = v[todo].view(np.uint32) & _keep_mask(req_bits[todo])[:, None]
            xt, mt = xb[todo], mid[todo, None]
        with np.errstate(over="ignore", invalid="ignore"):
            err32 = wt.view(np.float32) + mt
            err32 -= xt
            np.abs(err32, out=err32)
            ok = (err32 <= eb32).all(axis=1)
            unsure = np.flatnonzero(~ok)
            if unsure.size:  # exact float64 check of the doubtful blocks
                y64 = (wt[unsure].view(np.float32) + mt[unsure]).astype(np.float64)
                err = np.abs(y64 - xt[unsure].astype(np.float64))
                ok[unsure] = (err <= eb_abs).all(axis=1)
        if every and bool(ok.all()):
            return wt, req_bits, mid
        words[todo[ok]] = wt[ok]
        todo = todo[~ok]
        if attempt < _EXTRA_BITS:
            req_bits[todo] += 1
            todo = todo[req_bits[todo] <= 32]
    # lossless fallback: mid 0 and all 32 bits of x itself
    lossless = req_bits > 32
    lossless[todo] = True
    if lossless.any():
        mid[lossless] = 0.0
        req_bits[lossless] = 32
        words[lossless] = xb[lossless].view(np.uint32)
    return words, req_bits, mid
