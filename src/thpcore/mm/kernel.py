"""The simulated kernel's state and its composition: one node with one zone, the page tables,
the THP knobs, the vmstat events, the clock and its event loop (khugepaged, kcompactd and
kswapd wake-ups), the task list and the cost accounting. The subsystems in thpcore.mm take
this object as their first argument; thpcore.Machine is its public face."""

from __future__ import annotations

import contextlib
import errno

import numpy as np

import thpcore._engine as _engine
from thpcore.costs import Accounting, CostModel
from thpcore.mm.compaction import Compaction
from thpcore.mm.huge_memory import folio_order
from thpcore.mm.khugepaged import EVENT_DTYPE, CollapseEventLog, Khugepaged
from thpcore.mm.memcontrol import CgroupTree
from thpcore.mm.page_alloc import PageAllocator
from thpcore.mm.sysctl import Sysctl
from thpcore.mm.sysfs import Sysfs, ThpSettings
from thpcore.mm.vmscan import balance_pgdat
from thpcore.mm.vmstat import Vmstat
from thpcore.units import PAGE_SIZE, format_size, parse_size

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


class Kernel:
    """The state of one simulated Linux host (see thpcore.Machine for the arguments)."""

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

        self.costs = CostModel.load(costs)
        self.accounting = Accounting()
        self.actor = None                 # who pays for the work being done right now
        self.memory_bytes = nbytes
        self.version = kernel
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
        self._processes: dict = {}         # pid -> task (a thpcore.Process), exited ones too
        self._next_pid = 1
        self._next_anon_vma = 1
        self._write_generation = 0
        self.events: dict[str, int] = dict.fromkeys(EVENTS, 0)
        self._collapse_events = CollapseEventLog()
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
                   if partial and folio_order(self, h) == order)

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

    def processes(self) -> list:
        """Live simulated processes, by pid."""
        return [p for p in self._processes.values() if p.alive]

    def process(self, pid: int):
        p = self._processes.get(pid)
        if p is None or not p.alive:
            raise ProcessLookupError(errno.ESRCH, f"No such process: {pid}")
        return p

    # ---- reclaim and OOM -----------------------------------------------------------------------

    def wakeup_kswapd(self) -> None:
        self.kswapd_wake_pending = True

    def run_kswapd(self) -> None:
        self.kswapd_wake_pending = False
        balance_pgdat(self)

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
