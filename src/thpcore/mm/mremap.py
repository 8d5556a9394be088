"""mm/mremap.c for private anonymous memory: shrink, grow in place, move (MREMAP_MAYMOVE,
MREMAP_FIXED, MREMAP_DONTUNMAP), with the page-table moves that decide what happens to THPs:
a huge PMD moves whole when source and destination are both PMD-aligned over the whole
2 MiB (move_huge_pmd), a PTE table moves whole the same way (move_normal_pmd), anything else
splits the huge PMD and moves PTE by PTE (move_ptes). Checked against the live 6.18 kernel
(tests/mm/test_mremap.py, fidelity scenarios)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from thpcore.constants import MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE
from thpcore.mm.huge_memory import split_huge_pmd, split_huge_pmds_at
from thpcore.mm.memory import _pte_table, populate
from thpcore.mm.mm_types import (MM, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_KIND_TABLE, PTE_PFN_SHIFT,
                                 pmd_huge_pfn, pmd_kind, pmd_table_id, pte_present)
from thpcore.mm.mmap import do_munmap, get_unmapped_area, page_align
from thpcore.mm.vma import PAGE_SHIFT, PAGE_SIZE, PMD_SIZE, TASK_SIZE, VM_LOCKED, VM_WRITE, VMA

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel


WORD = (1 << 64) - 1


def _einval(msg: str) -> OSError:
    return OSError(errno.EINVAL, f"Invalid argument: {msg}")


def check_mremap_params(addr: int, old_len: int, new_len: int, flags: int,
                        new_addr: int) -> None:
    """check_mremap_params(), in the kernel's order (lengths already page-aligned)."""
    if flags & ~(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP):
        raise _einval(f"unknown mremap flags {flags:#x}")
    if addr % PAGE_SIZE:
        raise _einval("old_address must be page-aligned")
    if not new_len:
        raise _einval("new_size must not be 0")
    if new_len > TASK_SIZE:
        raise _einval("new_size exceeds the address space")
    if not flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):
        return
    if new_addr > TASK_SIZE - new_len:
        raise _einval("new_address outside the address space")
    if new_addr % PAGE_SIZE:
        raise _einval("new_address must be page-aligned")
    if not flags & MREMAP_MAYMOVE:
        raise _einval("MREMAP_FIXED / MREMAP_DONTUNMAP need MREMAP_MAYMOVE")
    if flags & MREMAP_DONTUNMAP and old_len != new_len:
        raise _einval("MREMAP_DONTUNMAP cannot resize")
    if flags & MREMAP_FIXED and new_addr < addr + old_len and addr < new_addr + new_len:
        raise _einval("new range overlaps the old one")


def do_mremap(kernel: "Kernel", mm: MM, addr: int, old_len: int, new_len: int, flags: int,
              new_addr: int = 0) -> int:
    """mremap(2); returns the (possibly new) address or raises OSError with the errno.
    Arguments are unsigned kernel words, as the system call sees them."""
    addr, new_addr = addr & WORD, new_addr & WORD
    old_len, new_len = page_align(old_len & WORD) & WORD, page_align(new_len & WORD) & WORD
    check_mremap_params(addr, old_len, new_len, flags, new_addr)
    vma = mm.vmas.find(addr)
    if vma is None:
        raise OSError(errno.EFAULT, "Bad address: no mapping at old_address")
    if not old_len:
        raise _einval("old_size 0 duplicates shared mappings only")
    if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):
        return _mremap_to(kernel, mm, addr, old_len, new_len, flags, new_addr)
    if old_len >= new_len:
        if old_len > new_len:
            do_munmap(kernel, mm, addr + new_len, old_len - new_len)
        return addr
    # Grow: the old range must lie in one VMA.
    if old_len > vma.end - addr:
        raise OSError(errno.EFAULT, "Bad address: old range spans more than one mapping")
    delta = new_len - old_len
    if addr + old_len == vma.end and vma.end + delta <= TASK_SIZE \
            and not mm.vmas.overlapping(vma.end, vma.end + delta):
        old_end = vma.end
        vma.end += delta                              # vma_expand()
        mm.vmas.merge_around(vma.start, vma.end)
        _grown(kernel, mm, vma, old_end, vma.end)
        return addr
    if not flags & MREMAP_MAYMOVE:
        raise OSError(errno.ENOMEM, "Cannot allocate memory: no room to grow in place")
    new_addr = get_unmapped_area(mm, new_len, None)
    return move_vma(kernel, mm, vma, addr, old_len, new_len, new_addr, dontunmap=False)


def _mremap_to(kernel, mm, addr, old_len, new_len, flags, new_addr) -> int:
    """mremap_to(): MREMAP_FIXED unmaps the target first; a shrink unmaps the tail first."""
    if flags & MREMAP_FIXED:
        do_munmap(kernel, mm, new_addr, new_len)
    if old_len > new_len:
        do_munmap(kernel, mm, addr + new_len, old_len - new_len)
        old_len = new_len
    vma = mm.vmas.find(addr)
    if vma is None:
        raise OSError(errno.EFAULT, "Bad address: no mapping at old_address")
    if old_len > vma.end - addr:
        raise OSError(errno.EFAULT, "Bad address: old range spans more than one mapping")
    if not flags & MREMAP_FIXED:
        new_addr = get_unmapped_area(mm, new_len, None)
    return move_vma(kernel, mm, vma, addr, old_len, new_len, new_addr,
                    dontunmap=bool(flags & MREMAP_DONTUNMAP))


def move_vma(kernel: "Kernel", mm: MM, vma: VMA, old_addr: int, old_len: int, new_len: int,
             new_addr: int, dontunmap: bool) -> int:
    """copy_vma() + move_page_tables() + unmapping the old range (unless DONTUNMAP)."""
    old_end = old_addr + old_len
    # The moved part becomes its own VMA; a huge PMD cut by its edges is split first.
    split_huge_pmds_at(kernel, mm, old_addr, old_end)
    mm.vmas.split_at(old_addr)
    mm.vmas.split_at(old_end)
    src = mm.vmas.find(old_addr)
    new = VMA(new_addr, new_addr + new_len, src.flags, src.anon_vma)
    mm.vmas.insert(new)
    move_page_tables(kernel, mm, old_addr, new_addr, old_len)
    if dontunmap:
        src.flags &= ~VM_LOCKED                       # the old VMA stays, empty and unlocked
    else:
        do_munmap(kernel, mm, old_addr, old_len)
    mm.vmas.merge_around(new_addr, new_addr + new_len)
    if new_len > old_len:
        _grown(kernel, mm, mm.vmas.find(new_addr), new_addr + old_len, new_addr + new_len)
    return new_addr


def _grown(kernel: "Kernel", mm: MM, vma: VMA, start: int, end: int) -> None:
    """A VM_LOCKED mapping that grew is populated (mlock_future; locked_vm follows the VMA)."""
    if vma is not None and vma.flags & VM_LOCKED:
        populate(kernel, mm, vma, start, end, write=bool(vma.flags & VM_WRITE))


def _note_thp_region(kernel: "Kernel", head: int, region: int) -> None:
    kernel.thp_moved.setdefault(head, set()).add(region)


def _note_ptes_region(kernel: "Kernel", ptes, region: int) -> None:
    """THP pages among these PTEs are now (also) mapped from region."""
    present = ptes[pte_present(ptes)] >> PTE_PFN_SHIFT
    if not present.size:
        return
    frames = kernel.page_alloc.zone.frames()
    heads = np.unique(present & ~np.uint32(511)).astype(np.int64)
    for head in heads[(frames["order"][heads] == 9) & ((frames["flags"][heads] & 0x2) != 0)]:
        _note_thp_region(kernel, int(head), region)


def move_page_tables(kernel: "Kernel", mm: MM, old_addr: int, new_addr: int,
                     length: int) -> None:
    """Move the mappings of [old_addr, old_addr + length) to new_addr, extent by extent."""
    pt = kernel.page_tables
    done = 0
    while done < length:
        old, new = old_addr + done, new_addr + done
        extent = min(PMD_SIZE - (old & (PMD_SIZE - 1)), PMD_SIZE - (new & (PMD_SIZE - 1)),
                     length - done)
        old_region, new_region = old & ~(PMD_SIZE - 1), new & ~(PMD_SIZE - 1)
        entry = mm.get_pmd(old_region)
        kind = pmd_kind(entry)
        whole = extent == PMD_SIZE                    # both aligned, a full PMD to move
        if entry == 0:
            pass
        elif whole and kind in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_KIND_TABLE) \
                and mm.get_pmd(new_region) == 0:
            # move_huge_pmd() / move_normal_pmd(): the entry moves, pages and table stay.
            mm.set_pmd(new_region, entry)
            mm.set_pmd(old_region, 0)
            if kind == PMD_KIND_HUGE:
                _note_thp_region(kernel, pmd_huge_pfn(entry), new_region)
            elif kind == PMD_KIND_TABLE:
                _note_ptes_region(kernel, pt.table(pmd_table_id(entry)), new_region)
        else:
            if kind in (PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO):
                split_huge_pmd(kernel, mm, old_region)
                entry = mm.get_pmd(old_region)
            i0, n = (old - old_region) >> PAGE_SHIFT, extent >> PAGE_SHIFT
            # pte_alloc() at the destination whenever the source has a table, moved PTEs or
            # not; first, as allocating may grow the pool (a view taken before goes stale).
            dst = pt.table(_pte_table(kernel, mm, new_region))
            seg = pt.table(pmd_table_id(entry))[i0:i0 + n]
            if seg.any():
                j0 = (new - new_region) >> PAGE_SHIFT
                dst[j0:j0 + n] = seg                     # move_ptes(): rmap and RSS unchanged
                _note_ptes_region(kernel, seg, new_region)
                seg[:] = 0
        done += extent
