"""mm/khugepaged.c for anonymous memory: the collapse scan, collapse_huge_page(), the
khugepaged thread in simulated time, and MADV_COLLAPSE."""

from __future__ import annotations

import collections
import enum
import errno
from typing import TYPE_CHECKING

import numpy as np

import thpcore._engine as _engine
from thpcore.mm.huge_memory import (HPAGE_PMD_NR, TVA, Gfp, folio_partially_mapped, map_new_thp,
                                    thp_vma_allowable, vma_thp_gfp_mask)
from thpcore.mm.memory import charge_thp
from thpcore.mm.mm_types import (MM, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_KIND_TABLE, pmd_kind,
                                 pmd_table_id, pte_swap)
from thpcore.mm.thp_alloc import alloc_thp
from thpcore.mm.vma import PMD_SIZE, VM_WRITE, VMA

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

# enum scan_result, from the engine's own list (its codes are the same numbers): one source.
ScanResult = enum.IntEnum(  # type: ignore[misc]
    "ScanResult", {name: i for i, name in enumerate(_engine.SCAN_RESULTS)})

# The "needs one writable PTE" rule (SCAN_PAGE_RO) is gone in 6.18: the live kernel collapses
# a region right after fork(), or after mprotect(PROT_READ), and one holding only zero-page PTEs.
REQUIRE_WRITABLE = False

# madvise_collapse(): results after which the next region is still tried.
CONTINUE_RESULTS = {
    ScanResult.SCAN_PMD_NULL, ScanResult.SCAN_PTE_NON_PRESENT, ScanResult.SCAN_PTE_UFFD_WP,
    ScanResult.SCAN_PAGE_RO, ScanResult.SCAN_LACK_REFERENCED_PAGE, ScanResult.SCAN_PAGE_NULL,
    ScanResult.SCAN_PAGE_COUNT, ScanResult.SCAN_PAGE_LOCK, ScanResult.SCAN_PAGE_COMPOUND,
    ScanResult.SCAN_PAGE_LRU, ScanResult.SCAN_DEL_PAGE_LRU,
}


def madvise_collapse_errno(result: ScanResult) -> int:
    """madvise_collapse_errno() (6.2 - 6.18)."""
    if result == ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL:
        return errno.ENOMEM
    if result in (ScanResult.SCAN_CGROUP_CHARGE_FAIL, ScanResult.SCAN_EXCEED_NONE_PTE):
        return errno.EBUSY
    if result in (ScanResult.SCAN_PAGE_COUNT, ScanResult.SCAN_PAGE_LOCK, ScanResult.SCAN_PAGE_LRU,
                  ScanResult.SCAN_DEL_PAGE_LRU, ScanResult.SCAN_PAGE_FILLED):
        return errno.EAGAIN
    return errno.EINVAL


def collapse_cost(kernel: "Kernel", present: int, none: int, swapped: int) -> int:
    """A collapse: the measured cost of a full 2 MiB MADV_COLLAPSE, less the copies it did not
    need (none/zero subpages are cleared instead), plus synchronous swap-ins."""
    c = kernel.costs
    fixed = max(c.collapse_2m_ns - HPAGE_PMD_NR * c.copy_4k_ns, 0)
    return fixed + present * c.copy_4k_ns + none * c.zero_4k_ns + swapped * c.swap_in_4k_ns


def scan_cost(kernel: "Kernel") -> int:
    return HPAGE_PMD_NR * kernel.costs.pte_scan_ns


class CollapseControl:
    """struct collapse_control: who is collapsing, with which limits and which gfp."""

    def __init__(self, is_khugepaged: bool, gfp: Gfp, limits: bool | None = None):
        self.is_khugepaged = is_khugepaged
        self.gfp = gfp
        self.limits = is_khugepaged if limits is None else limits


EVENT_DTYPE = np.dtype([("time_ns", "i8"), ("pid", "i4"), ("address", "u8"), ("context", "u1"),
                        ("result", "u1"), ("none_or_zero", "i2"), ("unmapped", "i2"),
                        ("shared", "i2"), ("referenced", "i2"), ("latency_ns", "i8")])
CONTEXT_KHUGEPAGED, CONTEXT_MADV_COLLAPSE = 0, 1


class CollapseEventLog(collections.deque):
    """Collapse trace records (tuples or structured-array chunks), oldest dropped first once
    more than LIMIT records are held."""

    LIMIT = 1 << 20

    def __init__(self):
        super().__init__()
        self.records = 0

    def append(self, item) -> None:
        super().append(item)
        self.records += len(item) if isinstance(item, np.ndarray) else 1
        while self.records > self.LIMIT and len(self) > 1:
            old = self.popleft()
            self.records -= len(old) if isinstance(old, np.ndarray) else 1

    def clear(self) -> None:
        super().clear()
        self.records = 0


def hpage_collapse_scan_pmd(kernel: "Kernel", mm: MM, vma: VMA, region: int,
                            cc: CollapseControl, pid: int) -> ScanResult:
    """Scan one region and, if it qualifies, collapse it. Returns the final result."""
    entry = mm.get_pmd(region)
    kind = pmd_kind(entry)
    counts = dict(none_or_zero=0, unmapped=0, shared=0, referenced=0)
    if region >> 30 not in mm.pmd_dir:
        result = ScanResult.SCAN_PMD_NULL          # no PMD table page: continue, not abort
    elif entry == 0:
        result = ScanResult.SCAN_PMD_NONE
    elif kind in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
        # A huge zero PMD is not a THP mapping, but the kernel sees a huge PMD and stops alike.
        result = ScanResult.SCAN_PMD_MAPPED
    else:
        t = kernel.thp.khugepaged
        lim = cc.limits
        code, scan = kernel.page_tables.scan_pmd(
            pmd_table_id(entry), lim, t.max_ptes_none if lim else -1,
            t.max_ptes_swap if lim else -1, t.max_ptes_shared if lim else -1, REQUIRE_WRITABLE)
        if not cc.is_khugepaged and code == ScanResult.SCAN_LACK_REFERENCED_PAGE:
            code = ScanResult.SCAN_SUCCEED           # the referenced rule is khugepaged's only
        result = ScanResult(code)
        counts = {k: scan[k] for k in counts}
        if result == ScanResult.SCAN_EXCEED_NONE_PTE:
            kernel.count("thp_scan_exceed_none_pte")
        elif result == ScanResult.SCAN_EXCEED_SWAP_PTE:
            kernel.count("thp_scan_exceed_swap_pte")
        elif result == ScanResult.SCAN_EXCEED_SHARED_PTE:
            kernel.count("thp_scan_exceed_share_pte")
        latency = scan_cost(kernel)
        if result == ScanResult.SCAN_SUCCEED:
            result = collapse_huge_page(kernel, mm, vma, region, cc, counts["unmapped"])
            present = HPAGE_PMD_NR - counts["none_or_zero"] - counts["unmapped"]
            latency = collapse_cost(kernel, present, counts["none_or_zero"], counts["unmapped"])
            kernel.charge(latency, "collapse")
        else:
            kernel.charge(latency)
        counts["latency_ns"] = latency
    kernel.record_collapse_event(pid, region, CONTEXT_KHUGEPAGED if cc.is_khugepaged
                                  else CONTEXT_MADV_COLLAPSE, int(result), counts)
    return result


def collapse_huge_page(kernel: "Kernel", mm: MM, vma: VMA, region: int, cc: CollapseControl,
                       unmapped: int) -> ScanResult:
    """Allocate a THP, swap in, copy every subpage, free the old pages, install the PMD."""
    head = alloc_thp(kernel, cc.gfp, mm.memcg.id)
    if head < 0:
        kernel.count("thp_collapse_alloc_failed")
        return ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL
    kernel.count("thp_collapse_alloc")
    if not charge_thp(kernel, mm, head, cc.gfp):
        return ScanResult.SCAN_CGROUP_CHARGE_FAIL
    mm.memcg.stat_events["thp_collapse_alloc"] += 1
    pt = kernel.page_tables
    tid = pmd_table_id(mm.get_pmd(region))
    table = pt.table(tid)
    # Guard markers are swap-type entries too; faulting one in fails (SCAN_FAIL).
    swap = np.nonzero(pte_swap(table) | (table == _engine.PY_PTE_GUARD))[0]
    if unmapped:
        # __collapse_huge_page_swapin(): fault every swap entry back in (as reads), including
        # any that reclaim made while the THP was being allocated.
        pt.reset_stats()
        failed = False
        for i in swap:
            if pt.fault(tid, int(i), int(i) + 1, False, bool(vma.flags & VM_WRITE),
                        (region >> 12) + int(i), 0, 0, None, mm.memcg.id) != 0:
                failed = True
                break
        st = pt.get_stats()
        mm.anon_rss += st["anon_allocated"]
        mm.swap_ents -= st["swapped_in"]
        if failed:
            kernel.page_alloc.zone.free(head, 9)
            return ScanResult.SCAN_FAIL
    elif swap.size:
        # Reclaim during the allocation swapped pages of this very region out:
        # __collapse_huge_page_isolate() finds a non-present PTE.
        kernel.page_alloc.zone.free(head, 9)
        return ScanResult.SCAN_PTE_NON_PRESENT
    pt.reset_stats()
    released = pt.collapse_copy(tid, head)
    for h in pt.partial_heads():
        folio_partially_mapped(kernel, int(h))
    mm.anon_rss -= released
    # Dirty, writable if VM_WRITE, and young: on x86 vm_page_prot carries _PAGE_ACCESSED.
    map_new_thp(kernel, mm, vma, region, head, tid)
    return ScanResult.SCAN_SUCCEED


def madvise_collapse(kernel: "Kernel", mm: MM, vma: VMA, start: int, end: int,
                     cc: CollapseControl, pid: int) -> None:
    """madvise_collapse() for one VMA's part [start, end); raises OSError on failure."""
    if not thp_vma_allowable(kernel, mm, vma, TVA.FORCED_COLLAPSE):
        raise OSError(errno.EINVAL, "Invalid argument: VMA not eligible for collapse")
    if hasattr(cc, "for_vma"):
        cc = cc.for_vma(vma)
    hstart = (start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    hend = end & ~(PMD_SIZE - 1)
    if hend < hstart:
        raise OSError(errno.EINVAL, "Invalid argument: no whole 2 MiB region in range")
    thps = 0
    last_fail = ScanResult.SCAN_FAIL
    region = hstart
    while region < hend:
        if cc.limits or kernel.cgroups.margin(mm.memcg) is not None:
            # The RFC's limited collapse, or a memcg with a limit: one region at a time.
            results = [hpage_collapse_scan_pmd(kernel, mm, vma, region, cc, pid)]
            step = PMD_SIZE
        else:
            results, step = _collapse_batch(kernel, mm, vma, region, hend, cc, pid)
        stop = False
        for result in results:
            if result in (ScanResult.SCAN_SUCCEED, ScanResult.SCAN_PMD_MAPPED):
                thps += 1
                continue
            last_fail = result
            if result not in CONTINUE_RESULTS:
                stop = True
                break
        if stop:
            break
        region += step
    if thps != (hend - hstart) // PMD_SIZE:
        raise OSError(madvise_collapse_errno(last_fail),
                      f"MADV_COLLAPSE failed: {last_fail.name}")


def _collapse_batch(kernel: "Kernel", mm: MM, vma: VMA, start: int, hend: int,
                    cc: CollapseControl, pid: int) -> tuple[list[ScanResult], int]:
    """Up to 256 regions of MADV_COLLAPSE in one engine call (collapse_run); a region that
    needs swap-in goes through the Python path. Returns the results and the bytes covered."""
    n = min((hend - start) // PMD_SIZE, 256)
    missing = np.zeros(n, dtype=bool)
    entries = mm.pmd_entries(start, start + n * PMD_SIZE, missing)
    kinds = entries & np.uint64(3)
    tids = (entries >> np.uint64(32)).astype(np.int64)
    tids[kinds != PMD_KIND_TABLE] = -1
    codes = np.where(entries == 0, int(ScanResult.SCAN_PMD_NONE),
                     int(ScanResult.SCAN_PMD_MAPPED)).astype(np.uint8)
    codes[missing] = int(ScanResult.SCAN_PMD_NULL)
    counts = np.zeros((n, 4), dtype=np.int16)
    heads = np.zeros(n, dtype=np.uint32)
    pt = kernel.page_tables
    pt.reset_stats()
    fast = _engine.PY_ALLOC_WMARK_LOW | _engine.PY_ALLOC_NOFRAGMENT | cc.gfp.alloc_flags()
    slow = _engine.PY_ALLOC_WMARK_MIN | cc.gfp.alloc_flags()
    done = pt.collapse_run(tids, codes, counts, heads, fast, slow, mm.memcg.id,
                           cc.gfp.direct_reclaim)
    handled = codes[:done]
    made = np.nonzero((handled == ScanResult.SCAN_SUCCEED) & (tids[:done] >= 0))[0]
    latency = np.where(tids[:done] >= 0, scan_cost(kernel), 0).astype(np.int64)
    for i in made:
        latency[i] = collapse_cost(kernel, int(counts[i, 3]), int(counts[i, 0]), 0)
        kernel.charge(int(latency[i]), "collapse")
    kernel.charge(scan_cost(kernel), None, int(((tids[:done] >= 0) & (handled != ScanResult.SCAN_SUCCEED)).sum()))
    for i in made:
        region = start + int(i) * PMD_SIZE
        mm.anon_rss -= int(counts[i, 3])              # the released 4 KiB pages
        map_new_thp(kernel, mm, vma, region, int(heads[i]), int(tids[i]))
    if made.size:
        kernel.count("thp_collapse_alloc", int(made.size))
        mm.memcg.stat_events["thp_collapse_alloc"] += int(made.size)
    failed = int((handled == ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL).sum())
    if failed:
        kernel.count("thp_collapse_alloc_failed", failed)
    for h in pt.partial_heads():
        folio_partially_mapped(kernel, int(h))
    ev = np.zeros(done, dtype=EVENT_DTYPE)
    ev["time_ns"], ev["pid"], ev["context"] = kernel.clock_ns, pid, CONTEXT_MADV_COLLAPSE
    ev["address"] = start + np.arange(done, dtype=np.uint64) * np.uint64(PMD_SIZE)
    ev["result"] = handled
    ev["none_or_zero"], ev["unmapped"], ev["shared"] = counts[:done, 0], counts[:done, 1], counts[:done, 2]
    ev["latency_ns"] = latency
    kernel._collapse_events.append(ev)
    results = [ScanResult(int(c)) for c in handled]
    covered = done * PMD_SIZE
    if done < n and codes[done] in (254, 255):         # swap-in or direct compaction: Python path
        region = start + done * PMD_SIZE
        results.append(hpage_collapse_scan_pmd(kernel, mm, vma, region, cc, pid))
        covered += PMD_SIZE
    return results, covered


class Khugepaged:
    """The khugepaged thread, in simulated time."""

    def __init__(self, kernel: "Kernel"):
        self.m = kernel
        self.cursor_mm: MM | None = None
        self.cursor_address = 0
        self.next_wakeup_ns = 0
        self.exiting: set[int] = set()

    # ---- list maintenance --------------------------------------------------------------------

    def mm_exit(self, mm: MM) -> None:
        """__khugepaged_exit(): drop the slot, lazily if the scan cursor is on it."""
        if mm is self.cursor_mm:
            self.exiting.add(id(mm))
        else:
            self.m.khugepaged_mm_list.remove(mm)

    def has_work(self) -> bool:
        return bool(self.m.khugepaged_mm_list) and self.m.thp.pmd_enabled()

    def wake(self) -> None:
        """A write to scan_sleep_millisecs / alloc_sleep_millisecs wakes the thread now."""
        self.next_wakeup_ns = min(self.next_wakeup_ns, self.m.clock_ns)

    # ---- scanning ---------------------------------------------------------------------------------

    def _mm_pid(self, mm: MM) -> int:
        for p in self.m._processes.values():
            if p.mm is mm:
                return p.pid
        return 0

    def _advance(self) -> None:
        lst = self.m.khugepaged_mm_list
        i = lst.index(self.cursor_mm)
        old = self.cursor_mm
        if i + 1 < len(lst):
            self.cursor_mm, self.cursor_address = lst[i + 1], 0
        else:
            self.cursor_mm = None
            self.m.thp.khugepaged._set_counter("full_scans",
                                               self.m.thp.khugepaged.full_scans + 1)
        if id(old) in self.exiting:
            self.exiting.discard(id(old))
            lst.remove(old)

    def scan_mm_slot(self, pages: int) -> tuple[int, ScanResult]:
        m = self.m
        lst = m.khugepaged_mm_list
        if self.cursor_mm is None:
            self.cursor_mm, self.cursor_address = lst[0], 0
        mm = self.cursor_mm
        progress = 1
        result = ScanResult.SCAN_SUCCEED
        if id(mm) in self.exiting or (mm.thp_disable and not mm.thp_disable - 1):
            self._advance()
            return progress, result
        pid = self._mm_pid(mm)
        cc = CollapseControl(True, Gfp(direct_reclaim=bool(m.thp.khugepaged.defrag),
                                       kswapd=False))
        for vma in list(mm.vmas):
            if vma.end <= self.cursor_address:
                continue
            if not thp_vma_allowable(m, mm, vma, TVA.KHUGEPAGED):
                progress += 1
                continue
            hstart = (vma.start + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
            hend = vma.end & ~(PMD_SIZE - 1)
            if self.cursor_address > hend:
                progress += 1
                continue
            self.cursor_address = max(self.cursor_address, hstart)
            while self.cursor_address < hend:
                # Scan as many regions as the budget allows in one engine call; it stops at the
                # first region that qualifies, where collapse_huge_page() drops the lock.
                budget = max(1, -(-(pages - progress) // HPAGE_PMD_NR))
                n = min((hend - self.cursor_address) // PMD_SIZE, budget)
                done, result = self._scan_batch(mm, vma, pid, cc, self.cursor_address, n)
                self.cursor_address += done * PMD_SIZE
                progress += done * HPAGE_PMD_NR
                if _lock_dropped(result):
                    return progress, result          # the cursor stays on this mm
                if progress >= pages:
                    return progress, result
            # the VMA may have been replaced by a collapse-free walk; continue with the next
        self._advance()
        return progress, result

    def _scan_batch(self, mm: MM, vma: VMA, pid: int, cc: CollapseControl, start: int,
                    n: int) -> tuple[int, ScanResult]:
        m = self.m
        t = m.thp.khugepaged
        missing = np.zeros(n, dtype=bool)
        entries = mm.pmd_entries(start, start + n * PMD_SIZE, missing)
        kinds = entries & np.uint64(3)
        tids = np.where(kinds == PMD_KIND_TABLE, entries >> np.uint64(32), 0).astype(np.int64)
        tids[kinds != PMD_KIND_TABLE] = -1
        codes = np.where(entries == 0, int(ScanResult.SCAN_PMD_NONE),
                         int(ScanResult.SCAN_PMD_MAPPED)).astype(np.uint8)
        codes[missing] = int(ScanResult.SCAN_PMD_NULL)
        counts = np.zeros((n, 4), dtype=np.int16)
        done = m.page_tables.scan_regions(tids, codes, counts, True, t.max_ptes_none,
                                          t.max_ptes_swap, t.max_ptes_shared, REQUIRE_WRITABLE)
        codes, counts = codes[:done], counts[:done]
        for code, event in ((ScanResult.SCAN_EXCEED_NONE_PTE, "thp_scan_exceed_none_pte"),
                            (ScanResult.SCAN_EXCEED_SWAP_PTE, "thp_scan_exceed_swap_pte"),
                            (ScanResult.SCAN_EXCEED_SHARED_PTE, "thp_scan_exceed_share_pte")):
            k = int((codes == code).sum())
            if k:
                m.count(event, k)
        result = ScanResult(int(codes[-1]))
        latency = np.where(tids[:done] >= 0, scan_cost(m), 0).astype(np.int64)
        m.charge(scan_cost(m), None, int((tids[:done] >= 0).sum()))
        if result == ScanResult.SCAN_SUCCEED:
            result = collapse_huge_page(m, mm, vma, start + (done - 1) * PMD_SIZE, cc,
                                        int(counts[-1, 1]))
            codes[-1] = int(result)
            none, swapped = int(counts[-1, 0]), int(counts[-1, 1])
            latency[-1] = collapse_cost(m, HPAGE_PMD_NR - none - swapped, none, swapped)
            m.charge(int(latency[-1]), "collapse")
            if result == ScanResult.SCAN_SUCCEED:
                t._set_counter("pages_collapsed", t.pages_collapsed + 1)
        ev = np.zeros(done, dtype=EVENT_DTYPE)
        ev["time_ns"] = m.clock_ns
        ev["pid"] = pid
        ev["address"] = start + np.arange(done, dtype=np.uint64) * np.uint64(PMD_SIZE)
        ev["context"] = CONTEXT_KHUGEPAGED
        ev["result"] = codes
        ev["none_or_zero"], ev["unmapped"] = counts[:, 0], counts[:, 1]
        ev["shared"], ev["referenced"] = counts[:, 2], counts[:, 3]
        ev["latency_ns"] = latency
        m._collapse_events.append(ev)
        return done, result

    def do_scan(self) -> None:
        """khugepaged_do_scan(): one pass with a budget of pages_to_scan."""
        with self.m.acting("khugepaged"):
            self._do_scan()

    def _do_scan(self) -> None:
        m = self.m
        pages = m.thp.khugepaged.pages_to_scan
        progress = 0
        pass_through_head = 0
        wait = True
        while True:
            if self.cursor_mm is None:
                pass_through_head += 1
            if self.has_work() and pass_through_head < 2:
                got, result = self.scan_mm_slot(pages - progress)
                progress += got
            else:
                progress = pages
                result = ScanResult.SCAN_SUCCEED
            if progress >= pages:
                break
            if result == ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL:
                if not wait:
                    break
                wait = False
                m.clock_ns += m.thp.khugepaged.alloc_sleep_millisecs * 1_000_000

    def next_event_ns(self) -> float:
        """When the thread next scans (inf while it sleeps waiting for an mm)."""
        if not self.m.thp.pmd_enabled() or not self.m.khugepaged_mm_list:
            return float("inf")
        return max(self.next_wakeup_ns, self.m.clock_ns)

    def step(self) -> None:
        """One wake-up: a scan pass, then sleep scan_sleep_millisecs."""
        m = self.m
        self.do_scan()
        sleep = m.thp.khugepaged.scan_sleep_millisecs * 1_000_000
        self.next_wakeup_ns = m.clock_ns + max(sleep, 1)

    def run_until(self, end_ns: int) -> None:
        """Run the kernel (all its daemons) until end_ns."""
        self.m.run_until(end_ns)

    def wait_full_scans(self, n: int = 1, timeout_s: float = 24 * 3600) -> None:
        """Run simulated time until full_scans has grown by n (TimeoutError if it cannot)."""
        m = self.m
        target = m.thp.khugepaged.full_scans + n
        deadline = m.clock_ns + int(timeout_s * 1e9)
        while m.thp.khugepaged.full_scans < target:
            if not m.thp.pmd_enabled() or not m.khugepaged_mm_list:
                raise TimeoutError("khugepaged has nothing to scan (no registered mm, or THP off)")
            t = self.next_event_ns()
            if t > deadline:
                raise TimeoutError(f"full_scans did not reach {target} within {timeout_s} s")
            m.run_until(int(t))


def _lock_dropped(result: ScanResult) -> bool:
    """collapse_huge_page() always returns with the mmap lock dropped: after any attempt."""
    return result in (ScanResult.SCAN_SUCCEED, ScanResult.SCAN_ALLOC_HUGE_PAGE_FAIL,
                      ScanResult.SCAN_CGROUP_CHARGE_FAIL, ScanResult.SCAN_FAIL)


def default_collapse_control(kernel: "Kernel", vma: VMA) -> CollapseControl:
    """MADV_COLLAPSE's allocation: GFP_TRANSHUGE in 6.18; the VMA's fault-time gfp in the
    2022 RFC profile."""
    if kernel.version == "rfc-2022":
        return CollapseControl(False, vma_thp_gfp_mask(kernel, vma), limits=False)
    return CollapseControl(False, Gfp(direct_reclaim=True, kswapd=False))
