"""Bulk write-fault throughput in simulated 4 KiB pages per second (pytest-benchmark).
Target (issue 3): >= 20 million simulated pages per second, with THP at fault on and off."""

import pytest

import thpcore
from thpcore import MADV_DONTNEED, MADV_HUGEPAGE

SIZE = 1 << 30            # 1 GiB of writes per round = 262144 pages


@pytest.mark.parametrize("thp", [True, False], ids=["thp", "4k"])
def test_write_faults(benchmark, thp):
    m = thpcore.Machine("4G", seed=0, transparent_hugepage="always" if thp else "never")
    p = m.spawn()
    addr = p.mmap(SIZE)
    if thp:
        p.madvise(addr, SIZE, MADV_HUGEPAGE)

    def fresh():
        p.madvise(addr, SIZE, MADV_DONTNEED)      # unmapped again (untimed); PTE tables stay
        return (addr, SIZE), {}

    benchmark.pedantic(p.write, setup=fresh, rounds=8, iterations=1, warmup_rounds=1)
    pages = SIZE // 4096
    benchmark.extra_info["pages_per_round"] = pages
    benchmark.extra_info["pages_per_second"] = pages / benchmark.stats.stats.mean
    m.check()


@pytest.mark.parametrize("size_kb", [16, 64, 1024])
def test_write_faults_mthp(benchmark, size_kb):
    """The PMD size off, one mTHP size always: every fault maps a folio of that size."""
    m = thpcore.Machine("4G", seed=0, transparent_hugepage="never")
    m.sysfs.write(f"/sys/kernel/mm/transparent_hugepage/hugepages-{size_kb}kB/enabled", "always")
    p = m.spawn()
    addr = p.mmap(SIZE)

    def fresh():
        p.madvise(addr, SIZE, MADV_DONTNEED)
        return (addr, SIZE), {}

    benchmark.pedantic(p.write, setup=fresh, rounds=8, iterations=1, warmup_rounds=1)
    pages = SIZE // 4096
    benchmark.extra_info["pages_per_second"] = pages / benchmark.stats.stats.mean
    m.check()
    folios = int(m.sysfs.read(f"/sys/kernel/mm/transparent_hugepage/hugepages-{size_kb}kB/stats/nr_anon"))
    assert folios == SIZE // (size_kb << 10)
