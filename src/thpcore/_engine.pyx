# cython: language_level=3
"""thpcore's data plane: the frame table and the zone's buddy allocator (mm/page_alloc.c).

The Python wrappers (def methods) validate every argument before entering nogil code; the
cdef kernels trust their arguments. Semantics follow Linux 6.18 for one zone with no per-cpu
page lists (as after drain_all_pages()), no CMA and no memory hotplug.
"""

import numpy as np

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from libc.stdlib cimport free, malloc, qsort, realloc

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

cdef int cmp_u32(const void* a, const void* b) noexcept nogil:
    cdef uint32_t x = (<const uint32_t*>a)[0], y = (<const uint32_t*>b)[0]
    return (x > y) - (x < y)


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
        self.lazyfree = np.zeros((nr_pages + 7) // 8, dtype=np.uint8)
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
        self.memcg_pages = np.zeros(1 << 16, dtype=np.int64)
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

    cdef bint test_lazyfree(self, uint32_t pfn) noexcept nogil:
        return (self.lazyfree[pfn >> 3] >> (pfn & 7)) & 1

    cdef void set_lazyfree(self, uint32_t pfn, bint on) noexcept nogil:
        # Store only on a change: a bitmap no MADV_FREE ever touched stays zero-page backed
        # (no resident memory: 32 MiB at 1 TiB).
        cdef uint8_t bit = <uint8_t>(1 << (pfn & 7)), old = self.lazyfree[pfn >> 3]
        if on and not (old & bit):
            self.lazyfree[pfn >> 3] = old | bit
        elif not on and (old & bit):
            self.lazyfree[pfn >> 3] = old & <uint8_t>~bit

    cdef void prep_new_page(self, uint32_t pfn, int order, uint8_t page_flags) noexcept nogil:
        cdef int64_t n = <int64_t>1 << order, i
        if order < 3:
            for i in range(n):
                self.set_lazyfree(<uint32_t>(pfn + i), False)
        else:
            for i in range(pfn >> 3, (pfn + n) >> 3):
                if self.lazyfree[i]:
                    self.lazyfree[i] = 0
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
        cdef int64_t n = <int64_t>1 << order, i
        if self.flags[pfn] & PG_lru:                 # uncharge user frames from their memcg
            self.memcg_pages[self.memcg[pfn]] -= n   # a user block is charged to one memcg
        if order == 0:
            self.flags[pfn] = 0
        else:
            memset(&self.flags[pfn], 0, n)
        self.pgfree += n
        self.split_large_buddy(pfn, order, False)

    cdef void free_order0_runs(self, uint32_t* pfns, int n) noexcept nogil:
        """Free n allocated order-0 blocks. Sorted, aligned runs of 2^k consecutive pages are
        freed as one order-k block: the free lists end in the same state as freeing the pages
        one by one in any order (the merges inside a run leave nothing behind), far cheaper."""
        cdef int i = 0, k, j
        cdef uint32_t p
        for j in range(1, n):                 # pages faulted in order arrive sorted already
            if pfns[j] < pfns[j - 1]:
                qsort(pfns, n, sizeof(uint32_t), cmp_u32)
                break
        while i < n:
            p = pfns[i]
            k = 0
            while k < PAGEBLOCK_ORDER:
                if (p & ((<uint32_t>2 << k) - 1)) or i + (2 << k) > n:
                    break
                if pfns[i + (2 << k) - 1] != p + (<uint32_t>2 << k) - 1:
                    break
                k += 1
            if k and (self.flags[p] & PG_lru):
                # The run's pages may belong to different memcgs: uncharge each one, and
                # let free_pages() uncharge the head's memcg for the block as a whole.
                for j in range(1 << k):
                    self.memcg_pages[self.memcg[p + j]] -= 1
                self.memcg_pages[self.memcg[p]] += 1 << k
            self.free_pages(p, k)
            i += 1 << k

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

    def free_runs(self, pfns):
        """Free order-0 blocks (validated first) through free_order0_runs."""
        arr = np.array(pfns, dtype=np.uint32)
        if arr.ndim != 1 or arr.size > 512:
            raise ValueError("at most 512 pfns, one-dimensional")
        if np.unique(arr).size != arr.size:
            raise ValueError("the same block twice (double free)")
        cdef int i
        for i in range(arr.size):
            self._check_freeable(arr[i], 0, 0)
        cdef uint32_t[::1] v = arr
        if arr.size:
            with nogil:
                self.free_order0_runs(&v[0], v.shape[0])

    def check(self):
        """Return 0 when every invariant holds, else a CHECK_* code (see CHECK_MESSAGES)."""
        cdef int rc
        with nogil:
            rc = self.check_invariants()
        return rc

    def watermark_ok(self, int order, int64_t mark):
        """__zone_watermark_ok() for an order and a mark in pages (no reserves)."""
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError("bad order")
        return bool(self.zone_watermark_ok(order, mark))

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

    def lazyfree_bits(self):
        """Read-only view of the lazyfree bitmap (bit pfn of byte pfn >> 3, little-endian)."""
        arr = np.asarray(self.lazyfree).view()
        arr.flags.writeable = False
        return arr

    def lazyfree_mask(self, pfns):
        """bool per pfn: is the page lazyfree (MADV_FREE, not yet found re-dirtied)?"""
        p = np.asarray(pfns, dtype=np.int64)
        if p.size and (p.min() < 0 or p.max() >= self.nr_pages):
            raise ValueError("pfn outside the zone")
        bits = np.asarray(self.lazyfree)
        return ((bits[p >> 3] >> (p & 7).astype(np.uint8)) & 1).astype(bool)

    def set_lazyfree_range(self, int64_t pfn, int64_t n, bint on):
        """Mark (or clear) frames pfn..pfn+n-1 lazyfree: a whole folio at a time."""
        if n < 0 or pfn < 0 or pfn > self.nr_pages or n > self.nr_pages - pfn:
            raise ValueError("frame range outside the zone")
        cdef int64_t i
        for i in range(pfn, pfn + n):
            self.set_lazyfree(<uint32_t>i, on)

    def save_state(self):
        """A copy of the whole zone (frame table, free lists, counters, watermarks), for
        restore_state() on a zone of the same size: a fragmented boot state built once."""
        cdef int mt, o
        return {
            "nr_pages": self.nr_pages,
            "arrays": {name: np.asarray(view).copy() for name, view in (
                ("flags", self.flags), ("order", self.order), ("memcg", self.memcg),
                ("mapcount", self.mapcount), ("content", self.content),
                ("lazyfree", self.lazyfree), ("pageblock_mt", self.pageblock_mt),
                ("memcg_pages", self.memcg_pages))},
            "free_head": [[self.free_head[mt][o] for o in range(NR_PAGE_ORDERS)] for mt in range(MIGRATE_TYPES)],
            "free_tail": [[self.free_tail[mt][o] for o in range(NR_PAGE_ORDERS)] for mt in range(MIGRATE_TYPES)],
            "nr_free": [[self.nr_free[mt][o] for o in range(NR_PAGE_ORDERS)] for mt in range(MIGRATE_TYPES)],
            "area_nr_free": [self.area_nr_free[o] for o in range(NR_PAGE_ORDERS)],
            "nr_pageblocks_of": [self.nr_pageblocks_of[mt] for mt in range(MIGRATE_TYPES)],
            "watermark": [self.watermark[o] for o in range(NR_WMARK)],
            "scalars": (self.nr_free_pages, self.watermark_boost, self.watermark_boost_factor,
                        self.nr_reserved_highatomic, self.pgalloc, self.pgfree,
                        self.alloc_fallbacks, self.pageblocks_claimed),
        }

    def restore_state(self, state, bint verify=True):
        """Make this zone exactly the one save_state() copied (same size required). Every
        free-list link is range-checked first and, with verify, the invariants after (a state
        that fails leaves the zone as it was: ValueError). verify=False is for a state this
        process just saved itself: it skips the backup copy and the full check."""
        if state["nr_pages"] != self.nr_pages:
            raise ValueError(f"a state of {state['nr_pages']} pages cannot restore a zone of "
                             f"{self.nr_pages}")
        cdef int mt, o
        for key in ("free_head", "free_tail"):
            for mt in range(MIGRATE_TYPES):
                for o in range(NR_PAGE_ORDERS):
                    v = state[key][mt][o]
                    if v != 0xFFFFFFFF and not 0 <= v < self.nr_pages:   # PFN_NONE
                        raise ValueError(f"state {key}[{mt}][{o}] = {v} is outside the zone")
        if not verify:
            self._assign_state(state)
            return
        backup = self.save_state()
        self._assign_state(state)
        if self.check_invariants():
            self._assign_state(backup)
            raise ValueError("the state is not a consistent zone: nothing was restored")

    def _assign_state(self, state):
        cdef int mt, o
        arrays = state["arrays"]
        for name, view in (("flags", self.flags), ("order", self.order), ("memcg", self.memcg),
                           ("mapcount", self.mapcount), ("content", self.content),
                           ("lazyfree", self.lazyfree), ("pageblock_mt", self.pageblock_mt),
                           ("memcg_pages", self.memcg_pages)):
            dst = np.asarray(view)
            if arrays[name].shape != dst.shape or arrays[name].dtype != dst.dtype:
                raise ValueError(f"state array {name} does not fit this zone")
            dst[:] = arrays[name]
        for mt in range(MIGRATE_TYPES):
            for o in range(NR_PAGE_ORDERS):
                self.free_head[mt][o] = state["free_head"][mt][o]
                self.free_tail[mt][o] = state["free_tail"][mt][o]
                self.nr_free[mt][o] = state["nr_free"][mt][o]
            self.nr_pageblocks_of[mt] = state["nr_pageblocks_of"][mt]
        for o in range(NR_PAGE_ORDERS):
            self.area_nr_free[o] = state["area_nr_free"][o]
        for o in range(NR_WMARK):
            self.watermark[o] = state["watermark"][o]
        (self.nr_free_pages, self.watermark_boost, self.watermark_boost_factor,
         self.nr_reserved_highatomic, self.pgalloc, self.pgfree, self.alloc_fallbacks,
         self.pageblocks_claimed) = state["scalars"]

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

    def memcg_usage(self):
        """User frames charged to each memcg id (a read-only view)."""
        arr = np.asarray(self.memcg_pages).view()
        arr.flags.writeable = False
        return arr

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
        return (self.nr_pages * (1 + 1 + 2 + 4 + 4)) + self.lazyfree.shape[0] + self.nr_pageblocks


# ================================================================================================
# Page tables, faults and the swap device (mm/memory.c, mm/swapfile.c)

cdef inline uint32_t mix_content(int64_t vpn, uint32_t seed) noexcept nogil:
    """A non-zero content word for page vpn of a write generation (splitmix64 finaliser)."""
    cdef uint64_t x = <uint64_t>vpn * <uint64_t>0x9E3779B97F4A7C15 + seed
    x ^= x >> 30
    x *= <uint64_t>0xBF58476D1CE4E5B9
    x ^= x >> 27
    cdef uint32_t r = <uint32_t>(x ^ (x >> 32))
    return r if r else 1


cdef inline int64_t pmd_head(uint64_t entry) noexcept nogil:
    """The THP head pfn a huge PMD entry maps."""
    return <int64_t>(((entry >> PMD_PFN_SHIFT) & 0x7FFFFFF) << PAGEBLOCK_ORDER)


cdef inline int pmd_region(int64_t vpn, int64_t vpn_end, int64_t* rvpn, int* i0,
                           int* i1) noexcept nogil:
    """For a range walk at vpn: the region's first page, the PTE span [i0, i1) of
    [vpn, vpn_end) inside it, and (returned) the region's index in its GiB's PMD array."""
    rvpn[0] = vpn & ~(<int64_t>PTRS_PER_PTE - 1)
    i0[0] = <int>(vpn - rvpn[0])
    i1[0] = <int>min(vpn_end - rvpn[0], <int64_t>PTRS_PER_PTE)
    return <int>((vpn >> 9) & (PTRS_PER_PMD - 1))


cdef int check_value_mode(int value_mode) except -1:
    if value_mode not in (VALUE_CONSTANT, VALUE_GENERATED, VALUE_KEEP):
        raise ValueError(f"value_mode must be VALUE_CONSTANT, VALUE_GENERATED or VALUE_KEEP, "
                         f"not {value_mode}")
    return 0


cdef inline uint32_t page_value(int value_mode, uint32_t value, int64_t vpn) noexcept nogil:
    return value if value_mode == VALUE_CONSTANT else mix_content(vpn, value)


PY_PG_PGTABLE = PG_pgtable
PY_PMD_KIND_TABLE = PMD_KIND_TABLE
PY_PMD_KIND_HUGE = PMD_KIND_HUGE
PY_PMD_KIND_HUGE_ZERO = PMD_KIND_HUGE_ZERO
PY_FAULT_SLOW = FAULT_SLOW
PY_FAULT_BAD_PMD = FAULT_BAD_PMD
PY_PTE_PRESENT = PTE_PRESENT
PY_PTE_YOUNG = PTE_YOUNG
PY_PTE_DIRTY = PTE_DIRTY
PY_PTE_WRITE = PTE_WRITE
PY_PTE_KIND_SWAP = PTE_KIND_SWAP
PY_PTE_KIND_ZERO = PTE_KIND_ZERO
PY_PTE_GUARD = PTE_GUARD
PY_FAULT_SIGSEGV = FAULT_SIGSEGV
PY_FAULT_MTHP = FAULT_MTHP
PY_MTHP_MIN_ORDER = MTHP_MIN_ORDER
PY_VALUE_CONSTANT = VALUE_CONSTANT
PY_VALUE_GENERATED = VALUE_GENERATED
PY_VALUE_KEEP = VALUE_KEEP
SCAN_RESULTS = ["SCAN_FAIL", "SCAN_SUCCEED", "SCAN_PMD_NULL", "SCAN_PMD_NONE", "SCAN_PMD_MAPPED",
                "SCAN_EXCEED_NONE_PTE", "SCAN_EXCEED_SWAP_PTE", "SCAN_EXCEED_SHARED_PTE",
                "SCAN_PTE_NON_PRESENT", "SCAN_PTE_UFFD_WP", "SCAN_PTE_MAPPED_HUGEPAGE",
                "SCAN_PAGE_RO", "SCAN_LACK_REFERENCED_PAGE", "SCAN_PAGE_NULL", "SCAN_SCAN_ABORT",
                "SCAN_PAGE_COUNT", "SCAN_PAGE_LRU", "SCAN_PAGE_LOCK", "SCAN_PAGE_ANON",
                "SCAN_PAGE_COMPOUND", "SCAN_ANY_PROCESS", "SCAN_VMA_NULL", "SCAN_VMA_CHECK",
                "SCAN_ADDRESS_RANGE", "SCAN_DEL_PAGE_LRU", "SCAN_ALLOC_HUGE_PAGE_FAIL",
                "SCAN_CGROUP_CHARGE_FAIL", "SCAN_TRUNCATED", "SCAN_PAGE_HAS_PRIVATE",
                "SCAN_STORE_FAILED", "SCAN_COPY_MC", "SCAN_PAGE_FILLED"]


cdef int64_t _rmap_window = RMAP_WINDOW


def set_rmap_window(int64_t frames):
    """Frames per compaction reverse-map window (a multiple of a pageblock); returns the old
    value. Results do not depend on it: tests shrink it to cover window changes."""
    global _rmap_window
    if frames < PAGEBLOCK_NR_PAGES or frames % PAGEBLOCK_NR_PAGES:
        raise ValueError("the window must be a positive multiple of 512 frames")
    old = _rmap_window
    _rmap_window = frames
    return old


cdef uint32_t* out_pointer(object out, int64_t n) except? NULL:
    """The first element of a caller's uint32 `out` array of at least n entries (NULL when
    out is None or n is 0); the caller keeps `out` alive across the nogil call."""
    cdef uint32_t[::1] outv
    if out is None:
        return NULL
    outv = out
    if outv.shape[0] < n:
        raise ValueError("out is too short")
    return &outv[0] if n > 0 else NULL


cdef class PageTables:

    def __cinit__(self, Zone zone, int64_t swap_slots):
        if swap_slots < 0 or swap_slots >= (1 << 28):
            raise ValueError("swap device must hold fewer than 2**28 pages")
        self.zone = zone
        self.capacity = 0
        self.nr_tables = 0
        self.nr_free_ids = 0
        self.ptes = np.zeros(0, dtype=np.uint32)
        self.table_pfn = np.zeros(0, dtype=np.uint32)
        self.free_ids = np.zeros(0, dtype=np.uint32)
        self.swap_slots = swap_slots
        self.swap_used = 0
        self.swap_cursor = 0
        self.swap_map = np.zeros(swap_slots, dtype=np.uint8)
        self.swap_content = np.zeros(swap_slots, dtype=np.uint32)
        if swap_slots:
            self.swap_map[0] = 0xFF         # slot 0 holds the swap header (SWAP_MAP_BAD)
        self.nr_partial_heads = 0
        self.charge_budget = -1
        self.mthp_orders = 0
        self.mthp_vma_start = 0
        self.mthp_vma_end = 0
        self.mthp_alloc_flags = ALLOC_WMARK_LOW | ALLOC_NOFRAGMENT
        self.pb_skip = np.zeros(zone.nr_pageblocks, dtype=np.uint8)
        self.cached_migrate_pfn = 0
        self.cached_free_pfn = zone.nr_pages - PAGEBLOCK_NR_PAGES
        self.reserve(64)

    def reserve(self, int64_t n):
        """Make sure n more tables can be taken without growing the pool (call before nogil work)."""
        if n <= self.nr_free_ids:
            return
        cdef int64_t old = self.capacity, new = max(old * 2, old + n - self.nr_free_ids, 64)
        cdef int64_t i
        ptes = np.zeros(new * PTRS_PER_PTE, dtype=np.uint32)
        # Copy only the chunks that hold an entry: a table never written (the one deposited
        # with each THP) stays untouched, zero-filled on demand, so it costs no resident RAM.
        src = np.asarray(self.ptes)
        cdef int64_t chunk = 1 << 16, lo, hi, used = old * PTRS_PER_PTE
        for lo in range(0, used, chunk):
            hi = min(lo + chunk, used)
            if src[lo:hi].any():
                ptes[lo:hi] = src[lo:hi]
        table_pfn = np.full(new, 0xFFFFFFFF, dtype=np.uint32)
        table_pfn[:old] = np.asarray(self.table_pfn)
        free_ids = np.zeros(new, dtype=np.uint32)
        free_ids[:self.nr_free_ids] = np.asarray(self.free_ids)[:self.nr_free_ids]
        self.ptes, self.table_pfn, self.free_ids = ptes, table_pfn, free_ids
        for i in range(new - 1, old - 1, -1):       # lowest id on top of the stack
            self.free_ids[self.nr_free_ids] = <uint32_t>i
            self.nr_free_ids += 1
        self.capacity = new

    cdef int64_t table_alloc(self) noexcept nogil:
        """pte_alloc(): a zeroed, unmovable page-table page; -1 if no id reserved or no memory."""
        cdef int64_t pfn, tid, i
        if self.nr_free_ids == 0:
            return -1
        pfn = self.zone.get_page_from_freelist(
            0, MIGRATE_UNMOVABLE, ALLOC_WMARK_LOW | ALLOC_NOFRAGMENT | ALLOC_KSWAPD)
        if pfn < 0:
            pfn = self.zone.get_page_from_freelist(
                0, MIGRATE_UNMOVABLE, ALLOC_WMARK_MIN | ALLOC_NOFRAGMENT | ALLOC_KSWAPD)
        if pfn < 0:
            return -1
        self.zone.prep_new_page(<uint32_t>pfn, 0, PG_kernel | PG_pgtable)
        self.nr_free_ids -= 1
        tid = self.free_ids[self.nr_free_ids]
        self.table_pfn[tid] = <uint32_t>pfn
        # Zero it only if it is not already (reading an untouched slot costs no resident RAM).
        for i in range(PTRS_PER_PTE):
            if self.ptes[tid * PTRS_PER_PTE + i]:
                memset(&self.ptes[tid * PTRS_PER_PTE], 0, PTRS_PER_PTE * sizeof(uint32_t))
                break
        self.nr_tables += 1
        return tid

    cdef void table_free(self, int64_t tid) noexcept nogil:
        self.zone.free_pages(self.table_pfn[tid], 0)
        self.table_pfn[tid] = PFN_NONE
        self.free_ids[self.nr_free_ids] = <uint32_t>tid
        self.nr_free_ids += 1
        self.nr_tables -= 1

    cdef int64_t alloc_user_page(self, uint32_t content, uint16_t memcg) noexcept nogil:
        """An order-0 anonymous page (GFP_HIGHUSER_MOVABLE), mapped once, holding content,
        charged to memcg; -1 without memory, -2 when the charge budget is spent."""
        if self.charge_budget == 0:
            return -2
        cdef int64_t pfn = self.zone.get_page_from_freelist(
            0, MIGRATE_MOVABLE, ALLOC_WMARK_LOW | ALLOC_NOFRAGMENT | ALLOC_KSWAPD)
        if pfn < 0:
            pfn = self.zone.get_page_from_freelist(
                0, MIGRATE_MOVABLE, ALLOC_WMARK_MIN | ALLOC_NOFRAGMENT | ALLOC_KSWAPD)
        if pfn < 0:
            return -1
        self.zone.prep_new_page(<uint32_t>pfn, 0, PG_lru)
        self.zone.content[pfn] = content
        self.zone.mapcount[pfn] = 1
        self.zone.memcg[pfn] = memcg
        self.zone.memcg_pages[memcg] += 1
        if self.charge_budget > 0:
            self.charge_budget -= 1
        return pfn

    cdef int64_t folio_head(self, uint32_t pfn) noexcept nogil:
        """The head of the allocated block holding pfn (blocks are naturally aligned, so the
        smallest aligned-down frame that heads a block of at least that order is it); -1 if
        pfn is not in an allocated block."""
        cdef uint32_t h
        cdef int k
        if not (self.zone.flags[pfn] & PG_tail):
            return pfn if (self.zone.flags[pfn] & PG_head) else -1
        for k in range(1, MAX_PAGE_ORDER + 1):
            h = pfn & ~((<uint32_t>1 << k) - 1)
            if (self.zone.flags[h] & PG_head) and self.zone.order[h] >= k:
                return h
        return -1

    cdef void note_folio_unmapped(self, uint32_t pfn) noexcept nogil:
        """After a subpage of a large folio lost its last mapping: free the folio if nothing
        of it is mapped any more, else remember it as partially mapped (deferred split)."""
        cdef uint32_t head = <uint32_t>self.folio_head(pfn)
        cdef int order = self.zone.order[head]
        cdef int64_t i, nr = <int64_t>1 << order
        cdef int j
        for i in range(nr):
            if self.zone.mapcount[head + i]:
                for j in range(self.nr_partial_heads):
                    if self.partial_head_pfns[j] == head:
                        return
                if self.nr_partial_heads < 512:
                    self.partial_head_pfns[self.nr_partial_heads] = head
                    self.nr_partial_heads += 1
                return
        for j in range(self.nr_partial_heads):
            if self.partial_head_pfns[j] == head:
                self.nr_partial_heads -= 1
                self.partial_head_pfns[j] = self.partial_head_pfns[self.nr_partial_heads]
                break
        self.zone.free_pages(head, order)
        self.stats.pages_freed += nr

    cdef void set_folio_ptes(self, int64_t base, int idx, uint32_t head, int order,
                             uint16_t memcg) noexcept nogil:
        """Map a new folio (zeroed by prep_new_page, charged by its allocator) at PTEs idx..
        of a table (set_ptes: young, dirty, writable), and count the fault."""
        cdef int64_t m, nr = <int64_t>1 << order
        for m in range(nr):
            self.zone.mapcount[head + m] = 1
            self.zone.memcg[head + m] = memcg
            self.ptes[base + idx + m] = ((<uint32_t>(head + m) << PTE_PFN_SHIFT) | PTE_PRESENT
                                         | PTE_YOUNG | PTE_DIRTY | PTE_WRITE)
        self.stats.anon_allocated += nr
        self.stats.mthp_folios += 1
        self.stats.mthp_pages += nr
        self.stats.mthp_alloc[order] += 1

    cdef int do_anonymous_mthp(self, int64_t base, int i, int64_t vpn, uint16_t memcg) noexcept nogil:
        """alloc_anon_folio() for a write fault on the none PTE i: the highest allowed order
        whose aligned range lies in the VMA and is all pte_none, then the fast allocation of
        it. Returns the order mapped (> 0), 0 for an order-0 page, or -1 when the slow path
        (or a memcg charge that needs reclaim) must decide: stats.mthp_order says which order."""
        cdef int k, idx, m
        cdef int64_t nr, a, pfn
        cdef bint none
        k = 8
        while k >= MTHP_MIN_ORDER:
            if self.mthp_orders & (1 << k):
                nr = <int64_t>1 << k
                a = vpn & ~(nr - 1)
                if a >= self.mthp_vma_start and a + nr <= self.mthp_vma_end:
                    idx = i & ~(<int>nr - 1)
                    none = True
                    for m in range(<int>nr):
                        if self.ptes[base + idx + m] != 0:
                            none = False
                            break
                    if none:
                        break
            k -= 1
        if k < MTHP_MIN_ORDER:
            return 0
        # Lower orders lie inside this range: suitable and pte_none too. The fast path takes
        # the highest; anything else (no free block, or a charge beyond the budget) goes to
        # the kernel-model layer, which runs the slow path and the lower orders.
        nr = <int64_t>1 << k
        if self.charge_budget >= 0 and self.charge_budget < nr:
            self.stats.mthp_order = k
            return -1
        pfn = self.zone.alloc_one(k, MIGRATE_MOVABLE, self.mthp_alloc_flags, PG_lru)
        if pfn < 0:
            self.stats.mthp_order = k
            return -1
        self.zone.memcg_pages[memcg] += nr
        if self.charge_budget > 0:
            self.charge_budget -= nr
        self.set_folio_ptes(base, i & ~(<int>nr - 1), <uint32_t>pfn, k, memcg)
        return k

    cdef void put_user_frame(self, uint32_t pfn) noexcept nogil:
        """Drop one mapping of a user frame; free what is no longer mapped."""
        cdef uint8_t f
        self.zone.mapcount[pfn] -= 1
        if self.zone.mapcount[pfn]:
            return
        f = self.zone.flags[pfn]
        if (f & PG_head) and self.zone.order[pfn] == 0:
            self.zone.free_pages(pfn, 0)
            self.stats.pages_freed += 1
        else:
            self.note_folio_unmapped(pfn)

    cdef void free_order0_batch(self, uint32_t* pfns, int n) noexcept nogil:
        self.zone.free_order0_runs(pfns, n)
        self.stats.pages_freed += n

    cdef int fault_pte_range(self, int64_t tid, int i0, int i1, bint write, bint vma_write,
                             int64_t vpn0, int value_mode, uint32_t value, uint32_t* out,
                             uint16_t memcg) noexcept nogil:
        """handle_pte_fault() for PTEs i0..i1-1 of one table (the VMA already allows the access)."""
        cdef int64_t base = tid * PTRS_PER_PTE, vpn, pfn, newpfn
        cdef uint32_t pte, slot, word
        cdef int i
        for i in range(i0, i1):
            pte = self.ptes[base + i]
            vpn = vpn0 + (i - i0)
            if pte == PTE_GUARD:
                self.stats.stopped_at = i
                return FAULT_SIGSEGV
            if pte == 0 and write and self.mthp_orders:
                if self.do_anonymous_mthp(base, i, vpn, memcg) < 0:
                    self.stats.stopped_at = i
                    return FAULT_MTHP
                pte = self.ptes[base + i]       # a new folio maps it now: the write stores below
            if pte & PTE_PRESENT:
                pfn = pte >> PTE_PFN_SHIFT
                if write:
                    if not (pte & PTE_WRITE):
                        if self.zone.mapcount[pfn] == 1:
                            self.stats.reused += 1          # wp_page_reuse()
                        else:                               # wp_page_copy()
                            newpfn = self.alloc_user_page(self.zone.content[pfn], memcg)
                            if newpfn < 0:
                                self.stats.stopped_at = i
                                return FAULT_OOM if newpfn == -1 else FAULT_CHARGE
                            self.put_user_frame(<uint32_t>pfn)
                            pfn = newpfn
                            self.stats.cow_copied += 1
                    if value_mode != VALUE_KEEP:
                        self.zone.content[pfn] = page_value(value_mode, value, vpn)
                    pte = (<uint32_t>pfn << PTE_PFN_SHIFT) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_WRITE
                else:
                    pte |= PTE_YOUNG
                    if out != NULL:
                        out[i - i0] = self.zone.content[pfn]
            elif (pte & 0xF) == PTE_KIND_SWAP:
                # do_swap_page(). There is no swap cache: every swap-in reads the slot into a
                # page of its own, so the page is exclusive and mapped writable straight away.
                slot = pte >> PTE_PFN_SHIFT
                word = self.swap_content[slot]
                if write and value_mode != VALUE_KEEP:
                    word = page_value(value_mode, value, vpn)
                pfn = self.alloc_user_page(word, memcg)
                if pfn < 0:
                    self.stats.stopped_at = i
                    return FAULT_OOM if pfn == -1 else FAULT_CHARGE
                self.stats.swapped_in += 1
                self.stats.anon_allocated += 1
                self.swap_map[slot] -= 1
                if self.swap_map[slot] == 0:
                    self.swap_used -= 1
                    self.stats.swap_freed += 1
                pte = (<uint32_t>pfn << PTE_PFN_SHIFT) | PTE_PRESENT | PTE_YOUNG
                if vma_write:
                    pte |= PTE_WRITE
                if write:
                    pte |= PTE_DIRTY
                elif out != NULL:
                    out[i - i0] = word
            else:                                           # none or the zero page
                if write:
                    newpfn = self.alloc_user_page(
                        0 if value_mode == VALUE_KEEP else page_value(value_mode, value, vpn), memcg)
                    if newpfn < 0:
                        self.stats.stopped_at = i
                        return FAULT_OOM if newpfn == -1 else FAULT_CHARGE
                    if pte != 0:
                        self.stats.zero_mapped -= 1
                    self.stats.anon_allocated += 1
                    pte = (<uint32_t>newpfn << PTE_PFN_SHIFT) | PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | PTE_WRITE
                else:
                    if pte == 0:
                        self.stats.zero_mapped += 1
                    pte = PTE_KIND_ZERO
                    if out != NULL:
                        out[i - i0] = 0
            self.ptes[base + i] = pte
        return FAULT_OK

    cdef void zap_pte_range(self, int64_t tid, int i0, int i1, bint keep_guards) noexcept nogil:
        """zap_pte_range(): clear PTEs i0..i1-1, dropping pages and swap slots; guard markers
        stay when keep_guards (MADV_DONTNEED), go otherwise (munmap, exit)."""
        cdef int64_t base = tid * PTRS_PER_PTE
        cdef uint32_t pte, slot
        cdef int i
        for i in range(i0, i1):
            pte = self.ptes[base + i]
            if pte == 0 or (pte == PTE_GUARD and keep_guards):
                continue
            if pte == PTE_GUARD:
                self.ptes[base + i] = 0
                continue
            self.ptes[base + i] = 0
            if pte & PTE_PRESENT:
                self.stats.rss_removed += 1
                self.put_user_frame(pte >> PTE_PFN_SHIFT)
            elif (pte & 0xF) == PTE_KIND_SWAP:
                slot = pte >> PTE_PFN_SHIFT
                self.stats.swap_ptes_zapped += 1
                self.swap_map[slot] -= 1
                if self.swap_map[slot] == 0:
                    self.swap_used -= 1
                    self.stats.swap_freed += 1
            else:
                self.stats.zero_mapped -= 1

    cdef int64_t swap_alloc_slot(self) noexcept nogil:
        """One free slot, searching on from the cursor (wrapping); -1 when the device is full."""
        cdef int64_t n = self.swap_slots, k, slot
        for k in range(n):
            slot = (self.swap_cursor + k) % n
            if self.swap_map[slot] == 0:
                self.swap_cursor = slot + 1
                return slot
        return -1

    cdef int64_t swap_alloc_cluster(self) noexcept nogil:
        """A whole free, aligned cluster of 512 slots (a THP swaps out whole); -1 if none."""
        cdef int64_t c = 0, i
        cdef bint free
        while c + PTRS_PER_PTE <= self.swap_slots:
            free = True
            for i in range(PTRS_PER_PTE):
                if self.swap_map[c + i]:
                    free = False
                    break
            if free:
                return c
            c += PTRS_PER_PTE
        return -1

    cdef int64_t reclaim_pte_range(self, int64_t tid, int i0, int i1, int64_t want, uint16_t memcg,
                                   bint any_memcg, bint can_swap) noexcept nogil:
        """A second-chance pass: young pages lose the bit; old exclusive order-0 pages are
        discarded if lazyfree and clean, else swapped out (only with can_swap: without swap
        the anon LRU is not scanned, lazyfree pages sit on the file LRU and still are)."""
        cdef int64_t base = tid * PTRS_PER_PTE, got = 0, head
        cdef uint32_t pte, pfn
        cdef int i, rc
        cdef bint lazy
        if i0 == 0 and i1 == PTRS_PER_PTE:
            head = self.whole_lazyfree_folio(base)
            if head >= 0 and (any_memcg or self.zone.memcg[head] == memcg):
                return self.reclaim_lazyfree_folio(base, <uint32_t>head, True)
        for i in range(i0, i1):
            if got >= want:
                break
            pte = self.ptes[base + i]
            if not (pte & PTE_PRESENT):
                continue
            pfn = pte >> PTE_PFN_SHIFT
            if not any_memcg and self.zone.memcg[pfn] != memcg:
                continue
            lazy = self.zone.test_lazyfree(pfn)
            if not lazy and not can_swap:
                continue
            if pte & PTE_YOUNG:
                self.ptes[base + i] = pte & ~(<uint32_t>PTE_YOUNG)
                self.stats.young_cleared += 1
                continue
            if not self.swappable(pfn):
                continue
            if lazy:
                got += self.reclaim_lazyfree_pte(base + i, pte)
                continue
            if not self.swap_out_pte(base + i, pfn):
                break
            got += 1
        return got

    cdef int64_t whole_lazyfree_folio(self, int64_t base) noexcept nogil:
        """The head of a lazyfree THP this table maps whole, PTE by PTE in order and only here
        (a split PMD), else -1: reclaim handles such a folio as one (batched lazyfree unmap)."""
        cdef uint32_t pte = self.ptes[base], head
        cdef int j
        if not (pte & PTE_PRESENT):
            return -1
        head = pte >> PTE_PFN_SHIFT
        if (head & (PTRS_PER_PTE - 1)) or not (self.zone.flags[head] & PG_head) \
                or self.zone.order[head] != PAGEBLOCK_ORDER or not self.zone.test_lazyfree(head):
            return -1
        for j in range(PTRS_PER_PTE):
            pte = self.ptes[base + j]
            if not (pte & PTE_PRESENT) or (pte >> PTE_PFN_SHIFT) != head + <uint32_t>j \
                    or self.zone.mapcount[head + j] != 1:
                return -1
        return head

    cdef int64_t reclaim_lazyfree_folio(self, int64_t base, uint32_t head,
                                        bint check_young) noexcept nogil:
        """try_to_unmap() of a PTE-mapped lazyfree THP: referenced (check_young) -> its
        accessed bits go (second chance); written since MADV_FREE -> swap-backed again, kept;
        clean -> all 512 pages discarded. Returns the pages freed."""
        cdef int j
        cdef bint young = False, dirty = False
        for j in range(PTRS_PER_PTE):
            young |= (self.ptes[base + j] & PTE_YOUNG) != 0
            dirty |= (self.ptes[base + j] & PTE_DIRTY) != 0
        if check_young and young:
            for j in range(PTRS_PER_PTE):
                if self.ptes[base + j] & PTE_YOUNG:
                    self.ptes[base + j] &= ~(<uint32_t>PTE_YOUNG)
                    self.stats.young_cleared += 1
            return 0
        if dirty:
            for j in range(PTRS_PER_PTE):
                self.zone.set_lazyfree(head + j, False)
            return 0
        for j in range(PTRS_PER_PTE):
            self.ptes[base + j] = 0
            self.stats.rss_removed += 1
            self.stats.lazyfreed += 1
            self.put_user_frame(head + j)
        return PTRS_PER_PTE

    cdef int reclaim_lazyfree_pte(self, int64_t idx, uint32_t pte) noexcept nogil:
        """try_to_unmap_one() of a lazyfree page: discarded if clean (1), made swap-backed
        again and kept if written since MADV_FREE (0)."""
        cdef uint32_t pfn = pte >> PTE_PFN_SHIFT
        if pte & PTE_DIRTY:
            self.zone.set_lazyfree(pfn, False)
            return 0
        self.ptes[idx] = 0
        self.stats.rss_removed += 1
        self.stats.lazyfreed += 1
        self.put_user_frame(pfn)
        return 1

    cdef void madvise_free_pte_range(self, int64_t tid, int i0, int i1) noexcept nogil:
        """madvise_free_pte_range(): swap entries are dropped; exclusively mapped pages become
        old, clean and lazyfree (large folios the range only partly covers were split first)."""
        cdef int64_t base = tid * PTRS_PER_PTE
        cdef uint32_t pte, pfn, slot
        cdef int i
        for i in range(i0, i1):
            pte = self.ptes[base + i]
            if (pte & 0xF) == PTE_KIND_SWAP:
                slot = pte >> PTE_PFN_SHIFT
                self.ptes[base + i] = 0
                self.stats.swap_ptes_zapped += 1
                self.swap_map[slot] -= 1
                if self.swap_map[slot] == 0:
                    self.swap_used -= 1
                    self.stats.swap_freed += 1
                continue
            if not (pte & PTE_PRESENT):
                continue
            pfn = pte >> PTE_PFN_SHIFT
            if self.zone.mapcount[pfn] != 1:
                continue                        # maybe mapped shared: skipped
            self.ptes[base + i] = pte & ~(<uint32_t>(PTE_YOUNG | PTE_DIRTY))
            if not self.zone.test_lazyfree(pfn):      # lru_lazyfree() skips !swapbacked folios
                self.zone.set_lazyfree(pfn, True)
                self.stats.lazyfree_marked += 1

    cdef bint swappable(self, uint32_t pfn) noexcept nogil:
        """An exclusive order-0 page: what these paths swap out."""
        return (self.zone.mapcount[pfn] == 1 and self.zone.order[pfn] == 0
                and (self.zone.flags[pfn] & PG_head) != 0)

    cdef bint swap_out_pte(self, int64_t idx, uint32_t pfn) noexcept nogil:
        """Move the page PTE slot idx maps to a swap slot (try_to_unmap + swap entry);
        False when the device is full."""
        cdef int64_t slot = self.swap_alloc_slot()
        if slot < 0:
            return False
        self.swap_map[slot] = 1
        self.swap_used += 1
        self.swap_content[slot] = self.zone.content[pfn]
        self.ptes[idx] = (<uint32_t>slot << PTE_PFN_SHIFT) | PTE_KIND_SWAP
        self.stats.swapped_out += 1
        self.stats.rss_removed += 1
        self.put_user_frame(pfn)
        return True

    cdef void pageout_pte_range(self, int64_t tid, int i0, int i1, bint can_swap) noexcept nogil:
        """Reclaim the exclusive order-0 pages mapped by PTEs i0..i1-1: lazyfree ones are
        discarded (or kept if re-dirtied), others go to swap when there is swap."""
        cdef int64_t base = tid * PTRS_PER_PTE, head
        cdef uint32_t pte, pfn
        cdef int i
        if i0 == 0 and i1 == PTRS_PER_PTE:
            head = self.whole_lazyfree_folio(base)
            if head >= 0:
                self.reclaim_lazyfree_folio(base, <uint32_t>head, False)
                return
        for i in range(i0, i1):
            pte = self.ptes[base + i]
            if not (pte & PTE_PRESENT):
                continue
            pfn = pte >> PTE_PFN_SHIFT
            if not self.swappable(pfn):
                continue
            if self.zone.test_lazyfree(pfn):
                self.reclaim_lazyfree_pte(base + i, pte)
            elif can_swap and not self.swap_out_pte(base + i, pfn):
                can_swap = False                # the device is full: lazyfree pages still go

    cdef int scan_pte_table(self, int64_t tid, bint is_khugepaged, int max_none, int max_swap,
                            int max_shared, bint require_writable) noexcept nogil:
        """hpage_collapse_scan_pmd()'s PTE walk; fills self.scan and returns a SCAN_* code.
        Limits apply when is_khugepaged (max_* < 0 disables one)."""
        cdef int64_t base = tid * PTRS_PER_PTE, i, j, head, last_head = -1, total, here, nr
        cdef uint32_t pte, pfn, q
        cdef bint shared, last_shared = False
        memset(&self.scan, 0, sizeof(ScanCounts))
        for i in range(PTRS_PER_PTE):
            pte = self.ptes[base + i]
            if not (pte & PTE_PRESENT):                  # the rare cases first out of the way
                if pte == 0 or (pte & 0xF) == PTE_KIND_ZERO:
                    self.scan.none_or_zero += 1
                    if is_khugepaged and max_none >= 0 and self.scan.none_or_zero > max_none:
                        return SCAN_EXCEED_NONE_PTE
                    continue
                # A swap entry or a guard marker: both are is_swap_pte().
                self.scan.unmapped += 1
                if is_khugepaged and max_swap >= 0 and self.scan.unmapped > max_swap:
                    return SCAN_EXCEED_SWAP_PTE
                continue
            self.scan.present += 1
            if pte & PTE_WRITE:
                self.scan.writable = True
            pfn = pte >> PTE_PFN_SHIFT
            # folio_maybe_mapped_shared(): a small folio mapped more than once; a large one
            # mapped by another mm too (CONFIG_MM_ID, 6.15+): its pages carry more mappings
            # than this table holds (without mremap a folio lies in one table of an mm).
            if self.zone.mapcount[pfn] > 1:
                shared = True
            elif not (self.zone.flags[pfn] & PG_tail) and self.zone.order[pfn] == 0:
                shared = False
            else:
                head = self.folio_head(<uint32_t>pfn)
                if head != last_head:
                    nr = <int64_t>1 << self.zone.order[head]
                    total = 0
                    here = 0
                    for j in range(nr):
                        total += self.zone.mapcount[head + j]
                    for j in range(PTRS_PER_PTE):
                        q = self.ptes[base + j]
                        if (q & PTE_PRESENT) and head <= (q >> PTE_PFN_SHIFT) < head + nr:
                            here += 1
                    last_head = head
                    last_shared = total > here
                shared = last_shared
            if shared:
                self.scan.shared += 1
                if is_khugepaged and max_shared >= 0 and self.scan.shared > max_shared:
                    return SCAN_EXCEED_SHARED_PTE
            if is_khugepaged and (pte & PTE_YOUNG):
                self.scan.referenced += 1
        if require_writable and not self.scan.writable:
            return SCAN_PAGE_RO
        if is_khugepaged and (self.scan.referenced == 0 or
                              (self.scan.unmapped and self.scan.referenced < PTRS_PER_PTE // 2)):
            return SCAN_LACK_REFERENCED_PAGE
        return SCAN_SUCCEED

    # ---- range walks: the fast path of faults and zaps over many regions ----------------

    cdef bint pmd_valid(self, uint64_t entry) noexcept nogil:
        """A table entry names a table in use; a huge entry names a THP head (order 9)."""
        cdef uint64_t kind = entry & PMD_KIND_MASK, tid = entry >> PMD_TABLE_SHIFT
        cdef uint64_t head
        if kind == PMD_KIND_TABLE:
            return tid < <uint64_t>self.capacity and self.table_pfn[tid] != PFN_NONE
        if kind == PMD_KIND_HUGE:
            head = <uint64_t>pmd_head(entry)
            return (head < <uint64_t>self.zone.nr_pages and (self.zone.flags[head] & PG_head) != 0
                    and self.zone.order[head] == PAGEBLOCK_ORDER)
        return kind == PMD_KIND_HUGE_ZERO

    cdef int fault_pmd_range(self, uint64_t* pmds, int64_t vpn, int64_t vpn_end, bint write,
                             bint vma_write, int value_mode, uint32_t value, uint32_t* out,
                             uint16_t memcg) noexcept nogil:
        """Touch pages vpn..vpn_end-1 (one GiB's PMD array `pmds`) where no kernel-model
        decision is needed: PTE tables (handle_pte_fault) and huge PMDs that are readable /
        writable as they are. Stops with FAULT_SLOW at the first region that needs more (a none
        PMD, a write to a huge zero or read-only huge PMD) or when a zap left partly mapped
        THPs to queue; with FAULT_OOM/FAULT_CHARGE where a PTE fault ran out. stats.stopped_vpn
        says where. Same effects, in the same order, as one call per region."""
        cdef int64_t start = vpn, rvpn, head, tid
        cdef int i0, i1, rc, i
        cdef uint64_t entry, kind
        cdef int idx
        while vpn < vpn_end:
            if self.nr_partial_heads:
                self.stats.stopped_vpn = vpn
                return FAULT_SLOW
            idx = pmd_region(vpn, vpn_end, &rvpn, &i0, &i1)
            entry = pmds[idx]
            kind = entry & PMD_KIND_MASK
            if entry and not self.pmd_valid(entry):
                self.stats.stopped_vpn = vpn
                return FAULT_BAD_PMD
            if kind == PMD_KIND_TABLE:
                tid = <int64_t>(entry >> PMD_TABLE_SHIFT)
                rc = self.fault_pte_range(tid, i0, i1, write, vma_write, vpn, value_mode, value,
                                          NULL if out == NULL else out + (vpn - start), memcg)
                if rc != FAULT_OK:
                    self.stats.stopped_vpn = rvpn + self.stats.stopped_at
                    return rc
            elif kind == PMD_KIND_HUGE:
                head = pmd_head(entry)
                if write:
                    if not (entry & PMD_WRITE):
                        self.stats.stopped_vpn = vpn
                        return FAULT_SLOW
                    if value_mode != VALUE_KEEP:
                        for i in range(i0, i1):
                            self.zone.content[head + i] = page_value(value_mode, value, rvpn + i)
                    pmds[idx] = entry | PMD_YOUNG | PMD_DIRTY
                else:
                    if out != NULL:
                        for i in range(i0, i1):
                            out[vpn - start + i - i0] = self.zone.content[head + i]
                    pmds[idx] = entry | PMD_YOUNG
            elif kind == PMD_KIND_HUGE_ZERO and not write:
                if out != NULL:
                    memset(out + (vpn - start), 0, (i1 - i0) * sizeof(uint32_t))
            else:
                self.stats.stopped_vpn = vpn
                return FAULT_SLOW
            vpn = rvpn + i1
        self.stats.stopped_vpn = vpn_end
        return FAULT_OK

    cdef int zap_pmd_range(self, uint64_t* pmds, int64_t vpn, int64_t vpn_end,
                           bint keep_guards) noexcept nogil:
        """zap_pmd_range() over PTE-table regions of one GiB's PMD array; stops with
        FAULT_SLOW at a huge PMD (zap or split: kernel-model work) or once THPs are left
        partly mapped (to be queued for deferred split before going on)."""
        cdef int64_t rvpn
        cdef int i0, i1, idx
        cdef uint64_t entry
        while vpn < vpn_end:
            if self.nr_partial_heads:
                self.stats.stopped_vpn = vpn
                return FAULT_SLOW
            idx = pmd_region(vpn, vpn_end, &rvpn, &i0, &i1)
            entry = pmds[idx]
            if entry:
                if not self.pmd_valid(entry):
                    self.stats.stopped_vpn = vpn
                    return FAULT_BAD_PMD
                if (entry & PMD_KIND_MASK) != PMD_KIND_TABLE:
                    self.stats.stopped_vpn = vpn
                    return FAULT_SLOW
                self.zap_pte_range(<int64_t>(entry >> PMD_TABLE_SHIFT), i0, i1, keep_guards)
            vpn = rvpn + i1
        self.stats.stopped_vpn = vpn_end
        return FAULT_OK

    # ---- Python interface ----------------------------------------------------------------

    cdef int _check_tid(self, int64_t tid) except -1:
        if not 0 <= tid < self.capacity or self.table_pfn[tid] == PFN_NONE:
            raise ValueError(f"table {tid} is not in use")
        return 0

    cdef int _check_pte_range(self, int64_t tid, int i0, int i1) except -1:
        self._check_tid(tid)
        if not 0 <= i0 <= i1 <= PTRS_PER_PTE:
            raise ValueError("PTE index range outside a table")
        return 0

    def reset_stats(self):
        memset(&self.stats, 0, sizeof(FaultStats))
        self.nr_partial_heads = 0

    def get_stats(self):
        return self.stats

    def partial_heads(self):
        return [self.partial_head_pfns[i] for i in range(self.nr_partial_heads)]

    def new_table(self):
        """A new zeroed PTE table id, or -1 when there is no memory for the page-table page."""
        self.reserve(1)
        cdef int64_t tid
        with nogil:
            tid = self.table_alloc()
        return tid

    def release_table(self, int64_t tid):
        """Free a table whose PTEs are all none (zap them first)."""
        self._check_tid(tid)
        if np.asarray(self.ptes[tid * PTRS_PER_PTE:(tid + 1) * PTRS_PER_PTE]).any():
            raise ValueError(f"table {tid} still maps pages")
        self.table_free(tid)

    def table(self, int64_t tid):
        """A writable numpy view of the 512 PTEs of a table (for the kernel-model layer)."""
        self._check_tid(tid)
        return np.asarray(self.ptes[tid * PTRS_PER_PTE:(tid + 1) * PTRS_PER_PTE])

    def table_frame(self, int64_t tid):
        self._check_tid(tid)
        return self.table_pfn[tid]

    def fault(self, int64_t tid, int i0, int i1, bint write, bint vma_write, int64_t vpn0,
              int value_mode, uint32_t value, out=None, int memcg=0):
        """Fault PTEs i0..i1-1; fills `out` (uint32 array of i1-i0) with contents on reads.
        Returns FAULT_OK (0) or FAULT_OOM (-1: an allocation failed, earlier pages stay)."""
        self._check_tid(tid)
        check_value_mode(value_mode)
        if not 0 <= i0 <= i1 <= PTRS_PER_PTE:
            raise ValueError("PTE index range outside a table")
        cdef uint32_t* outp = out_pointer(out, i1 - i0)
        cdef int rc
        with nogil:
            rc = self.fault_pte_range(tid, i0, i1, write, vma_write, vpn0, value_mode, value,
                                      outp, <uint16_t>memcg)
        return rc

    def zap(self, int64_t tid, int i0, int i1, bint keep_guards=False):
        self._check_pte_range(tid, i0, i1)
        with nogil:
            self.zap_pte_range(tid, i0, i1, keep_guards)

    def guard(self, int64_t tid, int i0, int i1, bint install):
        """MADV_GUARD_INSTALL (on none PTEs: zap the range first) or MADV_GUARD_REMOVE (clears
        markers only) over PTEs i0..i1-1. Returns the markers changed."""
        self._check_pte_range(tid, i0, i1)
        cdef int64_t base = tid * PTRS_PER_PTE, changed = 0
        cdef int i
        with nogil:
            for i in range(i0, i1):
                if install and self.ptes[base + i] == 0:
                    self.ptes[base + i] = PTE_GUARD
                    changed += 1
                elif not install and self.ptes[base + i] == PTE_GUARD:
                    self.ptes[base + i] = 0
                    changed += 1
        return changed

    cdef int _check_pmd_range(self, uint64_t[::1] pmds, int64_t vpn, int64_t vpn_end) except -1:
        if pmds.shape[0] != PTRS_PER_PMD:
            raise ValueError("pmds must be one mm PMD array (512 uint64 entries)")
        if not 0 <= vpn <= vpn_end or (vpn_end > vpn and
                                        (vpn >> 18) != ((vpn_end - 1) >> 18)):
            raise ValueError("page range must lie inside one GiB of address space")
        return 0

    def fault_range(self, uint64_t[::1] pmds, int64_t vpn, int64_t vpn_end, bint write,
                    bint vma_write, int value_mode, uint32_t value, out=None, int memcg=0):
        """Fault pages vpn..vpn_end-1 (inside one GiB whose PMD array is `pmds`) through PTE
        tables and ready huge PMDs; stats accumulate (reset_stats first). Returns FAULT_OK, 1
        (a region needs the kernel-model layer), -1/-2 (OOM/charge) or -3 (a corrupt PMD
        entry), with stats.stopped_vpn where the walk stopped."""
        self._check_pmd_range(pmds, vpn, vpn_end)
        check_value_mode(value_mode)
        cdef uint32_t* outp = out_pointer(out, vpn_end - vpn)
        cdef int rc
        cdef uint64_t* p = &pmds[0]
        with nogil:
            rc = self.fault_pmd_range(p, vpn, vpn_end, write, vma_write, value_mode, value,
                                      outp, <uint16_t>memcg)
        return rc

    def zap_range(self, uint64_t[::1] pmds, int64_t vpn, int64_t vpn_end, bint keep_guards=False):
        """Zap pages vpn..vpn_end-1 of PTE-table regions (one GiB, PMD array `pmds`); returns
        FAULT_OK, 1 (stopped at a huge PMD or partly mapped THPs) or -3, with stopped_vpn."""
        self._check_pmd_range(pmds, vpn, vpn_end)
        cdef int rc
        cdef uint64_t* p = &pmds[0]
        with nogil:
            rc = self.zap_pmd_range(p, vpn, vpn_end, keep_guards)
        return rc

    def reclaim(self, int64_t tid, int i0, int i1, int64_t want, int memcg=-1, bint can_swap=True):
        """One second-chance pass over PTEs i0..i1-1 (the LRU, approximated by accessed bits):
        a young page loses its accessed bit, an old exclusive order-0 page (of `memcg`, or any
        with -1) is discarded if lazyfree and clean, else swapped out (can_swap: without swap
        only lazyfree pages are looked at). Stops after `want` pages; returns the pages freed."""
        self._check_pte_range(tid, i0, i1)
        cdef int64_t got
        with nogil:
            got = self.reclaim_pte_range(tid, i0, i1, want, <uint16_t>max(memcg, 0), memcg < 0,
                                         can_swap)
        return got

    def pageout(self, int64_t tid, int i0, int i1, bint can_swap=True):
        self._check_pte_range(tid, i0, i1)
        with nogil:
            self.pageout_pte_range(tid, i0, i1, can_swap)

    def madvise_free(self, int64_t tid, int i0, int i1):
        self._check_pte_range(tid, i0, i1)
        with nogil:
            self.madvise_free_pte_range(tid, i0, i1)

    def swap_out_thp(self, int64_t tid, uint32_t head):
        """Swap out an exclusively mapped THP whose PMD was split into table tid (which maps
        all 512 subpages in order): one free cluster, or -1 when none is free."""
        self._check_tid(tid)
        self._check_thp(head, 0, PTRS_PER_PTE)
        cdef int64_t c, i
        with nogil:
            c = self.swap_alloc_cluster()
            if c >= 0:
                for i in range(PTRS_PER_PTE):
                    self.swap_map[c + i] = 1
                    self.swap_content[c + i] = self.zone.content[head + i]
                    self.zone.mapcount[head + i] = 0
                    self.ptes[tid * PTRS_PER_PTE + i] = (<uint32_t>(c + i) << PTE_PFN_SHIFT) | PTE_KIND_SWAP
                self.swap_used += PTRS_PER_PTE
                self.stats.swapped_out += PTRS_PER_PTE
                self.stats.rss_removed += PTRS_PER_PTE
                self.zone.free_pages(head, PAGEBLOCK_ORDER)
                self.stats.pages_freed += PTRS_PER_PTE
        return c

    def split_folio(self, uint32_t head):
        """split_huge_page(): a large user folio (a THP or an mTHP) becomes order-0 folios
        (mappings unchanged). Subpages no longer mapped anywhere are freed; returns how many."""
        if head >= self.zone.nr_pages or (self.zone.flags[head] & (PG_head | PG_lru)) != (PG_head | PG_lru) \
                or not 1 <= self.zone.order[head] <= PAGEBLOCK_ORDER:
            raise ValueError(f"pfn {head} is not the head of a large user folio")
        cdef int64_t i, freed = 0, nr = <int64_t>1 << self.zone.order[head]
        cdef uint8_t keep = self.zone.flags[head] & (PG_lru | PG_movable_ops | PG_kernel)
        with nogil:
            for i in range(nr):
                self.zone.flags[head + i] = PG_head | keep
                self.zone.order[head + i] = 0
            for i in range(nr):
                if self.zone.mapcount[head + i] == 0:
                    self.zone.free_pages(head + i, 0)
                    freed += 1
        return freed

    def copy_table(self, int64_t src, int64_t dst):
        """copy_pte_range() for a private mapping: every present page is write-protected in
        both tables and marked old in the child; swap entries gain a reference."""
        self._check_tid(src)
        self._check_tid(dst)
        cdef int64_t i, sb = src * PTRS_PER_PTE, db = dst * PTRS_PER_PTE
        cdef uint32_t pte
        with nogil:
            for i in range(PTRS_PER_PTE):
                pte = self.ptes[sb + i]
                if pte & PTE_PRESENT:
                    pte &= ~(<uint32_t>PTE_WRITE)
                    self.ptes[sb + i] = pte
                    self.ptes[db + i] = pte & ~(<uint32_t>PTE_YOUNG)
                    self.zone.mapcount[pte >> PTE_PFN_SHIFT] += 1
                elif (pte & 0xF) == PTE_KIND_SWAP:
                    self.swap_map[pte >> PTE_PFN_SHIFT] += 1
                    self.ptes[db + i] = pte
                else:
                    self.ptes[db + i] = pte

    def scan_pmd(self, int64_t tid, bint is_khugepaged, int max_none, int max_swap,
                 int max_shared, bint require_writable):
        """Scan one PTE table for collapse: (SCAN_* code, {none_or_zero, unmapped, shared,
        referenced, present, writable})."""
        self._check_tid(tid)
        cdef int rc
        with nogil:
            rc = self.scan_pte_table(tid, is_khugepaged, max_none, max_swap, max_shared,
                                     require_writable)
        return rc, self.scan

    def scan_regions(self, int64_t[::1] tids, uint8_t[::1] codes, int16_t[:, ::1] counts,
                     bint is_khugepaged, int max_none, int max_swap, int max_shared,
                     bint require_writable):
        """Scan a run of regions in one call: tids[i] >= 0 is the PTE table of region i (its code
        is written to codes[i], its none/swap/shared/referenced counts to counts[i]); other
        regions keep the code the caller put there. Stops after the first SCAN_SUCCEED (a
        collapse would be attempted there). Returns how many regions were handled."""
        cdef int64_t n = tids.shape[0], i
        if codes.shape[0] < n or counts.shape[0] < n or counts.shape[1] < 4:
            raise ValueError("output arrays are too small")
        for i in range(n):
            if tids[i] >= 0:
                self._check_tid(tids[i])
        cdef int rc
        cdef int64_t done = n
        with nogil:
            for i in range(n):
                if tids[i] < 0:
                    continue
                rc = self.scan_pte_table(tids[i], is_khugepaged, max_none, max_swap, max_shared,
                                         require_writable)
                codes[i] = <uint8_t>rc
                counts[i, 0] = <int16_t>self.scan.none_or_zero
                counts[i, 1] = <int16_t>self.scan.unmapped
                counts[i, 2] = <int16_t>self.scan.shared
                counts[i, 3] = <int16_t>self.scan.referenced
                if rc == SCAN_SUCCEED:
                    done = i + 1
                    break
        return done

    def collapse_run(self, int64_t[::1] tids, uint8_t[::1] codes, int16_t[:, ::1] counts,
                     uint32_t[::1] heads, int alloc_fast, int alloc_slow, int memcg=0,
                     bint stop_on_alloc_fail=False):
        """madvise_collapse()'s region loop for regions whose PMD needs no swap-in: scan without
        limits, allocate, copy, release the old pages, and classify like the kernel (continue
        or abort). tids[i] < 0 means the caller put the region's code in codes[i] already.
        heads[i] receives each new THP (the caller installs the PMDs). Stops early with
        codes[i] = 255 at a region that needs swap-in (the caller handles it). Returns the
        number of regions handled."""
        cdef int64_t n = tids.shape[0], i, j, head, base
        cdef uint32_t pte, pfn
        cdef uint32_t batch[512]
        cdef int nfree
        cdef int rc
        cdef int64_t done = n
        if codes.shape[0] < n or counts.shape[0] < n or counts.shape[1] < 4 or heads.shape[0] < n:
            raise ValueError("output arrays are too small")
        for i in range(n):
            if tids[i] >= 0:
                self._check_tid(tids[i])
        with nogil:
            for i in range(n):
                if tids[i] >= 0:
                    rc = self.scan_pte_table(tids[i], False, -1, -1, -1, False)
                    counts[i, 0] = <int16_t>self.scan.none_or_zero
                    counts[i, 1] = <int16_t>self.scan.unmapped
                    counts[i, 2] = <int16_t>self.scan.shared
                    counts[i, 3] = self.scan.present
                    if rc == SCAN_SUCCEED:
                        if self.scan.unmapped:
                            codes[i] = 255
                            done = i
                            break
                        head = self.zone.alloc_one(PAGEBLOCK_ORDER, MIGRATE_MOVABLE, alloc_fast, PG_lru)
                        if head < 0:
                            head = self.zone.alloc_one(PAGEBLOCK_ORDER, MIGRATE_MOVABLE, alloc_slow, PG_lru)
                        if head < 0 and stop_on_alloc_fail:
                            codes[i] = 254             # the caller compacts and retries it
                            done = i
                            break
                        if head < 0:
                            rc = SCAN_ALLOC_HUGE_PAGE_FAIL
                        else:
                            heads[i] = <uint32_t>head
                            base = tids[i] * PTRS_PER_PTE
                            self.zone.memcg_pages[memcg] += PTRS_PER_PTE
                            for j in range(PTRS_PER_PTE):
                                self.zone.mapcount[head + j] = 1
                                self.zone.memcg[head + j] = <uint16_t>memcg
                                pte = self.ptes[base + j]
                                self.zone.content[head + j] = self.zone.content[pte >> PTE_PFN_SHIFT] \
                                    if pte & PTE_PRESENT else 0
                            nfree = 0
                            for j in range(PTRS_PER_PTE):
                                pte = self.ptes[base + j]
                                self.ptes[base + j] = 0
                                if not (pte & PTE_PRESENT):
                                    continue
                                pfn = pte >> PTE_PFN_SHIFT
                                if self.zone.mapcount[pfn] == 1 and self.zone.order[pfn] == 0 \
                                        and not (self.zone.flags[pfn] & PG_tail):
                                    self.zone.mapcount[pfn] = 0
                                    batch[nfree] = pfn
                                    nfree += 1
                                else:
                                    self.put_user_frame(pfn)
                            self.free_order0_batch(batch, nfree)
                    codes[i] = <uint8_t>rc
                else:
                    rc = codes[i]
                if rc == SCAN_SUCCEED or rc == SCAN_PMD_MAPPED:
                    continue
                if (rc == SCAN_PMD_NULL or rc == SCAN_PTE_NON_PRESENT or rc == SCAN_PTE_UFFD_WP
                        or rc == SCAN_PAGE_RO or rc == SCAN_LACK_REFERENCED_PAGE
                        or rc == SCAN_PAGE_NULL or rc == SCAN_PAGE_COUNT or rc == SCAN_PAGE_LOCK
                        or rc == SCAN_PAGE_COMPOUND or rc == SCAN_PAGE_LRU
                        or rc == SCAN_DEL_PAGE_LRU):
                    continue
                done = i + 1
                break
        return done

    def table_stats(self, int64_t[::1] tids, bint clear_young=False):
        """Per PTE table: present, swapped, none-or-zero, shared (mapcount > 1) and young PTEs,
        as an int32 array [len(tids), 5] (tids < 0 give zeros). clear_young clears the accessed
        bits it counted (idle-page-tracking style sampling)."""
        cdef int64_t n = tids.shape[0], k, i, base
        for k in range(n):
            if tids[k] >= 0:
                self._check_tid(tids[k])
        out_np = np.zeros((n, 5), dtype=np.int32)
        cdef int32_t[:, ::1] out = out_np
        cdef uint32_t pte
        with nogil:
            for k in range(n):
                if tids[k] < 0:
                    continue
                base = tids[k] * PTRS_PER_PTE
                for i in range(PTRS_PER_PTE):
                    pte = self.ptes[base + i]
                    if pte & PTE_PRESENT:
                        out[k, 0] += 1
                        if self.zone.mapcount[pte >> PTE_PFN_SHIFT] > 1:
                            out[k, 3] += 1
                        if pte & PTE_YOUNG:
                            out[k, 4] += 1
                            if clear_young:
                                self.ptes[base + i] = pte & ~(<uint32_t>PTE_YOUNG)
                    elif (pte & 0xF) == PTE_KIND_SWAP:
                        out[k, 1] += 1
                    else:
                        out[k, 2] += 1
        return out_np

    def collapse_copy(self, int64_t tid, uint32_t head):
        """__collapse_huge_page_copy(): copy every subpage into the new THP at head (none and
        zero-page PTEs give zero subpages), release the old pages and clear the table, which
        becomes the deposit. Returns the number of present PTEs released. Swap entries must
        have been faulted in first."""
        self._check_tid(tid)
        self._check_thp(head, 0, PTRS_PER_PTE)
        cdef int64_t base = tid * PTRS_PER_PTE, i, released = 0
        cdef uint32_t pte
        for i in range(PTRS_PER_PTE):
            if (self.ptes[base + i] & 0xF) == PTE_KIND_SWAP or self.ptes[base + i] == PTE_GUARD:
                raise ValueError("collapse_copy over a swap entry or guard marker")
        with nogil:
            for i in range(PTRS_PER_PTE):
                pte = self.ptes[base + i]
                if pte & PTE_PRESENT:
                    self.zone.content[head + i] = self.zone.content[pte >> PTE_PFN_SHIFT]
                else:
                    self.zone.content[head + i] = 0
            for i in range(PTRS_PER_PTE):
                pte = self.ptes[base + i]
                self.ptes[base + i] = 0
                if pte & PTE_PRESENT:
                    released += 1
                    self.put_user_frame(pte >> PTE_PFN_SHIFT)
        return released

    # ---- compaction (mm/compaction.c) -------------------------------------------------------

    cdef bint compaction_finished(self, int order) noexcept nogil:
        """__compact_finished() for a movable request: a free block of at least `order` that
        the allocation could use or claim."""
        cdef int o, mt
        for o in range(order, NR_PAGE_ORDERS):
            for mt in range(MIGRATE_PCPTYPES):
                if self.zone.nr_free[mt][o]:
                    if mt == MIGRATE_MOVABLE or o >= PAGEBLOCK_ORDER // 2:
                        return True
        return False

    def compact(self, int order, bint sync, bint whole_zone, int64_t max_migrate=-1):
        """compact_zone() for MOVABLE requests of `order` (-1: full compaction, as
        /proc/sys/vm/compact_memory). Migrate scanner up from the cached pfn, free scanner down
        from the cached free pfn; order-0 LRU and movable_ops pages move (contents, mapcounts
        and every PTE that maps them follow); unmovable pages, page tables and THPs stay.
        Returns a COMPACT_* code; per-run figures in compact_stats()."""
        # Reverse map (the PTE slots that map each frame, CSR over the pool) for a window of
        # RMAP_WINDOW frames at the migrate scanner, rebuilt as it moves on: 4 bytes per frame
        # of the window instead of per frame of the zone, so a 1 TiB zone compacts in bounded RAM.
        cdef int64_t n = self.zone.nr_pages, ntmax = 4096
        cdef int64_t wsize = min(n, _rmap_window), slots_cap = 0
        cdef int result
        cdef uint32_t* offs = <uint32_t*>malloc((wsize + 1) * sizeof(uint32_t))
        cdef uint32_t* slots = NULL
        targets_np = np.zeros(ntmax, dtype=np.uint32)
        cdef uint32_t[::1] targets = targets_np
        memset(&self.cstats, 0, sizeof(CompactStats))
        if offs == NULL:
            raise MemoryError("compaction reverse map")
        try:
            result = self._compact_run(order, sync, whole_zone, max_migrate, offs, wsize,
                                       &slots, &slots_cap, targets, ntmax)
        finally:
            free(offs)
            free(slots)
        if result < 0:
            raise MemoryError("compaction reverse map")
        return result

    cdef int64_t build_rmap(self, int64_t lo, int64_t hi, uint32_t* offs, uint32_t** slots_p,
                            int64_t* cap_p) noexcept nogil:
        """offs[k]..offs[k+1] index the PTE slots in *slots_p that map frame lo + k, for frames
        in [lo, hi). Returns the number of slots, -1 when memory runs out."""
        cdef int64_t w = hi - lo, tid, i, k, p, total
        cdef uint32_t pte
        cdef uint32_t* slots
        memset(offs, 0, (w + 1) * sizeof(uint32_t))
        for tid in range(self.capacity):
            if self.table_pfn[tid] == PFN_NONE:
                continue
            for i in range(PTRS_PER_PTE):
                pte = self.ptes[tid * PTRS_PER_PTE + i]
                if pte & PTE_PRESENT:
                    p = pte >> PTE_PFN_SHIFT
                    if lo <= p < hi:
                        offs[p - lo + 1] += 1
        for k in range(w):
            offs[k + 1] += offs[k]
        total = offs[w]
        if total > cap_p[0]:
            slots = <uint32_t*>realloc(slots_p[0], total * sizeof(uint32_t))
            if slots == NULL:
                return -1
            slots_p[0] = slots
            cap_p[0] = total
        slots = slots_p[0]
        # Fill with offs[k] as frame k's cursor; afterwards offs[k] holds the old offs[k + 1].
        for tid in range(self.capacity):
            if self.table_pfn[tid] == PFN_NONE:
                continue
            for i in range(PTRS_PER_PTE):
                pte = self.ptes[tid * PTRS_PER_PTE + i]
                if pte & PTE_PRESENT:
                    p = pte >> PTE_PFN_SHIFT
                    if lo <= p < hi:
                        slots[offs[p - lo]] = <uint32_t>(tid * PTRS_PER_PTE + i)
                        offs[p - lo] += 1
        k = w - 1
        while k > 0:
            offs[k] = offs[k - 1]
            k -= 1
        offs[0] = 0
        return total

    cdef int _compact_run(self, int order, bint sync, bint whole_zone, int64_t max_migrate,
                          uint32_t* offs, int64_t wsize, uint32_t** slots_p, int64_t* cap_p,
                          uint32_t[::1] targets, int64_t ntmax):
        cdef Zone z = self.zone
        cdef int64_t n = z.nr_pages, i, j, p, slot
        cdef int64_t mig, fre, pb, end, o, newpfn, nt = 0
        cdef int64_t wlo = 0, whi = 0
        cdef uint8_t f
        cdef uint32_t* slots = NULL
        cdef bint isolated_any, met = False, success = False, oom = False
        with nogil:
            mig = 0 if whole_zone else self.cached_migrate_pfn
            fre = (n - PAGEBLOCK_NR_PAGES) if whole_zone else self.cached_free_pfn
            while mig < fre + PAGEBLOCK_NR_PAGES and not success:
                pb = mig >> PAGEBLOCK_ORDER
                end = mig + PAGEBLOCK_NR_PAGES
                if mig >= fre:
                    met = True
                    break
                if self.pb_skip[pb] and not whole_zone:
                    self.cstats.pageblocks_skipped += 1
                    mig = end
                    continue
                if not sync and z.pageblock_mt[pb] != MIGRATE_MOVABLE:
                    mig = end                      # async only takes movable pageblocks
                    continue
                if mig < wlo or end > whi:
                    wlo, whi = mig, min(n, mig + wsize)
                    if self.build_rmap(wlo, whi, offs, slots_p, cap_p) < 0:
                        oom = True
                        break
                    slots = slots_p[0]
                isolated_any = False
                p = mig
                while p < end:
                    f = z.flags[p]
                    self.cstats.migrate_scanned += 1
                    if f & PG_buddy:
                        p += <int64_t>1 << z.order[p]
                        continue
                    if (f & PG_head) and z.order[p] > 0:
                        p += <int64_t>1 << z.order[p]          # compound: THPs are not moved
                        continue
                    if not (f & PG_head) or not (f & (PG_lru | PG_movable_ops)) or (f & PG_pgtable):
                        p += 1
                        continue
                    # A target page from the free scanner (isolate_freepages).
                    while nt == 0 and fre > mig:
                        o = fre
                        self.cstats.free_scanned += 0
                        if (z.pageblock_mt[fre >> PAGEBLOCK_ORDER] == MIGRATE_MOVABLE
                                or ((z.flags[fre] & PG_buddy) and z.order[fre] >= PAGEBLOCK_ORDER)) \
                                and not (self.pb_skip[fre >> PAGEBLOCK_ORDER] and not whole_zone):
                            j = fre
                            while j < fre + PAGEBLOCK_NR_PAGES and nt < ntmax - 1024:
                                self.cstats.free_scanned += 1
                                if z.flags[j] & PG_buddy:
                                    o = z.order[j]
                                    # __isolate_free_page(): keep the zone above min + 2^order.
                                    if z.nr_free_pages - (<int64_t>1 << o) <= z.watermark[WMARK_MIN]:
                                        break
                                    z.del_from_free_list(<uint32_t>j, <int>o,
                                                         z.pageblock_mt[j >> PAGEBLOCK_ORDER])
                                    for i in range(<int64_t>1 << o):
                                        z.flags[j + i] = 0
                                        targets[nt] = <uint32_t>(j + i)
                                        nt += 1
                                    self.cstats.isolated += <int64_t>1 << o
                                    j += <int64_t>1 << o
                                else:
                                    j += 1
                            if nt == 0:
                                self.pb_skip[fre >> PAGEBLOCK_ORDER] = 1
                        fre -= PAGEBLOCK_NR_PAGES
                    if nt == 0:
                        break                              # no free page left to move into
                    # migrate_pages(): move p to a target page.
                    nt -= 1
                    newpfn = targets[nt]
                    z.flags[newpfn] = f
                    z.order[newpfn] = 0
                    z.content[newpfn] = z.content[p]
                    z.mapcount[newpfn] = z.mapcount[p]
                    z.memcg[newpfn] = z.memcg[p]
                    z.set_lazyfree(newpfn, z.test_lazyfree(<uint32_t>p))
                    if f & PG_lru:
                        z.memcg_pages[z.memcg[p]] += 1      # free_pages(p) uncharges the old one
                    for j in range(offs[p - wlo], offs[p - wlo + 1]):
                        slot = slots[j]
                        self.ptes[slot] = (<uint32_t>newpfn << PTE_PFN_SHIFT) | (self.ptes[slot] & 0xF)
                    z.mapcount[p] = 0
                    z.free_pages(<uint32_t>p, 0)
                    self.cstats.isolated += 1
                    self.cstats.migrated += 1
                    isolated_any = True
                    if max_migrate >= 0 and self.cstats.migrated >= max_migrate:
                        break
                    p += 1
                if nt == 0 and p < end and fre <= mig:
                    met = True
                    break
                if not isolated_any:
                    self.pb_skip[pb] = 1
                mig = end
                if order >= 0 and self.compaction_finished(order):
                    success = True
                if max_migrate >= 0 and self.cstats.migrated >= max_migrate:
                    break
            # Unused free targets go back to the buddy lists (release_free_list).
            for i in range(nt):
                z.flags[targets[i]] = PG_head
                z.order[targets[i]] = 0
                z.free_pages(targets[i], 0)
            nt = 0
            if mig >= fre:
                met = True
        if oom:
            return -1
        if met:
            # Scanners met: the next run starts over, and the skip hints are forgotten.
            self.cached_migrate_pfn = 0
            self.cached_free_pfn = n - PAGEBLOCK_NR_PAGES
            self.pb_skip[:] = 0
            return COMPACT_COMPLETE if whole_zone else COMPACT_PARTIAL_SKIPPED
        if not whole_zone:
            self.cached_migrate_pfn = mig
            self.cached_free_pfn = fre
        return COMPACT_SUCCESS if success else COMPACT_CONTINUE

    def compact_stats(self):
        return self.cstats

    def put_frame(self, uint32_t pfn):
        """Drop one mapping of a user frame (used by PMD-level zaps in the kernel model)."""
        if pfn >= self.zone.nr_pages or not (self.zone.flags[pfn] & PG_lru) or self.zone.mapcount[pfn] <= 0:
            raise ValueError(f"pfn {pfn} is not a mapped user frame")
        with nogil:
            self.put_user_frame(pfn)

    def map_thp(self, uint32_t head, int delta):
        """Add delta to the mapcount of every frame of the THP at head (PMD map/unmap)."""
        cdef int64_t i
        for i in range(PTRS_PER_PTE):
            self.zone.mapcount[head + i] += delta

    def alloc_thp(self, int alloc_flags, int memcg=0, int order=PAGEBLOCK_ORDER):
        """A movable folio (order 9 by default) for a fault or collapse: zeroed, each frame
        mapped once; returns the head pfn, or -1 when the free lists refuse."""
        if not 1 <= order <= PAGEBLOCK_ORDER:
            raise ValueError(f"folio order {order} outside 1..{PAGEBLOCK_ORDER}")
        if not 0 <= memcg < self.zone.memcg_pages.shape[0]:
            raise ValueError(f"memcg id {memcg} out of range")
        cdef int64_t pfn, i, nr = <int64_t>1 << order
        with nogil:
            pfn = self.zone.alloc_one(order, MIGRATE_MOVABLE, alloc_flags, PG_lru)
            if pfn >= 0:
                for i in range(nr):
                    self.zone.mapcount[pfn + i] = 1
                    self.zone.memcg[pfn + i] = <uint16_t>memcg
                self.zone.memcg_pages[memcg] += nr
        return pfn

    def map_anon_folio(self, int64_t tid, int i, uint32_t head, int memcg=0):
        """Map the folio alloc_thp(order=k) returned at the PTEs of a fault at index i (its
        aligned range, all none: the fault path's FAULT_MTHP said so), as do_anonymous_page
        does; stats count it (alloc_thp charged the memcg already)."""
        self._check_tid(tid)
        if not 0 <= i < PTRS_PER_PTE:
            raise ValueError("PTE index outside a table")
        if head >= self.zone.nr_pages or (self.zone.flags[head] & (PG_head | PG_lru)) != (PG_head | PG_lru) \
                or not MTHP_MIN_ORDER <= self.zone.order[head] < PAGEBLOCK_ORDER:
            raise ValueError(f"pfn {head} is not the head of an mTHP folio")
        cdef int order = self.zone.order[head], m
        cdef int64_t nr = <int64_t>1 << order, base = tid * PTRS_PER_PTE
        cdef int idx = i & ~(<int>nr - 1)
        for m in range(<int>nr):
            if self.ptes[base + idx + m] != 0:
                raise ValueError("the folio's PTE range is not all none")
        if not 0 <= memcg < self.zone.memcg_pages.shape[0]:
            raise ValueError(f"memcg id {memcg} out of range")
        with nogil:
            self.set_folio_ptes(base, idx, head, order, <uint16_t>memcg)

    def folio_heads(self, const int64_t[::1] pfns):
        """(heads, orders): the head pfn and order of the allocated block holding each pfn
        (folio_head); -1 and 0 where a pfn is in no allocated block."""
        cdef int64_t n = pfns.shape[0], k, h
        for k in range(n):
            if not 0 <= pfns[k] < self.zone.nr_pages:
                raise ValueError(f"pfn {pfns[k]} outside the zone")
        heads_np = np.empty(n, dtype=np.int64)
        orders_np = np.zeros(n, dtype=np.int64)
        cdef int64_t[::1] heads = heads_np, orders = orders_np
        with nogil:
            for k in range(n):
                h = self.folio_head(<uint32_t>pfns[k])
                heads[k] = h
                if h >= 0:
                    orders[k] = self.zone.order[h]
        return heads_np, orders_np

    cdef int _check_thp(self, int64_t head, int i0, int i1) except -1:
        if not 0 <= head < self.zone.nr_pages or head & (PTRS_PER_PTE - 1) \
                or not (self.zone.flags[head] & PG_head) or self.zone.order[head] != PAGEBLOCK_ORDER:
            raise ValueError(f"pfn {head} is not the head of a THP")
        if not 0 <= i0 <= i1 <= PTRS_PER_PTE:
            raise ValueError("subpage range outside a THP")
        return 0

    def thp_write(self, int64_t head, int i0, int i1, int value_mode, uint32_t value, int64_t vpn0):
        """Store content words into subpages i0..i1-1 of a THP (a write through its PMD)."""
        self._check_thp(head, i0, i1)
        check_value_mode(value_mode)
        cdef int i
        with nogil:
            for i in range(i0, i1):
                if value_mode != VALUE_KEEP:
                    self.zone.content[head + i] = page_value(value_mode, value, vpn0 + (i - i0))

    def thp_read(self, int64_t head, int i0, int i1):
        self._check_thp(head, i0, i1)
        return np.asarray(self.zone.content[head + i0:head + i1]).copy()

    def check_against(self, tables, huge_heads, zero_pmds=0):
        """Prove the pool against the mms' PMD directories: `tables` lists every table id in
        use (each once), `huge_heads` every PMD-mapped THP head (once per mapping). Returns an
        error string, or None."""
        cdef int64_t n = self.zone.nr_pages, tid, i, pfn
        cdef uint32_t pte, slot
        expected_np = np.zeros(n, dtype=np.int64)
        swap_refs_np = np.zeros(max(self.swap_slots, 1), dtype=np.int64)
        cdef int64_t[::1] expected = expected_np
        cdef int64_t[::1] swap_refs = swap_refs_np
        seen = set()
        for tid in tables:
            if tid in seen:
                return f"table {tid} referenced twice"
            seen.add(tid)
            if not 0 <= tid < self.capacity or self.table_pfn[tid] == PFN_NONE:
                return f"table {tid} referenced but not allocated"
            pfn = self.table_pfn[tid]
            if (self.zone.flags[pfn] & (PG_head | PG_kernel | PG_pgtable)) != (PG_head | PG_kernel | PG_pgtable):
                return f"table {tid} frame {pfn} is not a page-table page"
            for i in range(PTRS_PER_PTE):
                pte = self.ptes[tid * PTRS_PER_PTE + i]
                if pte & PTE_PRESENT:
                    expected[pte >> PTE_PFN_SHIFT] += 1
                elif (pte & 0xF) == PTE_KIND_SWAP:
                    slot = pte >> PTE_PFN_SHIFT
                    if slot >= self.swap_slots:
                        return f"swap entry {slot} outside the device"
                    swap_refs[slot] += 1
                elif pte != 0 and pte != PTE_KIND_ZERO and pte != PTE_GUARD:
                    return f"table {tid} has a malformed PTE {pte:#x}"
        if len(seen) != self.nr_tables:
            return f"{self.nr_tables} tables allocated but {len(seen)} referenced"
        for head in huge_heads:
            for i in range(PTRS_PER_PTE):
                expected[head + i] += 1
        flags = np.asarray(self.zone.flags)
        mapcount = np.asarray(self.zone.mapcount)
        user = (flags & PG_lru) != 0
        bad = np.nonzero(user & (mapcount != expected_np))[0]
        if bad.size:
            p = int(bad[0])
            return f"pfn {p}: mapcount {mapcount[p]} but {expected_np[p]} mappings"
        bad = np.nonzero(~user & (expected_np != 0))[0]
        if bad.size:
            return f"pfn {int(bad[0])} is mapped but not an allocated user page"
        # A user frame with no mapping must belong to a partly mapped large folio.
        orphan = np.nonzero(user & (mapcount == 0))[0]
        if orphan.size:
            heads_np, orders_np = self.folio_heads(orphan.astype(np.int64))
            small = np.nonzero(orders_np == 0)[0]
            if small.size:
                return f"pfn {int(orphan[small[0]])} is an unmapped order-0 user page"
            for h, o in sorted(set(zip(heads_np.tolist(), orders_np.tolist()))):
                if not (mapcount[h:h + (1 << o)] > 0).any():
                    return f"large folio at pfn {h} is allocated but entirely unmapped"
        if self.swap_slots:
            sm = np.asarray(self.swap_map).astype(np.int64)
            if sm[0] != 0xFF or swap_refs_np[0]:
                return "swap slot 0 (the header) is in use"
            sm, refs = sm[1:], swap_refs_np[1:self.swap_slots]
            if not np.array_equal(sm, refs):
                s = int(np.nonzero(sm != refs)[0][0])
                return f"swap slot {s + 1}: swap_map {sm[s]} but {refs[s]} swap PTEs"
            if int((sm > 0).sum()) != self.swap_used:
                return "swap_used disagrees with swap_map"
        return None

    @property
    def nbytes(self):
        return self.capacity * (PTRS_PER_PTE * 4 + 8)


# ================================================================================================
# pagemap classification (live hosts and simulated processes alike)

REGION_FIELDS = ("present", "swapped", "none", "zero", "shared", "pte_mapped_thp", "pmd_mapped")


def scan_pagemap(const uint64_t[::1] pagemap, const uint64_t[::1] kpageflags,
                 const uint64_t[::1] kpagecount, int64_t first_vpn):
    """Per 2 MiB region counts from /proc/PID/pagemap entries of consecutive pages starting at
    virtual page first_vpn, with /proc/kpageflags and /proc/kpagecount values of each page (0
    where not present). Returns an int32 array [regions, 7] in REGION_FIELDS order: present,
    swapped, none, zero (zero page), shared (kpagecount > 1), pte_mapped_thp (THP subpages not
    mapped by a PMD) and pmd_mapped (pages of PMD-mapped THPs: a whole aligned region of
    contiguous, aligned THP pages)."""
    cdef int64_t n = pagemap.shape[0], i, r, k, first, last, nreg
    if kpageflags.shape[0] != n or kpagecount.shape[0] != n:
        raise ValueError("pagemap, kpageflags and kpagecount must have the same length")
    if first_vpn < 0:
        raise ValueError("first_vpn must be >= 0")
    first = first_vpn >> 9
    last = (first_vpn + n - 1) >> 9 if n else first - 1
    nreg = last - first + 1
    out_np = np.zeros((max(nreg, 0), 7), dtype=np.int32)
    cdef int32_t[:, ::1] out = out_np
    cdef uint64_t e, f
    # nogil copies of thpcore.proc.pagemap's PM_PRESENT, PM_SWAP, PM_GUARD_REGION, PM_PFN_MASK,
    # KPF_THP and KPF_ZERO_PAGE (test_procfs.py::test_scan_pagemap_bits_match_proc_pagemap)
    cdef uint64_t PRESENT = <uint64_t>1 << 63, SWAP = <uint64_t>1 << 62, GUARD = <uint64_t>1 << 58
    cdef uint64_t PFN = (<uint64_t>1 << 55) - 1
    cdef uint64_t THP = <uint64_t>1 << 22, ZERO = <uint64_t>1 << 24
    cdef bint pmd
    with nogil:
        for i in range(n):
            r = ((first_vpn + i) >> 9) - first
            e = pagemap[i]
            f = kpageflags[i]
            if e & PRESENT:
                if f & ZERO:
                    out[r, 3] += 1
                else:
                    out[r, 0] += 1
                    if kpagecount[i] > 1:
                        out[r, 4] += 1
                    if f & THP:
                        out[r, 5] += 1
            elif (e & SWAP) and not (e & GUARD):
                out[r, 1] += 1
            else:
                out[r, 2] += 1
        # Whole aligned regions of one contiguous, aligned THP count as PMD-mapped.
        for r in range(nreg):
            k = (first + r) * 512 - first_vpn            # index of the region's first page
            if k < 0 or k + 512 > n or out[r, 5] != 512:
                continue
            pmd = ((pagemap[k] & PFN) & 511) == 0
            i = 1
            while pmd and i < 512:
                if (pagemap[k + i] & PFN) != (pagemap[k] & PFN) + <uint64_t>i:
                    pmd = False
                i += 1
            if pmd:
                out[r, 6] = 512
                out[r, 5] = 0
    return out_np


# ================================================================================================
# TLB model: set-associative LRU L1 dTLB (4 KiB and 2 MiB arrays) backed by a unified STLB

def tlb_simulate(const int64_t[::1] vpns, const uint8_t[::1] huge_region, int64_t first_region,
                 int l1_4k_entries=64, int l1_4k_ways=4, int l1_2m_entries=32, int l1_2m_ways=4,
                 int stlb_entries=1536, int stlb_ways=12):
    """Replay an access stream (virtual page numbers) against the mappings (huge_region[r] != 0
    when region first_region + r is PMD-mapped). Returns (l1_hits, stlb_hits, walks): an L1
    miss that hits the STLB costs a few cycles, a miss in both is a page walk. Defaults are a
    current x86 core's (64-entry 4-way 4 KiB L1, 32-entry 4-way 2 MiB L1, 1536-entry 12-way
    STLB shared by both sizes). LRU within each set."""
    cdef int64_t n = vpns.shape[0], i, r, tag, nreg = huge_region.shape[0]
    cdef int s4 = l1_4k_entries // l1_4k_ways, s2 = l1_2m_entries // l1_2m_ways
    cdef int ss = stlb_entries // stlb_ways
    if min(s4, s2, ss) < 1 or min(l1_4k_ways, l1_2m_ways, stlb_ways) < 1:
        raise ValueError("each TLB needs at least one set of at least one way")
    for i in range(n):
        if vpns[i] < 0:
            raise ValueError("virtual page numbers must be >= 0")
    # Each array: tags[set * ways + way] (-1 empty), ages for LRU.
    t4_np = np.full(s4 * l1_4k_ways, -1, dtype=np.int64)
    t2_np = np.full(s2 * l1_2m_ways, -1, dtype=np.int64)
    ts_np = np.full(ss * stlb_ways, -1, dtype=np.int64)
    a4_np = np.zeros(s4 * l1_4k_ways, dtype=np.int64)
    a2_np = np.zeros(s2 * l1_2m_ways, dtype=np.int64)
    as_np = np.zeros(ss * stlb_ways, dtype=np.int64)
    cdef int64_t[::1] t4 = t4_np, t2 = t2_np, ts = ts_np, a4 = a4_np, a2 = a2_np, as_ = as_np
    cdef int64_t l1_hits = 0, stlb_hits = 0, walks = 0, stag
    cdef bint huge
    with nogil:
        for i in range(n):
            r = (vpns[i] >> 9) - first_region
            huge = 0 <= r < nreg and huge_region[r] != 0
            if huge:
                tag = vpns[i] >> 9
                if _tlb_lookup(t2, a2, tag, tag % s2, l1_2m_ways, i):
                    l1_hits += 1
                    continue
                stag = tag * 2 + 1                 # the STLB holds both sizes: tag them apart
            else:
                tag = vpns[i]
                if _tlb_lookup(t4, a4, tag, tag % s4, l1_4k_ways, i):
                    l1_hits += 1
                    continue
                stag = tag * 2
            if _tlb_lookup(ts, as_, stag, stag % ss, stlb_ways, i):
                stlb_hits += 1
            else:
                walks += 1
    return l1_hits, stlb_hits, walks


cdef inline bint _tlb_lookup(int64_t[::1] tags, int64_t[::1] ages, int64_t tag, int64_t s,
                             int ways, int64_t now) noexcept nogil:
    """Look tag up in set s; on a miss install it over the least recently used way."""
    cdef int64_t base = s * ways, w, victim = base, oldest = ages[base]
    for w in range(base, base + ways):
        if tags[w] == tag:
            ages[w] = now + 1
            return True
        if tags[w] == -1:
            victim = w
            oldest = -1
            break
        if ages[w] < oldest:
            oldest = ages[w]
            victim = w
    tags[victim] = tag
    ages[victim] = now + 1
    return False
