"""thpcore.live: the real Linux backend (ctypes): madvise / process_madvise / pidfd_open on
real processes, the THP sysfs knobs (with snapshots and a machine-wide lock), /proc readers that
share the simulator's parsers, swap files, and the mapping helpers the differential tests use.

Pure Python + ctypes (numpy, already a thpcore dependency, is used for fast page touching when
it is importable).  Everything here acts only on the calling process, on children it forks, on
the THP sysfs knobs it was asked to change (always restored) and on a swap file it created
itself (always swapped off and deleted).

Main pieces
-----------
``thp_settings(**knobs)``
    Context manager writing knobs under /sys/kernel/mm/transparent_hugepage and restoring every
    saved value on exit, also on error.  Knob names are paths relative to the THP root;
    ``khugepaged__max_ptes_none`` is accepted for ``khugepaged/max_ptes_none`` and
    ``hugepages_2048kB__enabled`` for ``hugepages-2048kB/enabled``.
``swap_file(size_bytes)``
    Context manager: swap file in a fresh temporary directory, mkswap, swapon at a high
    priority; swapoff and delete on exit.  Raises :class:`Unsupported` (a pytest skip when
    pytest is importable) when the swap file cannot be enabled.
``Region``
    An anonymous mapping made with libc ``mmap``: madvise / mprotect / munmap on sub-ranges,
    ``write``/``read`` of the first 32-bit int of every 4 KiB page, ``smaps()`` sums,
    ``vmas()`` per-VMA smaps records, ``pagemap()`` raw entries.
``fork_and_run(fn, *args)``
    Runs ``fn`` in a forked child and returns its (pickled) result; re-raises its exception.
``run_fresh(fn, *args)``
    The same in a new interpreter: no copy-on-write sharing with the caller's (THP-backed)
    heap, so a child that counts machine-wide THP events sees only its own.
``ForkedChild(fn, *args)``
    A forked child that can exchange messages with the parent while both are alive.
``vmstat()``, ``meminfo()``, ``smaps_rollup()``, ``prctl()``, ``kpageflags()``
    /proc readers and thin syscall wrappers.

Observed 6.18 facts worth knowing when writing tests (see the live-probe report):
anonymous mmaps are placed top-down and anonymous VMAs with equal flags merge with their
neighbours, so two Regions made one after the other are often ONE VMA in /proc/self/maps;
a hole munmapped inside a region near mmap_base can be refilled by the interpreter's own
mmaps (use ``Region.at`` far below mmap_base before applying destructive advice to holes), and
a huge madvise length (e.g. 1<<62) applies the advice to every VMA above the start, so
MADV_DONTNEED with it wipes the interpreter (probe such lengths only from a region above [stack]
or in a forked child).  ``Region.smaps()`` refuses (``partial="error"``) to sum a VMA that sticks out of the
region unless told ``partial="include"`` or ``partial="exclude"``.  Use ``Region.aligned()``
(which keeps PROT_NONE guards on both sides) to get an isolated, 2 MiB-aligned VMA.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as _errno
import os
import pickle
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback

from thpcore.proc.pagemap import (KPF_NAMES, PM_FILE, PM_GUARD_REGION, PM_MMAP_EXCLUSIVE,
                                  PM_PFN_MASK, PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP,
                                  PM_SWAP_OFFSET_SHIFT, PM_SWAP_TYPE_MASK, PM_UFFD_WP)
from thpcore.proc.procfs import parse_meminfo
from thpcore.proc.smaps import parse_smaps, parse_smaps_rollup  # one parser, live or simulated

try:  # numpy is a thpcore dependency; fall back to ctypes loops without it
    import numpy as _np
except ImportError:  # pragma: no cover
    _np = None

# Under pytest (already imported by the test run), Unsupported *is* a skip; otherwise a plain
# exception, so the library never imports pytest itself.
_SkipBase = sys.modules["pytest"].skip.Exception if "pytest" in sys.modules else Exception


THP_ROOT = "/sys/kernel/mm/transparent_hugepage"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def _read_pmd_size() -> int:
    try:
        with open(f"{THP_ROOT}/hpage_pmd_size") as f:
            return int(f.read())
    except OSError:
        return 2 * MiB


HPAGE_PMD_SIZE = _read_pmd_size()
HPAGE_PMD_NR = HPAGE_PMD_SIZE // PAGE_SIZE

# <asm-generic/mman-common.h>, x86-64
PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0x0, 0x1, 0x2, 0x4
MAP_SHARED, MAP_PRIVATE = 0x01, 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_FIXED_NOREPLACE = 0x100000
MAP_FAILED = ctypes.c_void_p(-1).value

MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED = 0, 1, 2, 3, 4
MADV_FREE, MADV_REMOVE, MADV_DONTFORK, MADV_DOFORK = 8, 9, 10, 11
MADV_MERGEABLE, MADV_UNMERGEABLE = 12, 13
MADV_HUGEPAGE, MADV_NOHUGEPAGE = 14, 15
MADV_DONTDUMP, MADV_DODUMP = 16, 17
MADV_WIPEONFORK, MADV_KEEPONFORK = 18, 19
MADV_COLD, MADV_PAGEOUT = 20, 21
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23
MADV_DONTNEED_LOCKED = 24
MADV_COLLAPSE = 25
MADV_HWPOISON, MADV_SOFT_OFFLINE = 100, 101
MADV_GUARD_INSTALL, MADV_GUARD_REMOVE = 102, 103

MADV_NAMES = {v: k for k, v in globals().items() if k.startswith("MADV_") and isinstance(v, int)}

# <linux/prctl.h>
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1

SWAP_FLAG_PREFER = 0x8000
SWAP_FLAG_PRIO_MASK = 0x7FFF


# ----------------------------------------------------------------------------- libc

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.madvise.restype = ctypes.c_int
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.mprotect.restype = ctypes.c_int
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong)
_libc.swapon.restype = ctypes.c_int
_libc.swapon.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.swapoff.restype = ctypes.c_int
_libc.swapoff.argtypes = (ctypes.c_char_p,)


def _u(value: int) -> int:
    """Two's-complement wrap to an unsigned machine word (so -4096 means 2**64-4096)."""
    return value & ((1 << 64) - 1)


def raw_madvise(addr: int, length: int, advice: int) -> int:
    """madvise(2) on raw numbers (wrapped to unsigned). Returns 0 or the errno."""
    ctypes.set_errno(0)
    rc = _libc.madvise(_u(addr), _u(length), advice)
    return ctypes.get_errno() if rc != 0 else 0


def raw_mprotect(addr: int, length: int, prot: int) -> int:
    """mprotect(2) on raw numbers. Returns 0 or the errno."""
    ctypes.set_errno(0)
    rc = _libc.mprotect(_u(addr), _u(length), prot)
    return ctypes.get_errno() if rc != 0 else 0


def raw_mlock(addr: int, length: int, lock: bool = True) -> int:
    """mlock(2) (or munlock) on raw numbers. Returns 0 or the errno."""
    fn = _libc.mlock if lock else _libc.munlock
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    ctypes.set_errno(0)
    rc = fn(_u(addr), _u(length))
    return ctypes.get_errno() if rc != 0 else 0


def raw_munmap(addr: int, length: int) -> int:
    """munmap(2) on raw numbers. Returns 0 or the errno."""
    ctypes.set_errno(0)
    rc = _libc.munmap(_u(addr), _u(length))
    return ctypes.get_errno() if rc != 0 else 0


def raw_mmap(length: int, addr: int | None = None, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fd: int = -1, offset: int = 0) -> int:
    """mmap(2); returns the address or raises OSError with the errno."""
    ctypes.set_errno(0)
    res = _libc.mmap(addr or None, _u(length), prot, flags, fd, offset)
    if res is None or res == MAP_FAILED:
        e = ctypes.get_errno()
        raise OSError(e, f"mmap(len={length:#x}, addr={addr}, prot={prot:#x}, flags={flags:#x}): "
                         f"{os.strerror(e)}")
    return res


SYS_mremap = 25 if os.uname().machine == "x86_64" else 216      # aarch64: 216
_libc.syscall.restype = ctypes.c_long


def raw_mremap(old: int, old_len: int, new_len: int, flags: int = 0, new: int = 0) -> tuple[int, int]:
    """mremap(2) on raw numbers: (new address, 0) or (-1, errno)."""
    ctypes.set_errno(0)
    res = _libc.syscall(ctypes.c_long(SYS_mremap), ctypes.c_ulong(_u(old)),
                        ctypes.c_ulong(_u(old_len)), ctypes.c_ulong(_u(new_len)),
                        ctypes.c_ulong(flags), ctypes.c_ulong(_u(new)))
    if res == -1:
        return -1, ctypes.get_errno()
    return _u(res), 0


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2). Returns the non-negative result or raises OSError."""
    ctypes.set_errno(0)
    rc = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({option}, {arg2}, {arg3}, {arg4}, {arg5}): {os.strerror(e)}")
    return rc


# ----------------------------------------------------------------------------- /proc readers

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def vmstat() -> dict[str, int]:
    """/proc/vmstat as {name: int}, in file order."""
    out = {}
    for line in _read("/proc/vmstat").splitlines():
        name, _, val = line.partition(" ")
        out[name] = int(val)
    return out


def vmstat_delta(before: dict[str, int], after: dict[str, int] | None = None,
                 names=None) -> dict[str, int]:
    """after - before (after defaults to now), only non-zero entries unless names is given."""
    after = vmstat() if after is None else after
    if names is not None:
        return {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: after[n] - before.get(n, 0) for n in after if after[n] != before.get(n, 0)}


def meminfo() -> dict[str, int]:
    """/proc/meminfo as {field: value}; values are kB except the HugePages_* counts."""
    return parse_meminfo(_read("/proc/meminfo"))


def mthp_stats(size_kb: int = HPAGE_PMD_SIZE // KiB) -> dict[str, int]:
    """/sys/kernel/mm/transparent_hugepage/hugepages-<size>kB/stats/* as {name: int}."""
    d = f"{THP_ROOT}/hugepages-{size_kb}kB/stats"
    out = {}
    for name in sorted(os.listdir(d)):
        try:
            out[name] = int(_read(f"{d}/{name}"))
        except (OSError, ValueError):
            pass
    return out




def smaps_rollup(pid: str | int = "self") -> dict[str, int]:
    """/proc/<pid>/smaps_rollup as {field: kB} (the header line is skipped)."""
    return parse_smaps_rollup(_read(f"/proc/{pid}/smaps_rollup"))


def maps(pid: str | int = "self") -> list[tuple[int, int, str, str]]:
    """/proc/<pid>/maps as [(start, end, perms, name)]."""
    out = []
    for line in _read(f"/proc/{pid}/maps").splitlines():
        parts = line.split(None, 5)
        s, e = parts[0].split("-")
        out.append((int(s, 16), int(e, 16), parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def decode_pagemap(entry: int) -> dict:
    """Decode one 64-bit /proc/pid/pagemap entry."""
    d = {"present": bool(entry & PM_PRESENT), "swapped": bool(entry & PM_SWAP),
         "file_or_shared": bool(entry & PM_FILE), "exclusive": bool(entry & PM_MMAP_EXCLUSIVE),
         "soft_dirty": bool(entry & PM_SOFT_DIRTY), "uffd_wp": bool(entry & PM_UFFD_WP),
         "guard": bool(entry & PM_GUARD_REGION)}
    if d["present"]:
        d["pfn"] = entry & PM_PFN_MASK
    elif d["swapped"]:
        d["swap_type"] = entry & PM_SWAP_TYPE_MASK
        d["swap_offset"] = (entry & PM_PFN_MASK) >> PM_SWAP_OFFSET_SHIFT
    return d


def kpageflags(pfns) -> list[int]:
    """Raw /proc/kpageflags words for the given PFNs (root only)."""
    out = []
    fd = os.open("/proc/kpageflags", os.O_RDONLY)
    try:
        for pfn in pfns:
            out.append(struct.unpack("<Q", os.pread(fd, 8, pfn * 8))[0])
    finally:
        os.close(fd)
    return out


def kpf_names(flags: int) -> list[str]:
    return [n for b, n in sorted(KPF_NAMES.items()) if flags >> b & 1]


# ----------------------------------------------------------------------------- THP sysfs knobs

def _knob_path(name: str) -> str:
    rel = name.replace("__", "/")
    if rel.startswith("hugepages_"):       # hugepages_2048kB/enabled -> hugepages-2048kB/enabled
        rel = "hugepages-" + rel[len("hugepages_"):]
    path = os.path.normpath(os.path.join(THP_ROOT, rel))
    if not path.startswith(THP_ROOT + "/"):
        raise ValueError(f"knob {name!r} is outside {THP_ROOT}")
    return path


def read_knob(name: str) -> str:
    """Current value of a THP knob: the bracketed word for selectors, else the stripped text."""
    text = _read(_knob_path(name)).strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def write_knob(name: str, value) -> None:
    if isinstance(value, bool):
        value = int(value)
    with open(_knob_path(name), "w") as f:
        f.write(str(value))


LOCK_PATH = os.path.join(tempfile.gettempdir(), "thpcore-live-knobs.lock")


@contextlib.contextmanager
def knob_lock():
    """An exclusive, machine-wide lock for the duration of a knob change, so two test runs on
    one machine (a CI run beside a developer's) never snapshot each other's temporary values."""
    import fcntl
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def thp_settings(**knobs):
    """Set THP sysfs knobs for the duration of the block and restore them afterwards.

    ``with thp_settings(enabled="always", use_zero_page=0, **{"khugepaged/max_ptes_none": 0}):``

    The old value of each knob is saved just before it is written, knobs are restored in
    reverse order even when a write or the body raises, and a failed restore is re-raised
    (after trying all the others).  Yields {knob: old value}.
    """
    saved: list[tuple[str, str]] = []
    lock = knob_lock()
    lock.__enter__()
    try:
        for name, value in knobs.items():
            old = read_knob(name)
            saved.append((name, old))
            write_knob(name, value)
        yield dict(saved)
    finally:
        errors = []
        for name, old in reversed(saved):
            try:
                write_knob(name, old)
            except OSError as e:  # keep restoring the others
                errors.append(f"{name}={old!r}: {e}")
        lock.__exit__(None, None, None)
        if errors:
            raise RuntimeError("could not restore THP knobs: " + "; ".join(errors))


def thp_snapshot() -> dict[str, str]:
    """Values of the commonly changed knobs (for asserting that a test restored them)."""
    names = ["enabled", "defrag", "use_zero_page", "hugepages-2048kB/enabled"] + [
        f"khugepaged/{k}" for k in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared",
                                     "pages_to_scan", "scan_sleep_millisecs",
                                     "alloc_sleep_millisecs", "defrag")]
    out = {}
    for n in names:
        try:
            out[n] = read_knob(n)
        except OSError:
            pass
    return out


# ----------------------------------------------------------------------------- swap

class Unsupported(_SkipBase):
    """A live feature is not available here. Under pytest this *is* a skip (pytest.skip.Exception,
    a BaseException): raising it from a test or fixture skips the test."""

    def __init__(self, msg: str = "unsupported"):
        if _SkipBase is Exception:
            super().__init__(msg)
        else:
            super().__init__(msg=msg, allow_module_level=True)
        self.msg = msg

    def __str__(self):
        return self.msg


@contextlib.contextmanager
def swap_file(size_bytes: int, priority: int = 32767, directory: str | None = None):
    """Create a swap file of size_bytes in a new temporary directory, mkswap it and swapon it
    with the given priority; yield its path; swapoff and delete it on exit (also on error).

    Raises Unsupported if mkswap is missing, we are not root, or swapon fails.
    """
    if os.geteuid() != 0:
        raise Unsupported("swap_file needs root")
    mkswap = shutil.which("mkswap") or next(
        (p for p in ("/usr/sbin/mkswap", "/sbin/mkswap") if os.path.exists(p)), None)
    if mkswap is None:
        raise Unsupported("mkswap not found")
    size_bytes = max(size_bytes // PAGE_SIZE, 16) * PAGE_SIZE
    tmpdir = tempfile.mkdtemp(prefix="thpcore-swap-", dir=directory)
    path = os.path.join(tmpdir, "swapfile")
    active = False
    try:
        # write real zeros: swapon refuses files with holes / unwritten extents on some fs
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            chunk = b"\0" * (4 * MiB)
            left = size_bytes
            while left:
                left -= os.write(fd, chunk[:min(left, len(chunk))])
            os.fsync(fd)
        finally:
            os.close(fd)
        r = subprocess.run([mkswap, path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        if r.returncode != 0:
            raise Unsupported(f"mkswap failed: {r.stdout.strip()}")
        flags = SWAP_FLAG_PREFER | (priority & SWAP_FLAG_PRIO_MASK)
        ctypes.set_errno(0)
        if _libc.swapon(path.encode(), flags) != 0:
            e = ctypes.get_errno()
            raise Unsupported(f"swapon({path}) failed: {os.strerror(e)}")
        active = True
        yield path
    finally:
        try:
            if active:
                ctypes.set_errno(0)
                if _libc.swapoff(path.encode()) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"swapoff({path}) failed: {os.strerror(e)}")
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


# ----------------------------------------------------------------------------- fork

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
        import faulthandler
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
    code = "import sys; from thpcore.live import _fresh_main; _fresh_main()"
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
            if self.status is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, self.status = os.waitpid(self.pid, 0)
            sig = os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None
            code = os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None
            raise ChildDied(f"child {self.pid} sent no result", self.status, sig, code)
        finally:
            self.chan.close()
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        return _child_result(*obj)

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, self.status = os.waitpid(self.pid, 0)
        self.chan.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


# ----------------------------------------------------------------------------- Region

def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


class Region:
    """An anonymous (by default private) mapping made with libc mmap.

    Offsets are relative to ``addr`` and must be page aligned for write/read/munmap/
    mprotect (madvise takes any offset so that its argument checks can be probed).  The region
    remembers which of its pages are unmapped or not readable/writable so that ``write`` /
    ``read`` raise ValueError instead of crashing the interpreter (``force=True`` skips that,
    e.g. to provoke SIGSEGV in a forked child).
    """

    def __init__(self, addr: int, length: int, prot: int, owned: bool = True):
        self.addr, self.length = addr, length
        self.npages = length // PAGE_SIZE
        self._prot = bytearray([prot]) * self.npages  # per page; 0xff = unmapped
        self.owned = owned

    # -- construction
    @classmethod
    def mmap(cls, length: int, addr: int | None = None, prot: int = PROT_READ | PROT_WRITE,
             flags: int = MAP_PRIVATE | MAP_ANONYMOUS, fixed: bool = False) -> "Region":
        """mmap(addr, length, prot, flags | (MAP_FIXED if fixed), -1, 0)."""
        length = _page_align(length)
        if fixed:
            flags |= MAP_FIXED
        got = raw_mmap(length, addr, prot, flags)
        return cls(got, length, prot)

    @classmethod
    def at(cls, addr: int, length: int, prot: int = PROT_READ | PROT_WRITE,
           flags: int = MAP_PRIVATE | MAP_ANONYMOUS) -> "Region":
        """mmap exactly at ``addr`` with MAP_FIXED_NOREPLACE (OSError EEXIST if taken).

        Useful far away from mmap_base (e.g. 0x100000000000): the top-down allocator never
        looks there, so holes punched into such a region are not refilled by the interpreter's
        own mmaps (a hole next to mmap_base can be, and destructive advice on the "hole" would
        then hit the interpreter's memory)."""
        length = _page_align(length)
        got = raw_mmap(length, addr, prot, flags | MAP_FIXED_NOREPLACE)
        if got != addr:  # pre-4.17 kernels ignore the flag and treat addr as a hint
            raw_munmap(got, length)
            raise OSError(_errno.EEXIST, f"could not map at {addr:#x} (got {got:#x})")
        return cls(got, length, prot)

    @classmethod
    def aligned(cls, length: int, align: int = HPAGE_PMD_SIZE, offset: int = 0,
                prot: int = PROT_READ | PROT_WRITE, guard: bool = True) -> "Region":
        """A mapping whose start is ``offset`` bytes past an ``align`` boundary.

        Maps length + 2*align + offset bytes and either keeps the excess on both sides (always
        at least one page each) as PROT_NONE guards (guard=True: the region's VMA cannot merge
        with mappings made later next to it; the guards are unmapped with the region on close)
        or unmaps it (guard=False: then later mappings may merge with the region's VMA).
        """
        length = _page_align(length)
        total = length + 2 * align + offset
        base = raw_mmap(total, None, prot)
        # the first boundary strictly above base: leaves >= 1 page below and above the region
        # (head = align+offset if base is aligned, tail = align + base%align otherwise)
        start = (base // align + 1) * align + offset
        assert base < start and start + length < base + total
        r = cls(start, length, prot)
        head, tail = start - base, base + total - (start + length)
        if guard:
            if head:
                raw_mprotect(base, head, PROT_NONE)
            if tail:
                raw_mprotect(start + length, tail, PROT_NONE)
            r._guards = [(base, head), (start + length, tail)]
        else:
            if head:
                raw_munmap(base, head)
            if tail:
                raw_munmap(start + length, tail)
            r._guards = []
        return r

    # -- helpers
    def _range(self, off: int, length: int | None) -> tuple[int, int]:
        if length is None:
            length = self.length - off
        if off < 0 or length < 0 or off + length > self.length:
            raise ValueError(f"[{off:#x}, +{length:#x}) is outside the region "
                             f"(length {self.length:#x})")
        if off % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError("offset and length must be page aligned")
        return off // PAGE_SIZE, length // PAGE_SIZE

    def _check(self, p0: int, n: int, need: int, force: bool):
        if force:
            return
        sl = bytes(self._prot[p0:p0 + n])
        for prot in set(sl):
            if prot == 0xFF or prot & need != need:
                i = p0 + sl.index(prot)
                what = "is unmapped" if prot == 0xFF else f"has prot {prot:#x}"
                raise ValueError(f"page {i} (offset {i * PAGE_SIZE:#x}) {what}")

    def _words(self, p0: int, n: int):
        """A numpy view (n, PAGE_SIZE//4) uint32 over pages [p0, p0+n)."""
        buf = (ctypes.c_uint32 * (n * PAGE_SIZE // 4)).from_address(self.addr + p0 * PAGE_SIZE)
        return _np.frombuffer(buf, dtype=_np.uint32).reshape(n, PAGE_SIZE // 4)

    # -- memory access
    def write(self, off: int = 0, length: int | None = None, value=1,
              force: bool = False) -> None:
        """Store the 32-bit ``value`` into the first int of every 4 KiB page of the range
        (a write fault on every page, in ascending address order).  ``value`` may also be a
        sequence / array with one value per page (e.g. ``range(n)`` to tell pages apart)."""
        p0, n = self._range(off, length)
        self._check(p0, n, PROT_WRITE, force)
        if isinstance(value, int):
            value &= 0xFFFFFFFF
        elif len(value) != n:
            raise ValueError(f"{len(value)} values for {n} pages")
        if _np is not None:
            vals = value if isinstance(value, int) else \
                _np.asarray(value, dtype=_np.int64).astype(_np.uint32)
            self._words(p0, n)[:, 0] = vals
        else:
            for k, i in enumerate(range(p0, p0 + n)):
                v = value if isinstance(value, int) else value[k] & 0xFFFFFFFF
                ctypes.c_uint32.from_address(self.addr + i * PAGE_SIZE).value = v

    def read(self, off: int = 0, length: int | None = None, force: bool = False):
        """The first 32-bit int of every page of the range (a read fault on every page);
        a numpy uint32 array (a list without numpy)."""
        p0, n = self._range(off, length)
        self._check(p0, n, PROT_READ, force)
        if _np is not None:
            return self._words(p0, n)[:, 0].copy()
        return [ctypes.c_uint32.from_address(self.addr + i * PAGE_SIZE).value
                for i in range(p0, p0 + n)]

    # -- syscalls on sub-ranges
    def madvise(self, off: int = 0, length: int | None = None, advice: int = MADV_NORMAL) -> int:
        """madvise(addr+off, length, advice); returns 0 or the errno (never raises).
        off/length are passed as given (wrapped to unsigned), so invalid ranges can be probed."""
        if length is None:
            length = self.length - off
        return raw_madvise(self.addr + off, length, advice)

    def mprotect(self, off: int = 0, length: int | None = None,
                 prot: int = PROT_READ | PROT_WRITE) -> int:
        """mprotect on a sub-range; returns 0 or the errno."""
        p0, n = self._range(off, length)
        rc = raw_mprotect(self.addr + off, n * PAGE_SIZE, prot)
        if rc == 0:  # unmapped pages (0xff) stay unmapped, every other page gets `prot`
            table = bytes([prot & 0xFF] * 255 + [0xFF])
            self._prot[p0:p0 + n] = bytes(self._prot[p0:p0 + n]).translate(table)
        return rc

    def munmap(self, off: int = 0, length: int | None = None) -> int:
        """munmap a sub-range; returns 0 or the errno."""
        p0, n = self._range(off, length)
        rc = raw_munmap(self.addr + off, n * PAGE_SIZE)
        if rc == 0:
            self._prot[p0:p0 + n] = b"\xff" * n
        return rc

    def forget(self, off: int, length: int) -> None:
        """Pages [off, off+length) are no longer this region's (mremap moved or dropped them):
        close() will not unmap them, whatever maps that range by then."""
        p0, n = self._range(off, length)
        self._prot[p0:p0 + n] = b"\xff" * n

    def adopt(self, off: int, length: int, prot: int) -> None:
        """Pages [off, off+length) are mapped again, with prot (mremap grew into them)."""
        p0, n = self._range(off, length)
        self._prot[p0:p0 + n] = bytes([prot]) * n

    def close(self) -> None:
        """Unmap whatever is left of the region (and its guards): only the runs of pages that
        are still its own, since a hole may since have been reused by another mapping."""
        if self.owned:
            p = 0
            while p < self.npages:
                if self._prot[p] == 0xFF:
                    p += 1
                    continue
                q = p
                while q < self.npages and self._prot[q] != 0xFF:
                    q += 1
                raw_munmap(self.addr + p * PAGE_SIZE, (q - p) * PAGE_SIZE)
                p = q
            self._prot[:] = b"\xff" * self.npages
        for base, size in getattr(self, "_guards", ()):
            if size:
                raw_munmap(base, size)
        self._guards = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def end(self) -> int:
        return self.addr + self.length

    def __repr__(self):
        return f"Region({self.addr:#x}-{self.end:#x}, {self.length // KiB} KiB)"

    # -- /proc views
    def vmas(self, pid: str | int = "self") -> list[dict]:
        """smaps records (see parse_smaps) of every VMA that overlaps the region."""
        return [v for v in parse_smaps(_read(f"/proc/{pid}/smaps"))
                if v["start"] < self.end and v["end"] > self.addr]

    def smaps(self, partial: str = "error", pid: str | int = "self") -> dict[str, int]:
        """Sum of the numeric smaps fields (kB) over the VMAs lying inside [addr, addr+len).

        Also: 'THPeligible' (the number of those VMAs with THPeligible: 1) and 'nr_vmas'.
        A VMA that overlaps the region but sticks out of it (e.g. merged with a neighbouring
        mapping) raises ValueError with partial="error" (default), is added with
        partial="include", or skipped with partial="exclude".
        """
        if partial not in ("error", "include", "exclude"):
            raise ValueError("partial must be 'error', 'include' or 'exclude'")
        out: dict[str, int] = {}
        nr = elig = 0
        for v in self.vmas(pid):
            inside = v["start"] >= self.addr and v["end"] <= self.end
            if not inside:
                if partial == "error":
                    raise ValueError(f"VMA {v['start']:#x}-{v['end']:#x} sticks out of {self!r} "
                                     "(merged with a neighbour?); pass partial='include' or "
                                     "'exclude', or use Region.aligned()")
                if partial == "exclude":
                    continue
            nr += 1
            elig += v["THPeligible"] or 0
            for k, val in v["fields"].items():
                out[k] = out.get(k, 0) + val
        out["THPeligible"] = elig
        out["nr_vmas"] = nr
        return out

    def smaps_text(self, pid: str | int = "self") -> str:
        """Verbatim smaps text of the VMAs overlapping the region."""
        return "".join(v["text"] for v in self.vmas(pid))

    @staticmethod
    def rollup(pid: str | int = "self") -> dict[str, int]:
        """/proc/<pid>/smaps_rollup as {field: kB}."""
        return smaps_rollup(pid)

    def pagemap(self, off: int = 0, length: int | None = None,
                pid: str | int = "self") -> list[int]:
        """Raw 64-bit /proc/<pid>/pagemap entries for the pages of the range (PFNs are only
        filled in for root)."""
        p0, n = self._range(off, length)
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            want = n * 8
            data = b""
            pos = (self.addr // PAGE_SIZE + p0) * 8
            while len(data) < want:
                chunk = os.pread(fd, want - len(data), pos + len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        return list(struct.unpack(f"<{len(data) // 8}Q", data))

    def thp_eligible(self) -> list[int | None]:
        return [v["THPeligible"] for v in self.vmas()]

    def vmflags(self) -> list[list[str]]:
        return [v["VmFlags"] for v in self.vmas()]



# ---- the public live API (raises OSError with the kernel's errno) ---------------------------------

SYS_pidfd_open = 434
SYS_process_madvise = 440


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _syscall(*args) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    rc = libc.syscall(*args)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2) on this process's own memory."""
    err = raw_madvise(addr, length, advice)
    if err:
        raise OSError(err, os.strerror(err))


def pidfd_open(pid: int, flags: int = 0) -> int:
    """pidfd_open(2)."""
    return _syscall(SYS_pidfd_open, ctypes.c_int(pid), ctypes.c_uint(flags))


def process_madvise(pidfd: int, iovecs, advice: int, flags: int = 0) -> int:
    """process_madvise(2): returns the bytes of the iovecs fully advised."""
    vec = list(iovecs)
    arr = (_IoVec * max(len(vec), 1))(*[_IoVec(a, n) for a, n in vec])
    return _syscall(SYS_process_madvise, ctypes.c_int(pidfd), arr, ctypes.c_size_t(len(vec)),
                    ctypes.c_int(advice), ctypes.c_uint(flags))


def sysfs_read(path: str) -> str:
    with open(path) as f:
        return f.read()


def sysfs_write(path: str, text: str) -> int:
    """write(2) to a sysfs/cgroupfs file; the kernel's errno on refusal."""
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, text.encode())
    finally:
        os.close(fd)


def features() -> dict[str, object]:
    """What this host offers, with a reason for everything that is missing."""
    out: dict[str, object] = {"kernel": os.uname().release, "root": os.geteuid() == 0}
    out["thp"] = os.path.exists(THP_ROOT + "/enabled")
    out["kpageflags"] = os.access("/proc/kpageflags", os.R_OK)
    out["pagemap_pfns"] = out["root"] and os.path.exists("/proc/self/pagemap")
    # MADV_COLLAPSE: ask the kernel on a small region of our own (EINVAL if unknown advice
    # and the region can hold no THP either way; a 2 MiB-aligned written region tells).
    try:
        r = Region.aligned(HPAGE_PMD_SIZE)
        try:
            r.write(0, PAGE_SIZE, value=1)
            rc = r.madvise(0, HPAGE_PMD_SIZE, 25)
            out["madv_collapse"] = rc in (0, _errno.ENOMEM, _errno.EAGAIN, _errno.EBUSY)
        finally:
            r.close()
    except OSError:
        out["madv_collapse"] = False
    try:
        fd = pidfd_open(os.getpid())
        os.close(fd)
        out["pidfd"] = True
    except OSError:
        out["pidfd"] = False
    return out


def region_stats(pid: int) -> list[dict]:
    """Per anonymous VMA and 2 MiB region of a live process: present / swapped / none / zero /
    shared / PTE-mapped THP / PMD-mapped page counts, from pagemap + kpageflags + kpagecount
    (root), classified by the engine's scan_pagemap (the simulator uses the same function)."""
    from thpcore._engine import REGION_FIELDS, scan_pagemap
    from thpcore.snapshot import capture
    snap = capture(pid)
    out, pos = [], 0
    for start, end in zip(snap["vma_start"].tolist(), snap["vma_end"].tolist()):
        n = (end - start) >> 12
        sl = slice(pos, pos + n)
        counts = scan_pagemap(snap["pagemap"][sl], snap["kpageflags"][sl],
                              snap["kpagecount"][sl], start >> 12)
        first = (start >> 21) << 21
        out.append({"start": start, "end": end,
                    "regions": first + (_np.arange(counts.shape[0], dtype=_np.int64) << 21),
                    **{name: counts[:, i] for i, name in enumerate(REGION_FIELDS)}})
        pos += n
    return out
