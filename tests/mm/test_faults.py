"""Processes, VMAs, faults and the madvise family against Linux 6.18 outcomes."""

import errno

import numpy as np
import pytest

import thpcore
from thpcore import (MADV_COLD, MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                     MADV_PAGEOUT, MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED,
                     PR_GET_THP_DISABLE, PR_SET_THP_DISABLE, PR_THP_DISABLE_EXCEPT_ADVISED,
                     PROT_NONE, PROT_READ, SegmentationFault)

from conftest import unchanged

MB = 1 << 20


@pytest.fixture
def m():
    return thpcore.Machine("1G", swap="256M", seed=0)


def rollup(p):
    return p.smaps_rollup()


def thp_region(p, size=4 * MB, advise=True):
    addr = p.mmap(size)
    assert addr % (2 * MB) == 0
    if advise:
        p.madvise(addr, size, MADV_HUGEPAGE)
    return addr


@pytest.mark.parametrize("enabled, advice, thp", [
    ("always", None, True), ("always", MADV_HUGEPAGE, True), ("always", MADV_NOHUGEPAGE, False),
    ("madvise", None, False), ("madvise", MADV_HUGEPAGE, True), ("madvise", MADV_NOHUGEPAGE, False),
    ("never", None, False), ("never", MADV_HUGEPAGE, False), ("never", MADV_NOHUGEPAGE, False),
])
def test_thp_at_fault_matrix(m, enabled, advice, thp):
    m.thp.enabled = enabled
    p = m.spawn()
    addr = p.mmap(4 * MB)
    if advice is not None:
        p.madvise(addr, 4 * MB, advice)
    p.write(addr, 4 * MB)
    r = rollup(p)
    assert r["Rss"] == 4096
    assert r["AnonHugePages"] == (4096 if thp else 0)
    assert m.vmstat["thp_fault_alloc"] == (2 if thp else 0)
    assert m.vmstat["thp_fault_fallback"] == 0
    assert m.vmstat["nr_anon_transparent_hugepages"] == (2 if thp else 0)
    m.check()


def test_khugepaged_registration_happens_at_the_first_eligible_fault(m):
    p = m.spawn()
    addr = p.mmap(4 * MB)
    p.madvise(addr, 4 * MB, MADV_HUGEPAGE)        # no anon_vma yet: not registered
    assert m.khugepaged_mm_list == []
    p.write(addr, 4096)
    assert m.khugepaged_mm_list == [p.mm]
    q = m.spawn()
    b = q.mmap(4 * MB)
    q.write(b, 4096)                               # not eligible under enabled=madvise
    q.madvise(b, 4 * MB, MADV_HUGEPAGE)            # now it has an anon_vma: registers
    assert m.khugepaged_mm_list == [p.mm, q.mm]
    c = p.fork()
    assert m.khugepaged_mm_list == [p.mm, q.mm, c.mm]
    p.exit()
    assert m.khugepaged_mm_list == [q.mm, c.mm]


def test_fallback_when_no_order9_block_is_free():
    m = thpcore.Machine("64M", seed=0)
    m.thp.enabled = "madvise"                     # below 512 MiB THP boots disabled
    # Pin every pageblock with one unmovable page, as slab growth under pressure does.
    pfns = m.kernel_alloc_bulk(0, "unmovable", 1 << 20)     # pins compaction cannot move
    m.kernel_free_bulk([x for x in pfns if x % 512 != 7], 0)
    m.kernel_alloc_bulk(9, "unmovable", 100)      # the never-filled tail below the watermark
    assert m.page_alloc.free_blocks_at_least(9) == 0
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB)
    assert rollup(p)["AnonHugePages"] == 0 and rollup(p)["Rss"] == 2048
    assert m.vmstat["thp_fault_fallback"] == 1
    assert m.thp.hugepages_2048kB.stats["anon_fault_fallback"] == 1
    assert m.khugepaged_mm_list == [p.mm]        # registered even though the allocation failed
    m.check()


def test_read_fault_maps_the_huge_zero_page_then_a_write_allocates_a_thp(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    assert (p.read(addr, 2 * MB) == 0).all()
    assert rollup(p)["Rss"] == 0 and rollup(p)["AnonHugePages"] == 0
    assert m.vmstat["thp_zero_page_alloc"] == 1
    q = m.spawn()
    b = thp_region(q, 2 * MB)
    q.read(b, 4096)
    assert m.vmstat["thp_zero_page_alloc"] == 1     # one global huge zero folio
    p.write(addr + 4096, 4096, value=3)
    assert rollup(p)["AnonHugePages"] == 2048
    assert m.vmstat["thp_fault_alloc"] == 1 and m.vmstat["thp_split_pmd"] == 0
    assert list(p.read(addr, 3 * 4096)) == [0, 3, 0]
    m.check()


def test_read_faults_without_use_zero_page_allocate(m):
    m.thp.use_zero_page = 0
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.read(addr, 4096)
    assert rollup(p)["AnonHugePages"] == 2048
    q = m.spawn()
    b = q.mmap(2 * MB)
    q.read(b, 2 * MB)                              # not eligible: 4 KiB zero-page PTEs
    assert rollup(q)["Rss"] == 0
    m.check()


def test_unaligned_vma_gets_thp_only_where_a_whole_region_fits(m):
    p = m.spawn()
    base = p.mmap(6 * MB)
    assert base % (2 * MB) == 0
    p.munmap(base, 4096)
    p.munmap(base + 4 * MB + 4096, 2 * MB - 4096)
    p.madvise(base + 4096, 4 * MB, MADV_HUGEPAGE)
    p.write(base + 4096, 4 * MB)
    r = rollup(p)
    assert r["Rss"] == 4096 and r["AnonHugePages"] == 2048   # only [base+2M, base+4M)
    m.check()


def test_partial_dontneed_splits_the_pmd_and_queues_the_thp(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB)
    p.madvise(addr, 4096, MADV_DONTNEED)
    r = rollup(p)
    assert r["AnonHugePages"] == 0 and r["Rss"] == 2044
    assert m.vmstat["thp_split_pmd"] == 1
    assert m.vmstat["thp_deferred_split_page"] == 1
    assert m.vmstat["thp_split_page"] == 0
    # The memory is not freed: the THP stays whole until the shrinker splits it.
    assert m.page_alloc.zone.nr_free_pages == m.nr_pages - 512 - 1     # the THP and its table
    m.check()


def test_full_dontneed_frees_the_thp_and_a_later_fault_gets_a_thp_again(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB)
    free = m.page_alloc.zone.nr_free_pages
    p.madvise(addr, 2 * MB, MADV_DONTNEED)
    assert rollup(p)["Rss"] == 0
    assert m.page_alloc.zone.nr_free_pages == free + 512 + 1     # the THP and its deposit
    p.write(addr, 4096)
    assert rollup(p)["AnonHugePages"] == 2048
    m.check()


def test_a_pte_table_makes_the_region_sticky(m):
    p = m.spawn()
    addr = p.mmap(2 * MB)
    p.write(addr, 4096)                       # 4 KiB page: a PTE table now exists
    p.madvise(addr, 2 * MB, MADV_HUGEPAGE)
    p.write(addr, 2 * MB)
    assert rollup(p)["AnonHugePages"] == 0
    p.madvise(addr, 2 * MB, MADV_DONTNEED)
    p.write(addr, 2 * MB)
    assert rollup(p)["AnonHugePages"] == 0   # the empty table stays; only collapse helps
    m.check()


def test_munmap_and_mprotect_of_part_of_a_thp_split_the_pmd(m):
    p = m.spawn()
    addr = thp_region(p, 4 * MB)
    p.write(addr, 4 * MB)
    p.munmap(addr, 4096)
    p.mprotect(addr + 2 * MB, 4096, PROT_READ)
    r = rollup(p)
    assert r["AnonHugePages"] == 0 and r["Rss"] == 4096 - 4
    assert m.vmstat["thp_split_pmd"] == 2
    assert m.vmstat["thp_deferred_split_page"] == 1    # only the unmap left it partly mapped
    with pytest.raises(SegmentationFault):
        p.write(addr + 2 * MB, 4096)
    p.write(addr + 2 * MB + 4096, 4096)
    assert len(p.mm.vmas) == 3
    m.check()


def test_fork_shares_and_a_cow_write_splits_only_the_writers_pmd(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB)
    before = p.read(addr, 2 * MB)
    c = p.fork()
    assert rollup(c)["AnonHugePages"] == 2048 and rollup(c)["Shared_Dirty"] == 2048
    c.write(addr, 4096, value=1)
    assert rollup(c)["AnonHugePages"] == 0 and rollup(c)["Rss"] == 2048
    assert rollup(p)["AnonHugePages"] == 2048
    assert m.vmstat["thp_split_pmd"] == 1 and m.vmstat["thp_fault_alloc"] == 1
    assert (p.read(addr, 2 * MB) == before).all()
    assert c.read(addr, 4096)[0] == 1 and (c.read(addr + 4096, 2 * MB - 4096) == before[1:]).all()
    m.check()
    p.exit()
    # The child now maps 511 of the 512 pages: partially mapped.
    assert m.vmstat["thp_deferred_split_page"] == 1
    m.check()


def test_write_after_fork_reuses_an_exclusive_page_in_place(m):
    p = m.spawn()
    addr = p.mmap(MB)
    p.write(addr, MB)
    c = p.fork()
    c.exit()
    free = m.page_alloc.zone.nr_free_pages
    p.write(addr, MB)                        # read-only but exclusive again: no copies
    assert m.page_alloc.zone.nr_free_pages == free
    m.check()


def test_pageout_and_swap_in_preserve_contents(m):
    m.thp.enabled = "never"
    p = m.spawn()
    addr = p.mmap(2 * MB)
    p.write(addr, 2 * MB)
    words = p.read(addr, 2 * MB)
    p.madvise(addr, 2 * MB, MADV_PAGEOUT)
    r = rollup(p)
    assert r["Rss"] == 0 and r["Swap"] == 2048
    assert m.vmstat["pswpout"] == 512
    pm = m.procfs.pagemap(p.pid, addr, 2 * MB)
    assert ((pm >> np.uint64(62)) & np.uint64(1)).all()
    assert (p.read(addr, 2 * MB) == words).all()
    r = rollup(p)
    assert r["Rss"] == 2048 and r["Swap"] == 0
    m.check()


def test_pageout_of_a_thp_on_a_swap_file_splits_it_first(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB)
    words = p.read(addr, 2 * MB)
    p.madvise(addr, 2 * MB, MADV_PAGEOUT)
    assert m.vmstat["thp_swpout"] == 0 and m.vmstat["thp_swpout_fallback"] == 1
    assert m.vmstat["thp_split_pmd"] == 1 and m.vmstat["thp_split_page"] == 1
    assert rollup(p)["Swap"] == 2048 and rollup(p)["AnonHugePages"] == 0
    assert m.vmstat["pswpout"] == 512
    assert (p.read(addr, 2 * MB) == words).all()
    m.check()


def test_pageout_of_a_thp_on_a_block_device_swaps_it_out_whole():
    m = thpcore.Machine("1G", swap="256M", swap_device="blockdev")
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB)
    words = p.read(addr, 2 * MB)
    p.madvise(addr, 2 * MB, MADV_PAGEOUT)
    assert m.vmstat["thp_swpout"] == 1 and m.vmstat["thp_swpout_fallback"] == 0
    assert rollup(p)["Swap"] == 2048 and rollup(p)["AnonHugePages"] == 0
    assert (p.read(addr, 2 * MB) == words).all()
    assert rollup(p)["AnonHugePages"] == 0 and rollup(p)["Rss"] == 2048   # swapped in as 4 KiB
    m.check()


def test_pageout_without_swap_changes_nothing_but_age():
    m = thpcore.Machine("256M")
    p = m.spawn()
    addr = p.mmap(MB)
    p.write(addr, MB)
    p.madvise(addr, MB, MADV_PAGEOUT)
    assert rollup(p)["Rss"] == 1024 and rollup(p)["Referenced"] == 0
    m.check()


def test_cold_and_free_age_and_clean_pages(m):
    p = m.spawn()
    addr = p.mmap(MB)
    p.write(addr, MB)
    p.madvise(addr, MB // 2, MADV_COLD)
    assert rollup(p)["Referenced"] == 512
    p.madvise(addr, MB, MADV_FREE)
    r = rollup(p)
    assert r["Private_Dirty"] == 0 and r["Private_Clean"] == 1024
    assert m.vmstat["pglazyfree"] == 256
    m.check()


def test_prctl_thp_disable_and_except_advised(m):
    m.thp.enabled = "always"
    p = m.spawn()
    assert p.prctl(PR_GET_THP_DISABLE) == 0
    p.prctl(PR_SET_THP_DISABLE, 1)
    assert p.prctl(PR_GET_THP_DISABLE) == 1
    a = thp_region(p, 2 * MB)
    p.write(a, 2 * MB)
    assert rollup(p)["AnonHugePages"] == 0
    q = m.spawn()
    q.prctl(PR_SET_THP_DISABLE, 1, PR_THP_DISABLE_EXCEPT_ADVISED)
    assert q.prctl(PR_GET_THP_DISABLE) == 3
    b = thp_region(q, 2 * MB)
    c = thp_region(q, 2 * MB, advise=False)
    q.write(b, 2 * MB)
    q.write(c, 2 * MB)
    assert rollup(q)["AnonHugePages"] == 2048            # only the advised region
    child = q.fork()
    assert child.prctl(PR_GET_THP_DISABLE) == 3          # inherited through fork
    with pytest.raises(OSError) as e:
        q.prctl(PR_SET_THP_DISABLE, 1, 4)
    assert e.value.errno == errno.EINVAL
    m.check()


def test_mlock_populates_and_forbids_dontneed(m):
    p = m.spawn()
    addr = p.mmap(MB)
    p.mlock(addr, MB)
    r = rollup(p)
    assert r["Rss"] == 1024 and r["Locked"] == 1024
    err = unchanged(m, lambda: p.madvise(addr, MB, MADV_DONTNEED), OSError)
    assert err.errno == errno.EINVAL
    p.munlock(addr, MB)
    p.madvise(addr, MB, MADV_DONTNEED)
    assert rollup(p)["Rss"] == 0
    m.check()


def test_mmap_placement_is_top_down_and_thp_aligned(m):
    p = m.spawn()
    a = p.mmap(2 * MB)
    b = p.mmap(2 * MB)
    c = p.mmap(4096)
    assert a % (2 * MB) == 0 and b % (2 * MB) == 0
    assert b + 2 * MB == a and len(p.mm.vmas) == 2        # a and b adjacent and merged
    # An aligned mapping ends at the gap's top rounded down to 2 MiB, leaving a gap above it
    # (mmap_base is not 2 MiB aligned); a small mapping later fills that gap top-down.
    assert c == 0x7FFFF7FFF000 - 4096 and c > a
    fixed = p.mmap(MB, addr=1 << 30, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
    assert fixed == 1 << 30


def test_vmas_split_and_merge(m):
    p = m.spawn()
    addr = p.mmap(4 * MB)
    p.madvise(addr + MB, MB, MADV_HUGEPAGE)
    assert len(p.mm.vmas) == 3
    p.madvise(addr + MB, MB, 0)              # MADV_NORMAL does not clear hg
    p.madvise(addr + MB, MB, MADV_NOHUGEPAGE)
    assert len(p.mm.vmas) == 3
    smaps = p.smaps()
    assert "nh" in smaps[1]["VmFlags"] and smaps[1]["THPeligible"] == 0
    p.mprotect(addr, 4 * MB, PROT_READ)
    assert len(p.mm.vmas) == 3
    p.madvise(addr + MB, MB, MADV_HUGEPAGE)
    p.madvise(addr, 4 * MB, MADV_HUGEPAGE)
    assert len(p.mm.vmas) == 1


def test_exit_frees_everything(m):
    p = m.spawn()
    addr = thp_region(p, 8 * MB)
    p.write(addr, 8 * MB)
    p.read(p.mmap(4 * MB), 4 * MB)
    c = p.fork()
    c.write(addr, MB)
    p.madvise(addr + 4 * MB, MB, MADV_PAGEOUT)
    p.exit()
    c.exit()
    m.check()
    huge_zero = 0 if m.huge_zero_pfn is None else 512
    assert m.page_alloc.zone.nr_free_pages == m.nr_pages - huge_zero
    assert m.page_tables.swap_used == 0
    assert m.vmstat["nr_page_table_pages"] == 0
    assert m.processes() == []
    with pytest.raises(ProcessLookupError) as e:
        p.write(addr, 4096)
    assert e.value.errno == errno.ESRCH


# ---- bad input ---------------------------------------------------------------------------------

def test_segfaults_change_nothing(m):
    p = m.spawn()
    addr = p.mmap(4 * MB)
    p.write(addr, MB)
    ro = p.mmap(MB, prot=PROT_READ)
    none = p.mmap(MB, prot=PROT_NONE)
    for fn in (lambda: p.write(addr + 3 * MB, 2 * MB),           # runs past the end
               lambda: p.write(ro, 4096),                          # read-only
               lambda: p.read(none, 4096),                         # PROT_NONE
               lambda: p.write(addr - 4096, 8192),                 # starts in a hole
               lambda: p.read(1 << 46, 4096),
               lambda: p.write(-4096, 4096)):
        err = unchanged(m, fn, SegmentationFault)
        assert err.errno == errno.EFAULT


@pytest.mark.parametrize("args, code", [
    ((1, 4096, MADV_DONTNEED), errno.EINVAL),             # unaligned start
    ((0, 4096, 99), errno.EINVAL),                         # unknown advice
    ((0, 4096, 26), errno.EINVAL),
    ((0x7FFFF0000000, -1 & ((1 << 64) - 1), MADV_DONTNEED), errno.EINVAL),   # wraps
    ((4096, 4096, MADV_DONTNEED), errno.ENOMEM),           # unmapped
    ((4096, 4096, MADV_HUGEPAGE), errno.ENOMEM),
])
def test_madvise_errors(m, args, code):
    p = m.spawn()
    p.mmap(MB)
    err = unchanged(m, lambda: p.madvise(*args), OSError)
    assert err.errno == code


def test_madvise_zero_length_is_a_no_op(m):
    p = m.spawn()
    p.madvise(4096, 0, MADV_DONTNEED)


def test_madvise_over_a_hole_still_advises_the_mapped_part(m):
    p = m.spawn()
    addr = p.mmap(4 * MB)
    p.munmap(addr + MB, MB)
    with pytest.raises(OSError) as e:
        p.madvise(addr, 4 * MB, MADV_HUGEPAGE)
    assert e.value.errno == errno.ENOMEM
    assert all("hg" in s["VmFlags"] for s in p.smaps())
    m.check()


@pytest.mark.parametrize("call, exc", [
    (lambda p: p.mmap(0), OSError), (lambda p: p.mmap(-5), OSError),
    (lambda p: p.mmap(4096, flags=MAP_SHARED | MAP_ANONYMOUS), ValueError),
    (lambda p: p.mmap(4096, flags=MAP_PRIVATE), ValueError),
    (lambda p: p.mmap("4096"), TypeError), (lambda p: p.mmap(4096, prot=0x100), OSError),
    (lambda p: p.mmap(4096, addr=123, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED), OSError),
    (lambda p: p.mmap(1 << 48), OSError),
    (lambda p: p.munmap(123, 4096), OSError), (lambda p: p.munmap(4096, 0), OSError),
    (lambda p: p.mprotect(123, 4096, PROT_READ), OSError),
    (lambda p: p.mprotect(4096, 4096, PROT_READ), OSError),
    (lambda p: p.write(0, 4096, value=1 << 32), ValueError),
    (lambda p: p.write(0, -1), ValueError), (lambda p: p.read(None, 1), TypeError),
    (lambda p: p.madvise(0, 4096, "x"), TypeError),
    (lambda p: p.prctl(12345), OSError), (lambda p: p.mlock(4096, 4096), OSError),
])
def test_bad_calls_raise_and_change_nothing(m, call, exc):
    p = m.spawn()
    a = p.mmap(MB)
    p.write(a, MB)
    unchanged(m, lambda: call(p), exc)


def test_spawn_validates_credentials(m):
    assert m.spawn().caps >= {"CAP_SYS_NICE", "CAP_SYS_ADMIN"}
    assert m.spawn(uid=1000).caps == frozenset()
    assert m.spawn(uid=1000, caps={"CAP_SYS_NICE"}).caps == {"CAP_SYS_NICE"}
    with pytest.raises(ValueError):
        m.spawn(caps={"CAP_FLY"})
    with pytest.raises(TypeError):
        m.spawn(caps="CAP_SYS_NICE")
    with pytest.raises(ValueError):
        m.spawn(uid=-1)


def test_split_maps_zero_subpages_to_the_zero_page(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, MB, value=0)                   # written, but full of zeroes
    p.write(addr + MB, MB, value=5)
    assert rollup(p)["AnonHugePages"] == 2048 and rollup(p)["Rss"] == 2048
    p.madvise(addr, 4096, MADV_COLD)             # a partial range splits the folio
    assert m.vmstat["thp_split_page"] == 1 and m.vmstat["thp_split_pmd"] == 1
    assert rollup(p)["Rss"] == 1024              # the zero half now maps the zero page
    assert (p.read(addr, MB) == 0).all() and (p.read(addr + MB, MB) == 5).all()
    m.check()


def test_split_of_an_all_zero_thp_frees_it(m):
    p = m.spawn()
    addr = thp_region(p, 2 * MB)
    p.write(addr, 2 * MB, value=0)
    free = m.page_alloc.zone.nr_free_pages
    p.madvise(addr, 4096, MADV_COLD)
    assert rollup(p)["Rss"] == 0
    assert m.page_alloc.zone.nr_free_pages == free + 512
    m.check()


@pytest.mark.parametrize("how", ["mlock", "populate_write", "populate_read", "map_populate"])
def test_populating_keeps_the_data_already_there(how):
    """mlock, MADV_POPULATE_* and MAP_POPULATE fault pages in without storing anything: pages
    already there keep their content (4 KiB pages, a THP, a swapped-out page), new ones are 0."""
    import thpcore
    from thpcore import (MADV_HUGEPAGE, MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
                         MAP_ANONYMOUS, MAP_FIXED, MAP_POPULATE, MAP_PRIVATE)
    m = thpcore.Machine("1G", swap="16M", seed=0, transparent_hugepage="madvise")
    p = m.spawn()
    a = p.mmap(6 << 20)
    p.madvise(a + (2 << 20), 2 << 20, MADV_HUGEPAGE)
    p.write(a, 1 << 20, 5)                               # 4 KiB pages
    p.write(a + (2 << 20), 2 << 20, 6)                   # a THP
    p.madvise(a, 4096, MADV_PAGEOUT)                     # one page in swap
    if how == "mlock":
        p.mlock(a, 6 << 20)
    elif how == "map_populate":
        p.mmap(2 << 20, addr=a + (4 << 20),
               flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE)
    else:
        p.madvise(a, 6 << 20, MADV_POPULATE_WRITE if how == "populate_write" else MADV_POPULATE_READ)
    words = p.read(a, 6 << 20)
    assert (words[:256] == 5).all() and (words[256:512] == 0).all()
    assert (words[512:1024] == 6).all() and (words[1024:] == 0).all()
    m.check()
