"""The page allocator's policy half (mm/page_alloc.c): watermarks, min_free_kbytes, and the
kernel-side allocation interface scenarios use to fragment memory on purpose.

The free lists themselves live in the engine (`_engine.Zone`); this module decides the
watermarks and the alloc_flags a request runs with, and validates every request first.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Sequence

import numpy as np

import thpcore._engine as _engine
from thpcore.constants import MAX_PAGE_ORDER, PAGEBLOCK_ORDER

PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1

# migratetype_names[] of mm/page_alloc.c for a kernel without CONFIG_CMA, in enum order.
MIGRATETYPE_NAMES = ("Unmovable", "Movable", "Reclaimable", "HighAtomic", "Isolate")
MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE, MIGRATE_HIGHATOMIC, MIGRATE_ISOLATE = range(5)
# Types a caller may ask for (the gfp-derived ones); highatomic and isolate are states, not requests.
ALLOCATABLE_TYPES = {"unmovable": MIGRATE_UNMOVABLE, "movable": MIGRATE_MOVABLE,
                     "reclaimable": MIGRATE_RECLAIMABLE}

# vm.* sysctl defaults
DEFAULT_WATERMARK_SCALE_FACTOR = 10
DEFAULT_WATERMARK_BOOST_FACTOR = 15000
DEFAULT_EXTFRAG_THRESHOLD = 500
DEFAULT_COMPACTION_PROACTIVENESS = 20


def migratetype_from_name(name: str) -> int:
    """'unmovable' -> MIGRATE_UNMOVABLE; names as /proc/pagetypeinfo prints them, lower-case."""
    if not isinstance(name, str):
        raise TypeError(f"migratetype must be a string, not {type(name).__name__}")
    key = name.lower()
    if key in ALLOCATABLE_TYPES:
        return ALLOCATABLE_TYPES[key]
    if key in ("highatomic", "isolate"):
        raise ValueError(f"migratetype {name!r} is a pageblock state; allocations ask for "
                         "'unmovable', 'movable' or 'reclaimable'")
    raise ValueError(f"unknown migratetype {name!r}; expected one of {sorted(ALLOCATABLE_TYPES)}")


def calculate_min_free_kbytes(nr_free_buffer_pages: int, user_min_free_kbytes: int = -1,
                              current: int | None = None) -> int:
    """calculate_min_free_kbytes(): sqrt(16 * lowmem kB), clamped to [128, 262144]."""
    new = math.isqrt(nr_free_buffer_pages * 4 * 16)
    if new > user_min_free_kbytes:
        return min(max(new, 128), 262144)
    return current if current is not None else user_min_free_kbytes


def recommended_min_free_kbytes(nr_zones: int, nr_free_buffer_pages: int) -> int:
    """set_recommended_min_free_kbytes() of mm/khugepaged.c, before the 'only raise' test.

    Two free pageblocks per zone for fragmentation avoidance, plus MIGRATE_PCPTYPES**2 per zone
    so that fallbacks find almost-free blocks; never more than 5% of lowmem.
    """
    recommended = PAGEBLOCK_NR_PAGES * nr_zones * 2
    recommended += PAGEBLOCK_NR_PAGES * nr_zones * 3 * 3
    recommended = min(recommended, nr_free_buffer_pages // 20)
    return recommended * 4


def setup_per_zone_wmarks(min_free_kbytes: int, managed_pages: Sequence[int],
                          watermark_scale_factor: int = DEFAULT_WATERMARK_SCALE_FACTOR
                          ) -> list[tuple[int, int, int]]:
    """__setup_per_zone_wmarks(): (min, low, high) in pages for each lowmem zone."""
    pages_min = min_free_kbytes >> 2
    lowmem_pages = sum(managed_pages)
    out = []
    for managed in managed_pages:
        wmin = pages_min * managed // lowmem_pages if lowmem_pages else 0
        delta = max(wmin >> 2, managed * watermark_scale_factor // 10000)
        out.append((wmin, wmin + delta, wmin + 2 * delta))
    return out


def fragmentation_index(free_area: np.ndarray, order: int) -> int:
    """__fragmentation_index() x1000: -1000 if a block of >= order is free, 0 with nothing free,
    else 1000 - (1000 + 1000*free_pages/requested) / free_blocks (near 1000: fragmentation)."""
    per_order = free_area.sum(axis=0)
    free_blocks_total = int(per_order.sum())
    free_pages = int(sum(int(n) << o for o, n in enumerate(per_order)))
    suitable = int(per_order[order:].sum())
    if free_blocks_total == 0:
        return 0
    if suitable:
        return -1000
    requested = 1 << order
    return 1000 - (1000 + free_pages * 1000 // requested) // free_blocks_total


class PageAllocator:
    """The zone and its watermark policy, as one Kernel sees it."""

    def __init__(self, nr_pages: int):
        self.zone = _engine.Zone(nr_pages)
        self.nr_zones = 1                  # ZONE_NORMAL only
        self.user_min_free_kbytes = -1
        self.watermark_scale_factor = DEFAULT_WATERMARK_SCALE_FACTOR
        self.extfrag_threshold = DEFAULT_EXTFRAG_THRESHOLD
        self.compaction_proactiveness = DEFAULT_COMPACTION_PROACTIVENESS
        self.min_free_kbytes = 0
        # init_per_zone_wmark_min() runs before any watermark exists (high = 0).
        self.min_free_kbytes = calculate_min_free_kbytes(self.nr_free_buffer_pages())
        self.setup_per_zone_wmarks()

    @property
    def managed_pages(self) -> int:
        return int(self.zone.nr_pages)

    @property
    def watermark_boost_factor(self) -> int:
        return int(self.zone.watermark_boost_factor)

    @watermark_boost_factor.setter
    def watermark_boost_factor(self, value: int) -> None:
        self.zone.watermark_boost_factor = value

    def nr_free_buffer_pages(self) -> int:
        """nr_free_zone_pages(gfp_zone(GFP_USER)): managed pages above the high watermark."""
        high = self.zone.watermarks()[2]
        return max(self.managed_pages - high, 0)

    def setup_per_zone_wmarks(self) -> None:
        (wmin, wlow, whigh), = setup_per_zone_wmarks(self.min_free_kbytes, [self.managed_pages],
                                                     self.watermark_scale_factor)
        self.zone.set_watermarks(wmin, wlow, whigh)
        self.zone.clear_watermark_boost()

    def set_recommended_min_free_kbytes(self, pmd_thp_enabled: bool) -> None:
        """Run on every start/stop of khugepaged (a write to a THP 'enabled' knob)."""
        if not pmd_thp_enabled:
            self.min_free_kbytes = calculate_min_free_kbytes(
                self.nr_free_buffer_pages(), self.user_min_free_kbytes, self.min_free_kbytes)
        else:
            recommended = recommended_min_free_kbytes(self.nr_zones, self.nr_free_buffer_pages())
            if recommended > self.min_free_kbytes:
                self.min_free_kbytes = recommended
        self.setup_per_zone_wmarks()

    def zone_watermark_ok(self, order: int, mark: int) -> bool:
        return self.zone.watermark_ok(order, mark)

    # ---- kernel-side allocations -------------------------------------------------------------

    @staticmethod
    def _validate_order(order: int) -> int:
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
            raise TypeError(f"order must be an int, not {type(order).__name__}")
        if not 0 <= order <= MAX_PAGE_ORDER:
            raise ValueError(f"order must be in 0..{MAX_PAGE_ORDER}, got {order}")
        return int(order)

    def _kernel_page_flags(self, mt: int) -> int:
        # A movable kernel allocation is one with movable_ops (zsmalloc, balloon pages).
        return _engine.PY_PG_KERNEL | (_engine.PY_PG_MOVABLE_OPS if mt == MIGRATE_MOVABLE else 0)

    def kernel_alloc(self, order: int, migratetype: str = "unmovable") -> int:
        """alloc_pages(GFP_KERNEL-like, order): fast path at the low watermark, then the slow
        path at min. Direct reclaim and compaction are not attempted yet: ENOMEM instead."""
        order = self._validate_order(order)
        mt = migratetype_from_name(migratetype)
        flags = self._kernel_page_flags(mt)
        nofrag = _engine.PY_ALLOC_NOFRAGMENT | _engine.PY_ALLOC_KSWAPD
        pfn = self.zone.alloc(order, mt, _engine.PY_ALLOC_WMARK_LOW | nofrag, flags)
        if pfn < 0:
            pfn = self.zone.alloc(order, mt, _engine.PY_ALLOC_WMARK_MIN | nofrag, flags)
        if pfn < 0:
            raise OSError(errno.ENOMEM, f"order-{order} {migratetype} allocation failed",
                          None)
        return int(pfn)

    def kernel_alloc_bulk(self, order: int, migratetype: str, count: int) -> np.ndarray:
        """Up to count allocations at the min watermark; returns the pfns it got (maybe fewer)."""
        order = self._validate_order(order)
        mt = migratetype_from_name(migratetype)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError("count must be an int")
        if count < 0:
            raise ValueError("count must be >= 0")
        return self.zone.alloc_bulk(order, mt, int(count),
                                    _engine.PY_ALLOC_WMARK_MIN | _engine.PY_ALLOC_NOFRAGMENT
                                    | _engine.PY_ALLOC_KSWAPD, self._kernel_page_flags(mt))

    def kernel_free(self, pfn: int, order: int) -> None:
        order = self._validate_order(order)
        if isinstance(pfn, bool) or not isinstance(pfn, (int, np.integer)):
            raise TypeError(f"pfn must be an int, not {type(pfn).__name__}")
        self.zone.free(int(pfn), order, _engine.PY_PG_KERNEL)

    def kernel_free_bulk(self, pfns, order: int) -> None:
        order = self._validate_order(order)
        self.zone.free_bulk(pfns, order, _engine.PY_PG_KERNEL)

    # ---- views -------------------------------------------------------------------------------

    def free_area(self) -> np.ndarray:
        return self.zone.free_area()

    def free_blocks_at_least(self, order: int) -> int:
        """Free buddy blocks able to serve an order-`order` request (counting order-10 halves)."""
        area = self.zone.free_area()[:3].sum(axis=0)
        return int(sum(int(n) << (o - order) for o, n in enumerate(area) if o >= order))
