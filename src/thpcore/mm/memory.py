"""mm/memory.c: page faults over a range, and zapping (unmapping) a range."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

import thpcore._engine as _engine
from thpcore.errors import OOMKilled, OutOfMemory, SegmentationFault
from thpcore.mm.huge_memory import (HPAGE_PMD_NR, TVA, folio_partially_mapped, get_huge_zero_folio,
                                    map_new_thp, region_in_vma, split_huge_pmd, thp_vma_allowable,
                                    thp_vma_allowable_mthp_orders, vma_thp_gfp_mask, zap_huge_pmd)
from thpcore.mm.memcontrol import MAX_RECLAIM_RETRIES
from thpcore.mm.mm_types import (MM, PMD_DIRTY, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_KIND_TABLE, PMD_WRITE,
                                 PMD_YOUNG, make_huge_zero_pmd, make_table_pmd, pmd_huge_pfn, pmd_kind,
                                 pmd_table_id)
from thpcore.mm.oom_kill import oom_kill
from thpcore.mm.thp_alloc import alloc_thp
from thpcore.mm.vma import PAGE_SHIFT, PMD_SHIFT, PMD_SIZE, PUD_SHIFT, VM_WRITE, VMA
from thpcore.mm.vmscan import try_to_free_mem_cgroup_pages, try_to_free_pages

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel


def anon_vma_prepare(kernel: "Kernel", vma: VMA) -> None:
    if vma.anon_vma is None:
        vma.anon_vma = kernel.new_anon_vma_id()


def khugepaged_enter_vma(kernel: "Kernel", mm: MM, vma: VMA) -> None:
    """Register the mm with khugepaged if PMD THP is on and the VMA qualifies (anon_vma set)."""
    if not mm.registered and kernel.thp.pmd_enabled() \
            and thp_vma_allowable(kernel, mm, vma, TVA.KHUGEPAGED):
        mm.registered = True
        kernel.khugepaged_mm_list.append(mm)


def _pte_table(kernel: "Kernel", mm: MM, region: int) -> int:
    """pte_alloc(): the region's PTE table, allocated on first use."""
    entry = mm.get_pmd(region)
    if pmd_kind(entry) == PMD_KIND_TABLE:
        return pmd_table_id(entry)
    retries = 0
    while (tid := kernel.page_tables.new_table()) < 0:
        # The page-table page comes from the same slow path as any page: reclaim, OOM.
        retries = _fault_failed(kernel, mm, -1, retries)
    mm.set_pmd(region, make_table_pmd(tid))
    return tid


def _do_huge_pmd_anonymous_page(kernel: "Kernel", mm: MM, vma: VMA, region: int,
                                write: bool) -> bool:
    """A fault on a none PMD in a THP-eligible region; True if a huge PMD now maps it."""
    anon_vma_prepare(kernel, vma)
    khugepaged_enter_vma(kernel, mm, vma)
    pt = kernel.page_tables
    if not write and kernel.thp.use_zero_page:
        if not get_huge_zero_folio(kernel, mm):
            kernel.count("thp_fault_fallback")
            return False
        deposit = pt.new_table()
        if deposit < 0:
            raise OutOfMemory("no memory for a page table")
        mm.set_pmd(region, make_huge_zero_pmd(deposit))
        kernel.charge(kernel.costs.fault_zero_page_ns, "fault")
        return True
    gfp = vma_thp_gfp_mask(kernel, vma)
    head = alloc_thp(kernel, gfp, mm.memcg.id)
    if head < 0:
        kernel.count("thp_fault_fallback")
        kernel.count_mthp("anon_fault_fallback")
        return False
    if not charge_thp(kernel, mm, head, gfp):
        kernel.count("thp_fault_fallback")
        kernel.count("thp_fault_fallback_charge")
        kernel.count_mthp("anon_fault_fallback")
        kernel.count_mthp("anon_fault_fallback_charge")
        return False
    mm.memcg.stat_events["thp_fault_alloc"] += 1       # memory.stat sums the subtree
    deposit = pt.new_table()
    if deposit < 0:
        kernel.page_alloc.zone.free(head, 9)
        raise OutOfMemory("no memory for a page table")
    map_new_thp(kernel, mm, vma, region, head, deposit)
    kernel.count("thp_fault_alloc")
    kernel.count_mthp("anon_fault_alloc")
    kernel.charge(kernel.costs.fault_thp_ns, "fault")
    return True


def charge_thp(kernel: "Kernel", mm: MM, head: int, gfp, order: int = 9) -> bool:
    """mem_cgroup_charge() of a freshly allocated THP (counted against mm's memcg already):
    over a memory.max, reclaim in the limiting memcg if the gfp may block; if it still does
    not fit, the THP is freed (a THP charge never OOM-kills)."""
    for _ in range(MAX_RECLAIM_RETRIES + 1):
        limiting = kernel.cgroups.over_limit(mm.memcg, 0)
        if limiting is None:
            return True
        limiting.events["max"] += 1
        excess = kernel.cgroups.usage_pages(limiting) - limiting.max_pages
        if not gfp.direct_reclaim or not try_to_free_mem_cgroup_pages(kernel, limiting, excess):
            break
    kernel.page_alloc.zone.free(head, order)
    return False


def _wp_huge_pmd(kernel: "Kernel", mm: MM, vma: VMA, region: int) -> bool:
    """A write to a read-only huge PMD. Returns True if the PMD is now writable."""
    entry = mm.get_pmd(region)
    if pmd_kind(entry) == PMD_KIND_HUGE_ZERO:
        # do_huge_zero_wp_pmd() (6.13+): try a fresh THP before splitting.
        gfp = vma_thp_gfp_mask(kernel, vma)
        head = alloc_thp(kernel, gfp, mm.memcg.id)
        if head >= 0 and not charge_thp(kernel, mm, head, gfp):
            kernel.count("thp_fault_fallback_charge")
            head = -1
        if head >= 0:
            map_new_thp(kernel, mm, vma, region, head, pmd_table_id(entry))
            kernel.count("thp_fault_alloc")
            kernel.count_mthp("anon_fault_alloc")
            kernel.charge(kernel.costs.fault_thp_ns, "fault")
            return True
        kernel.count("thp_fault_fallback")
        kernel.count_mthp("anon_fault_fallback")
        split_huge_pmd(kernel, mm, region)
        return False
    head = pmd_huge_pfn(entry)
    frames = kernel.page_alloc.zone.frames()["mapcount"]
    if (frames[head:head + HPAGE_PMD_NR] == 1).all():
        # Exclusive: reuse in place (do_huge_pmd_wp_page).
        mm.set_pmd(region, entry | PMD_WRITE | PMD_DIRTY | PMD_YOUNG)
        return True
    split_huge_pmd(kernel, mm, region)
    return False


# The engine walks runs of regions that need no kernel-model decision (fault_range/zap_range);
# False sends every region through the per-region Python path (tests compare the two).
FAST_RANGE_WALKS = True


def populate(kernel: "Kernel", mm: MM, vma: VMA, start: int, end: int, write: bool) -> None:
    """MAP_POPULATE / MADV_POPULATE_* / mlock: fault the range without storing data."""
    handle_mm_fault_range(kernel, mm, vma, start, end, write, _engine.PY_VALUE_KEEP, 0, None)


def handle_mm_fault_range(kernel: "Kernel", mm: MM, vma: VMA, start: int, end: int,
                          write: bool, value_mode: int, value: int,
                          out: np.ndarray | None) -> None:
    """Touch every page of [start, end) inside vma as one access each (read or write).
    The caller has checked that the VMA permits the access."""
    pt = kernel.page_tables
    orders = thp_vma_allowable_mthp_orders(kernel, mm, vma) if write else 0
    pt.mthp_orders = orders
    if orders:
        pt.mthp_vma_start, pt.mthp_vma_end = vma.start >> PAGE_SHIFT, vma.end >> PAGE_SHIFT
        pt.mthp_alloc_flags = (_engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT
                               | vma_thp_gfp_mask(kernel, vma).alloc_flags())
    try:
        _handle_mm_fault_range(kernel, mm, vma, start, end, write, value_mode, value, out)
    finally:
        pt.mthp_orders = 0


def _handle_mm_fault_range(kernel, mm, vma, start, end, write, value_mode, value, out):
    vma_write = bool(vma.flags & VM_WRITE)
    memcg = mm.memcg.id
    # memory.high is enforced after each PTE table's faults (as the per-region path does).
    fast = FAST_RANGE_WALKS and not kernel.cgroups.any_high
    if write and fast:
        anon_vma_prepare(kernel, vma)          # what the first written page would do
    pos = start
    while pos < end:
        if fast:
            arr = mm.pmd_dir.get(pos >> PUD_SHIFT)
            # Peek at the first region: fresh memory (a none PMD) goes straight to Python.
            if arr is not None and _walkable(int(arr[(pos >> PMD_SHIFT) & 511]), write):
                gend = min(end, ((pos >> PUD_SHIFT) + 1) << PUD_SHIFT)
                o = None if out is None else out[(pos - start) >> PAGE_SHIFT:(gend - start) >> PAGE_SHIFT]
                pos = _fault_pmd_range(kernel, mm, vma, arr, pos, gend, write, vma_write,
                                       value_mode, value, o, memcg)
                if pos == gend:
                    continue
        region = pos & ~(PMD_SIZE - 1)
        hi = min(end, region + PMD_SIZE)
        o = None if out is None else out[(pos - start) >> PAGE_SHIFT:(hi - start) >> PAGE_SHIFT]
        _fault_region(kernel, mm, vma, region, pos, hi, write, vma_write, value_mode, value,
                      o, memcg)
        pos = hi


def _walkable(entry: int, write: bool) -> bool:
    """Whether the engine's walk can take a region with this PMD entry."""
    kind = pmd_kind(entry)
    if kind == PMD_KIND_TABLE:
        return True
    if kind == PMD_KIND_HUGE:
        return not write or bool(entry & PMD_WRITE)
    return kind == PMD_KIND_HUGE_ZERO and not write


def _fault_pmd_range(kernel, mm, vma, arr, lo, hi, write, vma_write, value_mode, value, out,
                     memcg) -> int:
    """The engine's walk over [lo, hi) (one GiB); returns where it stopped: hi, or the start
    of a region that needs _fault_region. Reclaim and OOM kills as in _fault_ptes."""
    pt = kernel.page_tables
    vpn, vpn_end = lo >> PAGE_SHIFT, hi >> PAGE_SHIFT
    retries = 0
    while True:
        rc, stats = _engine_fault(kernel, mm, lambda: pt.fault_range(
            arr, vpn, vpn_end, write, vma_write, value_mode, value, out, memcg))
        stopped = stats["stopped_vpn"]
        if out is not None:
            out = out[stopped - vpn:]
        vpn = stopped
        if rc >= 0:                                     # done, or a region for Python
            return vpn << PAGE_SHIFT
        if rc == _engine.PY_FAULT_BAD_PMD:
            raise RuntimeError(f"corrupt PMD entry at {vpn << PAGE_SHIFT:#x}")
        if rc == _engine.PY_FAULT_SIGSEGV:
            _guard_fault(vpn << PAGE_SHIFT)
        if rc == _engine.PY_FAULT_MTHP:
            tid = pmd_table_id(int(arr[(vpn >> 9) & 511]))
            _do_anonymous_mthp_slow(kernel, mm, vma, tid, vpn & 511, vpn, stats["mthp_order"],
                                    vma_write, memcg)
            continue
        retries = _fault_failed(kernel, mm, rc, retries)


def _do_anonymous_mthp_slow(kernel, mm, vma, tid, i, vpn, order, vma_write, memcg) -> None:
    """The rest of alloc_anon_folio() after the engine's fast path failed at `order`: each
    remaining order with the VMA's THP gfp (slow path: compaction, reclaim as the defrag knob
    allows) and its memcg charge, counting anon_fault_fallback(_charge) per order tried;
    without any, one order-0 page. The faulting PTE is present afterwards (the caller's
    engine walk resumes there and stores the write)."""
    pt = kernel.page_tables
    gfp = vma_thp_gfp_mask(kernel, vma)
    orders = pt.mthp_orders
    for k in range(order, 1, -1):
        if not orders & (1 << k):
            continue
        head = alloc_thp(kernel, gfp, mm.memcg.id, order=k)
        if head >= 0 and not charge_thp(kernel, mm, head, gfp, order=k):
            kernel.count_mthp("anon_fault_fallback_charge", order=k)
            head = -1
        if head < 0:
            kernel.count_mthp("anon_fault_fallback", order=k)
            continue
        _engine_fault(kernel, mm, lambda: pt.map_anon_folio(tid, i, head, memcg))
        return
    pt.mthp_orders = 0
    try:
        _fault_ptes(kernel, mm, tid, i, i + 1, True, vma_write, vpn, _engine.PY_VALUE_KEEP, 0,
                    None, memcg)
    finally:
        pt.mthp_orders = orders


def _fault_region(kernel, mm, vma, region, lo, hi, write, vma_write, value_mode, value, o,
                  memcg) -> None:
    """One 2 MiB region of a fault: THP at fault, huge zero page, huge PMD write protection,
    then the PTE level."""
    pt = kernel.page_tables
    i0, i1 = (lo - region) >> PAGE_SHIFT, (hi - region) >> PAGE_SHIFT
    vpn0 = lo >> PAGE_SHIFT
    entry = mm.get_pmd(region)
    kind = pmd_kind(entry)
    if entry == 0 and region_in_vma(vma, region) \
            and thp_vma_allowable(kernel, mm, vma, TVA.PAGEFAULT):
        if _do_huge_pmd_anonymous_page(kernel, mm, vma, region, write):
            entry = mm.get_pmd(region)
            kind = pmd_kind(entry)
    if kind == PMD_KIND_HUGE_ZERO:
        if not write:
            if o is not None:
                o[:] = 0
            return
        if _wp_huge_pmd(kernel, mm, vma, region):
            entry = mm.get_pmd(region)
            kind = pmd_kind(entry)
        else:
            kind = PMD_KIND_TABLE
    if kind == PMD_KIND_HUGE:
        head = pmd_huge_pfn(entry)
        if write and not entry & PMD_WRITE:
            if _wp_huge_pmd(kernel, mm, vma, region):
                entry = mm.get_pmd(region)
            else:
                kind = PMD_KIND_TABLE
        if kind == PMD_KIND_HUGE:
            if write:
                pt.thp_write(head, i0, i1, value_mode, value, vpn0)
                mm.set_pmd(region, entry | PMD_YOUNG | PMD_DIRTY)
            else:
                if o is not None:
                    o[:] = pt.thp_read(head, i0, i1)
                mm.set_pmd(region, entry | PMD_YOUNG)
            return
    # The PTE level. Only a write sets up the anon_vma: a read maps the zero page
    # (do_anonymous_page) and leaves the VMA without one.
    if write:
        anon_vma_prepare(kernel, vma)
    tid = _pte_table(kernel, mm, region)
    _fault_ptes(kernel, mm, tid, i0, i1, write, vma_write, vpn0, value_mode, value, o, memcg)


def _engine_fault(kernel, mm, call):
    """One engine fault call with the memcg's charge margin as its budget; the results are
    accounted (RSS, costs, partly mapped THPs) and kswapd woken below the low watermark.
    Returns (rc, stats)."""
    pt = kernel.page_tables
    margin = kernel.cgroups.margin(mm.memcg)
    pt.charge_budget = -1 if margin is None else max(margin, 0)
    pt.reset_stats()
    rc = call()
    pt.charge_budget = -1
    stats = pt.get_stats()
    _account(kernel, mm, stats)
    _check_kswapd(kernel)
    return rc, stats


def _check_kswapd(kernel) -> None:
    zone = kernel.page_alloc.zone
    if zone.nr_free_pages < zone.watermarks()[1] + zone.watermark_boost:
        kernel.wakeup_kswapd()


def _fault_ptes(kernel, mm, tid, i0, i1, write, vma_write, vpn0, value_mode, value, out, memcg):
    """Fault PTEs i0..i1-1, reclaiming (memcg limit or global) and OOM-killing as needed."""
    pt = kernel.page_tables
    retries = 0
    while i0 < i1:
        rc, stats = _engine_fault(kernel, mm, lambda: pt.fault(
            tid, i0, i1, write, vma_write, vpn0, value_mode, value, out, memcg))
        if rc == 0:
            handle_over_high(kernel, mm)
            return
        done = stats["stopped_at"] - i0
        vpn0 += done
        if out is not None:
            out = out[done:]
        i0 = stats["stopped_at"]
        if rc == _engine.PY_FAULT_SIGSEGV:
            _guard_fault(vpn0 << PAGE_SHIFT)
        if rc == _engine.PY_FAULT_MTHP:
            vma = mm.vmas.find(vpn0 << PAGE_SHIFT)
            _do_anonymous_mthp_slow(kernel, mm, vma, tid, i0, vpn0, stats["mthp_order"],
                                    vma_write, memcg)
            continue
        retries = _fault_failed(kernel, mm, rc, retries)


def _guard_fault(addr: int) -> None:
    """A fault reached a guard marker (the access check normally catches it first)."""
    raise SegmentationFault(addr, "guard region")


def _fault_failed(kernel, mm, rc: int, retries: int) -> int:
    """A fault ran out of memory (-1) or memcg charge (-2): reclaim and retry, else OOM-kill.
    Returns the updated retry count; raises if the faulting task cannot go on."""
    if rc == -2:                                    # over memory.max
        if kernel.cgroups.try_charge(mm.memcg, 1, True):
            return retries
        limiting = kernel.cgroups.over_limit(mm.memcg, 1)
        limiting.events["oom"] += 1
        victim = oom_kill(kernel, limiting)
    else:
        # Direct reclaim; __alloc_pages_slowpath's no_progress_loops: progress starts the
        # count again, the OOM killer comes after MAX_RECLAIM_RETRIES rounds without any.
        if try_to_free_pages(kernel):
            return 0
        if retries < MAX_RECLAIM_RETRIES:
            return retries + 1
        victim = oom_kill(kernel, None)
    if victim is None:
        raise OutOfMemory()
    if victim.mm is mm:
        raise OOMKilled(victim.pid)
    return 0


def handle_over_high(kernel: "Kernel", mm: MM) -> None:
    """mem_cgroup_handle_over_high(): a task over memory.high reclaims the excess on its way
    back to user space (the kernel also throttles it; that delay is not modelled)."""
    if not kernel.cgroups.any_high:
        return
    for c in mm.memcg.ancestors():
        if c.high_pages is None:
            continue
        excess = kernel.cgroups.usage_pages(c) - c.high_pages
        if excess > 0:
            c.events["high"] += 1
            try_to_free_mem_cgroup_pages(kernel, c, excess)


def _account(kernel: "Kernel", mm: MM, stats: dict) -> None:
    c = kernel.costs
    fresh = stats["anon_allocated"] - stats["swapped_in"] - stats["mthp_pages"]
    kernel.charge(c.fault_4k_ns, "fault", fresh)
    if stats["mthp_folios"]:
        for k, n in enumerate(stats["mthp_alloc"]):
            if n:
                # One fault that zeroes the whole folio.
                kernel.charge(c.fault_4k_ns + ((1 << k) - 1) * c.zero_4k_ns, "fault", n)
                kernel.count_mthp("anon_fault_alloc", n, order=k)
    kernel.charge(c.fault_zero_page_ns, "fault", max(stats["zero_mapped"], 0) + stats["reused"])
    kernel.charge(c.fault_4k_ns - c.zero_4k_ns + c.copy_4k_ns, "fault", stats["cow_copied"])
    kernel.charge(c.swap_in_4k_ns, "swap_in", stats["swapped_in"])
    mm.anon_rss += stats["anon_allocated"] - stats["rss_removed"]
    mm.swap_ents -= stats["swapped_in"]
    mm.hiwater_rss = max(mm.hiwater_rss, mm.anon_rss)
    for head in kernel.page_tables.partial_heads():
        folio_partially_mapped(kernel, int(head))


def zap_page_range(kernel: "Kernel", mm: MM, start: int, end: int,
                   keep_guards: bool = False) -> None:
    """unmap_page_range(): unmap [start, end) (page aligned), splitting huge PMDs it cuts.
    Guard markers stay with keep_guards (MADV_DONTNEED), go otherwise (munmap, exit)."""
    pos = start
    while pos < end:
        if FAST_RANGE_WALKS:
            arr = mm.pmd_dir.get(pos >> PUD_SHIFT)
            gend = min(end, ((pos >> PUD_SHIFT) + 1) << PUD_SHIFT)
            if arr is None:                         # nothing was ever mapped in this GiB
                pos = gend
                continue
            pos = _zap_pmd_range(kernel, mm, arr, pos, gend, keep_guards)
            if pos == gend:
                continue
        region = pos & ~(PMD_SIZE - 1)
        hi = min(end, region + PMD_SIZE)
        _zap_region(kernel, mm, region, pos, hi, keep_guards)
        pos = hi


def _zap_pmd_range(kernel, mm, arr, lo, hi, keep_guards) -> int:
    pt = kernel.page_tables
    pt.reset_stats()
    rc = pt.zap_range(arr, lo >> PAGE_SHIFT, hi >> PAGE_SHIFT, keep_guards)
    stats = pt.get_stats()
    # The walk stops after each region that left a folio partly mapped: that region's.
    _account_zap(kernel, mm, stats, ((stats["stopped_vpn"] - 1) >> 9) << PMD_SHIFT)
    if rc == _engine.PY_FAULT_BAD_PMD:
        raise RuntimeError(f"corrupt PMD entry at {stats['stopped_vpn'] << PAGE_SHIFT:#x}")
    return stats["stopped_vpn"] << PAGE_SHIFT


def _zap_region(kernel, mm, region, lo, hi, keep_guards) -> None:
    pt = kernel.page_tables
    entry = mm.get_pmd(region)
    kind = pmd_kind(entry)
    if entry == 0:
        return
    if kind in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
        if lo == region and hi == region + PMD_SIZE:
            zap_huge_pmd(kernel, mm, region)
            return
        split_huge_pmd(kernel, mm, region)
        entry = mm.get_pmd(region)
    tid = pmd_table_id(entry)
    pt.reset_stats()
    pt.zap(tid, (lo - region) >> PAGE_SHIFT, (hi - region) >> PAGE_SHIFT, keep_guards)
    _account_zap(kernel, mm, pt.get_stats(), region)


def _account_zap(kernel, mm, stats, region: int | None = None) -> None:
    mm.anon_rss -= stats["rss_removed"]
    mm.swap_ents -= stats["swap_ptes_zapped"]
    for head in kernel.page_tables.partial_heads():
        folio_partially_mapped(kernel, int(head), region)


def free_pgtables(kernel: "Kernel", mm: MM, start: int, end: int) -> None:
    """free_pgtables(): release the PTE tables of regions no VMA touches any more."""
    for region, _, _ in mm.regions(start, end):
        entry = mm.get_pmd(region)
        if pmd_kind(entry) != PMD_KIND_TABLE:
            continue
        if mm.vmas.overlapping(region, region + PMD_SIZE):
            continue
        tid = pmd_table_id(entry)
        kernel.page_tables.zap(tid, 0, 512)
        kernel.page_tables.release_table(tid)
        mm.set_pmd(region, 0)
