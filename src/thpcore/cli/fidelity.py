"""Fidelity: the same scenario on this machine's kernel and in the simulator, outcome by
outcome. The backends below give a scenario one small vocabulary (region, madvise, mprotect,
munmap, write, read, smaps, vmstat); `thpcore fidelity` runs the suite and prints a table.

Every THP knob a scenario sets is restored (live.thp_settings), swap files are removed
(live.swap_file), and only this process and its own children are touched.
"""

from __future__ import annotations

import gc
import os
import time

import thpcore
from thpcore import live
from thpcore.constants import (MADV_COLD, MADV_COLLAPSE, MADV_DONTNEED, MADV_DONTNEED_LOCKED, MADV_FREE,
                               MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MADV_HUGEPAGE, MADV_NOHUGEPAGE,
                               MADV_PAGEOUT, MADV_POPULATE_READ, MADV_POPULATE_WRITE, MAP_ANONYMOUS,
                               MAP_FIXED, MAP_PRIVATE, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE,
                               PROT_READ, PROT_WRITE)
from thpcore.errors import SegmentationFault
from thpcore.proc.pagemap import PM_GUARD_REGION, PM_PFN_BITS
from thpcore.proc.task_mmu import pagemap

MB = 1 << 20
HP = 2 * MB
THP = "/sys/kernel/mm/transparent_hugepage"
SMAPS_KEYS = ("Rss", "AnonHugePages", "Swap")


def _flag_bits(entry) -> int:
    """A pagemap entry without the pfn / swap offset (its flag bits 55-63), except a guard
    marker's, whose entry is fixed and compared whole."""
    entry = int(entry)
    return entry if entry & PM_GUARD_REGION else entry >> PM_PFN_BITS


def available() -> str | None:
    """None if the live side can run here, else why not."""
    if not os.path.exists(f"{THP}/enabled"):
        return "no /sys/kernel/mm/transparent_hugepage (THP not built in)"
    if os.geteuid() != 0:
        return "needs root to set the THP knobs"
    if not os.path.exists("/proc/self/smaps"):
        return "no /proc/self/smaps"
    return None


class Live:
    """The scenario backend that runs on this machine's kernel."""

    def __init__(self):
        self.regions = []

    def region(self, length, offset=0):
        r = live.Region.aligned(length, offset=offset)
        self.regions.append(r)
        return r

    def madvise(self, r, off, length, advice):
        return r.madvise(off, length, advice)

    def mprotect(self, r, off, length, prot):
        return r.mprotect(off, length, prot)

    def munmap(self, r, off, length):
        return r.munmap(off, length)

    def mlock(self, r, off, length):
        return live.raw_mlock(r.addr + off, length)

    def munlock(self, r, off, length):
        return live.raw_mlock(r.addr + off, length, lock=False)

    def mremap(self, r, off, old_len, new_len, flags=0, new_addr=0):
        """(new address or None, errno). The regions are told what moved, so that closing
        them unmaps exactly what this scenario still maps."""
        old = r.addr + off
        addr, err = live.raw_mremap(old, old_len, new_len, flags, new_addr)
        if err:
            return None, err
        for reg in self.regions:                 # what left the old range is not theirs now
            lo, hi = max(reg.addr, old), min(reg.end, old + old_len)
            if addr == old:
                lo = max(lo, old + new_len)      # in place: only a shrink gives pages up
            if lo < hi and not flags & MREMAP_DONTUNMAP:
                reg.forget(lo - reg.addr, hi - lo)
        # What is mapped now and no region owns (a new place, or the grown tail) gets one.
        lo = old + old_len if addr == old else addr
        if lo < addr + new_len:
            owner = [reg for reg in self.regions if reg.addr <= lo and addr + new_len <= reg.end]
            if owner:
                owner[0].adopt(lo - owner[0].addr, addr + new_len - lo,
                               PROT_READ | PROT_WRITE)
            else:
                self.regions.append(live.Region(lo, addr + new_len - lo,
                                                PROT_READ | PROT_WRITE))
        return addr, 0

    def view(self, addr, length):
        """A region object over memory this process already maps (not owned)."""
        return live.Region(addr, length, PROT_READ | PROT_WRITE, owned=False)

    def thp_eligible(self, r):
        """THPeligible of each VMA the region overlaps (smaps)."""
        return r.thp_eligible()

    def probe(self, r, off):
        """Read one page in a forked child: its content word, or "SIGSEGV"."""
        try:
            return live.fork_and_run(lambda: int(r.read(off, 4096, force=True)[0]))
        except live.ChildDied as e:
            return "SIGSEGV" if e.signal == 11 else f"signal {e.signal}"

    def pagemap_flags(self, r, off, length):
        """Each page's pagemap entry without the pfn / swap offset (bits 55-63), except guard
        markers, whose entry is fixed and compared whole."""
        return [_flag_bits(e) for e in r.pagemap(off, length)]

    def write(self, r, off, length, value=1):
        r.write(off, length, value=value)

    def read(self, r, off, length):
        return list(r.read(off, length))

    def smaps(self, r, keys=SMAPS_KEYS):
        s = r.smaps(partial="include")
        return {k: s.get(k, 0) for k in keys}

    def vmstat(self):
        return live.vmstat()

    def close(self):
        for r in self.regions:
            r.close()


class SimRegion:
    def __init__(self, p, addr, length):
        self.p, self.addr, self.length = p, addr, length


class Sim:
    """The same scenario on a simulated machine configured like the live knobs."""

    def __init__(self, swap=None, addresses=()):
        self.m = thpcore.Machine("4G", swap=swap, seed=0)
        for knob in ("enabled", "defrag", "use_zero_page", "shrink_underused"):
            self.m.sysfs.write(f"{THP}/{knob}", live.read_knob(knob).split("[")[-1].split("]")[0])
        self.p = self.m.spawn()
        self.addresses = list(addresses)

    def region(self, length, offset=0):
        """At the live region's address when replaying (which GiB a region lies in decides
        whether an untouched one has a PMD table at all), else wherever mmap puts it."""
        if self.addresses:
            addr = self.addresses.pop(0)
            self.p.mmap(length, addr=addr, flags=MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED)
            return SimRegion(self.p, addr, length)
        base = self.p.mmap(length + 2 * MB)
        assert base % (2 * MB) == 0
        return SimRegion(self.p, base + offset, length)

    def _errno(self, fn):
        try:
            fn()
            return 0
        except OSError as e:
            return e.errno

    def madvise(self, r, off, length, advice):
        return self._errno(lambda: r.p.madvise(r.addr + off, length, advice))

    def mprotect(self, r, off, length, prot):
        return self._errno(lambda: r.p.mprotect(r.addr + off, length, prot))

    def munmap(self, r, off, length):
        return self._errno(lambda: r.p.munmap(r.addr + off, length))

    def mlock(self, r, off, length):
        return self._errno(lambda: r.p.mlock(r.addr + off, length))

    def munlock(self, r, off, length):
        return self._errno(lambda: r.p.munlock(r.addr + off, length))

    def mremap(self, r, off, old_len, new_len, flags=0, new_addr=0):
        try:
            return r.p.mremap(r.addr + off, old_len, new_len, flags, new_addr), 0
        except OSError as e:
            return None, e.errno

    def view(self, addr, length):
        return SimRegion(self.p, addr, length)

    def thp_eligible(self, r):
        return [e["THPeligible"] for e in r.p.smaps()
                if e["end"] > r.addr and e["start"] < r.addr + r.length]

    def probe(self, r, off):
        try:
            return int(r.p.read(r.addr + off, 4096)[0])
        except SegmentationFault:
            return "SIGSEGV"

    def pagemap_flags(self, r, off, length):
        return [_flag_bits(e)
                for e in pagemap(self.m, r.p.mm, r.addr + off, r.addr + off + length)]

    def write(self, r, off, length, value=1):
        r.p.write(r.addr + off, length, value=value)

    def read(self, r, off, length):
        return [int(x) for x in r.p.read(r.addr + off, length)]

    def smaps(self, r, keys=SMAPS_KEYS):
        out = dict.fromkeys(keys, 0)
        for e in r.p.smaps():
            if e["end"] > r.addr and e["start"] < r.addr + r.length:
                for k in out:
                    out[k] += e[k]
        return out

    def vmstat(self):
        return dict(self.m.vmstat)

    def close(self):
        self.m.check()


def delta(before, after, names):
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


def run_both(scenario, swap=False, sim_setup=None, **knobs):
    """(live result, simulated result) of one scenario under the given knobs."""
    why = available()
    if why:
        raise live.Unsupported(why)
    with live.thp_settings(**knobs):
        if swap:
            with live.swap_file(64 * MB):
                return _run_pair(scenario, swap, sim_setup)
        return _run_pair(scenario, swap, sim_setup)


def _run_pair(scenario, swap, sim_setup=None):
    # Free the previous scenario's simulated machine now: the cyclic GC could otherwise free
    # its big (THP-advised) numpy arrays inside the live window, and the allocator trimming a
    # THP-backed heap splits PMDs in this process, in the global counters the scenario reads.
    gc.collect()
    lv = Live()
    try:
        got_live = scenario(lv)
    finally:
        lv.close()
    sim = Sim(swap="64M" if swap else None, addresses=[r.addr for r in lv.regions])
    if sim_setup is not None:
        sim_setup(sim)
    got_sim = scenario(sim)
    sim.close()
    return got_live, got_sim


# ---- the suite -------------------------------------------------------------------------------------

def _fault_matrix(advice):
    def scenario(b):
        r = b.region(4 * MB)
        if advice is not None:
            b.madvise(r, 0, 4 * MB, advice)
        v0 = b.vmstat()
        b.write(r, 0, 4 * MB)
        return b.smaps(r), delta(v0, b.vmstat(), ["thp_fault_alloc", "thp_fault_fallback"])
    return scenario


def _read_then_write(b):
    r = b.region(4 * MB)
    b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
    v0 = b.vmstat()
    values = b.read(r, 0, 4 * MB)
    after_read = b.smaps(r)
    v1 = b.vmstat()
    b.write(r, 4096, 4096, value=7)
    return (sum(values), after_read, delta(v0, v1, ["thp_fault_alloc"]), b.smaps(r),
            delta(v1, b.vmstat(), ["thp_fault_alloc", "thp_split_pmd"]), b.read(r, 0, 3 * 4096))


def _unaligned(b):
    r = b.region(4 * MB, offset=4096)
    b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
    b.write(r, 0, 4 * MB)
    return b.smaps(r)


def _partial(how):
    def scenario(b):
        r = b.region(HP)
        b.madvise(r, 0, HP, MADV_HUGEPAGE)
        b.write(r, 0, HP)
        v0 = b.vmstat()
        rc = {"dontneed_4k": lambda: b.madvise(r, 0, 4096, MADV_DONTNEED),
              "dontneed_all": lambda: b.madvise(r, 0, HP, MADV_DONTNEED),
              "munmap_4k": lambda: b.munmap(r, 0, 4096),
              "mprotect_4k": lambda: b.mprotect(r, 0, 4096, PROT_READ),
              "mprotect_all": lambda: b.mprotect(r, 0, HP, PROT_READ)}[how]()
        return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_split_pmd", "thp_deferred_split_page",
                                                      "thp_split_page"])
    return scenario


def _fork_cow(b):
    r = b.region(HP)
    b.madvise(r, 0, HP, MADV_HUGEPAGE)
    b.write(r, 0, HP, value=5)
    if isinstance(b, Live):
        def child():
            b.write(r, 0, 4096, value=9)
            return b.smaps(r), b.read(r, 0, 2 * 4096)
        child_view = live.fork_and_run(child)
    else:
        c = b.p.fork()
        cr = SimRegion(c, r.addr, r.length)
        b.write(cr, 0, 4096, value=9)
        child_view = (b.smaps(cr), b.read(cr, 0, 2 * 4096))
        c.exit()
    # (No vmstat deltas here: the forked interpreter COWs its own THPs too.)
    return child_view, b.smaps(r), b.read(r, 0, 2 * 4096)


def _collapse_shared_with_child(b):
    """MADV_COLLAPSE in the parent of 4 KiB pages a forked child still shares: the parent gets
    a new THP (MADV_COLLAPSE has no max_ptes_shared limit), the child keeps the old pages."""
    r = b.region(HP)
    b.write(r, 0, HP, value=5)
    if isinstance(b, Live):
        def child(chan):
            chan.send("ready")
            chan.recv()
            return b.smaps(r), sorted(set(b.read(r, 0, HP)))
        with live.ForkedChild(child) as c:
            c.recv()
            v0 = b.vmstat()
            rc = b.madvise(r, 0, HP, MADV_COLLAPSE)
            d = delta(v0, b.vmstat(), ["thp_collapse_alloc"])
            b.write(r, 0, 4096, value=9)
            c.send("go")
            child_view = c.join()
    else:
        c = b.p.fork()
        v0 = b.vmstat()
        rc = b.madvise(r, 0, HP, MADV_COLLAPSE)
        d = delta(v0, b.vmstat(), ["thp_collapse_alloc"])
        b.write(r, 0, 4096, value=9)
        cr = SimRegion(c, r.addr, r.length)
        child_view = (b.smaps(cr), sorted(set(b.read(cr, 0, HP))))
        c.exit()
    return rc, d, b.smaps(r), sorted(set(b.read(r, 0, HP))), child_view


def _pageout(thp):
    def scenario(b):
        r = b.region(HP)
        if thp:
            b.madvise(r, 0, HP, MADV_HUGEPAGE)
        b.write(r, 0, HP, value=11)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, HP, MADV_PAGEOUT)
        out = b.smaps(r)
        d = delta(v0, b.vmstat(), ["pswpout", "thp_swpout", "thp_swpout_fallback", "thp_split_page"])
        return rc, out, d, set(b.read(r, 0, HP)), b.smaps(r)
    return scenario


# MADV_FREE. The live kernel counts pglazyfree when its per-CPU lazyfree batch (31 folios)
# drains, so a scenario reads LazyFree and pglazyfree only after a reclaim (which drains).
LAZY_EVENTS = ["pglazyfree", "pglazyfreed", "pswpout", "thp_split_pmd", "thp_split_page"]


def _free_then_pageout(thp):
    """MADV_FREE 4 MiB, write one page again, MADV_PAGEOUT (no swap): clean lazyfree pages
    (and the clean THP) are discarded, the written page (its whole THP) stays."""
    def scenario(b):
        r = b.region(4 * MB)
        b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE if thp else MADV_NOHUGEPAGE)
        b.write(r, 0, 4 * MB, value=1)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, 4 * MB, MADV_FREE)
        b.write(r, 2 * MB + 4096, 4096, value=5)
        rc2 = b.madvise(r, 0, 4 * MB, MADV_PAGEOUT)
        d = delta(v0, b.vmstat(), LAZY_EVENTS)
        values = b.read(r, 0, 4 * MB)
        return (rc, rc2, d, b.smaps(r, SMAPS_KEYS + ("LazyFree",)),
                sum(1 for v in values if v), values[512 + 1])
    return scenario


def _pageout_no_swap(advice):
    """MADV_PAGEOUT / MADV_COLD of a whole THP and of half of another, with no swap device."""
    def scenario(b):
        r = b.region(4 * MB)
        b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 4 * MB, value=1)
        b.write(r, 2 * MB, 4096, value=0)            # a zero subpage: the split remaps it
        v0 = b.vmstat()
        rcs = b.madvise(r, 0, 2 * MB, advice), b.madvise(r, 2 * MB, MB, advice)
        d = delta(v0, b.vmstat(), ["thp_split_pmd", "thp_split_page", "thp_swpout_fallback",
                                   "thp_deferred_split_page", "pswpout"])
        return rcs, d, b.smaps(r), sum(1 for v in b.read(r, 0, 4 * MB) if v)
    return scenario


def _collapse_lazyfree(b):
    """6.18 collapses MADV_FREE'd pages (no SCAN_PAGE_LAZYFREE yet): the new THP is not
    lazyfree, so a later PAGEOUT without swap keeps every page."""
    r = b.region(2 * MB)
    b.write(r, 0, 2 * MB, value=1)
    v0 = b.vmstat()
    b.madvise(r, 0, 2 * MB, MADV_FREE)
    rc = b.madvise(r, 0, 2 * MB, MADV_COLLAPSE)
    after = b.smaps(r)
    rc2 = b.madvise(r, 0, 2 * MB, MADV_PAGEOUT)
    d = delta(v0, b.vmstat(), ["thp_collapse_alloc"] + LAZY_EVENTS)
    return rc, rc2, after, d, b.smaps(r, SMAPS_KEYS + ("LazyFree",)), \
        sum(1 for v in b.read(r, 0, 2 * MB) if v)


def _mremap_move(case):
    """A THP-backed 4 MiB region (a written 4 KiB table region after it) moved or resized."""
    def scenario(b):
        r = b.region(6 * MB)
        b.write(r, 4 * MB, 2 * MB, value=7)        # 4 KiB pages (not advised yet)
        b.madvise(r, 0, 6 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 4 * MB, value=7)             # two THPs
        dst = b.region(8 * MB)                      # a destination (or a hole, once unmapped)
        v0 = b.vmstat()
        if case == "aligned":
            addr, err = b.mremap(r, 0, 6 * MB, 6 * MB, MREMAP_MAYMOVE | MREMAP_FIXED, dst.addr)
        elif case == "unaligned":
            addr, err = b.mremap(r, 0, 6 * MB, 6 * MB, MREMAP_MAYMOVE | MREMAP_FIXED,
                                 dst.addr + 4096)
        elif case == "shrink":
            addr, err = b.mremap(r, 0, 6 * MB, 3 * MB)
        elif case == "dontunmap":
            addr, err = b.mremap(r, 0, 6 * MB, 6 * MB, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)
        else:                                       # the middle 1 MiB of the first THP
            addr, err = b.mremap(r, MB, MB, MB, MREMAP_MAYMOVE | MREMAP_FIXED, dst.addr)
        d = delta(v0, b.vmstat(), ["thp_split_pmd", "thp_split_page", "thp_deferred_split_page"])
        if err:
            return err, d
        length = {"shrink": 3 * MB, "middle": MB}.get(case, 6 * MB)
        v = b.view(addr, length)
        out = [err, (addr - dst.addr) if case in ("aligned", "unaligned", "middle") else
               addr == r.addr if case == "shrink" else addr % HP, d, b.smaps(v),
               sorted(set(b.read(v, 0, length)))]
        out.append(b.smaps(r) if case in ("dontunmap", "middle") else None)
        return out
    return scenario


def _mremap_grow(inplace):
    """Growing a THP region: in place when the range after it is free, else moved (MAYMOVE)
    to a THP-aligned spot; without MAYMOVE, ENOMEM."""
    def scenario(b):
        r = b.region(8 * MB)
        b.madvise(r, 0, 8 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 4 * MB, value=7)
        if inplace:
            b.munmap(r, 4 * MB, 4 * MB)
        else:
            b.mprotect(r, 4 * MB, 4 * MB, PROT_READ)   # a different VMA right behind it
        addr, blocked = b.mremap(r, 0, 4 * MB, 6 * MB)
        if blocked:
            addr, err = b.mremap(r, 0, 4 * MB, 6 * MB, MREMAP_MAYMOVE)
            if err:
                return blocked, err
        v = b.view(addr, 6 * MB)
        return blocked, addr == r.addr, addr % HP, b.smaps(v), sorted(set(b.read(v, 0, 6 * MB)))
    return scenario


def _mremap_carries(b):
    """Swap entries and guard markers move with mremap (move_ptes copies every PTE)."""
    r = b.region(4 * MB)
    b.madvise(r, 0, 4 * MB, MADV_NOHUGEPAGE)
    b.write(r, 0, 4 * MB, value=4)
    b.madvise(r, 0, MB, MADV_PAGEOUT)
    b.madvise(r, 3 * MB, 4096, MADV_GUARD_INSTALL)
    dst = b.region(8 * MB)
    addr, err = b.mremap(r, 0, 4 * MB, 4 * MB, MREMAP_MAYMOVE | MREMAP_FIXED, dst.addr + 8192)
    if err:
        return err
    v = b.view(addr, 4 * MB)
    before = b.smaps(v)
    return (before, b.probe(v, 3 * MB), b.probe(v, 3 * MB + 4096),
            sorted(set(b.read(v, 0, 3 * MB))), b.smaps(v))


def _mremap_errno(b):
    r = b.region(8 * MB)
    b.write(r, 0, 4 * MB, value=7)
    hole = b.region(4 * MB)
    b.munmap(hole, 0, 4 * MB)
    t = b.region(4 * MB)
    b.mprotect(t, 2 * MB, 2 * MB, PROT_READ)
    M, F, D = MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP
    calls = [(r, 1, 4096, 4096, 0, 0), (r, 0, 4096, 0, 0, 0), (r, 0, 4096, 4096, 8, 0),
             (r, 0, 4096, 4096, F, hole.addr), (r, 0, 4096, 8192, M | D, 0),
             (r, 0, 4096, 4096, D, 0), (hole, 0, 4096, 8192, M, 0), (hole, 0, 4096, 4096, 0, 0),
             (t, 0, 4 * MB, 6 * MB, M, 0), (r, 0, 4 * MB, 4 * MB, M | F, r.addr + 2 * MB),
             (r, 0, 4096, 4096, M | F, hole.addr + 1), (r, 0, 0, 4096, M, 0),
             (r, 0, 4096, 1 << 48, M, 0), (r, 0, 4096, 4096, M | F, 1 << 47),
             (r, 0, 4096, 4096, 0, 0), (t, 0, 4 * MB, MB, 0, 0), (r, 0, -4096, 4096, 0, 0)]
    return [b.mremap(*c)[1] for c in calls]


def _guard(case):
    """Guard regions (6.13+) in and around THPs."""
    def scenario(b):
        r = b.region(4 * MB)
        b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
        b.write(r, 0, 4 * MB, value=7)
        v0 = b.vmstat()
        if case == "install":
            rc = b.madvise(r, 4096, 4096, MADV_GUARD_INSTALL)      # inside the first THP
            rc2 = b.madvise(r, 2 * MB, 2 * MB, MADV_GUARD_INSTALL)  # a whole THP
            d = delta(v0, b.vmstat(), ["thp_split_pmd", "thp_deferred_split_page",
                                       "thp_split_page"])
            return (rc, rc2, d, b.smaps(r), b.probe(r, 4096), b.probe(r, 0),
                    b.probe(r, 3 * MB), b.pagemap_flags(r, 0, 3 * 4096))
        b.madvise(r, 8192, 4096, MADV_GUARD_INSTALL)
        if case == "dontneed_free_keep":
            rcs = (b.madvise(r, 0, 2 * MB, MADV_DONTNEED), b.madvise(r, 0, 16384, MADV_FREE))
            return rcs, b.probe(r, 8192), b.probe(r, 4096), b.smaps(r)
        if case == "collapse":
            b.write(r, 0, 8192, value=1)
            b.write(r, 12288, 2 * MB - 12288, value=1)
            v1 = b.vmstat()
            rc = b.madvise(r, 0, 2 * MB, MADV_COLLAPSE)
            d = delta(v1, b.vmstat(), ["thp_collapse_alloc", "thp_collapse_alloc_failed"])
            rc2 = b.madvise(r, 8192, 4096, MADV_GUARD_REMOVE)
            after = b.probe(r, 8192)
            rc3 = b.madvise(r, 0, 2 * MB, MADV_COLLAPSE)
            return rc, d, rc2, after, rc3, b.smaps(r)
        # errno: unaligned start, on a locked VMA, install twice, remove where there is none,
        # install on a read-only VMA
        out = [b.madvise(r, 1, 4096, MADV_GUARD_INSTALL),
               b.madvise(r, 8192, 4096, MADV_GUARD_INSTALL),
               b.madvise(r, 16384, 4096, MADV_GUARD_REMOVE)]
        b.mprotect(r, 3 * MB, MB, PROT_READ)
        out.append(b.madvise(r, 3 * MB, 4096, MADV_GUARD_INSTALL))
        out.append(b.mlock(r, 2 * MB, MB))
        out.append(b.madvise(r, 2 * MB, 4096, MADV_GUARD_INSTALL))
        out.append(b.madvise(r, 2 * MB, 4096, MADV_GUARD_REMOVE))
        out.append(b.munlock(r, 2 * MB, MB))
        out.append(b.madvise(r, 0, 16384, MADV_POPULATE_WRITE))     # stops at the guard: EFAULT
        out.append(b.madvise(r, 0, 16384, MADV_POPULATE_READ))
        return out
    return scenario


def _thp_eligible(b):
    """smaps THPeligible for VMA shapes and advice under the scenario's `enabled`."""
    out = []
    for length, offset, advice in ((HP, 0, None), (HP, 0, MADV_HUGEPAGE), (HP, 0, MADV_NOHUGEPAGE),
                                   (MB, 0, MADV_HUGEPAGE), (HP + 4096, 4096, MADV_HUGEPAGE),
                                   (4 * MB, 4096, None)):
        r = b.region(length, offset=offset)
        if advice is not None:
            b.madvise(r, 0, length, advice)
        out.append(b.thp_eligible(r))
    return out


def _populate(advice):
    """MADV_POPULATE_WRITE / _READ of an advised 4 MiB region (huge zero page on reads)."""
    def scenario(b):
        r = b.region(4 * MB)
        b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, 4 * MB, advice)
        return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_fault_alloc", "thp_fault_fallback"])
    return scenario


def _mlock_thp(b):
    """mlock populates with THPs; on a locked VMA DONTNEED/COLD/PAGEOUT/FREE are EINVAL and
    DONTNEED_LOCKED zaps; after munlock PAGEOUT works again (no swap: the THP is split)."""
    r = b.region(4 * MB)
    b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
    v0 = b.vmstat()
    rc = b.mlock(r, 0, 4 * MB)
    d = delta(v0, b.vmstat(), ["thp_fault_alloc"])
    locked = b.smaps(r)
    rcs = [b.madvise(r, 0, HP, a) for a in (MADV_DONTNEED, MADV_COLD, MADV_PAGEOUT, MADV_FREE)]
    rcs.append(b.madvise(r, 0, HP, MADV_DONTNEED_LOCKED))
    rcs.append(b.munlock(r, 0, 4 * MB))
    v1 = b.vmstat()
    rcs.append(b.madvise(r, 2 * MB, HP, MADV_PAGEOUT))
    return rc, d, locked, rcs, b.smaps(r), delta(v1, b.vmstat(), ["thp_split_page"])


def _collapse_huge_zero(b):
    """MADV_COLLAPSE over a region the huge zero page maps (a read fault, use_zero_page=1),
    and over one where a write then replaced it."""
    r = b.region(4 * MB)
    b.madvise(r, 0, 4 * MB, MADV_HUGEPAGE)
    b.read(r, 0, 4 * MB)
    b.write(r, 2 * MB, 4096, value=3)
    v0 = b.vmstat()
    rcs = b.madvise(r, 0, HP, MADV_COLLAPSE), b.madvise(r, HP, HP, MADV_COLLAPSE)
    return rcs, delta(v0, b.vmstat(), ["thp_collapse_alloc", "thp_fault_alloc"]), b.smaps(r)


def _fork_then_child_exits(b):
    """A THP shared with a child that exits: the parent's write reuses it in place (no copy,
    no split), as do_huge_pmd_wp_page does for an exclusive folio."""
    r = b.region(HP)
    b.madvise(r, 0, HP, MADV_HUGEPAGE)
    b.write(r, 0, HP, value=5)
    if isinstance(b, Live):
        live.fork_and_run(lambda: 0)
    else:
        b.p.fork().exit()
    v0 = b.vmstat()
    b.write(r, 0, 4096, value=9)
    return delta(v0, b.vmstat(), ["thp_split_pmd", "thp_fault_alloc"]), b.smaps(r), \
        b.read(r, 0, 2 * 4096)


def _free_pte_mapped_thp(dirty):
    """MADV_FREE of a THP already mapped by PTEs (the PMD was split, the folio is whole), then
    PAGEOUT without swap: 6.15+ unmaps a clean lazyfree folio as one and discards it; one
    written since MADV_FREE is kept whole."""
    def scenario(b):
        r = b.region(HP)
        b.madvise(r, 0, HP, MADV_HUGEPAGE)
        b.write(r, 0, HP, value=1)
        b.mprotect(r, 0, 4096, PROT_READ)
        b.mprotect(r, 0, 4096, PROT_READ | PROT_WRITE)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, HP, MADV_FREE)
        if dirty:
            b.write(r, 8192, 4096, value=9)
        rc2 = b.madvise(r, 0, HP, MADV_PAGEOUT)
        d = delta(v0, b.vmstat(), LAZY_EVENTS + ["thp_deferred_split_page"])
        return rc, rc2, d, b.smaps(r, SMAPS_KEYS + ("LazyFree",)), \
            sum(1 for v in b.read(r, 0, HP) if v)
    return scenario


def _free_drops_swap(b):
    """MADV_FREE over swapped-out pages frees their swap entries: they read back as zeroes."""
    r = b.region(4 * MB)
    b.madvise(r, 0, 4 * MB, MADV_NOHUGEPAGE)
    b.write(r, 0, 4 * MB, value=3)
    b.madvise(r, 0, 2 * MB, MADV_PAGEOUT)
    before = b.smaps(r)
    v0 = b.vmstat()
    rc = b.madvise(r, 0, 4 * MB, MADV_FREE)
    after = b.smaps(r)                           # Rss and Swap: no LazyFree before a drain
    rc2 = b.madvise(r, 0, 4 * MB, MADV_PAGEOUT)  # drains; discards every clean lazyfree page
    d = delta(v0, b.vmstat(), LAZY_EVENTS)
    return rc, rc2, before, after, d, b.smaps(r, SMAPS_KEYS + ("LazyFree",)), \
        sum(1 for v in b.read(r, 0, 4 * MB) if v)


def _madvise_errno(b):
    r = b.region(4 * MB)
    return [b.madvise(r, 1, 4096, MADV_DONTNEED), b.madvise(r, 0, 4096, 99),
            b.madvise(r, 0, 0, 26), b.madvise(r, 0, 0, MADV_DONTNEED),
            b.madvise(r, 0, -4096, MADV_DONTNEED), b.mprotect(r, 0, 4 * MB, PROT_READ | PROT_WRITE)]


def _cold_zero_remap(b):
    r = b.region(HP)
    b.madvise(r, 0, HP, MADV_HUGEPAGE)
    b.write(r, 0, MB, value=0)
    b.write(r, MB, MB, value=5)
    v0 = b.vmstat()
    rc = b.madvise(r, 0, 4096, MADV_COLD)
    return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_split_page", "thp_split_pmd"]), \
        set(b.read(r, 0, HP))


COLLAPSE_SETUPS = {
    "all_written": lambda b, r: b.write(r, 0, HP),
    "one_page": lambda b, r: b.write(r, 0, 4096),
    "zero_ptes_only": lambda b, r: b.read(r, 0, HP),
    "untouched": lambda b, r: None,
    "nohugepage": lambda b, r: (b.write(r, 0, HP), b.madvise(r, 0, HP, MADV_NOHUGEPAGE)),
    "read_only": lambda b, r: (b.write(r, 0, HP), b.mprotect(r, 0, HP, PROT_READ)),
    "partial_thp": lambda b, r: (b.madvise(r, 0, HP, MADV_HUGEPAGE), b.write(r, 0, HP),
                                 b.madvise(r, 0, 4096, MADV_DONTNEED)),
    "already_thp": lambda b, r: (b.madvise(r, 0, HP, MADV_HUGEPAGE), b.write(r, 0, HP)),
    "prot_none": lambda b, r: (b.write(r, 0, HP), b.mprotect(r, 0, HP, 0)),
    "mlocked": lambda b, r: (b.write(r, 0, HP), b.mlock(r, 0, HP)),
}


def _collapse_case(setup):
    def scenario(b):
        r = b.region(HP)
        COLLAPSE_SETUPS[setup](b, r)
        v0 = b.vmstat()
        rc = b.madvise(r, 0, HP, MADV_COLLAPSE)
        values = None if setup == "prot_none" else sorted(set(b.read(r, 0, HP)))
        return rc, b.smaps(r), delta(v0, b.vmstat(), ["thp_collapse_alloc"]), values
    return scenario


def _collapse_range(off, length):
    def scenario(b):
        r = b.region(4 * MB)
        b.write(r, 0, 4 * MB)
        return b.madvise(r, off, length, MADV_COLLAPSE), b.smaps(r)
    return scenario


def _collapse_abort(which):
    def scenario(b):
        r = b.region(4 * MB)
        b.write(r, which * HP, 4096)
        return b.madvise(r, 0, 4 * MB, MADV_COLLAPSE), b.smaps(r)
    return scenario


def _collapse_swapin(b):
    r = b.region(HP)
    b.write(r, 0, HP, value=3)
    b.madvise(r, 0, 100 * 4096, MADV_PAGEOUT)
    swapped = b.smaps(r)
    rc = b.madvise(r, 0, HP, MADV_COLLAPSE)
    return swapped, rc, b.smaps(r), sorted(set(b.read(r, 0, HP)))


def _wait_full_scans(b, n=2):
    if isinstance(b, Live):
        path = f"{THP}/khugepaged/full_scans"
        target = int(open(path).read()) + n
        deadline = time.time() + 10
        while int(open(path).read()) < target and time.time() < deadline:
            time.sleep(0.01)
        if int(open(path).read()) < target:
            raise TimeoutError(f"khugepaged did not complete {n} full scans")
    else:
        b.m.khugepaged.wait_full_scans(n)


def _khugepaged(max_ptes_none, written):
    def scenario(b):
        r = b.region(HP)
        b.write(r, 0, written * 4096)
        b.madvise(r, 0, HP, MADV_HUGEPAGE)
        _wait_full_scans(b)
        return b.smaps(r)["AnonHugePages"], sorted(set(b.read(r, 0, HP)))
    return scenario


def _split_halves_shared(b):
    """A THP whose halves end up in two mms (the child keeps the first half, the parent the
    second): no page is mapped twice, yet 6.18 counts the parent's 256 PTEs as shared
    (folio_maybe_mapped_shared with CONFIG_MM_ID), so max_ptes_shared decides the collapse."""
    r = b.region(HP)
    b.madvise(r, 0, HP, MADV_HUGEPAGE)
    b.write(r, 0, HP, value=3)
    if isinstance(b, Live):
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # child: keep the first half mapped
            try:
                os.close(ready_r)
                os.close(done_w)
                r.madvise(HP // 2, HP // 2, MADV_DONTNEED)
                os.write(ready_w, b"x")
                os.read(done_r, 1)                      # until the parent is done
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(done_r)
        try:
            os.read(ready_r, 1)
            b.madvise(r, 0, HP // 2, MADV_DONTNEED)
            _wait_full_scans(b)
            result = b.smaps(r)["AnonHugePages"], sorted(set(b.read(r, HP // 2, HP // 2)))
        finally:
            os.close(done_w)
            os.close(ready_r)
            os.waitpid(pid, 0)
        return result
    c = b.p.fork()
    b.madvise(SimRegion(c, r.addr, r.length), HP // 2, HP // 2, MADV_DONTNEED)
    b.madvise(r, 0, HP // 2, MADV_DONTNEED)
    _wait_full_scans(b)
    result = b.smaps(r)["AnonHugePages"], sorted(set(b.read(r, HP // 2, HP // 2)))
    c.exit()
    return result


def _khugepaged_setup(max_ptes_none, max_ptes_shared=256):
    def setup(sim):
        k = sim.m.thp.khugepaged
        k.scan_sleep_millisecs = k.alloc_sleep_millisecs = 10
        k.max_ptes_none = max_ptes_none
        k.max_ptes_shared = max_ptes_shared
    return setup


def _suite():
    """(name, scenario, run_both keyword arguments)."""
    out = []
    for enabled in ("always", "madvise", "never"):
        for name, advice in (("none", None), ("hugepage", MADV_HUGEPAGE),
                             ("nohugepage", MADV_NOHUGEPAGE)):
            out.append((f"fault enabled={enabled} advice={name}", _fault_matrix(advice),
                        {"enabled": enabled, "defrag": "madvise"}))
    for zp in (0, 1):
        out.append((f"read then write use_zero_page={zp}", _read_then_write,
                    {"enabled": "madvise", "use_zero_page": zp}))
    out.append(("unaligned VMA", _unaligned, {"enabled": "madvise"}))
    for how in ("dontneed_4k", "dontneed_all", "munmap_4k", "mprotect_4k", "mprotect_all"):
        out.append((f"THP then {how}", _partial(how), {"enabled": "madvise"}))
    out.append(("fork + COW write", _fork_cow, {"enabled": "madvise"}))
    out.append(("MADV_COLLAPSE of pages shared with a child", _collapse_shared_with_child,
                {"enabled": "never"}))
    for thp in (False, True):
        out.append((f"pageout + reread thp={thp}", _pageout(thp), {"enabled": "madvise", "swap": True}))
    for thp in (False, True):
        out.append((f"MADV_FREE + rewrite + PAGEOUT thp={thp}", _free_then_pageout(thp),
                     {"enabled": "madvise"}))
    for name, advice in (("PAGEOUT", MADV_PAGEOUT), ("COLD", MADV_COLD)):
        out.append((f"{name} of THPs without swap", _pageout_no_swap(advice), {"enabled": "madvise"}))
    out.append(("MADV_COLLAPSE of lazyfree pages", _collapse_lazyfree, {"enabled": "madvise"}))
    for dirty in (False, True):
        out.append((f"MADV_FREE + PAGEOUT of a PTE-mapped THP, rewritten={dirty}",
                    _free_pte_mapped_thp(dirty), {"enabled": "madvise"}))
    out.append(("MADV_COLLAPSE of a huge zero page region", _collapse_huge_zero,
                {"enabled": "madvise", "use_zero_page": 1}))
    out.append(("fork, child exits, parent writes its THP", _fork_then_child_exits,
                {"enabled": "madvise"}))
    for case in ("aligned", "unaligned", "shrink", "dontunmap", "middle"):
        out.append((f"mremap {case}", _mremap_move(case), {"enabled": "madvise"}))
    for inplace in (True, False):
        out.append((f"mremap grow {'in place' if inplace else 'by moving'}",
                    _mremap_grow(inplace), {"enabled": "madvise"}))
    out.append(("mremap errno", _mremap_errno, {"enabled": "madvise"}))
    out.append(("mremap carries swap entries and guards", _mremap_carries,
                {"enabled": "madvise", "swap": True}))
    for enabled in ("always", "madvise", "never"):
        out.append((f"THPeligible enabled={enabled}", _thp_eligible, {"enabled": enabled}))
    for name, advice in (("WRITE", MADV_POPULATE_WRITE), ("READ", MADV_POPULATE_READ)):
        out.append((f"MADV_POPULATE_{name} of an advised region", _populate(advice),
                    {"enabled": "madvise", "use_zero_page": 1}))
    out.append(("mlock of an advised region", _mlock_thp, {"enabled": "madvise"}))
    for case in ("install", "dontneed_free_keep", "collapse", "errno"):
        out.append((f"guard {case}", _guard(case), {"enabled": "madvise"}))
    out.append(("MADV_FREE drops swap entries", _free_drops_swap,
                {"enabled": "madvise", "swap": True}))
    out.append(("madvise errno", _madvise_errno, {"enabled": "madvise"}))
    out.append(("partial COLD remaps zero subpages", _cold_zero_remap, {"enabled": "madvise"}))
    for setup in COLLAPSE_SETUPS:
        out.append((f"MADV_COLLAPSE {setup}", _collapse_case(setup), {"enabled": "never"}))
    for off, length in ((0, 4096), (4096, 8192), (4096, 4 * MB - 8192), (0, 4 * MB)):
        out.append((f"MADV_COLLAPSE range +{off:#x} len {length:#x}", _collapse_range(off, length),
                    {"enabled": "never"}))
    for which in (0, 1):
        out.append((f"MADV_COLLAPSE aborts at untouched region (written {which})",
                    _collapse_abort(which), {"enabled": "never"}))
    out.append(("MADV_COLLAPSE swaps in", _collapse_swapin, {"enabled": "never", "swap": True}))
    for mpn, written in ((511, 1), (0, 511), (1, 511)):
        out.append((f"khugepaged max_ptes_none={mpn} written={written}", _khugepaged(mpn, written),
                    {"enabled": "madvise", "khugepaged/scan_sleep_millisecs": 10,
                     "khugepaged/alloc_sleep_millisecs": 10, "khugepaged/max_ptes_none": mpn,
                     "sim_setup": _khugepaged_setup(mpn)}))
    for mps in (0, 256):
        out.append((f"khugepaged THP halves in two mms, max_ptes_shared={mps}",
                    _split_halves_shared,
                    {"enabled": "madvise", "khugepaged/scan_sleep_millisecs": 10,
                     "khugepaged/alloc_sleep_millisecs": 10, "khugepaged/max_ptes_none": 511,
                     "khugepaged/max_ptes_shared": mps,
                     "sim_setup": _khugepaged_setup(511, mps)}))
    return out


SUITE = _suite()


# vmstat counters are machine-wide: another process faulting or splitting THPs inside a live
# window (a parallel test run, a numpy array with MADV_HUGEPAGE) shows up in the deltas. The
# simulator is deterministic, so a real difference repeats: a mismatch is measured again, up
# to ATTEMPTS times, and only a difference that every attempt shows counts.
ATTEMPTS = 3


def run_case(name: str, scenario, kwargs: dict, attempts: int = ATTEMPTS):
    """(live, simulated) for one suite entry: the first agreeing attempt, else the last."""
    kw = dict(kwargs)
    swap = kw.pop("swap", False)
    sim_setup = kw.pop("sim_setup", None)
    for _ in range(max(attempts, 1)):
        got_live, got_sim = run_both(scenario, swap=swap, sim_setup=sim_setup, **kw)
        if got_live == got_sim:
            break
    return got_live, got_sim


def main(only: str | None = None, json_path: str | None = None) -> int:
    """`thpcore fidelity`: run the suite, print scenario / live / simulated / match; with
    json_path, also write one record per scenario (name, kernel, live, simulated, match) as
    JSON, so a conformance run can be kept and compared across kernels."""
    why = available()
    if why:
        print(f"thpcore fidelity: cannot run on this host: {why}")
        return 2
    rows, failures = [], 0
    records = []
    for name, scenario, kwargs in SUITE:
        if only and only not in name:
            continue
        try:
            got_live, got_sim = run_case(name, scenario, kwargs)
        except live.Unsupported as exc:
            rows.append((name, f"skipped: {exc}", "", "-"))
            records.append({"scenario": name, "skipped": str(exc)})
            continue
        ok = got_live == got_sim
        failures += not ok
        rows.append((name, repr(got_live), repr(got_sim), "yes" if ok else "NO"))
        records.append({"scenario": name, "live": _plain(got_live), "simulated": _plain(got_sim),
                        "match": ok})
    w = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'scenario':<{w}}  match  live / simulated")
    for name, lv, sv, match in rows:
        print(f"{name:<{w}}  {match:<5}  {lv[:100]}")
        if match == "NO":
            print(f"{'':<{w}}         {sv[:100]}")
    print(f"{len(rows)} scenarios, {failures} mismatches")
    if json_path:
        import json
        with open(json_path, "w") as f:
            json.dump({"kernel": os.uname().release, "scenarios": records,
                       "mismatches": failures}, f, indent=1)
    return 1 if failures else 0


def _plain(value):
    """A result as JSON-able data (numpy scalars to int, tuples to lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        items = sorted(value) if isinstance(value, set) else value
        return [_plain(v) for v in items]
    if hasattr(value, "item"):
        return value.item()
    return value
