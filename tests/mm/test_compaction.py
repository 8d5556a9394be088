"""Compaction: scanners and migration, direct compaction under each defrag mode, deferral,
kcompactd, proactive compaction, compact_memory, and the known fragmentation results."""

import errno

import pytest

import thpcore
from thpcore import MADV_DONTNEED, MADV_HUGEPAGE
from thpcore.mm.compaction import CompactResult

from conftest import unchanged

MB, HP = 1 << 20, 2 << 20


def fragmented(memory="512M", keep_every=2, **kw):
    """Fill memory with a process's 4 KiB pages, then free every other 64 KiB: plenty of free
    memory, no free 2 MiB block, all of it movable (compaction can fix it)."""
    m = thpcore.Machine(memory, seed=0, transparent_hugepage="never", **kw)
    filler = m.spawn(name="filler")
    zone = m.page_alloc.zone
    size = (zone.nr_free_pages - zone.watermarks()[2] - 2048) * 4096   # page tables need room
    size -= size % (128 << 10)
    a = filler.mmap(size)
    filler.write(a, size)
    for off in range(0, size, 128 << 10):
        filler.madvise(a + off, 64 << 10, MADV_DONTNEED)
    m.kernel_alloc_bulk(9, "movable", 1000)           # whatever 2 MiB blocks were left over
    assert m.page_alloc.free_blocks_at_least(9) == 0
    return m, filler, a, size


def test_full_compaction_moves_pages_and_keeps_contents():
    m, filler, a, size = fragmented()
    words = filler.read(a, size)
    before = m.page_alloc.free_blocks_at_least(9)
    m.procfs.write("/proc/sys/vm/compact_memory", "1")
    after = m.page_alloc.free_blocks_at_least(9)
    assert before < 30 and after >= m.page_alloc.zone.nr_free_pages // 512 - 2
    assert (filler.read(a, size) == words).all()
    assert m.vmstat["pgmigrate_success"] > 0
    assert m.vmstat["compact_migrate_scanned"] >= m.vmstat["pgmigrate_success"]
    assert m.vmstat["compact_isolated"] == 2 * m.vmstat["pgmigrate_success"] or \
        m.vmstat["compact_isolated"] > m.vmstat["pgmigrate_success"]
    m.check()


def test_compact_memory_sysctl_rules():
    m = thpcore.Machine("256M")
    for bad in ("0", "2", "x"):
        err = unchanged(m, lambda: m.procfs.write("/proc/sys/vm/compact_memory", bad), OSError)
        assert err.errno == errno.EINVAL
    assert unchanged(m, lambda: m.procfs.read("/proc/sys/vm/compact_memory"), OSError).errno == errno.EACCES


@pytest.mark.parametrize("defrag, advised, thp, stalls, woken", [
    ("madvise", True, True, 1, False),      # direct reclaim/compaction for madvised VMAs
    ("madvise", False, False, 0, False),    # nobody woken, nothing compacted
    ("always", False, True, 1, False),      # direct, light (NORETRY)
    ("defer", True, False, 0, True),        # fails at once, wakes kswapd -> kcompactd
    ("defer+madvise", True, True, 1, False),
    ("defer+madvise", False, False, 0, True),
    ("never", True, False, 0, False),
])
def test_defrag_matrix_at_fault(defrag, advised, thp, stalls, woken):
    m, filler, a, size = fragmented()
    m.thp.enabled = "always"
    m.thp.defrag = defrag
    p = m.spawn()
    b = p.mmap(HP)
    if advised:
        p.madvise(b, HP, MADV_HUGEPAGE)
    p.write(b, HP)
    assert (p.smaps_rollup()["AnonHugePages"] == 2048) == thp
    assert m.vmstat["compact_stall"] == stalls
    assert m.vmstat["thp_fault_fallback"] == (0 if thp else 1)
    assert m.compaction.kcompactd_wake_pending == woken
    if woken:
        m.run(ms=1)                                  # kcompactd compacts in the background
        assert m.vmstat["compact_daemon_wake"] >= 1 and m.vmstat["pgmigrate_success"] > 0
        q = m.spawn()
        c = q.mmap(HP)
        q.write(c, HP)
        # The freed block went to the next fault, or to khugepaged collapsing p's region.
        assert q.smaps_rollup()["AnonHugePages"] + p.smaps_rollup()["AnonHugePages"] >= 2048
    m.check()


def scattered_unmovable(packed: bool):
    """A few percent of unmovable memory (one page per pageblock): allocated at boot (packed
    together by the anti-fragmentation rules), or while memory is full, when every unmovable
    allocation must steal a page inside some movable pageblock (scattered)."""
    m = thpcore.Machine("512M", seed=0, transparent_hugepage="never")
    m.sysctl.set("watermark_boost_factor", 0)          # no kswapd here to undo the boosts
    m.sysctl.set("min_free_kbytes", 128)               # let memory really fill up
    nblocks = m.nr_pages // 512
    filler = m.spawn()
    zone = m.page_alloc.zone
    if packed:
        m.kernel_alloc_bulk(0, "unmovable", nblocks)
    size = (zone.nr_free_pages - zone.watermarks()[2] - 1024) * 4096
    size -= size % HP
    a = filler.mmap(size)
    filler.write(a, size)
    if not packed:
        for order in range(10, 0, -1):
            m.kernel_alloc_bulk(order, "movable", 1 << 20)
        # Memory under pressure: every free block big enough to claim a pageblock with is
        # taken, the headroom is single pages scattered over the movable pageblocks, and the
        # unmovable pageblocks are full: each unmovable page must steal a movable one.
        for i in range(size // HP):
            filler.madvise(a + i * HP + 8192, 4096, MADV_DONTNEED)
        for order in range(10, 0, -1):
            m.kernel_alloc_bulk(order, "movable", 1 << 20)
        assert not zone.free_area()[:, 1:].any()
        while zone.free_area()[0].sum() or zone.free_area()[2].sum():
            m.kernel_alloc(0, "unmovable")
        for i in range(size // HP):
            try:
                m.kernel_alloc(0, "unmovable")
            except OSError:
                break                                   # down to the min watermark
    filler.madvise(a, size // 2, MADV_DONTNEED)       # free half the movable memory
    return m


@pytest.mark.parametrize("packed", [False, True])
def test_unmovable_pages_scattered_one_per_pageblock_defeat_compaction(packed):
    m = scattered_unmovable(packed)
    m.procfs.write("/proc/sys/vm/compact_memory", "1")
    blocks = m.page_alloc.free_blocks_at_least(9)
    free_2m = m.page_alloc.zone.nr_free_pages // 512
    if packed:
        assert blocks >= free_2m - 10                  # compaction recovers nearly everything
    else:
        assert blocks <= free_2m // 3                  # most free memory stays unusable
    m.check()


def test_direct_compaction_is_deferred_after_failing():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="madvise")
    pins = m.kernel_alloc_bulk(0, "unmovable", 1 << 20)
    m.kernel_free_bulk([x for x in pins if x % 512 != 5], 0)
    m.kernel_alloc_bulk(9, "unmovable", 1000)
    assert m.page_alloc.free_blocks_at_least(9) == 0
    p = m.spawn()
    a = p.mmap(8 * HP)
    p.madvise(a, 8 * HP, MADV_HUGEPAGE)
    for i in range(8):
        p.write(a + i * HP, 4096)
    # Each failing fault stalls (async then sync-light); once sync fails, later ones defer.
    assert m.vmstat["thp_fault_fallback"] == 8
    assert m.vmstat["compact_success"] == 0
    assert m.compaction.defer_shift >= 1
    assert m.vmstat["compact_stall"] == m.vmstat["compact_fail"]
    m.check()


def test_proactive_compaction_lowers_the_fragmentation_score():
    m, filler, a, size = fragmented()
    m.sysctl.set("compaction_proactiveness", 20)
    before = m.compaction.fragmentation_score()
    assert before > 90
    m.run(seconds=1)
    assert m.vmstat["compact_daemon_wake"] >= 1
    assert m.compaction.fragmentation_score() <= m.compaction.proactive_wmarks()[0]
    assert m.cpu_ns.get("kcompactd", 0) > 0
    m.sysctl.set("compaction_proactiveness", 0)
    m.check()


def test_suitability_skips_without_enough_free_memory():
    m = thpcore.Machine("256M", seed=0)
    m.kernel_alloc_bulk(0, "movable", 1 << 20)          # down to the min watermark
    assert m.compaction.suitable(9) == CompactResult.SKIPPED


def test_direct_compaction_charges_the_faulting_task():
    m, filler, a, size = fragmented()
    m.thp.enabled = "madvise"
    p = m.spawn()
    b = p.mmap(HP)
    p.madvise(b, HP, MADV_HUGEPAGE)
    p.write(b, HP)
    lat = m.latency("compact_stall")
    assert lat["count"] == 1 and lat["p50"] > 0
    assert m.cpu_ns[p.pid] >= lat["p50"] + m.costs.fault_thp_ns


def test_compaction_reverse_map_window_does_not_change_results():
    """Compaction builds its PTE reverse map a window of frames at a time (bounded memory on a
    1 TiB zone); a window of 4 pageblocks must give bit-for-bit the result of one window."""
    from thpcore import _engine
    from thpcore.lab.workloads import fragment

    def run():
        m = thpcore.Machine("256M", seed=5, transparent_hugepage="never")
        fragment(m, 0.001, "scattered")
        procs = []
        for i in range(6):
            p = m.spawn()
            a = p.mmap(24 << 20)
            p.write(a, 24 << 20)
            procs.append((p, a))
        for p, a in procs[::2]:
            p.munmap(a, 24 << 20)                     # holes all over: work for compaction
        f = procs[1][0].fork()                        # shared pages: two PTEs per frame
        m.compaction.compact_memory()
        m.check()
        return m.state_hash(), m.vmstat["compact_migrate_scanned"], f.pid

    whole = run()
    old = _engine.set_rmap_window(4 * 512)
    try:
        windowed = run()
    finally:
        _engine.set_rmap_window(old)
    assert windowed == whole and whole[1] > 0
    with pytest.raises(ValueError):
        _engine.set_rmap_window(100)
