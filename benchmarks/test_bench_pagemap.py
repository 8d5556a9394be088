"""Scanning a live process's pagemap + kpageflags + kpagecount per 2 MiB region
(thpcore.live.region_stats): a 100 GiB mapping, 2 GiB of it populated. Target (issue 6): under a
second of wall time."""

import ctypes
import mmap
import os

import pytest

from thpcore import MADV_HUGEPAGE

GIB = 1 << 30


def test_region_stats_of_a_100g_mapping(benchmark):
    if os.geteuid() != 0 or not os.access("/proc/kpageflags", os.R_OK):
        pytest.skip("needs root")
    from thpcore import live
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    size = 100 * GIB
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000, -1, 0)   # MAP_NORESERVE
    try:
        libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(GIB), MADV_HUGEPAGE)
        ctypes.memset(addr, 1, GIB)                       # 1 GiB of THPs
        for off in range(GIB, 2 * GIB, 4096):             # 1 GiB of 4 KiB pages
            ctypes.memset(addr + off, 1, 1)
        stats = benchmark.pedantic(lambda: live.region_stats(os.getpid()), rounds=3, iterations=1)
        big = [v for v in stats if v["start"] <= addr < v["end"]][0]
        assert big["present"].sum() + big["pmd_mapped"].sum() >= (2 * GIB) // 4096 - 512
        benchmark.extra_info["mapped_gib"] = 100
        benchmark.extra_info["seconds_per_scan"] = benchmark.stats.stats.mean
    finally:
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
