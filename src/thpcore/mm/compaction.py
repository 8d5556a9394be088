"""mm/compaction.c's policy half: when compaction may run, direct compaction for a failing
high-order allocation, deferral, /proc/sys/vm/compact_memory, and kcompactd's proactive mode.
The scanners and page migration themselves run in the engine (PageTables.compact)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from thpcore.mm.page_alloc import fragmentation_index

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

PAGE_ALLOC_COSTLY_ORDER = 3
COMPACT_MAX_DEFER_SHIFT = 6
HPAGE_FRAG_CHECK_INTERVAL_NS = 500_000_000


class CompactResult(enum.IntEnum):
    NOT_SUITABLE_ZONE = 0
    SKIPPED = 1
    DEFERRED = 2
    NO_SUITABLE_PAGE = 3
    CONTINUE = 4
    COMPLETE = 5
    PARTIAL_SKIPPED = 6
    CONTENDED = 7
    SUCCESS = 8


class Priority(enum.IntEnum):
    """enum compact_priority: lower is more thorough."""
    SYNC_FULL = 0
    SYNC_LIGHT = 1
    ASYNC = 2


class Compaction:
    """Per-zone compaction state (compact_considered, compact_defer_shift, ...) and entry points."""

    def __init__(self, kernel: "Kernel"):
        self.m = kernel
        self.considered = 0
        self.defer_shift = 0
        self.order_failed = 0
        self.proactive_defer = 0
        self.kcompactd_wake_pending = False
        self.next_proactive_ns = HPAGE_FRAG_CHECK_INTERVAL_NS

    # ---- deferral (compaction_deferred / defer_compaction / compaction_defer_reset) ---------

    def deferred(self, order: int) -> bool:
        if order < self.order_failed:
            return False
        self.considered += 1
        if self.considered >= 1 << self.defer_shift:
            self.considered = 1 << self.defer_shift
            return False
        return True

    def defer(self, order: int) -> None:
        self.considered = 0
        self.defer_shift = min(self.defer_shift + 1, COMPACT_MAX_DEFER_SHIFT)
        self.order_failed = min(self.order_failed, order) if self.order_failed else order

    def defer_reset(self, order: int, alloc_success: bool) -> None:
        if alloc_success:
            self.considered = 0
            self.defer_shift = 0
        if order >= self.order_failed:
            self.order_failed = order + 1

    # ---- suitability ---------------------------------------------------------------------------

    def suitable(self, order: int) -> CompactResult:
        """compaction_suit_allocation_order(): SUCCESS if the allocation would already
        succeed, SKIPPED without enough order-0 memory (watermark + compact_gap),
        NOT_SUITABLE_ZONE when the fragmentation index says memory is short, not fragmented."""
        pa = self.m.page_alloc
        zone = pa.zone
        wmin, wlow, _ = zone.watermarks()
        mark = (wlow if order > PAGE_ALLOC_COSTLY_ORDER else wmin) + zone.watermark_boost
        if pa.zone_watermark_ok(order, mark):
            return CompactResult.SUCCESS
        if zone.nr_free_pages - 0 <= mark + (2 << order):
            return CompactResult.SKIPPED
        if order > PAGE_ALLOC_COSTLY_ORDER:
            index = fragmentation_index(zone.free_area(), order)
            if 0 <= index <= pa.extfrag_threshold:
                return CompactResult.NOT_SUITABLE_ZONE
        return CompactResult.CONTINUE

    # ---- running ---------------------------------------------------------------------------------

    def compact_zone(self, order: int, prio: Priority, whole_zone: bool = False,
                     daemon: bool = False) -> CompactResult:
        m = self.m
        pt = m.page_tables
        rc = CompactResult(pt.compact(order, prio != Priority.ASYNC, whole_zone))
        st = pt.compact_stats()
        prefix = "compact_daemon_" if daemon else "compact_"
        m.count(prefix + "migrate_scanned", st["migrate_scanned"])
        m.count(prefix + "free_scanned", st["free_scanned"])
        if not daemon:
            m.count("compact_isolated", st["isolated"])
        else:
            m.count("compact_isolated", st["isolated"])
        m.count("pgmigrate_success", st["migrated"])
        c = m.costs
        self.last_cost_ns = (st["migrated"] * c.migrate_4k_ns
                             + (st["migrate_scanned"] + st["free_scanned"]) * c.pte_scan_ns)
        return rc

    def try_to_compact_pages(self, order: int, prio: Priority) -> CompactResult:
        """try_to_compact_pages() for the one zone."""
        if prio > Priority.SYNC_FULL and self.deferred(order):
            return CompactResult.DEFERRED
        rc = self.suitable(order)
        if rc in (CompactResult.SKIPPED, CompactResult.NOT_SUITABLE_ZONE):
            return CompactResult.SKIPPED if rc == CompactResult.SKIPPED else rc
        self.last_cost_ns = 0
        if rc != CompactResult.SUCCESS:
            rc = self.compact_zone(order, prio)
        if rc == CompactResult.SUCCESS:
            self.defer_reset(order, False)
        elif prio != Priority.ASYNC and rc in (CompactResult.COMPLETE, CompactResult.PARTIAL_SKIPPED):
            self.defer(order)
        return rc

    def direct_compact(self, order: int, prio: Priority, attempt) -> tuple[int, CompactResult]:
        """__alloc_pages_direct_compact(): compact, then retry the allocation with `attempt()`.
        Counts compact_stall / compact_success / compact_fail and charges the caller."""
        m = self.m
        self.last_cost_ns = 0
        rc = self.try_to_compact_pages(order, prio)
        if rc == CompactResult.SKIPPED:
            return -1, rc
        m.count("compact_stall")
        pfn = attempt()
        m.charge(self.last_cost_ns, "compact_stall")
        if pfn >= 0:
            self.defer_reset(order, True)
            m.count("compact_success")
        else:
            m.count("compact_fail")
        return pfn, rc

    def compact_memory(self) -> None:
        """echo 1 > /proc/sys/vm/compact_memory: a full, synchronous pass over the zone."""
        with self.m.acting(self.m.actor):
            self.compact_zone(-1, Priority.SYNC_FULL, whole_zone=True)
            self.m.charge(self.last_cost_ns)

    # ---- kcompactd ------------------------------------------------------------------------------

    def fragmentation_score(self) -> int:
        """fragmentation_score_zone(): % of free memory not in free blocks of order >= 9."""
        zone = self.m.page_alloc.zone
        free = zone.nr_free_pages
        if not free:
            return 0
        area = zone.free_area()[:3]
        big = sum(int(area[:, o].sum()) << o for o in range(9, area.shape[1]))
        return 100 * (free - big) // free

    def proactive_wmarks(self) -> tuple[int, int]:
        """(low, high) in 6.16+: low = 100 - proactiveness, high = low + min(10, low / 2)."""
        low = 100 - self.m.page_alloc.compaction_proactiveness
        return low, min(low + min(10, low // 2), 100)

    def wakeup_kcompactd(self) -> None:
        self.kcompactd_wake_pending = True

    def kcompactd_run_until(self, end_ns: int) -> None:
        """kcompactd's wake-ups: on request (defer-mode faults), and the proactive timer."""
        m = self.m
        with m.acting("kcompactd"):
            if self.kcompactd_wake_pending:
                self.kcompactd_wake_pending = False
                m.count("compact_daemon_wake")
                if self.suitable(9) == CompactResult.CONTINUE:
                    self.compact_zone(9, Priority.SYNC_LIGHT, daemon=True)
                    m.charge(self.last_cost_ns)
            while self.next_proactive_ns <= end_ns:
                self.next_proactive_ns += HPAGE_FRAG_CHECK_INTERVAL_NS
                if not m.page_alloc.compaction_proactiveness:
                    continue
                if self.proactive_defer:
                    self.proactive_defer -= 1
                    continue
                low, high = self.proactive_wmarks()
                score = self.fragmentation_score()
                if score <= high:
                    continue
                m.count("compact_daemon_wake")
                before = score
                while score > low:
                    rc = self.compact_zone(-1, Priority.SYNC_LIGHT, daemon=True)
                    m.charge(self.last_cost_ns)
                    score = self.fragmentation_score()
                    if rc in (CompactResult.COMPLETE, CompactResult.PARTIAL_SKIPPED):
                        break
                if score >= before:
                    self.proactive_defer = 1 << COMPACT_MAX_DEFER_SHIFT
