# cython: language_level=3
"""The engine's contract: constants, the frame table and the zone's buddy allocator.

Everything here is data-plane state. Policy (which allocation to try, when to give up, what a
scenario means) lives in the Python kernel-model modules; they call into the engine with
arguments they have already validated, and the engine trusts them (bounds checks are off in
the release build; THPCORE_DEBUG=1 builds turn them on).
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

# ---------------------------------------------------------------------------------------------
# Page-allocator geometry (x86-64, 4 KiB pages).
cdef enum:
    MAX_PAGE_ORDER = 10             # largest buddy order (inclusive), 4 MiB
    NR_PAGE_ORDERS = 11
    PAGEBLOCK_ORDER = 9             # min(HPAGE_PMD_ORDER, MAX_PAGE_ORDER)
    PAGEBLOCK_NR_PAGES = 512
    RMAP_WINDOW = 1 << 24           # frames per compaction reverse-map window (64 MiB of offsets)

# Migratetypes, numbered as in include/linux/mmzone.h for a kernel without CONFIG_CMA
# (this is the order /proc/pagetypeinfo prints them in).
cdef enum:
    MIGRATE_UNMOVABLE = 0
    MIGRATE_MOVABLE = 1
    MIGRATE_RECLAIMABLE = 2
    MIGRATE_PCPTYPES = 3            # the types with per-cpu lists and fallbacks
    MIGRATE_HIGHATOMIC = 3          # == MIGRATE_PCPTYPES, as in the kernel
    MIGRATE_ISOLATE = 4
    MIGRATE_TYPES = 5

# Frame flags (Zone.flags). One byte per frame.
cdef enum:
    PG_buddy = 0x01         # head of a free buddy block; order[pfn] is its order; on exactly one free list
    PG_head = 0x02          # head of an allocated block of order[pfn] pages (order 0 included)
    PG_tail = 0x04          # allocated, inside a block whose head is below it (not the head itself)
    PG_lru = 0x08           # user page on an LRU list: movable and migratable (set on every frame of the block)
    PG_movable_ops = 0x10   # kernel page with movable_ops (zsmalloc, balloon): migratable, not LRU
    PG_kernel = 0x20        # allocated by the kernel (kernel_alloc): freed only by kernel_free
    PG_pgtable = 0x40       # a page-table page (with PG_kernel): backs one PTE table
    PG_validating = 0x80    # transient mark while free_bulk validates; never set between calls

# alloc_flags, the subset of mm/internal.h that the zone model acts on.
cdef enum:
    ALLOC_WMARK_MIN = 0
    ALLOC_WMARK_LOW = 1
    ALLOC_WMARK_HIGH = 2
    ALLOC_NO_WATERMARKS = 4
    ALLOC_WMARK_MASK = 7
    ALLOC_NOFRAGMENT = 0x100        # do not fall back below pageblock order (first pass, 6.x)
    ALLOC_KSWAPD = 0x800            # the gfp may wake kswapd (used for watermark-boost bookkeeping)

# Watermark indices.
cdef enum:
    WMARK_MIN = 0
    WMARK_LOW = 1
    WMARK_HIGH = 2
    NR_WMARK = 3

# Free-list link value meaning "no frame".
cdef enum:
    PFN_NONE = 0xFFFFFFFF

# Results of Zone.check_invariants (0 is "all invariants hold").
cdef enum:
    CHECK_OK = 0
    CHECK_FREE_BLOCK_MISALIGNED = 1
    CHECK_FREE_BLOCK_OVERLAP = 2
    CHECK_FREE_LIST_CORRUPT = 3
    CHECK_FREE_COUNT_MISMATCH = 4
    CHECK_UNMERGED_BUDDIES = 5
    CHECK_FREE_LIST_WRONG_TYPE = 6
    CHECK_ALLOCATED_BLOCK_CORRUPT = 7
    CHECK_FRAME_UNACCOUNTED = 8
    CHECK_PAGEBLOCK_COUNT_MISMATCH = 9
    CHECK_BAD_MIGRATETYPE = 10


cdef class Zone:
    """One memory zone (ZONE_NORMAL of node 0): its frame table and buddy free lists.

    Frames are numbered 0 .. nr_pages-1 (pfn). Invariants (Zone.check_invariants proves them):
      * every frame is in exactly one block: a free block (head has PG_buddy) or an allocated
        block (head has PG_head, the other frames PG_tail); blocks are naturally aligned to
        their order;
      * a free block sits on exactly one list, free_head[mt][order], and mt is the migratetype
        of its (first) pageblock; counts nr_free / area_nr_free / nr_free_pages agree with the
        lists;
      * no free block has a free buddy of the same order that it could merge with (same
        migratetype class, see __free_one_page);
      * nr_pageblocks_of[mt] counts pageblock_mt entries equal to mt.
    """
    # --- geometry ---------------------------------------------------------------------------
    cdef readonly int64_t nr_pages          # managed == present == spanned; multiple of PAGEBLOCK_NR_PAGES
    cdef readonly int64_t nr_pageblocks     # nr_pages / PAGEBLOCK_NR_PAGES

    # --- frame table: struct of arrays, one entry per 4 KiB frame (12 bytes + 1 bit a frame) -
    cdef uint8_t[::1] flags         # PG_* bits
    cdef uint8_t[::1] order         # block order at heads (PG_buddy or PG_head); 0 elsewhere
    cdef uint16_t[::1] memcg        # memcg id charged for an allocated user frame; 0 = root/none
    cdef int32_t[::1] mapcount      # allocated frames: number of page-table mappings (>= 0).
                                    # free heads: the previous block on the free list (as uint32, via prev)
    cdef uint32_t[::1] content      # allocated frames: the content word (0 = all zeroes).
                                    # free heads: the next block on the free list (PFN_NONE ends it)
    cdef uint32_t[::1] prev         # the same memory as mapcount, read as the list's back link
    cdef uint8_t[::1] lazyfree      # bitmap, bit pfn: MADV_FREE made the page lazyfree (the
                                    # kernel's !PG_swapbacked anon folio) and reclaim has not
                                    # found it re-dirtied since; meaningful only on allocated
                                    # user frames (prep_new_page clears it; compaction moves it)

    # --- pageblocks --------------------------------------------------------------------------
    cdef uint8_t[::1] pageblock_mt  # migratetype of each pageblock (MIGRATE_*)

    # --- free lists (the zone's free_area) ---------------------------------------------------
    cdef uint32_t free_head[MIGRATE_TYPES][NR_PAGE_ORDERS]   # first block, PFN_NONE if empty
    cdef uint32_t free_tail[MIGRATE_TYPES][NR_PAGE_ORDERS]   # last block, PFN_NONE if empty
    cdef int64_t nr_free[MIGRATE_TYPES][NR_PAGE_ORDERS]      # blocks on each list
    cdef int64_t area_nr_free[NR_PAGE_ORDERS]                # blocks of each order, all types
    cdef readonly int64_t nr_free_pages                      # free frames, all types (NR_FREE_PAGES)
    cdef int64_t nr_pageblocks_of[MIGRATE_TYPES]             # pageblocks of each migratetype

    # --- watermarks --------------------------------------------------------------------------
    cdef int64_t watermark[NR_WMARK]        # _watermark[], in pages
    cdef readonly int64_t watermark_boost   # pages added to every watermark after a fallback
    cdef public int64_t watermark_boost_factor      # vm.watermark_boost_factor (default 15000)
    cdef readonly int64_t nr_reserved_highatomic    # pages in highatomic pageblocks (0: not reserved here)

    # --- event counters (vmstat) -------------------------------------------------------------
    cdef readonly int64_t pgalloc           # pgalloc_normal: pages allocated
    cdef readonly int64_t pgfree            # pgfree: pages freed
    cdef readonly int64_t alloc_fallbacks   # mm_page_alloc_extfrag events: allocations from another type
    cdef readonly int64_t pageblocks_claimed  # pageblocks whose migratetype an allocation claimed
    cdef int64_t[::1] memcg_pages               # user frames charged to each memcg id (PG_lru frames)

    # --- diagnostics -------------------------------------------------------------------------
    cdef readonly int64_t check_pfn         # frame where check_invariants found a violation, else -1

    # --- nogil kernels -----------------------------------------------------------------------
    cdef void add_to_free_list(self, uint32_t pfn, int order, int mt, bint tail) noexcept nogil
    cdef void del_from_free_list(self, uint32_t pfn, int order, int mt) noexcept nogil
    cdef void move_to_free_list(self, uint32_t pfn, int order, int old_mt, int new_mt) noexcept nogil
    cdef int64_t expand(self, uint32_t pfn, int low, int high, int mt) noexcept nogil
    cdef bint page_is_buddy(self, int64_t pfn, int order) noexcept nogil
    cdef void set_pageblock_migratetype(self, int64_t pfn, int mt) noexcept nogil
    cdef int64_t rmqueue_smallest(self, int order, int mt) noexcept nogil
    cdef int64_t try_to_claim_block(self, uint32_t pfn, int current_order, int order,
                                    int start_type, int block_type, int alloc_flags) noexcept nogil
    cdef int64_t rmqueue_claim(self, int order, int start_mt, int alloc_flags) noexcept nogil
    cdef int64_t rmqueue_steal(self, int order, int start_mt) noexcept nogil
    cdef int64_t rmqueue(self, int order, int mt, int alloc_flags) noexcept nogil
    cdef bint zone_watermark_ok(self, int order, int64_t mark) noexcept nogil
    cdef int64_t get_page_from_freelist(self, int order, int mt, int alloc_flags) noexcept nogil
    cdef void prep_new_page(self, uint32_t pfn, int order, uint8_t page_flags) noexcept nogil
    cdef bint test_lazyfree(self, uint32_t pfn) noexcept nogil
    cdef void set_lazyfree(self, uint32_t pfn, bint on) noexcept nogil
    cdef void free_one_page(self, uint32_t pfn, int order, int mt, bint fpi_to_tail) noexcept nogil
    cdef void free_pages(self, uint32_t pfn, int order) noexcept nogil
    cdef void free_order0_runs(self, uint32_t* pfns, int n) noexcept nogil
    cdef void free_boot_memory(self) noexcept nogil
    cdef void split_large_buddy(self, uint32_t pfn, int order, bint fpi_to_tail) noexcept nogil
    cdef int find_suitable_fallback(self, int order, int mt, bint claimable) noexcept nogil
    cdef bint should_try_claim_block(self, int order, int start_mt) noexcept nogil
    cdef bint boost_watermark(self) noexcept nogil
    cdef int64_t alloc_one(self, int order, int mt, int alloc_flags, uint8_t page_flags) noexcept nogil
    cdef int check_invariants(self) noexcept nogil
    cdef int _check_order_mt(self, int order, int mt) except -1
    cdef int _check_freeable(self, int64_t pfn, int order, int required_flags) except -1


# ---------------------------------------------------------------------------------------------
# Page tables.
#
# A PTE is a uint32:
#   0                                  none
#   bit0=1: present page               bit1 young, bit2 dirty, bit3 write, bits 4..31 pfn
#   bit0=0, bits1..3 == PTE_KIND_SWAP  bits 4..31 swap slot
#   bit0=0, bits1..3 == PTE_KIND_ZERO  the shared zero page (read-only, not in RSS)
#   == PTE_GUARD                       a guard marker: kept by MADV_DONTNEED/FREE, dropped by unmap
# 28 bits of pfn and of slot bound a machine and its swap device at 1 TiB each.
#
# A PMD entry is a uint64 (one array of 512 per GiB of address space, owned by the mm):
#   0                                  none
#   bits0..1 == PMD_KIND_TABLE         bits 32..62: PTE table id
#   bits0..1 == PMD_KIND_HUGE          bit2 young, bit3 dirty, bit4 write, bits 5..31: head pfn >> 9,
#                                      bits 32..62: id of the deposited page table
#   bits0..1 == PMD_KIND_HUGE_ZERO     bits 32..62: id of the deposited page table
cdef enum:
    PTE_PRESENT = 0x1
    PTE_YOUNG = 0x2
    PTE_DIRTY = 0x4
    PTE_WRITE = 0x8
    PTE_PFN_SHIFT = 4
    PTE_KIND_SWAP = 0x2             # (pte & 0xF) for a swap entry
    PTE_KIND_ZERO = 0x4             # (pte & 0xF) for the zero page
    PTE_GUARD = 0x6                 # the whole PTE: a guard-region marker (MADV_GUARD_INSTALL);
                                    # not present, not swap, no page; an access is SIGSEGV
    PTRS_PER_PTE = 512

cdef enum:
    PMD_KIND_MASK = 0x3
    PMD_KIND_TABLE = 0x1
    PMD_KIND_HUGE = 0x2
    PMD_KIND_HUGE_ZERO = 0x3
    PMD_YOUNG = 0x4
    PMD_DIRTY = 0x8
    PMD_WRITE = 0x10
    PMD_PFN_SHIFT = 5               # stores pfn >> 9 from here
    PMD_TABLE_SHIFT = 32
    PTRS_PER_PMD = 512              # entries in one mm PMD array (a GiB of address space)

# Ways a write fault fills pages (fault_pte_range's value_mode).
cdef enum:
    VALUE_CONSTANT = 0              # every page gets `value`
    VALUE_GENERATED = 1             # page at vpn v gets mix(v, value) (never 0)
    VALUE_KEEP = 2                  # a write fault that stores nothing (populate, mlock, GUP):
                                    # pages keep their content, new pages are zero

# Results of PageTables kernels.
cdef enum:
    FAULT_OK = 0
    FAULT_OOM = -1                  # an order-0 allocation failed part way
    FAULT_CHARGE = -2               # the memcg charge budget ran out part way
    FAULT_SLOW = 1                  # a *_pmd_range walk stopped at a region the kernel-model
                                    # layer must handle (none PMD, huge zero write, COW of a
                                    # huge PMD, a split to do, partly mapped THPs to queue)
    FAULT_BAD_PMD = -3              # a PMD entry names no table / THP in use (corrupt state)
    FAULT_SIGSEGV = -4              # a guard marker was touched (stats.stopped_at says where)
    FAULT_MTHP = -5                 # an mTHP fault needs the slow path (allocation or memcg
                                    # charge): stats.stopped_at / stopped_vpn say where,
                                    # stats.mthp_order which order (the highest left to try)

# Orders a multi-size THP can have at an anonymous fault (THP_ORDERS_ALL_ANON below the PMD).
cdef enum:
    MTHP_MIN_ORDER = 2
    NR_MTHP_ORDERS = 10             # per-order stat arrays are indexed by order 0..9


cdef struct FaultStats:
    int64_t anon_allocated          # new anonymous pages mapped (RSS grows by this)
    int64_t zero_mapped             # PTEs newly pointing at the zero page
    int64_t cow_copied              # shared pages copied on write
    int64_t reused                  # read-only exclusive pages made writable in place
    int64_t swapped_in              # pages read back from swap
    int64_t pages_freed             # frames returned to the buddy allocator
    int64_t swap_freed              # swap slots released
    int64_t rss_removed             # present pages unmapped (RSS shrinks by this)
    int64_t thp_partially_unmapped  # THPs left partly mapped (deferred split candidates)
    int64_t swap_ptes_zapped        # swap PTEs cleared by a zap (MM_SWAPENTS shrinks by this)
    int64_t swapped_out             # pages written to swap (pswpout)
    int64_t stopped_at              # PTE index where a fault stopped early (FAULT_OOM/CHARGE)
    int64_t stopped_vpn             # page where a *_pmd_range walk stopped (end when it did not)
    int64_t young_cleared           # accessed bits cleared by a reclaim scan
    int64_t lazyfree_marked         # pages MADV_FREE made lazyfree (pglazyfree)
    int64_t lazyfreed               # clean lazyfree pages reclaim discarded (pglazyfreed)
    int64_t mthp_order              # FAULT_MTHP: the order the slow path should try first
    int64_t mthp_folios             # mTHP folios mapped at fault (one fault each)
    int64_t mthp_pages              # pages of those folios (part of anon_allocated)
    int64_t mthp_alloc[NR_MTHP_ORDERS]      # anon_fault_alloc per order


# Collapse scan results (enum scan_result, 6.10-6.17 order; symbols, not ABI).
cdef enum:
    SCAN_FAIL = 0
    SCAN_SUCCEED = 1
    SCAN_PMD_NULL = 2
    SCAN_PMD_NONE = 3
    SCAN_PMD_MAPPED = 4
    SCAN_EXCEED_NONE_PTE = 5
    SCAN_EXCEED_SWAP_PTE = 6
    SCAN_EXCEED_SHARED_PTE = 7
    SCAN_PTE_NON_PRESENT = 8
    SCAN_PTE_UFFD_WP = 9
    SCAN_PTE_MAPPED_HUGEPAGE = 10
    SCAN_PAGE_RO = 11
    SCAN_LACK_REFERENCED_PAGE = 12
    SCAN_PAGE_NULL = 13
    SCAN_SCAN_ABORT = 14
    SCAN_PAGE_COUNT = 15
    SCAN_PAGE_LRU = 16
    SCAN_PAGE_LOCK = 17
    SCAN_PAGE_ANON = 18
    SCAN_PAGE_COMPOUND = 19
    SCAN_ANY_PROCESS = 20
    SCAN_VMA_NULL = 21
    SCAN_VMA_CHECK = 22
    SCAN_ADDRESS_RANGE = 23
    SCAN_DEL_PAGE_LRU = 24
    SCAN_ALLOC_HUGE_PAGE_FAIL = 25
    SCAN_CGROUP_CHARGE_FAIL = 26
    SCAN_TRUNCATED = 27
    SCAN_PAGE_HAS_PRIVATE = 28
    SCAN_STORE_FAILED = 29
    SCAN_COPY_MC = 30
    SCAN_PAGE_FILLED = 31


cdef struct ScanCounts:
    int none_or_zero
    int unmapped
    int shared
    int referenced
    int present
    bint writable


cdef struct CompactStats:
    int64_t migrate_scanned         # pfns the migrate scanner looked at
    int64_t free_scanned            # pfns the free scanner looked at
    int64_t isolated                # pages isolated: migration sources plus free targets
    int64_t migrated                # pages moved (pgmigrate_success)
    int64_t pageblocks_skipped      # pageblocks passed over on their skip hint


# Compaction results (enum compact_result, in the kernel's order).
cdef enum:
    COMPACT_NOT_SUITABLE_ZONE = 0
    COMPACT_SKIPPED = 1
    COMPACT_DEFERRED = 2
    COMPACT_NO_SUITABLE_PAGE = 3
    COMPACT_CONTINUE = 4
    COMPACT_COMPLETE = 5
    COMPACT_PARTIAL_SKIPPED = 6
    COMPACT_CONTENDED = 7
    COMPACT_SUCCESS = 8


cdef class PageTables:
    """The machine's pool of PTE tables (shared by every mm), and the swap device.

    Invariants (PageTables.check_against proves them with the mms' PMD directories):
      * table ids in use are exactly those referenced by one PMD entry (as a table or as the
        deposit of a huge PMD); each has its own page-table frame (PG_kernel|PG_pgtable);
      * the mapcount of every user frame equals the number of present PTEs and huge PMDs that
        map it; a user frame with mapcount 0 is part of a large folio (a THP, or an mTHP of
        order MTHP_MIN_ORDER..8, always PTE-mapped) that is still partly mapped;
      * swap_map[slot] equals the number of swap PTEs that point at the slot.
    """
    cdef Zone zone
    cdef readonly int64_t capacity          # tables the pool can hold without growing
    cdef readonly int64_t nr_tables         # tables in use (NR_PAGETABLE)
    cdef uint32_t[::1] ptes                 # capacity * 512 PTEs
    cdef uint32_t[::1] table_pfn            # frame backing each table id (PFN_NONE when unused)
    cdef uint32_t[::1] free_ids             # stack of unused ids below capacity
    cdef int64_t nr_free_ids
    # swap device
    cdef readonly int64_t swap_slots        # size of the swap device in pages
    cdef readonly int64_t swap_used         # slots in use
    cdef int64_t swap_cursor                # next slot to try (scan_swap_map-like cursor)
    cdef uint8_t[::1] swap_map              # references to each slot (0 = free)
    cdef uint32_t[::1] swap_content         # the content word stored in each slot
    cdef uint32_t partial_head_pfns[512]        # THPs the last zap left partly mapped
    # compaction state (struct zone's compact_* fields)
    cdef uint8_t[::1] pb_skip               # PB_migrate_skip hint of each pageblock
    cdef readonly int64_t cached_migrate_pfn    # where the next migrate scan starts
    cdef readonly int64_t cached_free_pfn       # where the next free scan starts (a pageblock)
    cdef CompactStats cstats
    cdef int nr_partial_heads
    cdef FaultStats stats                   # results of the last kernel call
    cdef public int64_t charge_budget       # pages faults may still charge (-1: unlimited)
    # mTHP at fault (alloc_anon_folio): the orders the faulting VMA allows (bit k: order k,
    # only MTHP_MIN_ORDER..8; 0 = order-0 pages only), its bounds in pages (a folio's aligned
    # range must lie inside), and the fast-path alloc_flags. Set by the caller per fault call.
    cdef public int mthp_orders
    cdef public int64_t mthp_vma_start
    cdef public int64_t mthp_vma_end
    cdef public int mthp_alloc_flags

    cdef int64_t table_alloc(self) noexcept nogil
    cdef void table_free(self, int64_t tid) noexcept nogil
    cdef int64_t alloc_user_page(self, uint32_t content, uint16_t memcg) noexcept nogil
    cdef void put_user_frame(self, uint32_t pfn) noexcept nogil
    cdef void free_order0_batch(self, uint32_t* pfns, int n) noexcept nogil
    cdef void note_folio_unmapped(self, uint32_t pfn) noexcept nogil
    cdef int64_t folio_head(self, uint32_t pfn) noexcept nogil
    cdef int do_anonymous_mthp(self, int64_t base, int i, int64_t vpn, uint16_t memcg) noexcept nogil
    cdef void set_folio_ptes(self, int64_t base, int idx, uint32_t head, int order,
                             uint16_t memcg) noexcept nogil
    cdef int fault_pte_range(self, int64_t tid, int i0, int i1, bint write, bint vma_write,
                             int64_t vpn0, int value_mode, uint32_t value, uint32_t* out,
                             uint16_t memcg) noexcept nogil
    cdef void zap_pte_range(self, int64_t tid, int i0, int i1, bint keep_guards) noexcept nogil
    cdef bint pmd_valid(self, uint64_t entry) noexcept nogil
    cdef int fault_pmd_range(self, uint64_t* pmds, int64_t vpn, int64_t vpn_end, bint write,
                             bint vma_write, int value_mode, uint32_t value, uint32_t* out,
                             uint16_t memcg) noexcept nogil
    cdef int zap_pmd_range(self, uint64_t* pmds, int64_t vpn, int64_t vpn_end,
                           bint keep_guards) noexcept nogil
    cdef int _check_pmd_range(self, uint64_t[::1] pmds, int64_t vpn, int64_t vpn_end) except -1
    cdef int64_t swap_alloc_slot(self) noexcept nogil
    cdef int64_t swap_alloc_cluster(self) noexcept nogil
    cdef void pageout_pte_range(self, int64_t tid, int i0, int i1, bint can_swap) noexcept nogil
    cdef int reclaim_lazyfree_pte(self, int64_t idx, uint32_t pte) noexcept nogil
    cdef int64_t whole_lazyfree_folio(self, int64_t base) noexcept nogil
    cdef int64_t reclaim_lazyfree_folio(self, int64_t base, uint32_t head, bint check_young) noexcept nogil
    cdef void madvise_free_pte_range(self, int64_t tid, int i0, int i1) noexcept nogil
    cdef bint swappable(self, uint32_t pfn) noexcept nogil
    cdef bint swap_out_pte(self, int64_t idx, uint32_t pfn) noexcept nogil
    cdef int64_t reclaim_pte_range(self, int64_t tid, int i0, int i1, int64_t want, uint16_t memcg, bint any_memcg,
                                   bint can_swap) noexcept nogil
    cdef ScanCounts scan
    cdef int scan_pte_table(self, int64_t tid, bint is_khugepaged, int max_none, int max_swap,
                            int max_shared, bint require_writable) noexcept nogil
    cdef int _check_tid(self, int64_t tid) except -1
    cdef int _check_pte_range(self, int64_t tid, int i0, int i1) except -1
    cdef bint compaction_finished(self, int order) noexcept nogil
    cdef int64_t build_rmap(self, int64_t lo, int64_t hi, uint32_t* offs, uint32_t** slots_p,
                            int64_t* cap_p) noexcept nogil
    cdef int _compact_run(self, int order, bint sync, bint whole_zone, int64_t max_migrate,
                          uint32_t* offs, int64_t wsize, uint32_t** slots_p, int64_t* cap_p,
                          uint32_t[::1] targets, int64_t ntmax)
    cdef int _check_thp(self, int64_t head, int i0, int i1) except -1

