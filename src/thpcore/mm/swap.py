"""Swap-out by MADV_PAGEOUT, deactivation by MADV_COLD and lazy freeing by MADV_FREE
(mm/madvise.c's madvise_cold_or_pageout_pte_range + mm/vmscan.c's shrink_folio_list, for
anonymous memory on one swap device)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from thpcore.mm.huge_memory import HPAGE_PMD_NR, folio_heads, split_folio, split_huge_pmd, thp_folio_freed
from thpcore.mm.mm_types import MM, PMD_DIRTY, PMD_KIND_HUGE, PMD_YOUNG, pmd_huge_pfn, pmd_table_id
from thpcore.mm.vma import PAGE_SHIFT, PMD_SIZE, VMA

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

PTE_PRESENT, PTE_YOUNG, PTE_DIRTY = 0x1, 0x2, 0x4


def _thp_exclusive(kernel: "Kernel", head: int, order: int = 9) -> bool:
    """No subpage of the folio is mapped more than once (folio_maybe_mapped_shared, roughly;
    a PMD-mapped folio has every subpage mapped, a PTE-mapped one may have holes)."""
    mapcount = kernel.page_alloc.zone.frames()["mapcount"]
    return bool((mapcount[head:head + (1 << order)] <= 1).all())


def _large_folios_in(kernel: "Kernel", tid: int, i0: int, i1: int):
    """The large folios PTEs i0..i1-1 map: [(head, order, PTEs of the range that map it)]."""
    table = kernel.page_tables.table(tid)[i0:i1]
    present = (table[(table & PTE_PRESENT) != 0] >> 4).astype(np.int64)
    if not present.size:
        return []
    heads, orders = folio_heads(kernel, present)
    large = orders > 0
    out = []
    for head in np.unique(heads[large]):
        sel = heads == head
        out.append((int(head), int(orders[sel][0]), int(sel.sum())))
    return out


def _split_thps_in_table(kernel: "Kernel", tid: int, i0: int, i1: int, region: int) -> None:
    """Large folios mapped by PTEs in the range are split before reclaim (split_folio). An
    exclusive mTHP the range maps whole goes to shrink_folio_list whole, where a swap file
    cannot take it: swpout_fallback, then the split."""
    zone = kernel.page_alloc.zone
    for head, order, here in _large_folios_in(kernel, tid, i0, i1):
        if zone.lazyfree_mask([head])[0]:
            continue                      # !swapbacked: reclaim discards or keeps it whole
        if order < 9 and here == 1 << order and _thp_exclusive(kernel, head, order):
            kernel.count_mthp("swpout_fallback", order=order)
        split_folio(kernel, head, region)


def reclaim_lazyfree_thp(kernel: "Kernel", mm: MM, region: int) -> bool:
    """try_to_unmap() of a PMD-mapped lazyfree THP (6.18: the PMD is split first). Clean, it
    is discarded (pglazyfreed); written since MADV_FREE, it becomes swap-backed again and
    stays, mapped by PTEs. True if it was discarded."""
    entry = mm.get_pmd(region)
    head = pmd_huge_pfn(entry)
    split_huge_pmd(kernel, mm, region)
    if entry & PMD_DIRTY:
        kernel.page_alloc.zone.set_lazyfree_range(head, HPAGE_PMD_NR, False)
        return False
    pt = kernel.page_tables
    pt.reset_stats()
    pt.zap(pmd_table_id(mm.get_pmd(region)), 0, HPAGE_PMD_NR)
    stats = pt.get_stats()
    mm.anon_rss -= stats["rss_removed"]
    kernel.count("pglazyfreed", stats["rss_removed"])
    thp_folio_freed(kernel, head)
    return True


def _is_lazyfree_thp(kernel: "Kernel", head: int) -> bool:
    return bool(kernel.page_alloc.zone.lazyfree_mask([head])[0])


def madvise_cold_or_pageout(kernel: "Kernel", mm: MM, vma: VMA, lo: int, hi: int,
                            pageout: bool) -> None:
    pt = kernel.page_tables
    can_swap = kernel.swap_bytes > 0
    for region, a, b, entry, kind in mm.mapped_regions(lo, hi):
        if kind == PMD_KIND_HUGE:
            head = pmd_huge_pfn(entry)
            if a != region or b != region + PMD_SIZE:
                # A partial range splits the folio and handles it page by page.
                if not _thp_exclusive(kernel, head):
                    continue
                split_huge_pmd(kernel, mm, region)
                split_folio(kernel, head)
            else:
                if not _thp_exclusive(kernel, head):
                    continue                             # maybe mapped shared: skipped
                mm.set_pmd(region, entry & ~PMD_YOUNG)
                if not pageout:
                    continue
                if _is_lazyfree_thp(kernel, head):
                    # reclaim_pages(): a lazyfree THP needs no swap to go.
                    reclaim_lazyfree_thp(kernel, mm, region)
                    continue
                split_huge_pmd(kernel, mm, region)      # try_to_unmap(TTU_SPLIT_HUGE_PMD)
                tid = pmd_table_id(mm.get_pmd(region))
                pt.reset_stats()
                # No THP swap slot (a swap file, or no swap at all: add_to_swap fails) splits
                # the folio and tries its pages one by one (live-checked without swap too).
                if can_swap and kernel.swap_device == "blockdev" and pt.swap_out_thp(tid, head) >= 0:
                    kernel.count("thp_swpout")
                    thp_folio_freed(kernel, head)
                    _account_pageout(kernel, mm, pt.get_stats())
                    continue
                kernel.count("thp_swpout_fallback")
                split_folio(kernel, head)
                entry = mm.get_pmd(region)
        tid = pmd_table_id(mm.get_pmd(region))
        i0, i1 = (a - region) >> PAGE_SHIFT, (b - region) >> PAGE_SHIFT
        table = pt.table(tid)
        seg = table[i0:i1]
        # Both advices clear the accessed bit of exclusively mapped pages first.
        present = (seg & PTE_PRESENT) != 0
        mapcount = kernel.page_alloc.zone.frames()["mapcount"]
        excl = present.copy()
        excl[present] = mapcount[seg[present] >> 4] == 1
        seg[excl] &= np.uint32(~PTE_YOUNG & 0xFFFFFFFF)
        if not pageout:
            continue
        if can_swap:
            _split_thps_in_table(kernel, tid, i0, i1, region)
        pt.reset_stats()
        pt.pageout(tid, i0, i1, can_swap)
        _account_pageout(kernel, mm, pt.get_stats())


def _account_pageout(kernel: "Kernel", mm: MM, stats: dict) -> None:
    out = stats["swapped_out"]
    kernel.charge(kernel.costs.swap_out_4k_ns, None, out)
    mm.anon_rss -= stats["rss_removed"]
    mm.swap_ents += out
    kernel.count("pswpout", out)
    kernel.count("pglazyfreed", stats["lazyfreed"])


def madvise_free(kernel: "Kernel", mm: MM, vma: VMA, lo: int, hi: int) -> None:
    """MADV_FREE (madvise_free_single_vma): swap entries in the range are dropped; exclusively
    mapped pages become old, clean and lazyfree, so reclaim may discard them (without swap)
    unless they are written again first. A THP the range covers whole is marked as one folio;
    one it covers in part is split first (madvise_free_huge_pmd / the PTE walk)."""
    pt = kernel.page_tables
    zone = kernel.page_alloc.zone
    for region, a, b, entry, kind in mm.mapped_regions(lo, hi):
        if kind == PMD_KIND_HUGE:
            head = pmd_huge_pfn(entry)
            if not _thp_exclusive(kernel, head):
                continue
            if a == region and b == region + PMD_SIZE:
                mm.set_pmd(region, entry & ~(PMD_YOUNG | PMD_DIRTY))
                if not _is_lazyfree_thp(kernel, head):       # counted once per folio
                    zone.set_lazyfree_range(head, HPAGE_PMD_NR, True)
                    kernel.count("pglazyfree", HPAGE_PMD_NR)
                continue
            split_huge_pmd(kernel, mm, region)
            split_folio(kernel, head)
        tid = pmd_table_id(mm.get_pmd(region))
        i0, i1 = (a - region) >> PAGE_SHIFT, (b - region) >> PAGE_SHIFT
        _split_partly_covered_thps(kernel, tid, i0, i1, region)
        pt.reset_stats()
        pt.madvise_free(tid, i0, i1)
        stats = pt.get_stats()
        mm.swap_ents -= stats["swap_ptes_zapped"]
        kernel.count("pglazyfree", stats["lazyfree_marked"])


def _split_partly_covered_thps(kernel: "Kernel", tid: int, i0: int, i1: int,
                               region: int) -> None:
    """The PTE walk splits an exclusive large folio unless the range maps all of it."""
    for head, order, here in _large_folios_in(kernel, tid, i0, i1):
        if here < 1 << order and _thp_exclusive(kernel, head, order):
            split_folio(kernel, head, region)
