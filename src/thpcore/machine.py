"""The simulated machine: one node, one zone, the THP knobs, the counters and the clock."""

from __future__ import annotations

import hashlib
import json

import numpy as np

from . import _engine
from .page_alloc import PageAllocator
from .procfs import Procfs
from .sysctl import Sysctl
from .sysfs import Sysfs, ThpSettings
from .units import PAGE_SIZE, format_size, parse_size
from .vmstat import Vmstat

KERNELS = ("6.18", "rfc-2022")
MIN_MEMORY = 16 << 20               # below this the kernel disables mobility grouping
SMALL_MACHINE = 512 << 20           # hugepage_init() clears every THP flag below this
PAGEBLOCK_BYTES = 2 << 20


class InvariantError(AssertionError):
    """Machine.check() found simulator state that no kernel could be in."""


class Machine:
    """A simulated Linux 6.18 host.

    Machine(memory="4G", swap="1G", seed=0, kernel="6.18", transparent_hugepage="madvise")

    `transparent_hugepage` is the boot-time THP mode (the kernel command line parameter of the
    same name; the Kconfig default of the distribution this models is "madvise").
    """

    def __init__(self, memory: int | str = "4G", swap: int | str | None = None, seed: int = 0,
                 kernel: str = "6.18", transparent_hugepage: str = "madvise"):
        nbytes = parse_size(memory, what="memory")
        if nbytes % PAGEBLOCK_BYTES:
            raise ValueError(f"memory must be a multiple of 2 MiB (one pageblock), got {nbytes}")
        if nbytes < MIN_MEMORY:
            raise ValueError(f"memory must be at least {format_size(MIN_MEMORY)}")
        if nbytes // PAGE_SIZE >= 0xFFFFFFFF:
            raise ValueError("memory must be below 16 TiB (pfns are 32-bit)")
        self.swap_bytes = parse_size(swap, what="swap") if swap is not None else 0
        if self.swap_bytes % PAGE_SIZE:
            raise ValueError("swap must be a multiple of 4 KiB")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TypeError("seed must be a non-negative int")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if transparent_hugepage not in ("always", "madvise", "never"):
            raise ValueError("transparent_hugepage must be 'always', 'madvise' or 'never'")

        self.memory_bytes = nbytes
        self.kernel = kernel
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.clock_ns = 0

        self.page_alloc = PageAllocator(nbytes // PAGE_SIZE)
        self.thp = ThpSettings(self._thp_knob_changed, enabled=transparent_hugepage,
                               small_machine=nbytes < SMALL_MACHINE)
        self.khugepaged_running = False
        if nbytes >= SMALL_MACHINE:
            self._start_stop_khugepaged()
        self.sysfs = Sysfs(self.thp)
        self.sysctl = Sysctl(self.page_alloc)
        self.procfs = Procfs(self)

        zone = self.page_alloc.zone
        self.events: dict[str, int] = {}
        self.vmstat = Vmstat(self.events, {
            "nr_free_pages": lambda: zone.nr_free_pages,
            "nr_free_pages_blocks": self._nr_free_pages_blocks,
            "pgalloc_normal": lambda: zone.pgalloc,
            "pgfree": lambda: zone.pgfree,
            "nr_unstable": lambda: 0,       # vmstat_show() always appends it (deprecated)
        })

    # ---- THP knob side effects -------------------------------------------------------------

    def _thp_knob_changed(self, name: str) -> None:
        if name in ("enabled", "hugepages-2048kB/enabled"):
            self._start_stop_khugepaged()

    def _start_stop_khugepaged(self) -> None:
        """start_stop_khugepaged(): the thread follows hugepage_pmd_enabled(), and every call
        re-derives min_free_kbytes and the watermarks."""
        self.khugepaged_running = self.thp.pmd_enabled()
        self.page_alloc.set_recommended_min_free_kbytes(self.khugepaged_running)

    def _nr_free_pages_blocks(self) -> int:
        area = self.page_alloc.zone.free_area()[:4]      # every type but isolate
        return int(sum(int(area[:, o].sum()) << o for o in range(9, area.shape[1])))

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

    def processes(self) -> list:
        """Live simulated processes (none can exist before process support lands)."""
        return []

    def check(self) -> None:
        """Prove the invariants; raises InvariantError naming the first violation."""
        zone = self.page_alloc.zone
        rc = zone.check()
        if rc:
            where = f" at pfn {zone.check_pfn}" if zone.check_pfn >= 0 else ""
            raise InvariantError(f"{_engine.CHECK_MESSAGES[rc]}{where} (code {rc})")

    def state_hash(self) -> str:
        """A digest of the whole simulated state; equal seeds and operations give equal hashes."""
        h = hashlib.blake2b(digest_size=16)
        zone = self.page_alloc.zone
        for name, arr in sorted(zone.frames().items()):
            h.update(name.encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(zone.free_area().tobytes())
        for mt in range(5):
            h.update(np.asarray(zone.free_list(mt, 0)[:64], dtype=np.int64).tobytes())
        meta = {
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

    def __repr__(self) -> str:
        return (f"Machine(memory={format_size(self.memory_bytes)!r}, kernel={self.kernel!r}, "
                f"seed={self.seed})")
