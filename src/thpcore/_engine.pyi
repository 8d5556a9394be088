"""Type stubs for thpcore._engine (hand-written; keep in step with _engine.pyx/.pxd)."""

from collections.abc import Iterable, Sequence
from typing import Final, Self, TypedDict, type_check_only

import numpy as np
import numpy.typing as npt
from typing_extensions import disjoint_base

DEBUG: Final[bool]
"""True in the bounds-checked debug build (THPCORE_DEBUG=1)."""

# ---- page-allocator geometry and flags (mm/page_alloc.c, mm/internal.h) ----------------------
PY_MAX_PAGE_ORDER: Final = 10
"""Largest buddy order (inclusive): 4 MiB blocks."""
PY_PAGEBLOCK_ORDER: Final = 9
"""Order of a pageblock (== HPAGE_PMD_ORDER): 512 frames."""
PY_MIGRATE_TYPES: Final = 5
"""Number of migratetypes: unmovable, movable, reclaimable, highatomic, isolate."""
PY_ALLOC_WMARK_MIN: Final = 0
"""alloc_flags: check against the min watermark."""
PY_ALLOC_WMARK_LOW: Final = 1
"""alloc_flags: check against the low watermark."""
PY_ALLOC_WMARK_HIGH: Final = 2
"""alloc_flags: check against the high watermark."""
PY_ALLOC_NO_WATERMARKS: Final = 4
"""alloc_flags: ignore the watermarks."""
PY_ALLOC_NOFRAGMENT: Final = 0x100
"""alloc_flags: first pass may not fall back below pageblock order."""
PY_ALLOC_KSWAPD: Final = 0x800
"""alloc_flags: the gfp may wake kswapd (watermark-boost bookkeeping)."""
PY_PG_BUDDY: Final = 0x01
"""Frame flag: head of a free buddy block."""
PY_PG_HEAD: Final = 0x02
"""Frame flag: head of an allocated block (order 0 included)."""
PY_PG_TAIL: Final = 0x04
"""Frame flag: allocated frame inside a block, not its head."""
PY_PG_LRU: Final = 0x08
"""Frame flag: user page on an LRU list (movable, migratable)."""
PY_PG_MOVABLE_OPS: Final = 0x10
"""Frame flag: kernel page with movable_ops (zsmalloc, balloon)."""
PY_PG_KERNEL: Final = 0x20
"""Frame flag: allocated by the kernel."""
PY_PG_PGTABLE: Final = 0x40
"""Frame flag: a page-table page (with PG_kernel) backing one PTE table."""

# ---- page-table encodings (see _engine.pxd) --------------------------------------------------
PY_PMD_KIND_TABLE: Final = 0x1
"""PMD kind (bits 0..1): points at a PTE table."""
PY_PMD_KIND_HUGE: Final = 0x2
"""PMD kind (bits 0..1): maps a THP."""
PY_PMD_KIND_HUGE_ZERO: Final = 0x3
"""PMD kind (bits 0..1): maps the huge zero page."""
PY_FAULT_SLOW: Final = 1
"""fault_range/zap_range: stopped at a region the kernel-model layer must handle."""
PY_FAULT_SIGSEGV: Final = -4
"""A fault reached a guard marker (MADV_GUARD_INSTALL)."""
PY_FAULT_MTHP: Final = -5
"""fault_range: an mTHP allocation needs the kernel model's slow path (allocation or memcg charge)."""
PY_MTHP_MIN_ORDER: Final = 2
"""Smallest anonymous mTHP order (16 kB)."""
PY_FAULT_BAD_PMD: Final = -3
"""fault_range/zap_range: a PMD entry names no table or THP in use (corrupt state)."""
PY_PTE_PRESENT: Final = 0x1
"""PTE bit: present page (pfn in bits 4..31)."""
PY_PTE_YOUNG: Final = 0x2
"""PTE bit: accessed."""
PY_PTE_DIRTY: Final = 0x4
"""PTE bit: dirty."""
PY_PTE_WRITE: Final = 0x8
"""PTE bit: writable."""
PY_PTE_KIND_SWAP: Final = 0x2
"""(pte & 0xF) of a swap entry (slot in bits 4..31)."""
PY_PTE_KIND_ZERO: Final = 0x4
"""(pte & 0xF) of a PTE mapping the shared zero page."""
PY_PTE_GUARD: Final = 0x6
"""A whole PTE holding a guard-region marker."""
PY_VALUE_CONSTANT: Final = 0
"""Write-fault value_mode: every page gets `value`."""
PY_VALUE_GENERATED: Final = 1
"""Write-fault value_mode: the page at vpn v gets a non-zero mix(v, value)."""
PY_VALUE_KEEP: Final = 2
"""Write-fault value_mode: store nothing (populate/mlock): pages keep content, new ones are 0."""

CHECK_MESSAGES: Final[dict[int, str]]
"""Zone.check() code -> description of the violated invariant."""
SCAN_RESULTS: Final[list[str]]
"""Names of the SCAN_* collapse results (enum scan_result), indexed by code."""
REGION_FIELDS: Final[tuple[str, str, str, str, str, str, str]]
"""Column names of scan_pagemap()'s result."""

# ---- dicts the engine returns (C structs converted by Cython) --------------------------------
@type_check_only
class ZoneCounters(TypedDict):
    """Zone.counters(): scalar free-list bookkeeping and vmstat events."""

    nr_free_pages: int
    pgalloc: int
    pgfree: int
    alloc_fallbacks: int
    pageblocks_claimed: int
    watermark_boost: int

@type_check_only
class FaultStats(TypedDict):
    """PageTables.get_stats(): results of the kernel calls since reset_stats()."""

    anon_allocated: int
    zero_mapped: int
    cow_copied: int
    reused: int
    swapped_in: int
    pages_freed: int
    swap_freed: int
    rss_removed: int
    thp_partially_unmapped: int
    swap_ptes_zapped: int
    swapped_out: int
    stopped_at: int
    stopped_vpn: int
    young_cleared: int
    lazyfree_marked: int
    lazyfreed: int
    mthp_order: int
    mthp_folios: int
    mthp_pages: int
    mthp_alloc: list[int]

@type_check_only
class ScanCounts(TypedDict):
    """PageTables.scan_pmd(): counts of one PTE table's collapse scan."""

    none_or_zero: int
    unmapped: int
    shared: int
    referenced: int
    present: int
    writable: bool

@type_check_only
class CompactStats(TypedDict):
    """PageTables.compact_stats(): figures of the last compaction run."""

    migrate_scanned: int
    free_scanned: int
    isolated: int
    migrated: int
    pageblocks_skipped: int

@disjoint_base
class Zone:
    """One zone's frame table and buddy free lists (see _engine.pxd for the invariants)."""

    @property
    def nr_pages(self) -> int:
        """Frames in the zone (managed == present == spanned), a multiple of 512."""
    @property
    def nr_pageblocks(self) -> int:
        """nr_pages / 512."""
    @property
    def nr_free_pages(self) -> int:
        """Free frames of every type but isolate (NR_FREE_PAGES)."""
    @property
    def watermark_boost(self) -> int:
        """Pages added to every watermark after a fallback."""
    watermark_boost_factor: int
    """vm.watermark_boost_factor (default 15000; 0 disables boosting)."""
    @property
    def nr_reserved_highatomic(self) -> int:
        """Pages in highatomic pageblocks."""
    @property
    def pgalloc(self) -> int:
        """pgalloc_normal: pages allocated."""
    @property
    def pgfree(self) -> int:
        """pgfree: pages freed (boot frees included)."""
    @property
    def alloc_fallbacks(self) -> int:
        """mm_page_alloc_extfrag events: allocations served from another migratetype."""
    @property
    def pageblocks_claimed(self) -> int:
        """Pageblocks whose migratetype an allocation claimed."""
    @property
    def check_pfn(self) -> int:
        """Frame where the last check() found a violation, else -1."""

    def __new__(cls, nr_pages: int) -> Self:
        """nr_pages: a positive multiple of 512 below 2**32 - 1. Boot frees every frame."""
    def alloc(self, order: int, mt: int, alloc_flags: int, page_flags: int) -> int:
        """pfn of a new 2**order block, or -1 when the watermark or the free lists refuse."""
    def alloc_bulk(self, order: int, mt: int, count: int, alloc_flags: int,
                   page_flags: int) -> npt.NDArray[np.uint32]:
        """Up to `count` blocks; stops at the first refusal."""
    def free(self, pfn: int, order: int, required_flags: int = 0) -> None:
        """Free the block headed by pfn; ValueError (state unchanged) if it is not one."""
    def free_bulk(self, pfns: Sequence[int] | npt.ArrayLike, order: int,
                  required_flags: int = 0) -> None:
        """Free many blocks; every one is validated before any is freed."""
    def free_runs(self, pfns: Sequence[int] | npt.ArrayLike) -> None:
        """Free up to 512 order-0 blocks (validated first), aligned runs merged as one block."""
    def check(self) -> int:
        """0 when every invariant holds, else a CHECK_* code (CHECK_MESSAGES)."""
    def watermark_ok(self, order: int, mark: int) -> bool:
        """__zone_watermark_ok() for an order and a mark in pages (no reserves)."""
    def set_watermarks(self, wmin: int, wlow: int, whigh: int) -> None:
        """Set (min, low, high) in pages; ValueError unless 0 <= min <= low <= high."""
    def watermarks(self) -> tuple[int, int, int]:
        """(min, low, high) in pages, without the boost."""
    def clear_watermark_boost(self) -> None:
        """Drop the watermark boost to 0 (as kswapd does after reclaim)."""
    def free_area(self) -> npt.NDArray[np.int64]:
        """Free block counts, shape (5, 11): [migratetype, order]."""
    def pageblock_counts(self) -> npt.NDArray[np.int64]:
        """Pageblocks per migratetype, shape (5,)."""
    def frames(self) -> dict[str, np.ndarray]:
        """Read-only views: flags, order, memcg, mapcount, content, pageblock_mt."""
    def lazyfree_bits(self) -> npt.NDArray[np.uint8]:
        """Read-only view of the lazyfree bitmap (bit pfn & 7 of byte pfn >> 3)."""
    def lazyfree_mask(self, pfns: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Per pfn: lazyfree (MADV_FREE, not yet found re-dirtied by reclaim)?"""
    def set_lazyfree_range(self, pfn: int, n: int, on: bool) -> None:
        """Mark or clear frames pfn..pfn+n-1 lazyfree (a whole folio at a time)."""
    def save_state(self) -> dict:
        """A copy of the whole zone (frame table, free lists, counters, watermarks)."""
    def restore_state(self, state: dict, verify: bool = True) -> None:
        """Make this zone exactly the one save_state() copied (same size required)."""
    def counters(self) -> ZoneCounters:
        """Scalar state (free-list bookkeeping and events), for hashing and vmstat."""
    def memcg_usage(self) -> npt.NDArray[np.int64]:
        """User frames charged to each memcg id, shape (65536,), read-only."""
    def free_list(self, mt: int, order: int) -> list[int]:
        """The pfns on one free list, head first."""
    @property
    def nbytes(self) -> int:
        """Bytes of RAM held by the frame table and pageblock array."""

def set_rmap_window(frames: int) -> int:
    """Frames per compaction reverse-map window (positive multiple of 512); returns the old one.
    Results never depend on it (4 bytes per window frame are held during a compaction run)."""

@disjoint_base
class PageTables:
    """The machine's pool of PTE tables (shared by every mm), and the swap device."""

    @property
    def capacity(self) -> int:
        """Tables the pool can hold without growing."""
    @property
    def nr_tables(self) -> int:
        """Tables in use (NR_PAGETABLE)."""
    @property
    def swap_slots(self) -> int:
        """Size of the swap device in pages (slot 0 is the header)."""
    @property
    def swap_used(self) -> int:
        """Swap slots in use."""
    @property
    def cached_migrate_pfn(self) -> int:
        """Where the next compaction migrate scan starts."""
    @property
    def cached_free_pfn(self) -> int:
        """Where the next compaction free scan starts (a pageblock)."""
    charge_budget: int
    """Pages faults may still charge to a memcg (-1: unlimited)."""
    mthp_orders: int
    """mTHP orders a write fault on a none PTE may allocate (bit k = order k, 2..8; 0: none)."""
    mthp_vma_start: int
    """First page of the faulting VMA (an mTHP's aligned range must lie inside)."""
    mthp_vma_end: int
    """Page after the faulting VMA."""
    mthp_alloc_flags: int
    """alloc_flags of the engine's fast mTHP allocation (the slow path is the caller's)."""

    def __new__(cls, zone: Zone, swap_slots: int) -> Self:
        """A pool over `zone` with a swap device of swap_slots pages (< 2**28)."""
    def reserve(self, n: int) -> None:
        """Make sure n more tables can be taken without growing the pool."""
    def reset_stats(self) -> None:
        """Zero get_stats() and forget the partly mapped THPs."""
    def get_stats(self) -> FaultStats:
        """Results of the kernel calls since reset_stats()."""
    def partial_heads(self) -> list[int]:
        """Head pfns of THPs that zaps left partly mapped (deferred split candidates)."""
    def new_table(self) -> int:
        """A new zeroed PTE table id, or -1 when there is no memory for the page-table page."""
    def release_table(self, tid: int) -> None:
        """Free a table whose PTEs are all none (zap them first)."""
    def table(self, tid: int) -> npt.NDArray[np.uint32]:
        """A writable view of the 512 PTEs of a table."""
    def table_frame(self, tid: int) -> int:
        """The pfn of the page-table page backing a table."""
    def fault(self, tid: int, i0: int, i1: int, write: bool, vma_write: bool, vpn0: int,
              value_mode: int, value: int, out: npt.NDArray[np.uint32] | None = None,
              memcg: int = 0) -> int:
        """handle_pte_fault() for PTEs i0..i1-1 (reads fill `out`): 0, -1 (OOM) or -2 (charge)."""
    def zap(self, tid: int, i0: int, i1: int, keep_guards: bool = False) -> None:
        """zap_pte_range(): clear PTEs i0..i1-1, dropping pages and swap slots (guard markers
        too unless keep_guards)."""
    def guard(self, tid: int, i0: int, i1: int, install: bool) -> int:
        """Install guard markers on the none PTEs i0..i1-1, or remove the markers there;
        returns how many changed."""
    def fault_range(self, pmds: npt.NDArray[np.uint64], vpn: int, vpn_end: int, write: bool,
                    vma_write: bool, value_mode: int, value: int,
                    out: npt.NDArray[np.uint32] | None = None, memcg: int = 0) -> int:
        """Fault pages vpn..vpn_end-1 of one GiB (PMD array `pmds`) through PTE tables and
        ready huge PMDs, stats accumulating: 0, 1 (a region needs the kernel-model layer),
        -1/-2 (OOM/charge) or -3 (corrupt PMD), stopping at get_stats().stopped_vpn."""
    def zap_range(self, pmds: npt.NDArray[np.uint64], vpn: int, vpn_end: int,
                  keep_guards: bool = False) -> int:
        """Zap pages vpn..vpn_end-1 of PTE-table regions of one GiB: 0, 1 (a huge PMD or partly
        mapped THPs to queue) or -3, stopping at get_stats().stopped_vpn."""
    def reclaim(self, tid: int, i0: int, i1: int, want: int, memcg: int = -1,
                can_swap: bool = True) -> int:
        """One second-chance pass over PTEs i0..i1-1: old clean lazyfree pages are discarded,
        other old pages swapped out (can_swap); pages freed."""
    def pageout(self, tid: int, i0: int, i1: int, can_swap: bool = True) -> None:
        """Reclaim the exclusive order-0 pages mapped by PTEs i0..i1-1: clean lazyfree pages
        are discarded, re-dirtied ones kept, the rest swapped out (can_swap)."""
    def madvise_free(self, tid: int, i0: int, i1: int) -> None:
        """MADV_FREE over PTEs i0..i1-1: swap entries dropped, exclusive pages made old, clean
        and lazyfree (stats lazyfree_marked, swap_ptes_zapped)."""
    def swap_out_thp(self, tid: int, head: int) -> int:
        """Swap out a PTE-mapped exclusive THP into one free cluster; its first slot, or -1."""
    def split_folio(self, head: int) -> int:
        """split_huge_page() of a THP or mTHP into order-0 folios; returns how many unmapped
        subpages were freed. ValueError unless head heads a large user folio."""
    def copy_table(self, src: int, dst: int) -> None:
        """copy_pte_range() for a private mapping (fork): write-protect, share, ref swap slots."""
    def scan_pmd(self, tid: int, is_khugepaged: bool, max_none: int, max_swap: int,
                 max_shared: int, require_writable: bool) -> tuple[int, ScanCounts]:
        """Scan one PTE table for collapse: (SCAN_* code, counts)."""
    def scan_regions(self, tids: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8],
                     counts: npt.NDArray[np.int16], is_khugepaged: bool, max_none: int,
                     max_swap: int, max_shared: int, require_writable: bool) -> int:
        """Scan regions into codes/counts; stops after the first SCAN_SUCCEED. Regions handled."""
    def collapse_run(self, tids: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8],
                     counts: npt.NDArray[np.int16], heads: npt.NDArray[np.uint32],
                     alloc_fast: int, alloc_slow: int, memcg: int = 0,
                     stop_on_alloc_fail: bool = False) -> int:
        """madvise_collapse()'s region loop (no swap-in): scan, allocate, copy; regions handled."""
    def table_stats(self, tids: npt.NDArray[np.int64],
                    clear_young: bool = False) -> npt.NDArray[np.int32]:
        """Per table present/swapped/none-or-zero/shared/young PTEs, shape (len(tids), 5)."""
    def collapse_copy(self, tid: int, head: int) -> int:
        """__collapse_huge_page_copy() into the THP at head; present PTEs released."""
    def compact(self, order: int, sync: bool, whole_zone: bool, max_migrate: int = -1) -> int:
        """compact_zone() for MOVABLE requests of `order` (-1: full); a COMPACT_* code."""
    def compact_stats(self) -> CompactStats:
        """Figures of the last compact() run."""
    def put_frame(self, pfn: int) -> None:
        """Drop one mapping of a user frame (PMD-level zaps)."""
    def map_thp(self, head: int, delta: int) -> None:
        """Add delta to the mapcount of every frame of the THP at head (PMD map/unmap)."""
    def alloc_thp(self, alloc_flags: int, memcg: int = 0, order: int = 9) -> int:
        """A zeroed movable folio of `order` (1..9), each frame mapped once; head pfn, or -1."""
    def map_anon_folio(self, tid: int, i: int, head: int, memcg: int = 0) -> None:
        """Map an mTHP from alloc_thp at the all-none aligned PTE range around index i (young,
        dirty, writable), counting it in the stats as a fault would."""
    def folio_heads(self, pfns: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64],
                                                                 npt.NDArray[np.int64]]:
        """(heads, orders) of the allocated blocks holding each pfn; -1 and 0 where none.
        ValueError for a pfn outside the zone."""
    def thp_write(self, head: int, i0: int, i1: int, value_mode: int, value: int,
                  vpn0: int) -> None:
        """Store content words into subpages i0..i1-1 of a THP (a write through its PMD)."""
    def thp_read(self, head: int, i0: int, i1: int) -> npt.NDArray[np.uint32]:
        """A copy of the content words of subpages i0..i1-1 of a THP."""
    def check_against(self, tables: Iterable[int], huge_heads: Iterable[int],
                      zero_pmds: int = 0) -> str | None:
        """Prove the pool against the mms' table ids and PMD-mapped THP heads; error or None."""
    @property
    def nbytes(self) -> int:
        """Bytes of RAM held by the PTE pool."""

def scan_pagemap(pagemap: npt.NDArray[np.uint64], kpageflags: npt.NDArray[np.uint64],
                 kpagecount: npt.NDArray[np.uint64], first_vpn: int) -> npt.NDArray[np.int32]:
    """Per 2 MiB region page counts from /proc pagemap data: int32 (regions, 7), REGION_FIELDS."""

def tlb_simulate(vpns: npt.NDArray[np.int64], huge_region: npt.NDArray[np.uint8],
                 first_region: int, l1_4k_entries: int = 64, l1_4k_ways: int = 4,
                 l1_2m_entries: int = 32, l1_2m_ways: int = 4, stlb_entries: int = 1536,
                 stlb_ways: int = 12) -> tuple[int, int, int]:
    """Replay an access stream against set-associative LRU TLBs: (l1_hits, stlb_hits, walks)."""
