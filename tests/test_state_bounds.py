"""What one peer can make a decoder keep, and the keys of state directories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedpress
from fedpress import TensorSpec, TensorState
from fedpress.grad.hgc import HGCCodec

HGC = {"default": {"id": "hgc", "density": 0.01}}
Stores = Callable[[Path], fedpress.StateStore]
STORES: dict[str, Stores] = {
    "memory": lambda _: fedpress.MemoryStateStore(),
    "dir": lambda path: fedpress.DirStateStore(path / "state"),
}


def _frame(tensors: dict[str, int], encoder: fedpress.UpdateEncoder | None = None) -> bytes:
    """An hgc frame of zero tensors of the given sizes (hgc keeps 8 bytes per value)."""
    enc = encoder if encoder is not None else fedpress.UpdateEncoder(plan=HGC)
    return enc.encode({name: np.zeros(n, np.float32) for name, n in tensors.items()})


def _decoder(kind: str, tmp_path: Path, cap: int) -> fedpress.UpdateDecoder:
    return fedpress.UpdateDecoder(STORES[kind](tmp_path),
                                  fedpress.Limits(max_state_bytes=cap))


@pytest.mark.parametrize("kind", STORES)
def test_a_small_frame_cannot_leave_more_state_than_the_cap(kind: str, tmp_path: Path) -> None:
    blob = _frame({"w": 4096})
    assert len(blob) < 1000  # a few hundred bytes on the wire ...
    dec = _decoder(kind, tmp_path, 8 * 4096 - 1)
    with pytest.raises(fedpress.FormatError, match="max_state_bytes"):
        dec.decode(blob)  # ... would leave 32 KiB of state
    assert dec.store.keys() == []
    ok = _decoder(kind, tmp_path / "ok", 8 * 4096)
    ok.decode(blob)
    assert ok.store.sizes("default") == {"w": 8 * 4096}


@pytest.mark.parametrize("kind", STORES)
def test_renamed_tensors_cannot_grow_the_state(kind: str, tmp_path: Path) -> None:
    dec = _decoder(kind, tmp_path, 1 << 30)
    enc = fedpress.UpdateEncoder(plan=HGC)
    dec.decode(_frame({"w": 100}, enc))
    with pytest.raises(fedpress.StateDesyncError, match="fixed by its first frame"):
        dec.decode(_frame({"renamed": 100}))  # round 0 of a new name
    dec.decode(_frame({"w": 100}, enc))  # the peer's own stream goes on
    with pytest.raises(fedpress.StateDesyncError, match="fixed by its first frame"):
        dec.decode(_frame({"w": 100, "w2": 100}, enc))  # w in step, w2 new
    assert dec.store.keys() == [("default", "w")]
    assert dec.store.get("default", "w").round == 2
    other = fedpress.UpdateEncoder(plan=HGC)
    dec.decode(_frame({"x": 10}, other), peer="another")  # other peers have their own
    dec.reset("default")
    assert dec.store.keys() == [("another", "x")]
    dec.decode(_frame({"renamed": 100}))
    assert sorted(dec.store.keys()) == [("another", "x"), ("default", "renamed")]


def test_the_cap_counts_the_tensors_a_frame_omits() -> None:
    dec = fedpress.UpdateDecoder(limits=fedpress.Limits(max_state_bytes=20_000))
    enc = fedpress.UpdateEncoder(plan=HGC)
    dec.decode(_frame({"w1": 1000, "w2": 1000}, enc))  # 16,000 bytes
    grown = _frame({"w1": 2000}, enc)  # w1 now 16,000 bytes, w2 kept: 24,000
    with pytest.raises(fedpress.FormatError, match="24000 bytes"):
        dec.decode(grown)
    assert dec.store.sizes("default") == {"w1": 8000, "w2": 8000}


def test_declared_sizes_are_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A codec that knows a lower bound of its state has a frame refused before any
    payload is decoded."""
    blob = _frame({"w": 4096})

    def no_decode(*args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("decoded a frame the state cap refuses")

    monkeypatch.setattr(HGCCodec, "min_state_bytes",
                        lambda self, spec: 8 * spec.size, raising=False)
    monkeypatch.setattr(HGCCodec, "decode", no_decode)
    dec = fedpress.UpdateDecoder(limits=fedpress.Limits(max_state_bytes=8 * 4096 - 1))
    with pytest.raises(fedpress.FormatError, match="at least 32768 bytes"):
        dec.decode(blob)


def test_tensor_state_nbytes_and_store_sizes(tmp_path: Path) -> None:
    st = TensorState({"a": np.zeros(10, np.float32), "b": np.zeros((2, 3), np.int8)})
    assert st.nbytes == 46
    for kind, make in STORES.items():
        store = make(tmp_path / kind)
        store.put("p", "t", st)
        store.put("p", "u", TensorState())
        store.put("q", "t", TensorState({"a": np.zeros(5, np.float64)}))
        assert store.sizes("p") == {"t": 46, "u": 0}, kind
        assert store.sizes("q") == {"t": 40}, kind
        assert store.sizes("nobody") == {}, kind


# -- DirStateStore keys ---------------------------------------------------------------


def test_dir_store_keys_cannot_collide(tmp_path: Path) -> None:
    store = fedpress.DirStateStore(tmp_path)
    pairs = [("p\x00residual", "w"), ("p", "residual\x00w"), ("a\x00", "t"), ("a", "t"),
             ("a", "\x00t"), ("", "a\x00t")]
    for i, (peer, name) in enumerate(pairs):
        store.put(peer, name, TensorState({"v": np.array([i])}, round=i))
    for i, (peer, name) in enumerate(pairs):
        got = store.get(peer, name)
        assert got.round == i and got["v"][0] == i, (peer, name)
    assert sorted(store.keys()) == sorted(pairs)
    store.clear("a")
    assert sorted(store.keys()) == sorted(p for p in pairs if p[0] != "a")


def test_dir_store_checks_the_names_inside_a_file(tmp_path: Path) -> None:
    store = fedpress.DirStateStore(tmp_path)
    store.put("p", "t", TensorState({"v": np.arange(3)}, round=4))
    (mine,) = tmp_path.glob("*.npz")
    store.put("q", "t", TensorState({"v": np.arange(5)}))
    (theirs,) = set(tmp_path.glob("*.npz")) - {mine}
    theirs.write_bytes(mine.read_bytes())  # q's file now holds p's state
    with pytest.raises(fedpress.FormatError, match="holds peer 'p'"):
        store.get("q", "t")
    assert store.get("p", "t").round == 4


def test_dir_store_refuses_the_older_layout(tmp_path: Path) -> None:
    np.savez(tmp_path / ("ab" * 20 + ".npz"), __peer__=np.array("p"),
             __name__=np.array("t"), __round__=np.array(1))
    with pytest.raises(fedpress.FormatError, match="older layout"):
        fedpress.DirStateStore(tmp_path)


def test_dir_store_resumes_a_decoder_with_its_names_fixed(tmp_path: Path) -> None:
    enc = fedpress.UpdateEncoder(plan=HGC)
    fedpress.UpdateDecoder(fedpress.DirStateStore(tmp_path)).decode(_frame({"w": 64}, enc))
    dec = fedpress.UpdateDecoder(fedpress.DirStateStore(tmp_path))  # a restarted process
    dec.decode(_frame({"w": 64}, enc))
    with pytest.raises(fedpress.StateDesyncError):
        dec.decode(_frame({"v": 64}))
    assert dec.store.get("default", "w").round == 2
    assert isinstance(dec.store.get("default", "w"), TensorState)
    assert TensorSpec((64,), np.dtype("f4")).nbytes * 2 == dec.store.sizes("default")["w"]


@pytest.mark.parametrize(("predictor", "per_value"), [("context", 5), ("paper", 8)])
def test_gaebs_history_is_counted_before_decoding(monkeypatch: pytest.MonkeyPatch,
                                                  predictor: str, per_value: int) -> None:
    x = np.random.default_rng(3).standard_normal(4096).astype(np.float32)
    codec = fedpress.get_codec("gaeb", predictor=predictor)
    blob = fedpress.UpdateEncoder(plan={"w": codec}).encode({"w": x})
    ok = fedpress.UpdateDecoder(limits=fedpress.Limits(max_state_bytes=per_value * 4096))
    ok.decode(blob)
    assert ok.store.sizes("default") == {"w": per_value * 4096}

    def no_decode(*args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("decoded a frame the state cap refuses")

    monkeypatch.setattr(type(codec), "decode", no_decode)
    tight = fedpress.UpdateDecoder(limits=fedpress.Limits(max_state_bytes=per_value * 4096 - 1))
    with pytest.raises(fedpress.FormatError, match=f"at least {per_value * 4096} bytes"):
        tight.decode(blob)
