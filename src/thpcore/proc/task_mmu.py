"""fs/proc/task_mmu.c: /proc/PID/smaps, smaps_rollup and pagemap for simulated processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

import thpcore._engine as _engine
from thpcore.mm.huge_memory import TVA, thp_vma_allowable
from thpcore.mm.mm_types import (MM, PMD_DIRTY, PMD_KIND_HUGE, PMD_KIND_HUGE_ZERO, PMD_KIND_TABLE, PMD_YOUNG,
                                 PTE_PFN_SHIFT, pmd_huge_pfn, pmd_kind, pmd_table_id, pte_present, pte_swap,
                                 pte_zero)
from thpcore.mm.vma import PAGE_SHIFT, PMD_SIZE, VM_LOCKED, VMA, VMFLAG_NAMES
from thpcore.proc.pagemap import (KPF_ANON, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_THP, KPF_ZERO_PAGE,
                                  PM_GUARD_REGION, PM_MMAP_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, PM_SWAP,
                                  PM_SWAP_OFFSET_SHIFT)

if TYPE_CHECKING:
    from thpcore.mm.kernel import Kernel

PSS_SHIFT = 12
SMAPS_FIELDS = ["Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty",
                "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced",
                "Anonymous", "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped",
                "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss", "Locked"]
ROLLUP_FIELDS = ["Rss", "Pss", "Pss_Dirty", "Pss_Anon", "Pss_File", "Pss_Shmem", "Shared_Clean",
                 "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced", "Anonymous",
                 "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped",
                 "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss", "Locked"]


def _account(acc: dict, mapcount: np.ndarray, dirty: np.ndarray, young: np.ndarray,
             locked: bool, lazy: np.ndarray) -> None:
    """smaps_account() over a batch of present 4 KiB pages (bytes, pss << PSS_SHIFT).
    LazyFree counts lazyfree pages not written since MADV_FREE (clean PTE)."""
    n = mapcount.size
    if not n:
        return
    page = 4096
    acc["Rss"] += n * page
    acc["Anonymous"] += n * page
    acc["LazyFree"] += int((lazy & ~dirty).sum()) * page
    acc["Referenced"] += int(young.sum()) * page
    shared = mapcount >= 2
    acc["Shared_Dirty"] += int((shared & dirty).sum()) * page
    acc["Shared_Clean"] += int((shared & ~dirty).sum()) * page
    acc["Private_Dirty"] += int((~shared & dirty).sum()) * page
    acc["Private_Clean"] += int((~shared & ~dirty).sum()) * page
    pss = (page << PSS_SHIFT) // np.maximum(mapcount, 1).astype(np.int64)
    acc["pss"] += int(pss.sum())
    acc["pss_dirty"] += int(pss[dirty].sum())
    if locked:
        acc["pss_locked"] += int(pss.sum())


def vma_stats(machine: "Kernel", mm: MM, vma: VMA) -> dict:
    acc = dict.fromkeys(SMAPS_FIELDS, 0)
    acc.update(pss=0, pss_dirty=0, pss_locked=0)
    zone = machine.page_alloc.zone
    frames = zone.frames()
    mapcount_all = frames["mapcount"]
    pt = machine.page_tables
    locked = bool(vma.flags & VM_LOCKED)
    for region, lo, hi, entry, kind in mm.mapped_regions(vma.start, vma.end):
        if kind == PMD_KIND_HUGE:
            head = pmd_huge_pfn(entry)
            mc = mapcount_all[head:head + 512].astype(np.int64)
            _account(acc, mc, np.full(512, bool(entry & PMD_DIRTY)),
                     np.full(512, bool(entry & PMD_YOUNG)), locked,
                     np.full(512, bool(zone.lazyfree_mask([head])[0])))
            acc["AnonHugePages"] += PMD_SIZE
            continue
        seg = pt.table(pmd_table_id(entry))[(lo - region) >> PAGE_SHIFT:(hi - region) >> PAGE_SHIFT]
        present = seg[pte_present(seg)]
        _account(acc, mapcount_all[present >> PTE_PFN_SHIFT].astype(np.int64), (present & 4) != 0,
                 (present & 2) != 0, locked, zone.lazyfree_mask(present >> PTE_PFN_SHIFT))
        nswap = int(pte_swap(seg).sum())
        acc["Swap"] += nswap * 4096
        acc["SwapPss"] += nswap * 4096
    acc["Size"] = vma.end - vma.start
    acc["KernelPageSize"] = acc["MMUPageSize"] = 4096
    acc["Pss"] = acc["pss"] >> PSS_SHIFT
    acc["Pss_Dirty"] = acc["pss_dirty"] >> PSS_SHIFT
    acc["Locked"] = acc["pss_locked"] >> PSS_SHIFT
    return acc


def _vmflags(vma: VMA) -> str:
    """show_smap_vma_flags(): two-letter codes in the kernel's bit order (this kernel has no
    soft-dirty tracking, so no "sd")."""
    names = []
    for bit, name in VMFLAG_NAMES:
        if vma.flags & bit:
            names.append(name)
        if name == "lo":                       # VM_SEQ_READ / VM_RAND_READ follow VM_LOCKED
            if vma.flags & 0x8000:
                names.append("sr")
            if vma.flags & 0x10000:
                names.append("rr")
    return " ".join(names) + " "


def smaps_entries(machine: "Kernel", mm: MM) -> list[dict]:
    out = []
    for vma in mm.vmas:
        st = vma_stats(machine, mm, vma)
        entry = {k: st[k] // 1024 for k in SMAPS_FIELDS}
        entry["start"], entry["end"] = vma.start, vma.end
        entry["THPeligible"] = int(thp_vma_allowable(machine, mm, vma, TVA.SMAPS))
        entry["VmFlags"] = _vmflags(vma).split()
        out.append(entry)
    return out


def _perm(vma: VMA) -> str:
    f = vma.flags
    return ("r" if f & 1 else "-") + ("w" if f & 2 else "-") + ("x" if f & 4 else "-") + "p"


def render_smaps(machine: "Kernel", mm: MM) -> str:
    lines = []
    for vma in mm.vmas:
        st = vma_stats(machine, mm, vma)
        lines.append(f"{vma.start:08x}-{vma.end:08x} {_perm(vma)} 00000000 00:00 0 \n")
        for k in SMAPS_FIELDS:
            lines.append(f"{k + ':':<16}{st[k] // 1024:8d} kB\n")
        lines.append(f"{'THPeligible:':<16}{int(thp_vma_allowable(machine, mm, vma, TVA.SMAPS)):8d}\n")
        lines.append(f"VmFlags: {_vmflags(vma)}\n")
    return "".join(lines)


def smaps_rollup(machine: "Kernel", mm: MM) -> dict[str, int]:
    acc = dict.fromkeys(SMAPS_FIELDS, 0)
    pss = pss_dirty = pss_locked = 0
    for vma in mm.vmas:
        st = vma_stats(machine, mm, vma)
        for k in SMAPS_FIELDS:
            acc[k] += st[k]
        pss += st["pss"]
        pss_dirty += st["pss_dirty"]
        pss_locked += st["pss_locked"]
    out = {k: acc.get(k, 0) // 1024 for k in ROLLUP_FIELDS}
    out["Pss"] = out["Pss_Anon"] = (pss >> PSS_SHIFT) // 1024
    out["Pss_Dirty"] = (pss_dirty >> PSS_SHIFT) // 1024
    out["Pss_File"] = out["Pss_Shmem"] = 0
    out["Locked"] = (pss_locked >> PSS_SHIFT) // 1024
    return out


def render_smaps_rollup(machine: "Kernel", mm: MM) -> str:
    if not len(mm.vmas):
        return ""
    lo = min(v.start for v in mm.vmas)
    hi = max(v.end for v in mm.vmas)
    r = smaps_rollup(machine, mm)
    lines = [f"{lo:08x}-{hi:08x} ---p 00000000 00:00 0                          [rollup]\n"]
    lines += [f"{k + ':':<16}{r[k]:8d} kB\n" for k in ROLLUP_FIELDS]
    return "".join(lines)


def pagemap(machine: "Kernel", mm: MM, start: int, end: int) -> np.ndarray:
    """/proc/PID/pagemap entries for [start, end) as the kernel encodes them (read by root):
    present pages carry their pfn, swap entries type 0 and their offset, the zero page the
    zero pfn (one past the last frame), and exclusively mapped pages PM_MMAP_EXCLUSIVE."""
    n = (end - start) >> PAGE_SHIFT
    out = np.zeros(n, dtype=np.uint64)
    mapcount = machine.page_alloc.zone.frames()["mapcount"]
    zero_pfn = machine.nr_pages
    pt = machine.page_tables
    for region, lo, hi in mm.regions(start, end):
        if mm.vmas.find(lo) is None and not mm.vmas.overlapping(lo, hi):
            continue
        entry = mm.get_pmd(region)
        kind = pmd_kind(entry)
        o = out[(lo - start) >> PAGE_SHIFT:(hi - start) >> PAGE_SHIFT]
        i0, i1 = (lo - region) >> PAGE_SHIFT, (hi - region) >> PAGE_SHIFT
        if kind == PMD_KIND_HUGE:
            pfns = pmd_huge_pfn(entry) + np.arange(i0, i1, dtype=np.uint64)
            excl = mapcount[pfns.astype(np.int64)] == 1
            o[:] = PM_PRESENT | pfns | np.where(excl, PM_MMAP_EXCLUSIVE, 0).astype(np.uint64)
        elif kind == PMD_KIND_HUGE_ZERO:
            o[:] = PM_PRESENT | (np.uint64(machine.huge_zero_pfn) + np.arange(i0, i1, dtype=np.uint64))
        elif kind == PMD_KIND_TABLE:
            seg = pt.table(pmd_table_id(entry))[i0:i1].astype(np.uint64)
            present = pte_present(seg)
            swap = pte_swap(seg)
            zero = pte_zero(seg)
            pfn = seg >> np.uint64(4)
            excl = np.zeros_like(present)
            excl[present] = mapcount[pfn[present].astype(np.int64)] == 1
            o[present] = PM_PRESENT | pfn[present]
            o[present & excl] |= np.uint64(PM_MMAP_EXCLUSIVE)
            o[swap] = PM_SWAP | (pfn[swap] << np.uint64(PM_SWAP_OFFSET_SHIFT))
            # A guard marker reads as a PTE-marker swap entry (type 31, PTE_MARKER_GUARD)
            # with PM_GUARD_REGION, as on the live kernel.
            o[seg == _engine.PY_PTE_GUARD] = PM_SWAP | PM_GUARD_REGION | np.uint64((4 << PM_SWAP_OFFSET_SHIFT) | 31)
            o[zero] = PM_PRESENT | np.uint64(zero_pfn)
    return out


def kpageflags(machine: "Kernel", pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """/proc/kpageflags and /proc/kpagecount values the simulator's frames would show."""
    zone = machine.page_alloc.zone
    f = zone.frames()
    pfns = np.asarray(pfns, dtype=np.int64)
    flags = np.zeros(pfns.size, dtype=np.uint64)
    count = np.zeros(pfns.size, dtype=np.uint64)
    real = pfns < machine.nr_pages
    zero = ~real
    if machine.huge_zero_pfn is not None:
        hz = (pfns >= machine.huge_zero_pfn) & (pfns < machine.huge_zero_pfn + 512)
        zero |= hz
        real &= ~hz
    flags[zero] = np.uint64(1 << KPF_ZERO_PAGE)
    p = pfns[real]
    fl, order = f["flags"][p], f["order"][p]
    head = (fl & 0x2) != 0
    tail = (fl & 0x4) != 0
    user = (fl & 0x8) != 0
    thp_head = head & (order >= 1) & user      # any large anon folio: KPF_THP (mTHP too)
    v = np.where(user, np.uint64(1 << KPF_ANON), np.uint64(0))
    v |= np.where(thp_head, np.uint64((1 << KPF_COMPOUND_HEAD) | (1 << KPF_THP)), np.uint64(0))
    v |= np.where(tail & user, np.uint64((1 << KPF_COMPOUND_TAIL) | (1 << KPF_THP)), np.uint64(0))
    flags[real] = v
    count[real] = f["mapcount"][p].astype(np.uint64)
    return flags, count


def region_stats(machine: "Kernel", mm: MM) -> list[dict]:
    """Per VMA and per 2 MiB region: present / swapped / none / zero / shared / PTE-mapped THP /
    PMD-mapped page counts, computed like the live pagemap scan (thpcore.live.region_stats)."""
    out = []
    for vma in mm.vmas:
        pm = pagemap(machine, mm, vma.start, vma.end)
        present = (pm & np.uint64(PM_PRESENT)) != 0
        flags = np.zeros(pm.size, dtype=np.uint64)
        count = np.zeros(pm.size, dtype=np.uint64)
        pf = (pm[present] & np.uint64(PM_PFN_MASK)).astype(np.int64)
        flags[present], count[present] = kpageflags(machine, pf)
        counts = _engine.scan_pagemap(pm, flags, count, vma.start >> PAGE_SHIFT)
        first = (vma.start >> 21) << 21
        out.append({"start": vma.start, "end": vma.end,
                    "regions": first + (np.arange(counts.shape[0], dtype=np.int64) << 21),
                    **{name: counts[:, i] for i, name in enumerate(_engine.REGION_FIELDS)}})
    return out
