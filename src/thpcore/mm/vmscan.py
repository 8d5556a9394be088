"""mm/vmscan.c, simplified: reclaim runs the deferred-split shrinker, then a second-chance
(CLOCK) pass over the anonymous pages of the processes in scope (accessed bits stand for the
active/inactive LRU lists): an accessed page loses its bit, an old exclusive page goes to swap.
kswapd, direct reclaim and memcg limit reclaim all come here. Without swap, only the shrinker
and lazyfree (MADV_FREE) discards can free anonymous memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from thpcore.mm.huge_memory import HPAGE_PMD_NR, deferred_split_scan, split_folio
from thpcore.mm.mm_types import PMD_KIND_HUGE, PMD_KIND_TABLE, PMD_YOUNG, pmd_huge_pfn, pmd_kind, pmd_table_id
from thpcore.mm.swap import _is_lazyfree_thp, reclaim_lazyfree_thp

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel
    from thpcore.mm.memcontrol import MemCgroup

SWAP_CLUSTER_MAX = 32


def _scope(kernel: "Kernel", memcg: "MemCgroup | None"):
    ids = None if memcg is None else {c.id for c in memcg.subtree()}
    procs = [p for p in kernel.processes() if ids is None or p.memcg.id in ids]
    return ids, procs


def shrink_anon(kernel: "Kernel", want: int, memcg: "MemCgroup | None") -> int:
    """Two CLOCK sweeps at most: the first may only clear accessed bits. Without swap only
    lazyfree (MADV_FREE) pages are looked at: the kernel keeps them on the file LRU."""
    can_swap = kernel.swap_bytes > 0
    zone = kernel.page_alloc.zone
    if not can_swap and not zone.lazyfree_bits().any():
        return 0                          # nothing this pass could free: skip the walk
    ids, procs = _scope(kernel, memcg)
    pt = kernel.page_tables
    freed = 0
    for _sweep in range(2):
        for p in procs:
            mm = p.mm
            for region, entry in list(mm.populated_pmds()):
                if freed >= want:
                    return freed
                kind = pmd_kind(entry)
                if kind == PMD_KIND_HUGE:
                    head = pmd_huge_pfn(entry)
                    if ids is not None and zone.frames()["memcg"][head] not in ids:
                        continue
                    lazy = _is_lazyfree_thp(kernel, head)
                    if not lazy and not can_swap:
                        continue
                    if entry & PMD_YOUNG:
                        mm.set_pmd(region, entry & ~PMD_YOUNG)
                        continue
                    mapcount = zone.frames()["mapcount"][head:head + HPAGE_PMD_NR]
                    if (mapcount != 1).any():
                        continue
                    if lazy:
                        if reclaim_lazyfree_thp(kernel, mm, region):
                            freed += HPAGE_PMD_NR
                        continue
                    # A THP on a swap file is split before swap-out (thp_swpout_fallback).
                    kernel.count("thp_swpout_fallback")
                    split_folio(kernel, head)
                    entry = mm.get_pmd(region)
                    kind = pmd_kind(entry)
                if kind != PMD_KIND_TABLE:
                    continue
                pt.reset_stats()
                got = pt.reclaim(pmd_table_id(entry), 0, 512, want - freed,
                                 -1 if ids is None else (p.memcg.id if len(ids) == 1 else -1),
                                 can_swap)
                st = pt.get_stats()
                mm.anon_rss -= st["rss_removed"]
                mm.swap_ents += st["swapped_out"]
                kernel.count("pswpout", st["swapped_out"])
                kernel.count("pglazyfreed", st["lazyfreed"])
                kernel.charge(kernel.costs.swap_out_4k_ns, None, st["swapped_out"])
                freed += got
    return freed


def shrink_node(kernel: "Kernel", want: int, memcg: "MemCgroup | None" = None) -> int:
    """One reclaim round: the THP shrinker first (cheap), then anonymous pages."""
    freed = deferred_split_scan(kernel, want, memcg)
    if freed < want:
        freed += shrink_anon(kernel, want - freed, memcg)
    return freed


def try_to_free_mem_cgroup_pages(kernel: "Kernel", memcg: "MemCgroup", want: int) -> int:
    return shrink_node(kernel, want, memcg)


def try_to_free_pages(kernel: "Kernel", want: int = SWAP_CLUSTER_MAX) -> int:
    """Direct reclaim for a failing allocation."""
    kernel.count("allocstall_normal")
    return shrink_node(kernel, want)


def balance_pgdat(kernel: "Kernel") -> int:
    """kswapd: reclaim until free memory is back above the high watermark (plus boost)."""
    zone = kernel.page_alloc.zone
    freed = 0
    with kernel.acting("kswapd"):
        for _ in range(64):
            target = zone.watermarks()[2] + zone.watermark_boost
            if zone.nr_free_pages > target:
                break
            got = shrink_node(kernel, max(target - zone.nr_free_pages, SWAP_CLUSTER_MAX))
            if not got:
                break
            freed += got
    zone.clear_watermark_boost()
    return freed
