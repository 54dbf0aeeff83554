"""Stateful codecs: both state scopes, desync detection, stores that resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

import fedpress
from fedpress import Scope, StatefulCodec, TensorSpec, TensorState
from fedpress.registry import register_codec, unregister_codec


class XorDelta(StatefulCodec):
    """Mirrored test codec: XOR of the bits with the previous decoded tensor."""

    codec_id = "test-xor-delta"
    scope = Scope.MIRRORED
    config_keys: ClassVar[tuple[str, ...]] = ()

    def encode(self, x: np.ndarray, state: Any = None) -> bytes:
        prev = state.get("prev")
        bits = x.astype(np.float32).view(np.uint32)
        out = bits ^ prev.view(np.uint32) if prev is not None else bits
        state["prev"] = x.astype(np.float32).copy()
        return out.tobytes()

    def decode(self, payload: Any, spec: TensorSpec, state: Any = None) -> np.ndarray:
        bits = np.frombuffer(bytes(payload), dtype=np.uint32)
        if bits.size != spec.size:
            raise fedpress.FormatError("size")
        prev = state.get("prev")
        if prev is not None:
            bits = bits ^ prev.reshape(-1).view(np.uint32)
        out = bits.view(np.float32).reshape(spec.shape).astype(spec.dtype)
        state["prev"] = out.copy()
        return out


class SignEF(StatefulCodec):
    """Sender-scope test codec: 1-bit sign with scale and error feedback."""

    codec_id = "test-sign-ef"
    scope = Scope.SENDER
    lossy = True
    config_keys: ClassVar[tuple[str, ...]] = ()

    def encode(self, x: np.ndarray, state: Any = None) -> bytes:
        v = x.astype(np.float32).ravel() + state.get("residual", np.zeros(x.size, np.float32))
        scale = np.float32(np.abs(v).mean())
        sent = np.where(v >= 0, scale, -scale).astype(np.float32)
        state["residual"] = v - sent
        return scale.tobytes() + np.packbits(v >= 0).tobytes()

    def decode(self, payload: Any, spec: TensorSpec, state: Any = None) -> np.ndarray:
        assert state is None
        raw = bytes(payload)
        scale = np.frombuffer(raw[:4], np.float32)[0]
        bits = np.unpackbits(np.frombuffer(raw[4:], np.uint8))[: spec.size]
        return np.where(bits == 1, scale, -scale).astype(spec.dtype).reshape(spec.shape)


@pytest.fixture(autouse=True)
def _codecs() -> Iterator[None]:
    register_codec(XorDelta)
    register_codec(SignEF)
    yield
    unregister_codec(XorDelta.codec_id)
    unregister_codec(SignEF.codec_id)


def _rounds(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    base = rng.standard_normal((20, 30)).astype(np.float32)
    return [{"w": base + 0.01 * i * rng.standard_normal((20, 30)).astype(np.float32),
             "b": np.arange(5, dtype=np.float32) + i} for i in range(n)]


def test_mirrored_state_advances_on_both_ends(rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan={"w": "test-xor-delta", "default": "zstd"}, peer="c1")
    dec = fedpress.UpdateDecoder()
    for r, sd in enumerate(_rounds(rng, 4)):
        blob = enc.encode(sd)
        tag = fedpress.inspect(blob)["tensors"][0]
        assert tag["state_round"] == r
        out = dec.decode(blob, peer="c1")
        assert np.array_equal(out["w"], sd["w"]) and np.array_equal(out["b"], sd["b"])
    assert enc.store.get("c1", "w").round == 4
    assert dec.store.get("c1", "w").round == 4


def test_desync_is_detected_not_decoded_wrong(rng: np.random.Generator) -> None:
    rounds = _rounds(rng, 3)
    enc = fedpress.UpdateEncoder(plan={"w": "test-xor-delta"})
    dec = fedpress.UpdateDecoder()
    dec.decode(enc.encode(rounds[0]))
    enc.encode(rounds[1])  # lost on the way: the decoder never sees round 1
    with pytest.raises(fedpress.StateDesyncError, match="round 2"):
        dec.decode(enc.encode(rounds[2]))
    # a decoder whose state has the right round but other contents
    enc2 = fedpress.UpdateEncoder(plan={"w": "test-xor-delta"})
    dec2 = fedpress.UpdateDecoder()
    dec2.decode(enc2.encode(rounds[0]))
    st = dec2.store.get("default", "w")
    st["prev"] = st["prev"] + 1
    dec2.store.put("default", "w", st)
    with pytest.raises(fedpress.StateDesyncError):
        dec2.decode(enc2.encode(rounds[1]))


def test_failed_decode_leaves_state_untouched(rng: np.random.Generator) -> None:
    rounds = _rounds(rng, 2)
    enc = fedpress.UpdateEncoder(plan={"w": "test-xor-delta", "b": "test-xor-delta"})
    dec = fedpress.UpdateDecoder()
    dec.decode(enc.encode(rounds[0]))
    good = enc.encode(rounds[1])
    bad = bytearray(good)
    bad[-10] ^= 0xFF
    with pytest.raises(fedpress.FormatError):
        dec.decode(bytes(bad))
    assert dec.store.get("default", "w").round == 1
    out = dec.decode(good)
    assert np.array_equal(out["w"], rounds[1]["w"])


def test_peers_have_separate_state(rng: np.random.Generator) -> None:
    rounds = _rounds(rng, 2)
    plan = {"w": "test-xor-delta"}
    a, b = fedpress.UpdateEncoder(plan=plan, peer="a"), fedpress.UpdateEncoder(plan=plan, peer="b")
    dec = fedpress.UpdateDecoder()
    dec.decode(a.encode(rounds[0]), peer="a")
    with pytest.raises(fedpress.StateDesyncError):
        dec.decode(a.encode(rounds[1]), peer="b")  # b has no history yet
    dec.decode(b.encode(rounds[0]), peer="b")


def test_sender_scope_keeps_error_feedback_only_on_sender(rng: np.random.Generator) -> None:
    enc = fedpress.UpdateEncoder(plan={"re:": "test-sign-ef"})
    dec = fedpress.UpdateDecoder()
    x = {"g": rng.standard_normal(1000).astype(np.float32)}
    total_sent = np.zeros(1000)
    for _ in range(50):
        total_sent += dec.decode(enc.encode(x))["g"]
    # error feedback conserves mass: what was sent plus the sender's residual is exactly
    # what went in over all rounds (only true if the residual persisted between rounds)
    residual = enc.store.get("default", "g")["residual"]
    assert np.allclose(total_sent + residual, 50 * x["g"].astype(np.float64), atol=1e-3)
    assert dec.store.keys() == []
    with pytest.raises(fedpress.ConfigError, match="UpdateEncoder"):
        fedpress.compress(x["g"], codec="test-sign-ef")


def test_dir_store_lets_a_client_stop_and_resume(tmp_path: Any, rng: np.random.Generator) -> None:
    rounds = _rounds(rng, 3)
    plan = {"w": "test-xor-delta"}
    dec = fedpress.UpdateDecoder(store=fedpress.DirStateStore(tmp_path / "server"))
    enc = fedpress.UpdateEncoder(plan=plan, store=fedpress.DirStateStore(tmp_path / "client"))
    dec.decode(enc.encode(rounds[0]))
    del enc, dec  # both processes stop
    enc = fedpress.UpdateEncoder(plan=plan, store=fedpress.DirStateStore(tmp_path / "client"))
    dec = fedpress.UpdateDecoder(store=fedpress.DirStateStore(tmp_path / "server"))
    out = dec.decode(enc.encode(rounds[1]))
    assert np.array_equal(out["w"], rounds[1]["w"])
    assert fedpress.DirStateStore(tmp_path / "server").keys() == [("default", "w")]


def test_tensor_state_digest_and_store_copies() -> None:
    s = TensorState({"a": np.arange(3)})
    d = s.digest()
    assert len(d) == 8
    assert TensorState({"a": np.arange(3)}).digest() == d
    assert TensorState({"a": np.arange(3, dtype=np.int32)}).digest() != d
    store = fedpress.MemoryStateStore()
    store.put("p", "t", s)
    got = store.get("p", "t")
    got["a"][0] = 99
    assert store.get("p", "t")["a"][0] == 0
    store.clear()
    assert store.keys() == []
    with pytest.raises(KeyError):
        s["__round__"] = np.zeros(1)


def test_digest_hashes_the_little_endian_bytes_in_place() -> None:
    """The digest is the format's (SHA-256 of name, dtype, shape and little-endian
    bytes, sorted by name) whatever the arrays' layout; hashed without copies."""
    import hashlib

    from fedpress.dtypes import le_buffer, le_bytes

    arrays = {"f": np.arange(12, dtype=np.float32).reshape(3, 4),
              "big": np.arange(5, dtype=">i8"),
              "strided": np.arange(20.0).reshape(4, 5)[:, ::2],
              "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
              "scalar": np.array(2.5), "empty": np.zeros(0, np.int8),
              "bool": np.array([True, False, True])}
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode() + a.dtype.str.encode() + repr(a.shape).encode() + le_bytes(a))
        assert bytes(le_buffer(a)) == le_bytes(a)
    assert TensorState(arrays).digest() == h.digest()[:8]
    flat = np.arange(4, dtype=np.float32)
    assert np.shares_memory(np.frombuffer(le_buffer(flat), np.float32), flat)


class XorDeltaReplacing(XorDelta):
    """XorDelta, declared to replace its state's arrays (never written into)."""

    codec_id = "test-xor-delta-replacing"
    replaces_state = True


@pytest.mark.parametrize("dir_store", [False, True])
def test_replacing_codec_borrows_state_and_failures_leave_it(
        tmp_path: Any, rng: np.random.Generator, dir_store: bool) -> None:
    register_codec(XorDeltaReplacing)
    try:
        rounds = _rounds(rng, 3)
        plan = {"w": XorDeltaReplacing.codec_id, "b": XorDeltaReplacing.codec_id}
        stores = ((fedpress.DirStateStore(tmp_path / "c"), fedpress.DirStateStore(tmp_path / "s"))
                  if dir_store else (fedpress.MemoryStateStore(), fedpress.MemoryStateStore()))
        enc = fedpress.UpdateEncoder(plan=plan, store=stores[0])
        dec = fedpress.UpdateDecoder(store=stores[1])
        dec.decode(enc.encode(rounds[0]))
        held = dec.store.get("default", "w")["prev"].copy()
        good = enc.encode(rounds[1])
        bad = bytearray(good)
        bad[-10] ^= 0xFF
        with pytest.raises(fedpress.FormatError):
            dec.decode(bytes(bad))
        st = dec.store.get("default", "w")
        assert st.round == 1 and np.array_equal(st["prev"], held)
        for i in (1, 2):
            frame = good if i == 1 else enc.encode(rounds[2])
            assert np.array_equal(dec.decode(frame)["w"], rounds[i]["w"])
        assert enc.store.get("default", "w").digest() == dec.store.get("default", "w").digest()
    finally:
        unregister_codec(XorDeltaReplacing.codec_id)


def test_memory_store_lends_and_adopts_without_copies() -> None:
    store = fedpress.MemoryStateStore()
    a = np.arange(4.0)
    st = TensorState({"a": a}, round=3)
    store.adopt("p", "t", st)
    lent = store.lend("p", "t")
    assert lent["a"] is a and lent.round == 3
    del lent["a"]  # the borrower's mapping is its own
    lent.round += 1
    assert "a" in store.get("p", "t") and store.get("p", "t").round == 3
    assert store.get("p", "t")["a"] is not a  # get still copies
    assert len(store.lend("p", "other")) == 0


def test_corrupt_state_file_is_a_format_error(tmp_path: Any) -> None:
    store = fedpress.DirStateStore(tmp_path)
    store.put("p", "t", TensorState({"a": np.arange(3)}, round=2))
    f = next(tmp_path.glob("*.npz"))
    f.write_bytes(b"garbage")
    with pytest.raises(fedpress.FormatError):
        store.get("p", "t")


def test_memory_store_round_trips_through_bytes(rng: np.random.Generator) -> None:
    """A client keeping its codec state in a framework's per-client storage (Flower's
    Context.state) resumes bit for bit from the blob; garbage is a FormatError."""
    rounds = _rounds(rng, 3)
    plan = {"w": "test-xor-delta"}
    enc, dec = fedpress.UpdateEncoder(plan=plan), fedpress.UpdateDecoder()
    dec.decode(enc.encode(rounds[0]))
    enc.store.put("peer\x00residual", "w", TensorState({"a": np.arange(4), "b": np.eye(2)}, 7))
    blob = enc.store.to_bytes()
    restored = fedpress.MemoryStateStore.from_bytes(blob)
    assert sorted(restored.keys()) == sorted(enc.store.keys())
    for peer, name in enc.store.keys():
        a, b = enc.store.get(peer, name), restored.get(peer, name)
        assert a.round == b.round and a.digest() == b.digest()
    resumed = fedpress.UpdateEncoder(plan=plan, store=restored)
    assert np.array_equal(dec.decode(resumed.encode(rounds[1]))["w"], rounds[1]["w"])
    assert fedpress.MemoryStateStore.from_bytes(
        fedpress.MemoryStateStore().to_bytes()).keys() == []
    for bad in (b"", b"garbage", blob[: len(blob) // 2]):
        with pytest.raises(fedpress.FormatError):
            fedpress.MemoryStateStore.from_bytes(bad)
