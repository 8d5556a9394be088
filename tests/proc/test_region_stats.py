"""Per-region page-state counts from pagemap/kpageflags/kpagecount: the same engine scan on a
simulated process and on a live one."""

import os

import numpy as np
import pytest

import thpcore
from thpcore import MADV_HUGEPAGE, MADV_PAGEOUT
from thpcore._engine import scan_pagemap
from thpcore.proc.task_mmu import region_stats

HP = 2 << 20


def merged(stats):
    """Region address -> counts, summed over the VMAs that share a region."""
    out = {}
    for v in stats:
        for i, reg in enumerate(v["regions"]):
            d = out.setdefault(int(reg), dict.fromkeys(("present", "swapped", "none", "zero",
                                                        "shared", "pte_mapped_thp",
                                                        "pmd_mapped"), 0))
            for k in d:
                d[k] += int(v[k][i])
    return out


def test_simulated_region_stats():
    m = thpcore.Machine("1G", swap="64M", seed=0)
    p = m.spawn()
    a = p.mmap(4 * HP)
    p.madvise(a, HP, MADV_HUGEPAGE)
    p.write(a, HP)                                    # region 0: PMD-mapped THP
    p.write(a + HP, HP)                               # region 1: 4 KiB pages...
    p.madvise(a + HP, 64 * 4096, MADV_PAGEOUT)        # ...64 of them swapped
    p.read(a + 2 * HP, 4096)                          # region 2: one zero-page PTE
    c = p.fork()                                      # everything present is shared now
    v = merged(region_stats(m, p.mm))
    assert sorted(v) == [a + i * HP for i in range(4)]
    col = lambda k: [v[a + i * HP][k] for i in range(4)]          # noqa: E731
    assert col("pmd_mapped") == [512, 0, 0, 0]
    assert col("present") == [512, 448, 0, 0]
    assert col("swapped") == [0, 64, 0, 0]
    assert col("zero") == [0, 0, 1, 0]
    assert col("none") == [0, 0, 511, 512]
    assert col("shared") == [512, 448, 0, 0]
    c.write(a, 4096)                                   # COW: the child's PMD is split
    cv = merged(region_stats(m, c.mm))
    assert cv[a]["pmd_mapped"] == 0 and cv[a]["pte_mapped_thp"] == 511


def test_scan_pagemap_validates():
    with pytest.raises(ValueError):
        scan_pagemap(np.zeros(3, np.uint64), np.zeros(2, np.uint64), np.zeros(3, np.uint64), 0)


def test_live_region_stats_match_the_mapping():
    lh = pytest.importorskip("live_harness")
    if os.geteuid() != 0 or not os.access("/proc/kpageflags", os.R_OK):
        pytest.skip("needs root for pfns")
    from thpcore.live import region_stats as live_stats
    with lh.thp_settings(enabled="madvise"):
        r = lh.Region.aligned(2 * HP)
        try:
            r.madvise(0, HP, MADV_HUGEPAGE)
            r.write(0, HP, value=1)
            r.madvise(HP, HP, thpcore.MADV_NOHUGEPAGE)
            r.write(HP, 100 * 4096, value=2)
            stats = [v for v in live_stats(os.getpid()) if v["start"] <= r.addr < v["end"]]
            assert stats
            v = stats[0]
            i0 = int(np.nonzero(v["regions"] == r.addr)[0][0])
            assert v["pmd_mapped"][i0] == 512
            j = [k for k, reg in enumerate(v["regions"]) if reg == r.addr + HP]
            if j:                                     # the second half may be its own VMA
                assert v["present"][j[0]] == 100
        finally:
            r.close()
