"""The simulated machine: one node, one zone, the THP knobs, the counters and the clock."""

from __future__ import annotations

import collections

import errno
import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from thpcore import _engine
from thpcore.mm.page_alloc import PageAllocator
from thpcore.proc.procfs import Procfs
from thpcore.mm.sysctl import Sysctl
from thpcore.mm.sysfs import Sysfs, ThpSettings
from thpcore.units import PAGE_SIZE, format_size, parse_size
from thpcore.mm.vmstat import Vmstat
from thpcore.errors import InvariantError

if TYPE_CHECKING:
    from thpcore.process import Process

KERNELS = ("6.18", "rfc-2022")
MIN_MEMORY = 16 << 20               # below this the kernel disables mobility grouping
SMALL_MACHINE = 512 << 20           # hugepage_init() clears every THP flag below this
PAGEBLOCK_BYTES = 2 << 20
MAX_MEMORY = 1 << 40
MAX_SWAP = (1 << 40) - PAGE_SIZE

# The vmstat events the simulator counts so far (all start at 0, as after boot).
EVENTS = ("pswpout", "pglazyfree", "pglazyfreed", "thp_fault_alloc", "thp_fault_fallback",
          "thp_fault_fallback_charge", "thp_split_page", "thp_split_page_failed",
          "thp_deferred_split_page", "thp_split_pmd", "thp_zero_page_alloc",
          "thp_zero_page_alloc_failed", "thp_swpout", "thp_swpout_fallback",
          "thp_collapse_alloc", "thp_collapse_alloc_failed", "thp_scan_exceed_none_pte",
          "thp_scan_exceed_swap_pte", "thp_scan_exceed_share_pte", "pgmigrate_success",
          "compact_migrate_scanned", "compact_free_scanned", "compact_isolated", "compact_stall",
          "compact_fail", "compact_success", "compact_daemon_wake",
          "compact_daemon_migrate_scanned", "compact_daemon_free_scanned",
          "thp_underused_split_page", "allocstall_normal", "oom_kill")


class _NoVMA:
    flags = 0


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


class Machine:
    """A simulated Linux 6.18 host.

    Machine(memory="4G", swap="1G", seed=0, kernel="6.18", transparent_hugepage="madvise")

    `transparent_hugepage` is the boot-time THP mode (the kernel command line parameter of the
    same name; the Kconfig default of the distribution this models is "madvise").
    `swap_device` is "file" (a swap file: THPs are split before swap-out, as the live host
    showed) or "blockdev" (a swap partition: a THP can swap out whole into one cluster).
    """

    def __init__(self, memory: int | str = "4G", swap: int | str | None = None, seed: int = 0,
                 kernel: str = "6.18", transparent_hugepage: str = "madvise",
                 swap_device: str = "file", costs=None):
        nbytes = parse_size(memory, what="memory")
        if nbytes % PAGEBLOCK_BYTES:
            raise ValueError(f"memory must be a multiple of 2 MiB (one pageblock), got {nbytes}")
        if nbytes < MIN_MEMORY:
            raise ValueError(f"memory must be at least {format_size(MIN_MEMORY)}")
        if nbytes > MAX_MEMORY:
            raise ValueError("memory must be at most 1 TiB (PTEs hold 28-bit pfns)")
        self.swap_bytes = parse_size(swap, what="swap") if swap is not None else 0
        if self.swap_bytes % PAGE_SIZE:
            raise ValueError("swap must be a multiple of 4 KiB")
        if self.swap_bytes > MAX_SWAP:
            raise ValueError("swap must be below 1 TiB")
        if swap_device not in ("file", "blockdev"):
            raise ValueError("swap_device must be 'file' or 'blockdev'")
        # A swap file cannot take large (THP) swap entries; a block device can (SWP_BLKDEV).
        self.swap_device = swap_device
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError("seed must be a non-negative int")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if transparent_hugepage not in ("always", "madvise", "never"):
            raise ValueError("transparent_hugepage must be 'always', 'madvise' or 'never'")

        from thpcore.costs import Accounting, CostModel
        self.costs = CostModel.load(costs)
        self.accounting = Accounting()
        self.actor = None                 # who pays for the work being done right now
        self.memory_bytes = nbytes
        self.kernel = kernel
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.clock_ns = 0

        self.page_alloc = PageAllocator(nbytes // PAGE_SIZE)
        self.thp = ThpSettings(self._thp_knob_changed, enabled=transparent_hugepage,
                               small_machine=nbytes < SMALL_MACHINE)
        object.__setattr__(self.thp, "gauge", self._mthp_gauge)
        self.mthp_possible = False          # some mTHP size is not "never" (a fault-path shortcut)
        self.khugepaged_running = False
        if nbytes >= SMALL_MACHINE:
            self._start_stop_khugepaged()
        self.sysfs = Sysfs(self.thp)
        self.sysctl = Sysctl(self.page_alloc, lambda: self.compaction.compact_memory())
        self.procfs = Procfs(self)

        zone = self.page_alloc.zone
        self.page_tables = _engine.PageTables(zone, self.swap_bytes // PAGE_SIZE)
        self.huge_zero_pfn: int | None = None
        self.thp_pmd_mappings: dict[int, int] = {}      # THP head -> PMD mappings of it
        # THP head -> the 2 MiB region it was made for, and for the few that mremap moved, the
        # regions their PMD or PTEs went to; split_folio() looks in every mm at each of them.
        # (A plain int per head: 1 TiB holds ~250K THPs and a set each would cost ~50 MB.)
        self.thp_index: dict[int, int] = {}
        self.thp_moved: dict[int, set[int]] = {}
        self.deferred_split: dict[int, bool] = {}       # THP head -> partially mapped
        # Partly mapped mTHP head -> the region where it lost a mapping (only these few: an
        # index of every mTHP would cost a dict entry per 64 KiB)
        self.mthp_regions: dict[int, int] = {}
        self.khugepaged_mm_list: list = []
        self._processes: dict[int, "Process"] = {}
        self._next_pid = 1
        self._next_anon_vma = 1
        self._write_generation = 0
        self.events: dict[str, int] = dict.fromkeys(EVENTS, 0)
        self._collapse_events = CollapseEventLog()
        from thpcore.mm.compaction import Compaction
        from thpcore.mm.khugepaged import Khugepaged
        from thpcore.mm.memcontrol import CgroupTree
        self.cgroups = CgroupTree(self)
        self.sysfs.cgroups = self.cgroups
        self.kswapd_wake_pending = False
        self.khugepaged = Khugepaged(self)
        self.compaction = Compaction(self)
        self.vmstat = Vmstat(self.events, {
            "nr_free_pages": lambda: zone.nr_free_pages,
            "nr_free_pages_blocks": self._nr_free_pages_blocks,
            "pgalloc_normal": lambda: zone.pgalloc,
            "pgfree": lambda: zone.pgfree,
            "nr_unstable": lambda: 0,       # vmstat_show() always appends it (deprecated)
            "nr_anon_pages": self._nr_anon_pages,
            "nr_anon_transparent_hugepages": lambda: len(self.thp_pmd_mappings),
            "nr_page_table_pages": lambda: self.page_tables.nr_tables,
        })

    # ---- THP knob side effects -------------------------------------------------------------

    def _thp_knob_changed(self, name: str) -> None:
        if name.endswith("/enabled") and name.startswith("hugepages-"):
            self.mthp_possible = any(self.thp.sizes[k].enabled != "never" for k in range(2, 9))
        if name in ("enabled", "hugepages-2048kB/enabled"):
            self._start_stop_khugepaged()
        elif name in ("khugepaged/scan_sleep_millisecs", "khugepaged/alloc_sleep_millisecs"):
            if hasattr(self, "khugepaged"):
                self.khugepaged.wake()

    def _start_stop_khugepaged(self) -> None:
        """start_stop_khugepaged(): the thread follows hugepage_pmd_enabled(), and every call
        re-derives min_free_kbytes and the watermarks."""
        self.khugepaged_running = self.thp.pmd_enabled()
        self.page_alloc.set_recommended_min_free_kbytes(self.khugepaged_running)

    def _nr_free_pages_blocks(self) -> int:
        area = self.page_alloc.zone.free_area()[:4]      # every type but isolate
        return int(sum(int(area[:, o].sum()) << o for o in range(9, area.shape[1])))

    # ---- counters ------------------------------------------------------------------------------

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] += n

    def count_mthp(self, stat: str, n: int = 1, order: int = 9) -> None:
        self.thp.sizes[order].stats[stat] += n

    def _mthp_gauge(self, order: int, name: str) -> int:
        """hugepages-<size>kB/stats/nr_anon and nr_anon_partially_mapped, from the frames."""
        f = self.page_alloc.zone.frames()
        if name == "nr_anon":
            heads = (f["flags"] & (_engine.PY_PG_HEAD | _engine.PY_PG_LRU)) == \
                (_engine.PY_PG_HEAD | _engine.PY_PG_LRU)
            return int((heads & (f["order"] == order)).sum())
        return sum(1 for h, partial in self.deferred_split.items()
                   if partial and self._large_folio_order(h) == order)

    def _large_folio_order(self, head: int) -> int:
        """The order of the user folio headed at pfn head, 0 if head heads none."""
        f = self.page_alloc.zone.frames()
        fl = int(f["flags"][head])
        if fl & _engine.PY_PG_HEAD and fl & _engine.PY_PG_LRU:
            return int(f["order"][head])
        return 0

    def _nr_anon_pages(self) -> int:
        f = self.page_alloc.zone.frames()
        return int((((f["flags"] & _engine.PY_PG_LRU) != 0) & (f["mapcount"] > 0)).sum())

    def new_anon_vma_id(self) -> int:
        self._next_anon_vma += 1
        return self._next_anon_vma - 1

    def next_write_generation(self) -> int:
        self._write_generation = (self._write_generation + 1) & 0xFFFFFFFF
        return self._write_generation

    def record_collapse_event(self, pid: int, address: int, context: int, result: int,
                              counts: dict) -> None:
        """One mm_khugepaged_scan_pmd-like trace record per scanned region."""
        self._collapse_events.append((self.clock_ns, pid, address, context, result,
                                      counts["none_or_zero"], counts["unmapped"],
                                      counts["shared"], counts["referenced"],
                                      counts.get("latency_ns", 0)))

    def collapse_events(self) -> np.ndarray:
        """The collapse scans so far (the most recent CollapseEventLog.LIMIT of them, so hours
        of khugepaged on a 1 TiB host stay in bounded memory) as a structured array (see
        khugepaged.EVENT_DTYPE)."""
        from thpcore.mm.khugepaged import EVENT_DTYPE
        parts = [e if isinstance(e, np.ndarray) else np.array([e], dtype=EVENT_DTYPE)
                 for e in self._collapse_events]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=EVENT_DTYPE)

    # ---- cost model ----------------------------------------------------------------------------

    @property
    def cpu_ns(self) -> dict:
        """Simulated CPU nanoseconds per actor: each pid, "khugepaged", "kcompactd", "kswapd"."""
        return dict(self.accounting.cpu_ns)

    def latency(self, kind: str) -> dict[str, float]:
        """count, mean, p50, p99, p99.9 (ns) of "fault", "collapse", "compact_stall" or "swap_in"."""
        return self.accounting.latency(kind)

    def charge(self, ns: int, kind: str | None = None, count: int = 1, actor=None) -> None:
        self.accounting.charge(self.actor if actor is None else actor, ns, kind, count)

    def acting(self, actor):
        """Context manager: charge the work done inside to `actor`."""
        import contextlib

        @contextlib.contextmanager
        def scope():
            saved = self.actor
            self.actor = actor
            try:
                yield
            finally:
                self.actor = saved
        return scope()

    # ---- time ----------------------------------------------------------------------------------

    def run(self, seconds: float = 0.0, ms: float = 0.0) -> None:
        """Advance simulated time, running khugepaged's wake-ups on the way."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0 or ms < 0:
            raise ValueError("run() takes a non-negative duration")
        self.run_until(self.clock_ns + int(seconds * 1e9) + int(ms * 1e6))

    def run_until(self, end_ns: int) -> None:
        """Process the daemons' events (khugepaged wake-ups, kcompactd) in time order."""
        while True:
            t_k = self.khugepaged.next_event_ns()
            c = self.compaction
            t_c = self.clock_ns if c.kcompactd_wake_pending else c.next_proactive_ns
            t_s = self.clock_ns if self.kswapd_wake_pending else float("inf")
            t = min(t_k, t_c, t_s)
            if t > end_ns:
                break
            self.clock_ns = max(self.clock_ns, int(t))
            if t_s <= t:
                self.run_kswapd()
            elif t_c <= t_k:
                c.kcompactd_run_until(self.clock_ns)
            else:
                self.khugepaged.step()
        self.clock_ns = max(self.clock_ns, end_ns)

    # ---- processes -----------------------------------------------------------------------------

    def spawn(self, name: str = "task", uid: int = 0, caps=None, cgroup: str = "") -> "Process":
        """A new process with an empty mm; uid 0 with every capability unless told otherwise;
        charged to `cgroup` (a path created with m.cgroups.create, "" for the root)."""
        from thpcore.process import CAPABILITIES, Process
        memcg = self.cgroups.get(cgroup) if cgroup else self.cgroups.root
        if not isinstance(name, str):
            raise TypeError("name must be a str")
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid < 2 ** 32 - 1:
            raise ValueError("uid must be an int in 0..2**32-2")
        if caps is None:
            caps = CAPABILITIES if uid == 0 else frozenset()
        elif isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
            raise TypeError("caps must be a collection of capability names")
        else:
            caps = frozenset(caps)
            unknown = caps - CAPABILITIES
            if unknown:
                raise ValueError(f"unknown capabilities: {sorted(unknown)}")
        p = Process(self, self._next_pid, name, uid, caps)
        p.memcg = p.mm.memcg = memcg
        self._next_pid += 1
        self._processes[p.pid] = p
        return p

    def processes(self) -> list["Process"]:
        """Live simulated processes, by pid."""
        return [p for p in self._processes.values() if p.alive]

    def process(self, pid: int) -> "Process":
        p = self._processes.get(pid)
        if p is None or not p.alive:
            raise ProcessLookupError(errno.ESRCH, f"No such process: {pid}")
        return p

    def populate(self, mm, vma, start: int, end: int, write: bool) -> None:
        """MAP_POPULATE / MADV_POPULATE_*: fault the range without storing data."""
        from thpcore.mm.memory import handle_mm_fault_range
        handle_mm_fault_range(self, mm, vma, start, end, write, _engine.PY_VALUE_KEEP, 0, None)

    # ---- reclaim and OOM -----------------------------------------------------------------------

    def oom_kill(self, memcg=None) -> "Process | None":
        """select_bad_process() + oom_kill_process(): the process (in memcg's subtree, or
        anywhere) with the most rss + swap + page tables is killed. Returns it, or None."""
        ids = None if memcg is None else {c.id for c in memcg.subtree()}
        best, points = None, 0
        for p in self.processes():
            if ids is not None and p.memcg.id not in ids:
                continue
            tables = sum(1 for _ in p.mm.populated_pmds())
            badness = p.mm.anon_rss + p.mm.swap_ents + tables
            if best is None or badness > points:
                best, points = p, badness
        if best is None:
            return None
        best.exit_reason = "oom"
        best.exit()
        self.count("oom_kill")
        for c in best.memcg.ancestors():
            c.events["oom_kill"] += 1
        return best

    def wakeup_kswapd(self) -> None:
        self.kswapd_wake_pending = True

    def run_kswapd(self) -> None:
        from thpcore.mm.vmscan import balance_pgdat
        self.kswapd_wake_pending = False
        balance_pgdat(self)

    # ---- THP folio life cycle ---------------------------------------------------------------

    def folio_unmapped(self, head: int) -> None:
        """A THP lost a PMD mapping: free it if nothing maps it, else note a partial mapping."""
        mapcount = self.page_alloc.zone.frames()["mapcount"][head:head + 512]
        if not mapcount.any():
            self.page_alloc.zone.free(head, 9)
            self.thp_folio_freed(head)
        elif not mapcount.all():
            self.folio_partially_mapped(head)

    def thp_folio_freed(self, head: int) -> None:
        self.deferred_split.pop(head, None)
        self.mthp_regions.pop(head, None)
        self.thp_index.pop(head, None)
        self.thp_moved.pop(head, None)
        self.thp_pmd_mappings.pop(head, None)

    def folio_partially_mapped(self, head: int, region: int | None = None) -> None:
        """deferred_split_folio(folio, partially_mapped=true): queue it, once. An mTHP
        remembers the 2 MiB region the unmap was in (its split looks for mappings there)."""
        order = self._large_folio_order(head)
        if order < 9 and region is not None:
            self.mthp_regions.setdefault(head, region)
        if not self.deferred_split.get(head, False):
            self.deferred_split[head] = True
            if order == 9:
                self.count("thp_deferred_split_page")
            self.count_mthp("split_deferred", order=order if order >= 2 else 9)

    def split_folio(self, head: int, region: int | None = None) -> int:
        """split_huge_page() of an anonymous THP or mTHP into order-0 pages. Every PMD mapping
        of it is split first (unmap), and on remap (6.12+) a subpage whose contents are all
        zero is mapped to the shared zero page instead (not in VM_LOCKED VMAs). Subpages no
        longer mapped are freed; returns how many. An mTHP queued for a deferred split that
        is no longer partly mapped (freed, or its pfn reused) is only dropped from the queue."""
        order = self._large_folio_order(head)
        if order < 9:
            if region is not None:
                self.mthp_regions.setdefault(head, region)
            return self._split_mthp(head, order)
        from thpcore.mm.huge_memory import split_huge_pmd
        from thpcore.mm.mm_types import PMD_KIND_HUGE, pmd_huge_pfn, pmd_kind
        zone = self.page_alloc.zone
        regions = set(self.thp_moved.get(head, ()))
        if head in self.thp_index:
            regions.add(self.thp_index[head])
        for region in sorted(regions):
            for p in self.processes():
                mm = p.mm
                entry = mm.get_pmd(region)
                if pmd_kind(entry) == PMD_KIND_HUGE and pmd_huge_pfn(entry) == head:
                    split_huge_pmd(self, mm, region)
                self._remap_zero_subpages(mm, region, head, 512)
        f = zone.frames()
        if f["order"][head] == 9 and f["flags"][head] & _engine.PY_PG_HEAD:
            freed = self.page_tables.split_folio(head)
        else:
            freed = 512                      # every subpage was zero: the folio is gone
        self.thp_folio_freed(head)
        self.count("thp_split_page")
        self.count_mthp("split")
        return int(freed)

    def _remap_zero_subpages(self, mm, region: int, head: int, nr: int) -> None:
        """remap_page(RMP_USE_SHARED_ZEROPAGE) in one mm's PTE table at region: subpages of
        the folio [head, head + nr) whose content is all zero map the zero page instead (not
        in VM_LOCKED VMAs)."""
        from thpcore.mm.mm_types import PMD_KIND_TABLE, pmd_kind, pmd_table_id
        from thpcore.mm.vma import VM_LOCKED
        entry = mm.get_pmd(region)
        if pmd_kind(entry) != PMD_KIND_TABLE:
            return
        table = self.page_tables.table(pmd_table_id(entry))
        pfn = (table >> 4).astype(np.int64)
        mine = ((table & 1) != 0) & (pfn >= head) & (pfn < head + nr)
        if not mine.any():
            return
        idx = np.nonzero(mine)[0]
        zero = idx[self.page_alloc.zone.frames()["content"][pfn[idx]] == 0]
        zero = [i for i in zero if not (mm.vmas.find(region + int(i) * 4096) or
                                         _NoVMA).flags & VM_LOCKED]
        for i in zero:
            table[i] = _engine.PY_PTE_KIND_ZERO
            self.page_tables.put_frame(int(pfn[i]))
        mm.anon_rss -= len(zero)

    def _split_mthp(self, head: int, order: int) -> int:
        if order == 0:                          # a queue entry whose folio is gone
            self.thp_folio_freed(head)
            return 0
        nr = 1 << order
        mapcount = self.page_alloc.zone.frames()["mapcount"][head:head + nr]
        queued = self.deferred_split.get(head, False)
        if queued and mapcount.all():
            self.thp_folio_freed(head)           # a queue entry of an earlier folio here
            return 0
        if not queued and int(np.count_nonzero(mapcount)) > 1:
            # unmap_folio() takes the PTEs away one by one: the folio is partly mapped for a
            # moment and deferred_split_folio() counts it (live-checked: PAGEOUT of a
            # PTE-mapped mTHP counts split_deferred; a PMD-mapped THP is unmapped at once).
            self.count_mthp("split_deferred", order=order)
        region = self.mthp_regions.get(head)
        if region is not None:
            for p in self.processes():
                self._remap_zero_subpages(p.mm, region, head, nr)
        if self._large_folio_order(head) == order:
            freed = self.page_tables.split_folio(head)
        else:
            freed = nr                      # every subpage was zero: the folio is gone
        self.thp_folio_freed(head)
        self.count_mthp("split", order=order)
        return int(freed)

    # ---- kernel allocations (for scenarios that fragment memory on purpose) ---------------

    def kernel_alloc(self, order: int, migratetype: str = "unmovable") -> int:
        """Allocate 2**order frames for the kernel; returns the pfn. OSError(ENOMEM) if none."""
        return self.page_alloc.kernel_alloc(order, migratetype)

    def kernel_alloc_bulk(self, order: int, migratetype: str, count: int) -> np.ndarray:
        """Up to `count` kernel allocations in one engine call; returns the pfns obtained."""
        return self.page_alloc.kernel_alloc_bulk(order, migratetype, count)

    def kernel_free(self, pfn: int, order: int) -> None:
        """Free a block from kernel_alloc; ValueError on a double or mismatched free."""
        self.page_alloc.kernel_free(pfn, order)

    def kernel_free_bulk(self, pfns, order: int) -> None:
        """Free many blocks; all are validated before any is freed."""
        self.page_alloc.kernel_free_bulk(pfns, order)

    # ---- state ---------------------------------------------------------------------------------

    @property
    def nr_pages(self) -> int:
        return int(self.page_alloc.zone.nr_pages)

    def check(self) -> None:
        """Prove the invariants; raises InvariantError naming the first violation."""
        zone = self.page_alloc.zone
        rc = zone.check()
        if rc:
            where = f" at pfn {zone.check_pfn}" if zone.check_pfn >= 0 else ""
            raise InvariantError(f"{_engine.CHECK_MESSAGES[rc]}{where} (code {rc})")
        from thpcore.mm.mm_types import PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, pmd_huge_pfn, pmd_kind, pmd_table_id
        tables, heads, pmd_counts = [], [], {}
        for p in self._processes.values():
            mm = p.mm
            rss = swap = 0
            for region, entry in mm.populated_pmds():
                if not p.alive:
                    raise InvariantError(f"exited pid {p.pid} still has page tables")
                tables.append(pmd_table_id(entry))
                kind = pmd_kind(entry)
                if kind == PMD_KIND_HUGE:
                    head = pmd_huge_pfn(entry)
                    heads.append(head)
                    pmd_counts[head] = pmd_counts.get(head, 0) + 1
                    rss += 512
                    if mm.vmas.find(region) is None or mm.vmas.find(region).end < region + (2 << 20):
                        raise InvariantError(f"pid {p.pid}: huge PMD at {region:#x} outside one VMA")
                elif kind != PMD_KIND_HUGE_ZERO:
                    t = self.page_tables.table(pmd_table_id(entry))
                    rss += int(((t & 1) != 0).sum())
                    swap += int(((t & 0xF) == 2).sum())
            if p.alive and (rss != mm.anon_rss or swap != mm.swap_ents):
                raise InvariantError(f"pid {p.pid}: rss {mm.anon_rss}/swap {mm.swap_ents} counted, "
                                     f"{rss}/{swap} mapped")
        err = self.page_tables.check_against(tables, heads)
        if err:
            raise InvariantError(err)
        f = zone.frames()
        user = (f["flags"] & _engine.PY_PG_LRU) != 0
        charged = np.bincount(f["memcg"][user], minlength=1 << 16)
        usage = zone.memcg_usage()
        if not np.array_equal(charged, usage):
            cid = int(np.nonzero(charged != usage)[0][0])
            raise InvariantError(f"memcg {cid}: {usage[cid]} pages charged, {charged[cid]} held")
        if pmd_counts != self.thp_pmd_mappings:
            raise InvariantError("PMD-mapped THP bookkeeping disagrees with the page tables")
        # A lazyfree mark on a mapped frame belongs to an anonymous (LRU) page.
        bits = zone.lazyfree_bits()
        nz = np.flatnonzero(bits)
        on = np.unpackbits(bits[nz][:, None], axis=1, bitorder="little").astype(bool)
        pfns = ((nz[:, None] << 3) + np.arange(8))[on]
        fl = f["flags"][pfns]
        allocated = (fl & (_engine.PY_PG_HEAD | _engine.PY_PG_TAIL)) != 0   # mapcount is a link
        bad = pfns[allocated & (f["mapcount"][pfns] > 0) & ((fl & _engine.PY_PG_LRU) == 0)]
        if bad.size:
            raise InvariantError(f"lazyfree mark on mapped non-LRU frame {int(bad[0])}")

    def state_hash(self) -> str:
        """A digest of the whole simulated state; equal seeds and operations give equal hashes."""
        h = hashlib.blake2b(digest_size=16)
        zone = self.page_alloc.zone
        for name, arr in sorted(zone.frames().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(zone.free_area().tobytes())
        h.update(np.ascontiguousarray(zone.lazyfree_bits()).tobytes())
        for mt in range(5):
            h.update(np.asarray(zone.free_list(mt, 0)[:64], dtype=np.int64).tobytes())
        from thpcore.mm.mm_types import PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, pmd_kind, pmd_table_id
        procs = []
        for p in self._processes.values():
            mm = p.mm
            procs.append([p.pid, p.name, p.uid, sorted(p.caps), p.alive, p.exit_reason,
                          [(v.start, v.end, v.flags, v.anon_vma) for v in mm.vmas],
                          mm.anon_rss, mm.swap_ents, mm.registered, mm.thp_disable])
            for region, entry in mm.populated_pmds():
                h.update(np.array([region, entry], dtype=np.uint64).tobytes())
                if pmd_kind(entry) not in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
                    h.update(self.page_tables.table(pmd_table_id(entry)).tobytes())
        meta = {
            "processes": procs,
            "deferred_split": list(self.deferred_split.items()),
            "mthp_regions": sorted(self.mthp_regions.items()),
            "mthp_stats": {o: sorted(g.stats.items()) for o, g in self.thp.sizes.items()},
            "khugepaged_mms": [
                next(p.pid for p in self._processes.values() if p.mm is mm)
                for mm in self.khugepaged_mm_list],
            "huge_zero": self.huge_zero_pfn,
            "write_generation": self._write_generation,
            "swap_used": self.page_tables.swap_used,
            "counters": zone.counters(),
            "events": self.events,
            "watermarks": zone.watermarks(),
            "min_free_kbytes": self.page_alloc.min_free_kbytes,
            "sysfs": {p: self.sysfs.read(p) for p in sorted(self.sysfs._files)},
            "clock_ns": self.clock_ns,
            "rng": self.rng.bit_generator.state,
        }
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        return h.hexdigest()

    @classmethod
    def from_snapshot(cls, path, memory=None, swap=None, seed: int = 0) -> "Machine":
        """Rebuild a process captured with `thpcore snapshot PID -o path` (see snapshot.py)."""
        from thpcore.snapshot import rebuild
        with np.load(path) as snap:
            return rebuild({k: snap[k] for k in snap.files}, memory, swap, seed)

    def __repr__(self) -> str:
        return (f"Machine(memory={format_size(self.memory_bytes)!r}, kernel={self.kernel!r}, "
                f"seed={self.seed})")
