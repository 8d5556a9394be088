"""mm/mmap.c and mm/mprotect.c: creating, removing and re-protecting private anonymous VMAs."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from thpcore.constants import (MAP_ANONYMOUS, MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_POPULATE,
                               MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE)
from thpcore.mm.huge_memory import split_huge_pmds_at
from thpcore.mm.memory import free_pgtables, zap_page_range
from thpcore.mm.mm_types import (MM, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_WRITE, pmd_kind, pmd_table_id,
                                 pte_present)
from thpcore.mm.vma import (MMAP_BASE, MMAP_MIN_ADDR, PAGE_SIZE, PMD_SIZE, TASK_SIZE, VM_ACCOUNT, VM_MAYEXEC,
                            VM_MAYREAD, VM_MAYWRITE, VM_NORESERVE, VM_WRITE, VMA, prot_to_vm_flags)

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

KNOWN_MAP_FLAGS = (MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS | MAP_NORESERVE
                   | MAP_POPULATE | MAP_FIXED_NOREPLACE)
KNOWN_PROT = PROT_READ | PROT_WRITE | PROT_EXEC


def _einval(msg: str) -> OSError:
    return OSError(errno.EINVAL, f"Invalid argument: {msg}")


def page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def get_unmapped_area(mm: MM, length: int, hint: int | None) -> int:
    """Top-down placement below mmap_base. A hint is used when the range there is free.
    Anonymous lengths that are multiples of 2 MiB are THP-aligned (__thp_get_unmapped_area:
    search for length + 2 MiB, then take the aligned top of the padded gap)."""
    if hint:
        hint = page_align(hint)
        if MMAP_MIN_ADDR <= hint and hint + length <= TASK_SIZE \
                and not mm.vmas.overlapping(hint, hint + length):
            return hint
    if length % PMD_SIZE == 0:
        padded = mm.vmas.find_gap_topdown(length + PMD_SIZE, MMAP_BASE)
        if padded is not None:
            off_sub = (-padded) & (PMD_SIZE - 1)
            return padded + PMD_SIZE if off_sub == 0 else padded + off_sub
    addr = mm.vmas.find_gap_topdown(length, MMAP_BASE)
    if addr is None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory: no room in the address space")
    return addr


def do_mmap(kernel: "Kernel", mm: MM, length: int, prot: int, flags: int,
            addr: int | None) -> int:
    if flags & ~KNOWN_MAP_FLAGS:
        raise _einval(f"unknown mmap flags {flags & ~KNOWN_MAP_FLAGS:#x}")
    if prot & ~KNOWN_PROT:
        raise _einval(f"unknown prot bits {prot & ~KNOWN_PROT:#x}")
    if (flags & (MAP_SHARED | MAP_PRIVATE)) not in (MAP_SHARED, MAP_PRIVATE):
        raise _einval("exactly one of MAP_SHARED and MAP_PRIVATE")
    if not flags & MAP_ANONYMOUS or flags & MAP_SHARED:
        raise ValueError("thpcore models private anonymous mappings only "
                         "(MAP_PRIVATE | MAP_ANONYMOUS)")
    if length <= 0:
        raise _einval("length must be positive")
    length = page_align(length)
    if length > TASK_SIZE:
        raise OSError(errno.ENOMEM, "Cannot allocate memory: length exceeds the address space")
    fixed = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)
    if fixed:
        if addr is None or addr % PAGE_SIZE:
            raise _einval("MAP_FIXED needs a page-aligned address")
        if addr < MMAP_MIN_ADDR and addr != 0 or addr + length > TASK_SIZE:
            raise OSError(errno.EPERM if addr < MMAP_MIN_ADDR else errno.ENOMEM,
                          "address outside the user address space")
        if flags & MAP_FIXED_NOREPLACE and not flags & MAP_FIXED \
                and mm.vmas.overlapping(addr, addr + length):
            raise OSError(errno.EEXIST, "File exists: MAP_FIXED_NOREPLACE range is in use")
        start = addr
        do_munmap(kernel, mm, start, length)
    else:
        start = get_unmapped_area(mm, length, addr)
    vm_flags = prot_to_vm_flags(prot) | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    if flags & MAP_NORESERVE:
        vm_flags |= VM_NORESERVE
    elif vm_flags & VM_WRITE:
        vm_flags |= VM_ACCOUNT
    vma = VMA(start, start + length, vm_flags)
    mm.vmas.insert(vma)
    mm.vmas.merge_around(start, start + length)
    return start


def do_munmap(kernel: "Kernel", mm: MM, start: int, length: int) -> None:
    if start % PAGE_SIZE or length <= 0:
        raise _einval("munmap needs a page-aligned start and a positive length")
    length = page_align(length)
    end = start + length
    if end > TASK_SIZE or end < start:
        raise _einval("range outside the user address space")
    if not mm.vmas.overlapping(start, end):
        return
    zap_page_range(kernel, mm, start, end)
    mm.vmas.remove_range(start, end)
    free_pgtables(kernel, mm, start, end)


def do_mprotect(kernel: "Kernel", mm: MM, start: int, length: int, prot: int) -> None:
    if start % PAGE_SIZE:
        raise _einval("mprotect needs a page-aligned start")
    if prot & ~KNOWN_PROT:
        raise _einval(f"unknown prot bits {prot:#x}")
    length = page_align(length)
    end = start + length
    if end < start:
        raise OSError(errno.ENOMEM, "Cannot allocate memory: range wraps")
    if end == start:
        return
    if not mm.vmas.covered(start, end):
        raise OSError(errno.ENOMEM, "Cannot allocate memory: range not fully mapped")
    new = prot_to_vm_flags(prot)
    # Huge PMDs cut by the range boundaries are split (change_pmd_range -> __split_huge_pmd).
    split_huge_pmds_at(kernel, mm, start, end)
    mm.vmas.split_at(start)
    mm.vmas.split_at(end)
    removing_write = False
    for v in mm.vmas.overlapping(start, end):
        removing_write |= bool(v.flags & VM_WRITE) and not new & VM_WRITE
        v.flags = (v.flags & ~0x7) | new
    if removing_write:
        write_protect_range(kernel, mm, start, end)
    mm.vmas.merge_around(start, end)


def write_protect_range(kernel: "Kernel", mm: MM, start: int, end: int) -> None:
    """change_protection() removing write: clear the write bit of every PTE and huge PMD."""
    pt = kernel.page_tables
    for region, lo, hi in mm.regions(start, end):
        entry = mm.get_pmd(region)
        kind = pmd_kind(entry)
        if kind == PMD_KIND_HUGE:
            mm.set_pmd(region, entry & ~PMD_WRITE)
        elif entry and kind != PMD_KIND_HUGE_ZERO:
            table = pt.table(pmd_table_id(entry))
            i0, i1 = (lo - region) >> 12, (hi - region) >> 12
            seg = table[i0:i1]
            present = pte_present(seg)
            seg[present] &= ~0x8 & 0xFFFFFFFF


def exit_mmap(kernel: "Kernel", mm: MM) -> None:
    """exit_mmap(): unmap everything, free the page tables, leave khugepaged's list."""
    for vma in list(mm.vmas):
        zap_page_range(kernel, mm, vma.start, vma.end)
    ranges = [(v.start, v.end) for v in mm.vmas]
    mm.vmas.remove_range(0, TASK_SIZE)
    for start, end in ranges:
        free_pgtables(kernel, mm, start, end)
    if mm.registered:
        kernel.khugepaged.mm_exit(mm)
        mm.registered = False
