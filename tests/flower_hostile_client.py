"""A hostile fedpress client, for tests only: it trains as the example's clients do, then
replaces its train reply's frame with a crafted one (valid frame checksum).

Used in process (``tests/test_flower_hostile.py`` builds ClientApps with
:func:`hostile_mod`) and in a real deployment: the test copies the example app, adds
this file as ``fedpress_example/hostile_client.py`` and points the app's ``clientapp``
at :data:`app`. Run config (the app's ``[tool.flwr.app.config]``):

* ``hostile-partition``: the partition id of the node that turns hostile (``-1``: none,
  :data:`EVERY`: every node);
* ``hostile-frames``: comma-separated kinds of :data:`KINDS`, one per round, in turn.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import fedpress
from fedpress.abc import TensorSpec
from fedpress.flower import compression_mod, task, wire
from fedpress.frame import Frame, Record
from fedpress.frame import pack as pack_frame
from fedpress.frame import unpack as unpack_frame

#: elements of the tensor a "huge" frame declares (1 GiB of float32: under the default
#: Limits, so only the server's check against the model refuses it before allocating)
HUGE = 1 << 28
#: ``hostile-partition`` value for which every node turns hostile
EVERY = -2


def _rng(frame: bytes) -> np.random.Generator:
    return np.random.default_rng(len(frame))


def _sz2(frame: Frame, rng: np.random.Generator) -> Frame:
    """Every tensor named as coded by SZ2 (a native decoder that crashes or exits on
    crafted streams): a well-formed error-bounded envelope around fedpress's SZ2 tag and
    a garbage stream that starts like SZ2's (a zstd frame magic), so that a decoder
    that accepts ``sz2`` hands it to the library."""
    cfg = fedpress.get_codec("sz2", mode="rel", eb=1e-2).get_config()
    records = [Record(r.name, 0, r.spec, _envelope(b"\x00\x28\xb5\x2f\xfd" + rng.bytes(60)))
               for r in frame.records]
    return Frame(frame.kind, [cfg], records, frame.meta)


def _envelope(core: bytes) -> bytes:
    """An error-bounded codec's payload around ``core`` (kind 2, bound 1e-3, no
    patches; see :mod:`fedpress.eblc.base`)."""
    return bytes([2]) + struct.pack("<d", 1e-3) + b"\x00" + core


def _zfp_stream_header(n: int) -> bytes:
    """The start (32 bytes) of a zfp fixed-rate stream of ``n`` float32 values at 1000
    bits per value (4000 bits per block, where fixed-accuracy streams take at most a
    few hundred): a decoder that sizes its buffer for what fedpress writes reads far
    past it. Made from a small sample's header with ``nx`` set to ``n`` (zfp's bit
    stream is little-endian; after the 32-bit magic, 2 bits of type, 2 of
    dimensionality and 48 of ``nx - 1``)."""
    import zfpy

    head = bytes(zfpy.compress_numpy(np.zeros(4, np.float32), rate=1000.0))[:32]
    bits = int.from_bytes(head[:16], "little")
    field = ((1 << 48) - 1) << 36
    bits = (bits & ~field) | ((n - 1) << 36)
    head = bits.to_bytes(16, "little") + head[16:]
    assert int(zfpy.header(head)["nx"]) == n
    return head


def _zfp(frame: Frame, rng: np.random.Generator) -> Frame:
    """The largest float32 tensor coded by ZFP, its payload an error-bounded envelope
    around a truncated zfp fixed-rate stream."""
    cfg = fedpress.get_codec("zfp", mode="abs", eb=1e-3).get_config()
    codecs = [*frame.codecs, cfg]
    big = max((r for r in frame.records if r.spec.dtype == np.float32),
              key=lambda r: r.spec.size)
    payload = _envelope(_zfp_stream_header(big.spec.size))
    records = [Record(r.name, len(codecs) - 1, r.spec, payload) if r is big else r
               for r in frame.records]
    return Frame(frame.kind, codecs, records, frame.meta)


def _huge(frame: Frame, rng: np.random.Generator) -> Frame:
    """The first tensor declared as :data:`HUGE` values, its payload an error-bounded
    envelope's constant (a few bytes that decode to the whole tensor)."""
    first = frame.records[0]
    spec = TensorSpec(shape=(HUGE,), dtype=first.spec.dtype)
    payload = bytes([1]) + struct.pack("<d", 1e-3) + b"\x00" + struct.pack("<d", 0.5)
    records = [Record(first.name, first.codec_index, spec, payload), *frame.records[1:]]
    return Frame(frame.kind, frame.codecs, records, frame.meta)


def _garbage(frame: Frame, rng: np.random.Generator) -> Frame:
    """The honest frame's codecs, names and shapes, every payload random bytes of its
    length."""
    records = [Record(r.name, r.codec_index, r.spec, rng.bytes(len(r.payload)), r.state,
                      r.reference) for r in frame.records]
    return Frame(frame.kind, frame.codecs, records, frame.meta)


#: crafted frames by kind: each maps the honest frame to a hostile one
KINDS: dict[str, Callable[[Frame, np.random.Generator], Frame]] = {
    "sz2": _sz2, "zfp": _zfp, "huge": _huge, "garbage": _garbage}


def craft(kind: str, frame: bytes) -> bytes:
    """A crafted frame of ``kind`` made from an honest ``frame`` (checksum valid)."""
    return pack_frame(KINDS[kind](unpack_frame(frame), _rng(frame)))


def hostile_mod(message: Message, context: Context,
                call_next: Callable[[Message, Context], Message]) -> Message:
    """Outside :func:`compression_mod`: on the hostile node, swap the train reply's
    frame for a crafted one (the run config says which node and which frames)."""
    reply = call_next(message, context)
    config = context.run_config
    hostile = int(config.get("hostile-partition", -1))
    if hostile not in (EVERY, int(context.node_config["partition-id"])) \
            or message.metadata.message_type.split(".")[0] != "train" \
            or reply.has_error() or "arrays" not in reply.content:
        return reply
    kinds = [k.strip() for k in str(config.get("hostile-frames", "sz2")).split(",")]
    rnd = int(wire.config_of(message).get("server-round", 1))
    kind = kinds[(rnd - 1) % len(kinds)]
    frame = wire.frame_of(reply.content["arrays"])
    assert frame is not None, "the hostile mod goes outside compression_mod"
    reply.content["arrays"] = wire.frame_record(craft(kind, frame))
    print(f"hostile client: round {rnd}: sent a crafted {kind!r} frame", flush=True)
    return reply


# the example's client with the hostile mod outermost (it sees the encoded reply)
app = ClientApp(mods=[hostile_mod, compression_mod])
app.train()(task.train)
app.evaluate()(task.evaluate)
