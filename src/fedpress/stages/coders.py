"""One interface over fedpress's entropy coders, and the one coder-id table.

Every coder of ``stages/`` (rANS, context rANS, canonical Huffman, range-ANS,
zstd over narrow integers, Rice, Elias gamma, radix packing) is reached here as an
:class:`EntropyCoder`, in the spirit of SZ3's ``EncoderInterface``: build the table
for some symbols (:meth:`~EntropyCoder.fit`), save it (:meth:`~EntropyCoder.save`),
code the symbols with it (:meth:`~EntropyCoder.encode_with`); on the other end load
the table (:meth:`~EntropyCoder.load`) and decode the symbols with it
(:meth:`~EntropyCoder.decode_with`). :meth:`~EntropyCoder.encode` and
:meth:`~EntropyCoder.decode` do both steps. The classes here are thin adapters:
each coder's module (``rans``, ``crans``, ``huffman``, ``ans``, ``golomb``,
``radix``) keeps its layout, its compiled kernels and its module functions.

Streams: a coder writes its table, then its body, and its body runs to the end of
the reader (the caller frames the stream, in a blob say, when more follows). The
count of symbols is the caller's (never in the stream). Decoders check every count
against that count and the bytes present before use and raise
:class:`fedpress.FormatError` on any bad input.

:data:`CODERS` maps the id a stream names its coder by to the coder; ids 0-3 are
those ``fpz`` writes (since version 1: 0 ans, 1 zstd; since version 2: 2 rans,
3 huffman), and a codec whose own byte numbers its coders otherwise maps its bytes
to these coders in one place (``grad.indices``). Ids never change meaning.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from .._bytes import Reader, Writer
from ..errors import FormatError
from . import ans, crans, golomb, huffman, radix, rans
from .lossless import ZSTD as _ZSTD_STAGE

TableT = TypeVar("TableT")


class Symbols:
    """Integer symbols in the two forms the coders take, each computed once, when
    first asked for.

    Parameters
    ----------
    values : numpy.ndarray, optional
        The symbols (any integer dtype, taken as int64).
    zigzag, hist : numpy.ndarray, optional
        Instead of ``values``: their zigzag codes (0, -1, 1, -2 -> 0, 1, 2, 3; uint32
        or int64) and the histogram of ``min(code, rans.HIST_CAP)``, as the fused
        quantizer (``kernels().quantize_symbols``) or :func:`rans.symbols` give them.
    """

    def __init__(self, values: np.ndarray | None = None, *, zigzag: np.ndarray | None = None,
                 hist: np.ndarray | None = None) -> None:
        if (values is None) == (zigzag is None) or (zigzag is None) != (hist is None):
            raise ValueError("Symbols: give either values or zigzag codes with their histogram")
        self._values = None if values is None else np.ascontiguousarray(values, np.int64)
        self._zigzag = None if zigzag is None else (zigzag, hist)

    @classmethod
    def of(cls, symbols: np.ndarray | Symbols) -> Symbols:
        """``symbols`` as :class:`Symbols` (values are wrapped)."""
        return symbols if isinstance(symbols, Symbols) else cls(np.asarray(symbols).reshape(-1))

    @property
    def size(self) -> int:
        return int(self._values.size if self._values is not None
                   else self._zigzag[0].size)  # type: ignore[index]

    @property
    def values(self) -> np.ndarray:
        """The symbols as int64."""
        if self._values is None:
            assert self._zigzag is not None
            self._values = rans.unzigzag(self._zigzag[0].astype(np.int64))
        return self._values

    def zigzag(self) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, histogram)``; ValueError for values beyond ``-2**62 .. 2**62 - 1``."""
        if self._zigzag is None:
            self._zigzag = rans.symbols(self.values)
        return self._zigzag  # type: ignore[return-value]


class EntropyCoder(ABC, Generic[TableT]):
    """An entropy coder of integer symbols (SZ3's ``EncoderInterface``).

    A coder object holds only its options; tables are values (``TableT``) passed
    between the steps, so one object serves any number of streams and threads.

    Attributes
    ----------
    name : str
        The coder's name (``"rans"``, ``"huffman"``, ...).
    min_symbol, max_symbol : int
        The symbols it codes: integers in ``[min_symbol, max_symbol]``.
    max_alphabet : int or None
        The largest ``max - min + 1`` of one stream, if the coder has a limit
        below its range (encoding more raises ValueError).
    fused : bool
        Whether :meth:`decode` computes ``symbol * step`` inside its decoding loop
        (otherwise it multiplies after decoding, with the same result).
    """

    name: ClassVar[str]
    min_symbol: ClassVar[int]
    max_symbol: ClassVar[int]
    max_alphabet: ClassVar[int | None] = None
    fused: ClassVar[bool] = False

    # -- encoding ----------------------------------------------------------------
    @abstractmethod
    def fit(self, symbols: Symbols) -> TableT:
        """The table for ``symbols`` (SZ3's ``preprocess_encode``).

        Parameters
        ----------
        symbols : Symbols
            The symbols to code.

        Returns
        -------
        TableT
            The coder's table (its own type).

        Raises
        ------
        ValueError
            If a symbol lies outside ``[min_symbol, max_symbol]`` or the alphabet
            exceeds ``max_alphabet``.
        """

    @abstractmethod
    def save(self, table: TableT, w: Writer) -> None:
        """Append ``table`` to ``w`` (the head of the stream)."""

    @abstractmethod
    def encode_with(self, table: TableT, symbols: Symbols, w: Writer) -> None:
        """Append the body: ``symbols`` coded with ``table`` (of :meth:`fit` on them)."""

    def encode(self, symbols: np.ndarray | Symbols, w: Writer) -> None:
        """Append the whole stream of ``symbols``: :meth:`fit`, :meth:`save`,
        :meth:`encode_with`.

        Parameters
        ----------
        symbols : numpy.ndarray or Symbols
            Integer symbols (an array is flattened and taken as int64).
        w : Writer
            Where the stream goes.
        """
        sym = Symbols.of(symbols)
        table = self.fit(sym)
        self.save(table, w)
        self.encode_with(table, sym, w)

    # -- decoding ----------------------------------------------------------------
    @abstractmethod
    def load(self, rd: Reader, n: int) -> TableT:
        """Read and check the table of a stream of ``n`` symbols (SZ3's ``load``).

        Raises
        ------
        FormatError
            If the table is truncated, malformed, or does not fit ``n`` symbols.
        """

    @abstractmethod
    def decode_with(self, table: TableT, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        """Read the body after ``table``: ``n`` symbols, to the end of ``rd``.

        See :meth:`decode` for ``step`` and ``dtype``.
        """

    def decode(self, rd: Reader, n: int, *, step: float = 0.0,
               dtype: np.dtype | None = None) -> np.ndarray:
        """Read a whole stream of ``n`` symbols (:meth:`load`, :meth:`decode_with`).

        Parameters
        ----------
        rd : Reader
            The stream, which runs to the end of the reader.
        n : int
            How many symbols it holds (the caller's, checked against its limits).
        step : float
            With ``step > 0``, return ``symbol * step`` (computed in float64) in
            ``dtype`` instead of the symbols.
        dtype : numpy dtype, optional
            The dtype of the scaled values (default float64).

        Returns
        -------
        numpy.ndarray
            ``n`` int64 symbols, or their scaled values.

        Raises
        ------
        FormatError
            On any truncated, malformed or inconsistent stream.
        """
        return self.decode_with(self.load(rd, n), rd, n, step=step, dtype=dtype)


def _scaled(r: np.ndarray, step: float, dtype: np.dtype | None) -> np.ndarray:
    """``r`` (int64), or with ``step > 0`` ``r * step`` in float64 cast to ``dtype``."""
    if step <= 0.0:
        return r
    return (r.astype(np.float64) * step).astype(dtype if dtype is not None else np.float64)


def _check_range(coder: EntropyCoder[Any], v: np.ndarray) -> None:
    if v.size and (int(v.min()) < coder.min_symbol or int(v.max()) > coder.max_symbol):
        raise ValueError(f"{coder.name}: symbols must lie in [{coder.min_symbol}, "
                         f"{coder.max_symbol}]")


# -- the adapters ----------------------------------------------------------------------


class RansCoder(EntropyCoder[rans.Tables]):
    """fedpress's static rANS (:mod:`fedpress.stages.rans`): escape symbol, optional
    magnitude context, 4 lanes; dequantization fused.

    Parameters
    ----------
    ctx_model : int, optional
        Context model to use (0 or 1); None picks the smaller by estimate.
    """

    name = "rans"
    min_symbol, max_symbol = rans.MIN_RESIDUAL, rans.MAX_RESIDUAL
    fused = True

    def __init__(self, ctx_model: int | None = None) -> None:
        if ctx_model is not None and ctx_model not in rans.LUTS:
            raise ValueError(f"rans: no context model {ctx_model}")
        self.ctx_model = ctx_model

    def fit(self, symbols: Symbols) -> rans.Tables:
        return rans.fit(*symbols.zigzag(), self.ctx_model)

    def save(self, table: rans.Tables, w: Writer) -> None:
        rans.write_tables(w, table)

    def encode_with(self, table: rans.Tables, symbols: Symbols, w: Writer) -> None:
        rans.encode_body(w, table, symbols.zigzag()[0])

    def load(self, rd: Reader, n: int) -> rans.Tables:
        return rans.read_tables(rd)

    def decode_with(self, table: rans.Tables, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return rans.decode_body(rd, table, n, step=step, dtype=dtype)


class ContextRansCoder(EntropyCoder[rans.Tables]):
    """rANS with contexts from outside the stream (:mod:`fedpress.stages.crans`):
    both ends know ``ext[i] < n_ext`` for every symbol; dequantization fused.

    Parameters
    ----------
    ext : numpy.ndarray, optional
        uint8 context of each symbol (None: all 0, for any count).
    n_ext : int
        Number of contexts (``ext < n_ext``).
    models : sequence of (bool, int)
        The candidate models (``crans.ALL_MODELS``).
    """

    name = "crans"
    min_symbol, max_symbol = rans.MIN_RESIDUAL, rans.MAX_RESIDUAL
    fused = True

    def __init__(self, ext: np.ndarray | None = None, n_ext: int = 1,
                 models: Sequence[tuple[bool, int]] = crans.ALL_MODELS) -> None:
        if not 1 <= n_ext <= 256:
            raise ValueError(f"crans: n_ext must be in [1, 256], got {n_ext}")
        self.ext = None if ext is None else np.ascontiguousarray(ext, np.uint8)
        self.n_ext = n_ext
        self.models = tuple(models)

    def _ext(self, n: int) -> np.ndarray:
        return np.zeros(n, np.uint8) if self.ext is None else self.ext

    def fit(self, symbols: Symbols) -> rans.Tables:
        z, hist = symbols.zigzag()
        return crans.tables(crans.choose(z, hist, self._ext(z.size), self.n_ext, self.models))

    def save(self, table: rans.Tables, w: Writer) -> None:
        rans.write_tables(w, table)

    def encode_with(self, table: rans.Tables, symbols: Symbols, w: Writer) -> None:
        z = symbols.zigzag()[0]
        crans.write_body(table, z, self._ext(z.size), w)

    def load(self, rd: Reader, n: int) -> rans.Tables:
        return crans.read_tables(rd, self.n_ext)

    def decode_with(self, table: rans.Tables, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return crans.decode_body(rd, table, n, self._ext(n), step=step, dtype=dtype)


class HuffmanCoder(EntropyCoder[huffman.Code]):
    """Canonical Huffman (:mod:`fedpress.stages.huffman`), rANS's symbols and escapes;
    dequantization fused."""

    name = "huffman"
    min_symbol, max_symbol = rans.MIN_RESIDUAL, rans.MAX_RESIDUAL
    fused = True

    def fit(self, symbols: Symbols) -> huffman.Code:
        return huffman.fit(*symbols.zigzag())

    def save(self, table: huffman.Code, w: Writer) -> None:
        huffman.write_code(w, table)

    def encode_with(self, table: huffman.Code, symbols: Symbols, w: Writer) -> None:
        huffman.encode_body(w, table, symbols.zigzag()[0])

    def load(self, rd: Reader, n: int) -> huffman.Code:
        return huffman.read_code(rd)

    def decode_with(self, table: huffman.Code, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return huffman.decode_body(rd, table, n, step=step, dtype=dtype)


class AnsCoder(EntropyCoder[ans.Histogram]):
    """Range-ANS with the exact histogram (:mod:`fedpress.stages.ans`, needs the
    optional ``constriction``)."""

    name = "ans"
    min_symbol, max_symbol = -ans.MAX_LO, ans.MAX_LO
    max_alphabet = ans.MAX_ALPHABET

    def fit(self, symbols: Symbols) -> ans.Histogram:
        return ans.fit(symbols.values)

    def save(self, table: ans.Histogram, w: Writer) -> None:
        ans.write_histogram(w, table)

    def encode_with(self, table: ans.Histogram, symbols: Symbols, w: Writer) -> None:
        ans.encode_body(w, table, symbols.values)

    def load(self, rd: Reader, n: int) -> ans.Histogram:
        return ans.read_histogram(rd, n)

    def decode_with(self, table: ans.Histogram, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return _scaled(ans.decode_body(rd, table, n), step, dtype)


class ZstdIntsCoder(EntropyCoder[np.dtype]):
    """zstd over the narrowest signed integer type that holds the symbols.

    Table: ``u8`` width (1, 2, 4 or 8 bytes); body: a zstd frame of the symbols as
    little-endian integers of that width.
    """

    name = "zstd"
    min_symbol, max_symbol = -(1 << 63), (1 << 63) - 1

    def fit(self, symbols: Symbols) -> np.dtype:
        v = symbols.values
        lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
        for dt in (np.int8, np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                return np.dtype(dt)
        return np.dtype(np.int64)

    def save(self, table: np.dtype, w: Writer) -> None:
        w.u8(table.itemsize)

    def encode_with(self, table: np.dtype, symbols: Symbols, w: Writer) -> None:
        w.raw(_ZSTD_STAGE.encode_array(symbols.values.astype(table)))

    def load(self, rd: Reader, n: int) -> np.dtype:
        width = rd.u8()
        if width not in (1, 2, 4, 8):
            raise FormatError(f"zstd: bad integer width {width}")
        return np.dtype(f"i{width}")

    def decode_with(self, table: np.dtype, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        r = _ZSTD_STAGE.decode_array(rd.rest(), n, table).astype(np.int64)
        return _scaled(r, step, dtype)


#: largest value the bit codes take here (their decoders' cap: no overflow in 64 bits)
_BITS_MAX = (1 << 62) - 1


class RiceCoder(EntropyCoder[int]):
    """Rice codes (:mod:`fedpress.stages.golomb`) with the best parameter ``b``.

    Table: ``u8 b``; body: the Rice codes, zero-padded to whole bytes.
    """

    name = "rice"
    min_symbol, max_symbol = 0, _BITS_MAX

    def fit(self, symbols: Symbols) -> int:
        _check_range(self, symbols.values)
        return golomb.best_rice_parameter(symbols.values)

    def save(self, table: int, w: Writer) -> None:
        w.u8(table)

    def encode_with(self, table: int, symbols: Symbols, w: Writer) -> None:
        w.raw(golomb.rice_pack(symbols.values, table))

    def load(self, rd: Reader, n: int) -> int:
        b = rd.u8()
        if b > golomb.MAX_RICE_B:
            raise FormatError(f"rice: bad parameter {b}")
        return b

    def decode_with(self, table: int, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return _scaled(golomb.rice_unpack(rd.rest(), n, table, self.max_symbol), step, dtype)


class GammaCoder(EntropyCoder[None]):
    """Elias gamma codes (:mod:`fedpress.stages.golomb`) of ``symbol + 1``.

    No table; body: the codes, zero-padded to whole bytes.
    """

    name = "gamma"
    min_symbol, max_symbol = 0, _BITS_MAX - 1

    def fit(self, symbols: Symbols) -> None:
        _check_range(self, symbols.values)

    def save(self, table: None, w: Writer) -> None:
        pass

    def encode_with(self, table: None, symbols: Symbols, w: Writer) -> None:
        w.raw(golomb.gamma_pack(symbols.values + 1))

    def load(self, rd: Reader, n: int) -> None:
        return None

    def decode_with(self, table: None, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return _scaled(golomb.gamma_unpack(rd.rest(), n, self.max_symbol + 1) - 1, step, dtype)


class RadixCoder(EntropyCoder[int]):
    """Radix packing (:mod:`fedpress.stages.radix`): base-``A`` digits of 64-bit words.

    Table: ``varint A`` (2 to 65536, the largest symbol + 1); body: the packed words.
    """

    name = "radix"
    min_symbol, max_symbol = 0, (1 << 16) - 1

    def fit(self, symbols: Symbols) -> int:
        _check_range(self, symbols.values)
        return max(2, int(symbols.values.max()) + 1) if symbols.size else 2

    def save(self, table: int, w: Writer) -> None:
        w.varint(table)

    def encode_with(self, table: int, symbols: Symbols, w: Writer) -> None:
        w.raw(radix.pack(symbols.values, table))

    def load(self, rd: Reader, n: int) -> int:
        alphabet = rd.varint(cap=self.max_symbol + 1, name="radix alphabet")
        if alphabet < 2:
            raise FormatError(f"radix: alphabet {alphabet} below 2")
        return alphabet

    def decode_with(self, table: int, rd: Reader, n: int, *, step: float = 0.0,
                    dtype: np.dtype | None = None) -> np.ndarray:
        return _scaled(radix.unpack(rd.rest(), n, table), step, dtype)


# -- the table -------------------------------------------------------------------------


class CoderId(enum.IntEnum):
    """The ids streams name their coder by (never renumbered: they are on the wire)."""

    ANS = 0
    ZSTD = 1
    RANS = 2
    HUFFMAN = 3
    CRANS = 4
    RICE = 5
    GAMMA = 6
    RADIX = 7


#: the shared coders, with default options
ANS = AnsCoder()
ZSTD = ZstdIntsCoder()
RANS = RansCoder()
HUFFMAN = HuffmanCoder()
CRANS = ContextRansCoder()
RICE = RiceCoder()
GAMMA = GammaCoder()
RADIX = RadixCoder()

#: the coder-id table: id -> coder
CODERS: Mapping[CoderId, EntropyCoder[Any]] = MappingProxyType({
    CoderId.ANS: ANS,
    CoderId.ZSTD: ZSTD,
    CoderId.RANS: RANS,
    CoderId.HUFFMAN: HUFFMAN,
    CoderId.CRANS: CRANS,
    CoderId.RICE: RICE,
    CoderId.GAMMA: GAMMA,
    CoderId.RADIX: RADIX,
})


def coder_id(name: str) -> CoderId:
    """The id of the coder called ``name``; ValueError if none is."""
    for cid, coder in CODERS.items():
        if coder.name == name:
            return cid
    raise ValueError(f"no entropy coder named {name!r} (known: "
                     f"{sorted(c.name for c in CODERS.values())})")


__all__ = ["ANS", "CODERS", "CRANS", "GAMMA", "HUFFMAN", "RADIX", "RANS", "RICE", "ZSTD",
           "AnsCoder", "CoderId", "ContextRansCoder", "EntropyCoder", "GammaCoder",
           "HuffmanCoder", "RadixCoder", "RansCoder", "RiceCoder", "Symbols", "ZstdIntsCoder",
           "coder_id"]
