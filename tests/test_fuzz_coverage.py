"""Coverage-guided fuzzing of every decoder (``fuzz/``, atheris), briefly, and the replay
of every input fuzzing ever found (``tests/data/fuzz_regressions/``).

Each target runs in a subprocess for ``FEDPRESS_FUZZ_SECONDS`` seconds of fuzzing
(default 3, so that all of them take about a minute with their start-up on a loaded
two-core machine); a target that finds anything not listed in :data:`KNOWN` fails, printing the
reproducer's path. The long runs before a release are in ``fuzz/README.md``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = ROOT / "tests" / "data" / "fuzz_regressions"
SECONDS = float(os.environ.get("FEDPRESS_FUZZ_SECONDS", "3"))

#: regression inputs whose decoder is not fixed yet: file name -> (signature, reason).
#: Their replay is an expected failure (strict: the fix makes it pass, and then the
#: entry must go); the short fuzzing runs do not fail on the same signature.
KNOWN: dict[str, tuple[str, str]] = {}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


RUN = _load("fedpress_fuzz_run", ROOT / "fuzz" / "run.py")
TARGETS = _load("fedpress_fuzz_targets", ROOT / "fuzz" / "targets.py")


def _require_atheris() -> None:
    if importlib.util.find_spec("atheris") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("atheris is not installed; CI must run the fuzz targets "
                    "(pip install -e '.[dev]')")
    pytest.skip("atheris is not installed (pip install -e '.[dev]'): the coverage-guided "
                "runs need it")


@pytest.mark.parametrize("target", RUN.TARGET_NAMES)
def test_short_fuzzing_run_finds_nothing(target: str, tmp_path: Path) -> None:
    _require_atheris()
    known = frozenset(sig for name, (sig, _) in KNOWN.items() if RUN.target_of(Path(name))
                      == target)
    s = RUN.fuzz_target(target, SECONDS, tmp_path / "corpus", tmp_path / "found",
                        known=known, log=False)
    new = [f for f in s.findings if not f.known]
    report = "\n".join(f"{f.kind}: {f.signature}\n  reproducer: {f.path or '(none)'}\n"
                       f"{f.detail[-3000:]}" for f in new)
    assert not new, (f"fuzzing {target} found {len(new)} problem(s); replay with "
                     f"'python fuzz/run.py --replay FILE', keep the file in "
                     f"{REGRESSIONS}:\n{report}")
    assert s.execs > 0 and s.cov > 0, f"the {target} target did not run: {s}"


def _regression_cases() -> list[Any]:
    cases = []
    for path in sorted(REGRESSIONS.glob("*.bin")):
        marks = []
        if path.name in KNOWN:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN[path.name][1]))
        cases.append(pytest.param(path, id=path.stem[:24], marks=marks))
    return cases


def test_known_entries_have_their_files() -> None:
    missing = sorted(set(KNOWN) - {p.name for p in REGRESSIONS.glob("*.bin")})
    assert not missing, f"KNOWN names files that are not in {REGRESSIONS}: {missing}"


@pytest.mark.parametrize("path", _regression_cases())
def test_regression_input_replays_cleanly(path: Path) -> None:
    res = RUN.replay_file(path, timeout=60.0)
    assert res["status"] == "ok", f"{path.name}: {res['status']} {res['signature']}\n" \
                                  f"{res['detail'][-3000:]}"


# -- the harness itself ---------------------------------------------------------------
def test_mutator_reseals_frames_and_keeps_the_framing() -> None:
    """The structure-aware mutator keeps a frame's CRC valid and a harness's framing
    (selector byte, earlier frames) intact, so mutations reach the decoders."""
    import fedpress

    frame = fedpress.compress(np.linspace(0, 1, 50, dtype=np.float32), codec="szx")

    def flip(data: bytes, max_size: int) -> bytes:
        b = bytearray(data)
        b[len(b) // 2] ^= 0x55
        return bytes(b[:max_size])

    outs = [TARGETS.mutate("frame", frame, 4096, seed, flip) for seed in range(64)]
    sealed = [o for o in outs if zlib.crc32(o[:-4]) == int.from_bytes(o[-4:], "little")]
    assert len(sealed) >= 56  # all but the plain mutations of the whole input (1 in 32)
    assert all(o != frame for o in sealed)
    seq = TARGETS.update_input(7, [frame], frame, b"genuine")
    out = TARGETS.mutate("update", seq, 4096, 1, flip)
    cur = TARGETS.Cursor(out)
    assert cur.u8() == 7 and [cur.blob() for _ in range(cur.varint())] == [frame]
    target = cur.blob()
    assert target != frame and cur.rest() == b"genuine"
    assert zlib.crc32(target[:-4]) == int.from_bytes(target[-4:], "little")


def test_harness_flags_a_wrong_array() -> None:
    """The shape/dtype check the targets apply fails on an array the frame does not
    declare (so a decoder returning one is a finding, not a pass)."""
    import fedpress

    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = fedpress.compress(x, codec="zstd")
    lim = TARGETS.limits(None)
    TARGETS.check_arrays(x, frame, lim)
    for wrong in (x.reshape(4, 3), x.astype(np.float64), x[:2]):
        with pytest.raises(TARGETS.Finding):
            TARGETS.check_arrays(wrong, frame, lim)
    with pytest.raises(TARGETS.Finding):
        TARGETS.check_arrays({"": x, "extra": x}, frame, lim)


@pytest.mark.parametrize("name", ["hgc", "powersgd", "stages", "update"])
def test_seeds_decode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target's seeds decode without any error, FormatError included (seeds that
    fail would steer the fuzzer away from the decoders)."""
    monkeypatch.setattr(TARGETS, "allowed", lambda: ())
    target = TARGETS.TARGETS[name]
    seeds = target.seeds()
    assert seeds
    for seed in seeds:
        target.check(seed)
