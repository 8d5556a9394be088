"""The THP allocation path, the one recursion in the kernel model: __alloc_pages() of a
large folio falls back from the free lists to direct compaction and direct reclaim, and reclaim
splits THPs (the deferred-split shrinker) and frees pages back to the allocator it serves. It
sits above compaction and vmscan, below the fault path and khugepaged that call it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import thpcore._engine as _engine
from thpcore.mm.compaction import CompactResult, Priority
from thpcore.mm.huge_memory import Gfp
from thpcore.mm.vmscan import try_to_free_pages

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel


def alloc_thp(kernel: "Kernel", gfp: Gfp, memcg: int = 0, order: int = 9) -> int:
    """__alloc_pages(order 9): the fast path at the low watermark (ALLOC_NOFRAGMENT first),
    then the slow path: wake kswapd (here: kcompactd, as kswapd would after reclaiming) if the
    gfp allows, retry at min, then direct compaction if the gfp may reclaim: async first
    (giving up on SKIPPED/DEFERRED with __GFP_NORETRY), then direct reclaim (shrinkers first:
    the deferred split queue), a retry, then SYNC_LIGHT compaction (async again with NORETRY).
    A costly order without __GFP_RETRY_MAYFAIL gives up after that one round."""
    pt = kernel.page_tables
    head = pt.alloc_thp(_engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT | gfp.alloc_flags(),
                        memcg, order)
    if head >= 0:
        return int(head)
    if gfp.kswapd:
        kernel.compaction.wakeup_kcompactd()
    slow = _engine.PY_ALLOC_WMARK_MIN | gfp.alloc_flags()
    head = pt.alloc_thp(slow, memcg, order)
    if head >= 0 or not gfp.direct_reclaim:
        return int(head)
    comp = kernel.compaction
    head, rc = comp.direct_compact(order, Priority.ASYNC, lambda: pt.alloc_thp(slow, memcg, order))
    if head >= 0:
        return int(head)
    if gfp.noretry and rc in (CompactResult.SKIPPED, CompactResult.DEFERRED):
        return -1
    # __alloc_pages_direct_reclaim(): enough for compaction to have room (compact_gap).
    if try_to_free_pages(kernel, 2 << order):
        head = pt.alloc_thp(slow, memcg, order)
        if head >= 0:
            return int(head)
    prio = Priority.ASYNC if gfp.noretry else Priority.SYNC_LIGHT
    head, rc = comp.direct_compact(order, prio, lambda: pt.alloc_thp(slow, memcg, order))
    return int(head)
