"""Decoding a peer's payload in a child process.

Threat model
------------
Some back ends hand the payload to a native library that does not validate it
(SZ2 through hdf5plugin): a crafted stream makes it read out of bounds, crash,
call ``exit()`` or loop. The sender of a frame chooses those bytes, so a server
that decodes such a codec in its own process can be ended or stalled by any
client. :func:`decode_isolated` runs the decoder in a child process instead:

- a crash (signal), an ``exit()``, a closed pipe or a garbled reply ends only
  the child and becomes a :class:`fedpress.FormatError` here;
- the child runs under an address-space limit (``RLIMIT_AS``) and no core
  dumps, and is killed after ``seconds`` of wall-clock time;
- nothing is unpickled on either side: requests and replies are a
  length-prefixed JSON header and raw bytes, and the parent checks the reply's
  status, dtype, shape and byte count against what the frame declares before
  it builds an array;
- the child's stdout and stderr go to a private log file (the protocol uses
  other file descriptors), so a library's chatter cannot corrupt the protocol.

This contains faults; it is not a sandbox against a stream that achieves code
execution in the child (that would run with the user's rights).

How the children are made
-------------------------
Starting Python and importing fedpress takes about a second, too long to pay
after every crafted frame. On POSIX a *fork server* is started once: it
imports fedpress and the registered codecs, never touches peer bytes, and
forks a decoder process on request, handing it a socket to the parent; a
decoder serves many requests and is replaced (a fork: milliseconds) after any
failure. Elsewhere (Windows) each decoder is a fresh interpreter and runs
without resource limits; the time limit still applies.

Children see the parent's ``sys.path`` and the codecs registered by fedpress
and its entry points; a codec registered at run time by other code is known to
them only if its module is listed in ``DecoderPool(preload=...)``.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from .abc import TensorSpec
from .dtypes import dtype_code, dtype_from_code
from .errors import ConfigError, FedpressError, FormatError

__all__ = ["DecoderPool", "decode_isolated", "shutdown"]

_LEN = struct.Struct("<I")
#: largest header either side accepts (an error message is clipped well below it)
_MAX_HEADER = 1 << 20
_MAX_MESSAGE = 2000
#: seconds a child may take to start (imports) or a fork server to answer
START_SECONDS = 120.0
#: seconds to wait for a dead decoder's exit status before killing it
_EXIT_GRACE = 2.0
#: the decoder's own alarm, beyond the parent's limit (for a parent that died)
_ALARM_GRACE = 10.0
#: the children's log is emptied when it grows past this many bytes
_LOG_CAP = 1 << 20
_TAIL = 300
_CAN_FORK = os.name == "posix" and hasattr(socket, "send_fds") and hasattr(os, "fork")
_PATH_ENV = "FEDPRESS_ISOLATE_PATH"

# The child's first lines: move the protocol off fds 0/1 before anything is imported,
# so that output of any library (SZ2 prints to stdout) lands in the log instead.
_BOOTSTRAP = """\
import os, sys
fds = (os.dup(0), os.dup(1)) if sys.argv[1] == "worker" else (int(sys.argv[2]),) * 2
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(2, 1)
os.close(null)
import json
sys.path[:] = json.loads(os.environ.pop("FEDPRESS_ISOLATE_PATH"))
from fedpress.isolate import _child_main
_child_main(sys.argv[1], fds, json.loads(sys.argv[-1]))
"""


class _Dead(Exception):
    """The other end closed the connection (it exited, crashed or was killed)."""


class _Invalid(Exception):
    """The other end sent something that breaks the protocol."""


class _Refused(Exception):
    """The decoder reported an error; it stays usable."""


# --- protocol (both sides) -------------------------------------------------------------

_ReadInto = Callable[[memoryview], "int | None"]
_Write = Callable[[memoryview], "int | None"]


def _write_all(write: _Write, data: Any) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = write(view)
        if not n:
            raise _Dead("short write")
        view = view[n:]


def _read_into(readinto: _ReadInto, view: memoryview) -> int:
    """Fill ``view``; the number of bytes read (fewer at end of stream)."""
    got = 0
    while got < len(view):
        n = readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _encode_header(header: dict[str, Any]) -> bytes:
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return _LEN.pack(len(raw)) + raw


def _send(write: _Write, header: dict[str, Any], *bodies: Any) -> None:
    _write_all(write, _encode_header(header))
    for body in bodies:
        _write_all(write, body)


def _recv(readinto: _ReadInto) -> dict[str, Any]:
    """One header; :class:`_Dead` at end of stream, :class:`_Invalid` if malformed."""
    head = bytearray(_LEN.size)
    if _read_into(readinto, memoryview(head)) < len(head):
        raise _Dead("end of stream")
    (size,) = _LEN.unpack(head)
    if size > _MAX_HEADER:
        raise _Invalid(f"a {size}-byte header")
    raw = bytearray(size)
    if _read_into(readinto, memoryview(raw)) < size:
        raise _Dead("end of stream inside a header")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Invalid("a header that is not JSON") from None
    if not isinstance(obj, dict):
        raise _Invalid("a header that is not a JSON object")
    return obj


def _clip(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw_bytes(a: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, whatever its dtype (bfloat16 included)."""
    flat: Any = a.reshape(-1).view(np.uint8)
    return memoryview(flat)


def _is_int(v: object) -> bool:
    return type(v) is int and v >= 0


# --- the child ---------------------------------------------------------------------------


def _child_main(mode: str, fds: tuple[int, int], opts: dict[str, Any]) -> None:
    """Entry point of a child process (``mode`` is ``"server"`` or ``"worker"``)."""
    _child_setup(opts.get("preload", ()))
    if mode == "server":
        _serve_forks(fds[0])
    else:
        _limit_memory(int(opts["memory"]))
        _serve(fds[0], fds[1])


def _child_setup(preload: Iterable[str]) -> None:
    import importlib

    from .registry import list_codecs

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is for the parent
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the backstop of _alarm
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    for name in preload:
        importlib.import_module(name)
    list_codecs()  # built-in codecs and entry points, once, before any fork


def _limit_memory(memory: int) -> None:
    try:
        import resource
    except ImportError:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        memory = min(memory, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ValueError, OSError):  # platforms that do not enforce it (macOS)
        pass


def _alarm(seconds: float) -> None:
    """Backstop: SIGALRM's default action ends the process, even inside native code."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.0))


def _serve(rfd: int, wfd: int) -> None:
    """Answer decode requests until the parent closes the connection."""
    rin = io.FileIO(rfd, "rb", closefd=False)
    wout = io.FileIO(wfd, "wb", closefd=False)
    _send(wout.write, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            req = _recv(rin.readinto)
            body = _recv_body(rin.readinto, _body_size(req))
        except (_Dead, _Invalid):
            return
        header, out = _answer(req, body)
        try:
            _send(wout.write, header, out)
        except (_Dead, OSError):
            return


def _body_size(req: dict[str, Any]) -> int:
    ref = req.get("reference")
    return int(req["nbytes"]) + (int(ref["nbytes"]) if ref else 0)


def _recv_body(readinto: _ReadInto, size: int) -> bytearray | None:
    """The request's bytes, or None if they do not fit the memory limit (then drained)."""
    try:
        body = bytearray(size)
    except MemoryError:
        chunk = memoryview(bytearray(1 << 16))
        while size:
            n = _read_into(readinto, chunk[: min(size, len(chunk))])
            if not n:
                raise _Dead("end of stream inside a request") from None
            size -= n
        return None
    if _read_into(readinto, memoryview(body)) < size:
        raise _Dead("end of stream inside a request")
    return body


def _answer(req: dict[str, Any], body: bytearray | None) -> tuple[dict[str, Any], memoryview]:
    empty = memoryview(b"")
    _alarm(float(req["seconds"]) + _ALARM_GRACE)
    try:
        if body is None:
            raise MemoryError
        out = _decode_request(req, body)
    except MemoryError:
        return {"ok": False, "error": "out of memory (the decoder process's address-space "
                                      "limit)"}, empty
    except FedpressError as exc:
        return {"ok": False, "error": _clip(str(exc))}, empty
    except Exception as exc:  # a codec's own error on bytes it cannot parse
        return {"ok": False, "error": _clip(f"{type(exc).__name__}: {exc}")}, empty
    finally:
        _alarm(0)
    header = {"ok": True, "dtype": dtype_code(out.dtype), "shape": list(out.shape),
              "nbytes": out.nbytes}
    return header, _raw_bytes(out)


def _decode_request(req: dict[str, Any], body: bytearray) -> np.ndarray:
    from .abc import StatefulCodec
    from .registry import codec_from_config

    spec = TensorSpec(tuple(req["shape"]), dtype_from_code(req["dtype"]))
    n = int(req["nbytes"])
    kw: dict[str, Any] = {}
    if req.get("reference"):
        ref = req["reference"]
        kw["reference"] = np.frombuffer(body, dtype=dtype_from_code(ref["dtype"]),
                                        offset=n).reshape(ref["shape"])
    codec = codec_from_config(req["config"])
    if isinstance(codec, StatefulCodec):
        raise FormatError(f"codec {codec.codec_id!r} keeps state between rounds; it cannot "
                          "be decoded in isolation")
    if kw and not codec.takes_reference:
        raise FormatError(f"codec {codec.codec_id!r} takes no reference")
    out = np.ascontiguousarray(codec.decode(memoryview(body)[:n], spec, **kw))
    if out.shape != spec.shape or out.dtype != spec.dtype:
        raise FormatError(f"the decoder returned {out.dtype}{out.shape}, the frame declares "
                          f"{spec.dtype}{spec.shape}")
    return out


def _serve_forks(ctrl_fd: int) -> None:
    """The fork server's loop: fork decoders, report their exit status."""
    ctrl = socket.socket(fileno=ctrl_fd)
    children: set[int] = set()
    warmed: set[str] = set()
    _send(ctrl.send, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            msg, fds = _recv_command(ctrl)
        except (_Dead, _Invalid, OSError):
            break
        reply: dict[str, Any]
        if msg.get("op") == "fork" and len(fds) == 1:
            _warm(msg.get("warm", ()), warmed)
            reply = {"pid": _fork_decoder(ctrl, fds[0], int(msg["memory"]), children)}
        elif msg.get("op") == "wait" and msg.get("pid") in children:
            children.discard(msg["pid"])
            reply = {"status": _reap(msg["pid"])}
        else:
            for fd in fds:
                os.close(fd)
            reply = {"error": "unknown command"}
        _send(ctrl.send, reply)
    for pid in children:  # the parent is gone: so are its decoders
        _kill_pid(pid)
        _reap(pid)


def _recv_command(ctrl: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One command and the descriptors sent with it (they come with its first bytes)."""
    head, fds, _flags, _addr = socket.recv_fds(ctrl, _LEN.size, 1)
    if not head:
        raise _Dead("end of stream")
    pending = bytearray(head)

    def readinto(view: memoryview) -> int:
        if pending:
            n = min(len(view), len(pending))
            view[:n] = pending[:n]
            del pending[:n]
            return n
        return ctrl.recv_into(view)

    return _recv(readinto), fds


def _warm(ids: Iterable[str], warmed: set[str]) -> None:
    """Import the back ends of ``ids`` here, once, so every forked decoder has them."""
    from .registry import codec_class

    for cid in ids:
        if not isinstance(cid, str) or cid in warmed:
            continue
        warmed.add(cid)
        try:
            codec_class(cid).from_config({}).check_available()
        except Exception:  # a missing library is the decoder's error to report
            pass


def _fork_decoder(ctrl: socket.socket, chan_fd: int, memory: int, children: set[int]) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            ctrl.close()
            _limit_memory(memory)
            _serve(chan_fd, chan_fd)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)  # never return into the server's loop
    os.close(chan_fd)
    children.add(pid)
    return pid


def _reap(pid: int) -> int | None:
    """Exit status of ``pid`` (negative: the signal), killing it after a grace period."""
    deadline = time.monotonic() + _EXIT_GRACE
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                _kill_pid(pid)
                return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            time.sleep(0.001)
    except ChildProcessError:
        return None


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- the parent ---------------------------------------------------------------------------


class _Watchdog:
    """Calls ``kill`` if the ``with`` block lasts longer than ``seconds``."""

    def __init__(self, seconds: float, kill: Callable[[], None]) -> None:
        self.fired = False
        self._kill = kill
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self._kill()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()


class _Log:
    """The file that receives the children's stdout and stderr."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.file = tempfile.TemporaryFile()
        if os.name == "posix":  # every writer appends, so emptying it is safe
            import fcntl

            flags = fcntl.fcntl(self.file.fileno(), fcntl.F_GETFL)
            fcntl.fcntl(self.file.fileno(), fcntl.F_SETFL, flags | os.O_APPEND)

    def mark(self) -> int:
        try:
            size = os.fstat(self.file.fileno()).st_size
            if size > _LOG_CAP:
                os.ftruncate(self.file.fileno(), 0)
                return 0
        except (OSError, ValueError):  # closed with its pool
            return 0
        return size

    def since(self, mark: int) -> str:
        """The last bytes written after ``mark``, as one printable line."""
        try:
            with self._lock:
                size = os.fstat(self.file.fileno()).st_size
                start = max(mark, size - _TAIL)
                self.file.seek(start)
                raw = self.file.read(max(size - start, 0))
        except (OSError, ValueError):
            return ""
        text = raw.decode("utf-8", "replace")
        return " ".join("".join(c if c.isprintable() else " " for c in text).split())

    def close(self) -> None:
        self.file.close()


def _signal_name(num: int) -> str:
    try:
        return f"signal {num} ({signal.Signals(num).name})"
    except ValueError:
        return f"signal {num}"


class _Worker:
    """One decoder process as the parent sees it; subclasses say how it lives and dies."""

    def __init__(self, memory: int, log: _Log) -> None:
        self.memory = memory
        self.log = log
        self.usable = True
        self.closed = False
        self._start_mark = log.mark()

    # how the subclasses talk, kill and learn the exit status
    def _readinto(self, view: memoryview) -> int | None:
        raise NotImplementedError

    def _write(self, view: memoryview) -> int | None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def _exit_status(self) -> int | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def forget(self) -> None:
        """Drop the connection without touching the process (in a forked copy of the parent)."""
        raise NotImplementedError

    def handshake(self, seconds: float) -> None:
        """Wait for the child's ``ready``; FormatError (naming the cause) if it does not come."""
        failure: Exception | None = None
        with _Watchdog(seconds, self.kill) as dog:
            try:
                if _recv(self._readinto).get("ready") is not True:
                    failure = _Invalid("a greeting that is not 'ready'")
            except (_Dead, _Invalid, OSError) as exc:
                failure = exc
        if failure is not None:
            self.usable = False
            if dog.fired:
                what = f"took longer than {seconds:g} s"
            elif isinstance(failure, _Invalid):
                self.kill()
                what = f"sent {failure}"
            else:
                what = self._fate()
            self.kill()
            self.close()
            raise FormatError(_with_output(f"could not start the decoder process: it {what}",
                                           self.log.since(self._start_mark)))

    def decode(self, cid: str, header: bytes, bodies: Sequence[memoryview],
               spec: TensorSpec, seconds: float) -> np.ndarray:
        """One request; FormatError for anything but a valid array of ``spec``."""
        mark = self.log.mark()
        out: np.ndarray | None = None
        refused: str | None = None
        failure: Exception | None = None
        self.usable = False  # until the exchange completes (not on KeyboardInterrupt)
        with _Watchdog(seconds, self.kill) as dog:
            try:
                out = self._exchange(header, bodies, spec)
            except _Refused as exc:
                refused = str(exc)
            except (_Dead, _Invalid, OSError) as exc:
                failure = exc
        # a watchdog that fired killed the child, perhaps just after a complete reply
        self.usable = failure is None and not dog.fired
        if out is not None:
            return out
        if refused is not None:
            raise FormatError(f"codec {cid!r}: {refused}")
        if dog.fired:
            what = f"exceeded {seconds:g} s and was killed"
        elif isinstance(failure, _Invalid):
            self.kill()
            what = f"sent an invalid reply ({failure})"
        else:
            what = self._fate()
        raise FormatError(_with_output(f"codec {cid!r}: the decoder process {what}",
                                       self.log.since(mark)))

    def _exchange(self, header: bytes, bodies: Sequence[memoryview],
                  spec: TensorSpec) -> np.ndarray:
        _write_all(self._write, header)
        for body in bodies:
            _write_all(self._write, body)
        reply = _recv(self._readinto)
        if reply.get("ok") is False:
            error = reply.get("error")
            if not isinstance(error, str):
                raise _Invalid("an error without a message")
            raise _Refused(_clip(error))
        _check_reply(reply, spec)
        out = np.empty(spec.shape, dtype=spec.dtype)
        if _read_into(self._readinto, _raw_bytes(out)) < spec.nbytes:
            raise _Dead("end of stream inside the result")
        return out

    def _fate(self) -> str:
        """How the child ended, after the connection closed."""
        status = self._exit_status()
        if status is None:
            return "closed its connection"
        if status < 0:
            return f"died with {_signal_name(-status)}"
        return f"exited with status {status}"


def _check_reply(reply: dict[str, Any], spec: TensorSpec) -> None:
    if reply.get("ok") is not True:
        raise _Invalid("no status")
    dtype, shape, nbytes = reply.get("dtype"), reply.get("shape"), reply.get("nbytes")
    if not (_is_int(dtype) and isinstance(shape, list) and all(_is_int(d) for d in shape)
            and _is_int(nbytes)):
        raise _Invalid("a result without a valid dtype, shape and size")
    if dtype != dtype_code(spec.dtype) or tuple(shape) != tuple(spec.shape):
        raise _Invalid(f"dtype code {dtype} shape {tuple(shape)} where the frame declares "
                       f"{spec.dtype}{spec.shape}")
    if nbytes != spec.nbytes:
        raise _Invalid(f"{nbytes} bytes where {spec.dtype}{spec.shape} takes {spec.nbytes}")


def _with_output(message: str, output: str) -> str:
    return f"{message}; its output: {output!r}" if output else message


class _SpawnedWorker(_Worker):
    """A decoder that is a fresh interpreter of its own (where fork is not available)."""

    def __init__(self, memory: int, log: _Log, preload: Sequence[str]) -> None:
        super().__init__(memory, log)
        opts = json.dumps({"memory": memory, "preload": list(preload)})
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, "worker", opts], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log.file, bufsize=0, env=_child_env(),
            start_new_session=os.name == "posix")
        self.pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in: Any = self.proc.stdin  # unbuffered: io.FileIO
        self._out: Any = self.proc.stdout

    def _readinto(self, view: memoryview) -> int | None:
        return self._out.readinto(view)

    def _write(self, view: memoryview) -> int | None:
        return self._in.write(view)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def _exit_status(self) -> int | None:
        try:
            return self.proc.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for f in (self._in, self._out):
            try:
                f.close()
            except OSError:
                pass
        try:  # it exits at end of input
            self.proc.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()

    def forget(self) -> None:
        self.closed = True
        self._in.close()
        self._out.close()


class _ForkedWorker(_Worker):
    """A decoder forked by the fork server, talking to the parent over its own socket."""

    def __init__(self, memory: int, log: _Log, server: _ForkServer, pid: int,
                 sock: socket.socket) -> None:
        super().__init__(memory, log)
        self.server, self.pid, self.sock = server, pid, sock
        self._status_known = False
        self._status: int | None = None

    def _readinto(self, view: memoryview) -> int | None:
        return self.sock.recv_into(view)

    def _write(self, view: memoryview) -> int | None:
        return self.sock.send(view)

    def kill(self) -> None:
        if not self._status_known:  # not reaped yet, so the pid is still this child's
            _kill_pid(self.pid)

    def _exit_status(self) -> int | None:
        if not self._status_known:
            self._status = self.server.wait(self.pid)
            self._status_known = True
        return self._status

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock.close()  # it exits at end of input
        self._exit_status()

    def forget(self) -> None:
        self.closed = True
        self.sock.close()


class _ForkServer:
    """The process that forks decoders; it never sees a peer's bytes."""

    def __init__(self, log: _Log, preload: Sequence[str]) -> None:
        self.log = log
        self._lock = threading.Lock()
        mark = log.mark()
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        opts = json.dumps({"preload": list(preload)})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, "server", str(child.fileno()), opts],
                stdin=subprocess.DEVNULL, stdout=log.file, stderr=log.file,
                pass_fds=(child.fileno(),), env=_child_env(), start_new_session=True)
        finally:
            child.close()
        with _Watchdog(START_SECONDS, self.kill) as dog:
            try:
                ok = _recv(self.sock.recv_into).get("ready") is True
            except (_Dead, _Invalid, OSError):
                ok = False
        if not ok:
            self.close()
            what = f"took longer than {START_SECONDS:g} s" if dog.fired else "failed"
            raise FormatError(_with_output(f"could not start the decoder fork server: it {what}",
                                           self.log.since(mark)))

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass

    def _command(self, msg: dict[str, Any], fds: Sequence[int] = ()) -> dict[str, Any]:
        with self._lock, _Watchdog(START_SECONDS, self.kill):
            socket.send_fds(self.sock, [_encode_header(msg)], list(fds))
            return _recv(self.sock.recv_into)

    def fork(self, memory: int, warm: Sequence[str]) -> tuple[int, socket.socket]:
        """A new decoder's pid and the parent's end of its socket."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            reply = self._command({"op": "fork", "memory": memory, "warm": list(warm)},
                                  [theirs.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        pid = reply.get("pid")
        if not isinstance(pid, int) or not _is_int(pid):
            mine.close()
            raise _Invalid("the fork server did not name the new decoder")
        return pid, mine

    def wait(self, pid: int) -> int | None:
        """Exit status of decoder ``pid`` (killed after a grace period); None if unknown."""
        try:
            status = self._command({"op": "wait", "pid": pid}).get("status")
        except (_Dead, _Invalid, OSError):
            return None
        return status if type(status) is int else None

    def close(self) -> None:
        self.sock.close()  # it kills its decoders and exits at end of input
        try:
            self.proc.wait(_EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()

    def forget(self) -> None:
        self.sock.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env[_PATH_ENV] = json.dumps(sys.path)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")  # no BLAS thread pools: less address space, safe fork
    return env


def _codec_id(config: dict[str, Any]) -> str:
    cid = config.get("id") if isinstance(config, dict) else None
    if not isinstance(cid, str):
        raise FormatError("codec config must be an object with a string 'id'")
    return cid


def _request(config: dict[str, Any], payload: bytes | memoryview, spec: TensorSpec,
             seconds: float, reference: np.ndarray | None) -> tuple[bytes, list[memoryview]]:
    view = memoryview(payload)
    if not view.c_contiguous:
        view = memoryview(bytes(view))
    view = view.cast("B")
    header: dict[str, Any] = {"config": config, "dtype": dtype_code(spec.dtype),
                              "shape": [int(d) for d in spec.shape], "nbytes": len(view),
                              "seconds": seconds}
    bodies = [view]
    if reference is not None:
        ref = np.ascontiguousarray(reference)
        header["reference"] = {"dtype": dtype_code(ref.dtype), "shape": list(ref.shape),
                               "nbytes": ref.nbytes}
        bodies.append(_raw_bytes(ref))
    try:
        return _encode_header(header), bodies
    except (TypeError, ValueError) as exc:
        raise FormatError(f"codec config cannot be sent to a decoder process: {exc}") from None


class DecoderPool:
    """Decoder processes for :func:`decode_isolated`, reused across calls.

    Parameters
    ----------
    max_workers : int
        Decodes that run at once (one process each); more callers wait. Idle
        decoders are kept up to this number.
    preload : sequence of str
        Modules every child imports at start, e.g. one that registers a codec
        at run time.
    fork_server : bool, optional
        Fork decoders from a fork server (the default where ``os.fork`` and
        ``socket.send_fds`` exist) or start each as a fresh interpreter.

    Notes
    -----
    Thread-safe. Children end when the pool is closed, at interpreter exit, and
    when this process dies (their input closes; a stalled decoder's own alarm
    ends it ``seconds`` + 10 s after its request began).
    """

    def __init__(self, max_workers: int = 4, preload: Sequence[str] = (),
                 fork_server: bool | None = None) -> None:
        if max_workers < 1:
            raise ConfigError("max_workers must be at least 1")
        if fork_server and not _CAN_FORK:
            raise ConfigError("a fork server needs os.fork and socket.send_fds (POSIX)")
        self.max_workers = max_workers
        self.preload = tuple(preload)
        self.fork_server = _CAN_FORK if fork_server is None else fork_server
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._server: _ForkServer | None = None
        self._log: _Log | None = None
        self._warm: set[str] = set()
        self._closed = False
        self._pid = os.getpid()

    def decode(self, config: dict[str, Any], payload: bytes | memoryview, spec: TensorSpec,
               *, memory_bytes: int, seconds: float,
               reference: np.ndarray | None = None) -> np.ndarray:
        """Decode in a child process; see :func:`decode_isolated`."""
        _check_limits(memory_bytes, seconds)
        cid = _codec_id(config)
        header, bodies = _request(config, payload, spec, seconds, reference)
        with self._slots:
            worker = self._acquire(memory_bytes, cid)
            try:
                return worker.decode(cid, header, bodies, spec, seconds)
            finally:
                self._release(worker)

    def _acquire(self, memory: int, cid: str) -> _Worker:
        with self._lock:
            if self._closed:
                raise FormatError(f"codec {cid!r}: the isolated decoder pool is closed")
            self._warm.add(cid)
            for i in range(len(self._idle) - 1, -1, -1):
                if self._idle[i].memory == memory:
                    return self._idle.pop(i)
            if self._log is None:
                self._log = _Log()
        worker = self._start(memory)
        with self._lock:
            self._live.add(worker)
        return worker

    def _start(self, memory: int) -> _Worker:
        assert self._log is not None
        try:
            if self.fork_server:
                worker: _Worker = self._fork(memory)
            else:
                worker = _SpawnedWorker(memory, self._log, self.preload)
        except OSError as exc:  # no processes or descriptors left
            raise FormatError(f"could not start a decoder process: {exc}") from exc
        worker.handshake(START_SECONDS)
        return worker

    def _fork(self, memory: int) -> _ForkedWorker:
        """A decoder from the fork server (started again, once, if it has died)."""
        assert self._log is not None
        with self._lock:
            warm = sorted(self._warm)
        for attempt in (1, 2):
            server = self._fork_server()
            try:
                pid, sock = server.fork(memory, warm)
                return _ForkedWorker(memory, self._log, server, pid, sock)
            except (_Dead, _Invalid, OSError):
                with self._lock:
                    if self._server is server:
                        self._server = None
                server.kill()
                server.close()
                if attempt == 2:
                    raise FormatError("the decoder fork server failed twice") from None
        raise AssertionError("unreachable")

    def _fork_server(self) -> _ForkServer:
        with self._lock:
            server = self._server
        if server is not None and server.alive:
            return server
        assert self._log is not None
        fresh = _ForkServer(self._log, self.preload)
        with self._lock:
            old, self._server = self._server, fresh
        if old is not None:
            old.close()
        return fresh

    def _release(self, worker: _Worker) -> None:
        with self._lock:
            keep = (worker.usable and not self._closed and os.getpid() == self._pid
                    and len(self._idle) < self.max_workers)
            if keep:
                self._idle.append(worker)
                return
            self._live.discard(worker)
        if os.getpid() == self._pid:
            if not worker.usable:
                worker.kill()
            worker.close()

    def close(self) -> None:
        """Kill every decoder process of this pool and its fork server."""
        with self._lock:
            self._closed = True
            workers, self._idle, self._live = list(self._live), [], set()
            server, self._server = self._server, None
            log, self._log = self._log, None
        for worker in workers:
            worker.kill()
        if server is not None:
            server.kill()
            server.close()  # its killed decoders are reaped as it exits
        for worker in workers:
            if isinstance(worker, _SpawnedWorker):
                worker.close()
            else:
                worker.forget()
        if log is not None:
            log.close()

    def _after_fork(self) -> None:
        """In a forked copy of this process: drop the parent's children, unharmed."""
        for worker in list(self._live):
            worker.forget()
        if self._server is not None:
            self._server.forget()
        self._reset()


def _check_limits(memory_bytes: int, seconds: float) -> None:
    if not isinstance(memory_bytes, int) or memory_bytes <= 0:
        raise ConfigError(f"memory_bytes must be a positive int, not {memory_bytes!r}")
    if not (isinstance(seconds, (int, float)) and 0 < seconds < float("inf")):
        raise ConfigError(f"seconds must be positive and finite, not {seconds!r}")


_POOLS: weakref.WeakSet[DecoderPool] = weakref.WeakSet()
_DEFAULT: DecoderPool | None = None
_DEFAULT_LOCK = threading.Lock()


def _default_pool() -> DecoderPool:
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None or _DEFAULT._closed:
            _DEFAULT = DecoderPool()
        return _DEFAULT


def decode_isolated(config: dict[str, Any], payload: bytes | memoryview, spec: TensorSpec,
                    *, memory_bytes: int, seconds: float,
                    reference: np.ndarray | None = None) -> np.ndarray:
    """Decode one payload with ``codec_from_config(config)`` in a child process.

    Parameters
    ----------
    config : dict
        The codec's configuration as a frame carries it (a stateless codec).
    payload : bytes or memoryview
        The record's payload (a peer's bytes).
    spec : TensorSpec
        Shape and dtype the frame declares; the result has exactly these.
    memory_bytes : int
        Address-space limit of the child (``RLIMIT_AS``; POSIX only: on Windows
        the child runs without resource limits).
    seconds : float
        Wall-clock limit of this decode; the child is killed past it.
    reference : numpy.ndarray, optional
        The reference of a codec that takes one (sent to the child).

    Returns
    -------
    numpy.ndarray
        A new array of ``spec``.

    Raises
    ------
    FormatError
        For every failure, naming the codec and what happened: the codec's own
        error, the child dying with a signal or exiting, the time limit, an
        invalid reply. The next call starts a new child when needed.
    """
    return _default_pool().decode(config, payload, spec, memory_bytes=memory_bytes,
                                  seconds=seconds, reference=reference)


def shutdown() -> None:
    """Kill the decoder processes of every pool (also done at interpreter exit)."""
    for pool in list(_POOLS):
        pool.close()


def _after_fork_in_child() -> None:
    global _DEFAULT
    for pool in list(_POOLS):
        pool._after_fork()
    _DEFAULT = None


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
