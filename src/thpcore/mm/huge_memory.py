"""mm/huge_memory.c for anonymous memory: THP eligibility, the fault-time gfp, huge PMD faults,
the huge zero folio, and splitting or zapping a huge PMD."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

import thpcore._engine as _engine
from thpcore.constants import HPAGE_PMD_NR, PR_THP_DISABLE_EXCEPT_ADVISED
from thpcore.mm.mm_types import (MM, PMD_DIRTY, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_KIND_TABLE, PMD_WRITE,
                                 PMD_YOUNG, PTE_PFN_SHIFT, make_huge_pmd, make_table_pmd, pmd_huge_pfn,
                                 pmd_kind, pmd_table_id, pte_present)
from thpcore.mm.vma import PAGE_SIZE, PMD_SIZE, VM_HUGEPAGE, VM_LOCKED, VM_NOHUGEPAGE, VM_WRITE, VMA

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel


class TVA(enum.Enum):
    """enum tva_type (6.18): who asks whether a VMA may have a PMD THP."""
    SMAPS = "smaps"
    PAGEFAULT = "pagefault"
    KHUGEPAGED = "khugepaged"
    FORCED_COLLAPSE = "forced_collapse"


def pmd_order_allowed_by_sysfs(kernel: "Kernel", vma: VMA) -> bool:
    """The anon order mask of __thp_vma_allowable_orders() restricted to PMD order."""
    return order_allowed_by_sysfs(kernel, vma, 9)


def order_allowed_by_sysfs(kernel: "Kernel", vma: VMA, order: int) -> bool:
    """One bit of the anon order mask: hugepages-<size>kB/enabled, "inherit" meaning the
    global knob."""
    per_size = kernel.thp.sizes[order].enabled
    hugepage = bool(vma.flags & VM_HUGEPAGE)
    if per_size == "always":
        return True
    if per_size == "madvise":
        return hugepage
    if per_size == "inherit":
        glob = kernel.thp.enabled
        return glob == "always" or (hugepage and glob != "never")
    return False


def vma_thp_disabled(mm: MM, vma: VMA, forced_collapse: bool = False) -> bool:
    """VM_NOHUGEPAGE, or the prctl: PR_SET_THP_DISABLE refuses every VMA, its
    EXCEPT_ADVISED mode the VMAs without VM_HUGEPAGE (MADV_COLLAPSE aside)."""
    if vma.flags & VM_NOHUGEPAGE:
        return True
    if mm.thp_disable:
        if not (mm.thp_disable - 1) & PR_THP_DISABLE_EXCEPT_ADVISED:
            return True
        return not vma.flags & VM_HUGEPAGE and not forced_collapse
    return False


def thp_vma_allowable(kernel: "Kernel", mm: MM, vma: VMA, ctx: TVA) -> bool:
    """thp_vma_allowable_order(vma, vm_flags, ctx, PMD_ORDER) for an anonymous VMA."""
    if ctx is not TVA.FORCED_COLLAPSE and not pmd_order_allowed_by_sysfs(kernel, vma):
        return False
    if vma_thp_disabled(mm, vma, ctx is TVA.FORCED_COLLAPSE):
        return False
    if ctx is not TVA.PAGEFAULT and not vma.has_aligned_pmd():
        return False
    if ctx in (TVA.KHUGEPAGED, TVA.FORCED_COLLAPSE) and vma.anon_vma is None:
        return False
    return True


MTHP_ORDERS = tuple(range(_engine.PY_MTHP_MIN_ORDER, 9))


def thp_vma_allowable_mthp_orders(kernel: "Kernel", mm: MM, vma: VMA) -> int:
    """thp_vma_allowable_orders(vma, vm_flags, TVA_PAGEFAULT, BIT(PMD_ORDER) - 1) for an
    anonymous VMA: the mTHP orders a write fault on a none PTE may allocate (a bit mask)."""
    if not kernel.mthp_possible:
        return 0
    orders = 0
    for order in MTHP_ORDERS:
        if order_allowed_by_sysfs(kernel, vma, order):
            orders |= 1 << order
    return 0 if not orders or vma_thp_disabled(mm, vma) else orders


def folio_heads(kernel: "Kernel", pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(head pfn, order) of the allocated block holding each pfn (the engine's folio_head)."""
    return kernel.page_tables.folio_heads(np.ascontiguousarray(pfns, dtype=np.int64))


@dataclass(frozen=True)
class Gfp:
    """The parts of a THP gfp mask the allocator acts on."""
    direct_reclaim: bool
    kswapd: bool
    noretry: bool = False

    def alloc_flags(self) -> int:
        return _engine.PY_ALLOC_KSWAPD if self.kswapd else 0


def vma_thp_gfp_mask(kernel: "Kernel", vma: VMA) -> Gfp:
    """vma_thp_gfp_mask(): the defrag knob decides how hard a THP fault tries."""
    madvised = bool(vma.flags & VM_HUGEPAGE)
    defrag = kernel.thp.defrag
    if defrag == "always":
        return Gfp(direct_reclaim=True, kswapd=False, noretry=not madvised)
    if defrag == "defer":
        return Gfp(direct_reclaim=False, kswapd=True)
    if defrag == "defer+madvise":
        return Gfp(direct_reclaim=True, kswapd=False) if madvised else Gfp(False, True)
    if defrag == "madvise":
        return Gfp(direct_reclaim=madvised, kswapd=False)
    return Gfp(direct_reclaim=False, kswapd=False)


def get_huge_zero_folio(kernel: "Kernel", mm: MM) -> bool:
    """mm_get_huge_zero_folio(): allocate the global huge zero folio on first use."""
    if kernel.huge_zero_pfn is None:
        pfn = kernel.page_alloc.zone.alloc(9, 0, _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT,
                                             _engine.PY_PG_KERNEL)
        if pfn < 0:
            pfn = kernel.page_alloc.zone.alloc(9, 0, _engine.PY_ALLOC_WMARK_MIN, _engine.PY_PG_KERNEL)
        if pfn < 0:
            kernel.count("thp_zero_page_alloc_failed")
            return False
        kernel.huge_zero_pfn = int(pfn)
        kernel.count("thp_zero_page_alloc")
    mm.huge_zero_used = True
    return True


def map_new_thp(kernel: "Kernel", mm: MM, vma: VMA, region: int, head: int, deposit: int) -> None:
    """Install a freshly allocated, exclusively mapped THP at region (fault or collapse)."""
    flags = PMD_YOUNG | PMD_DIRTY | (PMD_WRITE if vma.flags & VM_WRITE else 0)
    mm.set_pmd(region, make_huge_pmd(head, deposit, flags))
    mm.anon_rss += HPAGE_PMD_NR
    kernel.thp_pmd_mappings[head] = kernel.thp_pmd_mappings.get(head, 0) + 1
    # A new folio at this pfn: whatever the queues said of an earlier one there is stale.
    kernel.thp_index[head] = region
    kernel.thp_moved.pop(head, None)
    kernel.deferred_split.pop(head, None)
    if kernel.thp.shrink_underused:
        kernel.deferred_split.setdefault(head, False)     # 6.12+: queued for the underused scan


def split_huge_pmd(kernel: "Kernel", mm: MM, region: int) -> None:
    """__split_huge_pmd(): the mapping, not the folio, becomes 512 PTEs in the deposited table."""
    entry = mm.get_pmd(region)
    kind = pmd_kind(entry)
    if kind not in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
        return
    tid = pmd_table_id(entry)
    table = kernel.page_tables.table(tid)
    if kind == PMD_KIND_HUGE_ZERO:
        table[:] = _engine.PY_PTE_KIND_ZERO
    else:
        head = pmd_huge_pfn(entry)
        bits = _engine.PY_PTE_PRESENT
        bits |= _engine.PY_PTE_YOUNG if entry & PMD_YOUNG else 0
        bits |= _engine.PY_PTE_DIRTY if entry & PMD_DIRTY else 0
        bits |= _engine.PY_PTE_WRITE if entry & PMD_WRITE else 0
        table[:] = ((head + np.arange(HPAGE_PMD_NR, dtype=np.uint32)) << 4) | bits
        _drop_pmd_mapping_count(kernel, head)
    mm.set_pmd(region, make_table_pmd(tid))
    kernel.count("thp_split_pmd")
    kernel.charge(kernel.costs.split_pmd_ns + kernel.costs.tlb_flush_ns)


def _drop_pmd_mapping_count(kernel: "Kernel", head: int) -> None:
    n = kernel.thp_pmd_mappings[head] - 1
    if n:
        kernel.thp_pmd_mappings[head] = n
    else:
        del kernel.thp_pmd_mappings[head]


def zap_huge_pmd(kernel: "Kernel", mm: MM, region: int) -> None:
    """zap_huge_pmd(): drop a whole PMD mapping and its deposited table."""
    entry = mm.get_pmd(region)
    pt = kernel.page_tables
    if pmd_kind(entry) == PMD_KIND_HUGE:
        head = pmd_huge_pfn(entry)
        pt.map_thp(head, -1)
        mm.anon_rss -= HPAGE_PMD_NR
        _drop_pmd_mapping_count(kernel, head)
        folio_unmapped(kernel, head)
    mm.set_pmd(region, 0)
    pt.zap(pmd_table_id(entry), 0, 0)        # validates the id
    pt.release_table(pmd_table_id(entry))


def region_in_vma(vma: VMA, region: int) -> bool:
    return vma.start <= region and region + PMD_SIZE <= vma.end


def split_huge_pmds_at(kernel: "Kernel", mm: MM, *boundaries: int) -> None:
    """vma_adjust_trans_huge(): a huge PMD that straddles a new VMA boundary is split."""
    for boundary in boundaries:
        region = boundary & ~(PMD_SIZE - 1)
        if boundary != region and pmd_kind(mm.get_pmd(region)) in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
            split_huge_pmd(kernel, mm, region)


# ---- the THP folio life cycle: unmapped, partially mapped (deferred split), split, freed ----


def folio_order(kernel: "Kernel", head: int) -> int:
    """folio_order() of the user folio headed at pfn head, 0 if head heads none."""
    f = kernel.page_alloc.zone.frames()
    fl = int(f["flags"][head])
    if fl & _engine.PY_PG_HEAD and fl & _engine.PY_PG_LRU:
        return int(f["order"][head])
    return 0


def folio_unmapped(kernel: "Kernel", head: int) -> None:
    """A THP lost a PMD mapping: free it if nothing maps it, else note a partial mapping."""
    mapcount = kernel.page_alloc.zone.frames()["mapcount"][head:head + 512]
    if not mapcount.any():
        kernel.page_alloc.zone.free(head, 9)
        thp_folio_freed(kernel, head)
    elif not mapcount.all():
        folio_partially_mapped(kernel, head)


def thp_folio_freed(kernel: "Kernel", head: int) -> None:
    kernel.deferred_split.pop(head, None)
    kernel.mthp_regions.pop(head, None)
    kernel.thp_index.pop(head, None)
    kernel.thp_moved.pop(head, None)
    kernel.thp_pmd_mappings.pop(head, None)


def folio_partially_mapped(kernel: "Kernel", head: int, region: int | None = None) -> None:
    """deferred_split_folio(folio, partially_mapped=true): queue it, once. An mTHP
    remembers the 2 MiB region the unmap was in (its split looks for mappings there)."""
    order = folio_order(kernel, head)
    if order < 9 and region is not None:
        kernel.mthp_regions.setdefault(head, region)
    if not kernel.deferred_split.get(head, False):
        kernel.deferred_split[head] = True
        if order == 9:
            kernel.count("thp_deferred_split_page")
        kernel.count_mthp("split_deferred", order=order if order >= 2 else 9)


def split_folio(kernel: "Kernel", head: int, region: int | None = None) -> int:
    """split_huge_page() of an anonymous THP or mTHP into order-0 pages. Every PMD mapping
    of it is split first (unmap), and on remap (6.12+) a subpage whose contents are all
    zero is mapped to the shared zero page instead (not in VM_LOCKED VMAs). Subpages no
    longer mapped are freed; returns how many. An mTHP queued for a deferred split that
    is no longer partly mapped (freed, or its pfn reused) is only dropped from the queue."""
    order = folio_order(kernel, head)
    if order < 9:
        if region is not None:
            kernel.mthp_regions.setdefault(head, region)
        return _split_mthp(kernel, head, order)
    zone = kernel.page_alloc.zone
    regions = set(kernel.thp_moved.get(head, ()))
    if head in kernel.thp_index:
        regions.add(kernel.thp_index[head])
    for region in sorted(regions):
        for p in kernel.processes():
            mm = p.mm
            entry = mm.get_pmd(region)
            if pmd_kind(entry) == PMD_KIND_HUGE and pmd_huge_pfn(entry) == head:
                split_huge_pmd(kernel, mm, region)
            _remap_zero_subpages(kernel, mm, region, head, 512)
    f = zone.frames()
    if f["order"][head] == 9 and f["flags"][head] & _engine.PY_PG_HEAD:
        freed = kernel.page_tables.split_folio(head)
    else:
        freed = 512                      # every subpage was zero: the folio is gone
    thp_folio_freed(kernel, head)
    kernel.count("thp_split_page")
    kernel.count_mthp("split")
    return int(freed)


def _vma_locked(mm: MM, addr: int) -> bool:
    vma = mm.vmas.find(addr)
    return vma is not None and bool(vma.flags & VM_LOCKED)


def _remap_zero_subpages(kernel: "Kernel", mm, region: int, head: int, nr: int) -> None:
    """remap_page(RMP_USE_SHARED_ZEROPAGE) in one mm's PTE table at region: subpages of
    the folio [head, head + nr) whose content is all zero map the zero page instead (not
    in VM_LOCKED VMAs)."""
    entry = mm.get_pmd(region)
    if pmd_kind(entry) != PMD_KIND_TABLE:
        return
    table = kernel.page_tables.table(pmd_table_id(entry))
    pfn = (table >> PTE_PFN_SHIFT).astype(np.int64)
    mine = pte_present(table) & (pfn >= head) & (pfn < head + nr)
    if not mine.any():
        return
    idx = np.nonzero(mine)[0]
    zero = idx[kernel.page_alloc.zone.frames()["content"][pfn[idx]] == 0]
    zero = [i for i in zero if not _vma_locked(mm, region + int(i) * PAGE_SIZE)]
    for i in zero:
        table[i] = _engine.PY_PTE_KIND_ZERO
        kernel.page_tables.put_frame(int(pfn[i]))
    mm.anon_rss -= len(zero)


def _split_mthp(kernel: "Kernel", head: int, order: int) -> int:
    if order == 0:                          # a queue entry whose folio is gone
        thp_folio_freed(kernel, head)
        return 0
    nr = 1 << order
    mapcount = kernel.page_alloc.zone.frames()["mapcount"][head:head + nr]
    queued = kernel.deferred_split.get(head, False)
    if queued and mapcount.all():
        thp_folio_freed(kernel, head)           # a queue entry of an earlier folio here
        return 0
    if not queued and int(np.count_nonzero(mapcount)) > 1:
        # unmap_folio() takes the PTEs away one by one: the folio is partly mapped for a
        # moment and deferred_split_folio() counts it (live-checked: PAGEOUT of a
        # PTE-mapped mTHP counts split_deferred; a PMD-mapped THP is unmapped at once).
        kernel.count_mthp("split_deferred", order=order)
    region = kernel.mthp_regions.get(head)
    if region is not None:
        for p in kernel.processes():
            _remap_zero_subpages(kernel, p.mm, region, head, nr)
    if folio_order(kernel, head) == order:
        freed = kernel.page_tables.split_folio(head)
    else:
        freed = nr                      # every subpage was zero: the folio is gone
    thp_folio_freed(kernel, head)
    kernel.count_mthp("split", order=order)
    return int(freed)


def deferred_split_scan(kernel: "Kernel", nr_to_scan: int, memcg=None) -> int:
    """The "thp-deferred_split" shrinker (6.12+): split partially mapped THPs, and THPs whose
    all-zero subpages exceed max_ptes_none (underused; zero subpages go to the zero page).
    A THP that is neither leaves the queue for good. Returns pages freed."""
    queue = kernel.deferred_split
    if not queue:
        return 0
    zone = kernel.page_alloc.zone
    frames = zone.frames()
    ids = None if memcg is None else {c.id for c in memcg.subtree()}
    max_ptes_none = kernel.thp.khugepaged.max_ptes_none
    freed = 0
    scanned = 0
    for head in list(queue):
        if scanned >= nr_to_scan:
            break
        if ids is not None and frames["memcg"][head] not in ids:
            continue
        scanned += 1
        partially = queue[head]
        before = zone.nr_free_pages
        if partially:
            split_folio(kernel, head)
        elif not kernel.thp.shrink_underused:
            del queue[head]
            continue
        else:
            zero = int((frames["content"][head:head + HPAGE_PMD_NR] == 0).sum())
            if zero > max_ptes_none:
                split_folio(kernel, head)
                kernel.count("thp_underused_split_page")
            else:
                del queue[head]                   # not underused: one-shot per queueing
                continue
        freed += zone.nr_free_pages - before
    return freed
