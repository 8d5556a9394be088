"""Process snapshots: a live process's anonymous memory layout, captured by
thpcore.live.snapshot (`thpcore snapshot PID -o snap.npz`), rebuilt here as a simulated process
(`Machine.from_snapshot(path)`), so one can ask what khugepaged or MADV_COLLAPSE would do to it.
This half reads only the snapshot, never the live host.

Captured per anonymous private VMA: range, protection, VmFlags (hg/nh), and per page the
/proc/PID/pagemap entry plus /proc/kpageflags and /proc/kpagecount of present pages (root).
Rebuilt faithfully: present, swapped, zero-page and none pages; PMD-mapped THPs (aligned,
contiguous THP pfns); THP settings from the host's sysfs. Approximated: contents (fresh non-zero
words), accessed bits (all young), sharing with other processes (kpagecount > 1 pages become
private) and PTE-mapped THPs (become 4 KiB pages).
"""

from __future__ import annotations

import numpy as np

from thpcore.constants import (MADV_COLLAPSE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT, MAP_ANONYMOUS,
                               MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE)
from thpcore.proc import pagemap as _pm

# the pagemap / kpageflags layout (thpcore.proc.pagemap) as numpy scalars for uint64 arrays
PM_PRESENT = np.uint64(_pm.PM_PRESENT)
PM_SWAP = np.uint64(_pm.PM_SWAP)
PFN_MASK = np.uint64(_pm.PM_PFN_MASK)
KPF_THP, KPF_ZERO_PAGE = _pm.KPF_THP, _pm.KPF_ZERO_PAGE


def _runs(mask: np.ndarray):
    """(start, stop) index pairs of the True runs of a boolean array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]))


def rebuild(machine_class, snap, memory=None, swap=None, seed: int = 0):
    """A machine_class (thpcore.Machine) with the snapshot's process rebuilt in it (see the
    module docstring)."""
    pm = snap["pagemap"]
    present = (pm & PM_PRESENT) != 0
    swapped = (pm & PM_SWAP) != 0
    kflags = snap["kpageflags"]
    zero = present & (((kflags >> np.uint64(KPF_ZERO_PAGE)) & np.uint64(1)) != 0)
    need_swap = int(swapped.sum()) * 4096
    if memory is None:
        memory = max(int(snap["memtotal_kb"]) * 1024 // (2 << 20) * (2 << 20), 64 << 20)
    if swap is None:
        swap = ((need_swap + (64 << 20)) // 4096) * 4096
    m = machine_class(memory, swap=swap, seed=seed)
    knobs = dict(k.split("=", 1) for k in snap["knobs"].tolist())
    m.thp.enabled = "never"                       # rebuild with 4 KiB faults first
    m._next_pid = int(snap["pid"])
    p = m.spawn(name=str(snap["comm"]), uid=int(snap["uid"]))
    pos = 0
    for start, end, fl in zip(snap["vma_start"].tolist(), snap["vma_end"].tolist(),
                              snap["vma_flags"].tolist()):
        n = (end - start) >> 12
        prot = (PROT_READ if fl & 1 else 0) | (PROT_WRITE if fl & 2 else 0)
        p.mmap(end - start, prot=prot | PROT_WRITE, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
               addr=start)
        sl = slice(pos, pos + n)
        data = (present[sl] & ~zero[sl]) | swapped[sl]
        for a, b in _runs(data):
            p.write(start + int(a) * 4096, int(b - a) * 4096)
        for a, b in _runs(zero[sl]):
            p.read(start + int(a) * 4096, int(b - a) * 4096)
        for a, b in _runs(swapped[sl]):
            p.madvise(start + int(a) * 4096, int(b - a) * 4096, MADV_PAGEOUT)
        # PMD-mapped THPs: 512 present pages, THP-flagged, aligned and contiguous pfns.
        first = ((start + (2 << 20) - 1) & ~((2 << 20) - 1))
        pfns = (pm[sl] & PFN_MASK).astype(np.int64)
        thp = ((kflags[sl] >> np.uint64(KPF_THP)) & np.uint64(1)) != 0
        for region in range(first, end - (2 << 20) + 1, 2 << 20):
            i = (region - start) >> 12
            seg = slice(i, i + 512)
            if present[sl][seg].all() and thp[seg].all() and pfns[i] % 512 == 0 \
                    and (np.diff(pfns[seg]) == 1).all():
                p.madvise(region, 2 << 20, MADV_COLLAPSE)
        if fl & 16:
            p.madvise(start, end - start, MADV_HUGEPAGE)
        if fl & 32:
            p.madvise(start, end - start, MADV_NOHUGEPAGE)
        if not fl & 2:
            p.mprotect(start, end - start, prot)
        pos += n
    for k, v in knobs.items():
        m.sysfs.write(f"/sys/kernel/mm/transparent_hugepage/{k}", v)
    return m
