"""The CLI's output files survive interrupted writes; its decoders accept only the
codecs they are told to."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

import fedpress
from fedpress import cli
from fedpress import io as fio
from fedpress.backends.lossless import ZstdCodec
from fedpress.frame import DEFAULT_LIMITS
from fedpress.registry import codec_class, register_codec, unregister_codec

runner = CliRunner()
TENSORS = {"w": np.arange(200, dtype=np.float32).reshape(10, 20), "b": np.ones(7, np.float32)}


def _run(*args: str | Path) -> Any:
    return runner.invoke(cli.app, [str(a) for a in args], env={"COLUMNS": "200"})


def _interrupted(path: Any, *args: Any) -> None:
    """A writer that gets half way, then is interrupted (Ctrl-C)."""
    with open(path, "wb") as f:
        f.write(b"half a file")
    raise KeyboardInterrupt


def _leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# -- atomic writes ---------------------------------------------------------------------


def test_interrupted_decompress_keeps_the_previous_output(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    frame = tmp_path / "m.fpz"
    frame.write_bytes(fedpress.encode_update(TENSORS, "zstd"))
    out = tmp_path / "x.npz"
    fio.save_tensors({"old": np.zeros(3)}, out)
    before = out.read_bytes()
    monkeypatch.setattr(fio, "_save_npz", lambda arrays, path: _interrupted(path))
    result = _run("decompress", frame, "-o", out)
    assert result.exit_code != 0
    assert out.read_bytes() == before
    assert _leftovers(tmp_path, {"m.fpz", "x.npz"}) == []


def test_interrupted_compress_keeps_the_previous_frame(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "m.npz"
    fio.save_tensors(TENSORS, src)
    out = tmp_path / "m.fpz"
    out.write_bytes(b"the previous frame")

    def half(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half)
    result = _run("compress", src, "-o", out, "--codec", "zstd")
    assert result.exit_code != 0
    assert out.read_bytes() == b"the previous frame"
    assert _leftovers(tmp_path, {"m.npz", "m.fpz"}) == []


@pytest.mark.parametrize("suffix,writer", [(".npy", "_save_npy"), (".npz", "_save_npz"),
                                           (".safetensors", "_save_safetensors"),
                                           (".pt", "_save_torch")])
def test_save_tensors_is_atomic_in_every_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                suffix: str, writer: str) -> None:
    out = tmp_path / f"x{suffix}"
    out.write_bytes(b"previous")

    def failing(arrays: Any, path: Any) -> None:
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(fio, writer, failing)
    with pytest.raises(OSError, match="No space"):
        fio.save_tensors({"t": np.zeros(4, np.float32)}, out)
    assert out.read_bytes() == b"previous"
    assert _leftovers(tmp_path, {out.name}) == []


def test_atomic_write_replaces_whole_and_keeps_permissions(tmp_path: Path) -> None:
    new = tmp_path / "new.bin"
    fio.write_bytes_atomically(new, b"abc")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert new.read_bytes() == b"abc"
    assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    os.chmod(new, 0o640)
    fio.write_bytes_atomically(new, b"defg")
    assert new.read_bytes() == b"defg" and stat.S_IMODE(new.stat().st_mode) == 0o640
    link = tmp_path / "link.bin"
    link.symlink_to(new)
    fio.write_bytes_atomically(link, b"through the link")
    assert link.is_symlink() and new.read_bytes() == b"through the link"
    assert _leftovers(tmp_path, {"new.bin", "plain.bin", "link.bin"}) == []


# -- which codecs a decoding command accepts --------------------------------------------


class UnsafeZstd(ZstdCodec):
    """zstd, marked as a codec whose decoder is not safe on a peer's bytes."""

    codec_id = "test-unsafe-zstd"
    peer_safe: ClassVar[bool] = False


@pytest.fixture
def unsafe() -> Iterator[str]:
    register_codec(UnsafeZstd)
    yield UnsafeZstd.codec_id
    unregister_codec(UnsafeZstd.codec_id)


@pytest.mark.parametrize("kind", ["update", "tensor"])
def test_refused_codec_is_one_line_and_says_how_to_opt_in(tmp_path: Path, unsafe: str,
                                                         kind: str) -> None:
    frame = tmp_path / "m.fpz"
    frame.write_bytes(fedpress.encode_update(TENSORS, unsafe) if kind == "update"
                      else fedpress.compress(TENSORS["w"], codec=unsafe))
    out = tmp_path / "x.npz"
    result = _run("decompress", frame, "-o", out)
    assert result.exit_code == 2
    text = result.output.strip()
    assert "\n" not in text and "Traceback" not in text
    assert unsafe in text and "--allow" in text and "--isolate" in text
    assert not out.exists()
    result = _run("decompress", frame, "-o", out, "--allow", unsafe)
    assert result.exit_code == 0, result.output
    got = fio.load_tensors(out)
    expect = TENSORS if kind == "update" else {"tensor": TENSORS["w"]}
    assert set(got) == set(expect)
    assert all(np.array_equal(got[k], expect[k]) for k in expect)


def test_allow_and_isolate_build_the_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            unsafe: str) -> None:
    frame = tmp_path / "m.fpz"
    frame.write_bytes(fedpress.encode_update(TENSORS, "zstd"))
    seen: list[fedpress.Limits] = []

    def spy(blob: Any, limits: fedpress.Limits, **kw: Any) -> dict[str, np.ndarray]:
        seen.append(limits)
        return dict(TENSORS)

    monkeypatch.setattr(cli, "decode_update", spy)
    assert _run("decompress", frame, "-o", tmp_path / "a.npz").exit_code == 0
    assert seen[-1].codecs is None and seen[-1].isolate == frozenset()
    result = _run("decompress", frame, "-o", tmp_path / "b.npz", "--allow", unsafe,
                  "--allow", "zstd", "--isolate", "sz2", "--isolate", "zfp")
    assert result.exit_code == 0, result.output
    safe = {c for c in fedpress.list_codecs() if codec_class(c).peer_safe}
    assert seen[-1].codecs == frozenset(safe | {unsafe})
    assert seen[-1].isolate == frozenset({"sz2", "zfp"})
    result = _run("decompress", frame, "-o", tmp_path / "c.npz", "--allow", "no-such-codec")
    assert result.exit_code == 2 and "no such codec" in result.output
    assert "Traceback" not in result.output


def test_inspect_takes_the_same_options(tmp_path: Path, unsafe: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    frame = tmp_path / "m.fpz"
    frame.write_bytes(fedpress.encode_update(TENSORS, "zstd"))
    seen: list[fedpress.Limits] = []
    real = cli.fp_inspect

    def spy(blob: Any, limits: fedpress.Limits = DEFAULT_LIMITS) -> dict[str, Any]:
        seen.append(limits)
        return real(blob, limits)

    monkeypatch.setattr(cli, "fp_inspect", spy)
    result = _run("inspect", frame, "--json", "--allow", unsafe, "--isolate", "sz2")
    assert result.exit_code == 0, result.output
    assert unsafe in seen[-1].codecs and seen[-1].isolate == frozenset({"sz2"})


def test_bench_decodes_its_own_frames_of_any_codec(unsafe: str) -> None:
    row = cli._bench_one(unsafe, UnsafeZstd, None, "rel", {"w": TENSORS["w"].ravel()}, 1,
                         lambda: None)
    assert row["error"] is None and row["violations"] == 0
