"""mm/madvise.c: argument checks, the VMA walk and each advice, for private anonymous memory."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import thpcore.constants as C
from thpcore.errors import SegmentationFault, Unsupported, int_arg
from thpcore.mm.huge_memory import Gfp, split_huge_pmds_at, vma_thp_gfp_mask
from thpcore.mm.khugepaged import CollapseControl, default_collapse_control, madvise_collapse
from thpcore.mm.memory import _pte_table, anon_vma_prepare, khugepaged_enter_vma, populate, zap_page_range
from thpcore.mm.mm_types import MM, PMD_KIND_TABLE, pmd_kind, pmd_table_id
from thpcore.mm.swap import madvise_cold_or_pageout, madvise_free
from thpcore.mm.vma import (PAGE_SHIFT, PAGE_SIZE, VM_DONTCOPY, VM_DONTDUMP, VM_HUGEPAGE, VM_LOCKED,
                            VM_NOHUGEPAGE, VM_WIPEONFORK, VMA)

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

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


def do_madvise(kernel: "Kernel", mm: MM, start: int, length: int, advice: int,
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
            cc = collapse_cc or default_collapse_control(kernel, vma)
            madvise_collapse(kernel, mm, vma, lo, hi, cc, pid)
        else:
            madvise_vma(kernel, mm, vma, lo, hi, advice)
        pos = hi
    if unmapped:
        raise OSError(errno.ENOMEM, "Cannot allocate memory: range not fully mapped")


def _set_vma_flags(kernel: "Kernel", mm: MM, vma: VMA, lo: int, hi: int, set_: int,
                   clear: int) -> VMA:
    new_flags = (vma.flags | set_) & ~clear
    if new_flags == vma.flags:
        return vma
    split_huge_pmds_at(kernel, mm, lo, hi)
    mm.vmas.split_at(lo)
    mm.vmas.split_at(hi)
    target = mm.vmas.find(lo)
    target.flags = new_flags
    mm.vmas.merge_around(lo, hi)
    return mm.vmas.find(lo)


def madvise_guard(kernel: "Kernel", mm: MM, vma: VMA, lo: int, hi: int, install: bool) -> None:
    """MADV_GUARD_INSTALL / MADV_GUARD_REMOVE (6.13+) on private anonymous memory. Install
    zaps the range (a THP it covers whole is zapped, one it cuts is split first), then puts a
    guard marker in every PTE: an access is SIGSEGV, MADV_DONTNEED and MADV_FREE keep the
    markers, munmap drops them, fork copies them, and to collapse they count as swap entries
    that cannot be faulted in (MADV_COLLAPSE: EINVAL). Remove clears markers only. Install on
    a VM_LOCKED VMA is EINVAL."""
    if install and vma.flags & VM_LOCKED:
        raise OSError(errno.EINVAL, "Invalid argument: guard regions in a locked VMA")
    pt = kernel.page_tables
    if install:
        anon_vma_prepare(kernel, vma)           # madvise_guard_install() does, 6.13-6.18
        zap_page_range(kernel, mm, lo, hi)
        mm.has_guards = True
    for region, a, b in mm.regions(lo, hi):
        if install:
            tid = _pte_table(kernel, mm, region)
        elif pmd_kind(mm.get_pmd(region)) == PMD_KIND_TABLE:
            tid = pmd_table_id(mm.get_pmd(region))
        else:
            continue
        pt.guard(tid, (a - region) >> PAGE_SHIFT, (b - region) >> PAGE_SHIFT, install)


def madvise_vma(kernel: "Kernel", mm: MM, vma: VMA, lo: int, hi: int, advice: int) -> None:
    if advice in FLAG_ADVICE:
        set_, clear = FLAG_ADVICE[advice]
        vma = _set_vma_flags(kernel, mm, vma, lo, hi, set_, clear)
        if advice == C.MADV_HUGEPAGE:
            khugepaged_enter_vma(kernel, mm, vma)
        return
    if advice in (C.MADV_DONTNEED, C.MADV_DONTNEED_LOCKED):
        if vma.flags & VM_LOCKED and advice == C.MADV_DONTNEED:
            raise OSError(errno.EINVAL, "Invalid argument: MADV_DONTNEED on a locked VMA")
        zap_page_range(kernel, mm, lo, hi, keep_guards=True)
        return
    if advice in (MADV_GUARD_INSTALL, MADV_GUARD_REMOVE):
        madvise_guard(kernel, mm, vma, lo, hi, install=advice == MADV_GUARD_INSTALL)
        return
    if advice in (C.MADV_COLD, C.MADV_PAGEOUT):
        if vma.flags & VM_LOCKED:
            raise OSError(errno.EINVAL, "Invalid argument: locked VMA")
        madvise_cold_or_pageout(kernel, mm, vma, lo, hi, pageout=advice == C.MADV_PAGEOUT)
        return
    if advice == C.MADV_FREE:
        if vma.flags & VM_LOCKED:
            raise OSError(errno.EINVAL, "Invalid argument: MADV_FREE on a locked VMA")
        madvise_free(kernel, mm, vma, lo, hi)
        return
    if advice in (C.MADV_POPULATE_READ, C.MADV_POPULATE_WRITE):
        try:
            populate(kernel, mm, vma, lo, hi, write=advice == C.MADV_POPULATE_WRITE)
        except SegmentationFault as e:      # a guard region: VM_FAULT_SIGSEGV is -EFAULT here
            raise OSError(errno.EFAULT, f"Bad address: populating stopped at {e.addr:#x}") from None
        return
    # MADV_WILLNEED on anonymous memory: swap readahead only, no visible state change here.


# ---- process_madvise(2): the remote entry point ----------------------------------------

UIO_MAXIOV = 1024
MAX_RW_COUNT = 0x7FFFF000                 # INT_MAX & PAGE_MASK
SSIZE_MAX = (1 << 63) - 1
REMOTE_ADVICE = {3, 20, 21, 25}           # WILLNEED, COLD, PAGEOUT, COLLAPSE


def ptrace_may_access_read(caller, target) -> bool:
    """PTRACE_MODE_READ_FSCREDS: same uid, or CAP_SYS_PTRACE."""
    return caller.uid == target.uid or "CAP_SYS_PTRACE" in caller.caps


def process_madvise(kernel: "Kernel", caller, pidfd: int, iovecs, advice: int, flags: int = 0) -> int:
    """process_madvise(2) in 6.18 (and the 2022 RFC's flags in the rfc-2022 profile)."""
    caller._live()
    pidfd, advice, flags = int_arg(pidfd, "pidfd"), int_arg(advice, "advice"), int_arg(flags, "flags")
    rfc = kernel.version == "rfc-2022"
    allowed_flags = (C.MADV_F_COLLAPSE_LIMITS | C.MADV_F_COLLAPSE_DEFRAG) if rfc and advice == C.MADV_COLLAPSE else 0
    if flags & ~allowed_flags or flags < 0:
        raise OSError(errno.EINVAL, "Invalid argument: flags")
    try:
        vec = [(int_arg(a, "iov_base"), int_arg(n, "iov_len")) for a, n in iovecs]
    except (TypeError, ValueError) as exc:
        raise TypeError("iovecs must be a sequence of (address, length) pairs") from exc
    if len(vec) > UIO_MAXIOV:
        raise OSError(errno.EINVAL, "Invalid argument: too many iovecs")
    total = 0
    for _, n in vec:
        if n < 0 or n > SSIZE_MAX or total + n > SSIZE_MAX:
            raise OSError(errno.EINVAL, "Invalid argument: iovec length")
        total += n
    # import_iovec() caps the total at MAX_RW_COUNT, shortening the iovecs that pass it.
    capped, total = [], 0
    for addr, n in vec:
        n = min(n, MAX_RW_COUNT - total)
        capped.append((addr, n))
        total += n
    vec = capped
    target = caller.fds.get(pidfd)
    if target is None:
        raise OSError(errno.EBADF, "Bad file descriptor")
    if not target.alive:
        raise ProcessLookupError(errno.ESRCH, "No such process")
    remote = target.mm is not caller.mm
    if remote and not ptrace_may_access_read(caller, target):
        raise PermissionError(errno.EACCES, "Permission denied")
    if remote and advice not in REMOTE_ADVICE:
        raise OSError(errno.EINVAL, "Invalid argument: advice not allowed remotely")
    if remote and "CAP_SYS_NICE" not in caller.caps:
        raise PermissionError(errno.EPERM, "Operation not permitted: CAP_SYS_NICE required")
    if rfc and remote and advice == C.MADV_COLLAPSE and not flags & C.MADV_F_COLLAPSE_LIMITS \
            and "CAP_SYS_ADMIN" not in caller.caps:
        raise PermissionError(errno.EPERM, "Operation not permitted: collapsing another process "
                                           "without C.MADV_F_COLLAPSE_LIMITS needs CAP_SYS_ADMIN")
    done = 0
    for addr, n in vec:
        cc = None
        if rfc and advice == C.MADV_COLLAPSE:
            vma_gfp = Gfp(direct_reclaim=True, kswapd=False) if flags & C.MADV_F_COLLAPSE_DEFRAG else None
            cc = _RfcControl(kernel, bool(flags & C.MADV_F_COLLAPSE_LIMITS), vma_gfp)
        try:
            do_madvise(kernel, target.mm, addr, n, advice, collapse_cc=cc, pid=target.pid)
        except OSError:
            if done:
                return done
            raise
        done += n
    return done


class _RfcControl(CollapseControl):
    """RFC collapse: limits on request; the VMA's fault-time gfp unless DEFRAG was asked for."""

    def __init__(self, kernel: "Kernel", limits: bool, gfp: Gfp | None):
        super().__init__(False, gfp or Gfp(direct_reclaim=False, kswapd=False), limits=limits)
        self._kernel = kernel
        self._fixed_gfp = gfp is not None

    def for_vma(self, vma: VMA) -> "CollapseControl":
        if not self._fixed_gfp:
            self.gfp = vma_thp_gfp_mask(self._kernel, vma)
        return self
