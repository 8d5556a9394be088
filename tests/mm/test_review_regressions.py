"""Regressions for defects a review of session 3's changes found (each failed before its fix)."""

import errno

import numpy as np
import pytest

import thpcore
from thpcore import constants as C
from thpcore.mm.huge_memory import deferred_split_scan
from thpcore.mm.vmscan import try_to_free_pages

MB, HP, PAGE = 1 << 20, 2 << 20, 4096


def _aligned(p, length):
    a = p.mmap(length + HP)
    return (a + HP - 1) & ~(HP - 1)


def test_a_thp_moved_by_mremap_is_found_and_split_where_it_now_is():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="always")
    p = m.spawn()
    r = _aligned(p, HP)
    p.madvise(r, HP, C.MADV_POPULATE_WRITE)            # an all-zero (underused) THP
    new = p.mremap(r, HP, HP, C.MREMAP_MAYMOVE | C.MREMAP_FIXED, 0x600000000000)
    try_to_free_pages(m)                               # the shrinker splits it
    assert m.vmstat["thp_split_page"] == 1 and p.mm.nr_huge_pmds() == 0
    m.check()
    p.write(new, PAGE, 1)
    assert p.read(new, PAGE)[0] == 1


def test_collapse_after_reclaim_swapped_the_region_out_fails_cleanly():
    """charge_thp's memcg reclaim swaps out the very pages being collapsed: the kernel's
    isolate step finds a non-present PTE (SCAN_PTE_NON_PRESENT); no THP leaks."""
    m = thpcore.Machine("1G", swap="256M", seed=0, transparent_hugepage="madvise")
    m.cgroups.create("box")
    m.sysfs.write("/sys/fs/cgroup/box/memory.max", "3M")
    p = m.spawn(cgroup="box")
    r = _aligned(p, HP)
    p.write(r, HP, 9)
    p.madvise(r, HP, C.MADV_COLD)
    with pytest.raises(OSError) as info:
        p.madvise(r, HP, C.MADV_COLLAPSE)
    assert info.value.errno == errno.EINVAL and "SCAN_PTE_NON_PRESENT" in str(info.value)
    m.check()
    assert (p.read(r, HP) == 9).all()


def test_collapse_swapin_stopped_by_a_guard_keeps_the_counters():
    m = thpcore.Machine("1G", swap="512M", seed=0, transparent_hugepage="madvise")
    p = m.spawn()
    r = _aligned(p, HP)
    p.write(r, HP, 5)
    p.madvise(r, 64 * PAGE, C.MADV_PAGEOUT)
    p.madvise(r + 100 * PAGE, PAGE, C.MADV_GUARD_INSTALL)
    with pytest.raises(OSError):
        p.madvise(r, HP, C.MADV_COLLAPSE)
    m.check()                                          # rss/swap counters follow the swap-ins


def test_pglazyfree_counts_a_folio_once():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="madvise")
    p = m.spawn()
    r = _aligned(p, 4 * MB)
    p.madvise(r + HP, HP, C.MADV_HUGEPAGE)
    p.write(r, 4 * MB, 1)
    for _ in range(2):
        p.madvise(r, 64 * PAGE, C.MADV_FREE)
        p.madvise(r + HP, HP, C.MADV_FREE)
    assert m.vmstat["pglazyfree"] == 64 + 512
    m.check()


def test_guard_install_prepares_the_anon_vma_and_mlock_over_a_guard_is_enomem():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="madvise")
    p = m.spawn()
    r = _aligned(p, 4 * MB)
    p.madvise(r, PAGE, C.MADV_GUARD_INSTALL)
    p.read(r + HP, HP)                                 # zero pages only: no write anywhere
    p.madvise(r + HP, HP, C.MADV_COLLAPSE)             # an anon_vma exists: collapses
    assert p.mm.nr_huge_pmds() == 1
    with pytest.raises(OSError) as info:
        p.mlock(r, 4 * MB)
    assert info.value.errno == errno.ENOMEM
    m.check()


def test_a_new_thp_at_a_freed_one_s_pfn_is_not_split_by_a_stale_queue_entry():
    m = thpcore.Machine("1G", seed=0, transparent_hugepage="always")
    p = m.spawn()
    r = _aligned(p, HP)
    p.write(r, HP, 3)
    p.madvise(r, PAGE, C.MADV_DONTNEED)                # partly mapped: queued
    p.munmap(r, HP)                                    # the folio is freed by the engine
    r2 = _aligned(p, HP)
    p.write(r2, HP, 4)                                 # likely the same pfn
    deferred_split_scan(m, 100)
    assert p.mm.nr_huge_pmds() == 1 and m.vmstat["thp_split_page"] == 0
    m.check()


def test_restore_state_refuses_a_corrupt_state_and_keeps_the_zone():
    m = thpcore.Machine("256M", seed=0)
    zone = m.page_alloc.zone
    state = zone.save_state()
    before = m.state_hash()
    bad = dict(state, free_head=[list(row) for row in state["free_head"]])
    bad["free_head"][1][10] = 0x7FFFFFF0
    with pytest.raises(ValueError, match="outside the zone"):
        zone.restore_state(bad)
    bad = dict(state, nr_free=[list(row) for row in state["nr_free"]])
    bad["nr_free"][1][10] += 1
    with pytest.raises(ValueError, match="not a consistent zone"):
        zone.restore_state(bad)
    assert m.state_hash() == before
    m.check()
    with pytest.raises(ValueError):
        zone.set_lazyfree_range(2 ** 62, 2 ** 62, True)
