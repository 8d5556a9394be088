"""mm/huge_memory.c for anonymous memory: THP eligibility, the fault-time gfp, huge PMD faults,
the huge zero folio, and splitting or zapping a huge PMD."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from thpcore import _engine
from thpcore.mm.mm_types import (MM, PMD_DIRTY, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_WRITE, PMD_YOUNG,
                 make_huge_pmd, make_table_pmd, pmd_huge_pfn, pmd_kind, pmd_table_id)
from thpcore.mm.vma import PMD_SIZE, VM_HUGEPAGE, VM_NOHUGEPAGE, VM_WRITE, VMA

if TYPE_CHECKING:
    from thpcore.machine import Machine

HPAGE_PMD_NR = 512
PR_THP_DISABLE_EXCEPT_ADVISED = 1 << 1


class TVA(enum.Enum):
    """enum tva_type (6.18): who asks whether a VMA may have a PMD THP."""
    SMAPS = "smaps"
    PAGEFAULT = "pagefault"
    KHUGEPAGED = "khugepaged"
    FORCED_COLLAPSE = "forced_collapse"


def pmd_order_allowed_by_sysfs(machine: "Machine", vma: VMA) -> bool:
    """The anon order mask of __thp_vma_allowable_orders() restricted to PMD order."""
    return order_allowed_by_sysfs(machine, vma, 9)


def order_allowed_by_sysfs(machine: "Machine", vma: VMA, order: int) -> bool:
    """One bit of the anon order mask: hugepages-<size>kB/enabled, "inherit" meaning the
    global knob."""
    per_size = machine.thp.sizes[order].enabled
    hugepage = bool(vma.flags & VM_HUGEPAGE)
    if per_size == "always":
        return True
    if per_size == "madvise":
        return hugepage
    if per_size == "inherit":
        glob = machine.thp.enabled
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


def thp_vma_allowable(machine: "Machine", mm: MM, vma: VMA, ctx: TVA) -> bool:
    """thp_vma_allowable_order(vma, vm_flags, ctx, PMD_ORDER) for an anonymous VMA."""
    if ctx is not TVA.FORCED_COLLAPSE and not pmd_order_allowed_by_sysfs(machine, vma):
        return False
    if vma_thp_disabled(mm, vma, ctx is TVA.FORCED_COLLAPSE):
        return False
    if ctx is not TVA.PAGEFAULT and not vma.has_aligned_pmd():
        return False
    if ctx in (TVA.KHUGEPAGED, TVA.FORCED_COLLAPSE) and vma.anon_vma is None:
        return False
    return True


MTHP_ORDERS = tuple(range(_engine.PY_MTHP_MIN_ORDER, 9))


def thp_vma_allowable_mthp_orders(machine: "Machine", mm: MM, vma: VMA) -> int:
    """thp_vma_allowable_orders(vma, vm_flags, TVA_PAGEFAULT, BIT(PMD_ORDER) - 1) for an
    anonymous VMA: the mTHP orders a write fault on a none PTE may allocate (a bit mask)."""
    if not machine.mthp_possible:
        return 0
    orders = 0
    for order in MTHP_ORDERS:
        if order_allowed_by_sysfs(machine, vma, order):
            orders |= 1 << order
    return 0 if not orders or vma_thp_disabled(mm, vma) else orders


def folio_heads(machine: "Machine", pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(head pfn, order) of the allocated block holding each pfn (the engine's folio_head)."""
    return machine.page_tables.folio_heads(np.ascontiguousarray(pfns, dtype=np.int64))


@dataclass(frozen=True)
class Gfp:
    """The parts of a THP gfp mask the allocator acts on."""
    direct_reclaim: bool
    kswapd: bool
    noretry: bool = False

    def alloc_flags(self) -> int:
        return _engine.PY_ALLOC_KSWAPD if self.kswapd else 0


def vma_thp_gfp_mask(machine: "Machine", vma: VMA) -> Gfp:
    """vma_thp_gfp_mask(): the defrag knob decides how hard a THP fault tries."""
    madvised = bool(vma.flags & VM_HUGEPAGE)
    defrag = machine.thp.defrag
    if defrag == "always":
        return Gfp(direct_reclaim=True, kswapd=False, noretry=not madvised)
    if defrag == "defer":
        return Gfp(direct_reclaim=False, kswapd=True)
    if defrag == "defer+madvise":
        return Gfp(direct_reclaim=True, kswapd=False) if madvised else Gfp(False, True)
    if defrag == "madvise":
        return Gfp(direct_reclaim=madvised, kswapd=False)
    return Gfp(direct_reclaim=False, kswapd=False)


def alloc_thp(machine: "Machine", gfp: Gfp, memcg: int = 0, order: int = 9) -> int:
    """__alloc_pages(order 9): the fast path at the low watermark (ALLOC_NOFRAGMENT first),
    then the slow path: wake kswapd (here: kcompactd, as kswapd would after reclaiming) if the
    gfp allows, retry at min, then direct compaction if the gfp may reclaim: async first
    (giving up on SKIPPED/DEFERRED with __GFP_NORETRY), then direct reclaim (shrinkers first:
    the deferred split queue), a retry, then SYNC_LIGHT compaction (async again with NORETRY).
    A costly order without __GFP_RETRY_MAYFAIL gives up after that one round."""
    from thpcore.mm.compaction import CompactResult, Priority
    pt = machine.page_tables
    head = pt.alloc_thp(_engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT | gfp.alloc_flags(),
                        memcg, order)
    if head >= 0:
        return int(head)
    if gfp.kswapd:
        machine.compaction.wakeup_kcompactd()
    slow = _engine.PY_ALLOC_WMARK_MIN | gfp.alloc_flags()
    head = pt.alloc_thp(slow, memcg, order)
    if head >= 0 or not gfp.direct_reclaim:
        return int(head)
    comp = machine.compaction
    head, rc = comp.direct_compact(order, Priority.ASYNC, lambda: pt.alloc_thp(slow, memcg, order))
    if head >= 0:
        return int(head)
    if gfp.noretry and rc in (CompactResult.SKIPPED, CompactResult.DEFERRED):
        return -1
    # __alloc_pages_direct_reclaim(): enough for compaction to have room (compact_gap).
    from thpcore.mm.vmscan import try_to_free_pages
    if try_to_free_pages(machine, 2 << order):
        head = pt.alloc_thp(slow, memcg, order)
        if head >= 0:
            return int(head)
    prio = Priority.ASYNC if gfp.noretry else Priority.SYNC_LIGHT
    head, rc = comp.direct_compact(order, prio, lambda: pt.alloc_thp(slow, memcg, order))
    return int(head)


def get_huge_zero_folio(machine: "Machine", mm: MM) -> bool:
    """mm_get_huge_zero_folio(): allocate the global huge zero folio on first use."""
    if machine.huge_zero_pfn is None:
        pfn = machine.page_alloc.zone.alloc(9, 0, _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT,
                                             _engine.PY_PG_KERNEL)
        if pfn < 0:
            pfn = machine.page_alloc.zone.alloc(9, 0, _engine.PY_ALLOC_WMARK_MIN, _engine.PY_PG_KERNEL)
        if pfn < 0:
            machine.count("thp_zero_page_alloc_failed")
            return False
        machine.huge_zero_pfn = int(pfn)
        machine.count("thp_zero_page_alloc")
    mm.huge_zero_used = True
    return True


def map_new_thp(machine: "Machine", mm: MM, vma: VMA, region: int, head: int, deposit: int) -> None:
    """Install a freshly allocated, exclusively mapped THP at region (fault or collapse)."""
    flags = PMD_YOUNG | PMD_DIRTY | (PMD_WRITE if vma.flags & VM_WRITE else 0)
    mm.set_pmd(region, make_huge_pmd(head, deposit, flags))
    mm.anon_rss += HPAGE_PMD_NR
    machine.thp_pmd_mappings[head] = machine.thp_pmd_mappings.get(head, 0) + 1
    # A new folio at this pfn: whatever the queues said of an earlier one there is stale.
    machine.thp_index[head] = region
    machine.thp_moved.pop(head, None)
    machine.deferred_split.pop(head, None)
    if machine.thp.shrink_underused:
        machine.deferred_split.setdefault(head, False)     # 6.12+: queued for the underused scan


def split_huge_pmd(machine: "Machine", mm: MM, region: int) -> None:
    """__split_huge_pmd(): the mapping, not the folio, becomes 512 PTEs in the deposited table."""
    entry = mm.get_pmd(region)
    kind = pmd_kind(entry)
    if kind not in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
        return
    tid = pmd_table_id(entry)
    table = machine.page_tables.table(tid)
    if kind == PMD_KIND_HUGE_ZERO:
        table[:] = _engine.PY_PTE_KIND_ZERO
    else:
        head = pmd_huge_pfn(entry)
        bits = _engine.PY_PTE_PRESENT
        bits |= _engine.PY_PTE_YOUNG if entry & PMD_YOUNG else 0
        bits |= _engine.PY_PTE_DIRTY if entry & PMD_DIRTY else 0
        bits |= _engine.PY_PTE_WRITE if entry & PMD_WRITE else 0
        table[:] = ((head + np.arange(HPAGE_PMD_NR, dtype=np.uint32)) << 4) | bits
        _drop_pmd_mapping_count(machine, head)
    mm.set_pmd(region, make_table_pmd(tid))
    machine.count("thp_split_pmd")
    machine.charge(machine.costs.split_pmd_ns + machine.costs.tlb_flush_ns)


def _drop_pmd_mapping_count(machine: "Machine", head: int) -> None:
    n = machine.thp_pmd_mappings[head] - 1
    if n:
        machine.thp_pmd_mappings[head] = n
    else:
        del machine.thp_pmd_mappings[head]


def zap_huge_pmd(machine: "Machine", mm: MM, region: int) -> None:
    """zap_huge_pmd(): drop a whole PMD mapping and its deposited table."""
    entry = mm.get_pmd(region)
    pt = machine.page_tables
    if pmd_kind(entry) == PMD_KIND_HUGE:
        head = pmd_huge_pfn(entry)
        pt.map_thp(head, -1)
        mm.anon_rss -= HPAGE_PMD_NR
        _drop_pmd_mapping_count(machine, head)
        machine.folio_unmapped(head)
    mm.set_pmd(region, 0)
    pt.zap(pmd_table_id(entry), 0, 0)        # validates the id
    pt.release_table(pmd_table_id(entry))


def region_in_vma(vma: VMA, region: int) -> bool:
    return vma.start <= region and region + PMD_SIZE <= vma.end


def split_huge_pmds_at(machine: "Machine", mm: MM, *boundaries: int) -> None:
    """vma_adjust_trans_huge(): a huge PMD that straddles a new VMA boundary is split."""
    for boundary in boundaries:
        region = boundary & ~(PMD_SIZE - 1)
        if boundary != region and pmd_kind(mm.get_pmd(region)) in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
            split_huge_pmd(machine, mm, region)


def deferred_split_scan(machine: "Machine", nr_to_scan: int, memcg=None) -> int:
    """The "thp-deferred_split" shrinker (6.12+): split partially mapped THPs, and THPs whose
    all-zero subpages exceed max_ptes_none (underused; zero subpages go to the zero page).
    A THP that is neither leaves the queue for good. Returns pages freed."""
    queue = machine.deferred_split
    if not queue:
        return 0
    zone = machine.page_alloc.zone
    frames = zone.frames()
    ids = None if memcg is None else {c.id for c in memcg.subtree()}
    max_ptes_none = machine.thp.khugepaged.max_ptes_none
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
            machine.split_folio(head)
        elif not machine.thp.shrink_underused:
            del queue[head]
            continue
        else:
            zero = int((frames["content"][head:head + HPAGE_PMD_NR] == 0).sum())
            if zero > max_ptes_none:
                machine.split_folio(head)
                machine.count("thp_underused_split_page")
            else:
                del queue[head]                   # not underused: one-shot per queueing
                continue
        freed += zone.nr_free_pages - before
    return freed
