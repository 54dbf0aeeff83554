"""Decoding in a child process (fedpress.isolate): round trips, crashes, exits, stalls,
memory, forged replies and mutated SZ2 streams, each ending in FormatError while the
test process survives and the next call works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import fedpress
from fedpress.abc import TensorSpec
from fedpress.errors import FormatError
from fedpress.frame import Limits, unpack
from fedpress.isolate import DecoderPool, decode_isolated

from .common import available

GIB = 1 << 30
POSIX = os.name == "posix"
FAULTS = "fedpress_isolate_test_faults"

# A codec registered only inside the decoder processes of the ``faults`` pool (the test
# process never imports this module, so no frame can name it here). Its config says what
# its decode does.
FAULTS_SOURCE = '''
"""Test-only codec whose decode misbehaves on request."""
import os
import signal
import stat
import struct
import sys
import time

import numpy as np

from fedpress.abc import Codec
from fedpress.errors import FormatError
from fedpress.registry import register_codec


def _forge(raw):
    """Write ``raw`` on this decoder's connection to the parent, as if it were the reply."""
    for fd in range(3, 256):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, raw)
                return
        except OSError:
            pass


@register_codec
class FaultCodec(Codec):
    codec_id = "isolate-test-fault"
    config_keys = ("action", "arg")

    def __init__(self, action="echo", arg=""):
        self.action, self.arg = action, arg

    def encode(self, x):
        return np.ascontiguousarray(x).tobytes()

    def decode(self, payload, spec):
        act = self.action
        if act == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        elif act == "exit0":
            os._exit(0)
        elif act == "sysexit":
            sys.exit(3)
        elif act == "stall":
            time.sleep(600)
        elif act == "alloc":
            np.ones(2 << 30, dtype=np.uint8)
        elif act == "raise":
            raise FormatError("bad bytes at offset 3")
        elif act == "keyerror":
            raise KeyError("boom")
        elif act == "chatter":
            print("Wrong version", flush=True)
            os.write(1, b"noise on fd 1\\n")
            os.write(2, b"noise on fd 2\\n")
        elif act == "wrong-shape":
            return np.zeros(spec.size + 1, spec.dtype)
        elif act == "pid":
            return np.full(spec.shape, os.getpid(), dtype=spec.dtype)
        elif act == "forge":
            head = self.arg.encode()
            _forge(struct.pack("<I", len(head)) + head)
        elif act == "forge-raw":
            _forge(bytes.fromhex(self.arg))
        return np.frombuffer(payload, dtype=spec.dtype).reshape(spec.shape).copy()
'''


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderPool]:
    """A pool whose decoders know the test codec (its module is preloaded there)."""
    folder = tmp_path_factory.mktemp("isolate")
    (folder / f"{FAULTS}.py").write_text(FAULTS_SOURCE)
    sys.path.insert(0, str(folder))  # the children start with this process's sys.path
    pool = DecoderPool(max_workers=2, preload=[FAULTS])
    try:
        yield pool
    finally:
        pool.close()
        sys.path.remove(str(folder))


def fault(pool: DecoderPool, action: str, x: np.ndarray | None = None, *,
          memory: int = 4 * GIB, seconds: float = 30.0, arg: str = "") -> np.ndarray:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) if x is None else x
    return pool.decode({"id": "isolate-test-fault", "action": action, "arg": arg},
                       x.tobytes(), TensorSpec.of(x), memory_bytes=memory, seconds=seconds)


def child_pid(pool: DecoderPool, memory: int = 4 * GIB) -> int:
    return int(fault(pool, "pid", np.zeros(1, np.int64), memory=memory)[0])


def assert_works(pool: DecoderPool, memory: int = 4 * GIB) -> None:
    x = np.linspace(-1, 1, 20, dtype=np.float64).reshape(4, 5)
    y = fault(pool, "echo", x, memory=memory)
    assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)


# --- the real codecs ---------------------------------------------------------------


@pytest.mark.parametrize(("codec", "x"), [
    ("fpz", np.random.default_rng(0).standard_normal((3, 40, 5)).astype(np.float32)),
    ("zstd", np.arange(-50, 50, dtype=np.int64).reshape(10, 10)),
    ("zstd", np.zeros((0, 3), dtype=np.float32)),
])
def test_round_trip_equals_decompress(codec: str, x: np.ndarray) -> None:
    blob = fedpress.compress(x, codec=codec)
    frame = unpack(blob)
    rec = frame.records[0]
    y = decode_isolated(frame.codecs[0], rec.payload, rec.spec, memory_bytes=4 * GIB,
                        seconds=60)
    z = fedpress.decompress(blob)
    assert y.dtype == z.dtype and y.shape == z.shape
    assert y.tobytes() == z.tobytes()


def test_reference_travels_to_the_child() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(300).astype(np.float32)
    x = ref + 0.01 * rng.standard_normal(300).astype(np.float32)
    codec = fedpress.make_codec("fpz", "abs", 1e-3)
    spec = TensorSpec.of(x)
    payload = codec.encode(x, reference=ref)
    y = decode_isolated(codec.get_config(), payload, spec, memory_bytes=4 * GIB, seconds=60,
                        reference=ref)
    assert np.array_equal(y, codec.decode(payload, spec, reference=ref))
    assert np.max(np.abs(y - x)) <= 1e-3


def test_codec_error_comes_back_as_format_error() -> None:
    blob = fedpress.compress(np.ones(100, np.float32), codec="zstd")
    frame = unpack(blob)
    rec = frame.records[0]
    with pytest.raises(FormatError, match="zstd"):
        decode_isolated(frame.codecs[0], bytes(rec.payload)[:-3], rec.spec,
                        memory_bytes=4 * GIB, seconds=60)
    with pytest.raises(FormatError, match="not registered"):
        decode_isolated({"id": "no-such-codec"}, b"", rec.spec, memory_bytes=4 * GIB,
                        seconds=60)


def test_sz2_mutations_never_reach_this_process() -> None:
    if not available(("sz2",)):
        pytest.skip("sz2 (h5py + hdf5plugin) is not available")
    x = np.random.default_rng(2).standard_normal((64, 50)).astype(np.float32)
    blob = fedpress.compress(x, codec="sz2")
    frame = unpack(blob)
    cfg, rec = frame.codecs[0], frame.records[0]
    payload = bytes(rec.payload)
    rng = np.random.default_rng(3)
    outcomes = {"array": 0, "error": 0, "process": 0}
    for _ in range(50):
        mutated = bytearray(payload)
        for _ in range(int(rng.integers(1, 4))):
            mutated[int(rng.integers(0, len(mutated)))] = int(rng.integers(0, 256))
        try:
            y = decode_isolated(cfg, bytes(mutated), rec.spec, memory_bytes=4 * GIB,
                                seconds=20)
        except FormatError as exc:
            outcomes["process" if "decoder process" in str(exc) else "error"] += 1
        else:
            assert y.shape == rec.spec.shape and y.dtype == rec.spec.dtype
            outcomes["array"] += 1
    assert sum(outcomes.values()) == 50, outcomes
    y = decode_isolated(cfg, payload, rec.spec, memory_bytes=4 * GIB, seconds=20)
    assert np.array_equal(y, fedpress.decompress(blob, Limits(codecs=frozenset({"sz2"}))))


def test_repeat_calls_reuse_the_process() -> None:
    x = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    frame = unpack(fedpress.compress(x, codec="zstd"))
    rec = frame.records[0]
    times = []
    for _ in range(20):
        t = time.perf_counter()
        decode_isolated(frame.codecs[0], rec.payload, rec.spec, memory_bytes=4 * GIB,
                        seconds=60)
        times.append(time.perf_counter() - t)
    # starting a decoder takes a fork at least and an interpreter at most; a reused one
    # costs a round trip over a socket (about a millisecond)
    assert float(np.median(times[1:])) < 0.05, times


# --- faults --------------------------------------------------------------------------


def test_faults_pool_reuses_its_decoder(faults: DecoderPool) -> None:
    assert_works(faults)
    assert child_pid(faults) == child_pid(faults) != os.getpid()


@pytest.mark.skipif(not POSIX, reason="signals")
@pytest.mark.parametrize(("action", "message"), [
    ("segv", r"died with signal 11 \(SIGSEGV\)"),
    ("exit0", "exited with status 0"),
    ("sysexit", "exited with status"),
])
def test_dying_decoder_is_a_format_error(faults: DecoderPool, action: str,
                                         message: str) -> None:
    before = child_pid(faults)
    with pytest.raises(FormatError, match=f"'isolate-test-fault'.*{message}"):
        fault(faults, action)
    assert_works(faults)
    assert child_pid(faults) != before


def test_stall_is_killed_at_the_limit(faults: DecoderPool) -> None:
    t = time.perf_counter()
    with pytest.raises(FormatError, match=r"exceeded 0.5 s"):
        fault(faults, "stall", seconds=0.5)
    assert time.perf_counter() - t < 5
    assert_works(faults)


@pytest.mark.skipif(not POSIX, reason="address-space limits are POSIX-only")
def test_memory_over_the_limit_is_a_format_error(faults: DecoderPool) -> None:
    with pytest.raises(FormatError, match="out of memory"):
        fault(faults, "alloc", memory=GIB)
    assert_works(faults, memory=GIB)


def test_codec_errors_keep_the_decoder(faults: DecoderPool) -> None:
    before = child_pid(faults)
    with pytest.raises(FormatError, match=r"isolate-test-fault.*bad bytes at offset 3"):
        fault(faults, "raise")
    with pytest.raises(FormatError, match="KeyError"):
        fault(faults, "keyerror")
    with pytest.raises(FormatError, match="returned float32"):
        fault(faults, "wrong-shape")
    assert child_pid(faults) == before


def test_library_output_cannot_corrupt_the_protocol(faults: DecoderPool) -> None:
    x = np.arange(6, dtype=np.float32)
    assert np.array_equal(fault(faults, "chatter", x), x)
    assert_works(faults)


@pytest.mark.skipif(not POSIX, reason="forges on the fork server's socket")
@pytest.mark.parametrize("head", [
    {"ok": True, "dtype": 1, "shape": [999], "nbytes": 3996},
    {"ok": True, "dtype": 1, "shape": [3, 4], "nbytes": 47},
    {"ok": True, "dtype": 2, "shape": [3, 4], "nbytes": 96},
    {"ok": True, "dtype": True, "shape": [3, 4], "nbytes": 48},
    {"ok": True, "dtype": 1, "shape": [3.0, 4], "nbytes": 48},
    {"ok": "yes", "dtype": 1, "shape": [3, 4], "nbytes": 48},
    {"ok": False},
    [1, 2],
])
def test_forged_replies_are_refused(faults: DecoderPool, head: object) -> None:
    with pytest.raises(FormatError, match="invalid reply"):
        fault(faults, "forge", arg=json.dumps(head))
    assert_works(faults)


@pytest.mark.skipif(not POSIX, reason="forges on the fork server's socket")
@pytest.mark.parametrize("raw", ["ffffffff", "05000000" + b"[1,2".hex()])
def test_forged_garbage_is_refused(faults: DecoderPool, raw: str) -> None:
    with pytest.raises(FormatError, match="invalid reply"):
        fault(faults, "forge-raw", arg=raw)
    assert_works(faults)


def test_threads_share_a_pool(faults: DecoderPool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    xs = [np.full((5, 7), i, dtype=np.float32) for i in range(16)]
    with ThreadPoolExecutor(4) as ex:
        ys = list(ex.map(lambda x: fault(faults, "echo", x), xs))
    assert all(np.array_equal(x, y) for x, y in zip(xs, ys))


def test_spawned_decoders(faults: DecoderPool) -> None:
    """The path without a fork server (Windows' only one): fresh interpreters."""
    pool = DecoderPool(max_workers=1, preload=[FAULTS], fork_server=False)
    try:
        assert_works(pool)
        with pytest.raises(FormatError, match="exited with status 0"):
            fault(pool, "exit0")
        assert_works(pool)
    finally:
        pool.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_children_end_when_the_parent_dies(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, sys
        import numpy as np
        from fedpress.isolate import _default_pool, decode_isolated
        import fedpress
        from fedpress.frame import unpack
        frame = unpack(fedpress.compress(np.zeros(3, np.int64), codec="zstd"))
        rec = frame.records[0]
        decode_isolated(frame.codecs[0], rec.payload, rec.spec, memory_bytes=1 << 32,
                        seconds=60)
        pool = _default_pool()
        print(pool._server.proc.pid, *(w.pid for w in pool._idle), flush=True)
        os._exit(0)  # no atexit: the children must notice the closed connections
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_running(p) for p in pids)


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_bad_limits_are_config_errors() -> None:
    spec = TensorSpec((1,), np.dtype("float32"))
    with pytest.raises(fedpress.ConfigError):
        decode_isolated({"id": "zstd"}, b"", spec, memory_bytes=0, seconds=1)
    with pytest.raises(fedpress.ConfigError):
        decode_isolated({"id": "zstd"}, b"", spec, memory_bytes=GIB, seconds=float("inf"))


