"""thpcore.cli.thpmaps: the kernel's ``tools/mm/thpmaps`` (Ryan Roberts, ARM, Linux 6.10+) as a library.

thpmaps prints, per VMA (or rolled up), how transparent hugepages are mapped: PMD-mapped THPs,
fully and contiguously PTE-mapped THPs whose virtual address is aligned / not aligned to their
size, pages of partially mapped THPs, and (``--cont SIZE``) memory mapped in aligned,
contiguous blocks of SIZE that belong to one THP.  This module reproduces the script's
classification and its output byte for byte, split in two halves so that the same code serves a
live host and the simulator:

* gathering builds plain :class:`VmaRecord` objects (header fields, smaps counters, and numpy
  arrays with one pfn and one ``/proc/kpageflags`` word per page, or per present page):
  :func:`gather_live` reads ``/proc/PID/smaps``, ``/proc/PID/pagemap`` and
  ``/proc/kpageflags`` (root only); :func:`gather_sim` reads a simulated process of a
  :class:`thpcore.Machine`;
* :func:`classify` turns records into per-VMA statistics and :func:`render` prints them
  exactly as the script does.  Classification is vectorised: a few chunked numpy passes find
  the THP pages, range breaks and heads; everything else is computed per range, per head or
  per --cont block start, never per page in Python.

Speed on a live host: the kernel spends ~50-100 ns per /proc/kpageflags word, so reading one
per mapped page (as the script does) costs seconds for tens of GiB.  :func:`gather_live`
therefore asks the PAGEMAP_SCAN ioctl (6.7+) which ranges are PMD-mapped and reads a single
word per PMD (the 511 others are the head's word with HEAD swapped for TAIL, which is what the
kernel reports as far as thpmaps looks); other present pages are read in physically
contiguous runs, nearby runs coalesced into one pread.

``python -m thpcore.cli.thpmaps [--pid PID ...|--cgroup PATH] [--rollup] [--cont SIZE ...]
[--inc-smaps] [--inc-empty] [--periodic MS]`` runs it on the live host like the original.

Semantics kept from the script, quirks included (each one changes printed numbers):

* only present pages whose kpageflags have KPF_THP are considered; they are cut into "ranges"
  where both the virtual and the physical frame number go up by one;
* in a range, pages before the first KPF_COMPOUND_HEAD are "partial" (anon/file by the range's
  first page); if the page physically after the range is a KPF_COMPOUND_TAIL, the last folio is
  "partial" too (anon/file by the THP page *preceding its head*, the last one of the VMA when
  there is none); every other head starts a folio running to the next head or the range end,
  counted as ``1 << floor(log2(length))`` pages of that order, aligned when its virtual frame
  number is a multiple of that;
* the PMD-order aligned count has the smaps AnonHugePages (ShmemPmdMapped + FilePmdMapped for
  file) subtracted, clamped at 0, and the ``*-thp-pmd-aligned-*`` / ``*-cont-pmd-aligned-*``
  values are those smaps counters themselves (whatever the --cont size);
* percentages are of smaps Anonymous and of Rss - Anonymous; a VMA is only parsed if it is
  readable, writable or executable and its Rss is non-zero;
* the VMA line prints the name only when it is a single whitespace-free word, and the inode
  as the script does (parsed as hex, so the decimal digits come out zero-padded to 8).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from thpcore import _engine
from thpcore.constants import HPAGE_PMD_SIZE, PAGE_SIZE
from thpcore.mm.vma import VM_EXEC, VM_READ, VM_SHARED, VM_WRITE
from thpcore.proc.pagemap import (KPF_ANON, KPF_BUDDY, KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL, KPF_LRU,
                                  KPF_MMAP, KPF_PGTABLE, KPF_SWAPBACKED, KPF_THP, KPF_ZERO_PAGE, PM_PFN_MASK,
                                  PM_PRESENT)
from thpcore.proc.smaps import parse_smaps as _parse_smaps
from thpcore.proc.task_mmu import SMAPS_FIELDS, pagemap, smaps_entries

__all__ = [
    "NO_PFN", "VmaRecord", "SparseFlags", "VmaStats", "Report", "ContSizeError",
    "cont_order", "classify", "render", "thpmaps", "gather_live", "gather_sim",
    "sim_kpageflags", "parse_smaps", "main",
]

PMD_SIZE = HPAGE_PMD_SIZE

#: pfn value of a page that is not present (pagemap bit 63 clear).
NO_PFN = 0xFFFF_FFFF_FFFF_FFFF

# PAGEMAP_SCAN ioctl (include/uapi/linux/fs.h, Linux 6.7+): used by gather_live only to learn
# which ranges are PMD-mapped, so that it need not read 512 kpageflags words per PMD THP.
PAGEMAP_SCAN = 0xC0606610            # _IOWR('f', 16, struct pm_scan_arg)
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_HUGE = 1 << 6

_U = np.uint64
_B_HEAD = _U(1 << KPF_COMPOUND_HEAD)
_B_TAIL = _U(1 << KPF_COMPOUND_TAIL)
_NO_PFN = _U(NO_PFN)

# The smaps counters the script keeps: all of them with --inc-smaps, else the five it needs.
ALL_STATS = frozenset([
    "Size", "Rss", "Pss", "Pss_Dirty", "Shared_Clean", "Shared_Dirty", "Private_Clean",
    "Private_Dirty", "Referenced", "Anonymous", "KSM", "LazyFree", "AnonHugePages",
    "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss",
    "Locked",
])
MIN_STATS = frozenset(["Rss", "Anonymous", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped"])
# Order of the counters in a 6.18 /proc/PID/smaps entry (used for records without smaps).
SMAPS_ORDER = ["Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty",
               "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced",
               "Anonymous", "KSM", "LazyFree", "AnonHugePages", "ShmemPmdMapped",
               "FilePmdMapped", "Shared_Hugetlb", "Private_Hugetlb", "Swap", "SwapPss", "Locked"]

HEADER = "       PID             START              END PROT   OFFSET   DEV    INODE OBJECT"

# Tuning of gather_live: gaps (in pfns / pages) that are cheaper to read through than to pay
# another pread for, and the largest single read.
KPF_GAP = 32
PAGEMAP_GAP = 1024
MAX_READ = 1 << 20


class ContSizeError(ValueError):
    """A --cont size the script rejects (its ArgException); the message is the script's."""


# ------------------------------------------------------------------------------------ records

@dataclass(eq=False)
class SparseFlags:
    """kpageflags words of a sorted set of pfns (what gather_live reads beyond the pages it
    maps: the frame just after each physically contiguous run)."""
    pfns: np.ndarray
    flags: np.ndarray

    def lookup(self, pfns: np.ndarray) -> np.ndarray:
        pfns = np.asarray(pfns, dtype=np.uint64)
        out = np.zeros(pfns.shape, dtype=np.uint64)
        if not self.pfns.size or not pfns.size:
            return out
        i = np.searchsorted(self.pfns, pfns)
        i = np.minimum(i, self.pfns.size - 1)
        hit = self.pfns[i] == pfns
        out[hit] = self.flags[i[hit]]
        return out


@dataclass(eq=False)
class VmaRecord:
    """One VMA as thpmaps sees it.

    Pages: ``pfns`` (uint64) holds one pfn per page of [start, end), :data:`NO_PFN` where the
    page is not present; or, with ``index`` (sorted page numbers relative to ``start``), one
    per listed page, every page not listed being not present (the compact form gather_live
    uses for sparsely populated VMAs).  None: nothing is present.  ``flags`` (uint64, same
    length) is the /proc/kpageflags word of each present pfn (ignored where not present);
    None to look the pfns up in ``kpageflags``.  ``kpageflags`` gives the words of other pfns,
    as needed for the frame just past a physically contiguous run (is it a compound tail?): a
    numpy array indexed by pfn, a mapping pfn -> word, a :class:`SparseFlags`, or a callable
    taking and returning uint64 arrays; pfns it does not know read as 0.

    ``smaps``: the VMA's smaps counters in kB, in file order.  thpmaps needs Rss, Anonymous,
    AnonHugePages, ShmemPmdMapped and FilePmdMapped; missing ones are derived from the pages
    (Size, Rss and Anonymous; the PMD-mapped counters as 0).  The rest is the /proc/PID/maps
    header: ``perms`` like "rw-p", ``pgoff`` in bytes, ``major``/``minor``, ``inode`` and
    ``name`` (the pathname field, possibly empty); ``pid`` is printed first on the VMA line.
    """
    start: int
    end: int
    pfns: np.ndarray | None = None
    flags: np.ndarray | None = None
    kpageflags: object = None
    smaps: dict[str, int] | None = None
    name: str = ""
    perms: str = "rw-p"
    pgoff: int = 0
    major: int = 0
    minor: int = 0
    inode: int = 0
    pid: int = 0
    index: np.ndarray | None = None

    @property
    def npages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


@dataclass
class VmaStats:
    """thpmaps' statistics of one VMA: label -> (type, kB), type 'anon', 'file' or None (a
    plain smaps counter), in the script's order, plus the totals its percentages use."""
    vma: VmaRecord
    stats: dict[str, tuple[str | None, int]]
    tot_anon: int
    tot_file: int


@dataclass
class Report:
    """What :func:`classify` returns and :func:`render` prints."""
    vmas: list[VmaStats]
    rollup: bool = False
    rollup_stats: dict[str, tuple[str | None, int]] = field(default_factory=dict)
    rollup_anon: int = 0
    rollup_file: int = 0

    def add(self, vs: VmaStats, keep: bool = True) -> None:
        """Append one VMA's statistics (unless not ``keep``), summing them into the rollup as
        the script does."""
        if keep:
            self.vmas.append(vs)
        roll = self.rollup_stats
        for label, (typ, value) in vs.stats.items():
            if label in roll:
                old_type, old = roll[label]
                assert old_type == typ, (label, old_type, typ)
                roll[label] = (old_type, old + value)
            else:
                roll[label] = (typ, value)
        self.rollup_anon += vs.tot_anon
        self.rollup_file += vs.tot_file

    def stats(self, vma_start: int | None = None) -> dict[str, int]:
        """{label: kB} of the rollup, or of the VMA starting at ``vma_start``."""
        if vma_start is None:
            return {k: v for k, (_, v) in self.rollup_stats.items()}
        for vs in self.vmas:
            if vs.vma.start == vma_start:
                return {k: v for k, (_, v) in vs.stats.items()}
        raise KeyError(f"no VMA starts at {vma_start:#x}")


# ------------------------------------------------------------------------------- classification

@dataclass(frozen=True)
class _Geometry:
    page_shift: int
    pmd_order: int

    def nrkb(self, nr: int) -> int:
        return (nr << self.page_shift) >> 10

    def kbnr(self, kb: int) -> int:
        return (kb << 10) >> self.page_shift

    def odkb(self, order: int) -> int:
        return ((1 << self.page_shift) << order) >> 10


def _geometry(page_size: int, pmd_size: int) -> _Geometry:
    return _Geometry(int(math.log2(page_size)), int(math.log2(pmd_size / page_size)))


def cont_order(size: int | str, *, page_size: int = PAGE_SIZE, pmd_size: int = PMD_SIZE) -> int:
    """The script's size2order(): "64K" / "2M" / 65536 -> page order, with its error messages
    (:class:`ContSizeError`; a zero or negative size fails in math.log2 as in the script)."""
    human = str(size)
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "k": 2**10, "m": 2**20, "g": 2**30}
    unit = 1
    if human[-1:] in units and human:
        unit = units[human[-1]]
        human = human[:-1]
    try:
        value = int(human)
    except ValueError:
        raise ContSizeError("error: --cont value must be integer size with optional KMG unit") \
            from None
    value *= unit
    order = int(math.log2(value / page_size))
    if order < 1:
        raise ContSizeError("error: --cont value must be size of at least 2 pages")
    if (1 << order) * page_size != value:
        raise ContSizeError("error: --cont value must be size of power-of-2 pages")
    if order > _geometry(page_size, pmd_size).pmd_order:
        raise ContSizeError("error: --cont value must be less than or equal to PMD order")
    return order


def _lookup(provider, pfns: np.ndarray) -> np.ndarray:
    """kpageflags words of ``pfns`` (uint64) from a record's ``kpageflags`` provider."""
    pfns = np.asarray(pfns, dtype=np.uint64)
    if provider is None or not pfns.size:
        return np.zeros(pfns.shape, dtype=np.uint64)
    if isinstance(provider, SparseFlags):
        return provider.lookup(pfns)
    if isinstance(provider, np.ndarray):
        table = provider.astype(np.uint64, copy=False)
        out = np.zeros(pfns.shape, dtype=np.uint64)
        ok = pfns < _U(table.size)
        out[ok] = table[pfns[ok].astype(np.int64)]
        return out
    if isinstance(provider, Mapping):
        return np.fromiter((int(provider.get(int(p), 0)) for p in pfns), dtype=np.uint64,
                           count=pfns.size)
    if callable(provider):
        return np.asarray(provider(pfns), dtype=np.uint64).reshape(pfns.shape)
    raise TypeError(f"unsupported kpageflags provider {type(provider).__name__}")


_LE = sys.byteorder == "little"
_CHUNK = 1 << 20


def _bit(arr: np.ndarray, bit: int) -> np.ndarray:
    """(arr & (1 << bit)) != 0 for a uint64 array, reading one byte of each word."""
    if _LE and arr.flags.c_contiguous:
        return (arr.view(np.uint8)[bit >> 3::8] & (1 << (bit & 7))) != 0
    return (arr & _U(1 << bit)) != 0


def _pages(rec: VmaRecord, geo: _Geometry):
    """(pfns, flags, index) of a record as contiguous uint64 / int64 arrays, or Nones."""
    page_mask = (1 << geo.page_shift) - 1
    if rec.start & page_mask or rec.end & page_mask or rec.end < rec.start:
        raise ValueError(f"VMA {rec.start:#x}-{rec.end:#x} is not page aligned")
    if rec.pfns is None:
        return None, None, None
    where = f"VMA {rec.start:#x}-{rec.end:#x}"
    npages = (rec.end - rec.start) >> geo.page_shift
    pfns = np.ascontiguousarray(rec.pfns, dtype=np.uint64)
    index = None
    if rec.index is not None:
        index = np.ascontiguousarray(rec.index, dtype=np.int64)
        if index.shape != pfns.shape or pfns.ndim != 1:
            raise ValueError(f"{where}: {pfns.shape} pfns for {index.shape} index entries")
        if index.size and (index[0] < 0 or index[-1] >= npages
                           or not (np.diff(index) > 0).all()):
            raise ValueError(f"{where}: index must be increasing page numbers below {npages}")
    elif pfns.shape != (npages,):
        raise ValueError(f"{where}: {pfns.shape} pfns for {npages} pages")
    if rec.flags is not None:
        flags = np.ascontiguousarray(rec.flags, dtype=np.uint64)
        if flags.shape != pfns.shape:
            raise ValueError(f"{where}: {flags.shape} flags for {pfns.shape} pfns")
    else:
        flags = np.zeros(pfns.size, dtype=np.uint64)
        present = pfns != _NO_PFN
        flags[present] = _lookup(rec.kpageflags, pfns[present])
    return pfns, flags, index


def _smaps(rec: VmaRecord, geo: _Geometry) -> dict[str, int]:
    """The record's smaps counters, completing the five thpmaps needs from the pages."""
    given = dict(rec.smaps or {})
    if MIN_STATS <= given.keys():
        return given
    pfns, flags, _ = _pages(rec, geo)
    rss = anon = 0
    if pfns is not None:
        present = pfns != _NO_PFN
        rss = int(np.count_nonzero(present))
        anon = int(np.count_nonzero(present & _bit(flags, KPF_ANON)))
    derived = {"Size": (rec.end - rec.start) >> 10, "Rss": geo.nrkb(rss),
               "Anonymous": geo.nrkb(anon), "AnonHugePages": 0, "ShmemPmdMapped": 0,
               "FilePmdMapped": 0}
    merged = {**derived, **given}
    order = {k: i for i, k in enumerate(SMAPS_ORDER)}
    return dict(sorted(merged.items(), key=lambda kv: order.get(kv[0], len(order))))


class _Layout:
    """The present THP pages of one VMA ("filtered positions" 0..m-1, in address order), cut
    into the script's ranges (both vfn and pfn go up by one) and marked at their heads.  Only
    the range boundaries and head positions are kept; everything else is read at the few
    positions the statistics need."""

    def __init__(self, rec: VmaRecord, geo: _Geometry):
        pfns, flags, index = _pages(rec, geo)
        self.rec = rec
        self.vfn0 = rec.start >> geo.page_shift
        if pfns is None:
            pfns = np.zeros(0, dtype=np.uint64)
            flags = np.zeros(0, dtype=np.uint64)
        self.pfns, self.flags, self.index = pfns, flags, index
        L = pfns.size
        thp = np.empty(L, dtype=bool)
        for s in range(0, L, _CHUNK):
            t = _bit(flags[s:s + _CHUNK], KPF_THP)
            t &= pfns[s:s + _CHUNK] != _NO_PFN
            thp[s:s + _CHUNK] = t
        m = int(np.count_nonzero(thp))
        self.m = m
        self.fidx = None if m == L else np.flatnonzero(thp)      # filtered -> entry
        del thp
        brks, heads = [], []
        for s in range(0, m, _CHUNK):
            e = min(m, s + _CHUNK)
            ee = min(m, e + 1)
            if self.fidx is None:
                pc = pfns[s:ee].view(np.int64)
                fc = flags[s:e]
                pg = None if index is None else index[s:ee]
            else:
                ent = self.fidx[s:ee]
                pc = pfns[ent].view(np.int64)
                fc = flags[self.fidx[s:e]]
                pg = ent if index is None else index[ent]
            heads.append(np.flatnonzero(_bit(fc, KPF_COMPOUND_HEAD)) + s)
            d = np.diff(pc) != 1
            if pg is not None:
                d |= np.diff(pg) != 1
            brks.append(np.flatnonzero(d) + s)
        brk = np.concatenate(brks) if brks else np.zeros(0, dtype=np.int64)
        self.hp = (np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64)).astype(np.int64)
        if m:
            self.starts = np.concatenate(([0], brk + 1)).astype(np.int64)
            self.ends = np.concatenate((brk + 1, [m])).astype(np.int64)
        else:
            self.starts = self.ends = np.zeros(0, dtype=np.int64)

    # values at filtered positions
    def ent(self, f: np.ndarray) -> np.ndarray:
        return f if self.fidx is None else self.fidx[f]

    def _page(self, e: np.ndarray) -> np.ndarray:
        return e if self.index is None else self.index[e]

    def vfn(self, f: np.ndarray) -> np.ndarray:
        return self._page(self.ent(f)) + self.vfn0

    def pfn(self, f: np.ndarray) -> np.ndarray:
        return self.pfns[self.ent(f)].view(np.int64)

    def anon(self, f: np.ndarray) -> np.ndarray:
        return _bit(self.flags[self.ent(f)], KPF_ANON)

    def flags_after(self, last: np.ndarray) -> np.ndarray:
        """kpageflags of the pfn after each P[last] (the script's kpageflags.get(pfn_end)):
        the next page's word when that page maps it, else the record's provider."""
        pfn_end = (self.pfn(last) + 1).astype(np.uint64)
        e = self.ent(last)
        nxt = e + 1
        out = np.zeros(last.size, dtype=np.uint64)
        same = np.zeros(last.size, dtype=bool)
        inside = nxt < self.pfns.size
        ni = nxt[inside]
        same[inside] = (self.pfns[ni] == pfn_end[inside]) & \
            (self._page(ni) == self._page(e[inside]) + 1)
        out[same] = self.flags[nxt[same]]
        rest = ~same
        if rest.any():
            out[rest] = _lookup(self.rec.kpageflags, pfn_end[rest])
        return out


def _thp_stats(lay: _Layout, geo: _Geometry, anon_pmd: int, file_pmd: int) -> dict:
    """The script's thp_parse()."""
    K = geo.pmd_order + 1
    aligned = {"anon": [0] * K, "file": [0] * K}
    unaligned = {"anon": [0] * K, "file": [0] * K}
    partial = {"anon": 0, "file": 0}
    m, hp, starts, ends = lay.m, lay.hp, lay.starts, lay.ends
    if m:
        fh = np.searchsorted(hp, starts)                      # first head at/after the start
        eh = np.searchsorted(hp, ends)                        # first head at/after the end
        has = eh > fh
        first = ends.copy()
        first[has] = hp[fh[has]]
        front = first - starts
        fa = lay.anon(starts)
        partial["anon"] += int(front[fa].sum())
        partial["file"] += int(front[~fa].sum())

        keep = np.ones(hp.size, dtype=bool)
        r_has = np.flatnonzero(has)
        if r_has.size:
            tail = _bit(lay.flags_after(ends[r_has] - 1), KPF_COMPOUND_TAIL)
            r_drop = r_has[tail]
            lh = eh[r_drop] - 1                               # last head of those ranges
            dh = hp[lh]
            nr = ends[r_drop] - dh
            ai = dh - 1
            ai[ai < 0] += m                                   # anons[-1]: python indexing
            da = lay.anon(ai)
            partial["anon"] += int(nr[da].sum())
            partial["file"] += int(nr[~da].sum())
            keep[lh] = False

        heads = hp[keep]
        if heads.size:
            nxt = np.empty(hp.size, dtype=np.int64)
            nxt[:-1] = hp[1:]
            nxt[-1] = m
            rid = np.searchsorted(starts, hp, side="right") - 1
            seg = (np.minimum(nxt, ends[rid]) - hp)[keep]
            order = np.log2(seg.astype(np.float64)).astype(np.int64)
            if int(order.max()) > geo.pmd_order:
                raise IndexError("list index out of range")   # where the script crashes
            nrp = np.left_shift(np.int64(1), order)
            al = (lay.vfn(heads) & (nrp - 1)) == 0
            an = lay.anon(heads)
            for typ, tmask in (("anon", an), ("file", ~an)):
                for dest, amask in ((aligned, al), (unaligned, ~al)):
                    sel = tmask & amask
                    if sel.any():
                        counts = np.bincount(order[sel], weights=nrp[sel], minlength=K)
                        for o in np.flatnonzero(counts):
                            dest[typ][int(o)] += int(counts[o])

    P = geo.pmd_order
    aligned["anon"][P] = max(0, aligned["anon"][P] - geo.kbnr(anon_pmd))
    aligned["file"][P] = max(0, aligned["file"][P] - geo.kbnr(file_pmd))

    out = {
        f"anon-thp-pmd-aligned-{geo.odkb(P)}kB": ("anon", anon_pmd),
        f"file-thp-pmd-aligned-{geo.odkb(P)}kB": ("file", file_pmd),
    }
    for typ in ("anon", "file"):
        for sub, counts in (("aligned", aligned[typ]), ("unaligned", unaligned[typ])):
            for od in range(2, K):
                out[f"{typ}-thp-pte-{sub}-{geo.odkb(od)}kB"] = (typ, geo.nrkb(counts[od]))
        out[f"{typ}-thp-pte-partial"] = (typ, geo.nrkb(partial[typ]))
    return out


def _cont_stats(lay: _Layout, geo: _Geometry, order: int, anon_pmd: int, file_pmd: int) -> dict:
    """The script's cont_parse(): vfn-aligned blocks of 2**order pages inside one range with
    no head after their first page, in ranges whose pfn and vfn agree modulo the block size.
    Such a block lies inside one "segment" (a range cut at every head), so they are counted
    per segment, and only their first pages are looked at (anon or file)."""
    nr = 1 << order
    nr_anon = nr_file = 0
    if lay.m:
        m = lay.m
        seg_start = np.union1d(lay.starts, lay.hp).astype(np.int64)
        seg_end = np.empty_like(seg_start)
        seg_end[:-1] = seg_start[1:]
        seg_end[-1] = m
        rid = np.searchsorted(lay.starts, seg_start, side="right") - 1
        rs = lay.starts[rid]
        ok = ((lay.pfn(rs) - lay.vfn(rs)) & (nr - 1)) == 0
        off = (-lay.vfn(seg_start)) & (nr - 1)
        nblk = np.maximum(0, (seg_end - seg_start - off) // nr)
        nblk[~ok] = 0
        total = int(nblk.sum())
        if total:
            use = nblk > 0
            b0, cnt = (seg_start + off)[use], nblk[use]
            first = np.repeat(np.cumsum(cnt) - cnt, cnt)
            blocks = np.repeat(b0, cnt) + (np.arange(total, dtype=np.int64) - first) * nr
            anon_blocks = int(np.count_nonzero(lay.anon(blocks)))
            nr_anon = anon_blocks * nr
            nr_file = (total - anon_blocks) * nr
    nr_anon = max(0, nr_anon - geo.kbnr(anon_pmd))
    nr_file = max(0, nr_file - geo.kbnr(file_pmd))
    kb = geo.nrkb(nr)
    return {
        f"anon-cont-pmd-aligned-{kb}kB": ("anon", anon_pmd),
        f"file-cont-pmd-aligned-{kb}kB": ("file", file_pmd),
        f"anon-cont-pte-aligned-{kb}kB": ("anon", geo.nrkb(nr_anon)),
        f"file-cont-pte-aligned-{kb}kB": ("file", geo.nrkb(nr_file)),
    }


def _vma_stats(rec: VmaRecord, orders: list[int], inc_smaps: bool, geo: _Geometry) -> VmaStats:
    smaps = _smaps(rec, geo)
    keep = ALL_STATS if inc_smaps else MIN_STATS
    vstats = {k: int(v) for k, v in smaps.items() if k in keep}
    perms = rec.perms + "----"
    stats: dict[str, tuple[str | None, int]] = {}
    tot_anon = tot_file = 0
    if (perms[0] == "r" or perms[1] == "w" or perms[2] == "x") and vstats["Rss"] > 0:
        anon_pmd = vstats["AnonHugePages"]
        file_pmd = vstats["ShmemPmdMapped"] + vstats["FilePmdMapped"]
        lay = _Layout(rec, geo)
        stats = _thp_stats(lay, geo, anon_pmd, file_pmd)
        for o in orders:
            stats.update(_cont_stats(lay, geo, o, anon_pmd, file_pmd))
        tot_anon = vstats["Anonymous"]
        tot_file = vstats["Rss"] - tot_anon
    if inc_smaps:
        stats = {**{k: (None, v) for k, v in vstats.items()}, **stats}
    return VmaStats(rec, stats, tot_anon, tot_file)


def classify(vmas: Iterable[VmaRecord], *, cont_sizes: Iterable[int | str] = (),
             rollup: bool = False, inc_smaps: bool = False, page_size: int = PAGE_SIZE,
             pmd_size: int = PMD_SIZE) -> Report:
    """thpmaps' statistics of every VMA, in order (and summed, for ``--rollup``).

    ``cont_sizes``: the ``--cont`` sizes, in bytes or as "64K"-style strings (see
    :func:`cont_order`).  ``inc_smaps`` adds the smaps counters as the script's
    ``--inc-smaps`` does.  ``page_size``/``pmd_size`` default to x86-64's (the script reads
    them from the running system).
    """
    geo = _geometry(page_size, pmd_size)
    orders = [cont_order(s, page_size=page_size, pmd_size=pmd_size) for s in cont_sizes]
    report = Report([], rollup=rollup)
    for rec in vmas:
        report.add(_vma_stats(rec, orders, inc_smaps, geo))
    return report


# ------------------------------------------------------------------------------------ output

def _stats_lines(stats: Mapping[str, tuple[str | None, int]], tot_anon: int, tot_file: int,
                 inc_empty: bool) -> list[str]:
    lines = []
    for label, (typ, value) in stats.items():
        if value or inc_empty:
            pad = max(0, 32 - len(label) - 1)
            if typ == "anon" and tot_anon > 0:
                percent = f" ({value / tot_anon:3.0%})"
            elif typ == "file" and tot_file > 0:
                percent = f" ({value / tot_file:3.0%})"
            else:
                percent = ""
            lines.append(f"{label}:{' ' * pad}{value:8} kB{percent}\n")
    return lines


def _printed_name(name: str) -> str:
    words = name.split()
    return words[0] if len(words) == 1 else ""


def _vma_line(rec: VmaRecord) -> str:
    p = rec.perms + "----"
    return "{:010d}: {:016x}-{:016x} {}{}{}{} {:08x} {:02x}:{:02x} {:08x} {}\n".format(
        rec.pid, rec.start, rec.end,
        "r" if p[0] == "r" else "-", "w" if p[1] == "w" else "-",
        "x" if p[2] == "x" else "-", "p" if p[3] == "p" else "s",
        rec.pgoff, rec.major, rec.minor, int(str(rec.inode), 16), _printed_name(rec.name))


def render(report: Report, *, inc_empty: bool = False, header: bool = True) -> str:
    """The script's output for ``report``: the header and every VMA with its statistics, or
    with ``rollup`` only the summed statistics.  ``inc_empty`` is ``--inc-empty``."""
    if report.rollup:
        return "".join(_stats_lines(report.rollup_stats, report.rollup_anon,
                                    report.rollup_file, inc_empty))
    out = [HEADER + "\n"] if header else []
    for vs in report.vmas:
        out.append(_vma_line(vs.vma))
        out += _stats_lines(vs.stats, vs.tot_anon, vs.tot_file, inc_empty)
    return "".join(out)


def thpmaps(vmas: Iterable[VmaRecord], *, cont_sizes: Iterable[int | str] = (),
            rollup: bool = False, inc_smaps: bool = False, inc_empty: bool = False,
            page_size: int = PAGE_SIZE, pmd_size: int = PMD_SIZE) -> str:
    """classify() + render() in one call."""
    return render(classify(vmas, cont_sizes=cont_sizes, rollup=rollup, inc_smaps=inc_smaps,
                           page_size=page_size, pmd_size=pmd_size), inc_empty=inc_empty)


# -------------------------------------------------------------------------------- live host

def parse_smaps(text: str) -> list[dict]:
    """/proc/PID/smaps -> [{start, end, perms, pgoff, major, minor, inode, name, smaps}] with
    the counters the script knows (``ALL_STATS``), in file order: thpmaps' view of the records
    of :func:`thpcore.proc.smaps.parse_smaps`, the one smaps parser."""
    vmas: list[dict] = []
    for v in _parse_smaps(text):
        major, minor = (int(x, 16) for x in v["dev"].split(":"))
        vmas.append({"start": v["start"], "end": v["end"], "perms": v["perms"],
                     "pgoff": v["offset"], "major": major, "minor": minor,
                     "inode": v["inode"], "name": v["name"],
                     "smaps": {k: n for k, n in v["fields"].items() if k in ALL_STATS}})
    return vmas


class _PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


def _pagemap_scan(fd: int, start: int, end: int, vec: np.ndarray) -> np.ndarray | None:
    """PAGEMAP_SCAN: the present ranges of [start, end) as rows (start, end, categories) with
    PAGE_IS_HUGE telling PMD-mapped (or hugetlb) ones apart.  Raises OSError when the kernel
    refuses (ENOTTY: no PAGEMAP_SCAN before 6.7)."""
    arg = _PmScanArg(size=ctypes.sizeof(_PmScanArg), start=start, end=end,
                     vec=vec.ctypes.data, vec_len=vec.shape[0], category_mask=PAGE_IS_PRESENT,
                     return_mask=PAGE_IS_PRESENT | PAGE_IS_HUGE)
    out = []
    while True:
        n = fcntl.ioctl(fd, PAGEMAP_SCAN, arg, True)
        if n:
            out.append(vec[:n].copy())
        if n < vec.shape[0] or arg.walk_end >= end or arg.walk_end <= arg.start:
            break
        arg.start = arg.walk_end
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.uint64)


def _pread_into(fd: int, arr: np.ndarray, offset: int) -> int:
    """Fill the uint64 array ``arr`` from ``offset``; returns the entries read (short at EOF)."""
    view = memoryview(arr).cast("B")
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:done + MAX_READ * 8]], offset + done)
        if got <= 0:
            break
        done += got
    return done // 8


def _intervals(lo: np.ndarray, hi: np.ndarray, gap: int):
    """Merge [lo, hi) intervals (any order) whose gaps are <= gap: (block_lo, block_hi,
    block index of each input interval)."""
    order = np.argsort(lo, kind="stable")
    s, e = lo[order], hi[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > reach[:-1] + gap
    first = np.flatnonzero(new)
    blk_lo = s[first]
    blk_hi = np.maximum.reduceat(e, first)
    bid = np.empty(s.size, dtype=np.int64)
    bid[order] = np.cumsum(new) - 1
    return blk_lo, blk_hi, bid


def _read_kpageflags(kfd: int, run_pfn: np.ndarray, run_len: np.ndarray):
    """kpageflags of the pfn runs [run_pfn, run_pfn + run_len): (buffer, offset of each run in
    it).  Runs close to each other are read with one pread."""
    blk_lo, blk_hi, bid = _intervals(run_pfn, run_pfn + run_len, KPF_GAP)
    blk_len = blk_hi - blk_lo
    blk_off = np.zeros(blk_lo.size, dtype=np.int64)
    np.cumsum(blk_len[:-1], out=blk_off[1:])
    buf = np.zeros(int(blk_len.sum()), dtype=np.uint64)
    for lo, ln, off in zip(blk_lo.tolist(), blk_len.tolist(), blk_off.tolist()):
        _pread_into(kfd, buf[off:off + ln], lo * 8)
    return buf, blk_off[bid] + (run_pfn - blk_lo[bid])


def _read_vma_pages(pfd: int, kfd: int, start: int, end: int, vec: np.ndarray,
                    use_scan: list[bool]):
    """(pfns, flags, index, SparseFlags) of one VMA from pagemap and kpageflags: dense (index
    None, one entry per page) when most of it is present, else only the present pages."""
    n = (end - start) >> 12
    vfn0 = start >> 12
    regions = None
    if use_scan[0]:
        try:
            regions = _pagemap_scan(pfd, start, end, vec)
        except OSError as e:
            if e.errno in (errno.ENOTTY, errno.ENOSYS):
                use_scan[0] = False                           # kernel without PAGEMAP_SCAN
            elif e.errno == errno.ESRCH:
                raise
    if regions is None:                                       # read every page's entry
        regions = np.array([[start, end, 0]], dtype=np.uint64)
    r_lo = (regions[:, 0].astype(np.int64) - start) >> 12
    r_hi = (regions[:, 1].astype(np.int64) - start) >> 12
    huge = (regions[:, 2] & _U(PAGE_IS_HUGE)) != 0
    empty = np.zeros(0, dtype=np.uint64)
    if not r_lo.size:
        return empty, empty, np.zeros(0, dtype=np.int64), None

    # pagemap, reading through small holes
    b_lo, b_hi, _ = _intervals(r_lo, r_hi, PAGEMAP_GAP)
    b_len = b_hi - b_lo
    covered = int(b_len.sum())
    dense = 2 * covered >= n
    if dense:
        pfns = np.full(n, NO_PFN, dtype=np.uint64)
        where = b_lo                                          # entry of each block's first page
    else:
        pfns = np.empty(covered, dtype=np.uint64)
        where = np.zeros(b_lo.size, dtype=np.int64)
        np.cumsum(b_len[:-1], out=where[1:])
    for lo, ln, w in zip(b_lo.tolist(), b_len.tolist(), where.tolist()):
        seg = pfns[w:w + ln]
        got = _pread_into(pfd, seg, (vfn0 + lo) * 8)
        seg[got:] = 0
        present = (seg & _U(PM_PRESENT)) != 0
        seg &= _U(PM_PFN_MASK)
        seg[~present] = _NO_PFN
    index = None
    if not dense:
        first = np.repeat(where - b_lo, b_len)
        index = np.arange(covered, dtype=np.int64) - first   # page number of each entry
        keep = pfns != _NO_PFN
        pfns, index = pfns[keep], index[keep]
    flags = np.zeros(pfns.size, dtype=np.uint64)
    need = pfns != _NO_PFN                                    # entries whose flags are to read

    # PMD-mapped ranges: one kpageflags read per PMD (its head); the 511 others are its tails
    nr_pmd = 1 << 9
    for lo, hi in zip(r_lo[huge].tolist(), r_hi[huge].tolist()):
        if (vfn0 + lo) % nr_pmd or (hi - lo) % nr_pmd:
            continue
        e0 = lo if index is None else int(np.searchsorted(index, lo))
        e1 = e0 + hi - lo
        if e1 > pfns.size or (index is not None and index[e1 - 1] != hi - 1):
            continue                                          # not all present after all
        blocks = pfns[e0:e1].reshape(-1, nr_pmd)
        head = blocks[:, 0]
        good = ((head & _U(nr_pmd - 1)) == 0) & (blocks[:, -1] == head + _U(nr_pmd - 1))
        good &= head != _NO_PFN
        if not good.any():
            continue
        hf = np.zeros(head.size, dtype=np.uint64)
        gi = np.flatnonzero(good)
        words = [os.pread(kfd, 8, h * 8) for h in head[gi].tolist()]
        hf[gi] = np.frombuffer(b"".join(w.ljust(8, b"\0") for w in words), dtype="<u8")
        fb = flags[e0:e1].reshape(-1, nr_pmd)
        fb[good] = ((hf[good] & ~_B_HEAD) | _B_TAIL)[:, None]
        fb[good, 0] = hf[good]
        need[e0:e1].reshape(-1, nr_pmd)[good] = False

    # everything else: runs contiguous both physically and virtually, each read with the frame
    # after it.  (A run must also end where the virtual address jumps: a range of the script
    # ends there, and classify needs the word of the pfn after it, which would otherwise be
    # inside the run and not in ``extra``.)  The frame after a PMD-mapped THP is not read: it
    # is 512-aligned, so it cannot be a compound tail of a folio of PMD order or below.
    q = np.flatnonzero(need)
    extra = None
    if q.size:
        pf = pfns[q].view(np.int64)
        pg = q if index is None else index[q]
        new = np.ones(q.size, dtype=bool)
        new[1:] = (np.diff(pf) != 1) | (np.diff(pg) != 1)
        first = np.flatnonzero(new)
        run_len = np.diff(np.append(first, q.size))
        run_pfn = pf[first]
        buf, off = _read_kpageflags(kfd, run_pfn, run_len + 1)
        rid = np.cumsum(new) - 1
        pos = np.arange(q.size, dtype=np.int64) - first[rid]
        flags[q] = buf[off[rid] + pos]
        e_pfn, keep = np.unique((run_pfn + run_len).astype(np.uint64), return_index=True)
        extra = SparseFlags(e_pfn, buf[(off + run_len)[keep]])
    return pfns, flags, index, extra


def gather_live(pid: int | str, *, span: tuple[int, int] | None = None) -> list[VmaRecord]:
    """The VMAs of a live process as :class:`VmaRecord` objects (root only).

    Reads /proc/PID/smaps, then for every VMA the script would parse (readable, writable or
    executable, Rss > 0) its /proc/PID/pagemap entries and the /proc/kpageflags words of its
    present pfns.  PMD-mapped ranges (found with the PAGEMAP_SCAN ioctl, 6.7+) cost one
    kpageflags read per PMD: the other 511 words are the head's with HEAD replaced by TAIL,
    which is what the kernel reports for them as far as thpmaps looks.  Other pages are read
    in physically contiguous runs, each with the word of the frame after it.  ``span``
    (lo, hi) keeps only the VMAs overlapping [lo, hi).
    """
    if resource.getpagesize() != PAGE_SIZE:
        raise OSError(errno.ENOTSUP, f"gather_live reads 4 KiB pages, this system has "
                      f"{resource.getpagesize()}-byte pages")
    if os.geteuid() != 0:
        raise PermissionError(errno.EACCES, "thpmaps needs root: /proc/kpageflags and the PFNs "
                              "in /proc/PID/pagemap are only readable with CAP_SYS_ADMIN")
    try:
        kfd = os.open("/proc/kpageflags", os.O_RDONLY)
    except PermissionError as e:
        raise PermissionError(errno.EACCES, "thpmaps needs root (CAP_SYS_ADMIN) to read "
                              "/proc/kpageflags", "/proc/kpageflags") from e
    try:
        with open(f"/proc/{pid}/smaps") as f:
            entries = parse_smaps(f.read())
        pfd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        try:
            vec = np.zeros((4096, 3), dtype=np.uint64)
            use_scan = [True]
            records = []
            for ent in entries:
                if span is not None and not (ent["start"] < span[1] and ent["end"] > span[0]):
                    continue
                rec = VmaRecord(start=ent["start"], end=ent["end"], smaps=ent["smaps"],
                                name=ent["name"], perms=ent["perms"], pgoff=ent["pgoff"],
                                major=ent["major"], minor=ent["minor"], inode=ent["inode"],
                                pid=int(pid) if str(pid).isdigit() else os.getpid())
                p = ent["perms"]
                if (p[0] == "r" or p[1] == "w" or p[2] == "x") and ent["smaps"].get("Rss", 0) > 0:
                    rec.pfns, rec.flags, rec.index, rec.kpageflags = _read_vma_pages(
                        pfd, kfd, ent["start"], ent["end"], vec, use_scan)
                    present = rec.pfns != _NO_PFN
                    if present.any() and not rec.pfns[present].any():
                        raise PermissionError(errno.EPERM, "pagemap shows no PFNs: thpmaps "
                                              "needs CAP_SYS_ADMIN")
                records.append(rec)
            return records
        finally:
            os.close(pfd)
    finally:
        os.close(kfd)


# -------------------------------------------------------------------------------- simulator

def sim_kpageflags(machine) -> np.ndarray:
    """/proc/kpageflags of a simulated machine: one word per frame plus one for the zero page
    (pfn == nr_pages).  Exact for the bits thpmaps reads (ANON, COMPOUND_HEAD/TAIL, THP,
    ZERO_PAGE); MMAP, LRU, SWAPBACKED, BUDDY and PGTABLE are set as the frame table allows."""
    fr = machine.page_alloc.zone.frames()
    f = fr["flags"].astype(np.uint32)
    order = fr["order"]
    n = f.size
    head = (f & _engine.PY_PG_HEAD) != 0
    tail = (f & _engine.PY_PG_TAIL) != 0
    kernel = (f & _engine.PY_PG_KERNEL) != 0
    large_head = head & (order > 0)
    compound = large_head | tail
    user = (head | tail) & ~kernel
    out = np.zeros(n + 1, dtype=np.uint64)
    w = out[:n]

    def setbit(mask, bit):
        w[mask] |= _U(1 << bit)

    setbit(large_head, KPF_COMPOUND_HEAD)
    setbit(tail, KPF_COMPOUND_TAIL)
    setbit(compound & user, KPF_THP)
    setbit(user, KPF_ANON)
    setbit(user, KPF_SWAPBACKED)
    setbit(user & (fr["mapcount"] > 0), KPF_MMAP)
    setbit((f & _engine.PY_PG_LRU) != 0, KPF_LRU)
    setbit((f & _engine.PY_PG_BUDDY) != 0, KPF_BUDDY)
    setbit((f & _engine.PY_PG_PGTABLE) != 0, KPF_PGTABLE)
    hz = getattr(machine, "huge_zero_pfn", None)
    if hz is not None:
        w[hz:hz + 512] |= _U((1 << KPF_THP) | (1 << KPF_ZERO_PAGE))
    out[n] = 1 << KPF_ZERO_PAGE
    return out


def gather_sim(machine, pid: int, *, span: tuple[int, int] | None = None) -> list[VmaRecord]:
    """The VMAs of a simulated process as :class:`VmaRecord` objects (see gather_live)."""
    proc = machine.process(pid)
    mm = proc.mm
    table = sim_kpageflags(machine)
    records = []
    for vma, ent in zip(list(mm.vmas), smaps_entries(machine, mm)):
        if span is not None and not (vma.start < span[1] and vma.end > span[0]):
            continue
        fl = vma.flags
        perms = ("r" if fl & VM_READ else "-") + ("w" if fl & VM_WRITE else "-") + \
                ("x" if fl & VM_EXEC else "-") + ("s" if fl & VM_SHARED else "p")
        pm = pagemap(machine, mm, vma.start, vma.end)
        present = (pm & _U(PM_PRESENT)) != 0
        pfns = np.where(present, pm & _U(PM_PFN_MASK), _NO_PFN)
        flags = np.zeros(pfns.size, dtype=np.uint64)
        flags[present] = _lookup(table, pfns[present])
        records.append(VmaRecord(start=vma.start, end=vma.end, pfns=pfns, flags=flags,
                                 kpageflags=table, smaps={k: int(ent[k]) for k in SMAPS_FIELDS},
                                 perms=perms, pid=pid))
    return records


# ------------------------------------------------------------------------------------- CLI

def _host_geometry() -> tuple[int, int]:
    with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
        return resource.getpagesize(), int(f.read())


def _pids(args) -> tuple[list[int], bool]:
    pids: set[int] = set()
    if args.cgroup:
        for walk in os.walk(args.cgroup):
            with open(f"{walk[0]}/cgroup.procs") as f:
                for line in f.readlines():
                    pids.add(int(line.strip()))
        return list(pids), False
    if args.pid:
        return list(pids.union(args.pid)), True
    for name in os.listdir("/proc"):
        if name.isdigit():
            pids.add(int(name))
    return list(pids), False


def _run_once(args, orders, page_size, pmd_size, out) -> None:
    pids, strict = _pids(args)
    geo = _geometry(page_size, pmd_size)
    total = Report([], rollup=True)
    if not args.rollup:
        out.write(HEADER + "\n")
    for pid in pids:
        try:
            records = gather_live(pid)
        except (FileNotFoundError, ProcessLookupError):
            if strict:
                raise
            continue
        for rec in records:
            vs = _vma_stats(rec, orders, args.inc_smaps, geo)
            if args.rollup:
                total.add(vs, keep=False)
            else:
                out.write(_vma_line(rec))
                out.write("".join(_stats_lines(vs.stats, vs.tot_anon, vs.tot_file,
                                               args.inc_empty)))
        out.flush()
    if args.rollup:
        out.write(render(total, inc_empty=args.inc_empty))


def main(argv: list[str] | None = None) -> int:
    """The thpmaps command line, on the live host."""
    page_size, pmd_size = _host_geometry()

    def formatter(prog):
        width = min(80, shutil.get_terminal_size().columns - 2)
        return argparse.RawDescriptionHelpFormatter(prog, width=width)

    parser = argparse.ArgumentParser(
        prog="thpmaps", formatter_class=formatter,
        description="Print how transparent hugepages are mapped, system-wide or for given "
                    "processes or a cgroup (a port of the kernel's tools/mm/thpmaps).",
        epilog="Requires root privilege to access pagemap and kpageflags.")
    group = parser.add_mutually_exclusive_group(required=False)
    group.add_argument("--pid", metavar="pid", type=int, default=[], action="append",
                       help="process id to scan; may be given several times")
    group.add_argument("--cgroup", metavar="path",
                       help="cgroup directory: scan every pid of it and its children")
    parser.add_argument("--rollup", default=False, action="store_true",
                        help="sum the per-vma statistics")
    parser.add_argument("--cont", metavar="size[KMG]", default=[], action="append",
                        help="add stats for memory mapped in aligned contiguous blocks of "
                             "size (a power-of-2 number of pages); may be repeated")
    parser.add_argument("--inc-smaps", default=False, action="store_true",
                        help="include the additive /proc/<pid>/smaps counters")
    parser.add_argument("--inc-empty", default=False, action="store_true",
                        help="show statistics whose value is 0")
    parser.add_argument("--periodic", metavar="sleep_ms", type=int,
                        help="run in a loop, polling every sleep_ms milliseconds")
    args = parser.parse_args(argv)
    try:
        orders = [cont_order(c, page_size=page_size, pmd_size=pmd_size) for c in args.cont]
    except ContSizeError:
        parser.print_usage()
        raise
    if args.periodic:
        while True:
            _run_once(args, orders, page_size, pmd_size, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
            time.sleep(args.periodic / 1000)
    _run_once(args, orders, page_size, pmd_size, sys.stdout)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the script's top level: "<prog>: <message>", status 1
        # (the script's prog is its file name, "thpmaps"; under ``python -m`` argv[0] is
        # this file's path, so name it as the usage line does)
        print(f"thpmaps: {e}")
        sys.exit(1)
