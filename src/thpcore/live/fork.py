"""Running code in other processes: ``fork_and_run`` (a forked child, result pickled back),
``run_fresh`` (a new interpreter: no copy-on-write sharing with the caller's heap) and
``ForkedChild`` (a forked child that exchanges messages with the parent while both live)."""

from __future__ import annotations

import faulthandler
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import time
import traceback


class ChildError(Exception):
    """The child raised an exception that could not be pickled back; carries its traceback."""


class ChildDied(Exception):
    """The child ended without sending a result (killed by a signal or exited early)."""

    def __init__(self, msg, status, signal_=None, exitcode=None):
        super().__init__(msg)
        self.status, self.signal, self.exitcode = status, signal_, exitcode


def _quiet_child() -> None:
    """In a forked child: no core file and no faulthandler dump when it dies of a signal (an
    expected outcome of some probes; the parent reports it as ChildDied)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    try:
        faulthandler.disable()
    except Exception:  # pragma: no cover
        pass


def fork_and_run(fn, *args, timeout: float = 120.0, **kwargs):
    """Fork; run fn(*args, **kwargs) in the child; return its result to the parent.

    The result travels pickled over a pipe; the child always leaves with os._exit (no atexit
    handlers, no pytest teardown in the child).  An exception raised in the child is re-raised
    in the parent (the child's traceback is attached as a note) or, if it cannot be pickled,
    turned into ChildError.  A child that dies without a result (e.g. SIGSEGV) raises ChildDied
    with .signal / .exitcode set.  After `timeout` seconds the child is SIGKILLed and
    TimeoutError raised.  The child is always reaped.
    """
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            _quiet_child()
            payload = _result_payload(fn, args, kwargs)
            view = memoryview(payload)
            while view:
                n = os.write(w, view)
                view = view[n:]
            os.close(w)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    # parent
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"child {pid} ran longer than {timeout}s")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            data = os.read(r, 1 << 16)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    if not data:
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        what = f"signal {signal.Signals(sig).name}" if sig else f"exit code {code}"
        raise ChildDied(f"child {pid} sent no result ({what})", status, sig, code)
    return _child_result(*pickle.loads(data))


def run_fresh(fn, *args, timeout: float = 120.0, **kwargs):
    """Run fn(*args, **kwargs) in a new interpreter (not a fork) and return its result.

    A forked child shares its parent's heap copy-on-write; where that heap holds THPs (numpy
    madvises its large buffers MADV_HUGEPAGE, so a test process usually has some) the child's
    first write to one splits the PMD and lands in the machine-wide thp_split_pmd count.  A
    probe that counts vmstat events runs here instead.  fn is pickled by reference: it must be
    importable with the caller's sys.path.  Errors come back as with fork_and_run.
    """
    if getattr(fn, "__module__", None) == "__main__":
        raise ValueError("run_fresh needs a function the new interpreter can import by name; "
                         f"{fn!r} lives in __main__ (use fork_and_run, or move it to a module)")
    job = pickle.dumps((fn, args, kwargs))
    head = pickle.dumps(list(sys.path))
    code = "import sys; from thpcore.live.fork import _fresh_main; _fresh_main()"
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.run([sys.executable, "-c", code],
                          input=struct.pack("<Q", len(head)) + head + job,
                          stdout=subprocess.PIPE, timeout=timeout, check=False)
    if not proc.stdout:
        sig = -proc.returncode if proc.returncode < 0 else None
        what = f"signal {signal.Signals(sig).name}" if sig else f"exit code {proc.returncode}"
        raise ChildDied(f"fresh child sent no result ({what})", proc.returncode, sig,
                        None if sig else proc.returncode)
    return _child_result(*pickle.loads(proc.stdout))


def _fresh_main() -> None:
    """The new interpreter's side of run_fresh: job on stdin, result pickled on stdout (the
    function's own output, at the fd level too, goes to stderr)."""
    data = sys.stdin.buffer.read()
    (n,) = struct.unpack_from("<Q", data)
    sys.path[:] = pickle.loads(data[8:8 + n])
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _quiet_child()
    try:
        fn, args, kwargs = pickle.loads(data[8 + n:])
    except BaseException:  # noqa: BLE001
        fn, args, kwargs = _raise_again, (traceback.format_exc(),), {}
    out.write(_result_payload(fn, args, kwargs))
    out.flush()
    os._exit(0)


def _raise_again(tb: str):
    raise ChildError("could not load the job in the fresh child:\n" + tb)


def _result_payload(fn, args, kwargs) -> bytes:
    """The pickled (ok, value) message a child sends: fn's result, or its exception with the
    traceback (or only the traceback when the exception cannot be pickled)."""
    try:
        return pickle.dumps((True, fn(*args, **kwargs)))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        tb = traceback.format_exc()
        try:
            payload = pickle.dumps((False, (e, tb)))
            pickle.loads(payload)
            return payload
        except BaseException:
            return pickle.dumps((False, (None, tb)))


def _child_result(ok: bool, value):
    """A child's (ok, value) message: its return value, or its exception raised here."""
    if ok:
        return value
    exc, tb = value
    if exc is None:
        raise ChildError("exception in child:\n" + tb)
    if hasattr(exc, "add_note"):
        exc.add_note("raised in the child:\n" + tb)
    raise exc


class Channel:
    """Length-prefixed pickles over a pair of pipe fds (one direction each)."""

    def __init__(self, rfd: int, wfd: int):
        self.rfd, self.wfd = rfd, wfd

    def _send_raw(self, obj) -> None:
        data = pickle.dumps(obj)
        view = memoryview(struct.pack("<Q", len(data)) + data)
        while view:
            view = view[os.write(self.wfd, view):]

    def _recv_exact(self, n: int, deadline: float | None) -> bytes:
        buf = b""
        while len(buf) < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                    raise TimeoutError("no message in time")
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                raise EOFError("peer closed the channel")
            buf += chunk
        return buf

    def _recv_raw(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        (n,) = struct.unpack("<Q", self._recv_exact(8, deadline))
        return pickle.loads(self._recv_exact(n, deadline))

    def send(self, obj) -> None:
        self._send_raw(("msg", obj))

    def recv(self, timeout: float | None = 60.0):
        kind, obj = self._recv_raw(timeout)
        if kind != "msg":
            raise EOFError(f"peer finished instead of sending ({kind})")
        return obj

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


class ForkedChild:
    """A forked child running ``fn(chan, *args, **kwargs)`` that can talk to the parent while
    both are alive (e.g. child writes, parent inspects its own smaps, parent tells child to go).

        with ForkedChild(fn) as child:
            x = child.recv()        # whatever fn sent with chan.send(...)
            child.send("go")        # fn receives it with chan.recv()
            result = child.join()   # fn's return value (its exception is re-raised)

    Leaving the ``with`` block without join() SIGKILLs and reaps the child.
    """

    def __init__(self, fn, *args, **kwargs):
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(p2c_w)
                os.close(c2p_r)
                _quiet_child()
                chan = Channel(p2c_r, c2p_w)
                try:
                    res = ("ret", (True, fn(chan, *args, **kwargs)))
                except BaseException as e:  # noqa: BLE001
                    tb = traceback.format_exc()
                    try:
                        pickle.loads(pickle.dumps(e))
                        res = ("ret", (False, (e, tb)))
                    except BaseException:
                        res = ("ret", (False, (None, tb)))
                try:
                    chan._send_raw(res)
                except BaseException:
                    chan._send_raw(("ret", (False, (None, "result could not be pickled"))))
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(p2c_r)
        os.close(c2p_w)
        self.pid = pid
        self.chan = Channel(c2p_r, p2c_w)
        self.status = None

    def send(self, obj) -> None:
        self.chan.send(obj)

    def recv(self, timeout: float | None = 60.0):
        try:
            return self.chan.recv(timeout)
        except EOFError:
            self._died_check()
            raise

    def _died_check(self):
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                return
            self.status = status
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            raise ChildDied(f"child {self.pid} killed by {signal.Signals(sig).name}",
                            self.status, sig, None)

    def join(self, timeout: float = 60.0):
        """Wait for fn's return value and reap the child."""
        try:
            while True:
                kind, obj = self.chan._recv_raw(timeout)
                if kind == "ret":
                    break
        except (EOFError, TimeoutError):
            self._kill_and_reap()
            sig = os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None
            code = os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None
            raise ChildDied(f"child {self.pid} sent no result", self.status, sig, code)
        finally:
            self.chan.close()
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        return _child_result(*obj)

    def _kill_and_reap(self) -> None:
        """SIGKILL the child unless it was reaped already, and reap it."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, self.status = os.waitpid(self.pid, 0)

    def kill(self) -> None:
        self._kill_and_reap()
        self.chan.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
