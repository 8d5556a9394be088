"""Pure-Python reference model of the Linux 6.18 buddy allocator for one zone.

This module is an *oracle*: it is written for clarity, not speed, and it is
meant to be compared against the Cython engine (``thpcore._engine.Zone``) in
property tests.  It was written from ``mm/page_alloc.c`` (6.18) only, without
looking at the engine, so that the kernel -- not the engine -- defines the
behaviour.  Each method below names the kernel function it models, and the
code follows the kernel's control flow statement by statement where that
matters for observable state (which list a block goes to, head or tail,
which pageblock type changes, which counters move).

Model scope: one zone starting at pfn 0, no per-cpu lists, no CMA, no
highatomic reserve creation, no page isolation, no guard pages, no page
shuffling, no compaction capture, ``page_group_by_mobility_disabled`` false.

Kernel state and its representation here:

* ``free_area[order].free_list[mt]`` -> ``self._free_lists[mt][order]``, a
  Python list of head pfns; index 0 is the list head (``list_add``), append is
  the list tail (``list_add_tail``).  ``get_page_from_free_area`` takes index 0.
* ``PageBuddy(page)`` + ``buddy_order(page)`` -> ``self._buddy_order[pfn]``
  (the order if ``pfn`` heads a free block, ``-1`` otherwise).
* pageblock migratetype bits -> ``self._pb_mt[pfn >> PAGEBLOCK_ORDER]``.
* ``PageLRU(page) || page_has_movable_ops(page)`` for allocated frames ->
  ``self._movable[pfn]`` (set per 4 KiB frame from the allocation's page_flags).
* ``NR_FREE_PAGES`` -> ``self.nr_free_pages`` (maintained by
  :meth:`_account_freepages`, exactly as the kernel does, so it excludes
  MIGRATE_ISOLATE).
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------
# Constants (mmzone.h / internal.h, CONFIG_CMA=n, CONFIG_MEMORY_ISOLATION=y)
# ---------------------------------------------------------------------------

MIGRATE_UNMOVABLE = 0
MIGRATE_MOVABLE = 1
MIGRATE_RECLAIMABLE = 2
MIGRATE_PCPTYPES = 3
MIGRATE_HIGHATOMIC = MIGRATE_PCPTYPES
MIGRATE_ISOLATE = 4
MIGRATE_TYPES = 5

MAX_PAGE_ORDER = 10
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1
PAGEBLOCK_ORDER = 9
PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER

WMARK_MIN = 0
WMARK_LOW = 1
WMARK_HIGH = 2

ALLOC_WMARK_MIN = WMARK_MIN
ALLOC_WMARK_LOW = WMARK_LOW
ALLOC_WMARK_HIGH = WMARK_HIGH
ALLOC_NO_WATERMARKS = 0x04
ALLOC_WMARK_MASK = ALLOC_NO_WATERMARKS - 1
ALLOC_OOM = 0x08
ALLOC_NON_BLOCK = 0x10
ALLOC_MIN_RESERVE = 0x20
ALLOC_NOFRAGMENT = 0x100
ALLOC_HIGHATOMIC = 0x200
ALLOC_KSWAPD = 0x800
ALLOC_RESERVES = ALLOC_NON_BLOCK | ALLOC_MIN_RESERVE | ALLOC_HIGHATOMIC | ALLOC_OOM

#: alloc_flags bits this model implements; anything else is rejected so that a
#: test cannot silently exercise semantics the oracle does not have.
SUPPORTED_ALLOC_FLAGS = ALLOC_WMARK_MASK | ALLOC_NO_WATERMARKS | ALLOC_NOFRAGMENT | ALLOC_KSWAPD

# page_flags bits of an allocation (the simulator's own encoding)
PG_LRU = 0x08
PG_MOVABLE_OPS = 0x10
PG_KERNEL = 0x20
_PAGE_FLAGS_MOVABLE = PG_LRU | PG_MOVABLE_OPS

# fpi_t
FPI_NONE = 0
FPI_TO_TAIL = 1 << 1

# static int fallbacks[MIGRATE_PCPTYPES][MIGRATE_PCPTYPES - 1]
FALLBACKS = {
    MIGRATE_UNMOVABLE: (MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE),
    MIGRATE_MOVABLE: (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE),
    MIGRATE_RECLAIMABLE: (MIGRATE_UNMOVABLE, MIGRATE_MOVABLE),
}

page_group_by_mobility_disabled = False


def migratetype_is_mergeable(mt: int) -> bool:
    return mt < MIGRATE_PCPTYPES


def is_migrate_isolate(mt: int) -> bool:
    return mt == MIGRATE_ISOLATE


def mult_frac(x: int, numer: int, denom: int) -> int:
    """include/linux/math.h mult_frac() for non-negative integers."""
    quot, rem = divmod(x, denom)
    return quot * numer + (rem * numer) // denom


class ReferenceZone:
    """One zone of ``nr_pages`` frames, pfns ``0 .. nr_pages-1``."""

    def __init__(self, nr_pages: int):
        nr_pages = int(nr_pages)
        if nr_pages <= 0 or nr_pages % PAGEBLOCK_NR_PAGES:
            raise ValueError("nr_pages must be a positive multiple of %d" % PAGEBLOCK_NR_PAGES)
        self.nr_pages = nr_pages
        self.managed_pages = nr_pages  # zone_managed_pages(): every frame is boot-freed

        # memmap_init_range(..., MIGRATE_MOVABLE): every pageblock starts MOVABLE.
        self._pb_mt = [MIGRATE_MOVABLE] * (nr_pages // PAGEBLOCK_NR_PAGES)
        self._free_lists = [[[] for _ in range(NR_PAGE_ORDERS)] for _ in range(MIGRATE_TYPES)]
        self._buddy_order = [-1] * nr_pages
        # All frames start "allocated" (refcount 1, PageReserved) until boot frees them.
        self._allocated = bytearray(b"\x01") * nr_pages
        self._movable = bytearray(nr_pages)

        self._watermark = [0, 0, 0]  # _watermark[WMARK_MIN/LOW/HIGH], unboosted
        self.watermark_boost = 0
        self.watermark_boost_factor = 15000
        self.nr_free_pages = 0  # NR_FREE_PAGES
        self.nr_free_highatomic = 0  # zone->nr_free_highatomic (stays 0 in this model)
        self.pgalloc = 0
        self.pgfree = 0
        self.alloc_fallbacks = 0
        # ZONE_BOOSTED_WATERMARK bit and the kswapd wakeups rmqueue() would issue
        # (extra observability; not part of the engine interface).
        self.zone_boosted_watermark = False
        self.kswapd_wakeups = 0

        self._free_boot_memory(0, nr_pages)

    # ------------------------------------------------------------------
    # Public interface
    # ------------------------------------------------------------------

    def set_watermarks(self, wmin: int, wlow: int, whigh: int) -> None:
        """Set ``_watermark[MIN/LOW/HIGH]`` (unboosted).  Does not touch the boost."""
        self._watermark = [int(wmin), int(wlow), int(whigh)]

    def watermarks(self) -> tuple[int, int, int]:
        return (self._watermark[WMARK_MIN], self._watermark[WMARK_LOW], self._watermark[WMARK_HIGH])

    def alloc(self, order: int, mt: int, alloc_flags: int, page_flags: int) -> int:
        """get_page_from_freelist() for this single zone; returns the pfn or -1."""
        order = int(order)
        mt = int(mt)
        alloc_flags = int(alloc_flags)
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError("order out of range: %d" % order)
        if mt not in FALLBACKS:
            raise ValueError("allocation migratetype must be 0..2, got %d" % mt)
        if alloc_flags & ~SUPPORTED_ALLOC_FLAGS:
            raise ValueError("unsupported alloc_flags bits: %#x" % (alloc_flags & ~SUPPORTED_ALLOC_FLAGS))
        if (alloc_flags & ALLOC_WMARK_MASK) > WMARK_HIGH:
            raise ValueError("alloc_flags & ALLOC_WMARK_MASK must be MIN, LOW or HIGH")

        while True:  # the 'retry:' label of get_page_from_freelist
            if not (alloc_flags & ALLOC_NO_WATERMARKS):
                # wmark_pages(zone, alloc_flags & ALLOC_WMARK_MASK)
                mark = self._watermark[alloc_flags & ALLOC_WMARK_MASK] + self.watermark_boost
                if not self._zone_watermark_ok(order, mark, alloc_flags):
                    return -1

            pfn = self._rmqueue(order, mt, alloc_flags)
            if pfn >= 0:
                self._prep_new_page(pfn, order, int(page_flags))
                return pfn

            if alloc_flags & ALLOC_NOFRAGMENT:  # no_fallback && !defrag_mode
                alloc_flags &= ~ALLOC_NOFRAGMENT
                continue
            return -1

    def free(self, pfn: int, order: int) -> None:
        """__free_pages_ok(page, order, FPI_NONE) -> free_one_page()."""
        pfn = int(pfn)
        order = int(order)
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError("order out of range: %d" % order)
        nr = 1 << order
        if pfn < 0 or pfn & (nr - 1) or pfn + nr > self.nr_pages:
            raise ValueError("bad free: pfn %d order %d" % (pfn, order))
        for p in range(pfn, pfn + nr):
            if not self._allocated[p]:
                raise ValueError("double free: frame %d of pfn %d order %d is free" % (p, pfn, order))
        # free_pages_prepare(): the frames lose their page flags.
        for p in range(pfn, pfn + nr):
            self._allocated[p] = 0
            self._movable[p] = 0
        self._free_one_page(pfn, order, FPI_NONE)

    def free_area(self) -> np.ndarray:
        """Free block counts, shape (MIGRATE_TYPES, NR_PAGE_ORDERS)."""
        out = np.zeros((MIGRATE_TYPES, NR_PAGE_ORDERS), dtype=np.int64)
        for mt in range(MIGRATE_TYPES):
            for order in range(NR_PAGE_ORDERS):
                out[mt, order] = len(self._free_lists[mt][order])
        return out

    def pageblock_counts(self) -> np.ndarray:
        """Number of pageblocks of each migratetype, shape (MIGRATE_TYPES,)."""
        out = np.zeros(MIGRATE_TYPES, dtype=np.int64)
        for mt in self._pb_mt:
            out[mt] += 1
        return out

    def free_list(self, mt: int, order: int) -> list[int]:
        """pfns on free_area[order].free_list[mt], list head first."""
        return list(self._free_lists[int(mt)][int(order)])

    # Extra read-only helpers (not in the engine interface), handy in tests.

    def pageblock_migratetype(self, pfn: int) -> int:
        return self._get_pfnblock_migratetype(int(pfn))

    def nr_free(self, order: int) -> int:
        """free_area[order].nr_free (all migratetypes, ISOLATE included)."""
        return self._area_nr_free(int(order))

    def is_allocated(self, pfn: int) -> bool:
        return bool(self._allocated[int(pfn)])

    # ------------------------------------------------------------------
    # Boot: memblock __free_pages_memory() -> __free_pages_core()
    # ------------------------------------------------------------------

    def _free_boot_memory(self, start: int, end: int) -> None:
        while start < end:
            if start:
                order = min(MAX_PAGE_ORDER, (start & -start).bit_length() - 1)  # __ffs
            else:
                order = MAX_PAGE_ORDER
            while start + (1 << order) > end:
                order -= 1
            # __free_pages_core(): refcounts to 0, then __free_pages_ok(FPI_TO_TAIL)
            for p in range(start, start + (1 << order)):
                self._allocated[p] = 0
            self._free_one_page(start, order, FPI_TO_TAIL)
            start += 1 << order

    # ------------------------------------------------------------------
    # Free list primitives
    # ------------------------------------------------------------------

    def _get_pfnblock_migratetype(self, pfn: int) -> int:
        return self._pb_mt[pfn >> PAGEBLOCK_ORDER]

    def _set_pageblock_migratetype(self, pfn: int, mt: int) -> None:
        # page_group_by_mobility_disabled is false, so no UNMOVABLE forcing.
        self._pb_mt[pfn >> PAGEBLOCK_ORDER] = mt

    def _change_pageblock_range(self, pfn: int, start_order: int, mt: int) -> None:
        nr_pageblocks = 1 << (start_order - PAGEBLOCK_ORDER)
        for i in range(nr_pageblocks):
            self._set_pageblock_migratetype(pfn + i * PAGEBLOCK_NR_PAGES, mt)

    def _account_freepages(self, nr_pages: int, mt: int) -> None:
        if is_migrate_isolate(mt):
            return
        self.nr_free_pages += nr_pages
        if mt == MIGRATE_HIGHATOMIC:
            self.nr_free_highatomic += nr_pages

    def _check_list_type(self, pfn: int, mt: int) -> None:
        # The VM_WARN_ONCE in the list helpers: a free block sits on the list of
        # its pageblock's type.  A violation is a bug in this model.
        assert self._get_pfnblock_migratetype(pfn) == mt, (pfn, mt, self._get_pfnblock_migratetype(pfn))

    def _add_to_free_list(self, pfn: int, order: int, mt: int, tail: bool) -> None:
        """__add_to_free_list() followed by set_buddy_order()."""
        self._check_list_type(pfn, mt)
        lst = self._free_lists[mt][order]
        if tail:
            lst.append(pfn)
        else:
            lst.insert(0, pfn)
        self._buddy_order[pfn] = order

    def _del_from_free_list_raw(self, pfn: int, order: int, mt: int) -> None:
        """__del_page_from_free_list(): unlink and __ClearPageBuddy, no accounting."""
        self._check_list_type(pfn, mt)
        self._free_lists[mt][order].remove(pfn)
        self._buddy_order[pfn] = -1

    def _del_page_from_free_list(self, pfn: int, order: int, mt: int) -> None:
        self._del_from_free_list_raw(pfn, order, mt)
        self._account_freepages(-(1 << order), mt)

    def _move_to_free_list(self, pfn: int, order: int, old_mt: int, new_mt: int) -> None:
        """list_move_tail() onto the new list; the pageblock type changes later."""
        self._check_list_type(pfn, old_mt)
        self._free_lists[old_mt][order].remove(pfn)
        self._free_lists[new_mt][order].append(pfn)
        self._account_freepages(-(1 << order), old_mt)
        self._account_freepages(1 << order, new_mt)

    def _get_page_from_free_area(self, order: int, mt: int) -> int:
        lst = self._free_lists[mt][order]
        return lst[0] if lst else -1

    def _area_nr_free(self, order: int) -> int:
        return sum(len(self._free_lists[mt][order]) for mt in range(MIGRATE_TYPES))

    def _free_area_empty(self, order: int, mt: int) -> bool:
        return not self._free_lists[mt][order]

    # ------------------------------------------------------------------
    # Buddy lookup (mm/internal.h)
    # ------------------------------------------------------------------

    def _page_is_buddy(self, buddy_pfn: int, order: int) -> bool:
        # A pfn outside the zone is never a buddy (page_zone_id differs / no page).
        if not 0 <= buddy_pfn < self.nr_pages:
            return False
        return self._buddy_order[buddy_pfn] == order

    def _find_buddy_pfn(self, pfn: int, order: int) -> tuple[int, bool]:
        """find_buddy_page_pfn(): (buddy_pfn, buddy is a free block of this order)."""
        buddy_pfn = pfn ^ (1 << order)
        return buddy_pfn, self._page_is_buddy(buddy_pfn, order)

    def _buddy_merge_likely(self, pfn: int, buddy_pfn: int, order: int) -> bool:
        if order >= MAX_PAGE_ORDER - 1:
            return False
        higher_page_pfn = buddy_pfn & pfn
        return self._find_buddy_pfn(higher_page_pfn, order + 1)[1]

    # ------------------------------------------------------------------
    # Freeing
    # ------------------------------------------------------------------

    def _free_one_page(self, pfn: int, order: int, fpi_flags: int) -> None:
        """free_one_page(): split_large_buddy() under the lock, then PGFREE."""
        self._split_large_buddy(pfn, order, fpi_flags)
        self.pgfree += 1 << order

    def _split_large_buddy(self, pfn: int, order: int, fpi_flags: int) -> None:
        end = pfn + (1 << order)
        if order > PAGEBLOCK_ORDER:
            order = PAGEBLOCK_ORDER
        while True:
            mt = self._get_pfnblock_migratetype(pfn)
            self._free_one_page_merge(pfn, order, mt, fpi_flags)
            pfn += 1 << order
            if pfn == end:
                break

    def _free_one_page_merge(self, pfn: int, order: int, migratetype: int, fpi_flags: int) -> None:
        """The kernel's __free_one_page() (compaction capture and guard pages omitted)."""
        buddy_pfn = 0
        self._account_freepages(1 << order, migratetype)

        while order < MAX_PAGE_ORDER:
            buddy_mt = migratetype
            buddy_pfn, is_buddy = self._find_buddy_pfn(pfn, order)
            if not is_buddy:
                break  # goto done_merging

            if order >= PAGEBLOCK_ORDER:
                buddy_mt = self._get_pfnblock_migratetype(buddy_pfn)
                if migratetype != buddy_mt and (
                    not migratetype_is_mergeable(migratetype) or not migratetype_is_mergeable(buddy_mt)
                ):
                    break  # goto done_merging

            self._del_from_free_list_raw(buddy_pfn, order, buddy_mt)

            if buddy_mt != migratetype:
                # Match buddy type so a later expand() puts sub-blocks right.
                self._change_pageblock_range(buddy_pfn, order, migratetype)

            pfn = buddy_pfn & pfn
            order += 1

        # done_merging:
        if fpi_flags & FPI_TO_TAIL:
            to_tail = True
        else:
            # is_shuffle_order() is false (shuffle off)
            to_tail = self._buddy_merge_likely(pfn, buddy_pfn, order)
        self._add_to_free_list(pfn, order, migratetype, to_tail)

    # ------------------------------------------------------------------
    # Allocation: splitting
    # ------------------------------------------------------------------

    def _expand(self, pfn: int, low: int, high: int, mt: int) -> int:
        """expand(): upper halves to the HEAD of free_list[mt], largest first."""
        size = 1 << high
        nr_added = 0
        while high > low:
            high -= 1
            size >>= 1
            self._add_to_free_list(pfn + size, high, mt, False)
            nr_added += size
        return nr_added

    def _page_del_and_expand(self, pfn: int, low: int, high: int, mt: int) -> None:
        nr_pages = 1 << high
        self._del_from_free_list_raw(pfn, high, mt)
        nr_pages -= self._expand(pfn, low, high, mt)
        self._account_freepages(-nr_pages, mt)

    def _rmqueue_smallest(self, order: int, mt: int) -> int:
        for current_order in range(order, NR_PAGE_ORDERS):
            pfn = self._get_page_from_free_area(current_order, mt)
            if pfn < 0:
                continue
            self._page_del_and_expand(pfn, order, current_order, mt)
            return pfn
        return -1

    # ------------------------------------------------------------------
    # Allocation: fallback (6.15+ claim / steal)
    # ------------------------------------------------------------------

    @staticmethod
    def _should_try_claim_block(order: int, start_mt: int) -> bool:
        if order >= PAGEBLOCK_ORDER:
            return True
        if order >= PAGEBLOCK_ORDER // 2:
            return True
        if start_mt == MIGRATE_RECLAIMABLE or start_mt == MIGRATE_UNMOVABLE:
            return True
        if page_group_by_mobility_disabled:
            return True
        return False

    def _find_suitable_fallback(self, order: int, migratetype: int, claimable: bool) -> int:
        """``order`` is the free area's order; returns a type, -1 (none) or -2 (stop)."""
        if claimable and not self._should_try_claim_block(order, migratetype):
            return -2
        if self._area_nr_free(order) == 0:
            return -1
        for fallback_mt in FALLBACKS[migratetype]:
            if not self._free_area_empty(order, fallback_mt):
                return fallback_mt
        return -1

    def _boost_watermark(self) -> bool:
        if not self.watermark_boost_factor:
            return False
        if PAGEBLOCK_NR_PAGES * 4 > self.managed_pages:
            return False
        max_boost = mult_frac(self._watermark[WMARK_HIGH], self.watermark_boost_factor, 10000)
        if not max_boost:
            return False
        max_boost = max(PAGEBLOCK_NR_PAGES, max_boost)
        self.watermark_boost = min(self.watermark_boost + PAGEBLOCK_NR_PAGES, max_boost)
        return True

    def _prep_move_freepages_block(self, pfn: int) -> tuple[bool, int, int, int]:
        """Returns (ok, start_pfn, num_free, num_movable)."""
        start = pfn & ~(PAGEBLOCK_NR_PAGES - 1)
        end = start + PAGEBLOCK_NR_PAGES
        if not (0 <= start < self.nr_pages and 0 <= end - 1 < self.nr_pages):
            return False, start, 0, 0  # straddles the zone (cannot happen here)
        num_free = 0
        num_movable = 0
        p = start
        while p < end:
            bo = self._buddy_order[p]
            if bo >= 0:
                nr = 1 << bo
                num_free += nr
                p += nr
                continue
            if self._movable[p]:
                num_movable += 1
            p += 1
        return True, start, num_free, num_movable

    def _move_freepages_block_raw(self, start_pfn: int, old_mt: int, new_mt: int) -> int:
        """__move_freepages_block(): every free block in the pageblock, ascending, to the TAIL."""
        end = start_pfn + PAGEBLOCK_NR_PAGES
        pages_moved = 0
        p = start_pfn
        while p < end:
            bo = self._buddy_order[p]
            if bo < 0:
                p += 1
                continue
            self._move_to_free_list(p, bo, old_mt, new_mt)
            p += 1 << bo
            pages_moved += 1 << bo
        return pages_moved

    def _try_to_claim_block(self, pfn: int, current_order: int, order: int, start_type: int,
                            block_type: int, alloc_flags: int) -> int:
        # Take ownership for orders >= pageblock_order
        if current_order >= PAGEBLOCK_ORDER:
            self._del_page_from_free_list(pfn, current_order, block_type)
            self._change_pageblock_range(pfn, current_order, start_type)
            nr_added = self._expand(pfn, order, current_order, start_type)
            self._account_freepages(nr_added, start_type)
            return pfn

        # Boost watermarks to increase reclaim pressure (before the half test,
        # whether or not the claim then succeeds).
        if self._boost_watermark() and (alloc_flags & ALLOC_KSWAPD):
            self.zone_boosted_watermark = True

        ok, start_pfn, free_pages, movable_pages = self._prep_move_freepages_block(pfn)
        if not ok:
            return -1

        if start_type == MIGRATE_MOVABLE:
            alike_pages = movable_pages
        elif block_type == MIGRATE_MOVABLE:
            alike_pages = PAGEBLOCK_NR_PAGES - (free_pages + movable_pages)
        else:
            alike_pages = 0

        if free_pages + alike_pages >= (1 << (PAGEBLOCK_ORDER - 1)) or page_group_by_mobility_disabled:
            self._move_freepages_block_raw(start_pfn, block_type, start_type)
            self._set_pageblock_migratetype(start_pfn, start_type)
            return self._rmqueue_smallest(order, start_type)

        return -1

    def _rmqueue_claim(self, order: int, start_migratetype: int, alloc_flags: int) -> int:
        min_order = order
        if order < PAGEBLOCK_ORDER and (alloc_flags & ALLOC_NOFRAGMENT):
            min_order = PAGEBLOCK_ORDER

        for current_order in range(MAX_PAGE_ORDER, min_order - 1, -1):
            fallback_mt = self._find_suitable_fallback(current_order, start_migratetype, True)
            if fallback_mt == -1:
                continue
            if fallback_mt == -2:
                break
            pfn = self._get_page_from_free_area(current_order, fallback_mt)
            pfn = self._try_to_claim_block(pfn, current_order, order, start_migratetype,
                                           fallback_mt, alloc_flags)
            if pfn >= 0:
                return pfn
        return -1

    def _rmqueue_steal(self, order: int, start_migratetype: int) -> int:
        for current_order in range(order, NR_PAGE_ORDERS):
            fallback_mt = self._find_suitable_fallback(current_order, start_migratetype, False)
            if fallback_mt == -1:
                continue
            pfn = self._get_page_from_free_area(current_order, fallback_mt)
            self._page_del_and_expand(pfn, order, current_order, fallback_mt)
            return pfn
        return -1

    def _rmqueue(self, order: int, migratetype: int, alloc_flags: int) -> int:
        """rmqueue() -> rmqueue_buddy() -> __rmqueue(mode=RMQUEUE_NORMAL), no CMA."""
        pfn = self._rmqueue_smallest(order, migratetype)
        if pfn < 0:
            pfn = self._rmqueue_claim(order, migratetype, alloc_flags)
            if pfn < 0 and not (alloc_flags & ALLOC_NOFRAGMENT):
                pfn = self._rmqueue_steal(order, migratetype)
            if pfn >= 0:
                self.alloc_fallbacks += 1
        if pfn >= 0:
            self.pgalloc += 1 << order  # __count_zid_vm_events(PGALLOC, ...)
        # rmqueue(): after rmqueue_buddy, success or not.
        if (alloc_flags & ALLOC_KSWAPD) and self.zone_boosted_watermark:
            self.zone_boosted_watermark = False
            self.kswapd_wakeups += 1  # wakeup_kswapd(zone, 0, 0, zone_idx(zone))
        return pfn

    def _prep_new_page(self, pfn: int, order: int, page_flags: int) -> None:
        movable = 1 if page_flags & _PAGE_FLAGS_MOVABLE else 0
        for p in range(pfn, pfn + (1 << order)):
            assert not self._allocated[p] and self._buddy_order[p] < 0
            self._allocated[p] = 1
            self._movable[p] = movable

    # ------------------------------------------------------------------
    # Watermarks
    # ------------------------------------------------------------------

    def _zone_watermark_ok(self, order: int, mark: int, alloc_flags: int) -> bool:
        """__zone_watermark_ok() with free_pages = NR_FREE_PAGES, lowmem_reserve 0.

        No ALLOC_RESERVES bits are accepted by :meth:`alloc`, so the reserve
        reductions of ``min`` never apply.  (For order 0 this equals
        zone_watermark_fast(); the fast path's extra boost-ignoring retry needs
        ALLOC_MIN_RESERVE.)
        """
        free_pages = self.nr_free_pages
        unusable_free = (1 << order) - 1
        if not (alloc_flags & ALLOC_RESERVES):
            unusable_free += self.nr_free_highatomic
        free_pages -= unusable_free
        lowmem_reserve = 0
        if free_pages <= mark + lowmem_reserve:
            return False
        if not order:
            return True
        for o in range(order, NR_PAGE_ORDERS):
            if not self._area_nr_free(o):
                continue
            for mt in range(MIGRATE_PCPTYPES):
                if not self._free_area_empty(o, mt):
                    return True
            if (alloc_flags & (ALLOC_HIGHATOMIC | ALLOC_OOM)) and \
                    not self._free_area_empty(o, MIGRATE_HIGHATOMIC):
                return True
        return False

    # ------------------------------------------------------------------
    # Self-consistency (not kernel code)
    # ------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError unless every frame is accounted for exactly once, etc."""
        covered = bytearray(self.nr_pages)
        nr_free_pages = 0
        nr_free_highatomic = 0
        for mt in range(MIGRATE_TYPES):
            for order in range(NR_PAGE_ORDERS):
                lst = self._free_lists[mt][order]
                assert len(set(lst)) == len(lst), ("duplicate on list", mt, order)
                for pfn in lst:
                    nr = 1 << order
                    assert pfn % nr == 0 and pfn + nr <= self.nr_pages, (pfn, order)
                    assert self._buddy_order[pfn] == order, (pfn, order, self._buddy_order[pfn])
                    # free-list invariant: every pageblock the block covers has type mt
                    for pb in range(pfn >> PAGEBLOCK_ORDER, ((pfn + nr - 1) >> PAGEBLOCK_ORDER) + 1):
                        assert self._pb_mt[pb] == mt, ("list/pageblock type mismatch", pfn, order, mt)
                    for p in range(pfn, pfn + nr):
                        assert not covered[p], ("frame in two free blocks", p)
                        assert not self._allocated[p], ("frame both free and allocated", p)
                        covered[p] = 1
                    if not is_migrate_isolate(mt):
                        nr_free_pages += nr
                    if mt == MIGRATE_HIGHATOMIC:
                        nr_free_highatomic += nr
        heads = sum(1 for o in self._buddy_order if o >= 0)
        assert heads == sum(len(l) for row in self._free_lists for l in row), "stray PageBuddy"
        for p in range(self.nr_pages):
            assert covered[p] or self._allocated[p], ("frame lost", p)
            if not self._allocated[p]:
                assert not self._movable[p], ("free frame marked movable", p)
        assert nr_free_pages == self.nr_free_pages, (nr_free_pages, self.nr_free_pages)
        assert nr_free_highatomic == self.nr_free_highatomic
        # No two free buddies of the same order that could have merged
        # (same order, both free, mergeable types) should coexist below MAX order.
        for mt in range(MIGRATE_TYPES):
            for order in range(MAX_PAGE_ORDER):
                for pfn in self._free_lists[mt][order]:
                    bpfn = pfn ^ (1 << order)
                    if self._page_is_buddy(bpfn, order):
                        bmt = self._get_pfnblock_migratetype(bpfn)
                        mergeable = order < PAGEBLOCK_ORDER or mt == bmt or (
                            migratetype_is_mergeable(mt) and migratetype_is_mergeable(bmt))
                        assert not mergeable, ("unmerged buddies", pfn, bpfn, order)
