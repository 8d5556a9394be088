# cython: language_level=3
"""thpcore's data plane: the frame table and the zone's buddy allocator (mm/page_alloc.c).

The Python wrappers (def methods) validate every argument before entering nogil code; the
cdef kernels trust their arguments. Semantics follow Linux 6.18 for one zone with no per-cpu
page lists (as after drain_all_pages()), no CMA and no memory hotplug.
"""

import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

DEBUG = THPCORE_DEBUG   # compile-time: True in the bounds-checked debug build

# fallbacks[] of mm/page_alloc.c: where each type looks when its own lists are empty.
cdef int FALLBACKS[3][2]
FALLBACKS[MIGRATE_UNMOVABLE][0] = MIGRATE_RECLAIMABLE
FALLBACKS[MIGRATE_UNMOVABLE][1] = MIGRATE_MOVABLE
FALLBACKS[MIGRATE_MOVABLE][0] = MIGRATE_RECLAIMABLE
FALLBACKS[MIGRATE_MOVABLE][1] = MIGRATE_UNMOVABLE
FALLBACKS[MIGRATE_RECLAIMABLE][0] = MIGRATE_UNMOVABLE
FALLBACKS[MIGRATE_RECLAIMABLE][1] = MIGRATE_MOVABLE

# Exposed to Python (the .pyi documents them).
PY_MAX_PAGE_ORDER = MAX_PAGE_ORDER
PY_PAGEBLOCK_ORDER = PAGEBLOCK_ORDER
PY_MIGRATE_TYPES = MIGRATE_TYPES
PY_ALLOC_WMARK_MIN = ALLOC_WMARK_MIN
PY_ALLOC_WMARK_LOW = ALLOC_WMARK_LOW
PY_ALLOC_WMARK_HIGH = ALLOC_WMARK_HIGH
PY_ALLOC_NO_WATERMARKS = ALLOC_NO_WATERMARKS
PY_ALLOC_NOFRAGMENT = ALLOC_NOFRAGMENT
PY_ALLOC_KSWAPD = ALLOC_KSWAPD
PY_PG_BUDDY = PG_buddy
PY_PG_HEAD = PG_head
PY_PG_TAIL = PG_tail
PY_PG_LRU = PG_lru
PY_PG_MOVABLE_OPS = PG_movable_ops
PY_PG_KERNEL = PG_kernel

CHECK_MESSAGES = {
    CHECK_FREE_BLOCK_MISALIGNED: "free block not aligned to its order or past the zone end",
    CHECK_FREE_BLOCK_OVERLAP: "frame inside a free block is marked as buddy, head or tail",
    CHECK_FREE_LIST_CORRUPT: "free list links are inconsistent",
    CHECK_FREE_COUNT_MISMATCH: "free counters disagree with the free lists",
    CHECK_UNMERGED_BUDDIES: "two free buddies of the same order were left unmerged",
    CHECK_FREE_LIST_WRONG_TYPE: "free block on a list other than its pageblock's migratetype",
    CHECK_ALLOCATED_BLOCK_CORRUPT: "allocated block misaligned or with bad tail frames",
    CHECK_FRAME_UNACCOUNTED: "frame is neither free nor allocated",
    CHECK_PAGEBLOCK_COUNT_MISMATCH: "pageblock migratetype counts disagree with pageblock_mt",
    CHECK_BAD_MIGRATETYPE: "pageblock has an invalid migratetype",
}

cdef inline bint migratetype_is_mergeable(int mt) noexcept nogil:
    return mt < MIGRATE_PCPTYPES


cdef class Zone:

    def __cinit__(self, int64_t nr_pages):
        if nr_pages <= 0 or nr_pages % PAGEBLOCK_NR_PAGES:
            raise ValueError(f"nr_pages must be a positive multiple of {PAGEBLOCK_NR_PAGES}")
        if nr_pages >= <int64_t>PFN_NONE:
            raise ValueError("zone too large: pfns must fit in 32 bits")
        self.nr_pages = nr_pages
        self.nr_pageblocks = nr_pages // PAGEBLOCK_NR_PAGES
        self.flags = np.zeros(nr_pages, dtype=np.uint8)
        self.order = np.zeros(nr_pages, dtype=np.uint8)
        self.memcg = np.zeros(nr_pages, dtype=np.uint16)
        mapcount = np.zeros(nr_pages, dtype=np.int32)
        self.mapcount = mapcount
        self.prev = mapcount.view(np.uint32)
        self.content = np.zeros(nr_pages, dtype=np.uint32)
        # memmap_init_range() marks every pageblock movable before the boot frees.
        self.pageblock_mt = np.full(self.nr_pageblocks, MIGRATE_MOVABLE, dtype=np.uint8)
        cdef int mt, o
        for mt in range(MIGRATE_TYPES):
            self.nr_pageblocks_of[mt] = 0
            for o in range(NR_PAGE_ORDERS):
                self.free_head[mt][o] = PFN_NONE
                self.free_tail[mt][o] = PFN_NONE
                self.nr_free[mt][o] = 0
        for o in range(NR_PAGE_ORDERS):
            self.area_nr_free[o] = 0
        self.nr_pageblocks_of[MIGRATE_MOVABLE] = self.nr_pageblocks
        self.nr_free_pages = 0
        self.watermark[WMARK_MIN] = 0
        self.watermark[WMARK_LOW] = 0
        self.watermark[WMARK_HIGH] = 0
        self.watermark_boost = 0
        self.watermark_boost_factor = 15000
        self.nr_reserved_highatomic = 0
        self.pgalloc = 0
        self.pgfree = 0
        self.alloc_fallbacks = 0
        self.pageblocks_claimed = 0
        self.check_pfn = -1
        self.free_boot_memory()

    cdef void free_boot_memory(self) noexcept nogil:
        # __free_pages_memory(): naturally aligned chunks of up to MAX_PAGE_ORDER, ascending,
        # each freed with FPI_TO_TAIL.
        cdef int64_t start = 0, end = self.nr_pages
        cdef int order
        while start < end:
            order = MAX_PAGE_ORDER
            while order > 0 and (start & ((<int64_t>1 << order) - 1)):
                order -= 1
            while start + (<int64_t>1 << order) > end:
                order -= 1
            self.split_large_buddy(<uint32_t>start, order, True)
            self.pgfree += <int64_t>1 << order      # __free_pages_ok() counts boot frees too
            start += <int64_t>1 << order

    # ----------------------------------------------------------------------------------------
    # free lists

    cdef void add_to_free_list(self, uint32_t pfn, int order, int mt, bint tail) noexcept nogil:
        self.flags[pfn] = PG_buddy
        self.order[pfn] = order
        if tail:
            self.content[pfn] = PFN_NONE
            self.prev[pfn] = self.free_tail[mt][order]
            if self.free_tail[mt][order] != PFN_NONE:
                self.content[self.free_tail[mt][order]] = pfn
            else:
                self.free_head[mt][order] = pfn
            self.free_tail[mt][order] = pfn
        else:
            self.prev[pfn] = PFN_NONE
            self.content[pfn] = self.free_head[mt][order]
            if self.free_head[mt][order] != PFN_NONE:
                self.prev[self.free_head[mt][order]] = pfn
            else:
                self.free_tail[mt][order] = pfn
            self.free_head[mt][order] = pfn
        self.nr_free[mt][order] += 1
        self.area_nr_free[order] += 1
        if mt != MIGRATE_ISOLATE:
            self.nr_free_pages += <int64_t>1 << order

    cdef void del_from_free_list(self, uint32_t pfn, int order, int mt) noexcept nogil:
        cdef uint32_t nxt = self.content[pfn], prv = self.prev[pfn]
        if prv != PFN_NONE:
            self.content[prv] = nxt
        else:
            self.free_head[mt][order] = nxt
        if nxt != PFN_NONE:
            self.prev[nxt] = prv
        else:
            self.free_tail[mt][order] = prv
        self.flags[pfn] = 0
        self.order[pfn] = 0
        self.content[pfn] = 0
        self.mapcount[pfn] = 0
        self.nr_free[mt][order] -= 1
        self.area_nr_free[order] -= 1
        if mt != MIGRATE_ISOLATE:
            self.nr_free_pages -= <int64_t>1 << order

    cdef void move_to_free_list(self, uint32_t pfn, int order, int old_mt, int new_mt) noexcept nogil:
        # list_move_tail(): the block goes to the tail of its new list.
        self.del_from_free_list(pfn, order, old_mt)
        self.add_to_free_list(pfn, order, new_mt, True)

    cdef int64_t expand(self, uint32_t pfn, int low, int high, int mt) noexcept nogil:
        # Keep the lowest 2^low pages; give each upper half back at its order, to the list head.
        cdef int64_t size = <int64_t>1 << high, nr_added = 0
        while high > low:
            high -= 1
            size >>= 1
            self.add_to_free_list(<uint32_t>(pfn + size), high, mt, False)
            nr_added += size
        return nr_added

    cdef bint page_is_buddy(self, int64_t pfn, int order) noexcept nogil:
        return (0 <= pfn < self.nr_pages and (self.flags[pfn] & PG_buddy) != 0
                and self.order[pfn] == order)

    cdef void set_pageblock_migratetype(self, int64_t pfn, int mt) noexcept nogil:
        cdef int64_t pb = pfn >> PAGEBLOCK_ORDER
        cdef int old = self.pageblock_mt[pb]
        if old != mt:
            self.nr_pageblocks_of[old] -= 1
            self.nr_pageblocks_of[mt] += 1
            self.pageblock_mt[pb] = mt

    # ----------------------------------------------------------------------------------------
    # allocation (__rmqueue and friends, 6.15+ shape)

    cdef int64_t rmqueue_smallest(self, int order, int mt) noexcept nogil:
        cdef int current_order
        cdef uint32_t pfn
        for current_order in range(order, NR_PAGE_ORDERS):
            pfn = self.free_head[mt][current_order]
            if pfn == PFN_NONE:
                continue
            self.del_from_free_list(pfn, current_order, mt)
            self.expand(pfn, order, current_order, mt)
            return pfn
        return -1

    cdef int find_suitable_fallback(self, int order, int mt, bint claimable) noexcept nogil:
        cdef int i, fallback_mt
        if claimable and not self.should_try_claim_block(order, mt):
            return -2
        if self.area_nr_free[order] == 0:
            return -1
        for i in range(MIGRATE_PCPTYPES - 1):
            fallback_mt = FALLBACKS[mt][i]
            if self.nr_free[fallback_mt][order]:
                return fallback_mt
        return -1

    cdef bint should_try_claim_block(self, int order, int start_mt) noexcept nogil:
        if order >= PAGEBLOCK_ORDER // 2:
            return True
        if start_mt == MIGRATE_RECLAIMABLE or start_mt == MIGRATE_UNMOVABLE:
            return True
        # page_group_by_mobility_disabled is never set: Machine refuses zones that small.
        return False

    cdef bint boost_watermark(self) noexcept nogil:
        cdef int64_t max_boost
        if not self.watermark_boost_factor:
            return False
        if PAGEBLOCK_NR_PAGES * 4 > self.nr_pages:
            return False
        max_boost = self.watermark[WMARK_HIGH] * self.watermark_boost_factor // 10000
        if not max_boost:
            return False
        if max_boost < PAGEBLOCK_NR_PAGES:
            max_boost = PAGEBLOCK_NR_PAGES
        self.watermark_boost = min(self.watermark_boost + PAGEBLOCK_NR_PAGES, max_boost)
        return True

    cdef int64_t try_to_claim_block(self, uint32_t pfn, int current_order, int order,
                                    int start_type, int block_type, int alloc_flags) noexcept nogil:
        cdef int64_t start_pfn, p, end, free_pages = 0, movable_pages = 0, alike_pages
        cdef int64_t pb
        if current_order >= PAGEBLOCK_ORDER:
            # Take ownership of every pageblock of the block.
            self.del_from_free_list(pfn, current_order, block_type)
            for pb in range(pfn >> PAGEBLOCK_ORDER,
                            (pfn + (<int64_t>1 << current_order)) >> PAGEBLOCK_ORDER):
                self.set_pageblock_migratetype(pb << PAGEBLOCK_ORDER, start_type)
            self.expand(pfn, order, current_order, start_type)
            self.pageblocks_claimed += (<int64_t>1 << current_order) >> PAGEBLOCK_ORDER
            return pfn

        self.boost_watermark()

        # prep_move_freepages_block(): free and movable pages of the pageblock.
        start_pfn = (<int64_t>pfn) & ~(<int64_t>PAGEBLOCK_NR_PAGES - 1)
        end = start_pfn + PAGEBLOCK_NR_PAGES
        p = start_pfn
        while p < end:
            if self.flags[p] & PG_buddy:
                free_pages += <int64_t>1 << self.order[p]
                p += <int64_t>1 << self.order[p]
                continue
            if self.flags[p] & (PG_lru | PG_movable_ops):
                movable_pages += 1
            p += 1

        if start_type == MIGRATE_MOVABLE:
            alike_pages = movable_pages
        elif block_type == MIGRATE_MOVABLE:
            # Unmovable/reclaimable falling back to a movable block: every non-movable page
            # is taken as compatible.
            alike_pages = PAGEBLOCK_NR_PAGES - (free_pages + movable_pages)
        else:
            alike_pages = 0

        if free_pages + alike_pages >= (1 << (PAGEBLOCK_ORDER - 1)):
            # __move_freepages_block() + set_pageblock_migratetype()
            p = start_pfn
            while p < end:
                if self.flags[p] & PG_buddy:
                    current_order = self.order[p]
                    self.move_to_free_list(<uint32_t>p, current_order, block_type, start_type)
                    p += <int64_t>1 << current_order
                else:
                    p += 1
            self.set_pageblock_migratetype(start_pfn, start_type)
            self.pageblocks_claimed += 1
            return self.rmqueue_smallest(order, start_type)
        return -1

    cdef int64_t rmqueue_claim(self, int order, int start_mt, int alloc_flags) noexcept nogil:
        cdef int current_order, min_order = order, fallback_mt
        cdef int64_t got
        if order < PAGEBLOCK_ORDER and (alloc_flags & ALLOC_NOFRAGMENT):
            min_order = PAGEBLOCK_ORDER
        current_order = MAX_PAGE_ORDER
        while current_order >= min_order:
            fallback_mt = self.find_suitable_fallback(current_order, start_mt, True)
            if fallback_mt == -2:
                break
            if fallback_mt >= 0:
                got = self.try_to_claim_block(self.free_head[fallback_mt][current_order],
                                              current_order, order, start_mt, fallback_mt,
                                              alloc_flags)
                if got >= 0:
                    self.alloc_fallbacks += 1
                    return got
            current_order -= 1
        return -1

    cdef int64_t rmqueue_steal(self, int order, int start_mt) noexcept nogil:
        cdef int current_order, fallback_mt
        cdef uint32_t pfn
        for current_order in range(order, NR_PAGE_ORDERS):
            fallback_mt = self.find_suitable_fallback(current_order, start_mt, False)
            if fallback_mt < 0:
                continue
            pfn = self.free_head[fallback_mt][current_order]
            self.del_from_free_list(pfn, current_order, fallback_mt)
            self.expand(pfn, order, current_order, fallback_mt)
            self.alloc_fallbacks += 1
            return pfn
        return -1

    cdef int64_t rmqueue(self, int order, int mt, int alloc_flags) noexcept nogil:
        cdef int64_t pfn = self.rmqueue_smallest(order, mt)
        if pfn >= 0:
            return pfn
        pfn = self.rmqueue_claim(order, mt, alloc_flags)
        if pfn >= 0:
            return pfn
        if not (alloc_flags & ALLOC_NOFRAGMENT):
            return self.rmqueue_steal(order, mt)
        return -1

    cdef bint zone_watermark_ok(self, int order, int64_t mark) noexcept nogil:
        # __zone_watermark_ok() without reserves, CMA or lowmem_reserve (single zone).
        cdef int64_t free_pages = self.nr_free_pages - ((<int64_t>1 << order) - 1) \
            - self.nr_reserved_highatomic
        cdef int o, mt
        if free_pages <= mark:
            return False
        if order == 0:
            return True
        for o in range(order, NR_PAGE_ORDERS):
            if not self.area_nr_free[o]:
                continue
            for mt in range(MIGRATE_PCPTYPES):
                if self.nr_free[mt][o]:
                    return True
        return False

    cdef int64_t get_page_from_freelist(self, int order, int mt, int alloc_flags) noexcept nogil:
        cdef int64_t pfn
        while True:
            if not (alloc_flags & ALLOC_NO_WATERMARKS):
                if not self.zone_watermark_ok(
                        order,
                        self.watermark[alloc_flags & ALLOC_WMARK_MASK] + self.watermark_boost):
                    return -1
            pfn = self.rmqueue(order, mt, alloc_flags)
            if pfn >= 0:
                return pfn
            if alloc_flags & ALLOC_NOFRAGMENT:
                # No zone could serve without fragmenting: retry allowing fallback.
                alloc_flags &= ~ALLOC_NOFRAGMENT
                continue
            return -1

    cdef void prep_new_page(self, uint32_t pfn, int order, uint8_t page_flags) noexcept nogil:
        cdef int64_t n = <int64_t>1 << order
        if order == 0:
            self.flags[pfn] = PG_head | page_flags
            self.order[pfn] = 0
            self.content[pfn] = 0
            self.mapcount[pfn] = 0
            self.memcg[pfn] = 0
            self.pgalloc += 1
            return
        # Contiguous runs: memset beats element loops for THP-sized blocks.
        memset(&self.flags[pfn], PG_tail | page_flags, n)
        self.flags[pfn] = PG_head | page_flags
        memset(&self.order[pfn], 0, n)
        self.order[pfn] = order
        memset(&self.content[pfn], 0, n * sizeof(uint32_t))
        memset(&self.mapcount[pfn], 0, n * sizeof(int32_t))
        memset(&self.memcg[pfn], 0, n * sizeof(uint16_t))
        self.pgalloc += n

    cdef int64_t alloc_one(self, int order, int mt, int alloc_flags, uint8_t page_flags) noexcept nogil:
        cdef int64_t pfn = self.get_page_from_freelist(order, mt, alloc_flags)
        if pfn >= 0:
            self.prep_new_page(<uint32_t>pfn, order, page_flags)
        return pfn

    # ----------------------------------------------------------------------------------------
    # freeing

    cdef void free_one_page(self, uint32_t pfn, int order, int mt, bint fpi_to_tail) noexcept nogil:
        # __free_one_page()
        cdef int64_t p = pfn, buddy_pfn = -1, higher
        cdef int buddy_mt
        cdef bint to_tail
        while order < MAX_PAGE_ORDER:
            buddy_pfn = p ^ (<int64_t>1 << order)
            if not self.page_is_buddy(buddy_pfn, order):
                break
            buddy_mt = mt
            if order >= PAGEBLOCK_ORDER:
                buddy_mt = self.pageblock_mt[buddy_pfn >> PAGEBLOCK_ORDER]
                if mt != buddy_mt and (not migratetype_is_mergeable(mt)
                                       or not migratetype_is_mergeable(buddy_mt)):
                    break
            self.del_from_free_list(<uint32_t>buddy_pfn, order, buddy_mt)
            if buddy_mt != mt:
                self.set_pageblock_migratetype(buddy_pfn, mt)
            p = p & buddy_pfn
            order += 1
        if fpi_to_tail:
            to_tail = True
        elif order >= MAX_PAGE_ORDER - 1:
            to_tail = False
        else:
            # buddy_merge_likely(): is the next-higher block's buddy free?
            higher = buddy_pfn & p
            to_tail = self.page_is_buddy(higher ^ (<int64_t>1 << (order + 1)), order + 1)
        self.add_to_free_list(<uint32_t>p, order, mt, to_tail)

    cdef void split_large_buddy(self, uint32_t pfn, int order, bint fpi_to_tail) noexcept nogil:
        # Blocks above pageblock order are freed a pageblock at a time, each with its own type.
        cdef int64_t p = pfn, end = pfn + (<int64_t>1 << order)
        if order > PAGEBLOCK_ORDER:
            order = PAGEBLOCK_ORDER
        while p < end:
            self.free_one_page(<uint32_t>p, order, self.pageblock_mt[p >> PAGEBLOCK_ORDER],
                               fpi_to_tail)
            p += <int64_t>1 << order

    cdef void free_pages(self, uint32_t pfn, int order) noexcept nogil:
        cdef int64_t n = <int64_t>1 << order
        if order == 0:
            self.flags[pfn] = 0
        else:
            memset(&self.flags[pfn], 0, n)
        self.pgfree += n
        self.split_large_buddy(pfn, order, False)

    # ----------------------------------------------------------------------------------------
    # invariants

    cdef int check_invariants(self) noexcept nogil:
        cdef int64_t pfn = 0, i, n, nxt, prv, count, buddy
        cdef int o, mt, bmt
        cdef int64_t free_blocks[MIGRATE_TYPES][NR_PAGE_ORDERS]
        cdef int64_t pb_count[MIGRATE_TYPES]
        cdef int64_t free_pages = 0, buddy_heads = 0, listed = 0
        cdef uint8_t f
        self.check_pfn = -1
        for mt in range(MIGRATE_TYPES):
            pb_count[mt] = 0
            for o in range(NR_PAGE_ORDERS):
                free_blocks[mt][o] = 0
        for i in range(self.nr_pageblocks):
            if self.pageblock_mt[i] >= MIGRATE_TYPES:
                self.check_pfn = i << PAGEBLOCK_ORDER
                return CHECK_BAD_MIGRATETYPE
            pb_count[self.pageblock_mt[i]] += 1
        for mt in range(MIGRATE_TYPES):
            if pb_count[mt] != self.nr_pageblocks_of[mt]:
                return CHECK_PAGEBLOCK_COUNT_MISMATCH

        # Walk the frame table block by block.
        while pfn < self.nr_pages:
            f = self.flags[pfn]
            o = self.order[pfn]
            n = <int64_t>1 << o
            self.check_pfn = pfn
            if f & PG_buddy:
                if o > MAX_PAGE_ORDER or (pfn & (n - 1)) or pfn + n > self.nr_pages or f != PG_buddy:
                    return CHECK_FREE_BLOCK_MISALIGNED
                for i in range(pfn + 1, pfn + n):
                    if self.flags[i] & (PG_buddy | PG_head | PG_tail):
                        self.check_pfn = i
                        return CHECK_FREE_BLOCK_OVERLAP
                mt = self.pageblock_mt[pfn >> PAGEBLOCK_ORDER]
                if o > PAGEBLOCK_ORDER:
                    i = pfn
                    while i < pfn + n:
                        if self.pageblock_mt[i >> PAGEBLOCK_ORDER] != mt:
                            return CHECK_FREE_LIST_WRONG_TYPE
                        i += PAGEBLOCK_NR_PAGES
                free_blocks[mt][o] += 1
                if mt != MIGRATE_ISOLATE:
                    free_pages += n
                buddy_heads += 1
                if o < MAX_PAGE_ORDER:
                    buddy = pfn ^ n
                    if self.page_is_buddy(buddy, o):
                        bmt = self.pageblock_mt[buddy >> PAGEBLOCK_ORDER]
                        if o < PAGEBLOCK_ORDER or bmt == mt or (
                                migratetype_is_mergeable(mt) and migratetype_is_mergeable(bmt)):
                            return CHECK_UNMERGED_BUDDIES
            elif f & PG_head:
                if o > MAX_PAGE_ORDER or (pfn & (n - 1)) or pfn + n > self.nr_pages:
                    return CHECK_ALLOCATED_BLOCK_CORRUPT
                for i in range(pfn + 1, pfn + n):
                    if (self.flags[i] & (PG_buddy | PG_head | PG_tail)) != PG_tail:
                        self.check_pfn = i
                        return CHECK_ALLOCATED_BLOCK_CORRUPT
            else:
                return CHECK_FRAME_UNACCOUNTED
            pfn += n

        # Walk every free list: links, membership, type, counts.
        self.check_pfn = -1
        for mt in range(MIGRATE_TYPES):
            for o in range(NR_PAGE_ORDERS):
                count = 0
                prv = PFN_NONE
                nxt = self.free_head[mt][o]
                while nxt != PFN_NONE:
                    if nxt < 0 or nxt >= self.nr_pages or count > self.nr_pages:
                        return CHECK_FREE_LIST_CORRUPT
                    self.check_pfn = nxt
                    if (self.flags[nxt] != PG_buddy or self.order[nxt] != o
                            or self.prev[nxt] != prv):
                        return CHECK_FREE_LIST_CORRUPT
                    if self.pageblock_mt[nxt >> PAGEBLOCK_ORDER] != mt:
                        return CHECK_FREE_LIST_WRONG_TYPE
                    count += 1
                    prv = nxt
                    nxt = self.content[nxt]
                if self.free_tail[mt][o] != prv:
                    return CHECK_FREE_LIST_CORRUPT
                if count != self.nr_free[mt][o] or count != free_blocks[mt][o]:
                    self.check_pfn = -1
                    return CHECK_FREE_COUNT_MISMATCH
                listed += count
        self.check_pfn = -1
        if listed != buddy_heads or free_pages != self.nr_free_pages:
            return CHECK_FREE_COUNT_MISMATCH
        for o in range(NR_PAGE_ORDERS):
            count = 0
            for mt in range(MIGRATE_TYPES):
                count += self.nr_free[mt][o]
            if count != self.area_nr_free[o]:
                return CHECK_FREE_COUNT_MISMATCH
        return CHECK_OK

    # ----------------------------------------------------------------------------------------
    # Python interface: every argument is validated here, before the nogil kernels run.

    cdef int _check_order_mt(self, int order, int mt) except -1:
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError(f"order must be in 0..{MAX_PAGE_ORDER}, got {order}")
        if not 0 <= mt < MIGRATE_PCPTYPES:
            raise ValueError(f"cannot allocate migratetype {mt} directly")
        return 0

    def alloc(self, int order, int mt, int alloc_flags, int page_flags):
        """Allocate a block of 2**order frames; return its pfn, or -1 if the zone can't."""
        self._check_order_mt(order, mt)
        if page_flags & ~(PG_lru | PG_movable_ops | PG_kernel) or page_flags < 0:
            raise ValueError("page_flags may only hold PG_lru, PG_movable_ops and PG_kernel")
        cdef int64_t pfn
        with nogil:
            pfn = self.alloc_one(order, mt, alloc_flags, <uint8_t>page_flags)
        return pfn

    def alloc_bulk(self, int order, int mt, int64_t count, int alloc_flags, int page_flags):
        """Allocate up to count blocks; return their pfns (fewer if the zone ran out)."""
        self._check_order_mt(order, mt)
        if count < 0:
            raise ValueError("count must be >= 0")
        if page_flags & ~(PG_lru | PG_movable_ops | PG_kernel) or page_flags < 0:
            raise ValueError("page_flags may only hold PG_lru, PG_movable_ops and PG_kernel")
        out_np = np.empty(count, dtype=np.uint32)
        cdef uint32_t[::1] out = out_np
        cdef int64_t i = 0, pfn
        with nogil:
            while i < count:
                pfn = self.alloc_one(order, mt, alloc_flags, <uint8_t>page_flags)
                if pfn < 0:
                    break
                out[i] = <uint32_t>pfn
                i += 1
        return out_np[:i]

    cdef int _check_freeable(self, int64_t pfn, int order, int required_flags) except -1:
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError(f"order must be in 0..{MAX_PAGE_ORDER}, got {order}")
        if not 0 <= pfn < self.nr_pages:
            raise ValueError(f"pfn {pfn} is outside the zone (0..{self.nr_pages - 1})")
        cdef uint8_t f = self.flags[pfn]
        if f & PG_buddy or (f == 0):
            raise ValueError(f"pfn {pfn} is not allocated (double free?)")
        if f & PG_tail:
            raise ValueError(f"pfn {pfn} is inside an allocated block, not its head")
        if self.order[pfn] != order:
            raise ValueError(f"pfn {pfn} heads an order-{self.order[pfn]} block, not order {order}")
        if required_flags and (f & required_flags) != required_flags:
            raise ValueError(f"pfn {pfn} was not allocated by this interface")
        return 0

    def free(self, int64_t pfn, int order, int required_flags=0):
        """Free the block of 2**order frames at pfn (its head, as returned by alloc)."""
        self._check_freeable(pfn, order, required_flags)
        with nogil:
            self.free_pages(<uint32_t>pfn, order)

    def free_bulk(self, pfns, int order, int required_flags=0):
        """Free blocks of 2**order frames; all are validated before any is freed."""
        arr = np.ascontiguousarray(pfns, dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError("pfns must be one-dimensional")
        cdef int64_t[::1] view = arr
        cdef int64_t i, j, n = view.shape[0]
        try:
            for i in range(n):
                self._check_freeable(view[i], order, required_flags)
                if self.flags[view[i]] & PG_validating:
                    raise ValueError(f"pfn {view[i]} appears twice (double free)")
                self.flags[view[i]] |= PG_validating
        except BaseException:
            for j in range(i):
                self.flags[view[j]] &= ~PG_validating
            raise
        with nogil:
            for i in range(n):
                self.free_pages(<uint32_t>view[i], order)

    def check(self):
        """Return 0 when every invariant holds, else a CHECK_* code (see CHECK_MESSAGES)."""
        cdef int rc
        with nogil:
            rc = self.check_invariants()
        return rc

    def set_watermarks(self, int64_t wmin, int64_t wlow, int64_t whigh):
        if not 0 <= wmin <= wlow <= whigh:
            raise ValueError("watermarks must satisfy 0 <= min <= low <= high")
        self.watermark[WMARK_MIN] = wmin
        self.watermark[WMARK_LOW] = wlow
        self.watermark[WMARK_HIGH] = whigh

    def watermarks(self):
        """(min, low, high) in pages, without the boost."""
        return (self.watermark[WMARK_MIN], self.watermark[WMARK_LOW], self.watermark[WMARK_HIGH])

    def clear_watermark_boost(self):
        self.watermark_boost = 0

    def free_area(self):
        """Free block counts as an int64 array [migratetype, order]."""
        out = np.zeros((MIGRATE_TYPES, NR_PAGE_ORDERS), dtype=np.int64)
        cdef int mt, o
        for mt in range(MIGRATE_TYPES):
            for o in range(NR_PAGE_ORDERS):
                out[mt, o] = self.nr_free[mt][o]
        return out

    def pageblock_counts(self):
        """Number of pageblocks of each migratetype, an int64 array [migratetype]."""
        return np.array([self.nr_pageblocks_of[mt] for mt in range(MIGRATE_TYPES)], dtype=np.int64)

    def frames(self):
        """Read-only numpy views of the frame table and the pageblock types."""
        out = {}
        for name, view in (("flags", self.flags), ("order", self.order), ("memcg", self.memcg),
                           ("mapcount", self.mapcount), ("content", self.content),
                           ("pageblock_mt", self.pageblock_mt)):
            arr = np.asarray(view)
            arr = arr.view()
            arr.flags.writeable = False
            out[name] = arr
        return out

    def counters(self):
        """Scalar state (free-list bookkeeping and events), for hashing and vmstat."""
        return {
            "nr_free_pages": self.nr_free_pages,
            "pgalloc": self.pgalloc,
            "pgfree": self.pgfree,
            "alloc_fallbacks": self.alloc_fallbacks,
            "pageblocks_claimed": self.pageblocks_claimed,
            "watermark_boost": self.watermark_boost,
        }

    def free_list(self, int mt, int order):
        """The pfns on one free list, head first (for tests and debugging)."""
        if not 0 <= mt < MIGRATE_TYPES or not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError("bad migratetype or order")
        out = []
        cdef uint32_t p = self.free_head[mt][order]
        while p != PFN_NONE and len(out) <= self.nr_pages:
            out.append(p)
            p = self.content[p]
        return out

    @property
    def nbytes(self):
        """Bytes of RAM held by the frame table and pageblock array."""
        return (self.nr_pages * (1 + 1 + 2 + 4 + 4)) + self.nr_pageblocks
