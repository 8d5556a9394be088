"""Multi-size THP at anonymous faults in the simulator: order choice, fallbacks, charge,
partial unmaps, the deferred split, fork/COW, swap. (tests/live/test_live_mthp.py compares the
layouts and counters with the live kernel.)"""

import errno

import numpy as np
import pytest

import thpcore
from thpcore import MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT
from thpcore.mm.huge_memory import deferred_split_scan, folio_heads

KB, MB, P = 1024, 1 << 20, 4096
T = "/sys/kernel/mm/transparent_hugepage"


def _machine(mem="1G", **sizes):
    m = thpcore.Machine(mem, seed=0, transparent_hugepage="never")
    for kb, value in sizes.items():
        m.sysfs.write(f"{T}/hugepages-{kb[1:]}kB/enabled", value)
    return m


def _stat(m, kb, name):
    return int(m.sysfs.read(f"{T}/hugepages-{kb}kB/stats/{name}"))


def _orders(m, p, addr, n):
    """The folio order of each present page of [addr, addr + n pages), -1 where none."""
    from thpcore.proc import task_mmu
    pm = task_mmu.pagemap(m, p.mm, addr, addr + n * P)
    out = np.full(n, -1)
    present = (pm >> np.uint64(63)) == 1
    pfns = (pm[present] & np.uint64((1 << 55) - 1)).astype(np.int64)
    real = pfns < m.nr_pages
    _, orders = folio_heads(m, pfns[real])
    idx = np.nonzero(present)[0][real]
    out[idx] = orders
    return out


def _aligned(p, length=2 * MB):
    a = p.mmap(length + 2 * MB)
    return (a + 2 * MB - 1) & ~(2 * MB - 1)


def test_highest_enabled_order_is_taken_and_counted_per_size():
    m = _machine(_64="always", _16="always")
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 256 * KB, 7)
    assert (_orders(m, p, a, 64) == 4).all()
    assert _stat(m, 64, "anon_fault_alloc") == 4 and _stat(m, 64, "nr_anon") == 4
    assert _stat(m, 16, "anon_fault_alloc") == 0
    assert (p.read(a, 256 * KB) == 7).all()
    assert p.smaps_rollup()["AnonHugePages"] == 0 and p.smaps_rollup()["Rss"] == 256
    assert m.vmstat["thp_fault_alloc"] == 0
    m.check()


def test_madvise_size_needs_vm_hugepage_and_nohugepage_or_prctl_refuses():
    m = _machine(_64="madvise")
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 64 * KB, 1)
    assert (_orders(m, p, a, 16) == 0).all()
    b = _aligned(p)
    p.madvise(b, 2 * MB, MADV_HUGEPAGE)
    p.write(b, 64 * KB, 1)
    assert (_orders(m, p, b, 16) == 4).all()
    m.thp.hugepages_64kB.enabled = "always"
    p.madvise(b, 2 * MB, MADV_NOHUGEPAGE)
    p.write(b + 64 * KB, 64 * KB, 1)
    assert (_orders(m, p, b + 64 * KB, 16) == 0).all()
    m.check()


def test_inherit_follows_the_global_knob():
    m = _machine(_32="inherit")
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 32 * KB, 1)
    assert (_orders(m, p, a, 8) == 0).all()
    m.thp.enabled = "always"     # the region has a PTE table already: no PMD THP here
    p.write(a + 64 * KB, 32 * KB, 1)
    assert _orders(m, p, a + 64 * KB, 8).min() >= 3


def test_no_free_block_falls_back_order_by_order():
    m = _machine("256M", _64="always", _32="always")
    from thpcore import _engine
    zone = m.page_alloc.zone
    # Every frame to the kernel, then every fourth one back: free memory is all order 0.
    taken = []
    while (pfn := zone.alloc(0, 0, _engine.PY_ALLOC_NO_WATERMARKS, _engine.PY_PG_KERNEL)) >= 0:
        taken.append(pfn)
    for pfn in taken:
        if pfn % 4 == 0:
            m.kernel_free(pfn, 0)
    assert not zone.free_area()[:, 1:].any()
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 64 * KB, 1)
    assert _stat(m, 64, "anon_fault_fallback") >= 1
    assert _stat(m, 32, "anon_fault_fallback") >= 1
    assert _stat(m, 64, "anon_fault_alloc") == 0
    assert (_orders(m, p, a, 16) == 0).all()
    m.check()


def test_memcg_charge_failure_counts_fallback_charge_and_maps_small_pages():
    m = _machine(_64="always")
    m.cgroups.create("box")
    m.sysfs.write("/sys/fs/cgroup/box/memory.max", str(40 * KB))
    p = m.spawn(cgroup="box")
    a = _aligned(p)
    p.write(a, 8 * KB, 1)        # ... the page tables aside, 10 pages fit: no 64K folio
    assert _stat(m, 64, "anon_fault_fallback_charge") == 1
    assert _stat(m, 64, "anon_fault_fallback") == 1
    assert (_orders(m, p, a, 2) == 0).all()
    m.check()


def test_partial_unmap_queues_a_deferred_split_and_the_shrinker_remaps_zero_pages():
    m = _machine(_64="always")
    p = m.spawn()
    a = _aligned(p)
    p.write(a, P, 5)             # one page written, 15 zero pages in the folio
    p.madvise(a + 8 * P, P, MADV_DONTNEED)
    assert _stat(m, 64, "split_deferred") == 1
    assert _stat(m, 64, "nr_anon_partially_mapped") == 1
    assert p.smaps_rollup()["Rss"] == 60
    deferred_split_scan(m, 128)
    assert _stat(m, 64, "split") == 1 and _stat(m, 64, "nr_anon") == 0
    assert _stat(m, 64, "nr_anon_partially_mapped") == 0
    assert p.smaps_rollup()["Rss"] == 4          # the zero subpages map the zero page now
    assert p.read(a, P)[0] == 5 and (p.read(a + P, 15 * P) == 0).all()
    m.check()


def test_whole_unmap_frees_the_folio_without_a_split():
    m = _machine(_64="always")
    p = m.spawn()
    a = _aligned(p)
    p.write(a + MB, P, 1)        # the region's page table first
    free0 = m.page_alloc.zone.nr_free_pages
    p.write(a, 64 * KB, 1)
    p.madvise(a, 64 * KB, MADV_DONTNEED)
    assert _stat(m, 64, "split_deferred") == 0
    assert _stat(m, 64, "nr_anon") == 1                  # the folio at a + 1 MiB
    assert m.page_alloc.zone.nr_free_pages == free0
    m.check()


def test_fork_cow_copies_one_page_and_exit_leaves_no_partial_folio():
    m = _machine(_64="always")
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 64 * KB, 1)
    c = p.fork()
    c.write(a + P, P, 2)
    assert list(_orders(m, c, a, 3)) == [4, 0, 4]
    assert (_orders(m, p, a, 16) == 4).all()
    assert p.read(a + P, P)[0] == 1 and c.read(a + P, P)[0] == 2
    c.exit()
    assert _stat(m, 64, "split_deferred") == 0
    p.write(a, 64 * KB, 3)       # exclusive again: reused in place, no copy
    assert (_orders(m, p, a, 16) == 4).all()
    m.check()


def test_pageout_splits_to_a_swap_file_and_swapin_is_order_zero():
    m = thpcore.Machine("1G", seed=0, swap="256M", transparent_hugepage="never")
    m.thp.hugepages_64kB.enabled = "always"
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 64 * KB, 9)
    p.madvise(a, 64 * KB, MADV_PAGEOUT)
    assert _stat(m, 64, "swpout_fallback") == 1 and _stat(m, 64, "split") == 1
    assert p.smaps_rollup()["Swap"] == 64
    assert (p.read(a, 64 * KB) == 9).all()
    assert (_orders(m, p, a, 16) == 0).all()
    m.check()


def test_khugepaged_collapses_mthp_folios_into_a_pmd():
    m = _machine(_64="always")              # the PMD size inherits "never"
    p = m.spawn()
    a = _aligned(p)
    p.write(a, 2 * MB, 4)
    assert (_orders(m, p, a, 512) == 4).all()
    p.madvise(a, 2 * MB, thpcore.MADV_COLLAPSE)
    assert p.smaps_rollup()["AnonHugePages"] == 2048
    assert _stat(m, 64, "nr_anon") == 0 and (p.read(a, 2 * MB) == 4).all()
    m.check()


def test_same_seed_same_state_with_mthp():
    def run():
        m = _machine(_64="always", _16="always", _256="madvise")
        p = m.spawn()
        a = _aligned(p, 4 * MB)
        rng = np.random.default_rng(3)
        for _ in range(200):
            off = int(rng.integers(0, 1024)) * P
            n = int(rng.integers(1, 40)) * P
            n = min(n, 4 * MB - off)
            if rng.random() < 0.7:
                p.write(a + off, n, int(rng.integers(1, 100)))
            else:
                p.madvise(a + off, n, MADV_DONTNEED)
        deferred_split_scan(m, 1000)
        m.check()
        return m.state_hash()
    assert run() == run()


def test_bad_folio_arguments_are_refused_without_damage():
    m = _machine(_64="always")
    pt = m.page_tables
    with pytest.raises(ValueError):
        pt.alloc_thp(0, 0, 12)
    with pytest.raises(ValueError):
        pt.split_folio(0)                      # not a large user folio
    with pytest.raises(ValueError):
        pt.map_anon_folio(0, 0, 0)
    with pytest.raises(OSError) as e:
        m.sysfs.write(f"{T}/hugepages-64kB/enabled", "sometimes")
    assert e.value.errno == errno.EINVAL
    m.check()


def test_thpmaps_reports_mthp_folios_by_size_and_partial_ones():
    from thpcore.cli import thpmaps
    m = _machine(_64="always")
    p = m.spawn()
    a = _aligned(p)
    p.write(a, MB, 1)
    p.madvise(a + P, P, MADV_DONTNEED)
    text = thpmaps.render(thpmaps.classify(thpmaps.gather_sim(m, p.pid)))
    assert "anon-thp-pte-aligned-64kB:           960 kB (94%)" in text
    assert "anon-thp-pte-partial:                 60 kB ( 6%)" in text


def test_check_finds_an_allocated_mthp_that_nothing_maps():
    from thpcore import _engine
    m = _machine(_64="always")
    head = m.page_tables.alloc_thp(_engine.PY_ALLOC_WMARK_LOW, 0, 4)
    assert head >= 0
    with pytest.raises(thpcore.InvariantError, match="mapcount 1 but 0 mappings"):
        m.check()                                  # a folio allocated and never mapped
    for pfn in range(head + 1, head + 16):
        m.page_tables.put_frame(pfn)               # partly mapped by its count, still leaked
    with pytest.raises(thpcore.InvariantError, match=f"pfn {head}: mapcount 1"):
        m.check()
    m.page_tables.put_frame(head)                  # the last put frees the whole folio
    m.check()
