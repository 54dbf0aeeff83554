"""The ``fedpress`` command line (typer app run in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import fedpress
from fedpress.cli import _probe, app
from fedpress.dtypes import BFLOAT16
from fedpress.io import load_tensors, save_tensors

from .common import available

torch = pytest.importorskip("torch")
nn = torch.nn

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


class TinyNet(nn.Module):
    """conv + bn + linear: two weights over 1000 elements, biases, BN buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 5)  # weight 1200 elements
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(64, 32)  # weight 2048 elements

    def forward(self, x: Any) -> Any:
        x = self.bn(self.conv(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1))


def run(*args: str | Path) -> Any:
    result = runner.invoke(app, [str(a) for a in args], env=WIDE)
    return result


def ok(*args: str | Path) -> Any:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    model = TinyNet()
    model.train()
    model(torch.randn(4, 3, 12, 12))  # moves the BN running stats and the batch counter
    sd = model.state_dict()
    assert sd["bn.num_batches_tracked"].dtype == torch.int64
    return {k: fedpress.dtypes.to_numpy(v) for k, v in sd.items()}


def write_model(sd: dict[str, np.ndarray], path: Path) -> Path:
    if path.suffix == ".pt":
        torch.save({k: fedpress.dtypes.to_torch(v.copy()).reshape(v.shape) for k, v in sd.items()},
                   path)
    else:
        save_tensors(sd, path)
    return path


def check_decoded(orig: dict[str, np.ndarray], back: dict[str, np.ndarray],
                  info: dict[str, Any]) -> None:
    """Lossless tensors bit-exact, lossy ones within the eb_abs the frame reports."""
    assert set(back) == set(orig)
    by_name = {t["name"]: t for t in info["tensors"]}
    for name, x in orig.items():
        y = back[name]
        assert y.shape == x.shape and y.dtype == x.dtype, name
        t = by_name[name]
        if fedpress.get_codec(t["codec"]).lossy:
            err = np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))
            assert err <= t["eb_abs"], (name, err, t["eb_abs"])
        else:
            assert x.tobytes() == y.tobytes(), name


# -- compress / inspect / decompress -----------------------------------------------


@pytest.mark.parametrize("ext", [".npz", ".safetensors", ".pt"])
def test_round_trip_each_format(tmp_path: Path, state_dict: dict[str, np.ndarray],
                                ext: str) -> None:
    if ext == ".safetensors":
        pytest.importorskip("safetensors")
    src = write_model(state_dict, tmp_path / f"model{ext}")
    res = ok("compress", src)
    frame = tmp_path / f"model{ext}.fpz"  # default output: INPUT.fpz
    assert frame.exists()
    assert "CR" in res.output

    info = json.loads(ok("inspect", frame, "--json").stdout)
    assert info["kind"] == "update"
    assert info["frame_bytes"] == frame.stat().st_size
    codecs = {t["name"]: t["codec"] for t in info["tensors"]}
    # the FedSZ plan: weights over 1000 elements lossy (fpz), the rest lossless (zstd)
    assert codecs["conv.weight"] == "fpz" and codecs["fc.weight"] == "fpz"
    assert codecs["bn.weight"] == "zstd" and codecs["fc.bias"] == "zstd"
    assert codecs["bn.num_batches_tracked"] == "zstd"

    table = ok("inspect", frame).output
    for name in state_dict:
        assert name in table
    assert "fpz" in table and "total" in table

    for out_ext in (ext, ".npz"):
        out = tmp_path / f"decoded{out_ext}"
        ok("decompress", frame, "-o", out)
        check_decoded(state_dict, load_tensors(out), info)


def test_the_paper_plan_needs_an_opt_in_to_decode(tmp_path: Path,
                                                   state_dict: dict[str, np.ndarray]) -> None:
    if not available(("sz2", "blosc-lz")):
        pytest.skip("sz2 or blosc-lz not installed")
    src = write_model(state_dict, tmp_path / "m.npz")
    frame = tmp_path / "m.fpz"
    ok("compress", src, "-o", frame, "--plan", "fedsz-paper")
    info = json.loads(ok("inspect", frame, "--json").stdout)
    codecs = {t["name"]: t["codec"] for t in info["tensors"]}
    assert codecs["conv.weight"] == "sz2" and codecs["fc.bias"] == "blosc-lz"
    out = tmp_path / "back.npz"
    res = run("decompress", frame, "-o", out)
    assert res.exit_code != 0 and "--isolate sz2" in res.output and not out.exists()
    ok("decompress", frame, "-o", out, "--isolate", "sz2")
    check_decoded(state_dict, load_tensors(out), info)


def test_bfloat16_model_via_named_codec(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    sd = {k: (v.astype(BFLOAT16) if v.dtype == np.float32 else v) for k, v in state_dict.items()}
    src = write_model(sd, tmp_path / "bf16.pt")
    frame = tmp_path / "bf16.fpz"
    ok("compress", src, "-o", frame, "--codec", "sz3", "--mode", "abs", "--eb", "1e-3",
       "--threshold", "100")
    info = json.loads(ok("inspect", frame, "--json").stdout)
    by_name = {t["name"]: t for t in info["tensors"]}
    assert by_name["conv.weight"]["codec"] == "sz3"
    assert by_name["conv.weight"]["dtype"] == "bfloat16"
    assert by_name["conv.weight"]["eb_abs"] == pytest.approx(1e-3)
    assert by_name["conv.bias"]["codec"] == "zstd"  # 16 elements < threshold
    out = tmp_path / "bf16_out.pt"
    ok("decompress", frame, "-o", out, "--allow", "sz3")
    back = load_tensors(out)
    assert back["fc.weight"].dtype == BFLOAT16
    check_decoded(sd, back, info)


def test_plan_json_and_codec_options(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    src = write_model(state_dict, tmp_path / "m.npz")
    frame = tmp_path / "m.fpz"
    plan = json.dumps({"re:weight$": "zfp", "default": "zstd"})
    ok("compress", src, "-o", frame, "--plan", plan, "--eb", "1e-3")
    info = json.loads(ok("inspect", frame, "--json").stdout)
    codecs = {t["name"]: t["codec"] for t in info["tensors"]}
    assert codecs["fc.weight"] == "zfp" and codecs["bn.weight"] == "zfp"
    assert codecs["fc.bias"] == "zstd" and codecs["bn.num_batches_tracked"] == "zstd"
    out = tmp_path / "m_out.safetensors"
    ok("decompress", frame, "-o", out)
    check_decoded(state_dict, load_tensors(out), info)

    ok("compress", src, "-o", frame, "--codec", "zstd", "-O", "level=19")
    info = json.loads(ok("inspect", frame, "--json").stdout)
    assert {c["id"] for c in info["codecs"]} == {"zstd"}
    assert info["codecs"][0]["level"] == 19


def test_single_npy_tensor(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    src = tmp_path / "fc.npy"
    save_tensors({"fc.weight": state_dict["fc.weight"]}, src)
    frame = tmp_path / "fc.fpz"
    ok("compress", src, "-o", frame, "--codec", "sz3", "--threshold", "0")
    info = json.loads(ok("inspect", frame, "--json").stdout)
    assert [t["name"] for t in info["tensors"]] == ["fc"]
    ok("decompress", frame, "-o", tmp_path / "out.npy", "--allow", "sz3")
    y = load_tensors(tmp_path / "out.npy")["out"]
    x = state_dict["fc.weight"]
    assert y.shape == x.shape and np.abs(y - x).max() <= info["tensors"][0]["eb_abs"]


def test_single_tensor_frame(tmp_path: Path) -> None:
    x = np.linspace(-3, 3, 3000, dtype=np.float32).reshape(30, 100)
    frame = tmp_path / "x.fpz"
    frame.write_bytes(fedpress.compress(x, codec="sz3", eb=1e-3))
    info = json.loads(ok("inspect", frame, "--json").stdout)
    assert info["kind"] == "tensor"
    assert "(tensor)" in ok("inspect", frame).output
    ok("decompress", frame, "-o", tmp_path / "x.npz", "--allow", "sz3")
    back = load_tensors(tmp_path / "x.npz")
    assert list(back) == ["tensor"]
    assert np.abs(back["tensor"] - x).max() <= info["tensors"][0]["eb_abs"]
    ok("decompress", frame, "-o", tmp_path / "y.npy", "--isolate", "sz3")
    assert load_tensors(tmp_path / "y.npy")["y"].shape == (30, 100)


def test_update_frame_with_several_tensors_to_npy_fails(tmp_path: Path,
                                                        state_dict: dict[str, np.ndarray]) -> None:
    src = write_model(state_dict, tmp_path / "m.npz")
    ok("compress", src, "-o", tmp_path / "m.fpz")
    res = run("decompress", tmp_path / "m.fpz", "-o", tmp_path / "m.npy")
    assert res.exit_code == 2 and "exactly one" in res.output


# -- codecs ---------------------------------------------------------------------


def test_codecs_lists_registered_codecs() -> None:
    text = ok("codecs").output
    for cid in ("sz3", "zstd", "blosc-lz"):
        assert cid in text
    assert "error-bounded" in text and "lossless" in text
    rows = {r["id"]: r for r in json.loads(ok("codecs", "--json").stdout)}
    assert set(rows) == set(fedpress.list_codecs())
    assert rows["zstd"]["kind"] == "lossless" and rows["zstd"]["available"]
    assert rows["sz3"]["kind"] == "error-bounded"
    if "szx" not in fedpress.list_codecs():
        pytest.skip("codec 'szx' is not registered yet")
    assert "szx" in text and rows["szx"]["kind"] == "error-bounded"


def test_codecs_reports_missing_library(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pysz", None)  # sz3's back end cannot import
    rows = {r["id"]: r for r in json.loads(ok("codecs", "--json").stdout)}
    assert rows["sz3"]["available"] is False
    assert "pysz" in rows["sz3"]["status"]
    assert rows["zstd"]["available"] is True


# -- bench ------------------------------------------------------------------------


def test_bench(tmp_path: Path) -> None:
    if not _probe("sz3")[0]:
        pytest.skip("sz3 back end (pysz) not available")
    rng = np.random.default_rng(3)
    src = tmp_path / "b.npz"
    save_tensors({"smooth": np.cumsum(rng.standard_normal(5000)).astype(np.float32),
                  "w": (rng.standard_normal((40, 50)) * 0.1).astype(np.float32),
                  "tiny": np.zeros(10, np.float32), "steps": np.arange(4000)}, src)
    out = tmp_path / "bench.json"
    res = ok("bench", src, "--codecs", "sz3,zstd,no-such-codec", "--eb", "1e-2", "--repeat", "2",
             "--json", out)
    assert "sz3" in res.output and "zstd" in res.output
    result = json.loads(out.read_text())
    assert result["tensors"] == 2 and result["skipped_tensors"] == 2
    rows = {r["codec"]: r for r in result["rows"]}
    assert rows["no-such-codec"]["available"] is False
    sz3, zstd = rows["sz3"], rows["zstd"]
    assert sz3["eb"] == 1e-2 and zstd["eb"] is None
    assert sz3["cr"] > 1 and zstd["cr"] > 1
    assert 0 < sz3["max_error_over_eb"] <= 1 and sz3["violations"] == 0
    assert zstd["max_abs_error"] == 0 and zstd["violations"] == 0
    for r in (sz3, zstd):
        assert r["compress_mb_s"] > 0 and r["decompress_mb_s"] > 0
        assert r["bits_per_value"] == pytest.approx(32 / r["cr"])

    res = ok("bench", src, "--codecs", "zstd", "--repeat", "1", "--json", "-")
    assert json.loads(res.stdout)["rows"][0]["codec"] == "zstd"


def test_bench_nothing_selected(tmp_path: Path) -> None:
    save_tensors({"a": np.zeros(10, np.float32)}, tmp_path / "a.npz")
    res = run("bench", tmp_path / "a.npz")
    assert res.exit_code == 2 and "min-elements" in res.output


# -- errors -----------------------------------------------------------------------


def _assert_clean_error(res: Any) -> None:
    assert res.exit_code == 2, res.output
    assert "error" in res.output
    assert "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)


def test_garbage_inputs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.fpz"
    junk.write_bytes(b"definitely not a fedpress frame" * 3)
    _assert_clean_error(run("inspect", junk))
    _assert_clean_error(run("inspect", junk, "--json"))
    _assert_clean_error(run("decompress", junk, "-o", tmp_path / "o.npz"))
    for ext in (".npz", ".pt", ".npy"):
        bad = tmp_path / f"junk{ext}"
        bad.write_bytes(b"\x00garbage" * 20)
        res = run("compress", bad)
        _assert_clean_error(res)
        assert "error: " in res.stderr


def test_corrupted_frame(tmp_path: Path) -> None:
    frame = tmp_path / "x.fpz"
    data = bytearray(fedpress.compress(np.arange(2000, dtype=np.float32), codec="zstd"))
    data[len(data) // 2] ^= 0xFF
    frame.write_bytes(bytes(data))
    res = run("decompress", frame, "-o", tmp_path / "x.npz")
    _assert_clean_error(res)
    assert "checksum" in res.output


@pytest.mark.parametrize("cmd", [
    ["compress", "{d}/missing.npz"],
    ["decompress", "{d}/missing.fpz", "-o", "{d}/out.npz"],
    ["inspect", "{d}/missing.fpz"],
    ["bench", "{d}/missing.npz"],
])
def test_missing_file(tmp_path: Path, cmd: list[str]) -> None:
    res = run(*[c.format(d=tmp_path) for c in cmd])
    _assert_clean_error(res)
    assert "no such file" in res.output and "missing" in res.output


def test_config_errors(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    src = write_model(state_dict, tmp_path / "m.npz")
    _assert_clean_error(run("compress", src, "--codec", "no-such-codec"))
    _assert_clean_error(run("compress", src, "--codec", "zstd", "--plan", "sz3"))
    _assert_clean_error(run("compress", src, "--eb", "-1"))
    _assert_clean_error(run("compress", src, "--plan", "{not json"))
    _assert_clean_error(run("compress", src, "-o", src))  # would overwrite the input
    (tmp_path / "m.txt").write_text("hello")
    res = run("compress", tmp_path / "m.txt")
    _assert_clean_error(res)
    assert ".safetensors" in res.output  # lists the supported extensions
    ok("compress", src, "-o", tmp_path / "m.fpz")
    _assert_clean_error(run("decompress", tmp_path / "m.fpz", "-o", tmp_path / "m.csv"))
    _assert_clean_error(run("bench", src, "--eb", "abc"))


def test_version_and_help() -> None:
    assert fedpress.__version__ in ok("--version").output
    res = runner.invoke(app, [])
    assert "compress" in res.output


def test_options_that_have_their_own_flags_are_refused(tmp_path: Path,
                                                       state_dict: dict[str, np.ndarray]) -> None:
    src = tmp_path / "m.npz"
    np.savez(src, **state_dict)
    for opt in ("eb=0.5", "mode=abs", "threshold=3", "lossy=sz3"):
        res = run("compress", str(src), "-o", str(tmp_path / "o.fpz"), "--codec", "szx",
                  "-O", opt)
        _assert_clean_error(res)
        assert "instead" in res.output
    res = run("compress", str(src), "-o", str(tmp_path / "o.fpz"), "--codec", "sz3",
              "--plan", "fedsz")
    _assert_clean_error(res)
    res = run("compress", str(src), "-o", str(tmp_path / "o.fpz"), "--lossy", "zstd")
    _assert_clean_error(res)
    assert "lossless" in res.output


def test_single_npy_under_fedsz_says_why_it_stayed_lossless(tmp_path: Path) -> None:
    src = tmp_path / "grad.npy"
    np.save(src, np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    res = run("compress", str(src), "-o", str(tmp_path / "g.fpz"))
    assert res.exit_code == 0, res.output
    assert "no tensor went to the lossy codec" in res.output
    res = run("compress", str(src), "-o", str(tmp_path / "g2.fpz"), "--codec", "sz3")
    assert res.exit_code == 0 and "no tensor went" not in res.output


def test_bench_with_nothing_measurable_fails(tmp_path: Path,
                                             state_dict: dict[str, np.ndarray]) -> None:
    src = tmp_path / "m.npz"
    np.savez(src, **state_dict)
    res = run("bench", str(src), "--codecs", "nosuch", "--eb", "1e-2")
    _assert_clean_error(res)
    assert "no codec could be measured" in res.output
    res = run("bench", str(src), "--codecs", "zstd", "--json", str(tmp_path / "nodir" / "r.json"))
    _assert_clean_error(res)


def test_compress_against_a_reference(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    """--reference: weights coded as their change from a model the receiver holds."""
    ref_path, new_path = tmp_path / "global.npz", tmp_path / "local.npz"
    np.savez(ref_path, **state_dict)
    rng = np.random.default_rng(0)
    local = {k: (v + rng.normal(scale=1e-3, size=v.shape).astype(v.dtype)
                 if v.dtype.kind == "f" else v) for k, v in state_dict.items()}
    np.savez(new_path, **local)
    plain, with_ref = tmp_path / "plain.fpz", tmp_path / "ref.fpz"
    ok("compress", new_path, "-o", plain, "--codec", "fpz", "--eb", "1e-3")
    ok("compress", new_path, "-o", with_ref, "--codec", "fpz", "--eb", "1e-3",
       "--reference", ref_path)
    assert with_ref.stat().st_size < plain.stat().st_size
    out = tmp_path / "out.npz"
    bad = run("decompress", with_ref, "-o", out)  # without the reference: a clear error
    assert bad.exit_code == 2 and "reference" in bad.output
    ok("decompress", with_ref, "-o", out, "--reference", ref_path)
    with np.load(out) as z:
        for k, v in local.items():
            if v.dtype.kind == "f" and v.size >= 1000:
                eb_abs = 1e-3 * float(v.max() - v.min())
                assert np.abs(z[k].astype(np.float64) - v).max() <= eb_abs
            else:
                assert np.array_equal(z[k], v)
