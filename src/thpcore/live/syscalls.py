"""libc and raw system calls through ctypes: mmap, munmap, madvise, mprotect, mlock, mremap,
prctl, pidfd_open, process_madvise (and the swapon/swapoff prototypes swap.py calls).  The
kernel's constants come from thpcore.constants (Linux's values, defined once)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from thpcore import constants as _constants
from thpcore.constants import MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE
# the two memory-failure advices are defined (once) beside the simulator's madvise checks
from thpcore.mm.madvise import MADV_HWPOISON, MADV_SOFT_OFFLINE

MAP_FAILED = ctypes.c_void_p(-1).value

#: {advice value: "MADV_..." name}, in value order.
MADV_NAMES = dict(sorted([(v, k) for k, v in vars(_constants).items()
                          if k.startswith("MADV_") and not k.startswith("MADV_F_")]
                         + [(MADV_HWPOISON, "MADV_HWPOISON"),
                            (MADV_SOFT_OFFLINE, "MADV_SOFT_OFFLINE")]))

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
