"""Run fedpress's fuzz targets (``fuzz/targets.py``) and keep what they find.

    python fuzz/run.py --target frame --seconds 60
    python fuzz/run.py --target all --seconds 600 --corpus /var/tmp/fedpress-corpus
    python fuzz/run.py --replay tests/data/fuzz_regressions/*.bin

Each target runs in a subprocess (libFuzzer ends the process it runs in, and a native
crash would end this one). Inputs that break a decoder's contract are saved as
``tests/data/fuzz_regressions/<target>-<sha1>.bin`` (``--regressions``): a Python
exception other than ``FormatError``/``StateDesyncError`` or a wrong array (the worker
records it and goes on, once per exception type and place), a crash, a hang
(``--timeout`` seconds on one input) or a memory blow-up (``--rss-limit-mb``). After
a crash the target is restarted on the same corpus until ``--seconds`` are spent.
The summary gives executions, executions per second, coverage (libFuzzer's ``cov``
edges and ``ft`` features) and every finding; the last line of output is
``SUMMARY <json>``. Exit status: 1 if anything new was found, else 0.

``--replay`` runs files through their target (named by the file's prefix), each in a
subprocess, and reports ``ok``, ``finding`` (an exception or a wrong array, with its
traceback) or ``crash`` (the process died: signal, exit, hang).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "targets.py"
REGRESSIONS = HERE.parent / "tests" / "data" / "fuzz_regressions"
TARGET_NAMES = ("frame", "native", "update", "hgc", "powersgd", "stages")
#: seconds a worker may spend importing and building seeds before fuzzing starts
STARTUP_GRACE = 120.0


@dataclass
class Finding:
    """One input that broke a decoder's contract."""

    target: str
    kind: str  # "exception" (or wrong array), "crash", "timeout", "oom", "exit"
    signature: str
    detail: str
    path: str = ""  # where the input was saved
    known: bool = False


@dataclass
class Summary:
    """What fuzzing one target did."""

    target: str
    seconds: float = 0.0
    runs: int = 0
    execs: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    restarts: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def execs_per_s(self) -> float:
        return self.execs / self.seconds if self.seconds else 0.0


def _libfuzzer_stats(text: str) -> tuple[int, int, int, int]:
    """(executions, cov, ft, corpus size) from a libFuzzer log."""
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    if not execs:
        execs = re.findall(r"^#(\d+)\s", text, re.M)
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
    c, f, n = (int(v) for v in cov[-1]) if cov else (0, 0, 0)
    return (int(execs[-1]) if execs else 0), c, f, n


def _crash_kind(text: str) -> tuple[str, str]:
    """(kind, signature) of the crash libFuzzer reported in ``text``."""
    m = re.search(r"ERROR: libFuzzer: ([^\n]*)", text)
    reason = m.group(1).strip() if m else "worker died"
    kind = ("timeout" if "timeout" in reason else "oom" if "out-of-memory" in reason
            else "exit" if "exited" in reason else "crash")
    reason = re.sub(r"\s*\(used: \d+Mb; (exceeds|limit): \d+Mb\)", "", reason)
    reason = re.sub(r"after \d+ seconds", "", reason).strip()
    return kind, reason


def _crash_detail(text: str, lines: int = 60) -> str:
    """The part of a worker's log that explains its crash (Python stack included)."""
    keep = text.splitlines()
    start = next((i for i, ln in enumerate(keep) if "ERROR: libFuzzer" in ln
                  or "Fatal Python error" in ln or "Uncaught Python exception" in ln), None)
    if start is None:
        return "\n".join(keep[-lines:])
    return "\n".join(keep[max(0, start - 5): start + lines])


def _save(data: bytes, target: str, regressions: Path) -> Path:
    regressions.mkdir(parents=True, exist_ok=True)
    path = regressions / f"{target}-{hashlib.sha1(data).hexdigest()}.bin"
    if not path.exists():
        path.write_bytes(data)
    return path


def fuzz_target(target: str, seconds: float, corpus: Path, regressions: Path, *,
                timeout: int = 30, rss_limit_mb: int = 2048, nice: int = 0,
                max_restarts: int = 10, known: frozenset[str] = frozenset(),
                extra: tuple[str, ...] = (), log: bool = True) -> Summary:
    """Fuzz ``target`` for about ``seconds`` of fuzzing (start-up excluded), restarting
    it after crashes; findings whose signature is in ``known`` are reported, not
    saved; ``extra``: more libFuzzer flags (e.g. ``-use_value_profile=1``)."""
    summary = Summary(target)
    corpus.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    spent = 0.0
    with tempfile.TemporaryDirectory(prefix=f"fedpress-fuzz-{target}-") as tmp:
        work = Path(tmp)
        while spent < seconds and summary.runs <= max_restarts:
            left = max(1, round(seconds - spent))
            findings_dir, artifacts = work / f"findings{summary.runs}", work / f"art{summary.runs}"
            artifacts.mkdir()
            cmd = [sys.executable, str(WORKER), "--fuzz", target, "--corpus", str(corpus),
                   "--findings", str(findings_dir), "--",
                   f"-max_total_time={left}", f"-timeout={timeout}",
                   f"-rss_limit_mb={rss_limit_mb}", "-print_final_stats=1",
                   f"-artifact_prefix={artifacts}/", *extra]
            t0 = time.monotonic()
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                errors="replace", start_new_session=True,
                preexec_fn=(lambda: os.nice(nice)) if nice else None)
            try:
                text, _ = proc.communicate(timeout=left + timeout + STARTUP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                text, _ = proc.communicate()
                text += "\nERROR: libFuzzer: worker stalled (killed by fuzz/run.py)"
            wall = time.monotonic() - t0
            started = re.search(r"INFO: Seed: \d+", text) is not None
            execs, cov, ft, n = _libfuzzer_stats(text)
            fuzzing = max(0.0, min(wall, float(left))) if started else 0.0
            summary.runs += 1
            summary.execs += execs
            summary.seconds += fuzzing
            summary.cov, summary.ft = max(summary.cov, cov), max(summary.ft, ft)
            summary.corpus = max(summary.corpus, n)
            spent += max(fuzzing, 1.0)
            new = _collect(target, text, proc.returncode, findings_dir, artifacts,
                           regressions, seen, known)
            summary.findings += new
            if log:
                for f in new:
                    tag = "known" if f.known else "NEW"
                    print(f"[{target}] {tag} {f.kind}: {f.signature}"
                          + (f" -> {f.path}" if f.path else ""), flush=True)
            crashed = any(f.kind != "exception" for f in new) or proc.returncode not in (0,)
            if not started:
                if not new:  # nothing to learn from restarting a worker that cannot start
                    summary.findings.append(Finding(target, "crash", "worker did not start",
                                                    text[-4000:]))
                break
            if not crashed:
                break
        summary.restarts = summary.runs - 1
    return summary


def _collect(target: str, text: str, rc: int, findings_dir: Path, artifacts: Path,
             regressions: Path, seen: set[str], known: frozenset[str]) -> list[Finding]:
    out = []
    if findings_dir.is_dir():
        for txt in sorted(findings_dir.glob("*.txt")):
            sig, _, detail = txt.read_text().partition("\n")
            if sig in seen:
                continue
            seen.add(sig)
            f = Finding(target, "exception", sig, detail, known=sig in known)
            if not f.known:
                f.path = str(_save(txt.with_suffix(".bin").read_bytes(), target, regressions))
            out.append(f)
    arts = [p for p in sorted(artifacts.iterdir()) if not p.name.startswith("slow-unit")]
    if arts or (rc not in (0,) and "Done " not in text):
        kind, sig = _crash_kind(text)
        detail = _crash_detail(text)
        data: bytes | None = arts[0].read_bytes() if arts else None
        if data is not None and kind in ("crash", "exit"):
            # libFuzzer's report has no Python stack: replay the input alone, with
            # faulthandler, for the stack and a signature that tells crashes apart
            alone = artifacts / f"{target}-alone.bin"
            alone.write_bytes(data)
            res = replay_file(alone, timeout=60.0)
            if res["status"] != "ok":
                sig = _replay_signature(res) or sig
                detail += "\n--- the input replayed alone ---\n" + res["detail"][-4000:]
        if sig not in seen:
            seen.add(sig)
            f = Finding(target, kind, sig, detail, known=sig in known)
            if data is not None and not f.known:
                f.path = str(_save(data, target, regressions))
            out.append(f)
    return out


def _replay_signature(res: dict[str, str]) -> str:
    """``<signal or status> in <module>.<function>``: the innermost frame of fedpress's
    package in a replayed crash's faulthandler stack (else its innermost frame)."""
    if res["status"] == "finding":
        return res["signature"]
    frames = re.findall(r'File "([^"]+)", line \d+ in (\w+)', res["detail"])
    if not frames:
        return res["signature"]
    ours = [(p, f) for p, f in frames if "/fedpress/" in p and "/fuzz/" not in p]
    path, func = (ours or frames)[0]
    return f"{res['signature']} in {Path(path).stem}.{func}"


# -- replay ---------------------------------------------------------------------------
def target_of(path: Path) -> str:
    """The target a regression file belongs to (its name's prefix)."""
    name = path.name.split("-", 1)[0]
    if name not in TARGET_NAMES:
        raise ValueError(f"{path.name}: no target named {name!r}")
    return name


def replay_file(path: Path, timeout: float = 120.0) -> dict[str, str]:
    """Run one file through its target in a subprocess: ``{"status": "ok" | "finding" |
    "crash", "signature": ..., "detail": ...}``."""
    cmd = [sys.executable, str(WORKER), "--replay", target_of(path), str(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "crash", "signature": f"hang (over {timeout:.0f} s)", "detail": ""}
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        sig = (f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
               else f"exit status {proc.returncode} without a result")
        return {"status": "crash", "signature": sig, "detail": proc.stderr[-4000:]}
    res = lines[0]
    if res["ok"]:
        return {"status": "ok", "signature": "", "detail": ""}
    return {"status": "finding", "signature": res["signature"], "detail": res["traceback"]}


# -- command line ---------------------------------------------------------------------
def _print_summary(s: Summary) -> None:
    new = [f for f in s.findings if not f.known]
    print(f"[{s.target}] {s.execs} executions in {s.seconds:.0f} s ({s.execs_per_s:.0f}/s), "
          f"cov {s.cov}, ft {s.ft}, corpus {s.corpus}, restarts {s.restarts}, "
          f"findings {len(new)} new, {len(s.findings) - len(new)} known", flush=True)
    for f in new:
        print(f"  {f.kind}: {f.signature}\n  input: {f.path or '(not saved)'}")
        print("    " + "\n    ".join(f.detail.strip().splitlines()[-25:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", help=f"one of {', '.join(TARGET_NAMES)}, or 'all'")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="fuzzing time per target (start-up not counted)")
    p.add_argument("--corpus", type=Path,
                   help="corpus folder (one sub-folder per target; kept between runs); "
                        "default: a temporary folder, seeded afresh")
    p.add_argument("--regressions", type=Path, default=REGRESSIONS,
                   help="where inputs that break a decoder are saved")
    p.add_argument("--timeout", type=int, default=30, help="seconds one input may take")
    p.add_argument("--rss-limit-mb", type=int, default=2048)
    p.add_argument("--nice", type=int, default=0, help="niceness of the workers")
    p.add_argument("--known", action="append", default=[], metavar="SIGNATURE",
                   help="a finding already known (not saved, not failing the run)")
    p.add_argument("--libfuzzer", action="append", default=[], metavar="FLAG",
                   help="a libFuzzer flag for the workers, e.g. -use_value_profile=1 "
                        "(repeatable; write it as --libfuzzer=-flag=value)")
    p.add_argument("--replay", nargs="+", type=Path, metavar="FILE",
                   help="replay these files (each through its target)")
    args = p.parse_args(argv)
    if args.replay:
        bad = 0
        for path in args.replay:
            res = replay_file(path)
            bad += res["status"] != "ok"
            print(f"{path.name}: {res['status']} {res['signature']}")
            if res["status"] != "ok":
                print("    " + "\n    ".join(res["detail"].strip().splitlines()[-25:]))
        return 1 if bad else 0
    if not args.target:
        p.error("--target or --replay is needed")
    names = TARGET_NAMES if args.target == "all" else (args.target,)
    if any(n not in TARGET_NAMES for n in names):
        p.error(f"unknown target {args.target!r}")
    tmp = None
    if args.corpus is None:
        tmp = Path(tempfile.mkdtemp(prefix="fedpress-corpus-"))
    base = args.corpus if args.corpus is not None else tmp
    assert base is not None
    summaries = []
    try:
        for name in names:
            s = fuzz_target(name, args.seconds, base / name, args.regressions,
                            timeout=args.timeout, rss_limit_mb=args.rss_limit_mb,
                            nice=args.nice, known=frozenset(args.known),
                            extra=tuple(args.libfuzzer))
            _print_summary(s)
            summaries.append(s)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    report = [asdict(s) | {"execs_per_s": round(s.execs_per_s, 1)} for s in summaries]
    print("SUMMARY " + json.dumps(report), flush=True)
    return 1 if any(not f.known for s in summaries for f in s.findings) else 0


if __name__ == "__main__":
    sys.exit(main())
