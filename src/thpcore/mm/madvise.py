"""mm/madvise.c: argument checks, the VMA walk and each advice, for private anonymous memory."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from thpcore import constants as C
from thpcore.mm.huge_memory import split_huge_pmds_at
from thpcore.mm.memory import khugepaged_enter_vma, zap_page_range
from thpcore.mm.mm_types import MM, PMD_KIND_TABLE, pmd_kind, pmd_table_id
from thpcore.mm.vma import (PAGE_SHIFT, PAGE_SIZE, VM_DONTCOPY, VM_DONTDUMP, VM_HUGEPAGE, VM_LOCKED, VM_NOHUGEPAGE,
                  VM_WIPEONFORK, VMA)
from thpcore.errors import SegmentationFault, Unsupported

if TYPE_CHECKING:
    from thpcore.machine import Machine

VM_SEQ_READ = 0x8000
VM_RAND_READ = 0x10000
MADV_GUARD_INSTALL = C.MADV_GUARD_INSTALL
MADV_GUARD_REMOVE = C.MADV_GUARD_REMOVE
MADV_HWPOISON = 100
MADV_SOFT_OFFLINE = 101

# madvise_behavior_valid() on an x86-64 kernel with KSM and memory-failure support.
VALID_ADVICE = {
    C.MADV_NORMAL, C.MADV_RANDOM, C.MADV_SEQUENTIAL, C.MADV_WILLNEED, C.MADV_DONTNEED,
    C.MADV_FREE, C.MADV_REMOVE, C.MADV_DONTFORK, C.MADV_DOFORK, C.MADV_MERGEABLE,
    C.MADV_UNMERGEABLE, C.MADV_HUGEPAGE, C.MADV_NOHUGEPAGE, C.MADV_DONTDUMP, C.MADV_DODUMP,
    C.MADV_WIPEONFORK, C.MADV_KEEPONFORK, C.MADV_COLD, C.MADV_PAGEOUT, C.MADV_POPULATE_READ,
    C.MADV_POPULATE_WRITE, C.MADV_DONTNEED_LOCKED, C.MADV_COLLAPSE, MADV_GUARD_INSTALL,
    MADV_GUARD_REMOVE, MADV_HWPOISON, MADV_SOFT_OFFLINE,
}

# Advice that only changes vm_flags: (flags to set, flags to clear).
FLAG_ADVICE = {
    C.MADV_NORMAL: (0, VM_SEQ_READ | VM_RAND_READ),
    C.MADV_RANDOM: (VM_RAND_READ, VM_SEQ_READ),
    C.MADV_SEQUENTIAL: (VM_SEQ_READ, VM_RAND_READ),
    C.MADV_DONTFORK: (VM_DONTCOPY, 0),
    C.MADV_DOFORK: (0, VM_DONTCOPY),
    C.MADV_WIPEONFORK: (VM_WIPEONFORK, 0),
    C.MADV_KEEPONFORK: (0, VM_WIPEONFORK),
    C.MADV_DONTDUMP: (VM_DONTDUMP, 0),
    C.MADV_DODUMP: (0, VM_DONTDUMP),
    C.MADV_HUGEPAGE: (VM_HUGEPAGE, VM_NOHUGEPAGE),
    C.MADV_NOHUGEPAGE: (VM_NOHUGEPAGE, VM_HUGEPAGE),
}


def check_madvise_args(start: int, length: int, advice: int) -> int | None:
    """is_valid_madvise() + madvise_should_skip(): the end address, or None for a no-op.
    Raises OSError(EINVAL) exactly where the kernel returns it."""
    if advice not in VALID_ADVICE:
        raise OSError(errno.EINVAL, f"Invalid argument: unknown advice {advice}")
    if start % PAGE_SIZE:
        raise OSError(errno.EINVAL, "Invalid argument: start is not page aligned")
    aligned = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1) & ((1 << 64) - 1)
    if length and not aligned:
        raise OSError(errno.EINVAL, "Invalid argument: length rounds up to zero")
    end = start + aligned
    if end >= 1 << 64:
        raise OSError(errno.EINVAL, "Invalid argument: range wraps")
    return None if end == start else end


def do_madvise(machine: "Machine", mm: MM, start: int, length: int, advice: int,
               collapse_cc=None, pid: int = 0) -> None:
    end = check_madvise_args(start, length, advice)
    if end is None:
        return
    if advice in (C.MADV_MERGEABLE, C.MADV_UNMERGEABLE, MADV_HWPOISON, MADV_SOFT_OFFLINE):
        raise Unsupported(f"madvise advice {advice} is not modelled by thpcore yet")
    if advice == C.MADV_REMOVE:
        # madvise_remove(): only for shared file mappings.
        if mm.vmas.overlapping(start, end):
            raise OSError(errno.EINVAL, "Invalid argument: MADV_REMOVE on anonymous memory")
    unmapped = False
    pos = start
    while pos < end:
        vma = mm.vmas.find(pos) or next(iter(mm.vmas.overlapping(pos, end)), None)
        if vma is None:
            raise OSError(errno.ENOMEM, "Cannot allocate memory: range not fully mapped")
        if pos < vma.start:
            unmapped = True
            if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
                break                     # madvise_populate() stops at the first hole
            pos = vma.start
        lo, hi = pos, min(end, vma.end)
        if advice == C.MADV_COLLAPSE:
            from thpcore.mm.khugepaged import default_collapse_control, madvise_collapse
            cc = collapse_cc or default_collapse_control(machine, vma)
            madvise_collapse(machine, mm, vma, lo, hi, cc, pid)
        else:
            madvise_vma(machine, mm, vma, lo, hi, advice)
        pos = hi
    if unmapped:
        raise OSError(errno.ENOMEM, "Cannot allocate memory: range not fully mapped")


def _set_vma_flags(machine: "Machine", mm: MM, vma: VMA, lo: int, hi: int, set_: int,
                   clear: int) -> VMA:
    new_flags = (vma.flags | set_) & ~clear
    if new_flags == vma.flags:
        return vma
    split_huge_pmds_at(machine, mm, lo, hi)
    mm.vmas.split_at(lo)
    mm.vmas.split_at(hi)
    target = mm.vmas.find(lo)
    target.flags = new_flags
    mm.vmas.merge_around(lo, hi)
    return mm.vmas.find(lo)


def madvise_guard(machine: "Machine", mm: MM, vma: VMA, lo: int, hi: int, install: bool) -> None:
    """MADV_GUARD_INSTALL / MADV_GUARD_REMOVE (6.13+) on private anonymous memory. Install
    zaps the range (a THP it covers whole is zapped, one it cuts is split first), then puts a
    guard marker in every PTE: an access is SIGSEGV, MADV_DONTNEED and MADV_FREE keep the
    markers, munmap drops them, fork copies them, and to collapse they count as swap entries
    that cannot be faulted in (MADV_COLLAPSE: EINVAL). Remove clears markers only. Install on
    a VM_LOCKED VMA is EINVAL."""
    from thpcore.mm.memory import _pte_table, anon_vma_prepare
    if install and vma.flags & VM_LOCKED:
        raise OSError(errno.EINVAL, "Invalid argument: guard regions in a locked VMA")
    pt = machine.page_tables
    if install:
        anon_vma_prepare(machine, vma)           # madvise_guard_install() does, 6.13-6.18
        zap_page_range(machine, mm, lo, hi)
        mm.has_guards = True
    for region, a, b in mm.regions(lo, hi):
        if install:
            tid = _pte_table(machine, mm, region)
        elif pmd_kind(mm.get_pmd(region)) == PMD_KIND_TABLE:
            tid = pmd_table_id(mm.get_pmd(region))
        else:
            continue
        pt.guard(tid, (a - region) >> PAGE_SHIFT, (b - region) >> PAGE_SHIFT, install)


def madvise_vma(machine: "Machine", mm: MM, vma: VMA, lo: int, hi: int, advice: int) -> None:
    if advice in FLAG_ADVICE:
        set_, clear = FLAG_ADVICE[advice]
        vma = _set_vma_flags(machine, mm, vma, lo, hi, set_, clear)
        if advice == C.MADV_HUGEPAGE:
            khugepaged_enter_vma(machine, mm, vma)
        return
    if advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED):
        if vma.flags & VM_LOCKED and advice == C.MADV_DONTNEED:
            raise OSError(errno.EINVAL, "Invalid argument: MADV_DONTNEED on a locked VMA")
        zap_page_range(machine, mm, lo, hi, keep_guards=True)
        return
    if advice in (MADV_GUARD_INSTALL, MADV_GUARD_REMOVE):
        madvise_guard(machine, mm, vma, lo, hi, install=advice == MADV_GUARD_INSTALL)
        return
    if advice in (C.MADV_COLD, C.MADV_PAGEOUT):
        if vma.flags & VM_LOCKED:
            raise OSError(errno.EINVAL, "Invalid argument: locked VMA")
        from thpcore.mm.swap import madvise_cold_or_pageout
        madvise_cold_or_pageout(machine, mm, vma, lo, hi, pageout=advice == C.MADV_PAGEOUT)
        return
    if advice == C.MADV_FREE:
        if vma.flags & VM_LOCKED:
            raise OSError(errno.EINVAL, "Invalid argument: MADV_FREE on a locked VMA")
        from thpcore.mm.swap import madvise_free
        madvise_free(machine, mm, vma, lo, hi)
        return
    if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
        try:
            machine.populate(mm, vma, lo, hi, write=advice == C.MADV_POPULATE_WRITE)
        except SegmentationFault as e:      # a guard region: VM_FAULT_SIGSEGV is -EFAULT here
            raise OSError(errno.EFAULT, f"Bad address: populating stopped at {e.addr:#x}") from None
        return
    # MADV_WILLNEED on anonymous memory: swap readahead only, no visible state change here.
