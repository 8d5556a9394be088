"""struct mm_struct: one address space's VMAs, PMD directory and counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np

import thpcore._engine as _engine
from thpcore.mm.vma import PMD_SHIFT, PMD_SIZE, PUD_SHIFT, VM_LOCKED, VMAList

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel
    from thpcore.mm.memcontrol import MemCgroup

PMD_KIND_MASK = 0x3
PMD_KIND_TABLE = _engine.PY_PMD_KIND_TABLE
PMD_KIND_HUGE = _engine.PY_PMD_KIND_HUGE
PMD_KIND_HUGE_ZERO = _engine.PY_PMD_KIND_HUGE_ZERO
PMD_YOUNG, PMD_DIRTY, PMD_WRITE = 0x4, 0x8, 0x10
PTRS_PER_PMD = 512

# A PTE (uint32, the engine's layout in _engine.pxd): bit 0 present (pfn in bits 4..31), else
# the low nibble is its kind: swap entry (slot in bits 4..31), shared zero page, guard marker.
PTE_KIND_MASK = 0xF
PTE_PFN_SHIFT = 4


def pte_present(ptes):
    """Which PTEs (an array or one int) map a frame."""
    return (ptes & _engine.PY_PTE_PRESENT) != 0


def pte_swap(ptes):
    """Which PTEs are swap entries (MM_SWAPENTS counts them; guard markers are not)."""
    return (ptes & PTE_KIND_MASK) == _engine.PY_PTE_KIND_SWAP


def pte_zero(ptes):
    """Which PTEs map the shared zero page."""
    return (ptes & PTE_KIND_MASK) == _engine.PY_PTE_KIND_ZERO


def pmd_kind(entry: int) -> int:
    return entry & PMD_KIND_MASK


def pmd_table_id(entry: int) -> int:
    """The PTE table of a table entry, or the deposited table of a huge entry."""
    return entry >> 32


def pmd_huge_pfn(entry: int) -> int:
    return ((entry >> 5) & 0x7FFFFFF) << 9


def make_table_pmd(tid: int) -> int:
    return (tid << 32) | PMD_KIND_TABLE


def make_huge_pmd(head: int, deposit: int, flags: int) -> int:
    return (deposit << 32) | ((head >> 9) << 5) | flags | PMD_KIND_HUGE


def make_huge_zero_pmd(deposit: int) -> int:
    return (deposit << 32) | PMD_KIND_HUGE_ZERO


class MM:
    """An address space. PMD entries live in one uint64[512] array per GiB of address space."""

    def __init__(self, kernel: "Kernel"):
        self.kernel = kernel
        self.vmas = VMAList()
        self.pmd_dir: dict[int, np.ndarray] = {}
        self.anon_rss = 0                  # MM_ANONPAGES, in pages
        self.swap_ents = 0                 # MM_SWAPENTS
        self.hiwater_rss = 0
        self.registered = False            # MMF_VM_HUGEPAGE: on khugepaged's list
        self.thp_disable = 0               # 0, or prctl's PR_SET_THP_DISABLE flags + 1
        self.huge_zero_used = False        # MMF_HUGE_ZERO_FOLIO
        self.has_guards = False            # a guard marker was ever installed (accesses check)
        self.memcg: "MemCgroup"            # set by Machine.spawn (the task's memory cgroup)

    @property
    def locked_vm(self) -> int:
        """mm->locked_vm (VmLck), in pages: the VM_LOCKED VMAs' sizes."""
        return sum((v.end - v.start) >> 12 for v in self.vmas if v.flags & VM_LOCKED)

    # ---- PMD directory ---------------------------------------------------------------------

    def pmd_slot(self, addr: int, create: bool = True) -> tuple[np.ndarray | None, int]:
        pud = addr >> PUD_SHIFT
        arr = self.pmd_dir.get(pud)
        if arr is None and create:
            arr = self.pmd_dir[pud] = np.zeros(PTRS_PER_PMD, dtype=np.uint64)
        return arr, (addr >> PMD_SHIFT) & (PTRS_PER_PMD - 1)

    def get_pmd(self, addr: int) -> int:
        arr, i = self.pmd_slot(addr, create=False)
        return 0 if arr is None else int(arr[i])

    def set_pmd(self, addr: int, entry: int) -> None:
        arr, i = self.pmd_slot(addr)
        arr[i] = entry

    def pmd_entries(self, start: int, end: int, missing: np.ndarray | None = None) -> np.ndarray:
        """The PMD entries of the 2 MiB regions in [start, end) (aligned), as one uint64 array.
        If `missing` (bool, same length) is given, it marks regions with no PMD table page at
        all (nothing in their GiB was ever faulted: find_pmd_or_thp_or_none's SCAN_PMD_NULL)."""
        n = (end - start) >> PMD_SHIFT
        out = np.zeros(n, dtype=np.uint64)
        pos = 0
        addr = start
        while pos < n:
            pud = addr >> PUD_SHIFT
            i = (addr >> PMD_SHIFT) & (PTRS_PER_PMD - 1)
            k = min(PTRS_PER_PMD - i, n - pos)
            arr = self.pmd_dir.get(pud)
            if arr is not None:
                out[pos:pos + k] = arr[i:i + k]
            elif missing is not None:
                missing[pos:pos + k] = True
            pos += k
            addr += k << PMD_SHIFT
        return out

    def regions(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(region start, lo, hi) for each 2 MiB region overlapping [start, end)."""
        r = start & ~(PMD_SIZE - 1)
        while r < end:
            yield r, max(start, r), min(end, r + PMD_SIZE)
            r += PMD_SIZE

    def mapped_regions(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """(region, lo, hi, entry, kind) for each 2 MiB region overlapping [start, end) whose
        PMD maps anonymous pages (a PTE table or a THP; none and huge-zero PMDs are skipped).
        The entry is read when the region's turn comes, so the caller may change earlier ones."""
        for region, lo, hi in self.regions(start, end):
            entry = self.get_pmd(region)
            kind = pmd_kind(entry)
            if entry and kind != PMD_KIND_HUGE_ZERO:
                yield region, lo, hi, entry, kind

    def first_guard(self, start: int, end: int) -> int | None:
        """The address of the first guard marker in [start, end), or None."""
        if not self.has_guards:
            return None
        pt = self.kernel.page_tables
        for region, lo, hi in self.regions(start, end):
            entry = self.get_pmd(region)
            if pmd_kind(entry) != PMD_KIND_TABLE:
                continue
            i0 = (lo - region) >> 12
            hits = np.flatnonzero(pt.table(pmd_table_id(entry))[i0:(hi - region) >> 12]
                                  == _engine.PY_PTE_GUARD)
            if hits.size:
                return lo + (int(hits[0]) << 12)
        return None

    def nr_huge_pmds(self) -> int:
        """PMD-mapped THPs in this mm (AnonHugePages / 2 MiB), counted over the directory."""
        return sum(int(np.count_nonzero((arr & PMD_KIND_MASK) == PMD_KIND_HUGE))
                   for arr in self.pmd_dir.values())

    def huge_map(self, start: int, nr_regions: int) -> np.ndarray:
        """uint8 per 2 MiB region from `start` (aligned): 1 where a THP is PMD-mapped."""
        idx = (start >> PMD_SHIFT) + np.arange(nr_regions, dtype=np.int64)
        puds = idx >> (PUD_SHIFT - PMD_SHIFT)
        out = np.zeros(nr_regions, dtype=np.uint8)
        for pud in np.unique(puds):
            arr = self.pmd_dir.get(int(pud))
            if arr is not None:
                sel = puds == pud
                out[sel] = (arr[idx[sel] & (PTRS_PER_PMD - 1)] & PMD_KIND_MASK) == PMD_KIND_HUGE
        return out

    def populated_pmds(self) -> Iterator[tuple[int, int]]:
        """(region address, entry) for every non-none PMD, ascending."""
        for pud in sorted(self.pmd_dir):
            arr = self.pmd_dir[pud]
            for i in np.nonzero(arr)[0]:
                yield (pud << PUD_SHIFT) | (int(i) << PMD_SHIFT), int(arr[i])
