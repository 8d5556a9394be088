"""The anonymous-memory cases of the kernel's tools/testing/selftests/mm/khugepaged.c, ported to
the simulator in both collapse contexts, asserting what the kernel's test asserts.

Not ported: the file/shmem variants (anonymous memory only).
"""

import errno

import numpy as np
import pytest

import thpcore
from thpcore import (MADV_COLLAPSE, MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT,
                     MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MREMAP_FIXED, MREMAP_MAYMOVE)

PAGE = 4096
HPAGE = 2 << 20
NR = 512
BASE_ADDR = 1 << 30


def machine():
    m = thpcore.Machine("1G", swap="64M", seed=0)
    # The selftest's pushed settings (main()).
    m.thp.enabled = "madvise"
    m.thp.defrag = "always"
    m.thp.use_zero_page = 0
    k = m.thp.khugepaged
    k.defrag = 1
    k.alloc_sleep_millisecs = 10
    k.scan_sleep_millisecs = 10
    k.max_ptes_none = NR - 1
    k.max_ptes_swap = NR // 8
    k.max_ptes_shared = NR // 2
    k.pages_to_scan = NR * 8
    return m


def setup_area(p, nr_hpages):
    return p.mmap(nr_hpages * HPAGE, addr=BASE_ADDR, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)


def fault(p, addr, start, end):
    """Write 0xdead0000 + i into page i of [start, end) (bytes from addr)."""
    for i in range(start // PAGE, end // PAGE):
        p.write(addr + i * PAGE, PAGE, value=0xDEAD0000 + i)


def validate(p, addr, start, end):
    words = p.read(addr + start, end - start)
    expect = 0xDEAD0000 + np.arange(start // PAGE, end // PAGE, dtype=np.uint32)
    assert (words == expect).all(), "page corrupted"


def check_huge(p, nr_hpages):
    return p.smaps_rollup()["AnonHugePages"] == nr_hpages * 2048


def collapse_khugepaged(m, p, addr, nr_hpages, expect):
    assert not check_huge(p, nr_hpages)
    p.madvise(addr, nr_hpages * HPAGE, MADV_HUGEPAGE)
    target = m.thp.khugepaged.full_scans + 2
    for _ in range(6):
        if check_huge(p, nr_hpages) or m.thp.khugepaged.full_scans >= target:
            break
        m.run(seconds=0.5)
    else:
        assert not expect, "Timeout"
        return
    p.madvise(addr, nr_hpages * HPAGE, MADV_NOHUGEPAGE)
    assert check_huge(p, nr_hpages if expect else 0)


def collapse_madvise(m, p, addr, nr_hpages, expect):
    assert not check_huge(p, nr_hpages)
    saved = m.thp.enabled
    m.thp.enabled = "never"
    p.madvise(addr, nr_hpages * HPAGE, MADV_HUGEPAGE)
    rc = 0
    for attempt in range(2):
        try:
            p.madvise(addr, nr_hpages * HPAGE, MADV_COLLAPSE)
            rc = 0
            break
        except OSError as e:
            rc = e.errno
            if rc != errno.EAGAIN:
                break
    m.thp.enabled = saved
    assert (rc == 0) == expect
    assert check_huge(p, nr_hpages if expect else 0)


CONTEXTS = {"khugepaged": collapse_khugepaged, "madvise": collapse_madvise}


@pytest.fixture(params=list(CONTEXTS))
def ctx(request):
    m = machine()
    p = m.spawn(name="khugepaged-selftest")
    yield request.param, m, p, CONTEXTS[request.param]
    m.check()


def alloc_hpage(m, p):
    """A PMD-mapped THP with the pattern, made by MADV_COLLAPSE, then MADV_HUGEPAGE."""
    addr = setup_area(p, 1)
    fault(p, addr, 0, HPAGE)
    p.madvise(addr, HPAGE, MADV_COLLAPSE)
    assert check_huge(p, 1)
    p.madvise(addr, HPAGE, MADV_HUGEPAGE)
    return addr


def test_alloc_at_fault():
    m = machine()
    p = m.spawn()
    m.thp.enabled = "always"
    addr = setup_area(p, 1)
    p.write(addr, 1)
    assert check_huge(p, 1)
    m.thp.enabled = "madvise"
    p.madvise(addr, PAGE, MADV_DONTNEED)
    assert check_huge(p, 0)
    m.check()


def test_collapse_full(ctx):
    name, m, p, collapse = ctx
    addr = setup_area(p, 4)
    fault(p, addr, 0, 4 * HPAGE)
    collapse(m, p, addr, 4, True)
    validate(p, addr, 0, 4 * HPAGE)


def test_collapse_empty(ctx):
    name, m, p, collapse = ctx
    addr = setup_area(p, 1)
    collapse(m, p, addr, 1, False)


def test_collapse_single_pte_entry(ctx):
    name, m, p, collapse = ctx
    addr = setup_area(p, 1)
    fault(p, addr, 0, PAGE)
    collapse(m, p, addr, 1, True)
    validate(p, addr, 0, PAGE)
    assert (p.read(addr + PAGE, HPAGE - PAGE) == 0).all()


def test_collapse_max_ptes_none(ctx):
    name, m, p, collapse = ctx
    max_ptes_none = NR // 2
    m.thp.khugepaged.max_ptes_none = max_ptes_none
    addr = setup_area(p, 1)
    fault(p, addr, 0, (NR - max_ptes_none - 1) * PAGE)
    collapse(m, p, addr, 1, name != "khugepaged")
    validate(p, addr, 0, (NR - max_ptes_none - 1) * PAGE)
    if name == "khugepaged":
        fault(p, addr, 0, (NR - max_ptes_none) * PAGE)
        collapse(m, p, addr, 1, True)
        validate(p, addr, 0, (NR - max_ptes_none) * PAGE)
    m.thp.khugepaged.max_ptes_none = NR - 1


def test_collapse_swapin_single_pte(ctx):
    name, m, p, collapse = ctx
    addr = setup_area(p, 1)
    fault(p, addr, 0, HPAGE)
    p.madvise(addr, PAGE, MADV_PAGEOUT)
    assert p.smaps_rollup()["Swap"] == 4
    collapse(m, p, addr, 1, True)
    validate(p, addr, 0, HPAGE)


def test_collapse_max_ptes_swap(ctx):
    name, m, p, collapse = ctx
    max_ptes_swap = m.thp.khugepaged.max_ptes_swap
    addr = setup_area(p, 1)
    fault(p, addr, 0, HPAGE)
    p.madvise(addr, (max_ptes_swap + 1) * PAGE, MADV_PAGEOUT)
    assert p.smaps_rollup()["Swap"] == (max_ptes_swap + 1) * 4
    collapse(m, p, addr, 1, name != "khugepaged")
    validate(p, addr, 0, HPAGE)
    if name == "khugepaged":
        fault(p, addr, 0, HPAGE)
        p.madvise(addr, max_ptes_swap * PAGE, MADV_PAGEOUT)
        assert p.smaps_rollup()["Swap"] == max_ptes_swap * 4
        collapse(m, p, addr, 1, True)
        validate(p, addr, 0, HPAGE)


def test_collapse_single_pte_entry_compound(ctx):
    name, m, p, collapse = ctx
    addr = alloc_hpage(m, p)
    p.madvise(addr, HPAGE, MADV_NOHUGEPAGE)
    p.madvise(addr + PAGE, HPAGE - PAGE, MADV_DONTNEED)
    assert check_huge(p, 0)
    collapse(m, p, addr, 1, True)
    validate(p, addr, 0, PAGE)


def test_collapse_full_of_compound(ctx):
    name, m, p, collapse = ctx
    addr = alloc_hpage(m, p)
    p.madvise(addr, PAGE, MADV_NOHUGEPAGE)       # the split trick: split the VMA, hence the PMD
    p.madvise(addr, HPAGE, MADV_NOHUGEPAGE)      # and merge the VMAs again
    assert check_huge(p, 0)
    collapse(m, p, addr, 1, True)
    validate(p, addr, 0, HPAGE)


def test_collapse_compound_extreme(ctx):
    """A PTE table full of 512 different PTE-mapped compound pages, built by mremap: each round
    faults a THP at BASE_ADDR and moves its first page (with the pages gathered so far) away
    and back, one page lower. Then it must still collapse."""
    name, m, p, collapse = ctx
    setup_area(p, 1)
    moved = BASE_ADDR
    for i in range(NR):
        p.madvise(BASE_ADDR, HPAGE, MADV_HUGEPAGE)
        p.write(BASE_ADDR, HPAGE, value=i + 1)          # a new THP at BASE_ADDR
        assert check_huge(p, 1), "Failed to allocate huge page"
        p.madvise(BASE_ADDR, HPAGE, MADV_NOHUGEPAGE)
        p.mremap(BASE_ADDR - i * PAGE, i * PAGE + HPAGE, (i + 1) * PAGE,
                 MREMAP_MAYMOVE | MREMAP_FIXED, BASE_ADDR + 2 * HPAGE)
        moved = p.mremap(BASE_ADDR + 2 * HPAGE, (i + 1) * PAGE, (i + 1) * PAGE + HPAGE,
                         MREMAP_MAYMOVE | MREMAP_FIXED, BASE_ADDR - (i + 1) * PAGE)
    p.munmap(BASE_ADDR, HPAGE)
    assert moved == BASE_ADDR - HPAGE
    fault(p, moved, 0, HPAGE)
    assert not check_huge(p, 1)
    # Every page came from a different THP; under this 1G machine's pressure reclaim split
    # the partly mapped ones (deferred split) and compaction moved pages, as the kernel may.
    assert pte_pfns(m, p, moved).size == NR
    assert m.vmstat["thp_fault_alloc"] >= NR and m.vmstat["thp_split_pmd"] >= NR
    collapse(m, p, moved, 1, True)
    validate(p, moved, 0, HPAGE)


def pte_pfns(m, p, addr):
    """The pfns the PTE table of the region at addr maps (all present)."""
    from thpcore.mm.mm_types import pmd_kind, pmd_table_id, PMD_KIND_TABLE
    entry = p.mm.get_pmd(addr)
    assert pmd_kind(entry) == PMD_KIND_TABLE
    table = m.page_tables.table(pmd_table_id(entry))
    assert ((table & 1) != 0).all()
    return table >> 4


def test_collapse_fork(ctx):
    name, m, p, collapse = ctx
    addr = setup_area(p, 1)
    fault(p, addr, 0, PAGE)
    assert check_huge(p, 0)
    child = p.fork()
    assert check_huge(child, 0)
    fault(child, addr, PAGE, 2 * PAGE)
    collapse(m, child, addr, 1, True)
    validate(child, addr, 0, PAGE)
    child.exit()
    assert check_huge(p, 0)
    validate(p, addr, 0, PAGE)


def test_collapse_fork_compound(ctx):
    name, m, p, collapse = ctx
    addr = alloc_hpage(m, p)
    child = p.fork()
    assert check_huge(child, 1)
    child.madvise(addr, PAGE, MADV_NOHUGEPAGE)
    child.madvise(addr, HPAGE, MADV_NOHUGEPAGE)
    assert check_huge(child, 0)
    fault(child, addr, 0, PAGE)
    m.thp.khugepaged.max_ptes_shared = NR - 1
    collapse(m, child, addr, 1, True)
    m.thp.khugepaged.max_ptes_shared = NR // 2
    validate(child, addr, 0, HPAGE)
    child.exit()
    assert check_huge(p, 1)
    validate(p, addr, 0, HPAGE)


def test_collapse_max_ptes_shared(ctx):
    name, m, p, collapse = ctx
    max_ptes_shared = m.thp.khugepaged.max_ptes_shared
    addr = alloc_hpage(m, p)
    child = p.fork()
    assert check_huge(child, 1)
    fault(child, addr, 0, (NR - max_ptes_shared - 1) * PAGE)
    assert check_huge(child, 0)
    collapse(m, child, addr, 1, name != "khugepaged")
    if name == "khugepaged":
        fault(child, addr, 0, (NR - max_ptes_shared) * PAGE)
        assert check_huge(child, 0)
        collapse(m, child, addr, 1, True)
    validate(child, addr, 0, HPAGE)
    child.exit()
    assert check_huge(p, 1)
    validate(p, addr, 0, HPAGE)


def test_madvise_collapse_existing_thps():
    m = machine()
    p = m.spawn()
    addr = setup_area(p, 1)
    fault(p, addr, 0, HPAGE)
    collapse_madvise(m, p, addr, 1, True)
    validate(p, addr, 0, HPAGE)
    p.madvise(addr, HPAGE, MADV_COLLAPSE)
    assert check_huge(p, 1)
    validate(p, addr, 0, HPAGE)
    m.check()
