"""kernel/fork.c's dup_mmap() for private anonymous memory: the child's VMAs and page
tables at fork(), copy-on-write (both sides' PTEs and huge PMDs become read-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thpcore.errors import OutOfMemory
from thpcore.mm.mm_types import (MM, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_WRITE, PMD_YOUNG, make_huge_pmd,
                                 make_huge_zero_pmd, make_table_pmd, pmd_huge_pfn, pmd_kind, pmd_table_id,
                                 pte_present, pte_swap)
from thpcore.mm.vma import VM_DONTCOPY, VM_LOCKED, VM_WIPEONFORK, VMA

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel


def dup_mm(kernel: "Kernel", parent: MM, child: MM) -> None:
    """dup_mmap() + copy_page_range() for private anonymous memory."""
    pt = kernel.page_tables
    child.has_guards = parent.has_guards           # copy_pte_range() copies guard markers
    for v in parent.vmas:
        if v.flags & VM_DONTCOPY:
            continue
        child.vmas.insert(VMA(v.start, v.end, v.flags & ~VM_LOCKED,
                              kernel.new_anon_vma_id() if v.anon_vma is not None else None))
    for region, entry in list(parent.populated_pmds()):
        vma = child.vmas.find(region) or next(iter(child.vmas.overlapping(region, region + (2 << 20))), None)
        if vma is None:
            continue                       # only VM_DONTCOPY VMAs touch this region
        if all(v.flags & VM_WIPEONFORK for v in child.vmas.overlapping(region, region + (2 << 20))):
            continue
        tid = pt.new_table()
        if tid < 0:
            raise OutOfMemory("no memory for a page table during fork")
        kind = pmd_kind(entry)
        if kind == PMD_KIND_HUGE:
            head = pmd_huge_pfn(entry)
            parent.set_pmd(region, entry & ~PMD_WRITE)
            child.set_pmd(region, make_huge_pmd(head, tid, entry & 0x1C & ~PMD_WRITE & ~PMD_YOUNG))
            pt.map_thp(head, 1)
            kernel.thp_pmd_mappings[head] += 1
            child.anon_rss += 512
        elif kind == PMD_KIND_HUGE_ZERO:
            child.set_pmd(region, make_huge_zero_pmd(tid))
            child.huge_zero_used = True
        else:
            src = pmd_table_id(entry)
            pt.copy_table(src, tid)
            child.set_pmd(region, make_table_pmd(tid))
            t = pt.table(tid)
            child.anon_rss += int(pte_present(t).sum())
            child.swap_ents += int(pte_swap(t).sum())
            # Ranges of VM_DONTCOPY / VM_WIPEONFORK VMAs sharing this region are not copied.
            for v in parent.vmas.overlapping(region, region + (2 << 20)):
                if v.flags & (VM_DONTCOPY | VM_WIPEONFORK):
                    lo, hi = max(v.start, region), min(v.end, region + (2 << 20))
                    pt.reset_stats()
                    pt.zap(tid, (lo - region) >> 12, (hi - region) >> 12)
                    st = pt.get_stats()
                    child.anon_rss -= st["rss_removed"]
                    child.swap_ents -= st["swap_ptes_zapped"]
    child.hiwater_rss = child.anon_rss
    child.thp_disable = parent.thp_disable
    if parent.registered:
        child.registered = True
        kernel.khugepaged_mm_list.append(child)


