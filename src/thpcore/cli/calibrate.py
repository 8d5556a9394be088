"""`thpcore calibrate`: measure the cost model's unit costs on the live host.

Everything runs inside this process on its own mappings (ctypes mmap/madvise); the THP mode is
chosen per mapping with MADV_HUGEPAGE / MADV_NOHUGEPAGE, so no sysfs knob is changed. Where the
kernel lacks a feature (no MADV_COLLAPSE, no THP) the corresponding cost keeps its default and
the report says so.
"""

from __future__ import annotations

import ctypes
import json
import mmap as _mmap
import time
from dataclasses import asdict

from thpcore.constants import MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE
from thpcore.costs import CostModel

PAGE = 4096
HPAGE = 2 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


def _map(length: int) -> int:
    # Over-allocate by 2 MiB to align the start, as the kernel's THP placement would.
    addr = _libc.mmap(None, length + HPAGE, _mmap.PROT_READ | _mmap.PROT_WRITE,
                      _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap")
    return addr


def _aligned(addr: int) -> int:
    return (addr + HPAGE - 1) & ~(HPAGE - 1)


def _touch(addr: int, length: int, step: int = PAGE) -> None:
    buf = (ctypes.c_char * length).from_address(addr)
    for off in range(0, length, step):
        buf[off] = b"x"


def _time(fn) -> float:
    t = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t


def measure(size: int = 64 << 20, repeats: int = 5) -> tuple[CostModel, dict]:
    """The fastest of `repeats` measurements of each cost (steady state: on a VM the first
    touch of guest memory can cost far more than the kernel's own work)."""
    runs = [_measure_once(size) for _ in range(repeats)]
    notes = {}
    for _, n in runs:
        notes.update(n)
    best = {f: min(getattr(m, f) for m, _ in runs) for f in asdict(runs[0][0])}
    return CostModel(**best), notes


def _measure_once(size: int) -> tuple[CostModel, dict]:
    notes = {}
    base = CostModel()
    costs = asdict(base)
    raw = _map(size)
    a = _aligned(raw)
    try:
        # Python's per-page loop cost, to subtract from the fault timings.
        _libc.madvise(a, size, MADV_NOHUGEPAGE)
        _touch(a, size)
        loop = _time(lambda: _touch(a, size)) / (size // PAGE)
        _libc.madvise(a, size, MADV_DONTNEED)
        t = _time(lambda: _touch(a, size)) / (size // PAGE)
        costs["fault_4k_ns"] = max(int(t - loop), 1)
        _libc.madvise(a, size, MADV_DONTNEED)
        buf = (ctypes.c_char * size).from_address(a)
        [buf[o] for o in range(0, size, PAGE)]          # map the zero page everywhere first
        rloop = _time(lambda: [buf[o] for o in range(0, size, PAGE)]) / (size // PAGE)
        _libc.madvise(a, size, MADV_DONTNEED)
        t = _time(lambda: [buf[o] for o in range(0, size, PAGE)]) / (size // PAGE)
        costs["fault_zero_page_ns"] = max(int(t - rloop), 1)
        _libc.madvise(a, size, MADV_DONTNEED)
        if _libc.madvise(a, size, MADV_HUGEPAGE) == 0:
            t = _time(lambda: _touch(a, size, HPAGE)) / (size // HPAGE)
            costs["fault_thp_ns"] = max(int(t), 1)
        else:
            notes["fault_thp_ns"] = "MADV_HUGEPAGE refused: kept the default"
        # Copy and zero bandwidth, per 4 KiB.
        src = (ctypes.c_char * size).from_address(a)
        dst_raw = _map(size)
        dst = _aligned(dst_raw)
        _touch(dst, size)
        t = _time(lambda: ctypes.memmove(dst, a, size)) / (size // PAGE)
        costs["copy_4k_ns"] = max(int(t), 1)
        t = _time(lambda: ctypes.memset(dst, 0, size)) / (size // PAGE)
        costs["zero_4k_ns"] = max(int(t), 1)
        _libc.munmap(dst_raw, size + HPAGE)
        # MADV_COLLAPSE of 4 KiB-mapped regions.
        _libc.madvise(a, size, MADV_DONTNEED)
        _libc.madvise(a, size, MADV_NOHUGEPAGE)
        _touch(a, size)
        _libc.madvise(a, size, MADV_HUGEPAGE)
        rc = []
        t = _time(lambda: rc.append(_libc.madvise(a, size, MADV_COLLAPSE))) / (size // HPAGE)
        if rc[0] == 0:
            costs["collapse_2m_ns"] = max(int(t), 1)
        else:
            notes["collapse_2m_ns"] = f"MADV_COLLAPSE failed (errno {ctypes.get_errno()}): kept the default"
        del src
    finally:
        _libc.munmap(raw, size + HPAGE)
    return CostModel(**costs), notes


def main(path: str | None) -> int:
    model, notes = measure()
    text = json.dumps(asdict(model), indent=2, sort_keys=True)
    if path:
        with open(path, "w") as f:
            f.write(text + "\n")
    print(text)
    for k, v in notes.items():
        print(f"note: {k}: {v}")
    return 0
