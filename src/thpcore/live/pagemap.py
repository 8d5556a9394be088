"""Readers of the live /proc/PID/pagemap and /proc/kpageflags (/proc/kpagecount): single
entries, decoded, and whole VMAs read in large runs (for snapshots).  The bit layout is
thpcore.proc.pagemap's."""

from __future__ import annotations

import os
import struct

import numpy as np

from thpcore.proc.pagemap import (KPF_NAMES, PM_FILE, PM_GUARD_REGION, PM_MMAP_EXCLUSIVE, PM_PFN_MASK,
                                  PM_PRESENT, PM_SOFT_DIRTY, PM_SWAP, PM_SWAP_OFFSET_SHIFT, PM_SWAP_TYPE_MASK,
                                  PM_UFFD_WP)


def decode_pagemap(entry: int) -> dict:
    """Decode one 64-bit /proc/pid/pagemap entry."""
    d = {"present": bool(entry & PM_PRESENT), "swapped": bool(entry & PM_SWAP),
         "file_or_shared": bool(entry & PM_FILE), "exclusive": bool(entry & PM_MMAP_EXCLUSIVE),
         "soft_dirty": bool(entry & PM_SOFT_DIRTY), "uffd_wp": bool(entry & PM_UFFD_WP),
         "guard": bool(entry & PM_GUARD_REGION)}
    if d["present"]:
        d["pfn"] = entry & PM_PFN_MASK
    elif d["swapped"]:
        d["swap_type"] = entry & PM_SWAP_TYPE_MASK
        d["swap_offset"] = (entry & PM_PFN_MASK) >> PM_SWAP_OFFSET_SHIFT
    return d


def kpageflags(pfns) -> list[int]:
    """Raw /proc/kpageflags words for the given PFNs (root only)."""
    out = []
    fd = os.open("/proc/kpageflags", os.O_RDONLY)
    try:
        for pfn in pfns:
            out.append(struct.unpack("<Q", os.pread(fd, 8, pfn * 8))[0])
    finally:
        os.close(fd)
    return out


def kpf_names(flags: int) -> list[str]:
    return [n for b, n in sorted(KPF_NAMES.items()) if flags >> b & 1]


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
