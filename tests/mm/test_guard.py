"""Guard regions (MADV_GUARD_INSTALL / MADV_GUARD_REMOVE, 6.13+) around THPs. The live kernel's
answers for install/DONTNEED/FREE/COLLAPSE/errno are fidelity scenarios ("guard ..."); these
cover what a live scenario cannot easily show."""

import errno

import numpy as np
import pytest

import thpcore
from thpcore import (MADV_COLLAPSE, MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE,
                     MADV_HUGEPAGE, SegmentationFault)

from conftest import unchanged

MB, HP, PAGE = 1 << 20, 2 << 20, 4096


def setup(enabled="madvise"):
    m = thpcore.Machine("1G", swap="64M", seed=0, transparent_hugepage=enabled)
    p = m.spawn()
    a = p.mmap(4 * MB)
    p.madvise(a, 4 * MB, MADV_HUGEPAGE)
    p.write(a, 4 * MB, 7)
    return m, p, a


def test_an_access_through_a_guard_changes_nothing():
    m, p, a = setup()
    p.madvise(a + 8 * PAGE, PAGE, MADV_GUARD_INSTALL)
    err = unchanged(m, lambda: p.write(a, 16 * PAGE, 1), SegmentationFault)
    assert err.addr == a + 8 * PAGE
    unchanged(m, lambda: p.read(a + 8 * PAGE, PAGE), SegmentationFault)
    assert (p.read(a, 8 * PAGE) == 7).all()


def test_fork_copies_guards_and_munmap_drops_them():
    m, p, a = setup()
    p.madvise(a + PAGE, PAGE, MADV_GUARD_INSTALL)
    child = p.fork()
    with pytest.raises(SegmentationFault):
        child.read(a + PAGE, PAGE)
    p.munmap(a, 2 * MB)
    p.mmap(2 * MB, addr=a, flags=thpcore.MAP_PRIVATE | thpcore.MAP_ANONYMOUS | thpcore.MAP_FIXED)
    assert p.read(a + PAGE, PAGE)[0] == 0            # a fresh mapping: no marker any more
    with pytest.raises(SegmentationFault):
        child.read(a + PAGE, PAGE)                   # the child's copy stays
    m.check()


def test_dontneed_keeps_and_remove_clears():
    m, p, a = setup()
    p.madvise(a, 2 * MB, MADV_GUARD_INSTALL)
    assert p.smaps_rollup()["Rss"] == 2048              # the guarded THP is gone
    p.madvise(a, 2 * MB, MADV_DONTNEED)
    with pytest.raises(SegmentationFault):
        p.read(a + MB, PAGE)
    p.madvise(a + MB, PAGE, MADV_GUARD_REMOVE)
    assert p.read(a + MB, PAGE)[0] == 0
    with pytest.raises(SegmentationFault):
        p.read(a + MB + PAGE, PAGE)
    m.check()


@pytest.mark.parametrize("max_ptes_swap", [0, 64])
def test_khugepaged_treats_a_guard_as_a_swap_entry_it_cannot_fault_in(max_ptes_swap):
    m, p, a = setup()
    p.madvise(a, 2 * MB, 15)                          # MADV_NOHUGEPAGE: break the THP up
    p.madvise(a, 2 * MB, MADV_DONTNEED)
    p.write(a, 2 * MB, 3)                             # 4 KiB pages
    p.madvise(a + PAGE, PAGE, MADV_GUARD_INSTALL)
    p.madvise(a, 2 * MB, MADV_HUGEPAGE)
    m.thp.khugepaged.max_ptes_swap = max_ptes_swap
    m.thp.khugepaged.scan_sleep_millisecs = 10
    m.run(seconds=2)
    assert p.mm.nr_huge_pmds() == 1                  # only the untouched second THP
    if max_ptes_swap == 0:
        assert m.vmstat["thp_scan_exceed_swap_pte"] > 0 and m.vmstat["thp_collapse_alloc"] == 0
    else:
        assert m.vmstat["thp_collapse_alloc"] > 0    # allocated, then the swap-in failed
    with pytest.raises(SegmentationFault):
        p.read(a + PAGE, PAGE)
    assert (p.read(a + 2 * PAGE, 2 * MB - 2 * PAGE) == 3).all()
    m.check()


def test_madv_collapse_over_a_guard_is_einval_and_changes_no_mapping():
    m, p, a = setup(enabled="never")
    p.madvise(a + PAGE, PAGE, MADV_GUARD_INSTALL)     # splits the first THP's PMD
    with pytest.raises(OSError) as info:
        p.madvise(a, 2 * MB, MADV_COLLAPSE)
    assert info.value.errno == errno.EINVAL
    assert m.vmstat["thp_collapse_alloc"] == 1
    m.check()
    pm = thpcore.proc.task_mmu.pagemap(m, p.mm, a, a + 2 * PAGE)
    assert int(pm[1]) == (1 << 62) | (1 << 58) | (4 << 5) | 31
    assert np.count_nonzero(p.read(a + 2 * PAGE, 2 * MB - 2 * PAGE) == 7) == 510
