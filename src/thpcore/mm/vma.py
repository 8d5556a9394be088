"""Virtual memory areas (mm/vma.c): the ranges of one address space, with split and merge."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from thpcore.constants import (PAGE_SHIFT, PAGE_SIZE, PMD_SHIFT, PMD_SIZE, PROT_EXEC, PROT_READ,  # noqa: F401
                               PROT_WRITE, PUD_SHIFT)

TASK_SIZE = 0x7FFFFFFFF000            # x86-64, 4-level paging
MMAP_BASE = 0x7FFFF7FFF000            # TASK_SIZE - 128 MiB gap, no randomisation
MMAP_MIN_ADDR = 0x10000

# vm_flags (include/linux/mm.h)
VM_READ = 0x1
VM_WRITE = 0x2
VM_EXEC = 0x4
VM_SHARED = 0x8
VM_MAYREAD = 0x10
VM_MAYWRITE = 0x20
VM_MAYEXEC = 0x40
VM_LOCKED = 0x2000
VM_ACCOUNT = 0x100000
VM_NORESERVE = 0x200000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_LOCKONFAULT = 0x100000000
VM_DONTDUMP = 0x4000000
VM_WIPEONFORK = 0x2000000
VM_DONTCOPY = 0x20000

# The two letter codes of /proc/PID/smaps VmFlags, in show_smap_vma_flags() order.
VMFLAG_NAMES = [(VM_READ, "rd"), (VM_WRITE, "wr"), (VM_EXEC, "ex"), (VM_SHARED, "sh"),
                (VM_MAYREAD, "mr"), (VM_MAYWRITE, "mw"), (VM_MAYEXEC, "me"), (VM_LOCKED, "lo"),
                (VM_DONTCOPY, "dc"), (VM_ACCOUNT, "ac"), (VM_NORESERVE, "nr"),
                (VM_WIPEONFORK, "wf"), (VM_DONTDUMP, "dd"), (VM_HUGEPAGE, "hg"),
                (VM_NOHUGEPAGE, "nh")]


def prot_to_vm_flags(prot: int) -> int:
    return ((VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0)
            | (VM_EXEC if prot & PROT_EXEC else 0))


@dataclass
class VMA:
    start: int
    end: int
    flags: int
    anon_vma: int | None = None      # id of the anon_vma, set by the first fault (anon_vma_prepare)

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end

    @property
    def prot_flags(self) -> int:
        return self.flags & (VM_READ | VM_WRITE | VM_EXEC)

    def has_aligned_pmd(self) -> bool:
        """thp_vma_suitable_order() size rule: the VMA holds one whole aligned 2 MiB range."""
        return ((self.end - PMD_SIZE) & ~(PMD_SIZE - 1)) >= self.start


def can_merge(a: VMA, b: VMA) -> bool:
    """Adjacent VMAs with equal flags and compatible anon_vmas merge (is_mergeable_anon_vma)."""
    return (a.end == b.start and a.flags == b.flags
            and (a.anon_vma is None or b.anon_vma is None or a.anon_vma == b.anon_vma))


class VMAList:
    """The mm's VMAs, sorted by start, never overlapping."""

    def __init__(self):
        self.vmas: list[VMA] = []
        self._starts: list[int] = []

    def __iter__(self):
        return iter(self.vmas)

    def __len__(self):
        return len(self.vmas)

    def _reindex(self):
        self._starts = [v.start for v in self.vmas]

    def find(self, addr: int) -> VMA | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def overlapping(self, start: int, end: int) -> list[VMA]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        for v in self.vmas[i:]:
            if v.start >= end:
                break
            if v.end > start:
                out.append(v)
        return out

    def covered(self, start: int, end: int) -> bool:
        """Is every byte of [start, end) inside some VMA?"""
        pos = start
        for v in self.overlapping(start, end):
            if v.start > pos:
                return False
            pos = v.end
        return pos >= end

    def insert(self, vma: VMA) -> None:
        i = bisect.bisect_left(self._starts, vma.start)
        self.vmas.insert(i, vma)
        self._reindex()

    def remove_range(self, start: int, end: int) -> None:
        """Drop [start, end) from the VMAs, trimming or splitting those that straddle it."""
        out = []
        for v in self.vmas:
            if v.end <= start or v.start >= end:
                out.append(v)
                continue
            if v.start < start:
                out.append(VMA(v.start, start, v.flags, v.anon_vma))
            if v.end > end:
                out.append(VMA(end, v.end, v.flags, v.anon_vma))
        self.vmas = out
        self._reindex()

    def split_at(self, addr: int) -> None:
        v = self.find(addr)
        if v is not None and v.start < addr:
            i = self.vmas.index(v)
            self.vmas[i:i + 1] = [VMA(v.start, addr, v.flags, v.anon_vma),
                                  VMA(addr, v.end, v.flags, v.anon_vma)]
            self._reindex()

    def merge_around(self, start: int, end: int) -> None:
        """vma_merge(): coalesce mergeable neighbours touching [start, end]."""
        out: list[VMA] = []
        for v in self.vmas:
            if out and can_merge(out[-1], v) and v.start <= end and out[-1].end >= start:
                prev = out[-1]
                out[-1] = VMA(prev.start, v.end, v.flags,
                              prev.anon_vma if prev.anon_vma is not None else v.anon_vma)
            else:
                out.append(v)
        self.vmas = out
        self._reindex()

    def find_gap_topdown(self, length: int, high: int, low: int = MMAP_MIN_ADDR) -> int | None:
        """vm_unmapped_area() top-down: the highest start such that [start, start+length) fits
        in a gap below `high`; None if no gap fits."""
        top = high
        for v in reversed(self.vmas):
            if v.start >= top:
                continue                        # wholly above the window
            if v.end < top and top - v.end >= length:
                return top - length             # the gap between v and top fits
            top = min(top, v.start)
        return top - length if top - low >= length else None
