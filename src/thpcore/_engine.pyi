"""Type stubs for thpcore._engine (hand-written; keep in step with _engine.pyx/.pxd)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DEBUG: bool
"""True in the bounds-checked debug build (THPCORE_DEBUG=1)."""

PY_MAX_PAGE_ORDER: int      # 10
PY_PAGEBLOCK_ORDER: int     # 9
PY_MIGRATE_TYPES: int       # 5: unmovable, movable, reclaimable, highatomic, isolate
PY_ALLOC_WMARK_MIN: int
PY_ALLOC_WMARK_LOW: int
PY_ALLOC_WMARK_HIGH: int
PY_ALLOC_NO_WATERMARKS: int
PY_ALLOC_NOFRAGMENT: int
PY_ALLOC_KSWAPD: int
PY_PG_BUDDY: int
PY_PG_HEAD: int
PY_PG_TAIL: int
PY_PG_LRU: int
PY_PG_MOVABLE_OPS: int
PY_PG_KERNEL: int
CHECK_MESSAGES: dict[int, str]

class Zone:
    """One zone's frame table and buddy free lists (see _engine.pxd for the invariants)."""

    nr_pages: int
    nr_pageblocks: int
    nr_free_pages: int
    watermark_boost: int
    watermark_boost_factor: int
    nr_reserved_highatomic: int
    pgalloc: int
    pgfree: int
    alloc_fallbacks: int
    pageblocks_claimed: int
    check_pfn: int

    def __init__(self, nr_pages: int) -> None:
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
    def check(self) -> int:
        """0 when every invariant holds, else a CHECK_* code (CHECK_MESSAGES)."""
    def set_watermarks(self, wmin: int, wlow: int, whigh: int) -> None: ...
    def watermarks(self) -> tuple[int, int, int]: ...
    def clear_watermark_boost(self) -> None: ...
    def free_area(self) -> npt.NDArray[np.int64]:
        """Free block counts, shape (5, 11): [migratetype, order]."""
    def pageblock_counts(self) -> npt.NDArray[np.int64]:
        """Pageblocks per migratetype, shape (5,)."""
    def frames(self) -> dict[str, np.ndarray]:
        """Read-only views: flags, order, memcg, mapcount, content, pageblock_mt."""
    def counters(self) -> dict[str, int]: ...
    def free_list(self, mt: int, order: int) -> list[int]:
        """The pfns on one free list, head first."""
    @property
    def nbytes(self) -> int:
        """Bytes of RAM held by the frame table and pageblock array."""

def set_rmap_window(frames: int) -> int:
    """Frames per compaction reverse-map window (positive multiple of 512); returns the old one.
    Results never depend on it (4 bytes per window frame are held during a compaction run)."""
