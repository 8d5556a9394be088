"""Process snapshots: capture a live process's anonymous memory layout (`thpcore snapshot PID
-o snap.npz`) and rebuild it as a simulated process (`Machine.from_snapshot(path)`), so one can
ask what khugepaged or MADV_COLLAPSE would do to it.

Captured per anonymous private VMA: range, protection, VmFlags (hg/nh), and per page the
/proc/PID/pagemap entry plus /proc/kpageflags and /proc/kpagecount of present pages (root).
Rebuilt faithfully: present, swapped, zero-page and none pages; PMD-mapped THPs (aligned,
contiguous THP pfns); THP settings from the host's sysfs. Approximated: contents (fresh non-zero
words), accessed bits (all young), sharing with other processes (kpagecount > 1 pages become
private) and PTE-mapped THPs (become 4 KiB pages).
"""

from __future__ import annotations

import os
import re

import numpy as np

from thpcore.proc import pagemap as _pm
from thpcore.proc.smaps import parse_smaps

# the pagemap / kpageflags layout (thpcore.proc.pagemap) as numpy scalars for uint64 arrays
PM_PRESENT = np.uint64(_pm.PM_PRESENT)
PM_SWAP = np.uint64(_pm.PM_SWAP)
PFN_MASK = np.uint64(_pm.PM_PFN_MASK)
KPF_THP, KPF_ZERO_PAGE = _pm.KPF_THP, _pm.KPF_ZERO_PAGE
THP_KNOBS = ("enabled", "defrag", "use_zero_page", "shrink_underused", "khugepaged/defrag",
             "khugepaged/max_ptes_none", "khugepaged/max_ptes_swap", "khugepaged/max_ptes_shared",
             "khugepaged/pages_to_scan", "khugepaged/scan_sleep_millisecs",
             "khugepaged/alloc_sleep_millisecs")


def _pread_u64(path: str, index: np.ndarray) -> np.ndarray:
    """Entries index[i] of a file of u64 (pagemap, kpageflags, kpagecount), read in runs."""
    out = np.zeros(index.size, dtype=np.uint64)
    if not index.size:
        return out
    order = np.argsort(index, kind="stable")
    idx = index[order]
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    fd = os.open(path, os.O_RDONLY)
    try:
        for run in np.split(np.arange(idx.size), breaks):
            first = int(idx[run[0]])
            data = os.pread(fd, 8 * run.size, 8 * first)
            vals = np.frombuffer(data, dtype=np.uint64)
            out[order[run[:vals.size]]] = vals
    finally:
        os.close(fd)
    return out


def _read_pagemap(pid: int, starts, ends) -> np.ndarray:
    """pagemap entries of every page of the VMAs, read range by range in large chunks."""
    total = int(sum((int(e) - int(s)) >> 12 for s, e in zip(starts, ends)))
    out = np.empty(total, dtype=np.uint64)
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    pos = 0
    chunk = 1 << 23                                   # entries per read (64 MiB)
    try:
        for s, e in zip(starts, ends):
            vpn, end = int(s) >> 12, int(e) >> 12
            while vpn < end:
                n = min(chunk, end - vpn)
                buf = out[pos:pos + n]
                got = os.preadv(fd, [memoryview(buf).cast("B")], 8 * vpn)
                if got != 8 * n:
                    buf[got // 8:] = 0
                vpn += n
                pos += n
    finally:
        os.close(fd)
    return out


def _knob(name: str) -> str:
    text = open(f"/sys/kernel/mm/transparent_hugepage/{name}").read().strip()
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def capture(pid: int) -> dict[str, np.ndarray]:
    """Read a live process's anonymous VMAs and page states (needs root for pfns)."""
    if os.geteuid() != 0:
        raise PermissionError("reading page frame numbers from /proc/PID/pagemap and "
                              "/proc/kpageflags needs root (CAP_SYS_ADMIN); run as root")
    if not os.path.exists(f"/proc/{pid}"):
        raise ProcessLookupError(3, f"No such process: {pid}")
    vmas = [v for v in parse_smaps(open(f"/proc/{pid}/smaps").read())
            if v["perms"][3] == "p" and v["inode"] == 0 and v["name"] in ("", "[heap]", "[stack]")
            and v["perms"][:3] != "---"]
    starts = np.array([v["start"] for v in vmas], dtype=np.uint64)
    ends = np.array([v["end"] for v in vmas], dtype=np.uint64)
    flags = np.array([(1 if v["perms"][0] == "r" else 0) | (2 if v["perms"][1] == "w" else 0)
                      | (16 if "hg" in v["VmFlags"] else 0) | (32 if "nh" in v["VmFlags"] else 0)
                      for v in vmas], dtype=np.uint8)
    pm = _read_pagemap(pid, starts, ends)
    present = (pm & PM_PRESENT) != 0
    pfns = (pm & PFN_MASK).astype(np.int64)
    kflags = np.zeros(pm.size, dtype=np.uint64)
    kcount = np.zeros(pm.size, dtype=np.uint64)
    if present.any() and os.access("/proc/kpageflags", os.R_OK):
        kflags[present] = _pread_u64("/proc/kpageflags", pfns[present])
        kcount[present] = _pread_u64("/proc/kpagecount", pfns[present])
    status = open(f"/proc/{pid}/status").read()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    memtotal = int(re.search(r"^MemTotal:\s+(\d+)", open("/proc/meminfo").read(), re.M).group(1))
    return {
        "pid": np.int64(pid), "uid": np.int64(uid),
        "comm": np.array(open(f"/proc/{pid}/comm").read().strip()),
        "vma_start": starts, "vma_end": ends, "vma_flags": flags,
        "pagemap": pm, "kpageflags": kflags, "kpagecount": kcount,
        "knobs": np.array([f"{k}={_knob(k)}" for k in THP_KNOBS]),
        "memtotal_kb": np.int64(memtotal),
    }


def save(pid: int, path: str) -> dict:
    snap = capture(pid)
    np.savez_compressed(path, **snap)
    return snap


def _runs(mask: np.ndarray):
    """(start, stop) index pairs of the True runs of a boolean array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]))


def rebuild(snap, memory=None, swap=None, seed: int = 0):
    """A Machine with the snapshot's process rebuilt in it (see the module docstring)."""
    from thpcore.constants import (MADV_COLLAPSE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT,
                            MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE)
    from thpcore.machine import Machine
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
    m = Machine(memory, swap=swap, seed=seed)
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
