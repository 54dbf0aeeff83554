"""fedpress.io: loading and saving tensor files (.npy, .npz, .safetensors, .pt)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedpress.dtypes import BFLOAT16
from fedpress.errors import ConfigError, MissingDependencyError
from fedpress.io import SUPPORTED_EXTENSIONS, format_of, load_tensors, save_tensors


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "w32": rng.standard_normal((4, 5)).astype(np.float32),
        "w16": rng.standard_normal((3, 7)).astype(np.float16),
        "wbf16": rng.standard_normal((2, 3, 4)).astype(BFLOAT16),
        "f64": rng.standard_normal(6),
        "steps": np.arange(5, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),
        "count": np.array(7, dtype=np.int64),
        "scalar_bf16": np.array(-1.5, dtype=BFLOAT16),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "u8": np.arange(10, dtype=np.uint8),
    }


class Pickled:
    """A class torch.load(weights_only=True) must refuse."""

    def __init__(self) -> None:
        self.x = 1


# -- formats ------------------------------------------------------------------


def test_format_of() -> None:
    assert format_of("a/b.NPZ") == "npz"
    assert format_of("m.pth") == "torch"
    assert set(SUPPORTED_EXTENSIONS) == {".npy", ".npz", ".safetensors", ".pt", ".pth"}


@pytest.mark.parametrize("name", ["model.bin", "model", "x.fpz"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError, match=r"supported: .*\.npz.*\.safetensors"):
        load_tensors(path)
    with pytest.raises(ConfigError, match="supported"):
        save_tensors({"a": np.zeros(2)}, path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "nope.npz")


# -- .npz / .npy -------------------------------------------------------------------


def test_npz_round_trip(tmp_path: Path) -> None:
    t = _sample()
    path = tmp_path / "t.npz"
    save_tensors(t, path)
    back = load_tensors(path)
    assert list(back) == list(t)
    for k in t:
        assert _same(back[k], t[k]), k


def test_npz_names_that_clash_with_savez_arguments(tmp_path: Path) -> None:
    t = {"file": np.ones(2), "allow_pickle": np.zeros(3), "a/b.c": np.arange(4)}
    save_tensors(t, tmp_path / "t.npz")
    back = load_tensors(tmp_path / "t.npz")
    assert list(back) == list(t)
    assert all(_same(back[k], t[k]) for k in t)


@pytest.mark.parametrize("key", list(_sample()))
def test_npy_round_trip(tmp_path: Path, key: str) -> None:
    x = _sample()[key]
    path = tmp_path / "single.npy"
    save_tensors({key: x}, path)
    back = load_tensors(path)
    assert list(back) == ["single"]  # the key of a .npy is the file's stem
    assert _same(back["single"], x)


def test_npy_needs_exactly_one_tensor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        save_tensors({"a": np.zeros(2), "b": np.zeros(2)}, tmp_path / "x.npy")
    with pytest.raises(ConfigError, match="exactly one"):
        save_tensors({}, tmp_path / "x.npy")


def test_bfloat16_npy_is_plain_numpy(tmp_path: Path) -> None:
    x = np.array([1.0, -2.0, 0.5], dtype=BFLOAT16)
    save_tensors({"x": x}, tmp_path / "x.npy")
    raw = np.load(tmp_path / "x.npy", allow_pickle=False)  # no pickle, no ml_dtypes needed
    assert raw.dtype.names == ("bfloat16",)
    assert np.array_equal(raw["bfloat16"], x.view(np.uint16))


def test_bfloat16_written_by_numpy_save_is_read(tmp_path: Path) -> None:
    x = np.array([[1.0, 3.0], [-2.0, 0.25]], dtype=BFLOAT16)
    np.save(tmp_path / "x.npy", x)  # numpy stores it as an anonymous 2-byte void
    assert _same(load_tensors(tmp_path / "x.npy")["x"], x)


def test_npz_object_array_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ConfigError, match="allow_pickle=False"):
        load_tensors(tmp_path / "o.npz")


def test_npz_unsupported_dtype_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", z=np.zeros(3, dtype=np.complex64))
    with pytest.raises(ConfigError, match=r"'z'.*complex64"):
        load_tensors(tmp_path / "c.npz")


@pytest.mark.parametrize("ext", [".npy", ".npz", ".safetensors", ".pt"])
def test_garbage_file(tmp_path: Path, ext: str) -> None:
    if ext == ".pt":
        pytest.importorskip("torch")
    if ext == ".safetensors":
        pytest.importorskip("safetensors")
    path = tmp_path / f"junk{ext}"
    path.write_bytes(b"this is not a tensor file at all" * 4)
    with pytest.raises(ConfigError):
        load_tensors(path)


def test_npy_under_npz_name(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros(3))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    with pytest.raises(ConfigError, match=r"not a \.npz"):
        load_tensors(tmp_path / "x.npz")


def test_truncated_npz(tmp_path: Path) -> None:
    save_tensors(_sample(), tmp_path / "t.npz")
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError):
        load_tensors(tmp_path / "t.npz")


def test_npz_is_a_zip_of_npy(tmp_path: Path) -> None:
    save_tensors({"a": np.zeros(2), "b": np.ones(3)}, tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "t.npz") as zf:
        assert zf.namelist() == ["a.npy", "b.npy"]
    with np.load(tmp_path / "t.npz", allow_pickle=False) as npz:
        assert np.array_equal(npz["b"], np.ones(3))


# -- .safetensors -------------------------------------------------------------


def test_safetensors_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    t = _sample()
    save_tensors(t, tmp_path / "t.safetensors")
    back = load_tensors(tmp_path / "t.safetensors")
    assert set(back) == set(t)
    for k in t:
        assert _same(back[k], t[k]), k


def test_safetensors_without_bfloat16_needs_no_torch(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("safetensors")
    t = {k: v for k, v in _sample().items() if v.dtype != BFLOAT16}
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    save_tensors(t, tmp_path / "t.safetensors")
    back = load_tensors(tmp_path / "t.safetensors")
    assert all(_same(back[k], t[k]) for k in t)


def test_safetensors_bfloat16_from_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    w = torch.randn(3, 4).to(torch.bfloat16)
    st.save_file({"w": w, "s": torch.tensor(3, dtype=torch.int64)}, str(tmp_path / "m.safetensors"))
    back = load_tensors(tmp_path / "m.safetensors")
    assert back["w"].dtype == BFLOAT16 and back["w"].shape == (3, 4)
    assert np.array_equal(back["w"].view(np.uint16), w.view(torch.int16).numpy().view(np.uint16))
    assert back["s"].shape == () and back["s"].dtype == np.int64


def test_missing_safetensors_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(MissingDependencyError, match="safetensors"):
        save_tensors({"a": np.zeros(3, np.float32)}, tmp_path / "a.safetensors")


# -- .pt ---------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".pt", ".pth"])
def test_torch_round_trip(tmp_path: Path, ext: str) -> None:
    torch = pytest.importorskip("torch")
    t = _sample()
    path = tmp_path / f"t{ext}"
    save_tensors(t, path)
    raw = torch.load(path, weights_only=True)  # a plain state dict of torch tensors
    assert raw["wbf16"].dtype == torch.bfloat16
    assert raw["scalar"].shape == () and raw["count"].dtype == torch.int64
    back = load_tensors(path)
    assert list(back) == list(t)
    for k in t:
        assert _same(back[k], t[k]), k


def test_torch_state_dict_of_a_module(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    model.half()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "m.pt")
    back = load_tensors(tmp_path / "m.pt")
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].shape == tuple(v.shape)
        assert np.array_equal(back[k], v.numpy())
    assert back["1.weight"].dtype == np.float16
    assert back["1.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict"])
def test_torch_checkpoint_dict(tmp_path: Path, key: str) -> None:
    torch = pytest.importorskip("torch")
    sd = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3, dtype=torch.bfloat16)}
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}, key: sd}, tmp_path / "ck.pt")
    back = load_tensors(tmp_path / "ck.pt")
    assert list(back) == ["a.weight", "a.bias"]
    assert np.array_equal(back["a.weight"], sd["a.weight"].numpy())
    assert back["a.bias"].dtype == BFLOAT16


def test_torch_nested_values_rejected(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2), "epoch": 3}, tmp_path / "a.pt")
    with pytest.raises(ConfigError, match="'epoch' is a int, not a tensor"):
        load_tensors(tmp_path / "a.pt")
    torch.save({"w": torch.zeros(2), "opt": {"lr": torch.ones(1)}}, tmp_path / "b.pt")
    with pytest.raises(ConfigError, match=r"'opt' is a dict.*state_dict"):
        load_tensors(tmp_path / "b.pt")
    torch.save([torch.zeros(2)], tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="not a state dict"):
        load_tensors(tmp_path / "c.pt")


def test_torch_pickled_object_rejected(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2), "obj": Pickled()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="weights_only") as info:
        load_tensors(tmp_path / "evil.pt")
    assert "Pickled" in str(info.value)


def test_torch_unsupported_dtype(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "z.pt")
    with pytest.raises(ConfigError, match="'z'"):
        load_tensors(tmp_path / "z.pt")


def test_missing_torch_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.pt").write_bytes(b"\x80\x02}q\x00.")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match="'torch'"):
        load_tensors(tmp_path / "m.pt")
    with pytest.raises(MissingDependencyError, match="'torch'"):
        save_tensors({"a": np.zeros(2)}, tmp_path / "m.pt")


def test_save_accepts_torch_tensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    sd = {"w": torch.randn(2, 3).t(), "b": torch.ones(3, dtype=torch.bfloat16)}  # non-contiguous
    save_tensors(sd, tmp_path / "x.npz")
    back = load_tensors(tmp_path / "x.npz")
    assert np.array_equal(back["w"], sd["w"].numpy())
    assert back["b"].dtype == BFLOAT16


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        save_tensors([np.zeros(2)], tmp_path / "x.npz")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="strings"):
        save_tensors({1: np.zeros(2)}, tmp_path / "x.npz")  # type: ignore[dict-item]
