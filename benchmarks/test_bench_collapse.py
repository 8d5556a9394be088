"""Collapse throughput (pytest-benchmark): khugepaged-style scans of 4 KiB-mapped regions that
do not collapse, and MADV_COLLAPSE of fully populated regions, in simulated 2 MiB regions per
second. Targets (issue 4): >= 1 million scans/s, >= 100,000 collapses/s."""

import thpcore
from thpcore import MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE

HPAGE = 2 << 20
N = 256                      # regions per round (512 MiB)


def test_scan_regions(benchmark):
    """A khugepaged pass over 4 KiB-mapped regions that all fail max_ptes_none=0 at their last
    PTE (every PTE is examined): the kernel's scan loop, charged 512 pages a region."""
    m = thpcore.Machine("4G", seed=0, transparent_hugepage="madvise")
    k = m.thp.khugepaged
    k.max_ptes_none = 0
    nregions = 1536                               # 3 GiB
    k.pages_to_scan = nregions * 512
    p = m.spawn()
    a = p.mmap(nregions * HPAGE)
    p.write(a, nregions * HPAGE)
    for i in range(nregions):                     # the hole is the last PTE: all 512 are read
        p.madvise(a + (i + 1) * HPAGE - 4096, 4096, MADV_DONTNEED)
    p.madvise(a, nregions * HPAGE, MADV_HUGEPAGE)   # registers the mm

    def one_pass():
        m.khugepaged.do_scan()
        m._collapse_events.clear()

    benchmark(one_pass)
    assert k.pages_collapsed == 0 and m.vmstat["thp_scan_exceed_none_pte"] > 0
    benchmark.extra_info["regions_per_second"] = nregions / benchmark.stats.stats.mean


def test_madv_collapse(benchmark):
    m = thpcore.Machine("2G", seed=0, transparent_hugepage="never")
    p = m.spawn()
    a = p.mmap(N * HPAGE)

    def setup():
        p.madvise(a, N * HPAGE, MADV_DONTNEED)
        p.write(a, N * HPAGE)
        return (a, N * HPAGE, MADV_COLLAPSE), {}

    benchmark.pedantic(p.madvise, setup=setup, rounds=5, iterations=1)
    benchmark.extra_info["collapses_per_second"] = N / benchmark.stats.stats.mean
    m.check()


def test_live_madv_collapse_per_2m(benchmark):
    """The live kernel's own MADV_COLLAPSE time per 2 MiB region, on this machine, for comparison
    (skipped without root or MADV_COLLAPSE)."""
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import pytest
    lh = pytest.importorskip("live_harness")
    if os.geteuid() != 0:
        pytest.skip("needs root for the THP knobs")
    n = 32
    with lh.thp_settings(enabled="never"):
        r = lh.Region.aligned(n * HPAGE)
        try:
            def setup():
                r.madvise(0, n * HPAGE, MADV_DONTNEED)
                r.write(0, n * HPAGE, value=1)
                return (), {}

            def run():
                rc = r.madvise(0, n * HPAGE, MADV_COLLAPSE)
                if rc:
                    pytest.skip(f"MADV_COLLAPSE failed with errno {rc}")

            benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
        finally:
            r.close()
    benchmark.extra_info["live_collapses_per_second"] = n / benchmark.stats.stats.mean
    benchmark.extra_info["live_us_per_2m"] = benchmark.stats.stats.mean / n * 1e6
